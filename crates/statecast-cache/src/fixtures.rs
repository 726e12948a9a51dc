//! Fixtures the crate's tests share (the near cache's and the compare-and-set rules', and the
//! Redis Cluster tests under `tests/`, through the `fixtures` feature).

use std::time::Duration;

use crate::Ttls;
use crate::entry::Profile;

/// Lifetimes long enough that nothing expires during a test.
pub const TTLS: Ttls = Ttls {
    ttl: Duration::from_secs(3600),
    grace: Duration::from_secs(60),
    negative: Duration::from_secs(30),
    lock: Duration::from_secs(2),
    marker: Duration::from_secs(30),
};

/// Profile `id` at `version`, its name telling the version.
pub fn profile(id: &str, version: i64) -> Profile {
    Profile {
        id: id.to_owned(),
        name: format!("v{version}"),
        email: "someone@example.com".to_owned(),
        country: "PT".to_owned(),
        version,
        updated_at: chrono::Utc::now(),
    }
}
