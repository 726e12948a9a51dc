//! `profile-api`: parse the configuration, set up telemetry, run the HTTP server and the outbox
//! relay until SIGTERM/SIGINT, then drain both and flush telemetry.
//!
//! A start-up error (bad telemetry settings, PostgreSQL unusable, a bad `REDIS_URL`, a taken
//! `LISTEN_ADDR`...) is logged, printed to stderr as one line naming the setting and the fix, and
//! ends the process with exit code 1. Invalid flag values are clap's: usage on stderr, exit code 2.

use std::process::ExitCode;

use clap::Parser as _;
use profile_api::Config;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    let telemetry = match statecast_telemetry::init_from_env("profile-api") {
        Ok(telemetry) => telemetry,
        Err(error) => {
            // Already logged (logging is set up even then); stderr is for whoever started us.
            eprintln!("profile-api: cannot start: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = run(config).await;
    if let Err(error) = &result {
        tracing::error!(%error, "profile-api stopped");
        eprintln!("profile-api: {error}");
    }
    telemetry.shutdown().await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

async fn run(config: Config) -> profile_api::Result<()> {
    let listen_addr = config.listen_addr;
    let app = profile_api::build(config).await?;
    let listener = profile_api::listen(listen_addr).await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let relay = app.spawn_relay(shutdown.clone());
    let local_addr = listener.local_addr().unwrap_or(listen_addr);
    tracing::info!(listen_addr = %local_addr, "profile-api listening");
    let served = app.serve(listener, shutdown.clone()).await;
    shutdown.cancel();
    let _ = relay.await;
    served
}

async fn cancel_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(error) => {
                    tracing::error!(%error, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    shutdown.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
    shutdown.cancel();
}
