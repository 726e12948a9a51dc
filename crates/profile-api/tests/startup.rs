//! The real `profile-api` binary started with a bad setting: it exits with code 1 and one stderr
//! line naming the variable, its value (password masked) and the fix, instead of running on or
//! dying with a bare OS error.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use statecast_testkit as testkit;

/// What the binary printed and how it ended.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs the binary with only `vars` in its environment (auth off, so only the setting under test
/// can be wrong) and waits at most 30 s for it to exit.
async fn run(vars: &[(&str, &str)]) -> Run {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_profile-api"));
    command
        .env_clear()
        .env("AUTH_DISABLED", "true")
        .env("LOG_FORMAT", "json")
        .env("DB_ACQUIRE_TIMEOUT_MS", "500")
        .envs(vars.iter().copied())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .expect("profile-api kept running despite a bad setting")
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
async fn an_unreachable_database_is_named_masked_with_a_fix_and_exit_code_1() {
    let run = run(&[("DATABASE_URL", UNREACHABLE_DB)]).await;
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains(
            "cannot connect to PostgreSQL at postgres://statecast:***@127.0.0.1:1/statecast \
             (DATABASE_URL)"
        ),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("start PostgreSQL, or fix the host and port"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("s3cret") && !run.stdout.contains("s3cret"));
    // The same error is in the JSON log on stdout.
    assert!(
        run.stdout
            .lines()
            .any(|l| l.contains("\"level\":\"ERROR\"") && l.contains("DATABASE_URL")),
        "{}",
        run.stdout
    );
}

#[tokio::test]
async fn a_missing_database_says_to_create_it() {
    let base = testkit::database_url();
    let (server, _) = base.rsplit_once('/').unwrap();
    let url = format!("{server}/no_such_database_here");
    let run = run(&[("DATABASE_URL", &url)]).await;
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains("no_such_database_here"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("create the database, or fix its name in DATABASE_URL"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn a_bad_redis_url_is_refused_before_the_database_is_tried() {
    let run = run(&[
        ("DATABASE_URL", UNREACHABLE_DB),
        ("REDIS_URL", "redis//:s3cret@cache:6379"),
    ])
    .await;
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("REDIS_URL=redis//:***@cache:6379 is not a valid Redis URL"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("expected redis://"), "{}", run.stderr);
    assert!(!run.stderr.contains("s3cret"));
}

#[tokio::test]
async fn a_taken_port_names_the_listen_address() {
    let database = testkit::fresh_database().await.unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let run = run(&[
        ("DATABASE_URL", &database),
        ("REDIS_URL", &testkit::redis_url()),
        ("KAFKA_BROKERS", &testkit::kafka_brokers()),
        ("LISTEN_ADDR", &addr),
    ])
    .await;
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(
        run.stderr
            .contains(&format!("cannot listen on {addr} (LISTEN_ADDR): ")),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("set LISTEN_ADDR to a free port"),
        "{}",
        run.stderr
    );
    drop(taken);
}

#[tokio::test]
async fn a_bad_otlp_protocol_is_logged_and_refused() {
    let run = run(&[
        ("DATABASE_URL", UNREACHABLE_DB),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
    ])
    .await;
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    let expected = "OTEL_EXPORTER_OTLP_PROTOCOL=\"http/json\" is not supported: set it to grpc";
    assert!(run.stderr.contains(expected), "{}", run.stderr);
    // Logging was set up anyway: the error is a JSON log line on stdout.
    let logged: Vec<serde_json::Value> = run
        .stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        logged.iter().any(|l| l["level"] == "ERROR"
            && l["error"].as_str().is_some_and(
                |e| e.contains("OTEL_EXPORTER_OTLP_PROTOCOL") && e.contains("http/protobuf")
            )),
        "{}",
        run.stdout
    );
}
