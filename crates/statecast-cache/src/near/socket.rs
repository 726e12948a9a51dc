//! The tracking connection's own TCP socket, opened here (not by the `redis` crate) so the read
//! path can tell whether an invalidation may be waiting unapplied.
//!
//! Redis writes a broadcast invalidation push in the same event-loop turn as the reply to the
//! write that caused it (the push first), so once any client has seen a write answered, its push
//! is already in this replica's tracking socket. It is *applied* only when the connection's
//! driver task runs, which on a busy runtime can be later than a read of the same key. So
//! before a near hit is served, [`Watch::settled`] asks two things:
//! - is anything unread in the socket (a `recv` with `MSG_PEEK` on a duplicate of its
//!   descriptor, which never blocks: the socket is non-blocking)? and
//! - is the driver in the middle of a poll (it may have read a push and not yet applied it)?
//!
//! If either holds, the read goes to Redis instead. Checked in that order, a push is either
//! still in the socket, or being handled (the driver is busy), or applied: a hit served after
//! both checks cannot be older than a write answered before the read began.
//!
//! Plain TCP only: under TLS the bytes in the socket are records the TLS layer has to decrypt,
//! and the `redis` crate opens those connections itself (see `track::open_connection`), so a TLS
//! tracking connection has no watch and the read path falls back to its `yield_now`.

use std::future::Future;
use std::mem::MaybeUninit;
use std::os::fd::AsFd as _;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

/// What the read path checks of one tracking connection.
pub(super) struct Watch {
    /// A duplicate of the connection's descriptor (the same socket, for peeking only). Dropped
    /// with the attempt; the socket closes once the driver has dropped its side as well.
    socket: socket2::Socket,
    /// Set while the connection's driver is being polled.
    busy: Arc<AtomicBool>,
}

impl Watch {
    /// Whether nothing from Redis waits unapplied on this connection: no unread byte in the
    /// socket, and the driver not in the middle of handling what it read.
    pub(super) fn settled(&self) -> bool {
        let mut byte = [MaybeUninit::<u8>::uninit()];
        let empty = match self.socket.peek(&mut byte) {
            Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
            // `Ok(0)` is the peer's close: the attempt is about to end, trust nothing.
            Ok(_) => false,
        };
        empty && !self.busy.load(Ordering::SeqCst)
    }

    /// The connection's driver future, marking itself busy while it is polled.
    pub(super) fn watched<F>(&self, driver: F) -> Watched
    where
        F: Future<Output = ()> + Send + 'static,
    {
        Watched {
            driver: Box::pin(driver),
            busy: self.busy.clone(),
        }
    }
}

/// Connects to `host:port` and returns the stream for the `redis` crate, its [`Watch`] and the
/// flag to hand to [`Watched`] around the connection's driver.
pub(super) async fn connect(
    host: &str,
    port: u16,
) -> std::io::Result<(tokio::net::TcpStream, Watch)> {
    let stream = tokio::net::TcpStream::connect((host, port)).await?;
    stream.set_nodelay(true)?;
    let socket = socket2::Socket::from(stream.as_fd().try_clone_to_owned()?);
    let watch = Watch {
        socket,
        busy: Arc::new(AtomicBool::new(false)),
    };
    Ok((stream, watch))
}

/// A connection's driver (which reads the socket, decodes the frames and calls the push
/// handler, all within one poll), with its busy flag set for the length of each poll.
pub(super) struct Watched {
    driver: Pin<Box<dyn Future<Output = ()> + Send>>,
    busy: Arc<AtomicBool>,
}

impl Future for Watched {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.busy.store(true, Ordering::SeqCst);
        let polled = self.driver.as_mut().poll(cx);
        self.busy.store(false, Ordering::SeqCst);
        polled
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt as _;

    #[tokio::test]
    async fn unread_bytes_and_a_busy_driver_are_unsettled_and_nothing_else() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (connected, accepted) = tokio::join!(connect("127.0.0.1", port), listener.accept());
        let (stream, watch) = connected.unwrap();
        let (mut peer, _) = accepted.unwrap();
        assert!(watch.settled(), "an idle connection");

        peer.write_all(b">2\r\n").await.unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), stream.readable())
            .await
            .unwrap()
            .unwrap();
        assert!(!watch.settled(), "a byte waits in the socket");
        let mut buffer = [0u8; 16];
        assert_eq!(stream.try_read(&mut buffer).unwrap(), 4);
        assert!(watch.settled(), "read");

        watch.busy.store(true, Ordering::SeqCst);
        assert!(!watch.settled(), "the driver is handling what it read");
        watch.busy.store(false, Ordering::SeqCst);

        drop(peer);
        stream.readable().await.unwrap();
        assert!(!watch.settled(), "the peer closed");
    }

    #[tokio::test]
    async fn the_driver_is_busy_only_while_polled() {
        let busy = Arc::new(AtomicBool::new(false));
        let seen = busy.clone();
        let mut watched = Watched {
            driver: Box::pin(async move { assert!(seen.load(Ordering::SeqCst)) }),
            busy: busy.clone(),
        };
        let waker = std::task::Waker::noop();
        assert!(
            Pin::new(&mut watched)
                .poll(&mut Context::from_waker(waker))
                .is_ready()
        );
        assert!(!busy.load(Ordering::SeqCst));
    }
}
