//! profile-operator
