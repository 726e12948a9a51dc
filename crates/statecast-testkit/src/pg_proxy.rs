//! [`PgProxy`]: a TCP proxy in front of PostgreSQL that sees which statements its clients run,
//! can slow each of them down, and can hold the answers to chosen statements: an independent
//! witness of database loads (not the API's own metric), a slow database without touching the
//! shared server, and a way to make a read's answer arrive after a write committed.
//!
//! It reads the client side of the wire protocol: after the untyped start-up messages (an
//! `SSLRequest` is refused by asking clients for `sslmode=disable`), every message is a type
//! byte and a length. Each `Execute` (`E`) is one statement run through the extended protocol,
//! which is how sqlx runs every query; its text is known from the `Parse` (`P`) of the
//! statement the portal was bound (`B`) to. `BEGIN`/`COMMIT` go as simple queries (`Q`) and
//! pool health checks as a bare `Sync`, so neither is counted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;

/// Which answers are held back: those to statements whose text contains `pattern`, while armed.
#[derive(Default)]
struct Hold {
    pattern: Option<String>,
    /// Answers held so far (one per held statement).
    held: u64,
}

struct Shared {
    executes: AtomicU64,
    delay_ms: AtomicU64,
    /// Executions per statement text.
    statements: Mutex<HashMap<String, u64>>,
    hold: Mutex<Hold>,
    /// Bumped by [`PgProxy::release`]: held answers go on.
    released: watch::Sender<u64>,
}

/// A counting, optionally slow, optionally answer-holding proxy to PostgreSQL.
pub struct PgProxy {
    addr: std::net::SocketAddr,
    shared: Arc<Shared>,
}

impl PgProxy {
    /// Listens on a free loopback port and forwards to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            executes: AtomicU64::new(0),
            delay_ms: AtomicU64::new(0),
            statements: Mutex::default(),
            hold: Mutex::default(),
            released: watch::channel(0).0,
        });
        let upstream = upstream.to_owned();
        let proxied = shared.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                tokio::spawn(proxy(client, server, proxied.clone()));
            }
        });
        Ok(Self { addr, shared })
    }

    /// `host:port` clients should use (with `sslmode=disable`).
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// `database_url` (a URL of the server this proxy forwards to) rewritten to go through it.
    pub fn url(&self, database_url: &str, upstream: &str) -> String {
        let via = database_url.replace(upstream, &self.addr.to_string());
        assert_ne!(via, database_url, "{database_url} does not name {upstream}");
        let separator = if via.contains('?') { '&' } else { '?' };
        format!("{via}{separator}sslmode=disable")
    }

    /// Statements executed through the proxy so far.
    pub fn executes(&self) -> u64 {
        self.shared.executes.load(Ordering::SeqCst)
    }

    /// Executions so far of statements whose text satisfies `matches`.
    pub fn executes_of(&self, matches: impl Fn(&str) -> bool) -> u64 {
        self.shared
            .statements
            .lock()
            .map(|s| {
                s.iter()
                    .filter(|(sql, _)| matches(sql))
                    .map(|(_, n)| n)
                    .sum()
            })
            .unwrap_or(0)
    }

    /// From now on, holds every client message batch that runs a statement for `delay` before
    /// passing it on, so each query takes at least that long.
    pub fn slow_down(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.shared.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// From now on, the answer to each statement whose text contains `pattern` is held back
    /// (the statement itself runs at once) until [`PgProxy::release`].
    pub fn hold_answers_to(&self, pattern: &str) {
        if let Ok(mut hold) = self.shared.hold.lock() {
            hold.pattern = Some(pattern.to_owned());
        }
    }

    /// Answers held since [`PgProxy::hold_answers_to`]: statements that have run but whose
    /// client has not been told (counted once the server's answer reached the proxy).
    pub fn held(&self) -> u64 {
        self.shared.hold.lock().map(|h| h.held).unwrap_or(0)
    }

    /// Stops holding answers and lets the held ones go on.
    pub fn release(&self) {
        if let Ok(mut hold) = self.shared.hold.lock() {
            *hold = Hold::default();
        }
        self.shared.released.send_modify(|n| *n += 1);
    }
}

/// Reads a NUL-terminated string at the start of `bytes`; returns it and the rest.
fn cstr(bytes: &[u8]) -> Option<(&str, &[u8])> {
    let end = bytes.iter().position(|b| *b == 0)?;
    Some((std::str::from_utf8(&bytes[..end]).ok()?, &bytes[end + 1..]))
}

/// The statement texts of one connection: prepared statements and bound portals.
#[derive(Default)]
struct Session {
    statements: HashMap<String, String>,
    portals: HashMap<String, String>,
}

impl Session {
    /// Follows one client message; returns the statement text if it is an `Execute`.
    fn message(&mut self, kind: u8, body: &[u8]) -> Option<String> {
        match kind {
            b'P' => {
                let (name, rest) = cstr(body)?;
                let (sql, _) = cstr(rest)?;
                self.statements.insert(name.to_owned(), sql.to_owned());
                None
            }
            b'B' => {
                let (portal, rest) = cstr(body)?;
                let (statement, _) = cstr(rest)?;
                let sql = self.statements.get(statement).cloned().unwrap_or_default();
                self.portals.insert(portal.to_owned(), sql);
                None
            }
            b'E' => {
                let (portal, _) = cstr(body)?;
                Some(self.portals.get(portal).cloned().unwrap_or_default())
            }
            _ => None,
        }
    }
}

async fn proxy(client: TcpStream, server: TcpStream, shared: Arc<Shared>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    // Set by the client side when a statement whose answer is held went to the server: the
    // next bytes from the server (its answer) wait for a release.
    let hold_next = Arc::new(AtomicBool::new(false));
    let replies = {
        let (shared, hold_next) = (shared.clone(), hold_next.clone());
        tokio::spawn(async move {
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                let n = match server_read.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if hold_next.swap(false, Ordering::SeqCst) {
                    let mut released = shared.released.subscribe();
                    let still_held = |shared: &Shared| {
                        shared
                            .hold
                            .lock()
                            .map(|h| h.pattern.is_some())
                            .unwrap_or(false)
                    };
                    if still_held(&shared) {
                        if let Ok(mut hold) = shared.hold.lock() {
                            hold.held += 1;
                        }
                        while still_held(&shared) {
                            if released.changed().await.is_err() {
                                break;
                            }
                        }
                    }
                }
                if client_write.write_all(&chunk[..n]).await.is_err() {
                    break;
                }
            }
            let _ = client_write.shutdown().await;
        })
    };
    let mut session = Session::default();
    let mut pending: Vec<u8> = Vec::new();
    let mut untyped = true;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match client_read.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&chunk[..n]);
        // Forward every complete message; keep a partial one for the next read.
        let mut complete = 0;
        let mut runs: Vec<String> = Vec::new();
        loop {
            let rest = &pending[complete..];
            let (header, kind) = if untyped {
                (0, None)
            } else {
                (1, rest.first().copied())
            };
            if rest.len() < header + 4 {
                break;
            }
            let Ok(len) = <[u8; 4]>::try_from(&rest[header..header + 4]).map(i32::from_be_bytes)
            else {
                break;
            };
            let total = header + usize::try_from(len).unwrap_or(0);
            if total < header + 4 || rest.len() < total {
                break;
            }
            if untyped {
                let code = rest
                    .get(4..8)
                    .and_then(|b| <[u8; 4]>::try_from(b).ok())
                    .map_or(0, i32::from_be_bytes);
                // After an SSL or GSS request comes another untyped message (the start-up).
                untyped = code == SSL_REQUEST || code == GSSENC_REQUEST;
            } else if let Some(kind) = kind
                && let Some(sql) = session.message(kind, &rest[header + 4..total])
            {
                runs.push(sql);
            }
            complete += total;
        }
        if !runs.is_empty() {
            shared
                .executes
                .fetch_add(runs.len() as u64, Ordering::SeqCst);
            let held = shared
                .hold
                .lock()
                .ok()
                .and_then(|h| h.pattern.clone())
                .is_some_and(|p| runs.iter().any(|sql| sql.contains(&p)));
            if let Ok(mut statements) = shared.statements.lock() {
                for sql in runs {
                    *statements.entry(sql).or_default() += 1;
                }
            }
            if held {
                hold_next.store(true, Ordering::SeqCst);
            }
            let delay = shared.delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
        }
        if complete > 0 {
            if server_write.write_all(&pending[..complete]).await.is_err() {
                break;
            }
            pending.drain(..complete);
        }
    }
    let _ = server_write.shutdown().await;
    replies.abort();
}

#[cfg(test)]
mod tests {
    use super::Session;

    fn message(name_and_more: &[&str]) -> Vec<u8> {
        let mut body = Vec::new();
        for part in name_and_more {
            body.extend_from_slice(part.as_bytes());
            body.push(0);
        }
        body
    }

    #[test]
    fn executes_are_named_by_the_statement_their_portal_was_bound_to() {
        let mut session = Session::default();
        assert_eq!(
            session.message(b'P', &message(&["s1", "SELECT 1", ""])),
            None
        );
        assert_eq!(session.message(b'P', &message(&["", "SELECT 2", ""])), None);
        assert_eq!(session.message(b'B', &message(&["", "s1", ""])), None);
        assert_eq!(
            session.message(b'E', &message(&[""])).as_deref(),
            Some("SELECT 1")
        );
        assert_eq!(session.message(b'B', &message(&["p", "", ""])), None);
        assert_eq!(
            session.message(b'E', &message(&["p"])).as_deref(),
            Some("SELECT 2")
        );
    }
}
