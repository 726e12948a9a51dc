//! Baselines configured like what they are compared with (issue 16): the bare consumer applies
//! the consumer's own fetch and commit settings ([`profile_consumer::consumer::FETCH_AND_COMMIT`]),
//! and the bare producer is built by the relay's own [`profile_api::relay::producer_config`]. No
//! setting is copied here, so a baseline cannot drift from the workload it measures; the tests
//! at the bottom compare the two client configurations key by key.
//!
//! The workloads' configurations are rebuilt the way their binaries build them: the environment
//! the bench gives a child process becomes command-line flags (`KAFKA_BROKERS` →
//! `--kafka-brokers`), parsed by the binary's own `Config` (which reads the rest of the
//! environment, as the child does: it inherits the bench's).

use std::collections::BTreeSet;

use anyhow::Context as _;
use clap::Parser as _;
use rdkafka::ClientConfig;

/// The email handler's baseline: a mail for each of `events`, composed by the handler's own
/// [`profile_consumer::handlers::email::compose`] to the event's address, sent through its own
/// SMTP client ([`profile_consumer::handlers::smtp::Mailer`], the same pool bound) to the same
/// server, as many at once as that bound allows, with no consumer and no database. What it
/// reaches is what the SMTP server accepts from one replica's client. Returns mails/s.
pub(crate) async fn bare_mailer(
    smtp_url: &str,
    events: &[statecast_events::ProfileEvent],
) -> anyhow::Result<f64> {
    use futures::StreamExt as _;
    use profile_consumer::handlers::{email, smtp};

    let settings = email::SmtpSettings::parse(smtp_url)
        .map_err(|e| anyhow::anyhow!("SMTP_URL {smtp_url}: {e}"))?;
    let mailer = smtp::Mailer::new(settings, None).map_err(|e| anyhow::anyhow!("{e}"))?;
    let from: lettre::message::Mailbox = profile_consumer::config::DEFAULT_MAIL_FROM
        .parse()
        .context("MAIL_FROM")?;
    let mails = events
        .iter()
        .map(|event| {
            let to = event.data.email.as_deref().unwrap_or_default();
            email::compose(&from, to, event).map_err(|e| anyhow::anyhow!("{e}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let started = std::time::Instant::now();
    let failed = futures::stream::iter(mails.iter())
        .map(|mail| mailer.send(mail))
        .buffer_unordered(smtp::MAX_CONNECTIONS)
        .filter(|sent| std::future::ready(sent.is_err()))
        .count()
        .await;
    let secs = started.elapsed().as_secs_f64();
    if failed > 0 {
        anyhow::bail!(
            "{failed} of {} baseline mails were not accepted",
            mails.len()
        );
    }
    Ok(mails.len() as f64 / secs.max(1e-9))
}

/// `(VARIABLE, value)` pairs as the flags of the same names, after the program name; a variable
/// given twice keeps its last value (as a child process's environment does).
pub(crate) fn flags(program: &str, env: &[(&str, String)]) -> Vec<String> {
    let mut out = vec![program.to_owned()];
    for (i, (key, value)) in env.iter().enumerate() {
        if env[i + 1..].iter().any(|(later, _)| later == key) {
            continue;
        }
        out.push(format!("--{}", key.to_ascii_lowercase().replace('_', "-")));
        out.push(value.clone());
    }
    out
}

/// The client configuration a `profile-consumer` started with `env` uses.
pub(crate) fn consumer_config(env: &[(&str, String)]) -> anyhow::Result<ClientConfig> {
    let config = profile_consumer::Config::try_parse_from(flags("profile-consumer", env))
        .context("the consumer's settings")?;
    let security = config.kafka_security()?;
    Ok(profile_consumer::consumer::client_config(
        &config, &security,
    ))
}

/// The bare consumer of the baselines: no handler, a group of its own, and exactly the
/// consumer's fetch and commit settings (it stores each record's offset by hand, as the consumer
/// does after an effect).
pub(crate) fn bare_consumer_config(brokers: &str, group: &str) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", brokers)
        .set("group.id", group);
    for (key, value) in profile_consumer::consumer::FETCH_AND_COMMIT {
        client.set(key, value);
    }
    client
}

/// The relay's producer configuration in a `profile-api` started with `env`: also the bare
/// producer's, whole (idempotence, acks, in-flight requests, linger, batching, compression,
/// timeouts).
pub(crate) fn relay_producer_config(env: &[(&str, String)]) -> anyhow::Result<ClientConfig> {
    let config = api_config(env)?;
    let security = statecast_kafka::KafkaSecurity::from_args(&config.kafka)?;
    Ok(profile_api::relay::producer_config(&config, &security))
}

/// The settings a `profile-api` started with `env` runs with.
pub(crate) fn api_config(env: &[(&str, String)]) -> anyhow::Result<profile_api::Config> {
    profile_api::Config::try_parse_from(flags("profile-api", env)).context("the API's settings")
}

/// Whether a librdkafka property decides how a consumer fetches or commits.
pub(crate) fn is_fetch_or_commit(key: &str) -> bool {
    const PREFIXES: [&str; 6] = [
        "fetch.",
        "queued.",
        "enable.auto.",
        "auto.",
        "max.partition.fetch.",
        "max.poll.",
    ];
    const KEYS: [&str; 4] = [
        "isolation.level",
        "enable.partition.eof",
        "check.crcs",
        "receive.message.max.bytes",
    ];
    PREFIXES.iter().any(|p| key.starts_with(p)) || KEYS.contains(&key)
}

/// Whether a librdkafka property decides how a producer sends (everything but where to and
/// as whom).
pub(crate) fn is_producer_behaviour(key: &str) -> bool {
    !matches!(
        key,
        "bootstrap.servers" | "metadata.broker.list" | "client.id"
    )
}

/// The keys selected by `relevant` on which `a` and `b` differ (set in one and not the other,
/// or set to different values), as `key: a-value ≠ b-value`.
pub(crate) fn differences(
    a: &ClientConfig,
    b: &ClientConfig,
    relevant: fn(&str) -> bool,
) -> Vec<String> {
    let keys: BTreeSet<&str> = a
        .config_map()
        .into_keys()
        .chain(b.config_map().into_keys())
        .filter(|k| relevant(k))
        .collect();
    keys.into_iter()
        .filter(|k| a.get(k) != b.get(k))
        .map(|k| {
            format!(
                "{k}: {} ≠ {}",
                a.get(k).unwrap_or("(default)"),
                b.get(k).unwrap_or("(default)")
            )
        })
        .collect()
}

/// `key=value` of the keys `relevant` selects, sorted, for the report.
pub(crate) fn describe(config: &ClientConfig, relevant: fn(&str) -> bool) -> String {
    config
        .config_map()
        .into_iter()
        .filter(|(k, _)| relevant(k))
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn consumer_env(handler: &str) -> Vec<(&'static str, String)> {
        vec![
            ("KAFKA_BROKERS", "127.0.0.1:9092".to_owned()),
            ("KAFKA_GROUP_ID", "bench-audit-x".to_owned()),
            ("KAFKA_TOPICS", "bench-events-x".to_owned()),
            ("CONSUMER_HANDLER", handler.to_owned()),
            ("METRICS_ADDR", "127.0.0.1:0".to_owned()),
        ]
    }

    fn api_env() -> Vec<(&'static str, String)> {
        vec![
            (
                "DATABASE_URL",
                "postgres://u:p@127.0.0.1:5432/bench".to_owned(),
            ),
            ("KAFKA_BROKERS", "127.0.0.1:9092".to_owned()),
            ("EVENTS_TOPIC", "bench-drain-x".to_owned()),
            ("LISTEN_ADDR", "127.0.0.1:0".to_owned()),
            ("AUTH_DISABLED", "true".to_owned()),
            ("RATE_LIMIT_PER_SECOND", "0".to_owned()),
        ]
    }

    #[test]
    fn bare_consumer_fetches_and_commits_like_every_consumer_handler() {
        let bare = bare_consumer_config("127.0.0.1:9092", "bench-bare-x");
        for handler in ["audit", "analytics", "email", "cache-refresh"] {
            let ours = consumer_config(&consumer_env(handler)).unwrap();
            assert_eq!(
                differences(&bare, &ours, is_fetch_or_commit),
                Vec::<String>::new(),
                "bare consumer vs the {handler} consumer"
            );
            // The comparison covers the setting issue 16 found unequal.
            assert!(ours.get("fetch.wait.max.ms").is_some(), "{handler}");
        }
    }

    #[test]
    fn bare_producer_sends_like_the_relay() {
        let env = api_env();
        let relay = {
            let config = profile_api::Config::try_parse_from(flags("profile-api", &env)).unwrap();
            let security = statecast_kafka::KafkaSecurity::from_args(&config.kafka).unwrap();
            profile_api::relay::producer_config(&config, &security)
        };
        let bare = relay_producer_config(&env).unwrap();
        assert_eq!(
            differences(&bare, &relay, is_producer_behaviour),
            Vec::<String>::new()
        );
        assert_eq!(
            relay.get("enable.idempotence"),
            bare.get("enable.idempotence")
        );
        assert!(bare.get("acks").is_some());
    }

    #[test]
    fn a_baseline_with_the_default_fetch_wait_is_reported_as_different() {
        let ours = consumer_config(&consumer_env("audit")).unwrap();
        let mut bare = bare_consumer_config("127.0.0.1:9092", "bench-bare-x");
        bare.set("fetch.wait.max.ms", "500");
        let found = differences(&bare, &ours, is_fetch_or_commit);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("fetch.wait.max.ms: 500 ≠ "),
            "{found:?}"
        );
        bare.remove("fetch.wait.max.ms");
        bare.remove("enable.auto.offset.store");
        let found = differences(&bare, &ours, is_fetch_or_commit);
        assert!(
            found.iter().any(|d| d.contains("(default)")),
            "a key left at its default is a difference too: {found:?}"
        );
        // Keys that are not about fetching or committing are not compared.
        bare.set("client.id", "other");
        assert!(
            !differences(&bare, &ours, is_fetch_or_commit)
                .iter()
                .any(|d| d.starts_with("client.id"))
        );
    }

    #[test]
    fn environment_becomes_flags_and_the_last_value_wins() {
        let env = vec![
            ("KAFKA_BROKERS", "a:1".to_owned()),
            ("EVENTS_TOPIC", "t".to_owned()),
            ("KAFKA_BROKERS", "b:2".to_owned()),
        ];
        assert_eq!(
            flags("x", &env),
            ["x", "--events-topic", "t", "--kafka-brokers", "b:2"]
        );
    }
}
