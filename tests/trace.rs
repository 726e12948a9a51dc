//! One trace from the HTTP request through the outbox and Kafka into every consumer (issue 5).
//!
//! The real binaries run as processes, each exporting OTLP/gRPC to a receiver inside this test;
//! the broker is a private tansu instance so the topic is the real `user-events` and it can be
//! killed for the outage case. PostgreSQL, Redis and the SMTP sink are the stack's.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use statecast_system_tests::system::{System, SystemOptions, TOPIC};
use statecast_system_tests::{OtlpReceiver, ReceivedSpan};
use statecast_testkit as kit;

const HANDLERS: [&str; 4] = ["audit", "analytics", "email", "cache-refresh"];
// opentelemetry.proto.trace.v1.Span.SpanKind
const KIND_SERVER: i32 = 2;
const KIND_PRODUCER: i32 = 4;
const KIND_CONSUMER: i32 = 5;

async fn start(receiver: &OtlpReceiver) -> System {
    System::start(SystemOptions {
        otlp_endpoint: Some(receiver.endpoint()),
        ..SystemOptions::default()
    })
    .await
    .unwrap()
}

async fn put(system: &System, id: &str) {
    let response = reqwest::Client::new()
        .put(format!("{}/v1/profiles/{id}", system.api_url))
        .header("content-type", "application/json")
        .body(format!(
            r#"{{"name":"Trace Test","email":"{id}@example.com","country":"PT"}}"#
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
}

/// The spans of the PUT's trace once the server span, a send span and one process span per
/// consumer group have all arrived.
struct Flow {
    trace_id: String,
    server: ReceivedSpan,
    sends: Vec<ReceivedSpan>,
    processes: Vec<ReceivedSpan>,
    all: Vec<ReceivedSpan>,
}

fn find_flow(spans: &[ReceivedSpan], id: &str) -> Option<Flow> {
    let server = spans.iter().find(|s| {
        s.service == "profile-api"
            && s.span.kind == KIND_SERVER
            && s.attribute("http.route").as_deref() == Some("/v1/profiles/{id}")
            && s.attribute("http.request.method").as_deref() == Some("PUT")
            && s.attribute("url.path").is_none_or(|p| p.ends_with(id))
    })?;
    let trace_id = server.trace_id();
    let all: Vec<ReceivedSpan> = spans
        .iter()
        .filter(|s| s.trace_id() == trace_id)
        .cloned()
        .collect();
    let sends: Vec<ReceivedSpan> = all
        .iter()
        .filter(|s| s.span.kind == KIND_PRODUCER && s.span.name == format!("send {TOPIC}"))
        .cloned()
        .collect();
    let processes: Vec<ReceivedSpan> = all
        .iter()
        .filter(|s| s.span.kind == KIND_CONSUMER && s.span.name == format!("process {TOPIC}"))
        .cloned()
        .collect();
    let groups: BTreeSet<String> = processes
        .iter()
        .filter_map(|s| s.attribute("messaging.consumer.group.name"))
        .collect();
    (groups.len() == HANDLERS.len() && !sends.is_empty()).then(|| Flow {
        trace_id,
        server: server.clone(),
        sends,
        processes,
        all,
    })
}

/// Checks parent links and messaging attributes of a complete flow.
fn assert_flow_is_linked(flow: &Flow, id: &str) {
    let by_id: HashMap<String, &ReceivedSpan> = flow.all.iter().map(|s| (s.span_id(), s)).collect();
    // The send span hangs under the request: walking its parents reaches the server span.
    for send in &flow.sends {
        let mut cursor = send.parent_span_id();
        let mut reached = false;
        for _ in 0..32 {
            if cursor == flow.server.span_id() {
                reached = true;
                break;
            }
            match by_id.get(&cursor) {
                Some(parent) => cursor = parent.parent_span_id(),
                None => break,
            }
        }
        assert!(
            reached,
            "send span {} does not descend from the server span {}",
            send.span_id(),
            flow.server.span_id()
        );
        assert_eq!(send.service, "profile-api");
        assert_eq!(send.attribute("messaging.system").as_deref(), Some("kafka"));
        assert_eq!(
            send.attribute("messaging.destination.name").as_deref(),
            Some(TOPIC)
        );
    }
    let send_ids: BTreeSet<String> = flow.sends.iter().map(ReceivedSpan::span_id).collect();
    let mut services = BTreeSet::new();
    for process in &flow.processes {
        assert!(
            send_ids.contains(&process.parent_span_id()),
            "process span in {} has parent {}, not a send span",
            process.service,
            process.parent_span_id()
        );
        services.insert(process.service.clone());
        let attr = |k: &str| process.attribute(k);
        assert_eq!(attr("messaging.system").as_deref(), Some("kafka"));
        assert_eq!(attr("messaging.operation.type").as_deref(), Some("process"));
        assert_eq!(attr("messaging.operation.name").as_deref(), Some("process"));
        assert_eq!(attr("messaging.destination.name").as_deref(), Some(TOPIC));
        assert_eq!(attr("messaging.kafka.message.key").as_deref(), Some(id));
        let partition: i64 = attr("messaging.destination.partition.id")
            .and_then(|p| p.parse().ok())
            .expect("partition id attribute");
        assert!((0..3).contains(&partition));
        let offset: i64 = attr("messaging.kafka.offset")
            .and_then(|o| o.parse().ok())
            .expect("offset attribute");
        assert!(offset >= 0);
        let message_id = attr("messaging.message.id").expect("message id attribute");
        assert_eq!(
            uuid::Uuid::parse_str(&message_id)
                .map(|u| u.get_version_num())
                .ok(),
            Some(7),
            "messaging.message.id must be the event's UUIDv7, got {message_id}"
        );
    }
    let expected: BTreeSet<String> = HANDLERS
        .iter()
        .map(|h| format!("profile-consumer-{h}"))
        .collect();
    assert_eq!(services, expected, "one process span per consumer app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_trace_runs_from_the_request_through_kafka_into_every_consumer() {
    let receiver = OtlpReceiver::start().await.unwrap();
    let system = start(&receiver).await;
    let id = kit::unique("trace").replace('-', "_");
    put(&system, &id).await;

    let flow = receiver
        .wait_for(Duration::from_secs(60), |spans| find_flow(spans, &id))
        .await
        .unwrap();
    assert_flow_is_linked(&flow, &id);
    assert_eq!(
        flow.processes.len(),
        HANDLERS.len(),
        "no event processed twice"
    );

    // Logs of the API and of every consumer carry the same trace id.
    let api_log = system.api.log_text();
    assert!(
        api_log.contains(&flow.trace_id),
        "API log lacks trace id {}",
        flow.trace_id
    );
    for consumer in &system.consumers {
        assert!(
            consumer.service.log_text().contains(&flow.trace_id),
            "{} lacks trace id {}",
            consumer.service.log.display(),
            flow.trace_id
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_trace_survives_a_broker_outage_between_request_and_publish() {
    let receiver = OtlpReceiver::start().await.unwrap();
    let mut system = start(&receiver).await;
    // Stop the consumers first: the broker they joined is about to vanish.
    system.stop_consumers().await.unwrap();
    system.broker.kill().await;

    let id = kit::unique("outage").replace('-', "_");
    put(&system, &id).await;
    // The event waits in the outbox while the broker is down.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        find_flow(&receiver.spans(), &id).is_none(),
        "nothing can have been consumed while the broker is down"
    );

    system.broker.restart().await.unwrap();
    system.create_topics().await.unwrap();
    for handler in HANDLERS {
        system.start_consumer(handler).await.unwrap();
    }

    let flow = receiver
        .wait_for(Duration::from_secs(90), |spans| find_flow(spans, &id))
        .await
        .unwrap();
    assert_flow_is_linked(&flow, &id);
}
