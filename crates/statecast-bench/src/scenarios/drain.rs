//! Scenario 8: the relay draining an outbox backlog, beside a bare rdkafka producer sending the
//! same records with the relay's own producer settings.
//!
//! The backlog is written with the API's schema (its migrations ran when the replica started)
//! while the relay idles as leader, in one transaction: the clock starts at its commit, which
//! is when the relay can first see the rows. Both sides end when the topic holds every record,
//! counted from the partitions' high watermarks (not from `outbox.published_at`). The bare
//! producer then sends the records the relay put in its topic (same keys, payload bytes and
//! headers) to a second fresh topic.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use chrono::Utc;
use futures::StreamExt as _;
use rdkafka::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _, StreamConsumer};
use rdkafka::message::{Header, Headers as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use sqlx::Connection as _;
use statecast_testkit as testkit;

use super::{Bench, REDIS_DB_API, bench_event};
use crate::fair;

/// Partitions of both topics (as the other scenarios' topics).
const PARTITIONS: i32 = 6;
/// Sends the bare producer keeps in flight (librdkafka queues and batches them).
const BARE_IN_FLIGHT: usize = 10_000;
/// Rows per INSERT statement of the backlog (all in one transaction).
const INSERT_CHUNK: usize = 5_000;

/// One record as the relay published it.
struct Record {
    key: Vec<u8>,
    payload: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
}

/// When a topic first held `n` records, and how many it held then.
struct Filled {
    secs: f64,
    count: i64,
}

impl Bench {
    /// Scenario 8: relay drain of `--drain-rows` outbox rows vs the bare producer.
    pub(super) async fn scenario8(&mut self) -> anyhow::Result<()> {
        const S: &str = "8 relay drain";
        let n = self.args.drain_rows;
        eprintln!("[bench] scenario 8: relay drain of {n} outbox rows");
        let db = testkit::fresh_database().await?;
        self.extra_dbs.push(db.clone());
        let topic = testkit::unique("bench-drain");
        let bare_topic = testkit::unique("bench-drain-bare");
        for t in [&topic, &bare_topic] {
            testkit::create_topic(&self.brokers, t, PARTITIONS).await?;
        }

        let api = self
            .start_api(
                "api-drain",
                REDIS_DB_API,
                &[
                    ("DATABASE_URL", db.clone()),
                    ("EVENTS_TOPIC", topic.clone()),
                ],
            )
            .await?;
        let relay_config = fair::relay_producer_config(&api.env)?;
        let mut conn = sqlx::PgConnection::connect(&db).await?;
        wait_for_leader(&mut conn).await?;
        let counter = Arc::new(
            fair::bare_consumer_config(&self.brokers, &testkit::unique("bench-drain-count"))
                .create::<BaseConsumer>()?,
        );

        let users = (n / 10).max(1);
        let mut tx = conn.begin().await?;
        let now = Utc::now();
        let mut payload_bytes = 0usize;
        for start in (0..n).step_by(INSERT_CHUNK) {
            let mut ids = Vec::new();
            let mut user_ids = Vec::new();
            let mut kinds = Vec::new();
            let mut payloads = Vec::new();
            for i in start..(start + INSERT_CHUNK).min(n) {
                let event = bench_event("bench8-", i, users, now);
                let (user, kind) = (event.data.id.clone(), event.event_type);
                let json = String::from_utf8(event.to_json()).context("event JSON")?;
                payload_bytes += json.len();
                ids.push(event.id);
                user_ids.push(user);
                kinds.push(kind.as_str().to_owned());
                payloads.push(json);
            }
            sqlx::query(
                "INSERT INTO outbox (event_id, user_id, event_type, payload) \
                 SELECT e, u, t, p::jsonb FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[]) AS r(e, u, t, p)",
            )
            .bind(&ids)
            .bind(&user_ids)
            .bind(&kinds)
            .bind(&payloads)
            .execute(&mut *tx)
            .await
            .context("insert the outbox backlog")?;
        }
        tx.commit().await?;
        let committed = Instant::now();
        let want = i64::try_from(n).unwrap_or(i64::MAX);
        let cap = Duration::from_secs(self.args.drain_cap_secs);
        let relay = wait_for_records(&counter, &topic, want, committed, cap).await?;
        let published: i64 =
            sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NOT NULL")
                .fetch_one(&mut conn)
                .await?;
        api.proc.stop().await;
        self.report.command(
            S,
            format!(
                "# {n} outbox rows ({users} users × versions, UserCreated then UserUpdated, CloudEvents JSON as the API \
                 writes them, trace_context '{{}}') inserted in one transaction into {db} (the API's migrations), \
                 with the API above (EVENTS_TOPIC={topic}) leading the relay; clock from COMMIT to the sum of {topic}'s \
                 {PARTITIONS} high watermarks reaching {n} (polled every 20 ms)"
            ),
        );

        // The same records, as the relay published them.
        let records = read_records(&self.brokers, &topic, n).await?;
        let producer: FutureProducer = relay_config.create()?;
        warm_up(&producer, &bare_topic).await?;
        let bare = self
            .bare_produce(&producer, &counter, &bare_topic, &records, cap)
            .await?;
        self.report.command(
            S,
            format!(
                "# baseline: the {} records of {topic} (keys, payloads, headers) sent to {bare_topic} by a bare rdkafka \
                 FutureProducer built by profile_api::relay::producer_config (connected and given its producer id \
                 beforehand, as the relay's is), {BARE_IN_FLIGHT} sends in flight; clock from the first send to the \
                 high watermarks reaching the count",
                records.len()
            ),
        );

        let rate = |f: &Filled| (f.secs > 0.0).then(|| f.count.min(want) as f64 / f.secs);
        let what = "bare rdkafka producer, the relay's producer settings, same records";
        self.report.row(
            "8 relay drain: events/s",
            "ev/s",
            rate(&relay),
            rate(&bare),
            what,
        );
        self.report.row(
            "8 relay drain: time to drain",
            "s",
            Some(relay.secs),
            Some(bare.secs),
            what,
        );
        let header_names: Vec<&str> = records
            .first()
            .map(|r| r.headers.iter().map(|(k, _)| k.as_str()).collect())
            .unwrap_or_default();
        self.report.note(format!(
            "8: {n} outbox rows ({:.0} bytes of payload on average; headers {}); the relay (one leader, \
             RELAY_BATCH_SIZE={}: each batch a transaction that takes its rows FOR UPDATE, sends each user's rows one \
             after another and different users concurrently, then stamps published_at) left {} records in its topic \
             ({published} rows stamped published) after {:.2} s; the bare producer sent the same records, up to \
             {BARE_IN_FLIGHT} at once, and its topic held {} after {:.2} s. Both producers: {}.",
            payload_bytes as f64 / n.max(1) as f64,
            if header_names.is_empty() {
                "none".to_owned()
            } else {
                header_names.join(", ")
            },
            fair::api_config(&api.env)?.relay_batch_size,
            relay.count,
            relay.secs,
            bare.count,
            bare.secs,
            fair::describe(&relay_config, fair::is_producer_behaviour),
        ));
        if relay.count < want {
            self.report.note(format!(
                "8: WARNING the relay's topic held {} of {n} records when the {}-s cap ended the wait",
                relay.count, self.args.drain_cap_secs
            ));
        }
        let mut bars = Vec::new();
        if let Some(r) = rate(&relay) {
            bars.push(("relay".to_owned(), r));
        }
        if let Some(r) = rate(&bare) {
            bars.push(("bare rdkafka producer".to_owned(), r));
        }
        self.report.bar_plot(
            "s8-relay-drain.png",
            &format!("8 relay drain of {n} outbox rows"),
            "events/s",
            &bars,
        );
        Ok(())
    }

    /// Sends `records` to `topic` and times them until the topic holds them all.
    async fn bare_produce(
        &self,
        producer: &FutureProducer,
        counter: &Arc<BaseConsumer>,
        topic: &str,
        records: &[Record],
        cap: Duration,
    ) -> anyhow::Result<Filled> {
        let want = i64::try_from(records.len()).unwrap_or(i64::MAX);
        let started = Instant::now();
        let sends = futures::stream::iter(records)
            .map(|record| {
                let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
                for (key, value) in &record.headers {
                    headers = headers.insert(Header {
                        key: key.as_str(),
                        value: Some(value.as_slice()),
                    });
                }
                let future = FutureRecord::to(topic)
                    .key(&record.key)
                    .payload(&record.payload)
                    .headers(headers);
                producer.send(future, Timeout::After(Duration::from_secs(60)))
            })
            .buffer_unordered(BARE_IN_FLIGHT)
            .fold(0usize, |failed, result| async move {
                failed + usize::from(result.is_err())
            });
        let (failed, filled) =
            tokio::join!(sends, wait_for_records(counter, topic, want, started, cap));
        if failed > 0 {
            bail!("the bare producer failed to send {failed} records");
        }
        filled
    }
}

/// Connects `producer` and lets it take its idempotent producer id before the clock starts,
/// as the relay's producer has (it is made when the relay becomes the leader, before the
/// backlog exists).
async fn warm_up(producer: &FutureProducer, topic: &str) -> anyhow::Result<()> {
    // After a large drain and read-back tansu can stay busy for a while (its single storage
    // task): ask again until a minute has passed rather than fail the scenario on one timeout.
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        let client = producer.clone();
        let name = topic.to_owned();
        let asked = tokio::task::spawn_blocking(move || {
            client
                .client()
                .fetch_metadata(Some(&name), Duration::from_secs(10))
                .map(|_| ())
        })
        .await?;
        match asked {
            Ok(()) => break,
            Err(error) if Instant::now() < give_up => {
                eprintln!("[bench] metadata of {topic}: {error}; asking again");
            }
            Err(error) => return Err(error.into()),
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(())
}

/// Waits until this database's relay holds the leader lock, then out its take-over delay.
async fn wait_for_leader(conn: &mut sqlx::PgConnection) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let leaders: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
             WHERE l.locktype = 'advisory' AND l.granted AND d.datname = current_database()",
        )
        .fetch_one(&mut *conn)
        .await?;
        if leaders > 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!("the relay did not take the leader lock within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A new leader waits two heartbeats (≤ 1 s each) before its first batch.
    tokio::time::sleep(Duration::from_secs(3)).await;
    Ok(())
}

/// Polls the sum of `topic`'s high watermarks every 20 ms until it reaches `want` or `cap`
/// passed (a poll the broker does not answer is asked again); seconds from `since`.
async fn wait_for_records(
    counter: &Arc<BaseConsumer>,
    topic: &str,
    want: i64,
    since: Instant,
    cap: Duration,
) -> anyhow::Result<Filled> {
    loop {
        let count = {
            let counter = counter.clone();
            let topic = topic.to_owned();
            tokio::task::spawn_blocking(move || {
                (0..PARTITIONS)
                    .map(|p| {
                        counter
                            .fetch_watermarks(&topic, p, Duration::from_secs(5))
                            .map(|(low, high)| high - low)
                    })
                    .sum::<Result<i64, _>>()
            })
            .await?
        };
        let now = Instant::now();
        // A busy broker may not answer one poll: the next one asks again, until the cap.
        let count = match count {
            Ok(count) => count,
            Err(error) if now.duration_since(since) <= cap => {
                eprintln!("[bench] watermarks of {topic}: {error}; asking again");
                continue;
            }
            Err(error) => return Err(error.into()),
        };
        if count >= want || now.duration_since(since) > cap {
            return Ok(Filled {
                secs: now.duration_since(since).as_secs_f64(),
                count,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The first `n` records of `topic` (all partitions), with their headers. The partitions are
/// assigned, not subscribed to: no group coordinator is involved.
async fn read_records(brokers: &str, topic: &str, n: usize) -> anyhow::Result<Vec<Record>> {
    let consumer: StreamConsumer =
        fair::bare_consumer_config(brokers, &testkit::unique("bench-drain-read")).create()?;
    let mut partitions = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        partitions.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&partitions)?;
    let mut records = Vec::with_capacity(n);
    let started = Instant::now();
    let give_up = started + Duration::from_secs(120);
    while records.len() < n && Instant::now() < give_up {
        match tokio::time::timeout(Duration::from_secs(5), consumer.recv()).await {
            Ok(Ok(message)) => {
                let headers = message
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                            .collect()
                    })
                    .unwrap_or_default();
                records.push(Record {
                    key: message.key().unwrap_or_default().to_vec(),
                    payload: message.payload().unwrap_or_default().to_vec(),
                    headers,
                });
            }
            Ok(Err(error)) => eprintln!("[bench] reading {topic}: {error}"),
            Err(_) => {}
        }
    }
    eprintln!(
        "[bench] read back {} of {n} records of {topic} in {:.1} s",
        records.len(),
        started.elapsed().as_secs_f64()
    );
    if records.is_empty() {
        bail!("no record could be read back from {topic}");
    }
    Ok(records)
}
