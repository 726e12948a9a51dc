//! A TCP proxy in front of PostgreSQL that counts the queries its clients run and can slow each
//! of them down: an independent witness of database loads (not the API's own metric), and a
//! slow database without touching the shared server.
//!
//! It reads the client side of the wire protocol: after the untyped start-up messages (an
//! `SSLRequest` is refused by asking clients for `sslmode=disable`), every message is a type
//! byte and a length. Each `Execute` (`E`) is one statement run through the extended protocol,
//! which is how sqlx runs every query; `BEGIN`/`COMMIT` go as simple queries (`Q`) and pool
//! health checks as a bare `Sync`, so neither is counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;

/// A counting, optionally slow proxy to PostgreSQL.
pub struct PgProxy {
    addr: std::net::SocketAddr,
    executes: Arc<AtomicU64>,
    delay_ms: Arc<AtomicU64>,
}

impl PgProxy {
    /// Listens on a free loopback port and forwards to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let executes = Arc::new(AtomicU64::new(0));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let upstream = upstream.to_owned();
        let (count, delay) = (executes.clone(), delay_ms.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                tokio::spawn(proxy(client, server, count.clone(), delay.clone()));
            }
        });
        Self {
            addr,
            executes,
            delay_ms,
        }
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
        self.executes.load(Ordering::SeqCst)
    }

    /// From now on, holds every client message batch that runs a statement for `delay` before
    /// passing it on, so each query takes at least that long.
    pub fn slow_down(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap();
        self.delay_ms.store(ms, Ordering::SeqCst);
    }
}

async fn proxy(
    client: TcpStream,
    server: TcpStream,
    executes: Arc<AtomicU64>,
    delay_ms: Arc<AtomicU64>,
) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let replies = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    });
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
        let mut runs = 0;
        loop {
            let rest = &pending[complete..];
            let (header, kind) = if untyped {
                (0, None)
            } else {
                (1, rest.first())
            };
            if rest.len() < header + 4 {
                break;
            }
            let len = i32::from_be_bytes(rest[header..header + 4].try_into().unwrap());
            let total = header + usize::try_from(len).unwrap();
            if rest.len() < total {
                break;
            }
            if untyped {
                let code = match rest.get(4..8) {
                    Some(bytes) => i32::from_be_bytes(bytes.try_into().unwrap()),
                    None => 0,
                };
                // After an SSL or GSS request comes another untyped message (the start-up).
                untyped = code == SSL_REQUEST || code == GSSENC_REQUEST;
            } else if kind == Some(&b'E') {
                runs += 1;
            }
            complete += total;
        }
        if runs > 0 {
            executes.fetch_add(runs, Ordering::SeqCst);
            let delay = delay_ms.load(Ordering::SeqCst);
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
