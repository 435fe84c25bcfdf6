//! pysandbox-frontend: the unprivileged HTTP service in front of pysandbox-executor.
//!
//! It authenticates clients, validates requests, bounds how much work is admitted,
//! hands each job to the executor over a fresh Unix-socket connection, and uploads
//! or returns the files the job produced.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admission;
pub mod ask;
pub mod auth;
pub mod body_budget;
pub mod config;
pub mod duplicate_keys;
pub mod error;
pub mod executor_client;
pub mod health;
mod mcp;
pub mod metrics;
pub mod openapi;
pub mod peers;
pub mod privileges;
pub mod request;
pub mod response;
pub mod routes;
pub mod server;
mod sessions;
pub mod spool;
pub mod stream;
pub mod upload;
pub mod upload_policy;

#[cfg(test)]
mod testing;

use std::io;

use futures::FutureExt;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tracing::info;

pub use auth::AuthToken;
pub use config::Config;
pub use error::ApiError;

/// Listens as configured and serves until SIGTERM or SIGINT, then shuts down
/// gracefully.
pub async fn run(config: Config, token: AuthToken) -> io::Result<()> {
    // Installed before binding, so a failure shows before the service looks ready.
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let shutdown = async move {
        tokio::select! {
            _ = sigterm.recv() => info!("SIGTERM received"),
            _ = sigint.recv() => info!("SIGINT received"),
        }
    };

    let listener = TcpListener::bind((config.host.as_str(), config.port))
        .await
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot listen on {}:{}: {e}", config.host, config.port),
            )
        })?;
    info!("listening on {}", listener.local_addr()?);

    let state = routes::AppState::new(&config, token)
        .map_err(|e| io::Error::other(format!("cannot build the outbound HTTP client: {e}")))?;
    let app = routes::router(state.clone());
    let limits = config.server_limits();
    let Some(metrics_addr) = config.metrics_addr else {
        server::serve(listener, app, limits, shutdown).await;
        return Ok(());
    };
    // Bound after the main listener: its line is the first "listening on" one.
    let metrics_listener = TcpListener::bind(metrics_addr).await.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot listen on METRICS_ADDR {metrics_addr}: {e}"),
        )
    })?;
    info!("metrics: listening on {}", metrics_listener.local_addr()?);
    // One signal stops both listeners.
    let shutdown = shutdown.boxed().shared();
    tokio::join!(
        server::serve(listener, app, limits.clone(), shutdown.clone()),
        server::serve(
            metrics_listener,
            routes::metrics_router(state),
            limits,
            shutdown
        ),
    );
    Ok(())
}
