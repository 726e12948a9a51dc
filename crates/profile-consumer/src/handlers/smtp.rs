//! SMTP connections for the email handler: lettre speaks the protocol, this module owns the
//! sockets.
//!
//! Why not lettre's own `AsyncSmtpTransport`? lettre 0.11 never sets `TCP_NODELAY`, and it
//! writes a message body and the closing `\r\n.\r\n` as two writes. Nagle's algorithm holds the
//! second until the server acknowledges the first, and the server delays that ACK by 40 ms, so
//! every mail costs about 45 ms on loopback (about 21 mails/s per replica, measured). Opening the
//! socket here with `TCP_NODELAY` and handing it to `AsyncSmtpConnection::connect_with_transport`
//! removes the stall; the rest (EHLO, AUTH, MAIL/RCPT/DATA, dot-stuffing) stays lettre's.
//!
//! Idle connections are kept for reuse (up to [`MAX_IDLE`]) and checked with `NOOP` before a
//! reuse, since the server may have closed them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lettre::Message;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::extension::ClientId;
use tokio::net::TcpStream;

use super::HandlerError;
use super::email::SmtpSettings;

/// Idle connections kept open for the next mails.
pub const MAX_IDLE: usize = 4;

/// Time allowed for connecting, or for one whole send (MAIL, RCPT, DATA and the body).
const TIMEOUT: Duration = Duration::from_secs(10);

/// A small pool of SMTP connections to one server.
#[derive(Clone)]
pub struct Mailer {
    settings: SmtpSettings,
    idle: Arc<Mutex<Vec<AsyncSmtpConnection>>>,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer")
            .field("host", &self.settings.host)
            .field("port", &self.settings.port)
            .finish_non_exhaustive()
    }
}

impl Mailer {
    /// A mailer for `settings`; it connects on the first send.
    pub fn new(settings: SmtpSettings) -> Self {
        Self {
            settings,
            idle: Arc::default(),
        }
    }

    /// Sends `message` to its envelope's recipients.
    pub async fn send(&self, message: &Message) -> Result<(), HandlerError> {
        let envelope = message.envelope().clone();
        let body = message.formatted();
        let mut connection = self.connection().await?;
        match tokio::time::timeout(TIMEOUT, connection.send(&envelope, &body)).await {
            Ok(Ok(_)) => {
                self.put_back(connection);
                Ok(())
            }
            Ok(Err(error)) => {
                connection.abort().await;
                Err(error.into())
            }
            Err(_) => Err(timed_out("sending a mail")),
        }
    }

    /// An idle connection that still answers `NOOP`, or a new one.
    async fn connection(&self) -> Result<AsyncSmtpConnection, HandlerError> {
        while let Some(mut idle) = self.take_idle() {
            if matches!(
                tokio::time::timeout(TIMEOUT, idle.test_connected()).await,
                Ok(true)
            ) {
                return Ok(idle);
            }
            idle.abort().await;
        }
        tokio::time::timeout(TIMEOUT, self.connect())
            .await
            .map_err(|_| timed_out("connecting"))?
    }

    async fn connect(&self) -> Result<AsyncSmtpConnection, HandlerError> {
        let stream = TcpStream::connect((self.settings.host.as_str(), self.settings.port))
            .await
            .map_err(|e| HandlerError::SmtpConnect(e.to_string()))?;
        stream
            .set_nodelay(true)
            .map_err(|e| HandlerError::SmtpConnect(e.to_string()))?;
        let mut connection =
            AsyncSmtpConnection::connect_with_transport(Box::new(stream), &ClientId::default())
                .await?;
        if let Some((user, password)) = &self.settings.credentials {
            let credentials = Credentials::new(user.clone(), password.clone());
            if let Err(error) = connection
                .auth(&[Mechanism::Plain, Mechanism::Login], &credentials)
                .await
            {
                connection.abort().await;
                return Err(error.into());
            }
        }
        Ok(connection)
    }

    fn take_idle(&self) -> Option<AsyncSmtpConnection> {
        self.idle.lock().ok()?.pop()
    }

    fn put_back(&self, connection: AsyncSmtpConnection) {
        if connection.has_broken() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE
        {
            idle.push(connection);
        }
    }

    /// Connections waiting for reuse (for tests).
    pub fn idle_connections(&self) -> usize {
        self.idle.lock().map_or(0, |idle| idle.len())
    }
}

fn timed_out(what: &str) -> HandlerError {
    HandlerError::SmtpConnect(format!("timed out {what} after {}s", TIMEOUT.as_secs()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;

    use super::*;

    /// A minimal SMTP server on a random port: it accepts `connections` connections in turn,
    /// answers every command (hanging up after each mail when `hang_up` is set) and returns the
    /// mails it received.
    async fn sink(
        connections: usize,
        hang_up: bool,
    ) -> (u16, tokio::task::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let mut bodies = Vec::new();
            for _ in 0..connections {
                let (socket, _) = listener.accept().await.unwrap();
                let (read, mut write) = socket.into_split();
                let mut lines = BufReader::new(read).lines();
                write.write_all(b"220 sink ready\r\n").await.unwrap();
                let mut body: Option<String> = None;
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(text) = body.as_mut() {
                        if line == "." {
                            bodies.push(body.take().unwrap_or_default());
                            write.write_all(b"250 queued\r\n").await.unwrap();
                            if hang_up {
                                break;
                            }
                        } else {
                            text.push_str(&line);
                            text.push('\n');
                        }
                        continue;
                    }
                    let reply: &[u8] = match line.get(..4).map(str::to_ascii_uppercase).as_deref() {
                        Some("EHLO") => b"250-sink\r\n250 8BITMIME\r\n",
                        Some("DATA") => {
                            body = Some(String::new());
                            b"354 go ahead\r\n"
                        }
                        Some("QUIT") => {
                            write.write_all(b"221 bye\r\n").await.unwrap();
                            break;
                        }
                        _ => b"250 ok\r\n",
                    };
                    write.write_all(reply).await.unwrap();
                }
            }
            bodies
        });
        (port, task)
    }

    fn mail(subject: &str) -> Message {
        Message::builder()
            .from("statecast@example.com".parse().unwrap())
            .to("user@example.com".parse().unwrap())
            .subject(subject)
            .body(format!("about {subject}\n"))
            .unwrap()
    }

    #[tokio::test]
    async fn mails_go_down_one_reused_connection() {
        let (port, server) = sink(1, false).await;
        let mailer = Mailer::new(SmtpSettings {
            host: "127.0.0.1".into(),
            port,
            credentials: None,
        });
        for n in 0..3 {
            mailer.send(&mail(&format!("mail {n}"))).await.unwrap();
            assert_eq!(mailer.idle_connections(), 1);
        }
        drop(mailer);
        let bodies = server.await.unwrap();
        assert_eq!(bodies.len(), 3, "{bodies:?}");
        assert!(bodies[2].contains("Subject: mail 2"), "{}", bodies[2]);
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_is_replaced() {
        let (port, server) = sink(2, true).await;
        let mailer = Mailer::new(SmtpSettings {
            host: "127.0.0.1".into(),
            port,
            credentials: None,
        });
        mailer.send(&mail("first")).await.unwrap();
        mailer.send(&mail("second")).await.unwrap();
        drop(mailer);
        let bodies = server.await.unwrap();
        assert_eq!(bodies.len(), 2, "{bodies:?}");
        assert!(bodies[1].contains("Subject: second"), "{}", bodies[1]);
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_transient_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let mailer = Mailer::new(SmtpSettings {
            host: "127.0.0.1".into(),
            port,
            credentials: None,
        });
        let error = mailer.send(&mail("lost")).await.unwrap_err();
        assert!(!error.is_permanent(), "{error}");
        assert_eq!(error.kind(), "smtp");
    }
}
