//! The profile as the API shows it, and the body a client sends. Their OpenAPI schemas are
//! written in `openapi.rs` from the rules `validate.rs` enforces (lengths, patterns, codes),
//! and its tests check that every field here has its schema.

use serde::{Deserialize, Serialize};

/// A user profile: the body of `GET`, and what the cache stores (so it is the cache crate's
/// type, the one definition both the API and the `cache-refresh` consumer write).
pub use statecast_cache::Profile;

/// The client-writable part of a profile: the body of `PUT`, and what a merge patch must leave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileInput {
    /// Display name, 1-200 characters.
    pub name: String,
    /// E-mail address.
    pub email: String,
    /// ISO 3166-1 alpha-2 country code, upper case, e.g. `PT`.
    pub country: String,
}

/// The writable fields of `profile`, as a JSON object a merge patch applies to.
pub(crate) fn input_json(profile: &Profile) -> serde_json::Value {
    serde_json::json!({
        "name": profile.name,
        "email": profile.email,
        "country": profile.country,
    })
}
