//! Spans on disk: one [`StoredSpan`] per line of `<TRACES_DIR>/spans.jsonl`, appended as they
//! arrive. Past `TRACES_MAX_FILE_BYTES` the file becomes `spans.jsonl.1` (replacing the previous
//! one) and a new one starts, so the store holds between one and two files' worth of the most
//! recent spans.
//!
//! Why JSON lines: the receiver only appends, the viewer reads everything back in a few
//! milliseconds at development volumes, and a person can `grep` or `jq` the file. A line cut
//! short (the receiver killed mid-write, or read while being written) is skipped when read.

use std::fs::{File, OpenOptions};
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::{Error, Result, StoredSpan};

/// The current file of the store.
pub const FILE: &str = "spans.jsonl";
/// The previous file, after a rotation.
pub const ROTATED: &str = "spans.jsonl.1";

/// The appending side of the store; cheap to clone (one file handle shared behind a lock).
#[derive(Debug, Clone)]
pub struct SpanStore {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    file: File,
    written: u64,
    max_bytes: u64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

fn open_append(path: &Path) -> Result<(File, u64)> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io(path))?;
    let written = file.metadata().map_err(io(path))?.len();
    Ok((file, written))
}

impl SpanStore {
    /// Opens (creating it and `dir` if need be) the store in `dir`, rotating past `max_bytes`.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let (file, written) = open_append(&dir.join(FILE))?;
        Ok(Self {
            inner: Arc::new(Mutex::new(Inner {
                dir: dir.to_owned(),
                file,
                written,
                max_bytes: max_bytes.max(1),
            })),
        })
    }

    /// The store's directory.
    pub fn dir(&self) -> PathBuf {
        self.lock().dir.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while appending leaves at worst a cut line, which readers skip.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Appends `spans` in one write, then rotates if the file grew past the limit. Blocking:
    /// call it off the async threads.
    pub fn append(&self, spans: &[StoredSpan]) -> Result<()> {
        if spans.is_empty() {
            return Ok(());
        }
        let mut buffer = Vec::new();
        for span in spans {
            // A StoredSpan always serializes (string keys, finite numbers from integers).
            if serde_json::to_writer(&mut buffer, span).is_ok() {
                buffer.push(b'\n');
            }
        }
        let mut inner = self.lock();
        let path = inner.dir.join(FILE);
        inner.file.write_all(&buffer).map_err(io(&path))?;
        inner.file.flush().map_err(io(&path))?;
        inner.written += buffer.len() as u64;
        if inner.written > inner.max_bytes {
            let rotated = inner.dir.join(ROTATED);
            std::fs::rename(&path, &rotated).map_err(io(&rotated))?;
            let (file, written) = open_append(&path)?;
            inner.file = file;
            inner.written = written;
        }
        Ok(())
    }
}

/// Every span stored in `dir`, oldest file first, in the order received; lines that do not
/// parse are skipped. An absent directory or file is no spans.
pub fn read_spans(dir: &Path) -> Result<Vec<StoredSpan>> {
    let mut spans = Vec::new();
    for name in [ROTATED, FILE] {
        let path = dir.join(name);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(&path)(e)),
        };
        for line in BufReader::new(file).lines() {
            let line = line.map_err(io(&path))?;
            if let Ok(span) = serde_json::from_str::<StoredSpan>(&line) {
                spans.push(span);
            }
        }
    }
    Ok(spans)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::span::{SpanKind, SpanStatus};

    fn span(id: u64) -> StoredSpan {
        StoredSpan {
            trace_id: format!("{id:032x}"),
            span_id: format!("{id:016x}"),
            parent_span_id: String::new(),
            service: "svc".into(),
            name: format!("span {id}"),
            kind: SpanKind::Internal,
            start_unix_nano: id,
            end_unix_nano: id + 1,
            status: SpanStatus::Unset,
            status_message: String::new(),
            attributes: Default::default(),
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "statecast-traces-{name}-{}-{}",
            std::process::id(),
            chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn spans_are_read_back_in_order_and_a_cut_line_is_skipped() {
        let dir = temp_dir("order");
        let store = SpanStore::open(&dir, DEFAULT_MAX).unwrap();
        store.append(&[span(1), span(2)]).unwrap();
        store.append(&[span(3)]).unwrap();
        // A line cut short, as a killed receiver could leave it.
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join(FILE))
            .unwrap()
            .write_all(br#"{"trace_id":"00"#)
            .unwrap();
        let names: Vec<String> = read_spans(&dir)
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, ["span 1", "span 2", "span 3"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    const DEFAULT_MAX: u64 = 1 << 20;

    #[test]
    fn past_the_limit_the_file_is_rotated_and_both_files_are_read() {
        let dir = temp_dir("rotate");
        let store = SpanStore::open(&dir, 10).unwrap();
        store.append(&[span(1)]).unwrap(); // over 10 bytes: rotated at once
        store.append(&[span(2)]).unwrap(); // rotated again: span 1 is gone
        store.append(&[span(3)]).unwrap();
        let names: Vec<String> = read_spans(&dir)
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, ["span 3"]);
        let store = SpanStore::open(&dir, DEFAULT_MAX).unwrap();
        store.append(&[span(4)]).unwrap();
        let names: Vec<String> = read_spans(&dir)
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, ["span 3", "span 4"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_absent_store_has_no_spans() {
        assert!(
            read_spans(Path::new("/nonexistent/statecast-traces"))
                .unwrap()
                .is_empty()
        );
    }
}
