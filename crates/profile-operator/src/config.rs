//! Command line and environment (names fixed by `docs/contracts.md`).

use std::net::SocketAddr;

use clap::{Args, Parser, Subcommand};

use crate::deployment::Settings;

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
    /// settings as every workload's (`statecast-kafka`).
    #[command(flatten)]
    pub kafka: statecast_kafka::KafkaSecurityArgs,

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
    /// What the Deployment builder needs from the operator's settings.
    pub fn settings(&self) -> Settings {
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

#[cfg(test)]
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
        let settings = cli.run.settings();
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
        let settings = cli.run.settings();
        assert!(settings.image_pull_secrets.is_empty());
        assert_eq!(settings.service_account, None);
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
