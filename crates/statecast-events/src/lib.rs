//! The event contract between the Profile API and every consumer.
//!
//! Events are CloudEvents 1.0 in structured JSON mode: the whole envelope is the Kafka record
//! value, the record key is the user id (so one user's events stay in one partition, in order),
//! and the headers carry the content type and the W3C trace context of the request that caused
//! the change. Kafka carries facts ("profile X is now at version N"), never commands.
//!
//! The JSON Schema of [`ProfileEvent`] is checked in at `schemas/profile-event.schema.json`; a
//! test fails when the Rust type and the file drift apart.
//!
//! # Layout
//! - [`ProfileEvent`], [`EventType`], [`ProfileSnapshot`]: the envelope and its payload.
//! - [`headers`]: names of the Kafka headers the contract uses.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// CloudEvents spec version this contract implements.
pub const SPEC_VERSION: &str = "1.0";
/// `source` attribute of every event the Profile API emits.
pub const SOURCE: &str = "/profile-api";
/// `datacontenttype` of the `data` member.
pub const DATA_CONTENT_TYPE: &str = "application/json";
/// Content type of a structured-mode CloudEvent, sent as the Kafka `content-type` header.
pub const CLOUDEVENTS_CONTENT_TYPE: &str = "application/cloudevents+json";

/// Kafka header names used by the contract.
pub mod headers {
    /// Structured-mode content type, [`super::CLOUDEVENTS_CONTENT_TYPE`].
    pub const CONTENT_TYPE: &str = "content-type";
    /// W3C Trace Context `traceparent`.
    pub const TRACEPARENT: &str = "traceparent";
    /// W3C Trace Context `tracestate`.
    pub const TRACESTATE: &str = "tracestate";
}

/// What happened to a profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum EventType {
    /// The profile did not exist before; `data` is the new profile at version 1.
    UserCreated,
    /// The profile was replaced or patched; `data` is the profile after the change.
    UserUpdated,
    /// The profile was deleted; `data` holds its id and the version of the delete.
    UserDeleted,
}

impl EventType {
    /// The name used in the CloudEvents `type` attribute.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UserCreated => "UserCreated",
            Self::UserUpdated => "UserUpdated",
            Self::UserDeleted => "UserDeleted",
        }
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The profile as it is after the change. For `UserDeleted` only `id` and `version` are set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProfileSnapshot {
    /// User id, 1-64 of `[A-Za-z0-9_-]`.
    pub id: String,
    /// Display name; absent on delete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// E-mail address; absent on delete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// ISO 3166-1 alpha-2 country code; absent on delete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    /// Profile version after the change (1 on create, +1 on every change, delete included).
    pub version: i64,
    /// When the change was committed; absent on delete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<DateTime<Utc>>,
}

/// A profile event: a CloudEvents 1.0 envelope in structured JSON mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "ProfileEvent", extend("additionalProperties" = true))]
pub struct ProfileEvent {
    /// CloudEvents spec version, always `1.0`.
    pub specversion: String,
    /// Unique event id (UUIDv7): consumers deduplicate on it.
    pub id: Uuid,
    /// Producer of the event, `/profile-api`.
    pub source: String,
    /// What happened.
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// The user id the event is about; also the Kafka record key.
    pub subject: String,
    /// When the change was committed.
    pub time: DateTime<Utc>,
    /// Content type of `data`, `application/json`.
    pub datacontenttype: String,
    /// Profile version after the change: consumers apply a user's events in this order and skip
    /// any version at or below the last one they applied.
    pub profileversion: i64,
    /// The profile after the change.
    pub data: ProfileSnapshot,
}

/// Why a record could not be read as a [`ProfileEvent`].
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The value is not JSON of the event's shape.
    #[error("not a profile event: {0}")]
    Json(#[from] serde_json::Error),
    /// The envelope parsed but breaks the contract.
    #[error("invalid profile event: {0}")]
    Invalid(&'static str),
}

impl ProfileEvent {
    /// A new event with a fresh UUIDv7 id, stamped with `time`.
    pub fn new(event_type: EventType, data: ProfileSnapshot, time: DateTime<Utc>) -> Self {
        Self {
            specversion: SPEC_VERSION.to_owned(),
            id: Uuid::now_v7(),
            source: SOURCE.to_owned(),
            event_type,
            subject: data.id.clone(),
            time,
            datacontenttype: DATA_CONTENT_TYPE.to_owned(),
            profileversion: data.version,
            data,
        }
    }

    /// Serialises the structured-mode envelope.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain structs of strings and numbers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses and checks a record value.
    pub fn from_json(bytes: &[u8]) -> Result<Self, DecodeError> {
        let event: Self = serde_json::from_slice(bytes)?;
        if event.specversion != SPEC_VERSION {
            return Err(DecodeError::Invalid("specversion must be 1.0"));
        }
        if event.subject.is_empty() || event.subject != event.data.id {
            return Err(DecodeError::Invalid("subject must equal data.id"));
        }
        if event.profileversion < 1 || event.profileversion != event.data.version {
            return Err(DecodeError::Invalid(
                "profileversion must be >= 1 and equal data.version",
            ));
        }
        Ok(event)
    }
}

/// The JSON Schema of [`ProfileEvent`], pretty-printed, as checked into the repository.
pub fn json_schema() -> String {
    let schema = schemars::schema_for!(ProfileEvent);
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn snapshot(version: i64) -> ProfileSnapshot {
        ProfileSnapshot {
            id: "alice".into(),
            name: Some("Alice".into()),
            email: Some("alice@example.com".into()),
            country: Some("PT".into()),
            version,
            updated_at: Some(Utc::now()),
        }
    }

    #[test]
    fn event_round_trips_through_structured_json() {
        let event = ProfileEvent::new(EventType::UserUpdated, snapshot(3), Utc::now());
        let back = ProfileEvent::from_json(&event.to_json()).unwrap();
        assert_eq!(back, event);
        let value: serde_json::Value = serde_json::from_slice(&event.to_json()).unwrap();
        assert_eq!(value["type"], "UserUpdated");
        assert_eq!(value["specversion"], "1.0");
        assert_eq!(value["source"], "/profile-api");
        assert_eq!(value["profileversion"], 3);
        assert_eq!(value["data"]["country"], "PT");
    }

    #[test]
    fn event_ids_are_unique_and_time_ordered_uuid_v7() {
        let a = ProfileEvent::new(EventType::UserCreated, snapshot(1), Utc::now());
        let b = ProfileEvent::new(EventType::UserUpdated, snapshot(2), Utc::now());
        assert_ne!(a.id, b.id);
        assert_eq!(a.id.get_version_num(), 7);
        assert!(a.id < b.id);
    }

    #[test]
    fn mismatched_version_or_subject_is_refused() {
        let mut event = ProfileEvent::new(EventType::UserUpdated, snapshot(3), Utc::now());
        event.profileversion = 4;
        assert!(matches!(
            ProfileEvent::from_json(&event.to_json()),
            Err(DecodeError::Invalid(_))
        ));
        let mut event = ProfileEvent::new(EventType::UserUpdated, snapshot(3), Utc::now());
        event.subject = "bob".into();
        assert!(ProfileEvent::from_json(&event.to_json()).is_err());
        assert!(matches!(
            ProfileEvent::from_json(b"not json"),
            Err(DecodeError::Json(_))
        ));
    }

    #[test]
    fn checked_in_json_schema_matches_the_rust_type() {
        // The run-time manifest dir: a shared build cache may hold this test compiled elsewhere.
        let dir = std::env::var("CARGO_MANIFEST_DIR")
            .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned());
        let path = format!("{dir}/schemas/profile-event.schema.json");
        let on_disk = std::fs::read_to_string(&path)
            .unwrap_or_else(|error| panic!("cannot read {path}: {error}"));
        assert!(
            on_disk == json_schema(),
            "{path} drifted from the ProfileEvent type; regenerate it with \
             `cargo run -p statecast-events --example print-schema > {path}`"
        );
    }
}
