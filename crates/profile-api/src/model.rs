//! The profile as the API shows it, and the body a client sends. Their OpenAPI schemas are
//! written in `openapi.rs` from the rules `validate.rs` enforces (lengths, patterns, codes),
//! and its tests check that every field here has its schema.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A user profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    /// User id, 1-64 of `[A-Za-z0-9_-]` (`validate::ID_PATTERN`).
    pub id: String,
    /// Display name, 1-200 characters (`validate::is_valid_name`).
    pub name: String,
    /// E-mail address (`validate::is_valid_email`).
    pub email: String,
    /// ISO 3166-1 alpha-2 country code, upper case.
    pub country: String,
    /// Server-managed: 1 on create, +1 on every change.
    pub version: i64,
    /// Server-managed: when the last change was committed.
    pub updated_at: DateTime<Utc>,
}

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

impl Profile {
    /// The snapshot carried by events.
    pub(crate) fn snapshot(&self) -> statecast_events::ProfileSnapshot {
        statecast_events::ProfileSnapshot {
            id: self.id.clone(),
            name: Some(self.name.clone()),
            email: Some(self.email.clone()),
            country: Some(self.country.clone()),
            version: self.version,
            updated_at: Some(self.updated_at),
        }
    }

    /// The writable fields, as a JSON object a merge patch applies to.
    pub(crate) fn input_json(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "email": self.email,
            "country": self.country,
        })
    }
}
