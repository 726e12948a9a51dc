//! The entry format: keys, [`Entry`] and its JSON, the cached [`Profile`], and the pure
//! decisions made from an entry (freshness, TTL jitter, XFetch).
//!
//! Key `profile:{id}` holds JSON `{"v": version, "k": kind, "p": profile?, "soft": ms, "delta": ms}`:
//! - `k = "p"`: a profile, fresh until `soft` (unix ms), servable as stale for a grace period
//!   after (the Redis TTL is soft TTL + grace);
//! - `k = "n"`: no such profile (negative entry, short TTL);
//! - `k = "i"`: invalidated at version `v` by a write or a delete; reads treat it as a miss.
//!
//! `p` is the Profile API's `GET` body (`{"id","name","email","country","version","updatedAt"}`),
//! which is why the API's `model::Profile` is this crate's [`Profile`].

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use statecast_events::ProfileSnapshot;

/// Prefix of every entry key.
pub const KEY_PREFIX: &str = "profile:";

/// The Redis key of the entry of user `id`.
pub fn key(id: &str) -> String {
    format!("{KEY_PREFIX}{id}")
}

/// The Redis key of the cross-replica fill lock of user `id`.
pub fn lock_key(id: &str) -> String {
    format!("lock:{KEY_PREFIX}{id}")
}

/// A user profile: the Profile API's `GET` body, and the `p` of a cache entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    /// User id, 1-64 of `[A-Za-z0-9_-]`.
    pub id: String,
    /// Display name, 1-200 characters.
    pub name: String,
    /// E-mail address.
    pub email: String,
    /// ISO 3166-1 alpha-2 country code, upper case.
    pub country: String,
    /// Server-managed: 1 on create, +1 on every change.
    pub version: i64,
    /// Server-managed: when the last change was committed.
    pub updated_at: DateTime<Utc>,
}

impl Profile {
    /// The snapshot carried by events.
    pub fn snapshot(&self) -> ProfileSnapshot {
        ProfileSnapshot {
            id: self.id.clone(),
            name: Some(self.name.clone()),
            email: Some(self.email.clone()),
            country: Some(self.country.clone()),
            version: self.version,
            updated_at: Some(self.updated_at),
        }
    }

    /// The profile an event's snapshot describes, if it has every field (a delete's has not).
    pub fn from_snapshot(data: &ProfileSnapshot) -> Option<Self> {
        match (&data.name, &data.email, &data.country, data.updated_at) {
            (Some(name), Some(email), Some(country), Some(updated_at)) => Some(Self {
                id: data.id.clone(),
                name: name.clone(),
                email: email.clone(),
                country: country.clone(),
                version: data.version,
                updated_at,
            }),
            _ => None,
        }
    }
}

/// Kind of a cache entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// A profile.
    #[serde(rename = "p")]
    Profile,
    /// No such profile.
    #[serde(rename = "n")]
    Negative,
    /// Invalidated by a write (or a delete) at version `v`.
    #[serde(rename = "i")]
    Invalidated,
}

/// A cached value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Version of the profile (or of the delete / write that invalidated it); never goes
    /// backwards in Redis (see [`crate::script::CAS`]).
    pub v: i64,
    /// What the entry says.
    pub k: Kind,
    /// The profile, for `k = "p"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p: Option<Profile>,
    /// Soft expiry, unix milliseconds.
    #[serde(default)]
    pub soft: i64,
    /// How long the load that produced it took, milliseconds (XFetch's delta).
    #[serde(default)]
    pub delta: u64,
}

impl Entry {
    /// A profile entry of `version`, fresh until `soft_until` (unix ms).
    pub fn profile(profile: Profile, version: i64, soft_until: i64, delta: u64) -> Self {
        Self {
            v: version,
            k: Kind::Profile,
            p: Some(profile),
            soft: soft_until,
            delta,
        }
    }

    /// A negative entry ("no such profile") at `version`, fresh until `soft_until`.
    pub fn negative(version: i64, soft_until: i64, delta: u64) -> Self {
        Self {
            v: version,
            k: Kind::Negative,
            p: None,
            soft: soft_until,
            delta,
        }
    }

    /// The invalidation marker of a change at `version`.
    pub fn marker(version: i64) -> Self {
        Self {
            v: version,
            k: Kind::Invalidated,
            p: None,
            soft: 0,
            delta: 0,
        }
    }

    /// Parses a value read from Redis.
    pub fn from_json(raw: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(raw)
    }

    /// The value written to Redis.
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string(self)
    }

    /// Fresh: a profile or negative entry before its soft expiry.
    pub fn is_fresh(&self, now_ms: i64) -> bool {
        self.k != Kind::Invalidated && now_ms < self.soft
    }

    /// Servable: fresh, or a profile within its grace period (the key still exists).
    pub fn is_servable(&self, now_ms: i64) -> bool {
        self.is_fresh(now_ms) || self.k == Kind::Profile
    }
}

/// TTL with ±10 % jitter, so entries filled together do not expire together. `r` in [0, 1).
pub fn jittered(ttl: Duration, r: f64) -> Duration {
    ttl.mul_f64(0.9 + 0.2 * r.clamp(0.0, 1.0))
}

/// XFetch (Vattani, Chierichetti, Lowenstein, VLDB 2015): refresh early when
/// `now - delta * beta * ln(r) >= expiry`, `r` uniform in (0, 1]. Slow-to-compute entries and
/// entries close to expiry are refreshed earlier, by one request rather than all at once.
pub fn xfetch_due(now_ms: i64, expiry_ms: i64, delta_ms: u64, beta: f64, r: f64) -> bool {
    let r = r.clamp(f64::MIN_POSITIVE, 1.0);
    now_ms as f64 - delta_ms as f64 * beta * r.ln() >= expiry_ms as f64
}

/// Current time, unix milliseconds.
pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// Milliseconds of `d`, saturating, at least 1 (Redis refuses `PX 0`).
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// `now_ms + d`, saturating.
pub(crate) fn after(now_ms: i64, d: Duration) -> i64 {
    now_ms.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_ten_percent() {
        let ttl = Duration::from_secs(3600);
        assert_eq!(jittered(ttl, 0.0), Duration::from_secs(3240));
        assert!(jittered(ttl, 0.999_999) <= Duration::from_secs(3960));
        for _ in 0..1000 {
            let d = jittered(ttl, rand::random::<f64>());
            assert!(d >= Duration::from_secs(3240) && d <= Duration::from_secs(3960));
        }
    }

    #[test]
    fn xfetch_refreshes_early_only_near_expiry_and_more_for_slow_loads() {
        let expiry = 100_000;
        // r = 1 → ln(r) = 0: only at expiry itself.
        assert!(!xfetch_due(99_999, expiry, 1_000, 1.0, 1.0));
        assert!(xfetch_due(100_000, expiry, 1_000, 1.0, 1.0));
        // r = e^-1 → shift by delta * beta: due one delta before expiry.
        let r = (-1.0f64).exp();
        assert!(xfetch_due(99_000, expiry, 1_000, 1.0, r));
        assert!(!xfetch_due(98_900, expiry, 1_000, 1.0, r));
        // A slower load (bigger delta) or bigger beta refreshes earlier.
        assert!(xfetch_due(98_000, expiry, 2_000, 1.0, r));
        assert!(xfetch_due(98_000, expiry, 1_000, 2.0, r));
        // Far from expiry: practically never.
        let due = (0..10_000)
            .filter(|_| xfetch_due(0, expiry, 10, 1.0, 1.0 - rand::random::<f64>()))
            .count();
        assert_eq!(due, 0);
        // r = 0 is clamped to a finite shift rather than an infinite one.
        assert!(!xfetch_due(0, expiry, 10, 1.0, 0.0));
    }

    #[test]
    fn entries_round_trip_and_know_freshness() {
        let entry = Entry::negative(3, 1_000, 5);
        let json = entry.to_json().unwrap();
        assert_eq!(json, r#"{"v":3,"k":"n","soft":1000,"delta":5}"#);
        assert_eq!(Entry::from_json(&json).unwrap(), entry);
        assert!(entry.is_fresh(999) && !entry.is_fresh(1_000));
        assert!(!entry.is_servable(1_000));
        let marker = Entry::marker(3);
        assert_eq!(
            marker.to_json().unwrap(),
            r#"{"v":3,"k":"i","soft":0,"delta":0}"#
        );
        assert!(!marker.is_fresh(0) && !marker.is_servable(0));
    }

    #[test]
    fn a_profile_entry_carries_the_api_body_in_camel_case() {
        let updated_at = DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
            .unwrap()
            .with_timezone(&Utc);
        let profile = Profile {
            id: "alice".into(),
            name: "Alice".into(),
            email: "alice@example.com".into(),
            country: "PT".into(),
            version: 4,
            updated_at,
        };
        let entry = Entry::profile(profile.clone(), 4, 2_000, 7);
        let json = entry.to_json().unwrap();
        assert_eq!(
            json,
            r#"{"v":4,"k":"p","p":{"id":"alice","name":"Alice","email":"alice@example.com","country":"PT","version":4,"updatedAt":"2026-01-02T03:04:05Z"},"soft":2000,"delta":7}"#
        );
        assert!(
            entry.is_servable(5_000),
            "a profile is servable in its grace period"
        );
        // A reader tolerates entries without the optional fields.
        let old = Entry::from_json(r#"{"v":1,"k":"i"}"#).unwrap();
        assert_eq!(old, Entry::marker(1));
        // Snapshots: complete ones are profiles, a delete's is not.
        assert_eq!(Profile::from_snapshot(&profile.snapshot()), Some(profile));
        let deleted = ProfileSnapshot {
            id: "alice".into(),
            name: None,
            email: None,
            country: None,
            version: 5,
            updated_at: None,
        };
        assert_eq!(Profile::from_snapshot(&deleted), None);
    }

    #[test]
    fn keys_have_one_format() {
        assert_eq!(key("alice"), "profile:alice");
        assert_eq!(lock_key("alice"), "lock:profile:alice");
    }
}
