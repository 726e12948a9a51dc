//! [`SecuredBroker`]: a private tansu broker that clients reach over TLS, SASL/SCRAM or both,
//! with a certificate authority made for the test.
//!
//! How, and why this way (see `docs/kafka-security.md` for the evidence):
//! - SASL is tansu's own: `tansu broker --authentication` refuses every request but
//!   ApiVersions/SaslHandshake/SaslAuthenticate until the client authenticated, against SCRAM
//!   credentials made with `tansu user create`. Those are stored through the broker's protocol
//!   (AlterUserScramCredentials), which an authenticating broker refuses to unauthenticated
//!   clients, so the users are made on a first run without `--authentication`, on the same
//!   SQLite log, and the broker is then restarted with it.
//! - TLS is not tansu's: 0.6.0 cannot serve it (`--cert` and `--key` are mutually exclusive
//!   flags, and the TLS acceptor it builds is never used). A TLS-terminating proxy of the test
//!   stands in front of the broker, as a load balancer terminating TLS would, with a server
//!   certificate for `127.0.0.1`/`localhost` signed by the test's CA. The broker advertises the
//!   proxy's address, so every connection librdkafka makes goes through TLS.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use statecast_kafka::{KafkaSecurity, KafkaSecurityArgs, Secret};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

use crate::{tansu_bin, unique};

/// How clients reach a [`SecuredBroker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// TLS, no authentication (`KAFKA_SECURITY_PROTOCOL=ssl`).
    Ssl,
    /// SASL/SCRAM over TLS (`sasl_ssl`).
    SaslSsl,
    /// SASL/SCRAM without TLS (`sasl_plaintext`).
    SaslPlaintext,
}

impl Security {
    fn tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }

    fn sasl(self) -> bool {
        matches!(self, Self::SaslSsl | Self::SaslPlaintext)
    }

    /// The `KAFKA_SECURITY_PROTOCOL` value.
    pub fn protocol(self) -> &'static str {
        match self {
            Self::Ssl => "ssl",
            Self::SaslSsl => "sasl_ssl",
            Self::SaslPlaintext => "sasl_plaintext",
        }
    }
}

/// The SASL user every [`SecuredBroker`] knows (with SCRAM-SHA-256 and SCRAM-SHA-512).
pub const SASL_USER: &str = "statecast";

/// A tansu broker of the test's own behind TLS and/or SASL; killed and removed on drop.
pub struct SecuredBroker {
    security: Security,
    dir: PathBuf,
    broker_port: u16,
    client_port: u16,
    password: String,
    child: Option<Child>,
    proxy: Option<TlsProxy>,
}

impl SecuredBroker {
    /// Makes the CAs and certificates, the SASL users, and starts the broker (and the TLS
    /// proxy); returns once clients can connect. Blocking (a second or two).
    pub fn start(security: Security) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(unique("statecast-secured-broker"));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("create broker directory {}", dir.display()))?;
        let ports = crate::free_ports(2)?;
        let broker_port = ports[0];
        let client_port = if security.tls() {
            ports[1]
        } else {
            broker_port
        };
        let mut broker = Self {
            security,
            dir,
            broker_port,
            client_port,
            password: unique("pw"),
            child: None,
            proxy: None,
        };
        let pki = Pki::generate()?;
        std::fs::write(broker.ca_file(), &pki.ca_pem)?;
        std::fs::write(broker.untrusted_ca_file(), &pki.untrusted_ca_pem)?;
        if security.sasl() {
            // Users are stored through the protocol, which an authenticating broker refuses.
            broker.spawn(false, broker_port)?;
            for mechanism in ["scram256", "scram512"] {
                broker.tansu(&[
                    "user",
                    "create",
                    "--broker",
                    &format!("tcp://127.0.0.1:{broker_port}"),
                    "--mechanism",
                    mechanism,
                    SASL_USER,
                    &broker.password,
                ])?;
            }
            broker.kill();
        }
        broker.spawn(security.sasl(), client_port)?;
        if security.tls() {
            broker.proxy = Some(TlsProxy::start(
                client_port,
                SocketAddr::from(([127, 0, 0, 1], broker_port)),
                pki.acceptor,
            )?);
        }
        Ok(broker)
    }

    /// `host:port` for `KAFKA_BROKERS`: the TLS proxy with TLS, else the broker.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// The broker's own plaintext address (behind the TLS proxy, when there is one).
    pub fn plaintext_brokers(&self) -> String {
        format!("127.0.0.1:{}", self.broker_port)
    }

    /// How clients reach it.
    pub fn security(&self) -> Security {
        self.security
    }

    /// The SASL password of [`SASL_USER`].
    pub fn password(&self) -> &str {
        &self.password
    }

    /// PEM of the CA that signed the TLS proxy's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// PEM of a CA that signed nothing here: trusting only it must fail.
    pub fn untrusted_ca_file(&self) -> PathBuf {
        self.dir.join("untrusted-ca.pem")
    }

    /// The settings a workload needs to connect (SCRAM-SHA-512 with SASL, the test CA with
    /// TLS), as its flags/variables would give them.
    pub fn args(&self) -> KafkaSecurityArgs {
        KafkaSecurityArgs {
            kafka_security_protocol: self.security.protocol().to_owned(),
            kafka_sasl_mechanism: self.security.sasl().then(|| "SCRAM-SHA-512".to_owned()),
            kafka_sasl_username: self.security.sasl().then(|| SASL_USER.to_owned()),
            kafka_sasl_password: self.security.sasl().then(|| Secret::new(&*self.password)),
            kafka_ssl_ca_location: self.security.tls().then(|| self.ca_file()),
            ..KafkaSecurityArgs::default()
        }
    }

    /// [`SecuredBroker::args`], validated (no `KAFKA_PROPERTY_*` taken from the environment).
    pub fn kafka_security(&self) -> anyhow::Result<KafkaSecurity> {
        Ok(KafkaSecurity::from_parts(&self.args(), [])?)
    }

    /// Creates `name` with `partitions` partitions, over the secured connection.
    pub async fn create_topic(&self, name: &str, partitions: i32) -> anyhow::Result<()> {
        let admin: AdminClient<DefaultClientContext> = self
            .kafka_security()?
            .client_config(&self.brokers())
            .create()
            .context("admin client")?;
        let results = admin
            .create_topics(
                &[NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await
            .context("create topic")?;
        for result in results {
            if let Err((topic, code)) = result {
                bail!("cannot create topic {topic}: {code}");
            }
        }
        Ok(())
    }

    /// The broker's log so far (stdout and stderr), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("broker.log")).unwrap_or_default()
    }

    fn spawn(&mut self, authentication: bool, advertised_port: u16) -> anyhow::Result<()> {
        let listener = format!("tcp://127.0.0.1:{}", self.broker_port);
        let advertised = format!("tcp://127.0.0.1:{advertised_port}");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("broker.log"))?;
        let mut command = Command::new(tansu_bin());
        command
            .args(["broker", "--listener-url", &listener])
            .args(["--advertised-listener-url", &advertised])
            .args(["--storage-engine", "sqlite://tansu.db", "--silent"]);
        if authentication {
            command.arg("--authentication");
        }
        let child = command
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {} (set TANSU_BIN)", tansu_bin().display()))?;
        self.child = Some(child);
        wait_for_port(self.broker_port)
    }

    fn tansu(&self, args: &[&str]) -> anyhow::Result<()> {
        let output = Command::new(tansu_bin())
            .args(args)
            .current_dir(&self.dir)
            .output()
            .with_context(|| format!("run tansu {}", args[..2.min(args.len())].join(" ")))?;
        if !output.status.success() {
            bail!(
                "tansu {} failed: {}{}",
                args[..2.min(args.len())].join(" "),
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for SecuredBroker {
    fn drop(&mut self) {
        self.kill();
        self.proxy.take();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn wait_for_port(port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("secured broker did not listen on port {port}")
}

/// The test's certificate authority, the server certificate it signed, and an unrelated CA.
struct Pki {
    ca_pem: String,
    untrusted_ca_pem: String,
    acceptor: TlsAcceptor,
}

impl Pki {
    fn generate() -> anyhow::Result<Self> {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let ca = |name: &str| -> anyhow::Result<_> {
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            Ok(CertifiedIssuer::self_signed(params, KeyPair::generate()?)?)
        };
        let trusted = ca("statecast test CA")?;
        let untrusted = ca("statecast untrusted CA")?;
        let leaf_key = KeyPair::generate()?;
        let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?
            .signed_by(&leaf_key, &trusted)?;
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone()], key)?;
        Ok(Self {
            ca_pem: trusted.pem(),
            untrusted_ca_pem: untrusted.pem(),
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }
}

/// Terminates TLS on a loopback port and forwards the plaintext to the broker; runs on a thread
/// of its own (its own runtime), so it works under any test runtime. Stops on drop.
struct TlsProxy {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TlsProxy {
    fn start(port: u16, upstream: SocketAddr, acceptor: TlsAcceptor) -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
        listener.set_nonblocking(true)?;
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                loop {
                    let accepted = tokio::select! {
                        accepted = listener.accept() => accepted,
                        _ = &mut stopped => return,
                    };
                    let Ok((client, _)) = accepted else { continue };
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        // A client that refuses the certificate ends here, in the handshake.
                        let Ok(mut tls) = acceptor.accept(client).await else {
                            return;
                        };
                        let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
                            return;
                        };
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut server).await;
                    });
                }
            });
        });
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
