//! Which trace to show, and the tree it is printed as.
//!
//! [`select`] picks the trace: a given id (or unique prefix), else the latest trace holding a
//! write's server span (`PUT`, `PATCH`, `POST`, `DELETE`; so a health probe or a read made after
//! the write does not hide it), or with `any` the trace that began last. [`render`] prints it:
//!
//! ```text
//! trace 4bf92f3577b34da6a3ce929d0e0e4736 · 2026-12-01 10:00:00.123 UTC · 9 spans · 6 services · 48.2 ms
//! PUT /v1/profiles/{id} [profile-api, server] 12.1 ms
//! ├── profile write [profile-api] 8.0 ms +1.2 ms
//! └── send user-events [profile-api, producer] 2.3 ms +14.0 ms
//!     ├── process user-events [profile-consumer-audit, consumer] 4.1 ms +20.3 ms
//!     └── process user-events [profile-consumer-email, consumer] 9.9 ms +21.0 ms
//! ```
//!
//! Each line: name, `[service, kind]` (kind left out for internal spans), duration, and the
//! start relative to the trace's first span. Children are in start order. A span whose parent
//! was not received (yet) is printed as a root, saying so; a failed span ends in `ERROR`.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::Path;

use crate::{Error, Result, SpanKind, SpanStatus, StoredSpan};

/// The spans of the trace to show: `id` (full or a unique prefix, any case), else the trace of
/// the latest write's server span (`any`: the trace that began last). `dir` is only for
/// messages.
pub fn select(
    spans: Vec<StoredSpan>,
    id: Option<&str>,
    any: bool,
    dir: &Path,
) -> Result<Vec<StoredSpan>> {
    if spans.is_empty() {
        return Err(Error::NoSpans {
            dir: dir.to_owned(),
        });
    }
    let trace_id = match id {
        Some(id) => {
            let wanted = id.trim().to_ascii_lowercase();
            let matching: BTreeSet<&str> = spans
                .iter()
                .map(|s| s.trace_id.as_str())
                .filter(|t| !wanted.is_empty() && t.starts_with(&wanted))
                .collect();
            match matching.len() {
                0 => {
                    return Err(Error::UnknownTrace {
                        id: id.to_owned(),
                        dir: dir.to_owned(),
                    });
                }
                1 => matching.into_iter().next().unwrap_or_default().to_owned(),
                count => {
                    // The full id of one trace is also the prefix of no other.
                    if matching.contains(wanted.as_str()) {
                        wanted
                    } else {
                        return Err(Error::AmbiguousTrace {
                            id: id.to_owned(),
                            count,
                        });
                    }
                }
            }
        }
        None if any => {
            // The trace that began last (a write's consumer spans start after a read that
            // followed it; the read is still the later request).
            let mut starts: HashMap<&str, u64> = HashMap::new();
            for span in &spans {
                let start = starts.entry(&span.trace_id).or_insert(u64::MAX);
                *start = (*start).min(span.start_unix_nano);
            }
            starts
                .into_iter()
                .max_by_key(|(_, start)| *start)
                .map(|(trace, _)| trace.to_owned())
                .unwrap_or_default()
        }
        None => {
            let latest = spans
                .iter()
                .filter(|s| s.is_write_request())
                .max_by_key(|s| s.start_unix_nano);
            match latest {
                Some(span) => span.trace_id.clone(),
                None => {
                    return Err(Error::NoWrite {
                        dir: dir.to_owned(),
                        spans: spans.len(),
                    });
                }
            }
        }
    };
    let mut seen = BTreeSet::new();
    Ok(spans
        .into_iter()
        .filter(|s| s.trace_id == trace_id)
        // A span exported twice (an exporter retrying) is shown once.
        .filter(|s| seen.insert(s.span_id.clone()))
        .collect())
}

/// A duration in nanoseconds for people: `850 µs`, `12.3 ms`, `4.56 s`.
pub fn format_duration(nanos: u64) -> String {
    let nanos = nanos as f64;
    if nanos < 1_000_000.0 {
        format!("{:.0} µs", nanos / 1_000.0)
    } else if nanos < 1_000_000_000.0 {
        format!("{:.1} ms", nanos / 1_000_000.0)
    } else {
        format!("{:.2} s", nanos / 1_000_000_000.0)
    }
}

/// The trace of `spans` (all of one trace, as [`select`] returns them) as a tree.
pub fn render(spans: &[StoredSpan]) -> String {
    let mut out = String::new();
    let Some(first) = spans.iter().map(|s| s.start_unix_nano).min() else {
        return out;
    };
    let last = spans.iter().map(|s| s.end_unix_nano).max().unwrap_or(first);
    let services: BTreeSet<&str> = spans.iter().map(|s| s.service.as_str()).collect();
    let started = i64::try_from(first)
        .map(chrono::DateTime::from_timestamp_nanos)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string())
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "trace {} · {started} · {} span{} · {} service{} · {}",
        spans[0].trace_id,
        spans.len(),
        if spans.len() == 1 { "" } else { "s" },
        services.len(),
        if services.len() == 1 { "" } else { "s" },
        format_duration(last.saturating_sub(first)),
    );

    let ids: BTreeSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let mut children: HashMap<&str, Vec<&StoredSpan>> = HashMap::new();
    let mut roots: Vec<&StoredSpan> = Vec::new();
    for span in spans {
        if !span.parent_span_id.is_empty()
            && span.parent_span_id != span.span_id
            && ids.contains(span.parent_span_id.as_str())
        {
            children
                .entry(span.parent_span_id.as_str())
                .or_default()
                .push(span);
        } else {
            roots.push(span);
        }
    }
    let by_start = |a: &&StoredSpan, b: &&StoredSpan| {
        (a.start_unix_nano, &a.name).cmp(&(b.start_unix_nano, &b.name))
    };
    roots.sort_by(by_start);
    for list in children.values_mut() {
        list.sort_by(by_start);
    }
    // Depth-first, iteratively: (span, prefix of its children's lines, own connector).
    let mut stack: Vec<(&StoredSpan, String, &str)> = roots
        .iter()
        .rev()
        .map(|s| (*s, String::new(), ""))
        .collect();
    let mut printed = BTreeSet::new();
    while let Some((span, prefix, connector)) = stack.pop() {
        if !printed.insert(span.span_id.as_str()) {
            continue; // a parent cycle in bad data: print each span once
        }
        let orphan = !span.parent_span_id.is_empty() && !ids.contains(span.parent_span_id.as_str());
        let _ = writeln!(out, "{prefix}{connector}{}", line(span, first, orphan));
        let child_prefix = match connector {
            "├── " => format!("{prefix}│   "),
            "└── " => format!("{prefix}    "),
            _ => prefix.clone(),
        };
        if let Some(list) = children.get(span.span_id.as_str()) {
            for (i, child) in list.iter().enumerate().rev() {
                let connector = if i + 1 == list.len() {
                    "└── "
                } else {
                    "├── "
                };
                stack.push((child, child_prefix.clone(), connector));
            }
        }
    }
    out
}

/// One span's line, without the tree prefix; `orphan` when its parent was not received.
fn line(span: &StoredSpan, trace_start: u64, orphan: bool) -> String {
    let mut text = span.name.clone();
    if span.kind == SpanKind::Internal || span.kind == SpanKind::Unspecified {
        let _ = write!(text, " [{}]", span.service);
    } else {
        let _ = write!(text, " [{}, {}]", span.service, span.kind.as_str());
    }
    let _ = write!(text, " {}", format_duration(span.duration_nanos()));
    let offset = span.start_unix_nano.saturating_sub(trace_start);
    if offset > 0 {
        let _ = write!(text, " +{}", format_duration(offset));
    }
    if orphan {
        let _ = write!(text, " (parent {} not received)", span.parent_span_id);
    }
    if span.status == SpanStatus::Error {
        text.push_str(" ERROR");
        if !span.status_message.is_empty() {
            let _ = write!(text, ": {}", span.status_message);
        }
    }
    text
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const MS: u64 = 1_000_000;
    /// 2026-12-01 10:00:00 UTC in nanoseconds.
    const T0: u64 = 1_796_119_200 * 1_000_000_000;

    fn span(
        id: &str,
        parent: &str,
        service: &str,
        name: &str,
        kind: SpanKind,
        start_ms: u64,
        duration_ms: u64,
    ) -> StoredSpan {
        StoredSpan {
            trace_id: TRACE.into(),
            span_id: format!("{id:0>16}"),
            parent_span_id: if parent.is_empty() {
                String::new()
            } else {
                format!("{parent:0>16}")
            },
            service: service.into(),
            name: name.into(),
            kind,
            start_unix_nano: T0 + start_ms * MS,
            end_unix_nano: T0 + (start_ms + duration_ms) * MS,
            status: SpanStatus::Unset,
            status_message: String::new(),
            attributes: Default::default(),
        }
    }

    fn write_trace() -> Vec<StoredSpan> {
        let mut server = span(
            "a",
            "",
            "profile-api",
            "PUT /v1/profiles/{id}",
            SpanKind::Server,
            0,
            12,
        );
        server
            .attributes
            .insert("http.request.method".into(), "PUT".into());
        // Deliberately out of order, as exporters deliver them.
        vec![
            span(
                "e",
                "c",
                "profile-consumer-email",
                "process user-events",
                SpanKind::Consumer,
                21,
                10,
            ),
            span(
                "c",
                "a",
                "profile-api",
                "send user-events",
                SpanKind::Producer,
                14,
                2,
            ),
            server,
            span(
                "b",
                "a",
                "profile-api",
                "profile write",
                SpanKind::Internal,
                1,
                8,
            ),
            span(
                "d",
                "c",
                "profile-consumer-audit",
                "process user-events",
                SpanKind::Consumer,
                20,
                4,
            ),
        ]
    }

    #[test]
    fn a_trace_renders_as_a_tree_in_start_order_with_services_and_durations() {
        let text = render(&write_trace());
        let expected = "\
trace 4bf92f3577b34da6a3ce929d0e0e4736 · 2026-12-01 10:00:00.000 UTC · 5 spans · 3 services · 31.0 ms
PUT /v1/profiles/{id} [profile-api, server] 12.0 ms
├── profile write [profile-api] 8.0 ms +1.0 ms
└── send user-events [profile-api, producer] 2.0 ms +14.0 ms
    ├── process user-events [profile-consumer-audit, consumer] 4.0 ms +20.0 ms
    └── process user-events [profile-consumer-email, consumer] 10.0 ms +21.0 ms
";
        assert_eq!(text, expected, "\n{text}");
    }

    #[test]
    fn deeper_trees_keep_their_guide_lines() {
        let spans = vec![
            span("a", "", "s", "root", SpanKind::Server, 0, 10),
            span("b", "a", "s", "first", SpanKind::Internal, 1, 1),
            span("c", "b", "s", "first's child", SpanKind::Client, 1, 1),
            span("d", "a", "s", "second", SpanKind::Internal, 2, 1),
        ];
        let text = render(&spans);
        let tree: Vec<&str> = text.lines().skip(1).collect();
        assert_eq!(
            tree,
            [
                "root [s, server] 10.0 ms",
                "├── first [s] 1.0 ms +1.0 ms",
                "│   └── first's child [s, client] 1.0 ms +1.0 ms",
                "└── second [s] 1.0 ms +2.0 ms",
            ]
        );
    }

    #[test]
    fn a_span_whose_parent_did_not_arrive_is_a_root_and_errors_are_marked() {
        let mut failed = span(
            "d",
            "c",
            "profile-consumer-audit",
            "process user-events",
            SpanKind::Consumer,
            20,
            4,
        );
        failed.status = SpanStatus::Error;
        failed.status_message = "database down".into();
        let spans = vec![
            span(
                "a",
                "",
                "profile-api",
                "PUT /v1/profiles/{id}",
                SpanKind::Server,
                0,
                12,
            ),
            failed,
        ];
        let text = render(&spans);
        let tree: Vec<&str> = text.lines().skip(1).collect();
        assert_eq!(
            tree,
            [
                "PUT /v1/profiles/{id} [profile-api, server] 12.0 ms",
                "process user-events [profile-consumer-audit, consumer] 4.0 ms +20.0 ms \
                 (parent 000000000000000c not received) ERROR: database down",
            ]
        );
    }

    fn other_trace(trace: &str, name: &str, method: &str, start_ms: u64) -> StoredSpan {
        let mut s = span("f", "", "profile-api", name, SpanKind::Server, start_ms, 1);
        s.trace_id = trace.into();
        s.attributes
            .insert("http.request.method".into(), method.into());
        s
    }

    #[test]
    fn the_latest_write_is_chosen_over_a_later_probe_or_read() {
        let dir = PathBuf::from("/d");
        let mut spans = write_trace();
        spans.push(other_trace(&"1".repeat(32), "GET /readyz", "GET", 100));
        spans.push(other_trace(
            &"2".repeat(32),
            "GET /v1/profiles/{id}",
            "GET",
            200,
        ));
        let chosen = select(spans.clone(), None, false, &dir).unwrap();
        assert_eq!(chosen.len(), 5);
        assert!(chosen.iter().all(|s| s.trace_id == TRACE));
        // An older write loses to a newer one.
        spans.push(other_trace(
            &"3".repeat(32),
            "DELETE /v1/profiles/{id}",
            "DELETE",
            50,
        ));
        let chosen = select(spans.clone(), None, false, &dir).unwrap();
        assert_eq!(chosen[0].trace_id, "3".repeat(32));
        // --any: the latest of all.
        let chosen = select(spans.clone(), None, true, &dir).unwrap();
        assert_eq!(chosen[0].trace_id, "2".repeat(32));
        // --any goes by when a trace began: a read 5 ms after the write began is later than
        // the write, though the write's consumer spans started after it.
        let mut spans = write_trace();
        spans.push(other_trace(
            &"5".repeat(32),
            "GET /v1/profiles/{id}",
            "GET",
            5,
        ));
        let chosen = select(spans.clone(), None, true, &dir).unwrap();
        assert_eq!(chosen[0].trace_id, "5".repeat(32));
        let chosen = select(spans, None, false, &dir).unwrap();
        assert_eq!(chosen[0].trace_id, TRACE);
    }

    #[test]
    fn a_trace_is_chosen_by_id_or_unique_prefix_and_duplicates_are_dropped() {
        let dir = PathBuf::from("/d");
        let mut spans = write_trace();
        spans.push(spans[0].clone()); // exported twice
        spans.push(other_trace(&"4bf9".repeat(8), "GET /x", "GET", 1));
        let full = select(spans.clone(), Some(&TRACE.to_uppercase()), false, &dir).unwrap();
        assert_eq!(full.len(), 5);
        let prefix = select(spans.clone(), Some("4bf92f35"), false, &dir).unwrap();
        assert_eq!(prefix.len(), 5);
        let error = select(spans.clone(), Some("4bf9"), false, &dir).unwrap_err();
        assert!(
            matches!(error, Error::AmbiguousTrace { count: 2, .. }),
            "{error}"
        );
        let error = select(spans, Some("ffff"), false, &dir).unwrap_err();
        assert!(
            error.to_string().starts_with("no trace ffff in /d"),
            "{error}"
        );
    }

    #[test]
    fn without_spans_or_writes_the_message_says_what_to_do() {
        let dir = PathBuf::from("/d");
        let error = select(Vec::new(), None, false, &dir).unwrap_err();
        assert!(error.to_string().contains("make dev starts it"), "{error}");
        let probe = other_trace(&"1".repeat(32), "GET /readyz", "GET", 1);
        let error = select(vec![probe], None, false, &dir).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("no write in the 1 spans of /d"),
            "{error}"
        );
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(format_duration(850_000), "850 µs");
        assert_eq!(format_duration(12_345_678), "12.3 ms");
        assert_eq!(format_duration(4_560_000_000), "4.56 s");
    }
}
