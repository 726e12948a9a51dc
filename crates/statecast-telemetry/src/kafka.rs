//! W3C trace context over Kafka record headers.
//!
//! No official OpenTelemetry instrumentation exists for rdkafka, so these two adapters are ours:
//! [`inject`] writes the `traceparent`/`tracestate` of a context into record headers through the
//! globally installed propagator, and [`extract`] reads them back into a parent context.
//! A record without the headers yields an empty context, so the consumer's span starts a new
//! trace.

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector};
use rdkafka::message::{Header, Headers, OwnedHeaders};

/// Adds the trace context of `context` to `headers` and returns them.
pub fn inject(context: &Context, headers: OwnedHeaders) -> OwnedHeaders {
    let mut injector = HeaderInjector(Some(headers));
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(context, &mut injector);
    });
    injector.0.unwrap_or_default()
}

/// The trace context carried by `headers`, or an empty context when there is none.
pub fn extract<H: Headers>(headers: Option<&H>) -> Context {
    let extractor = HeaderExtractor::new(headers);
    opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(&extractor))
}

/// Trace context as a map of header names to values, for storing beside an outbox row.
pub fn to_map(context: &Context) -> std::collections::HashMap<String, String> {
    let mut map = std::collections::HashMap::new();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(context, &mut map);
    });
    map
}

/// The context stored by [`to_map`].
pub fn from_map(map: &std::collections::HashMap<String, String>) -> Context {
    opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(map))
}

/// `OwnedHeaders::insert` consumes and returns the headers, hence the `Option` dance.
struct HeaderInjector(Option<OwnedHeaders>);

impl Injector for HeaderInjector {
    fn set(&mut self, key: &str, value: String) {
        if let Some(headers) = self.0.take() {
            self.0 = Some(headers.insert(Header {
                key,
                value: Some(value.as_bytes()),
            }));
        }
    }
}

/// Header values that are valid UTF-8, by name; later duplicates win, as with HTTP.
struct HeaderExtractor(Vec<(String, String)>);

impl HeaderExtractor {
    fn new<H: Headers>(headers: Option<&H>) -> Self {
        let pairs = headers
            .map(|headers| {
                headers
                    .iter()
                    .filter_map(|header| {
                        let value = std::str::from_utf8(header.value?).ok()?;
                        Some((header.key.to_ascii_lowercase(), value.to_owned()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self(pairs)
    }
}

impl Extractor for HeaderExtractor {
    fn get(&self, key: &str) -> Option<&str> {
        let key = key.to_ascii_lowercase();
        self.0
            .iter()
            .rev()
            .find(|(name, _)| *name == key)
            .map(|(_, value)| value.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_str()).collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use opentelemetry_sdk::propagation::TraceContextPropagator;

    fn remote_context() -> Context {
        let span_context = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::from_key_value([("vendor", "x")]).unwrap(),
        );
        Context::new().with_remote_span_context(span_context)
    }

    #[test]
    fn context_survives_a_trip_through_kafka_headers() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let headers = inject(
            &remote_context(),
            OwnedHeaders::new().insert(Header {
                key: "content-type",
                value: Some("application/cloudevents+json"),
            }),
        );
        let traceparent = headers
            .iter()
            .find(|h| h.key == "traceparent")
            .and_then(|h| h.value)
            .unwrap();
        assert_eq!(
            traceparent,
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert_eq!(headers.count(), 3, "content-type, traceparent, tracestate");

        let back = extract(Some(&headers));
        let span = back.span();
        let span_context = span.span_context();
        assert_eq!(
            span_context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(span_context.span_id().to_string(), "00f067aa0ba902b7");
        assert!(span_context.is_remote());
        assert_eq!(span_context.trace_state().get("vendor"), Some("x"));
    }

    #[test]
    fn record_without_trace_headers_gives_an_empty_context() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let headers = OwnedHeaders::new().insert(Header {
            key: "content-type",
            value: Some("application/json"),
        });
        assert!(!extract(Some(&headers)).span().span_context().is_valid());
        assert!(
            !extract::<OwnedHeaders>(None)
                .span()
                .span_context()
                .is_valid()
        );
    }

    #[test]
    fn context_survives_a_trip_through_the_outbox_map() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let map = to_map(&remote_context());
        assert!(map.contains_key("traceparent"));
        let back = from_map(&map);
        assert_eq!(
            back.span().span_context().trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }
}
