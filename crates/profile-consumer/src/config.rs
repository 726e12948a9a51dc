//! Command line and environment. Every flag also reads the environment variable of the same
//! name (`--kafka-group-id` / `KAFKA_GROUP_ID`); `.env.sample` lists them all with defaults.
//!
//! [`Config::validate`] turns a configuration that parses but cannot work (an `email` handler
//! without `SMTP_URL`) into a message naming the missing variable, before anything connects.

use std::net::SocketAddr;
use std::time::Duration;

use crate::Error;

/// Default `KAFKA_BROKERS`.
pub const DEFAULT_BROKERS: &str = "127.0.0.1:9092";
/// Default `KAFKA_TOPICS`.
pub const DEFAULT_TOPIC: &str = "user-events";
/// Default `MAX_RETRIES`.
pub const DEFAULT_MAX_RETRIES: u32 = 5;
/// Default `CONSUMER_BATCH_MAX`.
pub const DEFAULT_BATCH_MAX: usize = 200;
/// Default `METRICS_ADDR`.
pub const DEFAULT_METRICS_ADDR: &str = "0.0.0.0:9090";
/// Default `MAIL_FROM`.
pub const DEFAULT_MAIL_FROM: &str = "Statecast <no-reply@statecast.local>";

/// The effect a consumer applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HandlerKind {
    /// Append every event to `audit_log` (PostgreSQL).
    Audit,
    /// Maintain per-country and per-day aggregates (PostgreSQL).
    Analytics,
    /// Mail the user about the change (SMTP, PostgreSQL for dedup).
    Email,
    /// Keep `profile:{id}` in Redis up to date.
    CacheRefresh,
}

impl HandlerKind {
    /// The name used in `CONSUMER_HANDLER`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Audit => "audit",
            Self::Analytics => "analytics",
            Self::Email => "email",
            Self::CacheRefresh => "cache-refresh",
        }
    }
}

/// Where a consumer group that has no committed offset for a partition starts reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StartPosition {
    /// From the oldest retained record: the group sees the retained history.
    Earliest,
    /// From the end at the moment the group first owns the partition; that position is
    /// committed at once, so a group that restarts before consuming anything still misses
    /// nothing produced after its first start.
    Latest,
}

impl StartPosition {
    /// The name used in `KAFKA_START_POSITION`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Earliest => "earliest",
            Self::Latest => "latest",
        }
    }
}

impl HandlerKind {
    /// The start position of a new group when `KAFKA_START_POSITION` is not set: a new `email`
    /// group must not mail every user about the retained history, so it starts at the end; the
    /// other handlers rebuild their state from the history.
    pub fn default_start_position(self) -> StartPosition {
        match self {
            Self::Email => StartPosition::Latest,
            Self::Audit | Self::Analytics | Self::CacheRefresh => StartPosition::Earliest,
        }
    }
}

/// The consumer's configuration.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "profile-consumer", version, about)]
pub struct Config {
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS", default_value = DEFAULT_BROKERS)]
    pub kafka_brokers: String,

    /// Kafka security (TLS, SASL) and librdkafka pass-through, the same for the consumer and
    /// its dead-letter producer (`statecast-kafka`); checked by [`Config::validate`].
    #[command(flatten)]
    pub kafka: statecast_kafka::KafkaSecurityArgs,

    /// Consumer group: each group receives every event once.
    #[arg(long, env = "KAFKA_GROUP_ID")]
    pub kafka_group_id: String,

    /// Topics to consume, comma-separated.
    #[arg(long, env = "KAFKA_TOPICS", default_value = DEFAULT_TOPIC, value_delimiter = ',')]
    pub kafka_topics: Vec<String>,

    /// Which effect to apply.
    #[arg(long, env = "CONSUMER_HANDLER", value_enum)]
    pub consumer_handler: HandlerKind,

    /// PostgreSQL; required by `audit`, `analytics` and `email`. TLS:
    /// `?sslmode=verify-full&sslrootcert=/path/ca.pem` (see docs/contracts.md).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,

    /// Redis; required by `cache-refresh`. `rediss://` for TLS.
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,

    /// PEM of the CA that signed the Redis server's certificate, for a `rediss://` URL; it
    /// replaces the bundled Mozilla roots.
    #[arg(long, env = "REDIS_CA_FILE")]
    pub redis_ca_file: Option<std::path::PathBuf>,

    /// SMTP server; required by `email`. `smtp://[user:password@]host[:port]` is plain SMTP
    /// (port 25), `smtp://...?tls=required` upgrades with STARTTLS (port 587) and `smtps://...`
    /// is TLS from the first byte (port 465).
    #[arg(long, env = "SMTP_URL")]
    pub smtp_url: Option<String>,

    /// PEM file of extra root certificates trusted for SMTP over TLS (beside the bundled
    /// Mozilla roots), e.g. a private CA.
    #[arg(long, env = "SMTP_CA_FILE")]
    pub smtp_ca_file: Option<std::path::PathBuf>,

    /// Dead-letter topic; `<first topic>.dlq` when unset.
    #[arg(long, env = "DLQ_TOPIC")]
    pub dlq_topic: Option<String>,

    /// Attempts at a record before it goes to the dead-letter topic (at least 1).
    #[arg(long, env = "MAX_RETRIES", default_value_t = DEFAULT_MAX_RETRIES)]
    pub max_retries: u32,

    /// Most records of one partition applied together (one transaction for the PostgreSQL
    /// handlers): what is already queued when the worker is ready, never waiting for more.
    /// `1` applies records one at a time.
    #[arg(long, env = "CONSUMER_BATCH_MAX", default_value_t = DEFAULT_BATCH_MAX)]
    pub consumer_batch_max: usize,

    /// Address of `/healthz`, `/readyz` and `/metrics`.
    #[arg(long, env = "METRICS_ADDR", default_value = DEFAULT_METRICS_ADDR)]
    pub metrics_addr: SocketAddr,

    /// Backoff before the second attempt, in milliseconds; doubles per attempt.
    #[arg(long, env = "RETRY_BASE_BACKOFF_MS", default_value_t = 100)]
    pub retry_base_backoff_ms: u64,

    /// Longest backoff between attempts, in milliseconds.
    #[arg(long, env = "RETRY_MAX_BACKOFF_MS", default_value_t = 5000)]
    pub retry_max_backoff_ms: u64,

    /// `From` of the `email` handler's mails.
    #[arg(long, env = "MAIL_FROM", default_value = DEFAULT_MAIL_FROM)]
    pub mail_from: String,

    /// Freshness of `profile:{id}` entries written by `cache-refresh` (±10 % jitter), in seconds.
    #[arg(long, env = "CACHE_TTL_SECONDS", default_value_t = 3600)]
    pub cache_ttl_seconds: u64,

    /// How long `cache-refresh` entries stay servable as stale after `CACHE_TTL_SECONDS` (the
    /// Profile API's setting of the same name), in seconds.
    #[arg(long, env = "CACHE_STALE_GRACE_SECONDS", default_value_t = 60)]
    pub cache_stale_grace_seconds: u64,

    /// Lifetime of the invalidation marker `cache-refresh` writes on delete, in seconds.
    #[arg(long, env = "CACHE_TOMBSTONE_TTL_SECONDS", default_value_t = 86_400)]
    pub cache_tombstone_ttl_seconds: u64,

    /// Where a new group (no committed offset) starts: `earliest` or `latest`; by default
    /// `latest` for `email`, `earliest` for the others. Ignored once the group has committed.
    #[arg(long, env = "KAFKA_START_POSITION", value_enum)]
    pub kafka_start_position: Option<StartPosition>,

    /// Kafka `session.timeout.ms`: how fast a dead replica's partitions move to another.
    #[arg(long, env = "KAFKA_SESSION_TIMEOUT_MS", default_value_t = 10_000)]
    pub kafka_session_timeout_ms: u32,

    /// How often the `consumer_lag` gauge is refreshed (librdkafka statistics), in milliseconds.
    #[arg(long, env = "KAFKA_STATISTICS_INTERVAL_MS", default_value_t = 5000)]
    pub kafka_statistics_interval_ms: u32,
}

impl Config {
    /// A configuration with every default, for in-process use (tests, embedding).
    pub fn new(
        kafka_brokers: impl Into<String>,
        kafka_group_id: impl Into<String>,
        kafka_topics: Vec<String>,
        consumer_handler: HandlerKind,
    ) -> Self {
        Self {
            kafka_brokers: kafka_brokers.into(),
            kafka: statecast_kafka::KafkaSecurityArgs::default(),
            kafka_group_id: kafka_group_id.into(),
            kafka_topics,
            consumer_handler,
            database_url: None,
            redis_url: None,
            redis_ca_file: None,
            smtp_url: None,
            smtp_ca_file: None,
            dlq_topic: None,
            max_retries: DEFAULT_MAX_RETRIES,
            consumer_batch_max: DEFAULT_BATCH_MAX,
            metrics_addr: SocketAddr::from(([0, 0, 0, 0], 9090)),
            retry_base_backoff_ms: 100,
            retry_max_backoff_ms: 5000,
            mail_from: DEFAULT_MAIL_FROM.to_owned(),
            cache_ttl_seconds: 3600,
            cache_stale_grace_seconds: 60,
            cache_tombstone_ttl_seconds: 86_400,
            kafka_start_position: None,
            kafka_session_timeout_ms: 10_000,
            kafka_statistics_interval_ms: 5000,
        }
    }

    /// Topics with surrounding blanks and empty entries removed.
    pub fn topics(&self) -> Vec<String> {
        self.kafka_topics
            .iter()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .collect()
    }

    /// `DLQ_TOPIC`, or `<first topic>.dlq`.
    pub fn dlq_topic(&self) -> String {
        match &self.dlq_topic {
            Some(topic) if !topic.trim().is_empty() => topic.trim().to_owned(),
            _ => format!(
                "{}.dlq",
                self.topics()
                    .first()
                    .map(String::as_str)
                    .unwrap_or(DEFAULT_TOPIC)
            ),
        }
    }

    /// `KAFKA_START_POSITION`, or the handler's default.
    pub fn start_position(&self) -> StartPosition {
        self.kafka_start_position
            .unwrap_or_else(|| self.consumer_handler.default_start_position())
    }

    /// Attempts per record, at least one.
    pub fn attempts(&self) -> u32 {
        self.max_retries.max(1)
    }

    /// Records per batch, at least one.
    pub fn batch_max(&self) -> usize {
        self.consumer_batch_max.max(1)
    }

    /// The backoff schedule between attempts.
    pub fn backoff(&self) -> crate::retry::Backoff {
        crate::retry::Backoff::new(
            Duration::from_millis(self.retry_base_backoff_ms),
            Duration::from_millis(self.retry_max_backoff_ms),
        )
    }

    /// The validated Kafka settings (a bad combination is [`Error::Config`] naming the variable).
    pub fn kafka_security(&self) -> Result<statecast_kafka::KafkaSecurity, Error> {
        kafka_security(&self.kafka)
    }

    /// Checks what parsing cannot: the handler's services are configured, names are not empty,
    /// the Kafka settings combine, `SMTP_URL` parses. Each refusal names the variable, its value
    /// (masked) and what to set it to.
    pub fn validate(&self) -> Result<(), Error> {
        self.kafka_security()?;
        let missing = |var: &str, why: &str, example: &str| {
            Error::Config(format!(
                "{var} is required by CONSUMER_HANDLER={} ({why}) but is not set; set it to \
                 {example}",
                self.consumer_handler.as_str()
            ))
        };
        let set = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.trim().is_empty());
        if self.kafka_brokers.trim().is_empty() {
            return Err(Error::Config(
                "KAFKA_BROKERS is empty; set it to the brokers' host:port list, e.g. \
                 kafka-0:9092,kafka-1:9092"
                    .into(),
            ));
        }
        if self.kafka_group_id.trim().is_empty() {
            return Err(Error::Config(
                "KAFKA_GROUP_ID is empty; set it to the consumer group's name, e.g. \
                 statecast-audit"
                    .into(),
            ));
        }
        if self.topics().is_empty() {
            return Err(Error::Config(format!(
                "KAFKA_TOPICS={:?} names no topic; set it to a comma-separated list such as \
                 {DEFAULT_TOPIC}",
                self.kafka_topics.join(",")
            )));
        }
        const POSTGRES: &str = "postgres://user:password@host:5432/database";
        match self.consumer_handler {
            HandlerKind::Audit | HandlerKind::Analytics if !set(&self.database_url) => {
                return Err(missing(
                    "DATABASE_URL",
                    "its effect is in PostgreSQL",
                    POSTGRES,
                ));
            }
            HandlerKind::Email if !set(&self.database_url) => {
                return Err(missing(
                    "DATABASE_URL",
                    "mails are de-duplicated in PostgreSQL",
                    POSTGRES,
                ));
            }
            HandlerKind::Email if !set(&self.smtp_url) => {
                return Err(missing(
                    "SMTP_URL",
                    "mails are sent through it",
                    "smtp://host:25, smtp://user:password@host:587?tls=required or \
                     smtps://user:password@host:465",
                ));
            }
            HandlerKind::CacheRefresh if !set(&self.redis_url) => {
                return Err(missing(
                    "REDIS_URL",
                    "its effect is in Redis",
                    "redis://host:6379 (rediss://... for TLS)",
                ));
            }
            _ => {}
        }
        if let Some(url) = &self.smtp_url
            && self.consumer_handler == HandlerKind::Email
        {
            smtp_settings(url)?;
        }
        Ok(())
    }
}

/// `SMTP_URL` as [`SmtpSettings`](crate::handlers::email::SmtpSettings), or an error naming the
/// variable, its value with the password masked and the forms it accepts.
pub(crate) fn smtp_settings(url: &str) -> Result<crate::handlers::email::SmtpSettings, Error> {
    crate::handlers::email::SmtpSettings::parse(url).map_err(|reason| {
        Error::Config(format!(
            "SMTP_URL={} is not a usable SMTP URL: {reason}; expected \
             smtp://[user:password@]host[:port] (plain, port 25), smtp://...?tls=required \
             (STARTTLS, port 587) or smtps://... (TLS, port 465)",
            statecast_startup::redact_url(url)
        ))
    })
}

/// [`statecast_kafka::KafkaSecurity::from_args`], its error as [`Error::Config`].
pub(crate) fn kafka_security(
    args: &statecast_kafka::KafkaSecurityArgs,
) -> Result<statecast_kafka::KafkaSecurity, Error> {
    statecast_kafka::KafkaSecurity::from_args(args).map_err(|e| Error::Config(e.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn a_new_email_group_starts_at_the_end_and_the_others_at_the_beginning() {
        let mut config = Config::new("b", "g", vec!["t".into()], HandlerKind::Email);
        assert_eq!(config.start_position(), StartPosition::Latest);
        for handler in [
            HandlerKind::Audit,
            HandlerKind::Analytics,
            HandlerKind::CacheRefresh,
        ] {
            config.consumer_handler = handler;
            assert_eq!(config.start_position(), StartPosition::Earliest);
        }
        config.kafka_start_position = Some(StartPosition::Latest);
        assert_eq!(config.start_position(), StartPosition::Latest);
        let parsed = Config::try_parse_from([
            "c",
            "--kafka-group-id",
            "g",
            "--consumer-handler",
            "email",
            "--kafka-start-position",
            "earliest",
        ])
        .unwrap();
        assert_eq!(parsed.start_position(), StartPosition::Earliest);
    }

    #[test]
    fn dlq_topic_defaults_to_first_topic_dot_dlq() {
        let config = Config::new(
            "b",
            "g",
            vec![" user-events ".into(), "other".into()],
            HandlerKind::Audit,
        );
        assert_eq!(config.dlq_topic(), "user-events.dlq");
        let config = Config {
            dlq_topic: Some("dead".into()),
            ..config
        };
        assert_eq!(config.dlq_topic(), "dead");
    }

    #[test]
    fn email_without_smtp_url_is_refused_naming_the_variable() {
        let config = Config {
            database_url: Some("postgres://x/y".into()),
            ..Config::new("b", "g", vec!["t".into()], HandlerKind::Email)
        };
        let message = config.validate().unwrap_err().to_string();
        assert!(message.contains("SMTP_URL"), "{message}");
    }

    #[test]
    fn cache_refresh_needs_redis_and_audit_needs_a_database() {
        let config = Config::new("b", "g", vec!["t".into()], HandlerKind::CacheRefresh);
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("REDIS_URL")
        );
        let config = Config::new("b", "g", vec!["t".into()], HandlerKind::Audit);
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("DATABASE_URL")
        );
    }

    #[test]
    fn bad_kafka_security_is_refused_naming_the_variable() {
        let config = Config {
            kafka: statecast_kafka::KafkaSecurityArgs {
                kafka_security_protocol: "sasl_ssl".into(),
                kafka_sasl_mechanism: Some("SCRAM-SHA-512".into()),
                kafka_sasl_username: Some("statecast".into()),
                ..Default::default()
            },
            redis_url: Some("redis://x".into()),
            ..Config::new("b", "g", vec!["t".into()], HandlerKind::CacheRefresh)
        };
        let message = config.validate().unwrap_err().to_string();
        assert!(message.contains("KAFKA_SASL_USERNAME"), "{message}");
    }

    #[test]
    fn topics_are_comma_separated_and_defaults_apply() {
        let config = Config::try_parse_from([
            "profile-consumer",
            "--kafka-group-id",
            "g",
            "--consumer-handler",
            "cache-refresh",
            "--kafka-topics",
            "a,b",
        ])
        .unwrap();
        assert_eq!(config.topics(), vec!["a", "b"]);
        assert_eq!(config.consumer_handler, HandlerKind::CacheRefresh);
        assert_eq!(config.attempts(), DEFAULT_MAX_RETRIES);
        assert_eq!(config.metrics_addr.port(), 9090);
    }
}
