//! Counting what really happened downstream, for the reliability table: the acknowledged writes
//! (with their event ids, from the outbox the API committed them with) against each group's
//! effects, read where the effect lands: audit rows per event id (no unique constraint hides a
//! second row), analytics' per-day change counts, mails per `Message-ID` in the SMTP sink's
//! Maildir, the cached version in Redis, and the records of the dead-letter topic on the broker.
//! None of these is a table or flag the consumers write for their own bookkeeping
//! (`processed_event`, `applied_version`, metrics).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Message as _;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// What the clients were promised: one event per acknowledged write.
#[derive(Debug, Default, Clone)]
pub struct Expected {
    /// Event id (as text) of every acknowledged write, with its user and version.
    pub events: HashMap<String, (String, i64)>,
    /// Acknowledged writes with no event in the outbox (each one is lost everywhere).
    pub without_event: usize,
    /// The last version of each user with an acknowledged write: that of its last acknowledged
    /// write, or of a later one that committed although its answer never reached the client
    /// (a replica killed or a connection cut after the commit).
    pub last: HashMap<String, i64>,
    /// Every event of the outbox (acknowledged or not: a write whose answer was lost may have
    /// committed), with its user and version, to put effects in per-user order.
    pub outbox: HashMap<String, (String, i64)>,
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
            .iter()
            .map(|(id, user, version)| ((user.clone(), *version), id.clone()))
            .collect();
        let mut expected = Self {
            outbox: rows
                .into_iter()
                .map(|(id, user, version)| (id, (user, version)))
                .collect(),
            ..Self::default()
        };
        for (user, version) in acked {
            let last = expected.last.entry(user.clone()).or_default();
            *last = (*last).max(*version);
        }
        for (user, version) in expected.outbox.values() {
            if let Some(last) = expected.last.get_mut(user) {
                *last = (*last).max(*version);
            }
        }
        for (user, version) in acked {
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

    /// How many events there should be effects for in a group that can only be counted in
    /// aggregate (analytics): every committed event, acknowledged or not (a write committed
    /// without its answer reaching the client is applied too), and each acknowledged write
    /// without its event.
    pub fn committed(&self) -> usize {
        let unacknowledged = self
            .outbox
            .keys()
            .filter(|id| !self.events.contains_key(*id))
            .count();
        self.total() + unacknowledged
    }

    /// User and version of event `id`, from the outbox or the acknowledged writes.
    pub fn event(&self, id: &str) -> Option<&(String, i64)> {
        self.outbox.get(id).or_else(|| self.events.get(id))
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
/// committed events ([`Expected::committed`]; the database is the scenario's own).
pub async fn analytics_tally(pool: &sqlx::PgPool, expected: &Expected) -> anyhow::Result<Tally> {
    let changes: Option<i64> =
        sqlx::query_scalar("select sum(changes)::bigint from analytics_daily_changes")
            .fetch_one(pool)
            .await
            .context("read analytics_daily_changes")?;
    let changes = usize::try_from(changes.unwrap_or(0)).unwrap_or(0);
    let total = expected.committed();
    Ok(Tally {
        lost: total.saturating_sub(changes),
        duplicated: changes.saturating_sub(total),
    })
}

/// Mails per event id in the Maildir `dir` (`new/` and `cur/`), from their `Message-ID:
/// <event-id@statecast>` header; mails of other tests are ignored by the caller's ids.
pub fn mail_effects(dir: &Path) -> HashMap<String, usize> {
    let mut effects = HashMap::new();
    for (_, id) in mail_deliveries(dir) {
        *effects.entry(id).or_default() += 1;
    }
    effects
}

/// The event id of every mail in the Maildir `dir`, in the order the sink delivered them: a
/// Maildir name is `SECONDS.MMICROSECONDSPPIDQCOUNTER.HOST` (Python's `mailbox.Maildir`, which
/// aiosmtpd uses); mails whose name is not of that form sort first, by name.
pub fn mail_deliveries(dir: &Path) -> Vec<((u64, u64, u64), String)> {
    let mut mails = Vec::new();
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
                let name = entry.file_name().to_string_lossy().into_owned();
                mails.push((maildir_order(&name).unwrap_or_default(), id));
            }
        }
    }
    mails.sort();
    mails
}

/// (seconds, microseconds, counter) of a Maildir file name made by Python's `mailbox`.
fn maildir_order(name: &str) -> Option<(u64, u64, u64)> {
    let (seconds, rest) = name.split_once(".M")?;
    let (micros, rest) = rest.split_once('P')?;
    let counter = rest.split_once('Q')?.1.split(['.', ':']).next()?;
    Some((
        seconds.parse().ok()?,
        micros.parse().ok()?,
        counter.parse().ok()?,
    ))
}

/// Effects of events whose user had an effect of the same or a later version before: a per-user
/// order broken somewhere between the outbox and the effect. `effects` are (user, version) in
/// the order the effects happened.
pub fn out_of_order<'a>(effects: impl IntoIterator<Item = (&'a str, i64)>) -> usize {
    let mut last_seen: HashMap<&str, i64> = HashMap::new();
    let mut out_of_order = 0;
    for (user, version) in effects {
        let previous = last_seen.insert(user, version).unwrap_or(0);
        if version <= previous {
            out_of_order += 1;
        }
    }
    out_of_order
}

/// Audit rows out of per-user order (rows in insertion order, see [`out_of_order`]).
pub async fn audit_out_of_order(pool: &sqlx::PgPool) -> anyhow::Result<usize> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("select user_id, version from audit_log order by id")
            .fetch_all(pool)
            .await
            .context("read audit_log")?;
    Ok(out_of_order(rows.iter().map(|(u, v)| (u.as_str(), *v))))
}

/// Mails out of per-user order (in delivery order, see [`mail_deliveries`]); mails of other
/// tests' events are left out.
pub fn mail_out_of_order(dir: &Path, expected: &Expected) -> usize {
    let mails = mail_deliveries(dir);
    out_of_order(
        mails
            .iter()
            .filter_map(|(_, id)| expected.event(id))
            .map(|(u, v)| (u.as_str(), *v)),
    )
}

/// Users whose cached entry (`profile:{id}`, `"k": "p"`) is not at their last version
/// ([`Expected::last`])/// version: each is a lost cache-refresh effect.
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

/// One record of a topic, as the broker holds it.
#[derive(Debug, Clone)]
pub struct TopicRecord {
    /// Partition and offset.
    pub partition: i32,
    pub offset: i64,
    /// The record key (the user id).
    pub key: String,
    /// The CloudEvent's `id`, `subject` and `profileversion` (empty / -1 if it is not one).
    pub event_id: String,
    pub user: String,
    pub version: i64,
}

/// The high watermark of each partition of `topic` on `brokers`: where the next record will go.
pub async fn high_watermarks(brokers: &str, topic: &str) -> anyhow::Result<HashMap<i32, i64>> {
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()?;
        let timeout = Duration::from_secs(10);
        let metadata = client.fetch_metadata(Some(&topic), timeout)?;
        let mut highs = HashMap::new();
        for partition in metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic)
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        {
            highs.insert(
                partition,
                client.fetch_watermarks(&topic, partition, timeout)?.1,
            );
        }
        Ok(highs)
    })
    .await?
}

/// Reads the size of one topic (its partitions' high watermarks summed) again and again on one
/// client, cheaply enough to poll it while a batch is being sent.
pub struct TopicSize {
    client: BaseConsumer,
    topic: String,
    partitions: Vec<i32>,
}

impl TopicSize {
    /// A client of `brokers` for `topic` (whose partitions must exist).
    pub fn new(brokers: &str, topic: &str) -> anyhow::Result<Self> {
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create()?;
        let metadata = client.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        let partitions = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic)
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        Ok(Self {
            client,
            topic: topic.to_owned(),
            partitions,
        })
    }

    /// Records in the topic so far (-1 if the broker does not answer). Blocks the calling
    /// thread for a round trip per partition (inside `block_in_place`: a multi-thread runtime).
    pub fn now(&self) -> i64 {
        tokio::task::block_in_place(|| {
            self.partitions
                .iter()
                .map(|p| {
                    self.client
                        .fetch_watermarks(&self.topic, *p, Duration::from_secs(1))
                        .map(|(_, high)| high)
                })
                .sum::<Result<i64, _>>()
                .unwrap_or(-1)
        })
    }
}

/// Every record of `topic` on `brokers`, read from the start of each partition to its high
/// watermark at the time of the call, by partition and offset.
pub async fn topic_records(brokers: &str, topic: &str) -> anyhow::Result<Vec<TopicRecord>> {
    let until = high_watermarks(brokers, topic).await?;
    topic_records_until(brokers, topic, until).await
}

/// Every record of `topic` below `until` (a high watermark per partition, as
/// [`high_watermarks`] gave it earlier), by partition and offset.
pub async fn topic_records_until(
    brokers: &str,
    topic: &str,
    until: HashMap<i32, i64>,
) -> anyhow::Result<Vec<TopicRecord>> {
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", format!("witness-{}", std::process::id()))
            .set("enable.auto.commit", "false")
            .create()?;
        let timeout = Duration::from_secs(10);
        let mut assignment = TopicPartitionList::new();
        let mut remaining: HashMap<i32, i64> = HashMap::new();
        for (partition, high) in until {
            let (low, _) = client.fetch_watermarks(&topic, partition, timeout)?;
            if high > low {
                assignment.add_partition_offset(&topic, partition, Offset::Offset(low))?;
                remaining.insert(partition, high);
            }
        }
        let mut records = Vec::new();
        if remaining.is_empty() {
            return Ok(records);
        }
        client.assign(&assignment)?;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !remaining.is_empty() {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "{topic}: partitions {:?} not read to their high watermark in 60 s",
                remaining.keys().collect::<Vec<_>>()
            );
            let Some(message) = client.poll(Duration::from_millis(500)) else {
                continue;
            };
            let message = message?;
            let (partition, offset) = (message.partition(), message.offset());
            let Some(high) = remaining.get(&partition).copied() else {
                continue;
            };
            if offset >= high {
                remaining.remove(&partition);
                continue;
            }
            let event: serde_json::Value = message
                .payload()
                .and_then(|p| serde_json::from_slice(p).ok())
                .unwrap_or_default();
            records.push(TopicRecord {
                partition,
                offset,
                key: message
                    .key()
                    .map(|k| String::from_utf8_lossy(k).into_owned())
                    .unwrap_or_default(),
                event_id: event["id"].as_str().unwrap_or_default().to_owned(),
                user: event["subject"].as_str().unwrap_or_default().to_owned(),
                version: event["profileversion"].as_i64().unwrap_or(-1),
            });
            if offset + 1 >= high {
                remaining.remove(&partition);
            }
        }
        records.sort_by_key(|r| (r.partition, r.offset));
        Ok(records)
    })
    .await?
}

/// Every effect of the running consumer groups, measured against what the clients were told.
#[derive(Debug, Clone, Default)]
pub struct Effects {
    /// Per group that runs: audit rows, analytics changes, mails per event.
    pub audit: Option<Tally>,
    pub analytics: Option<Tally>,
    pub mail: Option<Tally>,
    /// Users whose cache entry is not at their last version (cache-refresh).
    pub cache_lost: Option<usize>,
    /// Audit rows and mails out of per-user order.
    pub audit_out_of_order: usize,
    pub mail_out_of_order: usize,
    /// Records in the dead-letter topic.
    pub dead_letters: usize,
}

impl Effects {
    /// Acknowledged changes whose effect is missing, summed over the groups.
    pub fn lost(&self) -> usize {
        [self.audit, self.analytics, self.mail]
            .iter()
            .flatten()
            .map(|t| t.lost)
            .sum::<usize>()
            + self.cache_lost.unwrap_or(0)
    }

    /// Effects beyond one per event, summed over the groups.
    pub fn duplicated(&self) -> usize {
        [self.audit, self.analytics, self.mail]
            .iter()
            .flatten()
            .map(|t| t.duplicated)
            .sum()
    }

    /// Effects out of per-user order, at the audit trail and in the mails.
    pub fn out_of_order(&self) -> usize {
        self.audit_out_of_order + self.mail_out_of_order
    }
}

/// Where a system's effects land, to measure them ([`Witness::settle`]).
#[derive(Debug, Clone)]
pub struct Witness {
    /// The system's database (audit, analytics, outbox).
    pub pool: sqlx::PgPool,
    /// The consumer handlers that run: only their groups are measured.
    pub handlers: Vec<&'static str>,
    /// The broker and its dead-letter topic.
    pub brokers: String,
    pub dead_letter_topic: String,
    /// The SMTP sink's Maildir and the Redis cache-refresh writes to.
    pub maildir: PathBuf,
    pub redis_url: String,
}

impl Witness {
    fn runs(&self, handler: &str) -> bool {
        self.handlers.contains(&handler)
    }

    /// Measures every running group's effects once (the dead-letter topic only if `dead`).
    async fn measure(&self, expected: &Expected, dead: bool) -> anyhow::Result<Effects> {
        let mut effects = Effects::default();
        if self.runs("audit") {
            effects.audit = Some(tally(expected, &audit_effects(&self.pool).await?));
            effects.audit_out_of_order = audit_out_of_order(&self.pool).await?;
        }
        if self.runs("analytics") {
            effects.analytics = Some(analytics_tally(&self.pool, expected).await?);
        }
        if self.runs("email") {
            effects.mail = Some(tally(expected, &mail_effects(&self.maildir)));
            effects.mail_out_of_order = mail_out_of_order(&self.maildir, expected);
        }
        if self.runs("cache-refresh") {
            effects.cache_lost = Some(cache_lost(&self.redis_url, expected).await?);
        }
        if dead {
            effects.dead_letters = records_in_topic(&self.brokers, &self.dead_letter_topic).await?;
        }
        Ok(effects)
    }

    /// Waits up to `timeout` for every acknowledged change's effect in every running group,
    /// then measures them all, the dead-letter topic included.
    pub async fn settle(&self, expected: &Expected, timeout: Duration) -> anyhow::Result<Effects> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let complete = self
                .measure(expected, false)
                .await
                .is_ok_and(|e| e.lost() == 0);
            if complete || tokio::time::Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        self.measure(expected, true).await
    }
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
    fn a_committed_write_without_its_answer_is_expected_in_aggregate_and_in_the_cache() {
        let mut e = expected(&["a", "b"]);
        e.outbox = [
            ("a".to_owned(), ("u".to_owned(), 1)),
            ("b".to_owned(), ("u".to_owned(), 2)),
            ("c".to_owned(), ("u".to_owned(), 3)),
        ]
        .into();
        e.last.insert("u".to_owned(), 3);
        assert_eq!((e.total(), e.committed()), (2, 3));
    }

    #[test]
    fn effects_out_of_per_user_order_are_counted() {
        let effects = [("a", 1), ("b", 1), ("a", 3), ("a", 2), ("b", 2), ("b", 2)];
        assert_eq!(out_of_order(effects), 2);
        assert_eq!(out_of_order([("a", 1), ("a", 2), ("b", 7)]), 0);
    }

    #[test]
    fn maildir_names_sort_in_delivery_order() {
        assert_eq!(
            maildir_order("1796170165.M829124P3763Q12.vm"),
            Some((1_796_170_165, 829_124, 12))
        );
        assert_eq!(
            maildir_order("1796170165.M9P3763Q2.vm:2,S"),
            Some((1_796_170_165, 9, 2))
        );
        assert_eq!(maildir_order("garbage"), None);
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
