//! [`StoredSpan`]: one span as stored (one JSON object per line) and shown, flattened from the
//! OTLP message: ids as lowercase hex, the exporting process's `service.name`, kind and status
//! as words, attributes as JSON values.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{span, status};
use serde::{Deserialize, Serialize};

/// `service.name` of spans whose resource names none (the OpenTelemetry default).
pub const UNKNOWN_SERVICE: &str = "unknown_service";

/// OpenTelemetry span kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SpanKind {
    /// Not given.
    #[default]
    Unspecified,
    /// In-process work.
    Internal,
    /// Handling a request (the API's HTTP span).
    Server,
    /// Making a request (a database query, a Redis command).
    Client,
    /// Sending a message (the relay's `send user-events`).
    Producer,
    /// Handling a message (a consumer's `process user-events`).
    Consumer,
}

impl SpanKind {
    fn from_otlp(kind: i32) -> Self {
        match span::SpanKind::try_from(kind) {
            Ok(span::SpanKind::Internal) => Self::Internal,
            Ok(span::SpanKind::Server) => Self::Server,
            Ok(span::SpanKind::Client) => Self::Client,
            Ok(span::SpanKind::Producer) => Self::Producer,
            Ok(span::SpanKind::Consumer) => Self::Consumer,
            Ok(span::SpanKind::Unspecified) | Err(_) => Self::Unspecified,
        }
    }

    /// The lowercase name (`server`, `producer`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::Internal => "internal",
            Self::Server => "server",
            Self::Client => "client",
            Self::Producer => "producer",
            Self::Consumer => "consumer",
        }
    }
}

/// OpenTelemetry span status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SpanStatus {
    /// Not set.
    #[default]
    Unset,
    /// Explicitly successful.
    Ok,
    /// Failed.
    Error,
}

/// One span as stored and shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredSpan {
    /// Trace id, 32 lowercase hex digits.
    pub trace_id: String,
    /// Span id, 16 lowercase hex digits.
    pub span_id: String,
    /// Parent span id, empty for a root span.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub parent_span_id: String,
    /// `service.name` of the process that exported it.
    pub service: String,
    /// Span name (`PUT /v1/profiles/{id}`, `send user-events`, ...).
    pub name: String,
    /// Span kind.
    #[serde(default)]
    pub kind: SpanKind,
    /// Start, nanoseconds since the Unix epoch.
    pub start_unix_nano: u64,
    /// End, nanoseconds since the Unix epoch.
    pub end_unix_nano: u64,
    /// Status code.
    #[serde(default)]
    pub status: SpanStatus,
    /// Status message, if any.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub status_message: String,
    /// Attributes of the span.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, serde_json::Value>,
}

impl StoredSpan {
    /// Duration in nanoseconds (0 if the end is before the start).
    pub fn duration_nanos(&self) -> u64 {
        self.end_unix_nano.saturating_sub(self.start_unix_nano)
    }

    /// A string attribute.
    pub fn attribute_str(&self, key: &str) -> Option<&str> {
        self.attributes.get(key)?.as_str()
    }

    /// Whether this is the API's server span of a write: kind SERVER with an HTTP method of
    /// `PUT`, `PATCH`, `POST` or `DELETE` (`http.request.method`, or the older `http.method`).
    pub fn is_write_request(&self) -> bool {
        self.kind == SpanKind::Server
            && self
                .attribute_str("http.request.method")
                .or_else(|| self.attribute_str("http.method"))
                .is_some_and(|m| {
                    ["PUT", "PATCH", "POST", "DELETE"]
                        .iter()
                        .any(|w| m.eq_ignore_ascii_case(w))
                })
    }
}

/// Every span of an OTLP export request, flattened, with its resource's `service.name`.
pub fn from_request(request: ExportTraceServiceRequest) -> Vec<StoredSpan> {
    let mut spans = Vec::new();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                any_value::Value::StringValue(s) if !s.is_empty() => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_else(|| UNKNOWN_SERVICE.to_owned());
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                let (status, status_message) = match span.status {
                    Some(s) => (
                        match status::StatusCode::try_from(s.code) {
                            Ok(status::StatusCode::Ok) => SpanStatus::Ok,
                            Ok(status::StatusCode::Error) => SpanStatus::Error,
                            _ => SpanStatus::Unset,
                        },
                        s.message,
                    ),
                    None => (SpanStatus::Unset, String::new()),
                };
                spans.push(StoredSpan {
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    service: service.clone(),
                    name: span.name,
                    kind: SpanKind::from_otlp(span.kind),
                    start_unix_nano: span.start_time_unix_nano,
                    end_unix_nano: span.end_time_unix_nano,
                    status,
                    status_message,
                    attributes: attributes(&span.attributes),
                });
            }
        }
    }
    spans
}

fn attributes(pairs: &[KeyValue]) -> BTreeMap<String, serde_json::Value> {
    pairs
        .iter()
        .filter_map(|kv| Some((kv.key.clone(), json(kv.value.as_ref()?)?)))
        .collect()
}

fn json(value: &AnyValue) -> Option<serde_json::Value> {
    use serde_json::Value as J;
    Some(match value.value.as_ref()? {
        any_value::Value::StringValue(s) => J::String(s.clone()),
        any_value::Value::BoolValue(b) => J::Bool(*b),
        any_value::Value::IntValue(i) => J::from(*i),
        any_value::Value::DoubleValue(d) => J::from(*d),
        any_value::Value::BytesValue(b) => J::String(hex(b)),
        any_value::Value::ArrayValue(a) => J::Array(a.values.iter().filter_map(json).collect()),
        any_value::Value::KvlistValue(kv) => {
            J::Object(attributes(&kv.values).into_iter().collect())
        }
        other => J::String(format!("{other:?}")),
    })
}

/// Lowercase hex of `bytes` (empty for none).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};

    fn kv(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        }
    }

    #[test]
    fn an_export_request_is_flattened_with_the_service_name_and_hex_ids() {
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv(
                        "service.name",
                        any_value::Value::StringValue("profile-api".into()),
                    )],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span {
                        trace_id: vec![0xab; 16],
                        span_id: vec![0x01; 8],
                        name: "PUT /v1/profiles/{id}".into(),
                        kind: span::SpanKind::Server as i32,
                        start_time_unix_nano: 1_000,
                        end_time_unix_nano: 3_500,
                        attributes: vec![
                            kv(
                                "http.request.method",
                                any_value::Value::StringValue("PUT".into()),
                            ),
                            kv("http.response.status_code", any_value::Value::IntValue(201)),
                        ],
                        status: Some(Status {
                            message: "boom".into(),
                            code: status::StatusCode::Error as i32,
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let spans = from_request(request);
        assert_eq!(spans.len(), 1);
        let span = &spans[0];
        assert_eq!(span.trace_id, "ab".repeat(16));
        assert_eq!(span.span_id, "0101010101010101");
        assert_eq!(span.parent_span_id, "");
        assert_eq!(span.service, "profile-api");
        assert_eq!(span.kind, SpanKind::Server);
        assert_eq!(span.duration_nanos(), 2_500);
        assert_eq!(span.status, SpanStatus::Error);
        assert_eq!(span.status_message, "boom");
        assert_eq!(span.attributes["http.response.status_code"], 201);
        assert!(span.is_write_request());
        let line = serde_json::to_string(span).unwrap();
        assert_eq!(serde_json::from_str::<StoredSpan>(&line).unwrap(), *span);
    }

    #[test]
    fn a_resource_without_a_service_name_is_unknown_service() {
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span::default()],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        assert_eq!(from_request(request)[0].service, UNKNOWN_SERVICE);
    }
}
