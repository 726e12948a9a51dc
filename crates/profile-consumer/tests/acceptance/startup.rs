//! The real `profile-consumer` binary started with a bad setting (issue 15): it exits with code 1
//! and one stderr line naming the variable, its value (password masked) and the fix, also
//! logged as an `ERROR` JSON line, instead of running on, dying with a bare "pool timed out" or
//! OS error, or printing a password.

use std::time::Duration;

use crate::support;

/// What the binary printed and how it ended.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Asserts exit code 1, that stderr holds every one of `expected`, that the same error is
    /// an `ERROR` log line on stdout, and that no `s3cret` was printed anywhere.
    fn assert_refused(&self, expected: &[&str]) {
        assert_eq!(self.code, Some(1), "{}", self.stderr);
        for part in expected {
            assert!(
                self.stderr.contains(part),
                "stderr lacks {part:?}: {}",
                self.stderr
            );
        }
        let logged = self
            .stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|l| {
                l["level"] == "ERROR"
                    && l["error"].as_str().is_some_and(|e| e.contains(expected[0]))
            });
        assert!(
            logged,
            "no ERROR log line with {:?}: {}",
            expected[0], self.stdout
        );
        assert!(
            !self.stderr.contains("s3cret") && !self.stdout.contains("s3cret"),
            "a password was printed: {}\n{}",
            self.stderr,
            self.stdout
        );
    }
}

/// Runs the binary with only `vars` on top of a free `METRICS_ADDR`, JSON logs and no trace
/// export, and waits at most 60 s for it to exit.
async fn run(vars: &[(&str, &str)]) -> Run {
    let metrics = support::free_addr().to_string();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_profile-consumer"));
    command
        .env_clear()
        .env("KAFKA_BROKERS", statecast_testkit::kafka_brokers())
        .env("KAFKA_GROUP_ID", statecast_testkit::unique("startup"))
        .env("METRICS_ADDR", &metrics)
        .env("LOG_FORMAT", "json")
        .envs(vars.iter().copied())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("profile-consumer kept running despite a bad setting")
        .unwrap();
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A PostgreSQL URL nobody listens on, with a password that must never be printed.
const UNREACHABLE_DB: &str = "postgres://statecast:s3cret@127.0.0.1:1/statecast";

#[tokio::test]
async fn an_unreachable_database_is_named_masked_with_the_cause_and_a_fix() {
    let run = run(&[
        ("CONSUMER_HANDLER", "audit"),
        ("DATABASE_URL", UNREACHABLE_DB),
    ])
    .await;
    run.assert_refused(&[
        "cannot connect to PostgreSQL at postgres://statecast:***@127.0.0.1:1/statecast \
         (DATABASE_URL): ",
        "start PostgreSQL, or fix the host and port in DATABASE_URL",
    ]);
    assert!(!run.stderr.contains("pool timed out"), "{}", run.stderr);
}

#[tokio::test]
async fn a_missing_database_says_to_create_it() {
    let base = statecast_testkit::database_url();
    let (server, _) = base.rsplit_once('/').unwrap();
    let url = format!("{server}/no_such_database_here");
    let run = run(&[("CONSUMER_HANDLER", "analytics"), ("DATABASE_URL", &url)]).await;
    run.assert_refused(&[
        "(DATABASE_URL): ",
        "no_such_database_here",
        "create the database, or fix its name in DATABASE_URL",
    ]);
}

#[tokio::test]
async fn an_unset_database_url_says_what_to_set_it_to() {
    let run = run(&[("CONSUMER_HANDLER", "audit")]).await;
    run.assert_refused(&[
        "DATABASE_URL is required by CONSUMER_HANDLER=audit",
        "set it to postgres://user:password@host:5432/database",
    ]);
}

#[tokio::test]
async fn a_bad_redis_url_is_named_masked_with_the_expected_shape() {
    let run = run(&[
        ("CONSUMER_HANDLER", "cache-refresh"),
        ("REDIS_URL", "redis//:s3cret@cache:6379"),
    ])
    .await;
    run.assert_refused(&[
        "REDIS_URL=redis//:***@cache:6379 is not a valid Redis URL",
        "expected redis://",
    ]);
}

#[tokio::test]
async fn an_unreachable_redis_is_named_with_what_to_check() {
    let run = run(&[
        ("CONSUMER_HANDLER", "cache-refresh"),
        ("REDIS_URL", "redis://:s3cret@127.0.0.1:1"),
    ])
    .await;
    run.assert_refused(&[
        "cannot connect to Redis at REDIS_URL (127.0.0.1:1): ",
        "check that Redis is up and reachable at the host and port in REDIS_URL",
    ]);
}

#[tokio::test]
async fn a_taken_metrics_port_names_the_address_and_the_variable() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let run = run(&[
        ("CONSUMER_HANDLER", "audit"),
        ("DATABASE_URL", UNREACHABLE_DB),
        ("METRICS_ADDR", &addr),
    ])
    .await;
    run.assert_refused(&[
        &format!("cannot listen on {addr} (METRICS_ADDR): "),
        "another process holds this port: stop it, or set METRICS_ADDR to a free port",
    ]);
    drop(taken);
}

#[tokio::test]
async fn a_bad_smtp_url_is_named_masked_with_the_accepted_forms() {
    for (url, masked, reason) in [
        (
            "smtp://bob:s3cret@relay:notaport",
            "SMTP_URL=smtp://bob:***@relay:notaport is not a usable SMTP URL",
            "\"notaport\" is not a port number",
        ),
        (
            "http://bob:s3cret@relay",
            "SMTP_URL=http://bob:***@relay is not a usable SMTP URL",
            "it must start with smtp:// or smtps://",
        ),
    ] {
        let run = run(&[
            ("CONSUMER_HANDLER", "email"),
            ("DATABASE_URL", UNREACHABLE_DB),
            ("SMTP_URL", url),
        ])
        .await;
        run.assert_refused(&[
            masked,
            reason,
            "expected smtp://[user:password@]host[:port]",
        ]);
    }
}

#[tokio::test]
async fn a_bad_otlp_protocol_is_logged_and_refused() {
    let run = run(&[
        ("CONSUMER_HANDLER", "audit"),
        ("DATABASE_URL", UNREACHABLE_DB),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon"),
    ])
    .await;
    run.assert_refused(&[
        "OTEL_EXPORTER_OTLP_PROTOCOL=\"carrier-pigeon\" is not supported",
        "set it to grpc (the default) or http/protobuf",
    ]);
}

#[tokio::test]
async fn bad_kafka_security_settings_are_named_without_the_password() {
    let run = run(&[
        ("CONSUMER_HANDLER", "audit"),
        ("DATABASE_URL", UNREACHABLE_DB),
        ("KAFKA_SECURITY_PROTOCOL", "tls"),
    ])
    .await;
    run.assert_refused(&[
        "KAFKA_SECURITY_PROTOCOL: unknown protocol \"tls\"",
        "expected one of plaintext, ssl, sasl_plaintext, sasl_ssl",
    ]);
    let run = self::run(&[
        ("CONSUMER_HANDLER", "audit"),
        ("DATABASE_URL", UNREACHABLE_DB),
        ("KAFKA_SASL_PASSWORD", "s3cret"),
    ])
    .await;
    run.assert_refused(&[
        "KAFKA_SASL_PASSWORD: is set but KAFKA_SECURITY_PROTOCOL=plaintext does not use SASL",
        "use sasl_ssl, or sasl_plaintext",
    ]);
}

#[tokio::test]
async fn a_kafka_property_librdkafka_refuses_names_its_variable() {
    let topic = support::topic("startup", 1).await;
    let run = run(&[
        ("CONSUMER_HANDLER", "cache-refresh"),
        ("REDIS_URL", &statecast_testkit::redis_url()),
        ("KAFKA_TOPICS", &topic),
        ("KAFKA_PROPERTY_FETCH_WAIT_MAX_MS", "soon"),
    ])
    .await;
    run.assert_refused(&[
        "cannot create the Kafka consumer: ",
        "fetch.wait.max.ms",
        "soon",
        "fix KAFKA_PROPERTY_FETCH_WAIT_MAX_MS",
    ]);
}

#[tokio::test]
async fn empty_kafka_names_are_refused_naming_the_variable() {
    let run = run(&[
        ("CONSUMER_HANDLER", "audit"),
        ("DATABASE_URL", UNREACHABLE_DB),
        ("KAFKA_TOPICS", " , "),
    ])
    .await;
    run.assert_refused(&[
        "KAFKA_TOPICS=\" , \" names no topic",
        "set it to a comma-separated list such as user-events",
    ]);
}

#[tokio::test]
async fn a_bad_otlp_endpoint_names_the_variable() {
    let run = run(&[
        ("CONSUMER_HANDLER", "audit"),
        ("DATABASE_URL", UNREACHABLE_DB),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "not a url"),
    ])
    .await;
    run.assert_refused(&[
        "cannot build the OTLP exporter: ",
        "set OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) to a URL",
    ]);
}
