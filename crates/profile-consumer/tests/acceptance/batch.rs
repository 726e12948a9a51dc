//! Batches (`CONSUMER_BATCH_MAX`, on by default): the records of one poll of a partition are
//! applied together, and still each exactly once, in version order; a poison record in the
//! middle of a batch is dead-lettered alone and the rest of its batch is applied.

use std::collections::HashMap;
use std::time::Duration;

use profile_consumer::HandlerKind;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use statecast_events::{EventType, ProfileEvent};

use crate::support::{self, Running};

const USERS: usize = 6;
const VERSIONS: i64 = 40;
const COUNTRIES: [&str; 3] = ["PT", "DE", "FR"];

/// Records that went through batches of more than one: the batch histogram's sum exceeds its
/// count only then.
async fn batched(consumer: &Running) -> bool {
    let sum = consumer.metric("consumer_batch_size_sum").await;
    let count = consumer.metric("consumer_batch_size_count").await;
    eprintln!("batches: {count} for {sum} records");
    sum > count
}

/// The committed offset of `group` on partition 0 of `topic` (the next record to read).
async fn committed(group: &str, topic: &str) -> Option<i64> {
    let (group, topic) = (group.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", statecast_testkit::kafka_brokers())
            .set("group.id", &group)
            .create()
            .unwrap();
        let mut partitions = TopicPartitionList::new();
        partitions.add_partition(&topic, 0);
        let committed = client
            .committed_offsets(partitions, Duration::from_secs(10))
            .unwrap();
        match committed.elements()[0].offset() {
            Offset::Offset(offset) => Some(offset),
            _ => None,
        }
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_batch_of_many_events_for_few_users_applies_each_once_in_version_order() {
    let db = statecast_testkit::fresh_database().await.unwrap();
    let topic = support::topic("batch", 1).await;
    let tag = statecast_testkit::unique("batch");
    let producer = support::producer();
    let mut events: Vec<ProfileEvent> = Vec::new();
    for version in 1..=VERSIONS {
        for user in 0..USERS {
            let kind = if version == 1 {
                EventType::UserCreated
            } else {
                EventType::UserUpdated
            };
            let country = COUNTRIES[usize::try_from(version).unwrap() % COUNTRIES.len()];
            let address = format!("{tag}-u{user}@example.com");
            events.push(support::event(
                kind,
                &format!("{tag}-u{user}"),
                version,
                &address,
                country,
            ));
        }
    }
    // User 3's versions 21 and 20 swap places (both early in the stream, so in one batch):
    // 20 must be found stale against 21, an earlier event of its own batch.
    let swapped = (20 - 1) * USERS + 3;
    events.swap(swapped, swapped + USERS);
    for (i, event) in events.iter().enumerate() {
        support::produce(&producer, &topic, event).await;
        if i == 30 {
            support::produce(&producer, &topic, event).await; // a producer retry, next to it
        }
    }
    // A duplicate long after its original, and a late older version of user 2.
    support::produce(&producer, &topic, &events[60]).await;
    let late = support::event(
        EventType::UserUpdated,
        &format!("{tag}-u2"),
        3,
        &format!("{tag}-u2@example.com"),
        "XX",
    );
    support::produce(&producer, &topic, &late).await;
    // Every distinct event but the two stale ones (user 3's version 20, the late one).
    let applied = events.len() - 1;
    let distinct = applied as f64;

    let audit = Running::start(support::config(&topic, HandlerKind::Audit, Some(&db)));
    let analytics = Running::start(support::config(&topic, HandlerKind::Analytics, Some(&db)));
    let mut email_config = support::config(&topic, HandlerKind::Email, Some(&db));
    email_config.smtp_url = Some(statecast_testkit::smtp_url());
    let email = Running::start(email_config);
    for consumer in [&audit, &analytics, &email] {
        consumer.wait_records("processed", distinct).await;
        consumer.wait_records("stale", 2.0).await;
        consumer.wait_records("duplicate", 2.0).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await; // anything doubled shows up
    for consumer in [&audit, &analytics, &email] {
        assert_eq!(consumer.records("processed").await, distinct);
        assert_eq!(consumer.records("stale").await, 2.0);
        assert_eq!(consumer.records("duplicate").await, 2.0);
        assert_eq!(consumer.records("dlq").await, 0.0);
        assert!(batched(consumer).await, "the records went through batches");
    }

    let pool = support::pool(&db).await;
    // audit: every distinct event once, each user's in version order, the late one last.
    let trail: Vec<(String, i64)> =
        sqlx::query_as("select user_id, version from audit_log order by id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(trail.len(), events.len() + 1);
    let mut per_user: HashMap<&str, Vec<i64>> = HashMap::new();
    for (user, version) in &trail {
        per_user.entry(user.as_str()).or_default().push(*version);
    }
    for user in 0..USERS {
        let mut expected: Vec<i64> = (1..=VERSIONS).collect();
        if user == 2 {
            expected.push(3);
        }
        if user == 3 {
            expected.swap(19, 20);
        }
        assert_eq!(per_user[format!("{tag}-u{user}").as_str()], expected);
    }
    let versions: Vec<i64> =
        sqlx::query_scalar("select version from applied_version where user_id like $1")
            .bind(format!("{tag}-%"))
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        versions,
        vec![VERSIONS; USERS * 3],
        "three groups, six users"
    );

    // analytics: every user counted once, in the country of its last version.
    let last_country = COUNTRIES[usize::try_from(VERSIONS).unwrap() % COUNTRIES.len()];
    let countries: Vec<(String, i64)> = sqlx::query_as(
        "select country, profiles from analytics_country where profiles <> 0 order by country",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(countries, vec![(last_country.to_owned(), USERS as i64)]);
    let changes = support::count(
        &pool,
        "select sum(changes)::bigint from analytics_daily_changes",
    )
    .await;
    assert_eq!(
        changes,
        events.len() as i64 + 1,
        "stale counts, duplicates not"
    );
    let states: Vec<(String, i64)> =
        sqlx::query_as("select country, version from analytics_profile_state")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(states, vec![(last_country.to_owned(), VERSIONS); USERS]);

    // email: one mail per applied event, each Message-ID once; none for the stale one.
    assert_eq!(
        support::count(
            &pool,
            "select count(*) from email_outbox where status = 'sent'"
        )
        .await,
        applied as i64
    );
    let mails = mails_tagged(&tag);
    assert_eq!(mails.len(), applied);
    for (i, event) in events.iter().enumerate() {
        let id = format!("<{}@statecast>", event.id).to_ascii_lowercase();
        let expected = usize::from(i != swapped + USERS);
        assert_eq!(
            mails.iter().filter(|m| m.contains(&id)).count(),
            expected,
            "mails for event {} (version {})",
            event.id,
            event.profileversion
        );
    }
    for consumer in [audit, analytics, email] {
        consumer.stop().await;
    }
}

/// The sink's mails that mention `tag` (lower-cased text).
fn mails_tagged(tag: &str) -> Vec<String> {
    let tag = tag.to_ascii_lowercase();
    let dir = statecast_testkit::maildir().join("new");
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read(e.path()).ok())
        .map(|bytes| String::from_utf8_lossy(&bytes).to_ascii_lowercase())
        .filter(|text| text.contains(&tag))
        .collect()
}

#[tokio::test]
async fn a_poison_record_in_the_middle_of_a_batch_is_dead_lettered_alone_and_the_rest_applied() {
    let db = statecast_testkit::fresh_database().await.unwrap();
    let topic = support::topic("batch-poison", 1).await;
    let tag = statecast_testkit::unique("bp");
    let producer = support::producer();
    let good = |i: usize| {
        support::event(
            EventType::UserCreated,
            &format!("{tag}-{i}"),
            1,
            "p@example.com",
            "PT",
        )
    };
    for i in 0..20 {
        support::produce(&producer, &topic, &good(i)).await;
    }
    // Decodes, but PostgreSQL refuses the NUL in its user id (SQLSTATE 22021): the batch's
    // transaction fails as a whole, permanently.
    let poison = support::event(
        EventType::UserCreated,
        &format!("{tag}-poison\u{0}"),
        1,
        "p@example.com",
        "PT",
    );
    support::produce(&producer, &topic, &poison).await;
    for i in 20..40 {
        support::produce(&producer, &topic, &good(i)).await;
    }

    let audit_config = support::config(&topic, HandlerKind::Audit, Some(&db));
    let audit_group = audit_config.kafka_group_id.clone();
    let audit = Running::start(audit_config);
    let analytics_config = support::config(&topic, HandlerKind::Analytics, Some(&db));
    let analytics_group = analytics_config.kafka_group_id.clone();
    let analytics = Running::start(analytics_config);
    for consumer in [&audit, &analytics] {
        consumer.wait_records("processed", 40.0).await;
        consumer.wait_records("dlq", 1.0).await;
        assert!(batched(consumer).await, "the records went through batches");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for consumer in [&audit, &analytics] {
        assert_eq!(consumer.records("processed").await, 40.0);
        assert_eq!(consumer.records("dlq").await, 1.0);
        assert_eq!(consumer.records("duplicate").await, 0.0);
    }
    let pool = support::pool(&db).await;
    assert_eq!(
        support::count(&pool, "select count(distinct event_id) from audit_log").await,
        40
    );
    assert_eq!(
        support::count(&pool, "select count(*) from audit_log").await,
        40
    );
    assert_eq!(
        support::count(
            &pool,
            "select profiles from analytics_country where country = 'PT'"
        )
        .await,
        40
    );
    // The poison's claim rolled back with its transaction: claims are the applied events.
    for group in [&audit_group, &analytics_group] {
        let claims: i64 =
            sqlx::query_scalar("select count(*) from processed_event where consumer_group = $1")
                .bind(group)
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(claims, 40, "{group}");
    }

    // The dead letters: the poison alone (twice: one per group), at its offset.
    let reader: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", statecast_testkit::kafka_brokers())
        .set("group.id", statecast_testkit::unique("batch-dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    reader.subscribe(&[&format!("{topic}.dlq")]).unwrap();
    for _ in 0..2 {
        let letter = tokio::time::timeout(Duration::from_secs(30), reader.recv())
            .await
            .expect("a dead letter within 30 s")
            .unwrap();
        let header = |name: &str| {
            letter
                .headers()
                .unwrap()
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        assert_eq!(header("dlq-reason").as_deref(), Some("rejected"));
        assert_eq!(header("dlq-source-offset").as_deref(), Some("20"));
        assert_eq!(letter.payload(), Some(&poison.to_json()[..]));
    }

    // Every offset stored and committed: a restart would replay nothing.
    for consumer in [audit, analytics] {
        consumer.stop().await;
    }
    for group in [&audit_group, &analytics_group] {
        assert_eq!(committed(group, &topic).await, Some(41), "{group}");
    }
}
