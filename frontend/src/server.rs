//! Accepting TCP connections and serving HTTP/1 on them, with bounds on what one
//! client can hold: open connections, header size, time to send headers, and a
//! graceful shutdown that lets requests in flight finish.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;
use tracing::{debug, info, warn};

/// The largest request line plus headers accepted (larger gets hyper's bare 431).
/// 64 KiB is far above what any legitimate client sends and small enough to be
/// cheap per connection. hyper's read buffer gets the same bound.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// How long to back off when `accept` fails (typically EMFILE), so the loop does
/// not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Connection-level limits.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Open connections at once; more wait in the kernel's listen backlog.
    pub max_connections: usize,
    /// Time a client has to send a request's headers.
    pub header_timeout: Duration,
    /// After the shutdown signal, how long requests in flight may run.
    pub shutdown_grace: Duration,
}

/// Serves `app` on `listener` until `shutdown` completes, then stops accepting and
/// waits up to the grace period for open connections to finish their requests.
/// Connections still open after that are dropped with the returned future.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()>,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        // max_buf_size alone is only checked while headers are incomplete, so a
        // head that arrives in large reads could pass it; max_header_size is exact.
        .max_header_size(MAX_HEADER_BYTES)
        .max_buf_size(MAX_HEADER_BYTES);
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    tokio::pin!(shutdown);

    loop {
        // The permit comes first: at the cap, connections wait in the backlog
        // rather than being accepted and left without service.
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = Arc::clone(&connections).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        if let Err(e) = stream.set_nodelay(true) {
            debug!(%peer, "could not set TCP_NODELAY: {e}");
        }
        let app = app.clone();
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            app.clone().oneshot(request.map(Body::new))
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            // hyper ends the connection (dropping any handler still running) when
            // the client closes it; see the disconnect test below.
            if let Err(e) = connection.await {
                debug!(%peer, "connection ended: {e}");
            }
            drop(permit);
        });
    }

    drop(listener);
    info!(
        "shutting down: no new connections; waiting up to {:?} for requests in flight",
        limits.shutdown_grace
    );
    tokio::select! {
        () = graceful.shutdown() => info!("all connections closed"),
        () = tokio::time::sleep(limits.shutdown_grace) => {
            warn!("shutdown grace period over; dropping the connections still open");
        }
    }
}
