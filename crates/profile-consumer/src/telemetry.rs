//! The per-record span: kind CONSUMER, named `process {topic}`, child of the producer's trace
//! context carried in the record's `traceparent`/`tracestate` headers (OpenTelemetry messaging
//! semantic conventions). A record without trace headers starts a new trace. The handler's
//! database, Redis and SMTP work are child spans through `#[tracing::instrument]`.

use rdkafka::Message;
use rdkafka::message::Headers;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The `process {topic}` span of one record; `messaging.message.id` is recorded once decoded.
pub fn record_span<M: Message>(message: &M, group: &str) -> tracing::Span {
    let topic = message.topic();
    let key = message
        .key()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .unwrap_or_default();
    let span = tracing::info_span!(
        "process",
        otel.name = %format!("process {topic}"),
        otel.kind = "consumer",
        otel.status_code = tracing::field::Empty,
        messaging.system = "kafka",
        messaging.operation.name = "process",
        messaging.operation.type = "process",
        messaging.destination.name = %topic,
        messaging.consumer.group.name = %group,
        messaging.kafka.message.key = %key,
        messaging.destination.partition.id = %message.partition(),
        messaging.kafka.offset = message.offset(),
        messaging.message.id = tracing::field::Empty,
        error.type = tracing::field::Empty,
    );
    let parent = statecast_telemetry::kafka::extract(message.headers());
    // Without an OpenTelemetry layer (tests, or telemetry disabled) there is nothing to link.
    let _ = span.set_parent(parent);
    span
}

/// The trace id of a W3C `traceparent` header value (`00-<trace id>-<span id>-<flags>`), if it
/// is well-formed and not all zeros. Parsed directly so the audit trail does not depend on a
/// propagator being installed.
pub fn trace_id_from_traceparent(value: &str) -> Option<String> {
    let mut parts = value.trim().split('-');
    let (version, trace_id, span_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    let well_formed = hex(version, 2)
        && version != "ff"
        && hex(trace_id, 32)
        && hex(span_id, 16)
        && hex(flags, 2)
        && trace_id.bytes().any(|b| b != b'0');
    well_formed.then(|| trace_id.to_ascii_lowercase())
}

/// The trace id of the record's `traceparent` header, if any.
pub fn record_trace_id<H: Headers>(headers: Option<&H>) -> Option<String> {
    let headers = headers?;
    headers
        .iter()
        .filter(|h| {
            h.key
                .eq_ignore_ascii_case(statecast_events::headers::TRACEPARENT)
        })
        .filter_map(|h| std::str::from_utf8(h.value?).ok())
        .filter_map(trace_id_from_traceparent)
        .last()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_id_is_read_from_a_valid_traceparent_only() {
        assert_eq!(
            trace_id_from_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
                .as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(
            trace_id_from_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(trace_id_from_traceparent("garbage"), None);
        assert_eq!(
            trace_id_from_traceparent("00-4bf9-00f067aa0ba902b7-01"),
            None
        );
    }
}
