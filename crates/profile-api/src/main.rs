//! `profile-api`: parse the configuration, set up telemetry, run the HTTP server and the outbox
//! relay until SIGTERM/SIGINT, then drain both and flush telemetry.

use clap::Parser as _;
use profile_api::Config;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let telemetry = statecast_telemetry::init(&statecast_telemetry::TelemetryConfig::from_env(
        "profile-api",
    )?)?;
    let listen_addr = config.listen_addr;
    let app = profile_api::build(config).await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let relay = app.spawn_relay(shutdown.clone());
    let listener = tokio::net::TcpListener::bind(listen_addr).await?;
    tracing::info!(%listen_addr, "profile-api listening");
    let served = app.serve(listener, shutdown.clone()).await;
    shutdown.cancel();
    let _ = relay.await;
    telemetry.shutdown().await;
    served?;
    Ok(())
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
