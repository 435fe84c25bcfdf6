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

use crate::peers::PeerLimit;
use crate::routes::HealthOnly;

/// The largest request line plus headers accepted (larger gets hyper's bare 431).
/// 64 KiB is far above what any legitimate client sends and small enough to be
/// cheap per connection. hyper's read buffer gets the same bound.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// How long to back off when `accept` fails (typically EMFILE), so the loop does
/// not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Connections accepted beyond `max_connections`, each for one `GET /health` only,
/// so that health checks get through while clients hold every ordinary slot.
const HEALTH_RESERVE: usize = 16;

/// Time a reserve connection has to send its request head: a health check sends
/// it at once, and a slow client must not hold the reserve.
const RESERVE_HEADER_TIMEOUT: Duration = Duration::from_secs(2);

/// Connection-level limits.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Open connections at once; more wait in the kernel's listen backlog (beyond
    /// a small reserve for `/health`).
    pub max_connections: usize,
    /// Open connections of one client address (an IPv6 /64); more are closed at once.
    pub max_connections_per_ip: usize,
    /// Time a client has to send a request's headers (also the time an idle
    /// keep-alive connection stays open).
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
    let mut reserve_http = http.clone();
    reserve_http
        .header_read_timeout(RESERVE_HEADER_TIMEOUT.min(limits.header_timeout))
        .keep_alive(false);
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let reserve = Arc::new(Semaphore::new(HEALTH_RESERVE));
    let peers = PeerLimit::new(limits.max_connections_per_ip);
    tokio::pin!(shutdown);

    loop {
        // The slot comes first: when every ordinary slot and the reserve are taken,
        // connections wait in the backlog rather than being accepted and left
        // without service. `health_only`: the slot is one of the reserve's.
        let (slot, health_only) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            permit = Arc::clone(&connections).acquire_owned() => match permit {
                Ok(permit) => (permit, false),
                Err(_) => break,
            },
            permit = Arc::clone(&reserve).acquire_owned() => match permit {
                Ok(permit) => (permit, true),
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
        let Some(peer_slot) = peers.enter(peer.ip()) else {
            // Closed at once (not logged above debug: the client could flood the
            // log as easily as the listener).
            debug!(%peer, "connection over the per-client cap closed");
            continue;
        };
        if let Err(e) = stream.set_nodelay(true) {
            debug!(%peer, "could not set TCP_NODELAY: {e}");
        }
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            if health_only {
                request.extensions_mut().insert(HealthOnly);
            }
            app.clone().oneshot(request.map(Body::new))
        });
        let builder = if health_only { &reserve_http } else { &http };
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            // hyper ends the connection (dropping any handler still running) when
            // the client closes it; see the disconnect test below.
            if let Err(e) = connection.await {
                debug!(%peer, "connection ended: {e}");
            }
            drop((slot, peer_slot));
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

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use pysandbox_shared::{JobError, JobSpec, Request, Response};
    use serde_json::{json, Value};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::sync::{mpsc, Notify};

    use super::*;
    use crate::testing::{answer, client, four, handshake, FakeExecutor, TestServer, TOKEN};

    async fn post_execute(server: &TestServer, body: &str) -> reqwest::Response {
        client()
            .post(server.url("/execute"))
            .bearer_auth(TOKEN)
            .body(body.to_owned())
            .send()
            .await
            .unwrap()
    }

    fn header<'a>(response: &'a reqwest::Response, name: &str) -> Option<&'a str> {
        response.headers().get(name).map(|v| v.to_str().unwrap())
    }

    #[tokio::test]
    async fn a_job_runs_end_to_end() {
        let (specs_tx, mut specs) = mpsc::unbounded_channel();
        let executor = FakeExecutor::start(move |mut conn| {
            let specs_tx = specs_tx.clone();
            async move {
                let Request::Run(spec) = handshake(&mut conn).await else {
                    panic!("expected a job");
                };
                specs_tx.send(spec).unwrap();
                answer(&mut conn, four()).await;
            }
        });
        let server = TestServer::start(&executor.socket, &[]).await;

        let response = post_execute(&server, r#"{"code":"print(2 + 2)","stdin":"x"}"#).await;
        assert_eq!(response.status(), 200);
        assert_eq!(header(&response, "content-type"), Some("application/json"));
        let request_id = header(&response, "x-request-id").unwrap().to_owned();
        assert_eq!(
            response.text().await.unwrap(),
            r#"{"exitCode":0,"signal":null,"stdout":"4\n","stderr":"","uploads":[],"timedOut":false,"durationMs":7,"stdoutTruncated":false,"stderrTruncated":false,"limitExceeded":null,"usage":{"wallMs":7,"cpuMs":3,"peakMemoryBytes":1048576},"violations":[],"result":null,"displays":[]}"#
        );
        assert_eq!(
            specs.recv().await.unwrap(),
            JobSpec {
                request_id,
                code: "print(2 + 2)".into(),
                stdin: Some("x".into()),
                timeout_ms: None,
                limits: Default::default(),
                files: Vec::new(),
                collect_files: false,
                network: None,
            }
        );

        post_execute(&server, r#"{"code":"1","timeoutMs":1500}"#).await;
        let spec = specs.recv().await.unwrap();
        assert_eq!((spec.timeout_ms, spec.stdin), (Some(1500), None));

        post_execute(
            &server,
            r#"{"code":"1","network":{"allowedDomains":["a.io"]}}"#,
        )
        .await;
        let spec = specs.recv().await.unwrap();
        assert_eq!(
            spec.network,
            Some(pysandbox_shared::NetworkRequest {
                allowed_domains: Some(vec!["a.io".into()])
            })
        );
    }

    async fn assert_error(
        response: reqwest::Response,
        status: u16,
        retry: Option<&str>,
        body: Value,
    ) {
        assert_eq!(response.status(), status);
        assert_eq!(header(&response, "retry-after"), retry);
        assert!(header(&response, "x-request-id").is_some());
        assert_eq!(response.json::<Value>().await.unwrap(), body);
    }

    #[tokio::test]
    async fn executor_down_is_503_with_retry_after() {
        let dir = tempfile::tempdir().unwrap();
        let server = TestServer::start(&dir.path().join("nobody-listens.sock"), &[]).await;
        let started = Instant::now();
        let response = post_execute(&server, r#"{"code":"1"}"#).await;
        assert!(started.elapsed() < Duration::from_secs(3));
        assert_error(
            response,
            503,
            Some("5"),
            json!({"error": "executor unavailable"}),
        )
        .await;
    }

    #[tokio::test]
    async fn recovers_when_the_executor_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("executor.sock");
        let server = TestServer::start(&socket, &[]).await;
        assert_eq!(post_execute(&server, r#"{"code":"1"}"#).await.status(), 503);

        let executor = FakeExecutor::answering(four());
        std::fs::hard_link(&executor.socket, &socket).unwrap();
        assert_eq!(post_execute(&server, r#"{"code":"1"}"#).await.status(), 200);
    }

    #[tokio::test]
    async fn an_executor_that_never_says_hello_is_503_after_3_s() {
        let executor = FakeExecutor::start(|conn| async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(conn);
        });
        let server = TestServer::start(&executor.socket, &[]).await;
        let started = Instant::now();
        let response = post_execute(&server, r#"{"code":"1"}"#).await;
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(2900) && waited < Duration::from_secs(5),
            "{waited:?}"
        );
        assert_error(
            response,
            503,
            Some("5"),
            json!({"error": "executor unavailable"}),
        )
        .await;
    }

    #[tokio::test]
    async fn a_version_mismatch_is_503_executor_unavailable() {
        let executor = FakeExecutor::start(|mut conn| async move {
            let _ = conn.recv::<Request>().await;
            conn.send(&Response::Hello(pysandbox_shared::Hello { version: 999 }))
                .await
                .unwrap();
            let _ = conn.recv::<Request>().await;
        });
        let server = TestServer::start(&executor.socket, &[]).await;
        let response = post_execute(&server, r#"{"code":"1"}"#).await;
        assert_error(
            response,
            503,
            Some("5"),
            json!({"error": "executor unavailable"}),
        )
        .await;
    }

    #[tokio::test]
    async fn executor_failures_map_to_contract_errors() {
        let cases = [
            (
                Response::Failed(JobError::JailSetup {
                    reason: "secret detail /var/lib/x".into(),
                }),
                503,
                Some("5"),
                json!({"error": "sandbox unavailable: could not set up the jail"}),
            ),
            (
                Response::Failed(JobError::Rejected {
                    field: "timeoutMs".into(),
                    reason: "must be at most 60000".into(),
                }),
                400,
                None,
                json!({"error": "timeoutMs: must be at most 60000", "field": "timeoutMs"}),
            ),
            (
                Response::Failed(JobError::ShuttingDown),
                503,
                Some("5"),
                json!({"error": "executor restarting; retry later"}),
            ),
            (
                Response::Failed(JobError::Busy {
                    retry_after_secs: 2,
                }),
                503,
                Some("2"),
                json!({"error": "service busy: every job slot is taken; retry later"}),
            ),
            (
                Response::Failed(JobError::Protocol {
                    reason: "bad".into(),
                }),
                500,
                None,
                json!({"error": "internal error"}),
            ),
            (
                Response::Status(pysandbox_shared::ExecutorStatus {
                    running_jobs: 0,
                    max_jobs: 1,
                    enforcement: vec![],
                    isolation: vec![],
                    warm_jails: 0,
                    queued_jobs: 0,
                    sessions: 0,
                    metrics: Default::default(),
                }),
                500,
                None,
                json!({"error": "internal error"}),
            ),
        ];
        for (answer, status, retry, body) in cases {
            let executor = FakeExecutor::answering(vec![answer]);
            let server = TestServer::start(&executor.socket, &[]).await;
            assert_error(
                post_execute(&server, r#"{"code":"1"}"#).await,
                status,
                retry,
                body,
            )
            .await;
        }
    }

    #[tokio::test]
    async fn executor_going_away_mid_job_is_503_connection_lost() {
        let executor = FakeExecutor::start(|mut conn| async move {
            handshake(&mut conn).await;
            drop(conn);
        });
        let server = TestServer::start(&executor.socket, &[]).await;
        let response = post_execute(&server, r#"{"code":"1"}"#).await;
        assert_error(
            response,
            503,
            Some("5"),
            json!({"error": "executor connection lost while running the job"}),
        )
        .await;
    }

    /// Sends a complete `POST /execute` over a raw socket, so the test controls
    /// exactly when the client goes away.
    async fn raw_execute(server: &TestServer, body: &str) -> TcpStream {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        let request = format!(
            "POST /execute HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        stream
    }

    /// The question behind this test: when an HTTP/1 client disconnects while its
    /// job runs, does hyper drop the handler future (and with it the executor
    /// connection, which is what makes the executor kill the job)? It does: hyper
    /// keeps reading the socket while the response is pending and ends the
    /// connection on EOF (`half_close` is off by default).
    #[tokio::test]
    async fn a_client_that_disconnects_closes_the_executor_connection() {
        let job_started = Arc::new(Notify::new());
        let (closed_tx, mut closed) = mpsc::unbounded_channel();
        let started = Arc::clone(&job_started);
        let executor = FakeExecutor::start(move |mut conn| {
            let (started, closed_tx) = (Arc::clone(&started), closed_tx.clone());
            async move {
                handshake(&mut conn).await;
                started.notify_one();
                // A real job would run here; the executor watches the connection.
                let seen = conn.recv::<Request>().await;
                closed_tx
                    .send(seen.map(|m| m.is_none()).unwrap_or(true))
                    .unwrap();
            }
        });
        let server = TestServer::start(&executor.socket, &[]).await;

        let client = raw_execute(&server, r#"{"code":"import time; time.sleep(60)"}"#).await;
        tokio::time::timeout(Duration::from_secs(5), job_started.notified())
            .await
            .unwrap();
        drop(client);
        let closed = tokio::time::timeout(Duration::from_secs(5), closed.recv())
            .await
            .expect("the executor connection stayed open after the client left");
        assert_eq!(closed, Some(true));
    }

    /// Queue waiting itself is covered in `admission`; here MAX_QUEUE is 0 so the
    /// outcome does not depend on how fast a queued request gets in line.
    #[tokio::test]
    async fn a_full_service_is_429_with_retry_after() {
        let release = Arc::new(Notify::new());
        let job_started = Arc::new(Notify::new());
        let (r, s) = (Arc::clone(&release), Arc::clone(&job_started));
        let executor = FakeExecutor::start(move |mut conn| {
            let (release, started) = (Arc::clone(&r), Arc::clone(&s));
            async move {
                handshake(&mut conn).await;
                started.notify_one();
                release.notified().await;
                answer(&mut conn, four()).await;
            }
        });
        let server = TestServer::start(
            &executor.socket,
            &["--max-inflight", "1", "--max-queue", "0"],
        )
        .await;

        let first = tokio::spawn(post_execute_owned(server.url("/execute")));
        job_started.notified().await;
        let response = post_execute(&server, r#"{"code":"1"}"#).await;
        assert_error(
            response,
            429,
            Some("1"),
            json!({"error": "too many jobs in flight; retry later"}),
        )
        .await;

        release.notify_one();
        assert_eq!(first.await.unwrap(), 200);
        // The slot is free again.
        let again = tokio::spawn(post_execute_owned(server.url("/execute")));
        job_started.notified().await;
        release.notify_one();
        assert_eq!(again.await.unwrap(), 200);
    }

    async fn post_execute_owned(url: String) -> u16 {
        client()
            .post(url)
            .bearer_auth(TOKEN)
            .body(r#"{"code":"1"}"#)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    #[tokio::test]
    async fn health_reports_the_executor() {
        let executor = FakeExecutor::start(|mut conn| async move {
            assert_eq!(handshake(&mut conn).await, Request::Status);
            conn.send(&Response::Status(pysandbox_shared::ExecutorStatus {
                running_jobs: 2,
                max_jobs: 4,
                enforcement: vec![pysandbox_shared::Enforcement {
                    limit: "memory".into(),
                    mechanism: "cgroup v2".into(),
                }],
                isolation: vec![pysandbox_shared::Layer {
                    name: "landlock".into(),
                    detail: "ABI 6".into(),
                }],
                warm_jails: 1,
                queued_jobs: 3,
                sessions: 2,
                metrics: Default::default(),
            }))
            .await
            .unwrap();
        });
        let server = TestServer::start(&executor.socket, &[]).await;
        let response = client().get(server.url("/health")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(header(&response, "x-request-id").is_some());
        assert_eq!(
            response.text().await.unwrap(),
            r#"{"ok":true,"executor":"up","runningJobs":2,"maxJobs":4,"queuedJobs":3,"warmJails":1,"sessions":2,"limits":{"memory":"cgroup v2"},"isolation":{"landlock":"ABI 6"}}"#
        );

        let dir = tempfile::tempdir().unwrap();
        let server = TestServer::start(&dir.path().join("none.sock"), &[]).await;
        let response = client().get(server.url("/health")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.text().await.unwrap(),
            r#"{"ok":true,"executor":"down"}"#
        );
    }

    #[tokio::test]
    async fn health_is_down_when_the_executor_does_not_answer_within_1_s() {
        let executor = FakeExecutor::start(|conn| async move {
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(conn);
        });
        let server = TestServer::start(&executor.socket, &[]).await;
        let started = Instant::now();
        let response = client().get(server.url("/health")).send().await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(3));
        assert_eq!(
            response.text().await.unwrap(),
            r#"{"ok":true,"executor":"down"}"#
        );
    }

    #[tokio::test]
    async fn an_oversized_body_is_413_even_while_the_client_still_sends() {
        let executor = FakeExecutor::answering(four());
        let server = TestServer::start(&executor.socket, &[]).await;
        let body = format!(r#"{{"code":"{}"}}"#, "x".repeat(2 * 1024 * 1024));
        let response = post_execute(&server, &body).await;
        assert_error(
            response,
            413,
            None,
            json!({"error": "request body is larger than 1048576 bytes"}),
        )
        .await;
    }

    #[tokio::test]
    async fn a_slow_body_is_408() {
        let executor = FakeExecutor::answering(four());
        let server = TestServer::start(&executor.socket, &["--body-timeout-ms", "300"]).await;
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        let head = format!(
            "POST /execute HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Length: 100\r\n\r\n{{\"code\":"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut answer))
            .await
            .unwrap()
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
        assert!(
            answer.ends_with(r#"{"error":"request body timed out"}"#),
            "{answer}"
        );
    }

    #[tokio::test]
    async fn slow_headers_are_cut_off() {
        let executor = FakeExecutor::answering(four());
        let server = TestServer::start(&executor.socket, &["--header-timeout-ms", "300"]).await;
        let started = std::time::Instant::now();
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream
            .write_all(b"POST /execute HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
        assert!(read.is_ok(), "the connection stayed open");
        // Cut off by the header timeout, not at once: a server that dropped every
        // connection would pass the check above.
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "closed after {:?}, before the header timeout",
            started.elapsed()
        );
        let answer = String::from_utf8_lossy(&answer);
        // hyper closes a connection whose head is late without an answer.
        assert_eq!(answer, "");
    }

    #[tokio::test]
    async fn oversized_headers_are_refused() {
        let executor = FakeExecutor::answering(four());
        let server = TestServer::start(&executor.socket, &[]).await;
        // Just over the limit. hyper answers once its buffer is full and closes
        // with the rest unread (a reset), but the answer came first and is read
        // from the socket's queue before the reset's error.
        let head = format!(
            "GET /health HTTP/1.1\r\nHost: x\r\nx-big: {}\r\n\r\n",
            "a".repeat(MAX_HEADER_BYTES)
        );
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        let _ = stream.write_all(head.as_bytes()).await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{answer:?}"
        );
    }

    /// Bodies being read at once are bounded in bytes: past BODY_BUFFER_BYTES a
    /// request is answered 503 at once, and room comes back when a body is done.
    #[tokio::test]
    async fn request_bodies_being_read_are_bounded_in_bytes() {
        let executor = FakeExecutor::answering(four());
        let server = TestServer::start(&executor.socket, &["--body-buffer-bytes", "1048576"]).await;
        let big = format!(r#"{{"code":"1","stdin":"{}"}}"#, "x".repeat(600_000));
        // Holds 600,000 bytes of the budget: the body never ends.
        let mut holder = TcpStream::connect(server.addr).await.unwrap();
        let head = format!(
            "POST /execute HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Length: {}\r\n\r\n{{",
            big.len()
        );
        holder.write_all(head.as_bytes()).await.unwrap();
        let refused = async {
            loop {
                let response = post_execute(&server, &big).await;
                if response.status() == 503 {
                    break response;
                }
            }
        };
        let refused = tokio::time::timeout(Duration::from_secs(10), refused)
            .await
            .unwrap();
        assert_error(
            refused,
            503,
            Some("1"),
            json!({"error": "too many request bodies being read; retry later"}),
        )
        .await;
        // What is left still serves small bodies.
        assert_eq!(post_execute(&server, r#"{"code":"1"}"#).await.status(), 200);
        drop(holder);
        let served = async {
            while post_execute(&server, &big).await.status() != 200 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), served)
            .await
            .unwrap();
    }

    /// Past MAX_CONNECTIONS, a connection from the reserve answers `/health` and
    /// nothing else; once a slot frees, jobs are served again.
    #[tokio::test]
    async fn over_the_cap_only_health_is_served() {
        let executor = FakeExecutor::answering(four());
        let server = TestServer::start(&executor.socket, &["--max-connections", "1"]).await;
        let mut idle = TcpStream::connect(server.addr).await.unwrap();
        idle.write_all(b"G").await.unwrap();
        let health = client().get(server.url("/health")).send().await.unwrap();
        assert_eq!(health.status(), 200);
        assert_error(
            post_execute(&server, r#"{"code":"1"}"#).await,
            503,
            Some("1"),
            json!({"error": "too many open connections; retry later"}),
        )
        .await;
        drop(idle);
        let served = async {
            loop {
                let response = post_execute(&server, r#"{"code":"1"}"#).await;
                if response.status() == 200 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), served)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn shutdown_lets_a_running_job_finish_and_accepts_nothing_new() {
        let release = Arc::new(Notify::new());
        let job_started = Arc::new(Notify::new());
        let (r, s) = (Arc::clone(&release), Arc::clone(&job_started));
        let executor = FakeExecutor::start(move |mut conn| {
            let (release, started) = (Arc::clone(&r), Arc::clone(&s));
            async move {
                handshake(&mut conn).await;
                started.notify_one();
                release.notified().await;
                answer(&mut conn, four()).await;
            }
        });
        let mut server = TestServer::start(&executor.socket, &[]).await;
        let running = tokio::spawn(post_execute_owned(server.url("/execute")));
        job_started.notified().await;

        server.signal_shutdown();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            TcpStream::connect(server.addr).await.is_err(),
            "still accepting"
        );

        release.notify_one();
        assert_eq!(running.await.unwrap(), 200);
        tokio::time::timeout(Duration::from_secs(5), server.finished())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn shutdown_gives_up_after_the_grace_period() {
        let executor = FakeExecutor::start(|mut conn| async move {
            handshake(&mut conn).await;
            let _ = conn.recv::<Request>().await;
        });
        let mut server = TestServer::start(&executor.socket, &["--shutdown-grace-ms", "200"]).await;
        let _client = raw_execute(&server, r#"{"code":"1"}"#).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let signalled = std::time::Instant::now();
        server.signal_shutdown();
        tokio::time::timeout(Duration::from_secs(5), server.finished())
            .await
            .unwrap();
        // The job never ends: the server waited the whole grace period for it.
        assert!(
            signalled.elapsed() >= Duration::from_millis(200),
            "gave up after {:?}, before the grace period",
            signalled.elapsed()
        );
    }
}
