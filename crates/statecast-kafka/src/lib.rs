//! The one Kafka client configuration of every Statecast workload: the Profile API's outbox
//! relay, the consumer (its consumer, its dead-letter producer and `dlq replay`) and the
//! operator's lag reader all take the same variables and set the same librdkafka properties.
//!
//! Why one crate: production clusters need TLS and SASL, and a setting that works for the
//! relay but is spelled or validated differently by the consumer is an outage waiting for a
//! rollout. Here the settings are parsed once ([`KafkaSecurityArgs`], clap flags backed by
//! environment variables), validated once at start into a [`KafkaSecurity`] (a bad combination
//! is a [`ConfigError`] naming the variable) and written into any rdkafka `ClientConfig` by the
//! pure [`apply`].
//!
//! | variable | librdkafka property |
//! |---|---|
//! | `KAFKA_SECURITY_PROTOCOL` (`plaintext`, `ssl`, `sasl_plaintext`, `sasl_ssl`) | `security.protocol` |
//! | `KAFKA_SASL_MECHANISM` (`SCRAM-SHA-256`, `SCRAM-SHA-512`, `PLAIN`) | `sasl.mechanism` |
//! | `KAFKA_SASL_USERNAME` | `sasl.username` |
//! | `KAFKA_SASL_PASSWORD` or `KAFKA_SASL_PASSWORD_FILE` | `sasl.password` |
//! | `KAFKA_SSL_CA_LOCATION` (default `probe` with TLS) | `ssl.ca.location` |
//! | `KAFKA_PROPERTY_<NAME>` | `<name>`: lower-cased, `_` → `.` |
//!
//! Secrets are [`Secret`]s: redacted in `Debug`, never in an error message.
//!
//! # Layout
//! - [`secret`]: [`Secret`], the redacting string.
//! - [`settings`]: [`KafkaSecurityArgs`], [`KafkaSecurity`], [`ConfigError`], [`apply`] and
//!   the `KAFKA_PROPERTY_*` name mapping.

pub mod secret;
pub mod settings;

pub use secret::Secret;
pub use settings::{
    ConfigError, KafkaSecurity, KafkaSecurityArgs, SaslCredentials, SaslMechanism,
    SecurityProtocol, apply,
};
