//! Command line and environment (names fixed by `docs/contracts.md`).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;

use clap::{Args, Parser, Subcommand};
use statecast_kafka::KafkaSecurity;
use statecast_kafka::settings::{env_var_for_property, is_sensitive, property_for_env_var};

use crate::deployment::{ConsumerKafka, SecretKeyRef, Settings};

/// Default consumer image: the Statecast image of this operator's version.
pub const DEFAULT_CONSUMER_IMAGE: &str =
    concat!("ghcr.io/statecast/statecast:", env!("CARGO_PKG_VERSION"));

/// Kubernetes operator for Statecast's `ProfileConsumer` resources.
#[derive(Debug, Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// What to do; `run` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Settings of `run`, accepted without the subcommand too.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant, reason = "parsed once at start-up")]
pub enum Command {
    /// Run the operator (the default).
    Run(RunArgs),
    /// Print the CustomResourceDefinition as YAML.
    Crd,
}

/// Settings of the running operator.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Kafka bootstrap servers, passed to consumers and used to read lag.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub kafka_brokers: String,

    /// Kafka security (TLS, SASL) and librdkafka pass-through of the lag reader, the same
    /// settings as every workload's (`statecast-kafka`). Also passed to the consumers, except
    /// the secrets: see [`RunArgs::settings`].
    #[command(flatten)]
    pub kafka: statecast_kafka::KafkaSecurityArgs,

    /// Secret (in each resource's namespace) holding the CA of the Kafka brokers, mounted into
    /// the consumer pods when the protocol uses TLS; empty means the consumers trust the
    /// system CAs.
    #[arg(long, env = "CONSUMER_KAFKA_CA_SECRET")]
    pub consumer_kafka_ca_secret: Option<String>,

    /// Key of `CONSUMER_KAFKA_CA_SECRET` holding the PEM.
    #[arg(long, env = "CONSUMER_KAFKA_CA_KEY", default_value = "ca.crt")]
    pub consumer_kafka_ca_key: String,

    /// Default consumer image.
    #[arg(long, env = "CONSUMER_IMAGE", default_value = DEFAULT_CONSUMER_IMAGE)]
    pub consumer_image: String,

    /// Secret (in each resource's namespace) with optional keys DATABASE_URL, REDIS_URL, SMTP_URL.
    #[arg(long, env = "CONSUMER_SECRET", default_value = "statecast-consumer")]
    pub consumer_secret: String,

    /// Image pull secrets of the consumer pods, comma-separated Secret names (in each resource's
    /// namespace).
    #[arg(
        long,
        env = "CONSUMER_IMAGE_PULL_SECRETS",
        value_delimiter = ',',
        default_value = ""
    )]
    pub consumer_image_pull_secrets: Vec<String>,

    /// ServiceAccount of the consumer pods; empty means the namespace's default.
    #[arg(long, env = "CONSUMER_SERVICE_ACCOUNT")]
    pub consumer_service_account: Option<String>,

    /// OTLP endpoint forwarded to consumers.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otel_exporter_otlp_endpoint: Option<String>,

    /// OTLP protocol forwarded to consumers.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_PROTOCOL")]
    pub otel_exporter_otlp_protocol: Option<String>,

    /// Address of `/healthz`, `/readyz` and `/metrics`.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8080")]
    pub listen_addr: SocketAddr,

    /// Namespace to watch; empty means all namespaces.
    #[arg(long, env = "WATCH_NAMESPACE", default_value = "")]
    pub watch_namespace: String,

    /// Namespace of the leader Lease (the operator's own, from the downward API); defaults to the
    /// client's namespace.
    #[arg(long, env = "POD_NAMESPACE")]
    pub pod_namespace: Option<String>,

    /// Identity in the leader Lease (the pod name, from the downward API); defaults to the host name.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,

    /// Name of the Lease used for leader election.
    #[arg(long, env = "LEASE_NAME", default_value = "profile-operator-leader")]
    pub lease_name: String,
}

impl RunArgs {
    /// What the Deployment builder needs from the operator's settings; `kafka` is the validated
    /// [`RunArgs::kafka_security`], and the `KAFKA_PROPERTY_*` variables come from the process
    /// environment.
    pub fn settings(&self, kafka: &KafkaSecurity) -> Settings {
        self.settings_with_env(kafka, std::env::vars_os())
    }

    /// [`RunArgs::settings`] with the environment given (tests): only its `KAFKA_PROPERTY_*`
    /// entries are looked at.
    ///
    /// The consumers get the protocol, SASL mechanism and user name, and every pass-through
    /// property that holds no secret (a flag wins over a variable, as for the lag reader). A
    /// secret-looking property (`ssl.key.password`, ...) is withheld with a warning: a
    /// Deployment's env is readable by anyone who can read the Deployment, so such a property
    /// goes into a ProfileConsumer's `spec.env` by `secretKeyRef` instead.
    pub fn settings_with_env(
        &self,
        kafka: &KafkaSecurity,
        env: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> Settings {
        let (properties, withheld) = consumer_properties(env, &self.kafka.kafka_property);
        for property in withheld {
            tracing::warn!(
                property,
                "not passed to consumers: it looks secret; set it in ProfileConsumer spec.env \
                 with valueFrom.secretKeyRef"
            );
        }
        let ca = non_empty(&self.consumer_kafka_ca_secret).map(|secret| SecretKeyRef {
            secret,
            key: self.consumer_kafka_ca_key.trim().to_owned(),
        });
        if ca.is_some() && !kafka.protocol().uses_tls() {
            tracing::warn!(
                protocol = kafka.protocol().as_str(),
                "CONSUMER_KAFKA_CA_SECRET is set but the protocol does not use TLS: not mounted"
            );
        }
        Settings {
            kafka_brokers: self.kafka_brokers.clone(),
            consumer_image: self.consumer_image.clone(),
            consumer_secret: self.consumer_secret.clone(),
            otel_endpoint: non_empty(&self.otel_exporter_otlp_endpoint),
            otel_protocol: non_empty(&self.otel_exporter_otlp_protocol),
            image_pull_secrets: self
                .consumer_image_pull_secrets
                .iter()
                .map(|name| name.trim().to_owned())
                .filter(|name| !name.is_empty())
                .collect(),
            service_account: non_empty(&self.consumer_service_account),
            kafka: ConsumerKafka {
                protocol: kafka.protocol(),
                sasl_mechanism: kafka.sasl().map(|sasl| sasl.mechanism),
                sasl_username: kafka.sasl().map(|sasl| sasl.username.clone()),
                properties,
                ca,
            },
        }
    }

    /// The validated Kafka settings of the lag reader; a bad combination names the variable.
    pub fn kafka_security(
        &self,
    ) -> Result<statecast_kafka::KafkaSecurity, statecast_kafka::ConfigError> {
        statecast_kafka::KafkaSecurity::from_args(&self.kafka)
    }

    /// The namespace to watch, `None` for all.
    pub fn watch_namespace(&self) -> Option<&str> {
        Some(self.watch_namespace.as_str()).filter(|ns| !ns.is_empty())
    }
}

fn non_empty(v: &Option<String>) -> Option<String> {
    v.clone().filter(|s| !s.is_empty())
}

/// The pass-through properties for the consumers as `KAFKA_PROPERTY_*` variables (each name in
/// its canonical upper-case spelling, once; a `--kafka-property` flag wins over a variable), and
/// the names of those withheld because they look secret. Malformed or reserved names were
/// already refused by [`RunArgs::kafka_security`] at start.
fn consumer_properties(
    env: impl IntoIterator<Item = (OsString, OsString)>,
    flags: &[statecast_kafka::Secret],
) -> (BTreeMap<String, String>, Vec<String>) {
    let mut by_property = BTreeMap::new();
    for (variable, value) in env {
        let Some(property) = property_for_env_var(&variable.to_string_lossy()) else {
            continue;
        };
        by_property.insert(property, value.to_string_lossy().into_owned());
    }
    for flag in flags {
        if let Some((name, value)) = flag.expose().split_once('=') {
            by_property.insert(name.trim().to_owned(), value.to_owned());
        }
    }
    let mut withheld = vec![];
    let mut properties = BTreeMap::new();
    for (property, value) in by_property {
        if is_sensitive(&property) {
            withheld.push(property);
        } else {
            properties.insert(env_var_for_property(&property), value);
        }
    }
    (properties, withheld)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_well_formed_and_run_is_the_default() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::parse_from(["profile-operator", "--lease-name", "x"]);
        assert!(cli.command.is_none());
        assert_eq!(cli.run.lease_name, "x");
        let cli = Cli::parse_from(["profile-operator", "crd"]);
        assert!(matches!(cli.command, Some(Command::Crd)));
    }

    #[test]
    fn consumer_pull_secrets_and_service_account_reach_the_settings() {
        let cli = Cli::parse_from([
            "profile-operator",
            "--consumer-image-pull-secrets",
            "regcred, mirror,",
            "--consumer-service-account",
            "statecast-consumer",
        ]);
        let settings = cli.run.settings_with_env(&KafkaSecurity::default(), []);
        assert_eq!(settings.image_pull_secrets, ["regcred", "mirror"]);
        assert_eq!(
            settings.service_account.as_deref(),
            Some("statecast-consumer")
        );
        // The chart passes empty values when nothing is configured.
        let cli = Cli::parse_from([
            "profile-operator",
            "--consumer-image-pull-secrets",
            "",
            "--consumer-service-account",
            "",
        ]);
        let settings = cli.run.settings_with_env(&KafkaSecurity::default(), []);
        assert!(settings.image_pull_secrets.is_empty());
        assert_eq!(settings.service_account, None);
    }

    fn os_env(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    #[test]
    fn consumers_get_the_operators_kafka_settings_without_its_secrets() {
        let cli = Cli::parse_from([
            "profile-operator",
            "--kafka-security-protocol",
            "SASL_SSL",
            "--kafka-sasl-mechanism",
            "scram-sha-512",
            "--kafka-sasl-username",
            "statecast",
            "--kafka-sasl-password",
            "hunter2",
            "--kafka-property",
            "client.id=from-flag",
            "--consumer-kafka-ca-secret",
            "kafka-ca",
        ]);
        let env = os_env(&[
            ("KAFKA_PROPERTY_CLIENT_ID", "from-env"),
            ("KAFKA_PROPERTY_fetch_wait_max_ms", "100"),
            ("KAFKA_PROPERTY_SSL_KEY_PASSWORD", "s3cret"),
            ("PATH", "/usr/bin"),
        ]);
        let kafka = KafkaSecurity::from_parts(&cli.run.kafka, env.clone()).unwrap();
        let settings = cli.run.settings_with_env(&kafka, env);
        let consumer = &settings.kafka;
        assert_eq!(consumer.protocol.as_str(), "sasl_ssl");
        assert_eq!(
            consumer.sasl_mechanism.map(|m| m.as_str()),
            Some("SCRAM-SHA-512")
        );
        assert_eq!(consumer.sasl_username.as_deref(), Some("statecast"));
        // Canonical names, a flag winning over a variable, the secret-looking one withheld.
        assert_eq!(
            consumer.properties,
            BTreeMap::from([
                ("KAFKA_PROPERTY_CLIENT_ID".into(), "from-flag".into()),
                ("KAFKA_PROPERTY_FETCH_WAIT_MAX_MS".into(), "100".into()),
            ])
        );
        assert_eq!(
            consumer.ca,
            Some(SecretKeyRef {
                secret: "kafka-ca".into(),
                key: "ca.crt".into(),
            })
        );
        let debug = format!("{settings:?}");
        assert!(
            !debug.contains("hunter2") && !debug.contains("s3cret"),
            "{debug}"
        );
    }

    #[test]
    fn an_empty_ca_secret_means_the_system_cas_and_the_key_is_configurable() {
        let cli = Cli::parse_from(["profile-operator", "--consumer-kafka-ca-secret", ""]);
        let settings = cli.run.settings_with_env(&KafkaSecurity::default(), []);
        assert_eq!(settings.kafka, ConsumerKafka::default());
        let cli = Cli::parse_from([
            "profile-operator",
            "--consumer-kafka-ca-secret",
            "kafka-ca",
            "--consumer-kafka-ca-key",
            "tls.ca",
        ]);
        let settings = cli.run.settings_with_env(&KafkaSecurity::default(), []);
        assert_eq!(settings.kafka.ca.unwrap().key, "tls.ca");
    }

    #[test]
    fn kafka_security_flags_reach_the_lag_reader_settings() {
        let cli = Cli::parse_from([
            "profile-operator",
            "--kafka-security-protocol",
            "ssl",
            "--kafka-ssl-ca-location",
            "/nonexistent/ca.pem",
        ]);
        let error = cli
            .run
            .kafka_security()
            .expect_err("a CA file that does not exist is refused");
        assert_eq!(error.variable(), "KAFKA_SSL_CA_LOCATION");
    }
}
