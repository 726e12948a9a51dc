//! profile-consumer
