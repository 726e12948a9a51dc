//! The outbox relay against the shared broker: record shape and trace context, and two replicas
//! relaying at once without duplicates or reordering; and, against a broker that never answers,
//! the fencing of a leader whose session ends.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::OnceLock;
use std::time::Duration;

use common::{body, start, user};
use statecast_testkit as testkit;

/// Spans need a subscriber with the OpenTelemetry layer to get ids; install one per binary.
fn telemetry() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let config = statecast_telemetry::TelemetryConfig {
            service_name: "profile-api-test".to_owned(),
            otlp_endpoint: None,
            otlp_protocol: statecast_telemetry::OtlpProtocol::Grpc,
            log_format: statecast_telemetry::LogFormat::Pretty,
            log_filter: "warn,profile_api=info".to_owned(),
        };
        // The telemetry handle only flushes exports; there are none here.
        std::mem::forget(statecast_telemetry::init(&config).unwrap());
    });
}

#[tokio::test]
async fn records_are_cloudevents_keyed_by_user_and_continue_the_request_trace() {
    telemetry();
    let config = common::fresh_config("record").await;
    let brokers = config.kafka_brokers.clone();
    let topic = config.events_topic.clone();
    testkit::create_topic(&brokers, &topic, 1).await.unwrap();
    let t = start(config, true).await;
    let id = user("record");
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let response = t
        .http
        .put(t.url(&format!("/v1/profiles/{id}")))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(&body("Traced"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);

    let received = common::consume(&brokers, &topic, 1, Duration::from_secs(30)).await;
    assert_eq!(received.len(), 1);
    let record = &received[0];
    assert_eq!(record.key, id);
    assert_eq!(
        record.event.event_type,
        statecast_events::EventType::UserCreated
    );
    assert_eq!(record.event.data.name.as_deref(), Some("Traced"));
    assert_eq!(
        record.headers["content-type"],
        "application/cloudevents+json"
    );
    let traceparent = &record.headers["traceparent"];
    assert!(
        traceparent.starts_with(&format!("00-{trace_id}-")),
        "the record continues the caller's trace: {traceparent}"
    );
    assert!(
        !traceparent.contains("00f067aa0ba902b7"),
        "the record's parent is the relay's send span, not the caller's span"
    );
    let (trace_context,): (serde_json::Value,) =
        sqlx::query_as("SELECT trace_context FROM outbox WHERE user_id = $1")
            .bind(&id)
            .fetch_one(t.app.pool())
            .await
            .unwrap();
    assert!(
        trace_context["traceparent"]
            .as_str()
            .unwrap()
            .contains(trace_id)
    );
}

/// A PUT, sent again while the answer is the 503 `database-unavailable` problem with
/// `Retry-After` (the replica got no database connection in time, nothing was written), as
/// clients are told to.
/// Twenty writes at once on a loaded two-core machine can wait out a test replica's 1 s
/// connection wait; that refusal is the API working, and the test is about what the relays do
/// with what was accepted. Returns the last status and its body.
async fn put_as_a_client_would(
    replica: &common::TestApp,
    id: &str,
    body: &serde_json::Value,
) -> (reqwest::StatusCode, String) {
    let mut tries = 0;
    loop {
        let response = replica.put(id, body).await;
        let status = response.status();
        let asks_again = status == reqwest::StatusCode::SERVICE_UNAVAILABLE
            && response.headers().contains_key("retry-after");
        let answer = response.text().await.unwrap_or_default();
        // Only the refusal before any write: a timed-out request may have committed, and
        // sending it again would make a second event the relays rightly publish.
        let asks_again = asks_again && answer.contains("database-unavailable");
        tries += 1;
        if !asks_again || tries == 20 {
            return (status, answer);
        }
        eprintln!("PUT {id}: {status} database-unavailable, sending it again ({tries})");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn two_relays_on_one_database_publish_each_event_once_in_user_order() {
    // The replicas' warnings (why a write was refused) go to the test's output.
    telemetry();
    let config = common::fresh_config("tworelays").await;
    let brokers = config.kafka_brokers.clone();
    let topic = config.events_topic.clone();
    testkit::create_topic(&brokers, &topic, 3).await.unwrap();
    let a = start(config.clone(), true).await;
    let b = start(config, true).await;

    let users: Vec<String> = (0..20).map(|_| user("two")).collect();
    let mut writes = Vec::new();
    for round in 0..5 {
        for (i, id) in users.iter().enumerate() {
            let replica = if (i + round) % 2 == 0 { &a } else { &b };
            writes.push(async move {
                // Writes to one user stay sequential; different users interleave.
                put_as_a_client_would(replica, id, &body(&format!("round {round}"))).await
            });
        }
        for (status, answer) in futures::future::join_all(writes.drain(..)).await {
            assert!(
                status.is_success(),
                "a write was refused: {status} {answer}"
            );
        }
    }
    let received = common::consume(&brokers, &topic, 100, Duration::from_secs(60)).await;
    assert_eq!(received.len(), 100);
    common::assert_ordered_and_unique(&received);
    // Nothing more arrives: no duplicate was published late.
    let extra = common::consume(&brokers, &topic, 101, Duration::from_secs(3)).await;
    assert_eq!(extra.len(), 100, "a duplicate was published");
    let published =
        a.metric("outbox_published_total", "").await + b.metric("outbox_published_total", "").await;
    assert_eq!(published, 100.0);
}

#[tokio::test]
async fn a_standby_relay_takes_over_when_the_leader_stops() {
    let config = common::fresh_config("failover").await;
    let brokers = config.kafka_brokers.clone();
    let topic = config.events_topic.clone();
    testkit::create_topic(&brokers, &topic, 1).await.unwrap();
    let first = start(config.clone(), true).await;
    let id = user("failover");
    first.put(&id, &body("v1")).await;
    // The first replica is the only relay, so it is the leader once this arrives.
    assert_eq!(
        common::consume(&brokers, &topic, 1, Duration::from_secs(30))
            .await
            .len(),
        1
    );

    let second = start(config, true).await;
    first.shutdown.cancel();
    drop(first);
    for round in 2..=4 {
        let response = second.put(&id, &body(&format!("v{round}"))).await;
        assert!(response.status().is_success());
    }
    let received = common::consume(&brokers, &topic, 4, Duration::from_secs(30)).await;
    let versions: Vec<i64> = received.iter().map(|r| r.event.profileversion).collect();
    assert_eq!(versions, [1, 2, 3, 4]);
    common::assert_ordered_and_unique(&received);
}

/// A "broker" that accepts connections and never answers: a producer's sends stay queued in it.
/// Reports which of its connections the client has closed.
struct SilentBroker {
    addr: std::net::SocketAddr,
    opened: std::sync::Arc<std::sync::Mutex<Vec<bool>>>,
}

impl SilentBroker {
    async fn start() -> Self {
        use tokio::io::AsyncReadExt as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let opened = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let connections = opened.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let index = {
                    let mut open = connections.lock().unwrap();
                    open.push(true);
                    open.len() - 1
                };
                let connections = connections.clone();
                tokio::spawn(async move {
                    let mut sink = [0u8; 4096];
                    while matches!(socket.read(&mut sink).await, Ok(n) if n > 0) {}
                    connections.lock().unwrap()[index] = false;
                });
            }
        });
        Self { addr, opened }
    }

    /// Per connection so far, whether the client still holds it open.
    fn open(&self) -> Vec<bool> {
        self.opened.lock().unwrap().clone()
    }
}

#[tokio::test]
async fn a_leader_whose_session_ends_destroys_its_producer_and_the_sends_it_still_queues() {
    let broker = SilentBroker::start().await;
    let mut config = common::fresh_config("fence").await;
    config.kafka_brokers = broker.addr.to_string();
    // Long enough that, unfenced, the sends would stay queued for the whole test.
    config.kafka_message_timeout_ms = 60_000;
    let t = start(config, true).await;
    let db = t.app.pool().clone();
    let leader = "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted \
                  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())";
    let led = common::eventually(Duration::from_secs(10), || async {
        sqlx::query_scalar::<_, i32>(leader)
            .fetch_optional(&db)
            .await
            .unwrap()
            .is_some()
    })
    .await;
    assert!(led, "the relay never became the leader");
    let id = user("fence");
    assert!(t.put(&id, &body("queued")).await.status().is_success());
    // The batch is in flight once its row is locked and the producer talks to the broker.
    let in_flight = common::eventually(Duration::from_secs(10), || async {
        let mut tx = db.begin().await.unwrap();
        let free: Vec<i64> = sqlx::query_scalar("SELECT id FROM outbox FOR UPDATE SKIP LOCKED")
            .fetch_all(&mut *tx)
            .await
            .unwrap();
        free.is_empty() && !broker.open().is_empty()
    })
    .await;
    assert!(in_flight, "the relay never took the batch");
    let pid: i32 = sqlx::query_scalar(leader).fetch_one(&db).await.unwrap();
    let before = broker.open().len();
    let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&db)
        .await
        .unwrap();
    assert!(ended);
    // The old leader notices within a heartbeat (100 ms here) and destroys its producer, which
    // purges the queued sends and then closes the broker connections. (A standby taking the lock
    // meanwhile waits out the takeover delay before its first batch.)
    let fenced = common::eventually(Duration::from_secs(2), || async {
        broker.open()[..before].iter().all(|open| !open)
    })
    .await;
    assert!(
        fenced,
        "the old leader still holds its broker connections (and queued sends) after its session ended: {:?}",
        broker.open()
    );
    let (unpublished,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(unpublished, 1, "nothing was marked published");
}
