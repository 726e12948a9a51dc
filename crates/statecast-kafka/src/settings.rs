//! The settings ([`KafkaSecurityArgs`], as parsed), their validation into a [`KafkaSecurity`]
//! (or a [`ConfigError`] naming the variable at fault), and [`apply`], which writes them into an
//! rdkafka [`ClientConfig`].

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

use rdkafka::ClientConfig;

use crate::secret::{REDACTED, Secret};

/// Prefix of the pass-through variables: `KAFKA_PROPERTY_CLIENT_ID=x` sets `client.id=x`.
pub const PROPERTY_ENV_PREFIX: &str = "KAFKA_PROPERTY_";

/// The value of `ssl.ca.location` that makes librdkafka probe the usual system paths (in the
/// image: `/etc/ssl/certs/ca-certificates.crt`); used when TLS is on and no CA is given.
pub const CA_PROBE: &str = "probe";

/// librdkafka properties a pass-through may not set: each has its own variable, or a workload
/// sets it because its delivery guarantees depend on it. The second element says which.
const RESERVED: &[(&str, &str)] = &[
    ("bootstrap.servers", "set KAFKA_BROKERS instead"),
    ("metadata.broker.list", "set KAFKA_BROKERS instead"),
    ("security.protocol", "set KAFKA_SECURITY_PROTOCOL instead"),
    ("sasl.mechanism", "set KAFKA_SASL_MECHANISM instead"),
    ("sasl.mechanisms", "set KAFKA_SASL_MECHANISM instead"),
    ("sasl.username", "set KAFKA_SASL_USERNAME instead"),
    (
        "sasl.password",
        "set KAFKA_SASL_PASSWORD or KAFKA_SASL_PASSWORD_FILE instead",
    ),
    ("ssl.ca.location", "set KAFKA_SSL_CA_LOCATION instead"),
    ("group.id", "the group is KAFKA_GROUP_ID"),
    (
        "enable.auto.commit",
        "offsets are committed as each workload's guarantees require",
    ),
    (
        "enable.auto.offset.store",
        "offsets are stored only once a record's effect is durable",
    ),
    (
        "enable.idempotence",
        "producers are idempotent where ordering depends on it",
    ),
    ("acks", "producers wait for acks=all"),
    ("request.required.acks", "producers wait for acks=all"),
];

/// The Kafka client settings every workload reads: clap flags, each also read from the
/// environment variable named beside it. Flatten it into a binary's configuration
/// (`#[command(flatten)]`) and turn it into a [`KafkaSecurity`] with [`KafkaSecurity::from_args`]
/// at start.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct KafkaSecurityArgs {
    /// How to talk to the brokers: `plaintext`, `ssl` (TLS), `sasl_plaintext` (SASL without TLS)
    /// or `sasl_ssl` (SASL over TLS).
    #[arg(long, env = "KAFKA_SECURITY_PROTOCOL", default_value = "plaintext")]
    pub kafka_security_protocol: String,

    /// SASL mechanism, required by the `sasl_*` protocols: `SCRAM-SHA-256`, `SCRAM-SHA-512` or
    /// `PLAIN`.
    #[arg(long, env = "KAFKA_SASL_MECHANISM")]
    pub kafka_sasl_mechanism: Option<String>,

    /// SASL user name, required by the `sasl_*` protocols.
    #[arg(long, env = "KAFKA_SASL_USERNAME")]
    pub kafka_sasl_username: Option<String>,

    /// SASL password; prefer `KAFKA_SASL_PASSWORD_FILE` (a command-line flag is visible to
    /// every process of the host).
    #[arg(long, env = "KAFKA_SASL_PASSWORD", hide_env_values = true)]
    pub kafka_sasl_password: Option<Secret>,

    /// File holding the SASL password (read once at start; a trailing line break is dropped),
    /// e.g. a mounted Secret key. Exclusive with `KAFKA_SASL_PASSWORD`.
    #[arg(long, env = "KAFKA_SASL_PASSWORD_FILE")]
    pub kafka_sasl_password_file: Option<PathBuf>,

    /// PEM file (or directory) of the CAs that sign the brokers' certificates, for `ssl` and
    /// `sasl_ssl`; `probe` (the default with TLS) uses the system's CA bundle.
    #[arg(long, env = "KAFKA_SSL_CA_LOCATION")]
    pub kafka_ssl_ca_location: Option<PathBuf>,

    /// Any other librdkafka property as `NAME=VALUE` (repeatable), beside the environment's
    /// `KAFKA_PROPERTY_<NAME>` variables; a flag wins over a variable of the same property.
    #[arg(long = "kafka-property", value_name = "NAME=VALUE")]
    pub kafka_property: Vec<Secret>,
}

/// `security.protocol`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SecurityProtocol {
    /// No TLS, no authentication.
    #[default]
    Plaintext,
    /// TLS, no authentication.
    Ssl,
    /// SASL authentication without TLS.
    SaslPlaintext,
    /// SASL authentication over TLS.
    SaslSsl,
}

impl SecurityProtocol {
    /// Every protocol, in the order the error messages list them.
    pub const ALL: [Self; 4] = [
        Self::Plaintext,
        Self::Ssl,
        Self::SaslPlaintext,
        Self::SaslSsl,
    ];

    /// The librdkafka (and `KAFKA_SECURITY_PROTOCOL`) spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }

    /// Whether the connection is TLS.
    pub fn uses_tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }

    /// Whether the client authenticates with SASL.
    pub fn uses_sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }

    fn parse(value: &str) -> Option<Self> {
        let value = value.trim();
        Self::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(value))
    }
}

/// `sasl.mechanism`: the mechanisms this build supports (librdkafka's SCRAM needs OpenSSL,
/// PLAIN is built in; GSSAPI would need cyrus-sasl, which is not linked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    /// SCRAM with SHA-256 (RFC 7677).
    ScramSha256,
    /// SCRAM with SHA-512.
    ScramSha512,
    /// The password in the clear (RFC 4616): only over TLS.
    Plain,
}

impl SaslMechanism {
    /// Every mechanism, in the order the error messages list them.
    pub const ALL: [Self; 3] = [Self::ScramSha256, Self::ScramSha512, Self::Plain];

    /// The librdkafka (and `KAFKA_SASL_MECHANISM`) spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
            Self::Plain => "PLAIN",
        }
    }

    fn parse(value: &str) -> Option<Self> {
        let value = value.trim();
        Self::ALL
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(value))
    }
}

/// A SASL identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaslCredentials {
    /// The mechanism.
    pub mechanism: SaslMechanism,
    /// The user name (not secret: it appears in logs).
    pub username: String,
    /// The password (redacted in `Debug`).
    pub password: Secret,
}

/// Validated Kafka client settings, shared by every client a workload creates.
///
/// Built only by [`KafkaSecurity::from_args`] (or [`KafkaSecurity::from_parts`]), so a value
/// of this type is a combination librdkafka can use; [`KafkaSecurity::default`] is plaintext.
/// `Debug` redacts the password and the values of secret-looking pass-through properties.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KafkaSecurity {
    protocol: SecurityProtocol,
    sasl: Option<SaslCredentials>,
    ca_location: Option<PathBuf>,
    properties: Properties,
}

/// Pass-through properties, by librdkafka name.
#[derive(Clone, Default, PartialEq, Eq)]
struct Properties(BTreeMap<String, Secret>);

impl fmt::Debug for Properties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (name, value) in &self.0 {
            if is_sensitive(name) {
                map.entry(name, &format_args!("{REDACTED}"));
            } else {
                map.entry(name, &value.expose());
            }
        }
        map.finish()
    }
}

/// Whether a librdkafka property holds a secret (`ssl.key.password`, `ssl.key.pem`,
/// `sasl.oauthbearer.client.secret`, `ssl.keystore.password`, ...).
pub fn is_sensitive(property: &str) -> bool {
    property.contains("password")
        || property.contains("secret")
        || property.starts_with("ssl.key")
        || property.ends_with(".pem")
        || property.contains("oauthbearer.config")
        || property.contains("jaas")
}

/// A setting that cannot work, refused at start. The message names the variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable}: {reason}")]
pub struct ConfigError {
    variable: String,
    reason: String,
}

impl ConfigError {
    fn new(variable: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            variable: variable.into(),
            reason: reason.into(),
        }
    }

    /// The environment variable (or flag) at fault.
    pub fn variable(&self) -> &str {
        &self.variable
    }
}

/// The librdkafka property a `KAFKA_PROPERTY_*` variable sets: the rest of the name,
/// lower-cased, each `_` turned into `.` (`KAFKA_PROPERTY_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM`
/// sets `ssl.endpoint.identification.algorithm`). `None` for other variables. (No librdkafka
/// property settable as a string has an `_` in its name, so the mapping loses nothing.)
pub fn property_for_env_var(variable: &str) -> Option<String> {
    let rest = variable.strip_prefix(PROPERTY_ENV_PREFIX)?;
    Some(rest.to_ascii_lowercase().replace('_', "."))
}

/// The `KAFKA_PROPERTY_*` variable that sets `property` (the reverse of
/// [`property_for_env_var`]).
pub fn env_var_for_property(property: &str) -> String {
    format!(
        "{PROPERTY_ENV_PREFIX}{}",
        property.to_ascii_uppercase().replace('.', "_")
    )
}

impl KafkaSecurity {
    /// Validates `args`, taking the pass-through properties from the process environment
    /// (`KAFKA_PROPERTY_*`) and the `--kafka-property` flags; reads `KAFKA_SASL_PASSWORD_FILE`.
    pub fn from_args(args: &KafkaSecurityArgs) -> Result<Self, ConfigError> {
        Self::from_parts(args, std::env::vars_os())
    }

    /// [`KafkaSecurity::from_args`] with the environment given (tests, embedding): only the
    /// `KAFKA_PROPERTY_*` entries of `env` are looked at.
    pub fn from_parts(
        args: &KafkaSecurityArgs,
        env: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> Result<Self, ConfigError> {
        let protocol = parse_protocol(&args.kafka_security_protocol)?;
        let sasl = sasl_credentials(protocol, args)?;
        let ca_location = ca_location(protocol, args.kafka_ssl_ca_location.as_ref())?;
        let properties = properties(env, &args.kafka_property)?;
        Ok(Self {
            protocol,
            sasl,
            ca_location,
            properties: Properties(properties),
        })
    }

    /// The protocol.
    pub fn protocol(&self) -> SecurityProtocol {
        self.protocol
    }

    /// The SASL identity, with a `sasl_*` protocol.
    pub fn sasl(&self) -> Option<&SaslCredentials> {
        self.sasl.as_ref()
    }

    /// Writes these settings into `config`; see [`apply`].
    pub fn apply(&self, config: &mut ClientConfig) {
        apply(self, config);
    }

    /// A client configuration for `brokers` with these settings applied, for clients that set
    /// nothing else.
    pub fn client_config(&self, brokers: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", brokers);
        apply(self, &mut config);
        config
    }
}

/// Writes `security` into `config`: `security.protocol`; with SASL `sasl.mechanism`,
/// `sasl.username` and `sasl.password`; with TLS `ssl.ca.location` (the given CA, or
/// [`CA_PROBE`]); then every pass-through property.
///
/// Call it after the workload's own settings: a pass-through property overrides a tuning
/// default of the workload (`linger.ms`, `client.id`, ...), while the settings a workload's
/// guarantees depend on are refused as pass-through at start (see `docs/contracts.md`).
pub fn apply(security: &KafkaSecurity, config: &mut ClientConfig) {
    config.set("security.protocol", security.protocol.as_str());
    if let Some(sasl) = &security.sasl {
        config
            .set("sasl.mechanism", sasl.mechanism.as_str())
            .set("sasl.username", &sasl.username)
            .set("sasl.password", sasl.password.expose());
    }
    if security.protocol.uses_tls() {
        let ca = security
            .ca_location
            .as_ref()
            .map_or_else(|| CA_PROBE.to_owned(), |p| p.display().to_string());
        config.set("ssl.ca.location", ca);
    }
    for (name, value) in &security.properties.0 {
        config.set(name, value.expose());
    }
}

fn non_empty(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|v| !v.is_empty())
}

fn parse_protocol(value: &str) -> Result<SecurityProtocol, ConfigError> {
    if value.trim().is_empty() {
        return Ok(SecurityProtocol::Plaintext);
    }
    SecurityProtocol::parse(value).ok_or_else(|| {
        ConfigError::new(
            "KAFKA_SECURITY_PROTOCOL",
            format!(
                "unknown protocol {value:?}; expected one of {}",
                SecurityProtocol::ALL
                    .map(SecurityProtocol::as_str)
                    .join(", ")
            ),
        )
    })
}

fn sasl_credentials(
    protocol: SecurityProtocol,
    args: &KafkaSecurityArgs,
) -> Result<Option<SaslCredentials>, ConfigError> {
    let mechanism = non_empty(args.kafka_sasl_mechanism.as_deref());
    let username = non_empty(args.kafka_sasl_username.as_deref());
    let password = args.kafka_sasl_password.as_ref().filter(|p| !p.is_empty());
    let password_file = args
        .kafka_sasl_password_file
        .as_ref()
        .filter(|p| !p.as_os_str().is_empty());
    if !protocol.uses_sasl() {
        let set = [
            ("KAFKA_SASL_MECHANISM", mechanism.is_some()),
            ("KAFKA_SASL_USERNAME", username.is_some()),
            ("KAFKA_SASL_PASSWORD", password.is_some()),
            ("KAFKA_SASL_PASSWORD_FILE", password_file.is_some()),
        ];
        if let Some((variable, _)) = set.iter().find(|(_, set)| *set) {
            return Err(ConfigError::new(
                *variable,
                format!(
                    "is set but KAFKA_SECURITY_PROTOCOL={} does not use SASL \
                     (use sasl_ssl, or sasl_plaintext)",
                    protocol.as_str()
                ),
            ));
        }
        return Ok(None);
    }
    let requires = |variable: &str| {
        ConfigError::new(
            variable,
            format!(
                "is required with KAFKA_SECURITY_PROTOCOL={}",
                protocol.as_str()
            ),
        )
    };
    let mechanism = mechanism.ok_or_else(|| requires("KAFKA_SASL_MECHANISM"))?;
    let mechanism = SaslMechanism::parse(mechanism).ok_or_else(|| {
        ConfigError::new(
            "KAFKA_SASL_MECHANISM",
            format!(
                "unsupported mechanism {mechanism:?}; expected one of {}",
                SaslMechanism::ALL.map(SaslMechanism::as_str).join(", ")
            ),
        )
    })?;
    let password = match (password, password_file) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                "KAFKA_SASL_PASSWORD_FILE",
                "is set together with KAFKA_SASL_PASSWORD; set only one",
            ));
        }
        (Some(password), None) => Some(password.clone()),
        (None, Some(file)) => Some(read_password_file(file)?),
        (None, None) => None,
    };
    match (username, password) {
        (Some(username), Some(password)) => Ok(Some(SaslCredentials {
            mechanism,
            username: username.to_owned(),
            password,
        })),
        (Some(_), None) => Err(ConfigError::new(
            "KAFKA_SASL_USERNAME",
            "is set but neither KAFKA_SASL_PASSWORD nor KAFKA_SASL_PASSWORD_FILE is",
        )),
        (None, Some(_)) => Err(ConfigError::new(
            "KAFKA_SASL_USERNAME",
            "is required when a SASL password is set",
        )),
        (None, None) => Err(requires("KAFKA_SASL_USERNAME")),
    }
}

fn read_password_file(file: &PathBuf) -> Result<Secret, ConfigError> {
    let variable = "KAFKA_SASL_PASSWORD_FILE";
    // The I/O error names the path and the cause, never the content.
    let content = std::fs::read_to_string(file)
        .map_err(|e| ConfigError::new(variable, format!("cannot read {}: {e}", file.display())))?;
    let password = content.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        return Err(ConfigError::new(
            variable,
            format!("{} is empty", file.display()),
        ));
    }
    Ok(Secret::new(password))
}

fn ca_location(
    protocol: SecurityProtocol,
    location: Option<&PathBuf>,
) -> Result<Option<PathBuf>, ConfigError> {
    let variable = "KAFKA_SSL_CA_LOCATION";
    let Some(location) = location.filter(|p| !p.as_os_str().is_empty()) else {
        return Ok(None);
    };
    if !protocol.uses_tls() {
        return Err(ConfigError::new(
            variable,
            format!(
                "is set but KAFKA_SECURITY_PROTOCOL={} does not use TLS (use ssl or sasl_ssl)",
                protocol.as_str()
            ),
        ));
    }
    if location.as_os_str() != CA_PROBE && !location.exists() {
        return Err(ConfigError::new(
            variable,
            format!("{} does not exist", location.display()),
        ));
    }
    Ok(Some(location.clone()))
}

fn properties(
    env: impl IntoIterator<Item = (OsString, OsString)>,
    flags: &[Secret],
) -> Result<BTreeMap<String, Secret>, ConfigError> {
    let mut properties = BTreeMap::new();
    for (variable, value) in env {
        let variable = variable.to_string_lossy();
        let Some(name) = property_for_env_var(&variable) else {
            continue;
        };
        check_property(&variable, &name)?;
        let value = value.into_string().map_err(|_| {
            ConfigError::new(
                variable.as_ref(),
                "is not valid UTF-8 (librdkafka needs text)",
            )
        })?;
        properties.insert(name, Secret::new(value));
    }
    for flag in flags {
        let variable = "--kafka-property";
        let (name, value) = flag.expose().split_once('=').ok_or_else(|| {
            ConfigError::new(variable, "expects NAME=VALUE, e.g. client.id=statecast")
        })?;
        let name = name.trim();
        check_property(&format!("{variable} {name}"), name)?;
        properties.insert(name.to_owned(), Secret::new(value));
    }
    Ok(properties)
}

fn check_property(variable: &str, name: &str) -> Result<(), ConfigError> {
    let well_formed = !name.is_empty()
        && name.split('.').all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        });
    if !well_formed {
        return Err(ConfigError::new(
            variable,
            format!(
                "{name:?} is not a librdkafka property name (dot-separated lower-case words, \
                 written in a variable as {PROPERTY_ENV_PREFIX}WORD_WORD)"
            ),
        ));
    }
    if let Some((_, why)) = RESERVED.iter().find(|(reserved, _)| *reserved == name) {
        return Err(ConfigError::new(
            variable,
            format!("{name} cannot be passed through: {why}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn args(protocol: &str) -> KafkaSecurityArgs {
        KafkaSecurityArgs {
            kafka_security_protocol: protocol.into(),
            ..KafkaSecurityArgs::default()
        }
    }

    fn sasl_ssl() -> KafkaSecurityArgs {
        KafkaSecurityArgs {
            kafka_sasl_mechanism: Some("SCRAM-SHA-512".into()),
            kafka_sasl_username: Some("statecast".into()),
            kafka_sasl_password: Some(Secret::new("hunter2")),
            ..args("sasl_ssl")
        }
    }

    fn build(args: &KafkaSecurityArgs) -> Result<KafkaSecurity, ConfigError> {
        KafkaSecurity::from_parts(args, [])
    }

    fn refused(args: &KafkaSecurityArgs) -> ConfigError {
        build(args).unwrap_err()
    }

    fn applied(security: &KafkaSecurity) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", "b:9093")
            .set("linger.ms", "0");
        apply(security, &mut config);
        config
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    #[test]
    fn the_default_is_plaintext_and_sets_nothing_else() {
        let security = build(&KafkaSecurityArgs::default()).unwrap();
        assert_eq!(security, KafkaSecurity::default());
        let config = applied(&security);
        assert_eq!(config.get("security.protocol"), Some("plaintext"));
        assert_eq!(config.get("ssl.ca.location"), None);
        assert_eq!(config.get("sasl.mechanism"), None);
        assert_eq!(config.get("bootstrap.servers"), Some("b:9093"));
    }

    #[test]
    fn sasl_ssl_sets_mechanism_credentials_and_ca() {
        let dir = std::env::temp_dir();
        let security = build(&KafkaSecurityArgs {
            kafka_ssl_ca_location: Some(dir.clone()),
            ..sasl_ssl()
        })
        .unwrap();
        let config = applied(&security);
        assert_eq!(config.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(config.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(config.get("sasl.username"), Some("statecast"));
        assert_eq!(config.get("sasl.password"), Some("hunter2"));
        assert_eq!(
            config.get("ssl.ca.location"),
            Some(dir.display().to_string().as_str())
        );
    }

    #[test]
    fn tls_without_a_ca_probes_the_system_bundle() {
        let config = applied(&build(&args("ssl")).unwrap());
        assert_eq!(config.get("security.protocol"), Some("ssl"));
        assert_eq!(config.get("ssl.ca.location"), Some(CA_PROBE));
        assert_eq!(config.get("sasl.username"), None);
    }

    #[test]
    fn protocol_and_mechanism_are_case_insensitive() {
        let security = build(&KafkaSecurityArgs {
            kafka_security_protocol: "SASL_PLAINTEXT".into(),
            kafka_sasl_mechanism: Some("scram-sha-256".into()),
            ..sasl_ssl()
        })
        .unwrap();
        assert_eq!(security.protocol(), SecurityProtocol::SaslPlaintext);
        assert_eq!(
            security.sasl().unwrap().mechanism,
            SaslMechanism::ScramSha256
        );
        assert_eq!(applied(&security).get("ssl.ca.location"), None);
    }

    #[test]
    fn an_unknown_protocol_is_refused_naming_the_variable() {
        let error = refused(&args("tls"));
        assert_eq!(error.variable(), "KAFKA_SECURITY_PROTOCOL");
        let message = error.to_string();
        assert!(message.contains("\"tls\""), "{message}");
        assert!(message.contains("sasl_ssl"), "{message}");
    }

    #[test]
    fn a_mechanism_without_a_sasl_protocol_is_refused() {
        let error = refused(&KafkaSecurityArgs {
            kafka_sasl_mechanism: Some("PLAIN".into()),
            ..args("ssl")
        });
        assert_eq!(error.variable(), "KAFKA_SASL_MECHANISM");
        assert!(error.to_string().contains("does not use SASL"), "{error}");
    }

    #[test]
    fn credentials_without_a_sasl_protocol_are_refused() {
        let error = refused(&KafkaSecurityArgs {
            kafka_sasl_username: Some("u".into()),
            ..args("plaintext")
        });
        assert_eq!(error.variable(), "KAFKA_SASL_USERNAME");
    }

    #[test]
    fn an_unknown_or_missing_mechanism_is_refused() {
        let error = refused(&KafkaSecurityArgs {
            kafka_sasl_mechanism: Some("GSSAPI".into()),
            ..sasl_ssl()
        });
        assert_eq!(error.variable(), "KAFKA_SASL_MECHANISM");
        assert!(error.to_string().contains("SCRAM-SHA-512"), "{error}");
        let error = refused(&KafkaSecurityArgs {
            kafka_sasl_mechanism: None,
            ..sasl_ssl()
        });
        assert_eq!(error.variable(), "KAFKA_SASL_MECHANISM");
        assert!(error.to_string().contains("required"), "{error}");
    }

    #[test]
    fn a_username_without_a_password_is_refused() {
        let error = refused(&KafkaSecurityArgs {
            kafka_sasl_password: None,
            ..sasl_ssl()
        });
        assert_eq!(error.variable(), "KAFKA_SASL_USERNAME");
        assert!(error.to_string().contains("KAFKA_SASL_PASSWORD"), "{error}");
    }

    #[test]
    fn a_password_without_a_username_is_refused() {
        let error = refused(&KafkaSecurityArgs {
            kafka_sasl_username: None,
            ..sasl_ssl()
        });
        assert_eq!(error.variable(), "KAFKA_SASL_USERNAME");
    }

    #[test]
    fn password_and_password_file_together_are_refused() {
        let error = refused(&KafkaSecurityArgs {
            kafka_sasl_password_file: Some("/dev/null".into()),
            ..sasl_ssl()
        });
        assert_eq!(error.variable(), "KAFKA_SASL_PASSWORD_FILE");
    }

    #[test]
    fn the_password_file_is_read_without_its_line_break() {
        let file = std::env::temp_dir().join(format!("statecast-kafka-pw-{}", std::process::id()));
        std::fs::write(&file, "s3cret\n").unwrap();
        let security = build(&KafkaSecurityArgs {
            kafka_sasl_password: None,
            kafka_sasl_password_file: Some(file.clone()),
            ..sasl_ssl()
        })
        .unwrap();
        std::fs::remove_file(&file).unwrap();
        assert_eq!(applied(&security).get("sasl.password"), Some("s3cret"));
    }

    #[test]
    fn a_missing_password_file_is_refused_naming_the_variable_and_path() {
        let error = refused(&KafkaSecurityArgs {
            kafka_sasl_password: None,
            kafka_sasl_password_file: Some("/nonexistent/kafka-password".into()),
            ..sasl_ssl()
        });
        assert_eq!(error.variable(), "KAFKA_SASL_PASSWORD_FILE");
        assert!(
            error.to_string().contains("/nonexistent/kafka-password"),
            "{error}"
        );
    }

    #[test]
    fn a_ca_file_that_does_not_exist_is_refused() {
        let error = refused(&KafkaSecurityArgs {
            kafka_ssl_ca_location: Some("/nonexistent/ca.pem".into()),
            ..sasl_ssl()
        });
        assert_eq!(error.variable(), "KAFKA_SSL_CA_LOCATION");
        assert!(error.to_string().contains("/nonexistent/ca.pem"), "{error}");
    }

    #[test]
    fn a_ca_without_tls_is_refused_and_probe_is_accepted() {
        let error = refused(&KafkaSecurityArgs {
            kafka_ssl_ca_location: Some(std::env::temp_dir()),
            kafka_security_protocol: "sasl_plaintext".into(),
            ..sasl_ssl()
        });
        assert_eq!(error.variable(), "KAFKA_SSL_CA_LOCATION");
        let security = build(&KafkaSecurityArgs {
            kafka_ssl_ca_location: Some(CA_PROBE.into()),
            ..args("ssl")
        })
        .unwrap();
        assert_eq!(applied(&security).get("ssl.ca.location"), Some(CA_PROBE));
    }

    #[test]
    fn env_var_names_map_to_dotted_properties_and_back() {
        assert_eq!(
            property_for_env_var("KAFKA_PROPERTY_CLIENT_ID").as_deref(),
            Some("client.id")
        );
        assert_eq!(
            property_for_env_var("KAFKA_PROPERTY_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM").as_deref(),
            Some("ssl.endpoint.identification.algorithm")
        );
        assert_eq!(property_for_env_var("KAFKA_BROKERS"), None);
        assert_eq!(
            env_var_for_property("socket.keepalive.enable"),
            "KAFKA_PROPERTY_SOCKET_KEEPALIVE_ENABLE"
        );
    }

    #[test]
    fn pass_through_properties_come_from_env_and_flags_and_override_tuning() {
        let security = KafkaSecurity::from_parts(
            &KafkaSecurityArgs {
                kafka_property: vec![Secret::new("client.id=from-flag")],
                ..args("plaintext")
            },
            env(&[
                ("KAFKA_PROPERTY_CLIENT_ID", "from-env"),
                ("KAFKA_PROPERTY_LINGER_MS", "5"),
                ("PATH", "/bin"),
            ]),
        )
        .unwrap();
        let config = applied(&security);
        assert_eq!(config.get("client.id"), Some("from-flag"));
        assert_eq!(config.get("linger.ms"), Some("5"));
        assert_eq!(config.get("path"), None);
    }

    #[test]
    fn reserved_or_malformed_pass_through_properties_are_refused() {
        for (variable, hint) in [
            ("KAFKA_PROPERTY_SASL_PASSWORD", "KAFKA_SASL_PASSWORD"),
            (
                "KAFKA_PROPERTY_SECURITY_PROTOCOL",
                "KAFKA_SECURITY_PROTOCOL",
            ),
            ("KAFKA_PROPERTY_BOOTSTRAP_SERVERS", "KAFKA_BROKERS"),
            ("KAFKA_PROPERTY_ENABLE_AUTO_OFFSET_STORE", "durable"),
            (
                "KAFKA_PROPERTY_SOCKET__TIMEOUT_MS",
                "not a librdkafka property",
            ),
            ("KAFKA_PROPERTY_", "not a librdkafka property"),
        ] {
            let error =
                KafkaSecurity::from_parts(&args("plaintext"), env(&[(variable, "x")])).unwrap_err();
            assert_eq!(error.variable(), variable);
            assert!(error.to_string().contains(hint), "{error}");
        }
        let error = build(&KafkaSecurityArgs {
            kafka_property: vec![Secret::new("client.id")],
            ..args("plaintext")
        })
        .unwrap_err();
        assert_eq!(error.variable(), "--kafka-property");
    }

    #[test]
    fn secrets_never_appear_in_debug_output_or_errors() {
        let security = KafkaSecurity::from_parts(
            &sasl_ssl(),
            env(&[
                ("KAFKA_PROPERTY_SSL_KEY_PASSWORD", "keypass-9"),
                ("KAFKA_PROPERTY_SASL_OAUTHBEARER_CLIENT_SECRET", "oauth-7"),
                ("KAFKA_PROPERTY_CLIENT_ID", "visible-id"),
            ]),
        )
        .unwrap();
        let debug = format!("{security:?} {security:#?}");
        for secret in ["hunter2", "keypass-9", "oauth-7"] {
            assert!(!debug.contains(secret), "{debug}");
        }
        assert!(debug.contains("visible-id"), "{debug}");
        assert!(debug.contains("statecast"), "{debug}");
        // rdkafka's own Debug of the ClientConfig leaves sasl.password out too.
        let config = format!("{:?}", applied(&security));
        assert!(!config.contains("hunter2"), "{config}");

        let args = KafkaSecurityArgs {
            kafka_property: vec![Secret::new("ssl.key.password=keypass-9")],
            ..sasl_ssl()
        };
        let debug = format!("{args:?}");
        assert!(
            !debug.contains("hunter2") && !debug.contains("keypass-9"),
            "{debug}"
        );

        // An error about a bad setting never quotes the password next to it.
        let error = refused(&KafkaSecurityArgs {
            kafka_sasl_mechanism: Some("GSSAPI".into()),
            ..sasl_ssl()
        });
        assert!(!format!("{error} {error:?}").contains("hunter2"));
    }

    #[test]
    fn the_args_parse_from_flags() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            kafka: KafkaSecurityArgs,
        }
        let cli = Cli::try_parse_from([
            "x",
            "--kafka-security-protocol",
            "sasl_ssl",
            "--kafka-sasl-mechanism",
            "PLAIN",
            "--kafka-sasl-username",
            "u",
            "--kafka-sasl-password-file",
            "/run/secrets/pw",
            "--kafka-property",
            "client.id=a",
            "--kafka-property",
            "linger.ms=1",
        ])
        .unwrap();
        assert_eq!(cli.kafka.kafka_security_protocol, "sasl_ssl");
        assert_eq!(cli.kafka.kafka_property.len(), 2);
        assert_eq!(
            cli.kafka.kafka_sasl_password_file.as_deref(),
            Some(std::path::Path::new("/run/secrets/pw"))
        );
    }
}
