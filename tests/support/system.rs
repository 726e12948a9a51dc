//! The whole local system as real processes: one `profile-api` and one `profile-consumer` per
//! handler, each in its own consumer group, wired to a fresh database, the stack's Redis and SMTP
//! sink, and a broker of the test's own (so it can be paused or killed without touching others).

use std::path::PathBuf;
use std::time::Duration;

use statecast_testkit as kit;

use crate::{Service, binary, free_port, wait_http_ok};

/// The topic every system uses; on a private broker the real name costs nothing.
pub const TOPIC: &str = "user-events";

/// What to start.
#[derive(Debug, Clone)]
pub struct SystemOptions {
    /// Consumer handlers to run, one process (and group) each.
    pub handlers: Vec<&'static str>,
    /// OTLP endpoint for every process, if traces are collected.
    pub otlp_endpoint: Option<String>,
    /// Partitions of the events topic.
    pub partitions: i32,
    /// `host:port` the API should use for PostgreSQL instead of the stack's (a fault proxy; the
    /// API is told `sslmode=disable`, as a proxy that reads the protocol needs).
    pub api_database_addr: Option<String>,
    /// `host:port` the API should use for Redis instead of the stack's (a fault proxy).
    pub api_redis_addr: Option<String>,
    /// More settings for every API replica (added last, so they win).
    pub api_env: Vec<(&'static str, String)>,
    /// `host:port` the consumers should use for PostgreSQL instead of the stack's.
    pub consumer_database_addr: Option<String>,
    /// `host:port` the consumers should use for Redis instead of the stack's.
    pub consumer_redis_addr: Option<String>,
    /// `host:port` the consumers should use for SMTP instead of the stack's sink.
    pub consumer_smtp_addr: Option<String>,
    /// More settings for every consumer (added last, so they win).
    pub consumer_env: Vec<(&'static str, String)>,
}

impl Default for SystemOptions {
    fn default() -> Self {
        Self {
            handlers: vec!["audit", "analytics", "email", "cache-refresh"],
            otlp_endpoint: None,
            partitions: 3,
            api_database_addr: None,
            api_redis_addr: None,
            api_env: Vec::new(),
            consumer_database_addr: None,
            consumer_redis_addr: None,
            consumer_smtp_addr: None,
            consumer_env: Vec::new(),
        }
    }
}

/// A consumer process with its handler, group and metrics URL.
pub struct Consumer {
    /// `audit`, `analytics`, `email` or `cache-refresh`.
    pub handler: &'static str,
    /// Its consumer group.
    pub group: String,
    /// `http://127.0.0.1:PORT` of its `/metrics`, `/readyz`.
    pub url: String,
    /// The process.
    pub service: Service,
}

/// An API replica started beside the system's own ([`System::start_api_replica`]).
pub struct Replica {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The process.
    pub service: Service,
}

/// A running system.
pub struct System {
    /// The API process.
    pub api: Service,
    /// `http://127.0.0.1:PORT`.
    pub api_url: String,
    /// Settings every API replica gets (all but its `LISTEN_ADDR`).
    api_env: Vec<(&'static str, String)>,
    /// One per handler.
    pub consumers: Vec<Consumer>,
    /// The system's own database.
    pub database_url: String,
    /// The system's own broker.
    pub broker: kit::PrivateBroker,
    /// Where process logs go.
    pub logs: PathBuf,
    options: SystemOptions,
    group_prefix: String,
}

impl System {
    /// Starts the broker, the API and the consumers, and waits until all are ready.
    pub async fn start(options: SystemOptions) -> anyhow::Result<Self> {
        let broker = kit::PrivateBroker::start().await?;
        create_topics(&broker, options.partitions).await?;
        let database_url = kit::fresh_database().await?;
        let logs = std::env::temp_dir().join(kit::unique("statecast-system"));
        std::fs::create_dir_all(&logs)?;
        let port = free_port()?;
        let api_url = format!("http://127.0.0.1:{port}");
        let api_database_url = match &options.api_database_addr {
            Some(addr) => with_param(&replace_host_port(&database_url, addr), "sslmode=disable"),
            None => database_url.clone(),
        };
        let api_redis_url = match &options.api_redis_addr {
            Some(addr) => format!("redis://{addr}"),
            None => kit::redis_url(),
        };
        let mut api_env = vec![
            ("DATABASE_URL", api_database_url),
            ("REDIS_URL", api_redis_url),
            ("KAFKA_BROKERS", broker.brokers()),
            ("EVENTS_TOPIC", TOPIC.to_owned()),
            ("AUTH_DISABLED", "true".to_owned()),
            // The suite drives thousands of requests from one address on purpose.
            ("RATE_LIMIT_PER_SECOND", "0".to_owned()),
            ("OTEL_SERVICE_NAME", "profile-api".to_owned()),
            ("RUST_LOG", "info".to_owned()),
        ];
        push_otlp(&mut api_env, &options.otlp_endpoint);
        api_env.extend(options.api_env.iter().cloned());
        let api = start_api(&api_env, port, logs.join("profile-api.log")).await?;
        let mut system = Self {
            api,
            api_url,
            api_env,
            consumers: Vec::new(),
            database_url,
            broker,
            logs,
            group_prefix: kit::unique("sys"),
            options,
        };
        for handler in system.options.handlers.clone() {
            system.start_consumer(handler).await?;
        }
        Ok(system)
    }

    /// Starts another API replica on the same database, Redis and broker (with its own relay,
    /// which stands by while another replica leads) and waits until it is ready.
    pub async fn start_api_replica(&self) -> anyhow::Result<Replica> {
        self.start_api_replica_with(&[]).await
    }

    /// [`System::start_api_replica`] with some settings of its own (e.g. its `DATABASE_URL`).
    pub async fn start_api_replica_with(
        &self,
        overrides: &[(&'static str, String)],
    ) -> anyhow::Result<Replica> {
        let port = free_port()?;
        let log = self
            .logs
            .join(format!("profile-api-{}.log", kit::unique("replica")));
        let mut env: Vec<(&'static str, String)> = self
            .api_env
            .iter()
            .filter(|(name, _)| overrides.iter().all(|(o, _)| o != name))
            .cloned()
            .collect();
        env.extend(overrides.iter().cloned());
        Ok(Replica {
            url: format!("http://127.0.0.1:{port}"),
            service: start_api(&env, port, log).await?,
        })
    }

    /// The system database's URL through a proxy listening on `addr` (`host:port`), with
    /// `sslmode=disable`.
    pub fn database_url_via(&self, addr: &str) -> String {
        with_param(
            &replace_host_port(&self.database_url, addr),
            "sslmode=disable",
        )
    }

    /// Kills the system's API process with SIGKILL (no shutdown code runs).
    pub async fn kill_api(&mut self) {
        self.api.crash().await;
    }

    /// Starts the system's API again on the same port (killing it first if it still runs), as a
    /// supervisor restarts a crashed process, and waits until it is ready.
    pub async fn restart_api(&mut self) -> anyhow::Result<()> {
        self.api.crash().await;
        let port = self
            .api_url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_default();
        let log = self
            .logs
            .join(format!("profile-api-{}.log", kit::unique("restart")));
        self.api = start_api(&self.api_env, port, log).await?;
        Ok(())
    }

    /// Where this system's effects land, to count them (`effects::Witness::settle`).
    pub async fn witness(&self) -> anyhow::Result<crate::effects::Witness> {
        Ok(crate::effects::Witness {
            pool: self.pool().await?,
            handlers: self.options.handlers.clone(),
            brokers: self.broker.brokers(),
            dead_letter_topic: format!("{TOPIC}.dlq"),
            maildir: kit::maildir(),
            redis_url: kit::redis_url(),
        })
    }

    /// Starts (or restarts) the consumer for `handler` in its group and waits until ready.
    pub async fn start_consumer(&mut self, handler: &'static str) -> anyhow::Result<()> {
        let port = free_port()?;
        let group = format!("{}-{handler}", self.group_prefix);
        let database_url = match &self.options.consumer_database_addr {
            Some(addr) => replace_host_port(&self.database_url, addr),
            None => self.database_url.clone(),
        };
        let redis_url = match &self.options.consumer_redis_addr {
            Some(addr) => format!("redis://{addr}"),
            None => kit::redis_url(),
        };
        let smtp_url = match &self.options.consumer_smtp_addr {
            Some(addr) => format!("smtp://{addr}"),
            None => kit::smtp_url(),
        };
        let mut env = vec![
            ("KAFKA_BROKERS", self.broker.brokers()),
            ("KAFKA_GROUP_ID", group.clone()),
            ("KAFKA_TOPICS", TOPIC.to_owned()),
            ("CONSUMER_HANDLER", handler.to_owned()),
            ("DATABASE_URL", database_url),
            ("REDIS_URL", redis_url),
            ("SMTP_URL", smtp_url),
            ("METRICS_ADDR", format!("127.0.0.1:{port}")),
            ("OTEL_SERVICE_NAME", format!("profile-consumer-{handler}")),
            ("RUST_LOG", "info".to_owned()),
        ];
        push_otlp(&mut env, &self.options.otlp_endpoint);
        env.extend(self.options.consumer_env.iter().cloned());
        let log = self
            .logs
            .join(format!("consumer-{handler}-{}.log", kit::unique("run")));
        let service = Service::start(&binary("profile-consumer")?, &env, log)?;
        let url = format!("http://127.0.0.1:{port}");
        wait_http_ok(&format!("{url}/readyz"), Duration::from_secs(60)).await?;
        self.consumers.retain(|c| c.handler != handler);
        self.consumers.push(Consumer {
            handler,
            group,
            url,
            service,
        });
        Ok(())
    }

    /// The running consumer for `handler`.
    pub fn consumer(&self, handler: &str) -> Option<&Consumer> {
        self.consumers.iter().find(|c| c.handler == handler)
    }

    /// Stops every consumer with SIGTERM.
    pub async fn stop_consumers(&mut self) -> anyhow::Result<()> {
        for consumer in self.consumers.drain(..) {
            consumer.service.stop(Duration::from_secs(30)).await?;
        }
        Ok(())
    }

    /// Re-creates the topics, e.g. after the (memory-backed) broker was restarted.
    pub async fn create_topics(&self) -> anyhow::Result<()> {
        create_topics(&self.broker, self.options.partitions).await
    }

    /// A connection pool to the system's database.
    pub async fn pool(&self) -> anyhow::Result<sqlx::PgPool> {
        Ok(sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(&self.database_url)
            .await?)
    }
}

/// Starts `profile-api` with `env` on `127.0.0.1:port` and waits until it is ready.
async fn start_api(
    env: &[(&'static str, String)],
    port: u16,
    log: PathBuf,
) -> anyhow::Result<Service> {
    let mut env = env.to_vec();
    env.push(("LISTEN_ADDR", format!("127.0.0.1:{port}")));
    let api = Service::start(&binary("profile-api")?, &env, log)?;
    wait_http_ok(
        &format!("http://127.0.0.1:{port}/readyz"),
        Duration::from_secs(30),
    )
    .await?;
    Ok(api)
}

async fn create_topics(broker: &kit::PrivateBroker, partitions: i32) -> anyhow::Result<()> {
    kit::create_topic(&broker.brokers(), TOPIC, partitions).await?;
    kit::create_topic(&broker.brokers(), &format!("{TOPIC}.dlq"), 1).await
}

fn push_otlp(env: &mut Vec<(&'static str, String)>, endpoint: &Option<String>) {
    if let Some(endpoint) = endpoint {
        env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.clone()));
        env.push(("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_owned()));
        env.push(("OTEL_BSP_SCHEDULE_DELAY", "200".to_owned()));
    }
}

/// `postgres://u:p@HOST:PORT/db` with another `host:port`.
fn replace_host_port(url: &str, addr: &str) -> String {
    let Some((scheme_auth, rest)) = url.split_once('@') else {
        return url.to_owned();
    };
    let path = rest.find('/').map(|i| &rest[i..]).unwrap_or("");
    format!("{scheme_auth}@{addr}{path}")
}

/// `url` with the query parameter `param` (`name=value`) added.
fn with_param(url: &str, param: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{param}")
}

/// Value of a Prometheus sample (`name{labels} value`) whose name and labels contain every
/// string in `matches`; 0 when absent.
pub fn metric(text: &str, name: &str, matches: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.split(['{', ' ']).next() == Some(name) && matches.iter().all(|m| l.contains(m))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// GET `url` and return the body (for `/metrics`).
pub async fn get_text(url: &str) -> anyhow::Result<String> {
    Ok(reqwest::get(url).await?.text().await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_url_host_is_replaced() {
        assert_eq!(
            replace_host_port("postgres://u:p@127.0.0.1:5432/db", "127.0.0.1:4000"),
            "postgres://u:p@127.0.0.1:4000/db"
        );
    }

    #[test]
    fn a_parameter_is_added_to_a_url_with_or_without_a_query() {
        assert_eq!(with_param("postgres://h/db", "a=1"), "postgres://h/db?a=1");
        assert_eq!(
            with_param("postgres://h/db?b=2", "a=1"),
            "postgres://h/db?b=2&a=1"
        );
    }

    #[test]
    fn metric_sums_matching_samples() {
        let text = "# HELP x\nconsumer_records_total{result=\"stale\"} 2\nconsumer_records_total{result=\"processed\"} 5\n";
        assert_eq!(metric(text, "consumer_records_total", &["stale"]), 2.0);
        assert_eq!(metric(text, "consumer_records_total", &[]), 7.0);
        assert_eq!(metric(text, "missing", &[]), 0.0);
    }
}
