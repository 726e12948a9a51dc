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
//! At most [`MAX_CONNECTIONS`] mails are in flight at once, shared by every partition of the
//! replica (the email handler sends a batch's mails concurrently, one chain per user), each on
//! a connection of its own. Idle connections are kept for reuse (up to [`MAX_IDLE`]) and
//! checked with `NOOP` before a reuse, since the server may have closed them.
//!
//! TLS (rustls, Mozilla roots plus any `SMTP_CA_FILE`): STARTTLS is lettre's own upgrade of our
//! socket; implicit TLS (`smtps://`) wraps the socket with tokio-rustls before lettre sees it,
//! because lettre's implicit-TLS path would open its own socket without `TCP_NODELAY`.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use lettre::Message;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{
    AsyncSmtpConnection, AsyncTokioStream, Certificate, TlsParameters,
};
use lettre::transport::smtp::extension::ClientId;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{self, RootCertStore, pki_types::ServerName};

use super::HandlerError;
use super::email::{SmtpSettings, SmtpTls};

/// Mails sent at once (so SMTP connections open at once) per replica.
pub const MAX_CONNECTIONS: usize = 8;

/// Idle connections kept open for the next mails: as many as may be busy at once.
pub const MAX_IDLE: usize = MAX_CONNECTIONS;

/// Time allowed for connecting, or for one whole send (MAIL, RCPT, DATA and the body).
const TIMEOUT: Duration = Duration::from_secs(10);

/// How connections are secured, prepared once.
#[derive(Clone)]
enum Security {
    Plain,
    StartTls(TlsParameters),
    Implicit(TlsConnector, ServerName<'static>),
}

/// A small pool of SMTP connections to one server.
#[derive(Clone)]
pub struct Mailer {
    settings: SmtpSettings,
    security: Security,
    idle: Arc<Mutex<Vec<AsyncSmtpConnection>>>,
    /// One permit per mail in flight ([`MAX_CONNECTIONS`]).
    in_flight: Arc<tokio::sync::Semaphore>,
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
    /// A mailer for `settings`; it connects on the first send. `extra_roots` (PEM) are trusted
    /// beside the bundled Mozilla roots when the connection uses TLS.
    pub fn new(settings: SmtpSettings, extra_roots: Option<&[u8]>) -> Result<Self, String> {
        let security = match settings.tls {
            SmtpTls::None => Security::Plain,
            SmtpTls::StartTls => {
                let mut builder = TlsParameters::builder(settings.host.clone());
                if let Some(pem) = extra_roots {
                    let certificate = Certificate::from_pem(pem).map_err(|e| e.to_string())?;
                    builder = builder.add_root_certificate(certificate);
                }
                Security::StartTls(builder.build_rustls().map_err(|e| e.to_string())?)
            }
            SmtpTls::Implicit => {
                let mut roots = RootCertStore {
                    roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                };
                if let Some(pem) = extra_roots {
                    use rustls::pki_types::{CertificateDer, pem::PemObject as _};
                    for certificate in CertificateDer::pem_slice_iter(pem) {
                        roots
                            .add(certificate.map_err(|e| format!("SMTP CA file: {e}"))?)
                            .map_err(|e| format!("SMTP CA file: {e}"))?;
                    }
                }
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| e.to_string())?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                let name = ServerName::try_from(settings.host.clone())
                    .map_err(|e| format!("{:?}: {e}", settings.host))?;
                Security::Implicit(TlsConnector::from(Arc::new(config)), name)
            }
        };
        Ok(Self {
            settings,
            security,
            idle: Arc::default(),
            in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS)),
        })
    }

    /// Sends `message` to its envelope's recipients.
    pub async fn send(&self, message: &Message) -> Result<(), HandlerError> {
        let envelope = message.envelope().clone();
        let body = message.formatted();
        // The semaphore is never closed; without a permit the send would just not be bounded.
        let _permit = self.in_flight.acquire().await.ok();
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
        let hello = ClientId::default();
        let mut connection = match &self.security {
            Security::Implicit(connector, name) => {
                let tls = connector
                    .connect(name.clone(), stream)
                    .await
                    .map_err(|e| HandlerError::SmtpConnect(format!("TLS: {e}")))?;
                AsyncSmtpConnection::connect_with_transport(Box::new(TlsStream(tls)), &hello)
                    .await?
            }
            Security::Plain | Security::StartTls(_) => {
                AsyncSmtpConnection::connect_with_transport(Box::new(stream), &hello).await?
            }
        };
        if let Security::StartTls(parameters) = &self.security
            && let Err(error) = connection.starttls(parameters.clone(), &hello).await
        {
            // Includes a server that does not offer STARTTLS: never fall back to plain text.
            // No `abort()` (QUIT) here: after a failed TLS handshake lettre has no stream left
            // and panics on any write; dropping the connection closes the socket.
            return Err(error.into());
        }
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

    /// Connections waiting for reuse.
    #[cfg(test)]
    fn idle_connections(&self) -> usize {
        self.idle.lock().map_or(0, |idle| idle.len())
    }
}

/// A client TLS stream as lettre's transport (lettre implements its trait for `TcpStream` only).
#[derive(Debug)]
struct TlsStream(tokio_rustls::client::TlsStream<TcpStream>);

impl AsyncRead for TlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl AsyncTokioStream for TlsStream {
    fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.0.get_ref().0.peer_addr()
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
    use tokio_rustls::TlsAcceptor;

    use super::*;

    /// What the test server speaks.
    #[derive(Clone, Copy, PartialEq)]
    enum Mode {
        /// Plain SMTP, no STARTTLS offered.
        Plain,
        /// Plain SMTP that offers STARTTLS.
        StartTls,
        /// TLS from the first byte.
        Implicit,
    }

    /// A mail as the test server received it.
    #[derive(Debug)]
    struct Received {
        body: String,
        encrypted: bool,
    }

    /// A certificate authority and a `localhost` certificate it signed, built fresh per test.
    struct Pki {
        ca_pem: String,
        acceptor: TlsAcceptor,
    }

    fn pki() -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone()], key)
            .unwrap();
        Pki {
            ca_pem: ca.pem(),
            acceptor: TlsAcceptor::from(Arc::new(config)),
        }
    }

    /// A minimal SMTP server on a random loopback port: it accepts `connections` connections in
    /// turn, answers every command (hanging up after each mail when `hang_up` is set) and
    /// returns the mails it received.
    async fn sink(
        connections: usize,
        hang_up: bool,
        mode: Mode,
        acceptor: Option<TlsAcceptor>,
    ) -> (u16, tokio::task::JoinHandle<Vec<Received>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let mut received = Vec::new();
            for _ in 0..connections {
                let (socket, _) = listener.accept().await.unwrap();
                if mode == Mode::Implicit {
                    // A client that refuses the certificate ends the handshake: no session.
                    if let Ok(tls) = acceptor.clone().unwrap().accept(socket).await {
                        session(tls, Greet::Yes, true, false, hang_up, &mut received).await;
                    }
                    continue;
                }
                let offer = mode == Mode::StartTls;
                if let Some(plain) =
                    session(socket, Greet::Yes, false, offer, hang_up, &mut received).await
                {
                    let tls = acceptor.clone().unwrap().accept(plain).await.unwrap();
                    session(tls, Greet::No, true, false, hang_up, &mut received).await;
                }
            }
            received
        });
        (port, task)
    }

    /// Whether a session starts with the server's greeting (not after STARTTLS).
    #[derive(PartialEq)]
    enum Greet {
        Yes,
        No,
    }

    /// One SMTP session over `stream`; returns the stream when the client asked for STARTTLS.
    async fn session<S: AsyncRead + AsyncWrite + Unpin>(
        stream: S,
        greet: Greet,
        encrypted: bool,
        offer_starttls: bool,
        hang_up: bool,
        received: &mut Vec<Received>,
    ) -> Option<S> {
        let mut stream = BufReader::new(stream);
        if greet == Greet::Yes {
            stream
                .get_mut()
                .write_all(b"220 sink ready\r\n")
                .await
                .ok()?;
        }
        let mut body: Option<String> = None;
        let mut line = String::new();
        loop {
            line.clear();
            if stream.read_line(&mut line).await.ok()? == 0 {
                return None;
            }
            let text = line.trim_end_matches(['\r', '\n']);
            if let Some(mail) = body.as_mut() {
                if text == "." {
                    let mail = body.take().unwrap_or_default();
                    received.push(Received {
                        body: mail,
                        encrypted,
                    });
                    stream.get_mut().write_all(b"250 queued\r\n").await.ok()?;
                    if hang_up {
                        return None;
                    }
                } else {
                    mail.push_str(text);
                    mail.push('\n');
                }
                continue;
            }
            let verb = text.get(..4).map(str::to_ascii_uppercase);
            let reply: &[u8] = match verb.as_deref() {
                Some("EHLO") if offer_starttls => b"250-sink\r\n250-8BITMIME\r\n250 STARTTLS\r\n",
                Some("EHLO") => b"250-sink\r\n250 8BITMIME\r\n",
                Some("STAR") if offer_starttls => {
                    stream.get_mut().write_all(b"220 go ahead\r\n").await.ok()?;
                    return Some(stream.into_inner());
                }
                Some("DATA") => {
                    body = Some(String::new());
                    b"354 go ahead\r\n"
                }
                Some("QUIT") => {
                    stream.get_mut().write_all(b"221 bye\r\n").await.ok()?;
                    return None;
                }
                _ => b"250 ok\r\n",
            };
            stream.get_mut().write_all(reply).await.ok()?;
        }
    }

    fn settings(host: &str, port: u16, tls: SmtpTls) -> SmtpSettings {
        SmtpSettings {
            host: host.into(),
            port,
            credentials: None,
            tls,
        }
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
        let (port, server) = sink(1, false, Mode::Plain, None).await;
        let mailer = Mailer::new(settings("127.0.0.1", port, SmtpTls::None), None).unwrap();
        for n in 0..3 {
            mailer.send(&mail(&format!("mail {n}"))).await.unwrap();
            assert_eq!(mailer.idle_connections(), 1);
        }
        drop(mailer);
        let received = server.await.unwrap();
        assert_eq!(received.len(), 3, "{received:?}");
        assert!(received[2].body.contains("Subject: mail 2"), "{received:?}");
        assert!(!received[0].encrypted);
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_is_replaced() {
        let (port, server) = sink(2, true, Mode::Plain, None).await;
        let mailer = Mailer::new(settings("127.0.0.1", port, SmtpTls::None), None).unwrap();
        mailer.send(&mail("first")).await.unwrap();
        mailer.send(&mail("second")).await.unwrap();
        drop(mailer);
        let received = server.await.unwrap();
        assert_eq!(received.len(), 2, "{received:?}");
        assert!(received[1].body.contains("Subject: second"), "{received:?}");
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_transient_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let mailer = Mailer::new(settings("127.0.0.1", port, SmtpTls::None), None).unwrap();
        let error = mailer.send(&mail("lost")).await.unwrap_err();
        assert_eq!(
            error.class(),
            crate::handlers::ErrorClass::Transient,
            "{error}"
        );
        assert_eq!(error.kind(), "smtp");
    }

    #[tokio::test]
    async fn starttls_encrypts_the_mail_against_a_trusted_certificate() {
        let pki = pki();
        let (port, server) = sink(1, false, Mode::StartTls, Some(pki.acceptor)).await;
        let mailer = Mailer::new(
            settings("localhost", port, SmtpTls::StartTls),
            Some(pki.ca_pem.as_bytes()),
        )
        .unwrap();
        mailer.send(&mail("over starttls")).await.unwrap();
        mailer.send(&mail("again")).await.unwrap();
        drop(mailer);
        let received = server.await.unwrap();
        assert_eq!(received.len(), 2, "{received:?}");
        assert!(received.iter().all(|r| r.encrypted), "{received:?}");
        assert!(received[0].body.contains("Subject: over starttls"));
    }

    #[tokio::test]
    async fn required_tls_never_falls_back_to_plain_text() {
        let (port, server) = sink(1, false, Mode::Plain, None).await;
        let mailer = Mailer::new(settings("localhost", port, SmtpTls::StartTls), None).unwrap();
        let error = mailer.send(&mail("secret")).await.unwrap_err();
        assert!(error.to_string().contains("STARTTLS"), "{error}");
        drop(mailer);
        assert!(
            server.await.unwrap().is_empty(),
            "a mail went out in plain text"
        );
    }

    #[tokio::test]
    async fn implicit_tls_encrypts_from_the_first_byte() {
        let pki = pki();
        let (port, server) = sink(1, false, Mode::Implicit, Some(pki.acceptor)).await;
        let mailer = Mailer::new(
            settings("localhost", port, SmtpTls::Implicit),
            Some(pki.ca_pem.as_bytes()),
        )
        .unwrap();
        mailer.send(&mail("over smtps")).await.unwrap();
        drop(mailer);
        let received = server.await.unwrap();
        assert_eq!(received.len(), 1, "{received:?}");
        assert!(received[0].encrypted);
    }

    #[tokio::test]
    async fn an_untrusted_certificate_is_refused() {
        for mode in [Mode::Implicit, Mode::StartTls] {
            let pki = pki();
            let (port, server) = sink(1, false, mode, Some(pki.acceptor)).await;
            let tls = if mode == Mode::Implicit {
                SmtpTls::Implicit
            } else {
                SmtpTls::StartTls
            };
            // Only the bundled Mozilla roots: the test CA is not among them.
            let mailer = Mailer::new(settings("localhost", port, tls), None).unwrap();
            let error = mailer.send(&mail("secret")).await.unwrap_err();
            assert_eq!(
                error.class(),
                crate::handlers::ErrorClass::Transient,
                "{error}"
            );
            assert!(
                format!("{error:?}").to_lowercase().contains("certificate"),
                "not a certificate failure: {error:?}"
            );
            drop(mailer);
            server.abort();
            let _ = server.await;
        }
    }
}
