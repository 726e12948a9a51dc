//! `profile-consumer`: parse the configuration, set up telemetry, run until SIGTERM/SIGINT.
//! `profile-consumer dlq replay ...` republishes a group's dead letters instead (see
//! `profile_consumer::replay`).
//!
//! Exit codes, as the API's: `0` after a clean shutdown; `1` when it cannot start (bad telemetry
//! settings, PostgreSQL, Redis or SMTP settings that cannot work, a taken `METRICS_ADDR`, Kafka
//! settings librdkafka refuses...: one stderr line and one `ERROR` log line naming the variable,
//! its value with passwords masked, and the fix) or a fatal error later; `2` for an invalid flag
//! or variable value (the argument parser's message).

use clap::Parser;
use profile_consumer::Config;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "dlq") {
        return dlq_command(&args).await;
    }
    let config = Config::parse();
    // Logging is set up even when the export settings are bad; a bad explicit setting then
    // stops the consumer with the message (it names the variable), as the API does.
    let telemetry = match statecast_telemetry::init_from_env("profile-consumer") {
        Ok(telemetry) => Some(telemetry),
        Err(e) => {
            // Already logged (logging is set up even then); stderr is for whoever started us.
            eprintln!("profile-consumer: cannot start: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };

    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));

    let result = profile_consumer::run(config, shutdown).await;
    if let Some(telemetry) = telemetry {
        telemetry.shutdown().await;
    }
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "profile-consumer failed");
            eprintln!("profile-consumer: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Cancels `shutdown` on the first SIGTERM or SIGINT.
async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: finishing the in-flight batch and leaving the group"),
        _ = int.recv() => tracing::info!("SIGINT: finishing the in-flight batch and leaving the group"),
    }
    shutdown.cancel();
}

/// `profile-consumer dlq replay [FLAGS]`.
async fn dlq_command(args: &[std::ffi::OsString]) -> std::process::ExitCode {
    if args.get(2).is_none_or(|a| a != "replay") {
        eprintln!(
            "usage: profile-consumer dlq replay --kafka-group-id GROUP [--dlq-topic TOPIC] [--dry-run]"
        );
        return std::process::ExitCode::from(2);
    }
    let replay_args = profile_consumer::replay::ReplayArgs::parse_from(
        std::iter::once(std::ffi::OsString::from("profile-consumer dlq replay"))
            .chain(args.iter().skip(3).cloned()),
    );
    let telemetry = statecast_telemetry::init_from_env("profile-consumer").ok();
    let result = profile_consumer::replay::replay(&replay_args).await;
    if let Some(telemetry) = telemetry {
        telemetry.shutdown().await;
    }
    match result {
        Ok(summary) => {
            println!(
                "{} {} dead letters of group {} from {} ({} of other groups left alone)",
                if replay_args.dry_run {
                    "would replay"
                } else {
                    "replayed"
                },
                summary.replayed,
                replay_args.kafka_group_id,
                replay_args.dlq_topic,
                summary.other_groups
            );
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("profile-consumer dlq replay: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
