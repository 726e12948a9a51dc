//! The per-record span: `process {topic}`, kind consumer, child of the record's traceparent,
//! with the messaging attributes, and the handler's work as child spans.

use std::sync::{Arc, Mutex};

use opentelemetry::KeyValue;
use opentelemetry::trace::{SpanKind, TracerProvider as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use profile_consumer::HandlerKind;
use statecast_events::EventType;
use tracing_subscriber::layer::SubscriberExt;

use crate::support::{self, Running};

/// Keeps every exported span.
#[derive(Debug, Clone, Default)]
struct Collect(Arc<Mutex<Vec<SpanData>>>);

impl SpanExporter for Collect {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.0.lock().unwrap().extend(batch);
        Ok(())
    }
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|KeyValue { key: k, .. }| k.as_str() == key)
        .map(|kv| kv.value.to_string())
}

// Single-threaded runtime: the thread-local subscriber sees every task of the consumer.
#[tokio::test(flavor = "current_thread")]
async fn each_record_gets_a_consumer_span_under_the_producers_trace() {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let collect = Collect::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(collect.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let _guard = tracing::subscriber::set_default(subscriber);

    let db = statecast_testkit::fresh_database().await.unwrap();
    let topic = support::topic("traced", 1).await;
    let event = support::event(
        EventType::UserCreated,
        "traced-user",
        1,
        "t@example.com",
        "PT",
    );
    support::produce(&support::producer(), &topic, &event).await;
    let config = support::config(&topic, HandlerKind::Audit, Some(&db));
    let group = config.kafka_group_id.clone();
    let audit = Running::start(config);
    audit.wait_records("processed", 1.0).await;
    audit.stop().await;
    let _ = provider.force_flush();

    let spans = collect.0.lock().unwrap().clone();
    let process = spans
        .iter()
        .find(|s| s.name == format!("process {topic}"))
        .unwrap_or_else(|| {
            panic!(
                "no process span among {:?}",
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            )
        });
    assert_eq!(process.span_kind, SpanKind::Consumer);
    assert_eq!(
        process.span_context.trace_id().to_string(),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(process.parent_span_id.to_string(), "00f067aa0ba902b7");
    let attr = |k: &str| attribute(process, k);
    assert_eq!(attr("messaging.system").as_deref(), Some("kafka"));
    assert_eq!(attr("messaging.operation.name").as_deref(), Some("process"));
    assert_eq!(attr("messaging.operation.type").as_deref(), Some("process"));
    assert_eq!(attr("messaging.destination.name"), Some(topic.clone()));
    assert_eq!(attr("messaging.consumer.group.name"), Some(group));
    assert_eq!(
        attr("messaging.kafka.message.key").as_deref(),
        Some("traced-user")
    );
    assert_eq!(
        attr("messaging.destination.partition.id").as_deref(),
        Some("0")
    );
    assert_eq!(attr("messaging.kafka.offset").as_deref(), Some("0"));
    assert_eq!(attr("messaging.message.id"), Some(event.id.to_string()));

    let audit_span = spans
        .iter()
        .find(|s| s.name == "audit")
        .expect("the handler's span");
    assert_eq!(audit_span.parent_span_id, process.span_context.span_id());
    let claim = spans
        .iter()
        .find(|s| s.name == "claim_event")
        .expect("the database work's span");
    assert_eq!(claim.parent_span_id, audit_span.span_context.span_id());
}
