//! profile-api
