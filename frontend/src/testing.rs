//! Helpers for the in-crate tests: a fake executor that speaks the shared protocol
//! on a Unix socket in a temp dir, and a frontend served on a free local port.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pysandbox_shared::{
    Connection, FilesEnd, Hello, JobEnd, OutputChunk, Request, Response, Started, Stream,
};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::routes::{router, AppState};
use crate::server::serve;

/// The token the test frontends accept.
pub const TOKEN: &str = "test-token";

/// A fake executor; each connection is handed to the test's handler.
pub struct FakeExecutor {
    _dir: tempfile::TempDir,
    pub socket: PathBuf,
    task: JoinHandle<()>,
}

impl FakeExecutor {
    pub fn start<F, Fut>(handler: F) -> Self
    where
        F: Fn(Connection<UnixStream>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("executor.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let handler = Arc::new(handler);
        let task = tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                tokio::spawn(handler(Connection::server(stream)));
            }
        });
        FakeExecutor {
            _dir: dir,
            socket,
            task,
        }
    }

    /// An executor that answers every job with `frames`.
    pub fn answering(frames: Vec<Response>) -> Self {
        FakeExecutor::start(move |mut conn| {
            let frames = frames.clone();
            async move {
                handshake(&mut conn).await;
                answer(&mut conn, frames).await;
            }
        })
    }
}

impl Drop for FakeExecutor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Plays the executor's side of the hello, then returns the frontend's request.
pub async fn handshake(conn: &mut Connection<UnixStream>) -> Request {
    assert_eq!(
        conn.recv::<Request>().await.unwrap(),
        Some(Request::Hello(Hello::CURRENT))
    );
    conn.send(&Response::Hello(Hello::CURRENT)).await.unwrap();
    conn.recv::<Request>().await.unwrap().unwrap()
}

/// Sends `frames`, in order.
pub async fn answer(conn: &mut Connection<UnixStream>, frames: Vec<Response>) {
    for frame in frames {
        conn.send(&frame).await.unwrap();
    }
}

/// The frames of `print(2 + 2)`.
pub fn four() -> Vec<Response> {
    vec![
        Response::Started(Started { timeout_ms: 30_000 }),
        Response::Output(OutputChunk {
            stream: Stream::Stdout,
            data: b"4\n".to_vec(),
        }),
        Response::Ended(JobEnd {
            exit_code: Some(0),
            signal: None,
            stdout_truncated: false,
            stderr_truncated: false,
            timed_out: false,
            limit_exceeded: None,
            usage: pysandbox_shared::Usage {
                wall_ms: 7,
                cpu_ms: Some(3),
                peak_memory_bytes: Some(1 << 20),
            },
            notes: vec![],
            violations: vec![],
            result: None,
        }),
        Response::Finished(FilesEnd::default()),
    ]
}

/// A frontend serving on 127.0.0.1 until dropped or shut down.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl TestServer {
    /// Starts a frontend talking to the executor at `socket`, configured by the
    /// defaults plus `flags`.
    pub async fn start(socket: &std::path::Path, flags: &[&str]) -> Self {
        let socket = socket.to_str().unwrap();
        let mut args = vec![
            "pysandbox-frontend",
            "--auth-token",
            TOKEN,
            "--executor-socket",
            socket,
        ];
        args.extend_from_slice(flags);
        let config = <Config as clap::Parser>::try_parse_from(args).unwrap();
        let token = config.token().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = config.server_limits();
        let app = router(AppState::new(&config, token).unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, app, limits, async {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            stop: Some(stop),
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends the shutdown signal.
    pub fn signal_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits for the server to have shut down.
    pub async fn finished(&mut self) {
        (&mut self.task).await.unwrap();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A reqwest client that opens a fresh connection per request, with a test-sized timeout.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}
