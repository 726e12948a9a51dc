//! The relay against a secured broker ([`SecuredBroker`]: tansu with SASL/SCRAM behind TLS)
//! when its settings are wrong: a wrong password, or a CA that does not trust the broker's
//! certificate. Nothing is published and nothing is lost: every event stays unpublished in the
//! outbox (read from PostgreSQL, not from the relay's metrics) until a replica with the right
//! settings delivers all of them, in per-user order, to the topic (read back by a consumer of the
//! test's own).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{body, fresh_config, start, user};
use rdkafka::Message as _;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use statecast_events::ProfileEvent;
use statecast_kafka::{KafkaSecurityArgs, Secret};
use statecast_testkit::secured::{SecuredBroker, Security};

const WRITES: usize = 5;

/// Unpublished outbox rows, counted in PostgreSQL itself.
async fn unpublished(database_url: &str) -> i64 {
    let pool = sqlx::PgPool::connect(database_url).await.unwrap();
    let n: i64 = sqlx::query_scalar("select count(*) from outbox where published_at is null")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    n
}

/// Writes through a replica whose Kafka settings are `wrong`, checks nothing left the outbox,
/// then starts a replica with the broker's real settings and reads every event from the topic.
async fn nothing_is_lost_while_the_settings_are_wrong(
    security: Security,
    wrong: fn(&SecuredBroker) -> KafkaSecurityArgs,
) {
    let broker = tokio::task::spawn_blocking(move || SecuredBroker::start(security))
        .await
        .unwrap()
        .unwrap();
    let mut config = fresh_config("secured").await;
    config.kafka_brokers = broker.brokers();
    config.kafka = broker.args();
    config.kafka_message_timeout_ms = 2000;
    broker.create_topic(&config.events_topic, 1).await.unwrap();

    let mut refused = config.clone();
    refused.kafka = wrong(&broker);
    let t = start(refused, true).await;
    let users: Vec<String> = (0..WRITES).map(|_| user("secured")).collect();
    for id in &users {
        let response = t.put(id, &body("first")).await;
        assert!(response.status().is_success(), "{}", response.status());
    }
    // Several publish timeouts' worth of attempts.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(
        unpublished(&config.database_url).await,
        WRITES as i64,
        "with the wrong settings an event left the outbox (marked published); broker log:\n{}",
        broker.log()
    );
    t.shutdown.cancel();
    drop(t);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The settings are fixed: a replica with the right ones delivers the backlog.
    let _fixed = start(config.clone(), true).await;
    let consumer: StreamConsumer = broker
        .kafka_security()
        .unwrap()
        .client_config(&broker.brokers())
        .set("group.id", statecast_testkit::unique("g"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[config.events_topic.as_str()]).unwrap();
    let mut subjects = Vec::new();
    let mut errors = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(45);
    while subjects.len() < users.len() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, consumer.recv()).await {
            Ok(Ok(message)) => {
                let event = ProfileEvent::from_json(message.payload().unwrap_or_default()).unwrap();
                subjects.push(event.subject);
            }
            Ok(Err(e)) => errors.push(e.to_string()),
            Err(_) => panic!(
                "only {subjects:?} within 45 s; consumer errors: {errors:?}\nbroker log:\n{}",
                broker.log()
            ),
        }
    }
    assert_eq!(subjects, users, "every event, once, in the order written");
    let drained = common::eventually(Duration::from_secs(10), || async {
        unpublished(&config.database_url).await == 0
    })
    .await;
    assert!(
        drained,
        "the outbox was not marked published after delivery"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_kafka_password_keeps_the_events_in_the_outbox_until_it_is_fixed() {
    nothing_is_lost_while_the_settings_are_wrong(Security::SaslSsl, |broker| KafkaSecurityArgs {
        kafka_sasl_password: Some(Secret::new("not-the-password")),
        ..broker.args()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_kafka_certificate_keeps_the_events_in_the_outbox_until_it_is_fixed() {
    nothing_is_lost_while_the_settings_are_wrong(Security::Ssl, |broker| KafkaSecurityArgs {
        kafka_ssl_ca_location: Some(broker.untrusted_ca_file()),
        ..broker.args()
    })
    .await;
}
