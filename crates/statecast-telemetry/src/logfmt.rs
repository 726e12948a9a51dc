//! JSON log lines that carry the OpenTelemetry `trace_id` and `span_id` of the current span,
//! so a log line can be found from a trace in Jaeger and the other way round.
//!
//! The line itself is `tracing-subscriber`'s JSON format; this formatter appends the two ids.

use std::fmt;
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{Format, Json, JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// `tracing-subscriber`'s JSON event format plus `trace_id` and `span_id`.
#[derive(Debug)]
pub struct JsonWithTraceIds {
    inner: Format<Json>,
    fields: JsonFields,
}

impl Default for JsonWithTraceIds {
    fn default() -> Self {
        Self {
            inner: tracing_subscriber::fmt::format()
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false),
            fields: JsonFields::new(),
        }
    }
}

impl<S, N> FormatEvent<S, N> for JsonWithTraceIds
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // Read the ids before formatting: the lookup briefly locks span extensions.
        let ids = current_ids();
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        let _ = &self.fields;
        let trimmed = line.trim_end();
        match (ids, trimmed.strip_suffix('}')) {
            (Some((trace_id, span_id)), Some(body)) => writeln!(
                writer,
                "{body},\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\"}}"
            ),
            _ => writeln!(writer, "{trimmed}"),
        }
    }
}

fn current_ids() -> Option<(String, String)> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let span = tracing::Span::current();
    if span.is_none() {
        return None;
    }
    let context = span.context();
    let otel_span = context.span();
    let span_context = otel_span.span_context();
    span_context.is_valid().then(|| {
        (
            span_context.trace_id().to_string(),
            span_context.span_id().to_string(),
        )
    })
}
