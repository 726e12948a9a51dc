//! `profile-operator`: `run` (default) starts the HTTP endpoints, waits to become the leader and
//! runs the controller until SIGTERM; `crd` prints the CustomResourceDefinition.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use kube::Client;
use kube::runtime::events::Reporter;
use profile_operator::config::{Cli, Command, RunArgs};
use profile_operator::http::{AppState, router};
use profile_operator::lag::KafkaLagReader;
use profile_operator::leader::Elector;
use profile_operator::metrics::Metrics;
use profile_operator::reconcile::{self, Context};
use prometheus_client::registry::Registry;
use tokio::sync::watch;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Crd) => {
            let yaml = profile_operator::crd::crd_yaml()?;
            print!("{yaml}");
            Ok(())
        }
        Some(Command::Run(args)) => run(args).await,
        None => run(cli.run).await,
    }
}

/// Sets up logs and traces (the standard `OTEL_*` variables), runs, and flushes spans on exit.
async fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut telemetry_config = statecast_telemetry::TelemetryConfig::from_env("profile-operator")?;
    if std::env::var_os("RUST_LOG").is_none() {
        telemetry_config.log_filter = "info,kube=warn".to_owned();
    }
    let telemetry = statecast_telemetry::init(&telemetry_config)?;
    let result = operate(args).await;
    if let Err(error) = &result {
        tracing::error!(error = format!("{error:#}"), "profile-operator stopped");
    }
    telemetry.shutdown().await;
    result
}

async fn operate(args: RunArgs) -> anyhow::Result<()> {
    // Refused before anything connects; the message names the variable.
    let kafka = args.kafka_security()?;
    tracing::info!(kafka = ?kafka, "Kafka client settings of the lag reader");
    // SIGTERM/SIGINT flip this; every long-running part watches it.
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    });

    let mut registry = Registry::default();
    let metrics = Metrics::default().register(&mut registry);
    let ready = Arc::new(AtomicBool::new(false));
    let app = router(AppState {
        registry: Arc::new(registry),
        ready: ready.clone(),
    });
    let listener = tokio::net::TcpListener::bind(args.listen_addr)
        .await
        .with_context(|| format!("binding {}", args.listen_addr))?;
    tracing::info!(addr = %args.listen_addr, "serving /healthz, /readyz, /metrics");
    let mut http_stop = stop_rx.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = http_stop.wait_for(|stop| *stop).await;
            })
            .await
    });

    let client = Client::try_default()
        .await
        .context("building the Kubernetes client")?;
    reconcile::check_crd_installed(&client).await?;
    ready.store(true, Ordering::Relaxed);

    let holder = args
        .pod_name
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "profile-operator".into());
    let lease_namespace = args
        .pod_namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let elector = Elector::new(client.clone(), &lease_namespace, &args.lease_name, &holder);

    let mut wait_stop = stop_rx.clone();
    tokio::select! {
        () = elector.acquire() => {}
        _ = wait_stop.wait_for(|stop| *stop) => {
            server.await??;
            return Ok(());
        }
    }

    // The consumers get the same settings, minus the secrets (see RunArgs::settings).
    let settings = args.settings(&kafka);
    let ctx = Arc::new(Context::new(
        client,
        settings,
        Arc::new(
            KafkaLagReader::new(args.kafka_brokers.clone(), Duration::from_secs(10))
                .with_security(kafka),
        ),
        Reporter {
            controller: "profile-operator".into(),
            instance: Some(holder),
        },
        metrics,
    ));

    // SIGTERM stops the controller gracefully (in-flight reconciles finish) while the Lease is
    // still renewed. When leadership ends, the controller is dropped at once, cancelling any
    // reconcile in flight: `hold` returns before another replica can take the Lease over (see
    // `leader`), and the process exits to be restarted as a follower.
    let mut controller_stop = stop_rx.clone();
    let shutdown = async move {
        let _ = controller_stop.wait_for(|stop| *stop).await;
    };
    if let Err(lost) = elector
        .lead(reconcile::run(ctx, args.watch_namespace(), shutdown))
        .await
    {
        anyhow::bail!("lost leadership: {lost}");
    }
    if let Err(e) = elector.step_down().await {
        tracing::warn!(error = %e, "releasing the lease failed");
    }
    server.await??;
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
