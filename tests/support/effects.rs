//! Counting what really happened downstream, for the reliability table: the acknowledged writes
//! (with their event ids, from the outbox the API committed them with) against each group's
//! effects, read where the effect lands: audit rows per event id (no unique constraint hides a
//! second row), analytics' per-day change counts, mails per `Message-ID` in the SMTP sink's
//! Maildir, the cached version in Redis, and the records of the dead-letter topic on the broker.
//! None of these is a table or flag the consumers write for their own bookkeeping
//! (`processed_event`, `applied_version`, metrics).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};

/// What the clients were promised: one event per acknowledged write.
#[derive(Debug, Default, Clone)]
pub struct Expected {
    /// Event id (as text) of every acknowledged write, with its user and version.
    pub events: HashMap<String, (String, i64)>,
    /// Acknowledged writes with no event in the outbox (each one is lost everywhere).
    pub without_event: usize,
    /// The last acknowledged version of each user.
    pub last: HashMap<String, i64>,
}

impl Expected {
    /// Looks up the event ids of `acked` (user, version) writes in the outbox of `pool`.
    pub async fn from_acked(pool: &sqlx::PgPool, acked: &[(String, i64)]) -> anyhow::Result<Self> {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "select event_id::text, user_id, (payload->>'profileversion')::bigint from outbox",
        )
        .fetch_all(pool)
        .await
        .context("read the outbox")?;
        let by_write: HashMap<(String, i64), String> = rows
            .into_iter()
            .map(|(id, user, version)| ((user, version), id))
            .collect();
        let mut expected = Self::default();
        for (user, version) in acked {
            let last = expected.last.entry(user.clone()).or_default();
            *last = (*last).max(*version);
            match by_write.get(&(user.clone(), *version)) {
                Some(id) => {
                    expected.events.insert(id.clone(), (user.clone(), *version));
                }
                None => expected.without_event += 1,
            }
        }
        Ok(expected)
    }

    /// How many events there should be effects for (acknowledged writes).
    pub fn total(&self) -> usize {
        self.events.len() + self.without_event
    }
}

/// Missing and extra effects of one group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Expected events without their effect.
    pub lost: usize,
    /// Effects beyond one per event.
    pub duplicated: usize,
}

impl std::ops::Add for Tally {
    type Output = Self;
    fn add(self, other: Self) -> Self {
        Self {
            lost: self.lost + other.lost,
            duplicated: self.duplicated + other.duplicated,
        }
    }
}

/// Tally of `effects` (event id -> how many times the effect happened) against `expected`.
pub fn tally(expected: &Expected, effects: &HashMap<String, usize>) -> Tally {
    let lost = expected.without_event
        + expected
            .events
            .keys()
            .filter(|id| effects.get(*id).copied().unwrap_or(0) == 0)
            .count();
    let duplicated = effects
        .iter()
        .filter(|(id, _)| expected.events.contains_key(*id))
        .map(|(_, n)| n.saturating_sub(1))
        .sum();
    Tally { lost, duplicated }
}

/// Audit rows per event id.
pub async fn audit_effects(pool: &sqlx::PgPool) -> anyhow::Result<HashMap<String, usize>> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("select event_id::text, count(*) from audit_log group by event_id")
            .fetch_all(pool)
            .await
            .context("read audit_log")?;
    Ok(rows
        .into_iter()
        .map(|(id, n)| (id, usize::try_from(n).unwrap_or(0)))
        .collect())
}

/// Analytics counts each applied event once as a change of its day: the sum against the
/// expected events (the database is the scenario's own).
pub async fn analytics_tally(pool: &sqlx::PgPool, expected: &Expected) -> anyhow::Result<Tally> {
    let changes: Option<i64> =
        sqlx::query_scalar("select sum(changes)::bigint from analytics_daily_changes")
            .fetch_one(pool)
            .await
            .context("read analytics_daily_changes")?;
    let changes = usize::try_from(changes.unwrap_or(0)).unwrap_or(0);
    let total = expected.total();
    Ok(Tally {
        lost: total.saturating_sub(changes),
        duplicated: changes.saturating_sub(total),
    })
}

/// Mails per event id in the Maildir `dir` (`new/` and `cur/`), from their `Message-ID:
/// <event-id@statecast>` header; mails of other tests are ignored by the caller's ids.
pub fn mail_effects(dir: &Path) -> HashMap<String, usize> {
    let mut effects = HashMap::new();
    for sub in ["new", "cur"] {
        let Ok(entries) = std::fs::read_dir(dir.join(sub)) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let Ok(bytes) = std::fs::read(entry.path()) else {
                continue;
            };
            let text = String::from_utf8_lossy(&bytes);
            let id = text
                .lines()
                .take_while(|l| !l.is_empty())
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("message-id")
                        .then(|| value.trim())
                })
                .and_then(|v| v.strip_prefix('<')?.strip_suffix("@statecast>"))
                .map(str::to_owned);
            if let Some(id) = id {
                *effects.entry(id).or_default() += 1;
            }
        }
    }
    effects
}

/// Users whose cached entry (`profile:{id}`, `"k": "p"`) is not at their last acknowledged
/// version: each is a lost cache-refresh effect.
pub async fn cache_lost(redis_url: &str, expected: &Expected) -> anyhow::Result<usize> {
    let client = redis::Client::open(redis_url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let mut lost = 0;
    for (user, version) in &expected.last {
        let raw: Option<String> = redis::cmd("GET")
            .arg(format!("profile:{user}"))
            .query_async(&mut conn)
            .await?;
        let cached = raw
            .and_then(|r| serde_json::from_str::<serde_json::Value>(&r).ok())
            .filter(|v| v["k"] == "p")
            .and_then(|v| v["p"]["version"].as_i64());
        if cached != Some(*version) {
            lost += 1;
        }
    }
    Ok(lost)
}

/// Records in `topic` on `brokers`, summed over its partitions (high minus low watermark).
pub async fn records_in_topic(brokers: &str, topic: &str) -> anyhow::Result<usize> {
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()?;
        let timeout = Duration::from_secs(10);
        let metadata = client.fetch_metadata(Some(&topic), timeout)?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic)
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        let mut total = 0i64;
        for partition in partitions {
            let (low, high) = client.fetch_watermarks(&topic, partition, timeout)?;
            total += high - low;
        }
        Ok(usize::try_from(total).unwrap_or(0))
    })
    .await?
}

/// Event ids among `expected` missing from `effects`, at most `limit`, for failure messages.
pub fn sample_missing(
    expected: &Expected,
    effects: &HashMap<String, usize>,
    limit: usize,
) -> Vec<String> {
    let have: HashSet<&String> = effects.keys().collect();
    expected
        .events
        .keys()
        .filter(|id| !have.contains(id))
        .take(limit)
        .cloned()
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn expected(ids: &[&str]) -> Expected {
        let mut e = Expected::default();
        for (i, id) in ids.iter().enumerate() {
            e.events
                .insert((*id).to_owned(), ("u".to_owned(), i as i64 + 1));
        }
        e
    }

    #[test]
    fn a_missing_effect_is_lost_and_a_second_one_duplicated() {
        let e = expected(&["a", "b", "c"]);
        let effects: HashMap<String, usize> = [
            ("a".to_owned(), 1),
            ("b".to_owned(), 3),
            ("zzz".to_owned(), 2),
        ]
        .into();
        assert_eq!(
            tally(&e, &effects),
            Tally {
                lost: 1,
                duplicated: 2
            }
        );
    }

    #[test]
    fn a_write_without_its_event_is_lost_everywhere() {
        let mut e = expected(&["a"]);
        e.without_event = 2;
        let effects: HashMap<String, usize> = [("a".to_owned(), 1)].into();
        assert_eq!(tally(&e, &effects).lost, 2);
    }

    #[test]
    fn mails_are_counted_by_their_message_id() {
        let dir = std::env::temp_dir().join(format!("maildir-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("new")).unwrap();
        std::fs::write(
            dir.join("new/1"),
            "Subject: x\r\nMessage-ID: <e1@statecast>\r\n\r\nMessage-ID: <body@statecast>\r\n",
        )
        .unwrap();
        std::fs::write(dir.join("new/2"), "message-id: <e1@statecast>\n\nhi\n").unwrap();
        std::fs::write(dir.join("new/3"), "Message-ID: <other@elsewhere>\n\n").unwrap();
        let effects = mail_effects(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(effects, [("e1".to_owned(), 2)].into());
    }
}
