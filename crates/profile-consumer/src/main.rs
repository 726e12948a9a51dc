//! `profile-consumer`: parse the configuration, set up telemetry, run until SIGTERM/SIGINT.

use clap::Parser;
use profile_consumer::Config;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::parse();
    let telemetry = match statecast_telemetry::TelemetryConfig::from_env("profile-consumer")
        .and_then(|c| statecast_telemetry::init(&c))
    {
        Ok(telemetry) => Some(telemetry),
        Err(e) => {
            eprintln!("profile-consumer: telemetry disabled: {e}");
            None
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
        _ = term.recv() => tracing::info!("SIGTERM: finishing the in-flight record and leaving the group"),
        _ = int.recv() => tracing::info!("SIGINT: finishing the in-flight record and leaving the group"),
    }
    shutdown.cancel();
}
