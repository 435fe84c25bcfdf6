//! The executor's Unix socket from the outside: who may connect, and what garbage
//! does to it (nothing).

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use pysandbox_shared::{
    Connection, ExecutorStatus, Hello, JobError, JobSpec, Request, Response, PROTOCOL_VERSION,
};
use pysandbox_tests::{random_bytes, require_root, Service, FRONTEND_GID, FRONTEND_UID};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// How long the executor may keep a bad connection open before closing it.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

async fn connect(svc: &Service) -> UnixStream {
    UnixStream::connect(svc.executor.socket())
        .await
        .expect("root may always connect to the executor")
}

/// Reads raw bytes until the executor closes the connection; `Err` with what was
/// read if it is still open after [`CLOSE_TIMEOUT`].
async fn read_until_closed(stream: &mut UnixStream) -> Result<Vec<u8>, Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let read_all = async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    match tokio::time::timeout(CLOSE_TIMEOUT, read_all).await {
        Ok(()) => Ok(buf),
        Err(_) => Err(buf),
    }
}

/// Reads messages until the executor closes the connection (or sends something
/// undecodable); panics if it keeps it open past [`CLOSE_TIMEOUT`].
async fn responses_until_closed(conn: &mut Connection<UnixStream>) -> Vec<Response> {
    let mut responses = Vec::new();
    let read_all = async {
        while let Ok(Some(response)) = conn.recv::<Response>().await {
            responses.push(response);
        }
    };
    let closed = tokio::time::timeout(CLOSE_TIMEOUT, read_all).await.is_ok();
    assert!(
        closed,
        "the executor kept the connection open for {CLOSE_TIMEOUT:?}; it sent {responses:?}"
    );
    responses
}

/// The executor is alive and still runs jobs.
async fn assert_still_serving(svc: &mut Service) {
    svc.executor.assert_running();
    let out = svc.run_code("print('still serving')").await;
    assert_eq!(out["stdout"], "still serving\n", "{out}");
}

/// Responses a bad client may get: the executor's hello, a failure, nothing more.
fn assert_only_hello_or_failure(responses: &[Response]) {
    for response in responses {
        assert!(
            matches!(
                response,
                Response::Hello(Hello {
                    version: PROTOCOL_VERSION
                }) | Response::Failed(_)
            ),
            "unexpected answer to a bad client: {responses:?}"
        );
    }
}

#[test]
fn socket_is_0660_and_owned_by_the_frontend_group() {
    require_root!();
    let svc = pysandbox_tests::Executor::start(&[]);
    let meta = std::fs::metadata(svc.socket()).expect("the socket exists");
    assert!(
        meta.file_type().is_socket(),
        "{:?} is not a socket",
        svc.socket()
    );
    assert_eq!(meta.permissions().mode() & 0o7777, 0o660, "socket mode");
    assert_eq!(meta.gid(), FRONTEND_GID, "socket group");
}

/// The control for the tests below: a well-behaved client gets a hello and an
/// answer, so their "nothing came back" results mean something.
#[tokio::test]
async fn status_request_is_answered() {
    require_root!();
    let svc = Service::builder()
        .executor_args(["--max-jobs", "3"])
        .start();
    let mut conn = Connection::client(connect(&svc).await);
    conn.send(&Request::Hello(Hello::CURRENT))
        .await
        .expect("send hello");
    conn.send(&Request::Status).await.expect("send status");
    let hello = conn.recv::<Response>().await.expect("read hello");
    assert_eq!(hello, Some(Response::Hello(Hello::CURRENT)));
    let status = conn.recv::<Response>().await.expect("read status");
    let Some(Response::Status(ExecutorStatus {
        running_jobs,
        max_jobs,
        enforcement,
        isolation,
        ..
    })) = status
    else {
        panic!("expected a status, got {status:?}");
    };
    assert_eq!((running_jobs, max_jobs), (0, 3));
    let layers: Vec<_> = isolation.iter().map(|l| l.name.as_str()).collect();
    let mut expected = vec!["namespaces", "uid", "seccomp", "landlock"];
    if svc.executor.fork_server() {
        expected.push("fork server");
    }
    assert_eq!(layers, expected);
    let limits: Vec<_> = enforcement.iter().map(|e| e.limit.as_str()).collect();
    assert_eq!(
        limits,
        ["memory", "time", "cpu", "processes", "disk", "output"]
    );
}

#[tokio::test]
async fn random_bytes_do_not_crash_the_executor() {
    require_root!();
    let mut svc = Service::start();
    // Unframed garbage: its first four bytes are read as a length, here one past
    // any frame limit, so the executor must hang up at once.
    let mut stream = connect(&svc).await;
    let mut garbage = vec![0xff; 4];
    garbage.extend(random_bytes(1020));
    let _ = stream.write_all(&garbage).await;
    let answer = read_until_closed(&mut stream).await;
    assert!(
        answer.is_ok(),
        "the executor kept a connection that sent unframed garbage open: {answer:?}"
    );
    drop(stream);
    assert_still_serving(&mut svc).await;

    // A well-formed frame of garbage, where a hello should be.
    let mut stream = connect(&svc).await;
    let mut frame = 1024u32.to_be_bytes().to_vec();
    frame.extend(random_bytes(1024));
    let _ = stream.write_all(&frame).await;
    let answer = read_until_closed(&mut stream).await;
    assert!(
        answer.is_ok(),
        "the executor kept a connection that sent a garbage frame open: {answer:?}"
    );
    drop(stream);
    assert_still_serving(&mut svc).await;
}

#[tokio::test]
async fn oversized_frame_is_refused_without_crashing() {
    require_root!();
    let mut svc = Service::start();
    let mut stream = connect(&svc).await;
    let len = u32::try_from(pysandbox_shared::MAX_REQUEST_FRAME_LEN + 1).expect("fits in u32");
    let mut bytes = len.to_be_bytes().to_vec();
    bytes.extend(vec![0u8; 4096]);
    let _ = stream.write_all(&bytes).await;
    let answer = read_until_closed(&mut stream).await;
    assert!(
        answer.is_ok(),
        "the executor kept a connection announcing a {len}-byte frame open: {answer:?}"
    );
    drop(stream);
    assert_still_serving(&mut svc).await;

    // The largest length a header can announce.
    let mut stream = connect(&svc).await;
    let _ = stream.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]).await;
    assert!(read_until_closed(&mut stream).await.is_ok());
    drop(stream);
    assert_still_serving(&mut svc).await;
}

#[tokio::test]
async fn garbage_after_a_valid_hello_is_refused_without_crashing() {
    require_root!();
    let mut svc = Service::start();
    let mut stream = connect(&svc).await;
    stream
        .write_all(&frame(&Request::Hello(Hello::CURRENT)))
        .await
        .expect("send hello");
    // A frame whose payload starts with a variant index no message has.
    let mut frame = 64u32.to_be_bytes().to_vec();
    frame.push(0x7f);
    frame.extend(random_bytes(63));
    let _ = stream.write_all(&frame).await;
    let _ = stream.write_all(&random_bytes(1024)).await;
    let answer = read_until_closed(&mut stream).await;
    let bytes =
        answer.unwrap_or_else(|b| panic!("the executor kept the connection open; sent {b:?}"));
    // Whatever came back is the executor's hello, maybe followed by a failure.
    let responses = decode_frames(&bytes);
    assert_only_hello_or_failure(&responses);
    drop(stream);
    assert_still_serving(&mut svc).await;
}

#[tokio::test]
async fn version_mismatch_is_refused() {
    require_root!();
    let mut svc = Service::start();
    let mut conn = Connection::client(connect(&svc).await);
    conn.send(&Request::Hello(Hello { version: 999 }))
        .await
        .expect("send hello");
    // The executor must not act on anything after a mismatched hello.
    let _ = conn.send(&Request::Status).await;
    // Exactly: its own hello, the mismatch named, then the end (no status).
    let responses = responses_until_closed(&mut conn).await;
    assert_eq!(
        responses,
        [
            Response::Hello(Hello {
                version: PROTOCOL_VERSION
            }),
            Response::Failed(JobError::VersionMismatch {
                executor: PROTOCOL_VERSION,
                frontend: 999
            }),
        ]
    );
    assert_still_serving(&mut svc).await;
}

/// Connects as `uid` (with the frontend's group, so the socket's file mode lets it
/// in and only the executor's SO_PEERCRED check can refuse it), sends a hello and a
/// status request, and returns what the probe saw as JSON.
fn probe_as(uid: u32, socket: &std::path::Path) -> Value {
    let script = r#"
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(5)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print(json.dumps({"connect": repr(e)}))
    sys.exit(0)
try:
    s.sendall(bytes([0, 0, 0, 2, 0, 1, 0, 0, 0, 1, 2]))
except OSError:
    pass
data, error = b"", None
try:
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
except socket.timeout:
    error = "timeout"
except OSError as e:
    error = repr(e)
print(json.dumps({"connect": "ok", "received": list(data), "error": error}))
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(socket)
        .uid(uid)
        .gid(FRONTEND_GID)
        .current_dir("/")
        .env_clear()
        .output()
        .expect("cannot run python3 for the socket probe");
    assert!(
        out.status.success(),
        "the socket probe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the probe prints JSON")
}

#[tokio::test]
async fn uid_not_allowed_is_refused() {
    require_root!();
    let mut svc = Service::start();
    let socket = svc.executor.socket().to_owned();
    // Control: the frontend's uid gets the executor's hello.
    let allowed = tokio::task::spawn_blocking({
        let socket = socket.clone();
        move || probe_as(FRONTEND_UID, &socket)
    })
    .await
    .expect("probe thread");
    let hello = [
        0,
        0,
        0,
        2,
        0,
        u8::try_from(PROTOCOL_VERSION).expect("small version"),
    ];
    let received: Vec<u64> = allowed["received"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    assert!(
        received.len() >= hello.len()
            && received[..hello.len()]
                .iter()
                .zip(hello)
                .all(|(a, b)| *a == u64::from(b)),
        "the allowed uid got no hello: {allowed}"
    );

    let refused = tokio::task::spawn_blocking(move || probe_as(65531, &socket))
        .await
        .expect("probe thread");
    assert_eq!(
        refused["connect"], "ok",
        "the file mode, not the executor, refused: {refused}"
    );
    assert_eq!(refused["received"], serde_json::json!([]), "{refused}");
    assert_ne!(
        refused["error"], "timeout",
        "the connection was left open: {refused}"
    );
    assert_still_serving(&mut svc).await;
}

/// One message as a frame: 4-byte big-endian length, then the payload.
fn frame(msg: &Request) -> Vec<u8> {
    let payload = pysandbox_shared::codec::encode(msg).expect("encodable");
    let len = u32::try_from(payload.len()).expect("small message");
    let mut bytes = len.to_be_bytes().to_vec();
    bytes.extend_from_slice(&payload);
    bytes
}

/// Splits raw bytes into frames and decodes each; stops at the first that fails.
fn decode_frames(mut bytes: &[u8]) -> Vec<Response> {
    let mut responses = Vec::new();
    while bytes.len() >= 4 {
        let len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        let Some(payload) = bytes.get(4..4 + len) else {
            break;
        };
        match pysandbox_shared::codec::decode::<Response>(payload) {
            Ok(r) => responses.push(r),
            Err(_) => break,
        }
        bytes = &bytes[4 + len..];
    }
    responses
}

/// An executor whose socket directory does not exist yet (e.g. /run/pysandbox on a
/// host without the systemd socket unit) makes it reachable for the frontend's uid:
/// it once made it 0700 under its own umask, and every request got a 503.
#[tokio::test]
async fn a_socket_directory_the_executor_creates_lets_the_frontend_in() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = dir.path().join("run/pysandbox/executor.sock");
    let mut executor = Command::new(&pysandbox_tests::binaries().executor)
        .arg("--socket")
        .arg(&socket)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(["--socket-group", &FRONTEND_GID.to_string()])
        .args(["--allow-uid", &FRONTEND_UID.to_string()])
        .args(["--warm-pool-size", "0"])
        .env_clear()
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the executor");
    let up = pysandbox_tests::wait_until(Duration::from_secs(10), || socket.exists());
    let mode = socket
        .parent()
        .and_then(|p| std::fs::metadata(p).ok())
        .map(|m| m.permissions().mode());
    let health = if up {
        let frontend = pysandbox_tests::Frontend::start_on_socket(&socket, &[]);
        let response = reqwest::get(frontend.url("/health")).await.unwrap();
        Some(response.json::<Value>().await.unwrap())
    } else {
        None
    };
    let _ = executor.kill();
    let _ = executor.wait();
    assert!(up, "the executor never made its socket");
    assert_eq!(mode.map(|m| m & 0o777), Some(0o755));
    assert_eq!(
        health.as_ref().map(|h| &h["executor"]),
        Some(&Value::from("up")),
        "{health:?}"
    );
}

/// The review's F6: a first frame that is not a hello is named by its variant in
/// the answer and the log, never echoed: a 1 MiB code string used to become a log
/// line of several MB with the job's code in clear.
#[tokio::test]
async fn a_first_frame_that_is_not_a_hello_is_named_not_echoed() {
    require_root!();
    let mut svc = Service::start();
    let marker = "SECRETCODE".repeat(100_000);
    let spec = JobSpec {
        request_id: "r".into(),
        code: marker.clone(),
        stdin: None,
        timeout_ms: None,
        limits: Default::default(),
        files: vec![],
        collect_files: false,
        network: None,
    };
    let mut conn = Connection::client(connect(&svc).await);
    conn.send(&Request::Run(spec)).await.expect("send");
    let responses = responses_until_closed(&mut conn).await;
    assert_eq!(
        responses,
        [Response::Failed(JobError::Protocol {
            reason: "expected a hello, got a Run message".into()
        })]
    );
    // The line is written once the connection is gone: wait for it.
    let logged = pysandbox_tests::wait_until_async(Duration::from_secs(10), || {
        svc.executor
            .log()
            .contains("a Run message instead of a hello")
    })
    .await;
    assert!(logged, "the refusal was not logged by name");
    assert!(!svc.executor.log().contains("SECRETCODE"));
    assert_still_serving(&mut svc).await;
}

/// The review's F7: idle connections beyond `max_connections` wait in the listen
/// backlog instead of costing the executor a descriptor and a task each, and once
/// the idle ones are dropped (5 s to say hello), jobs run again.
#[tokio::test]
async fn idle_connections_are_capped() {
    require_root!();
    // No warm pool: its jails' descriptors would come and go meanwhile.
    let mut svc = Service::builder()
        .executor_args(["--warm-pool-size", "0"])
        .executor_config_toml("max_connections = 8")
        .start();
    let pid = svc.executor.pid().expect("the executor runs");
    let fds = || std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    let before = fds();
    let mut idle = Vec::new();
    for _ in 0..100 {
        idle.push(connect(&svc).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = fds();
    assert!(
        during <= before + 8,
        "100 idle connections took {} descriptors (cap 8)",
        during - before
    );
    drop(idle);
    assert_still_serving(&mut svc).await;
}

/// The review's F7: a peer that sends a job and never reads its frames is taken
/// for gone after the send timeout: the job is killed, nothing of it is left, and
/// the executor's memory does not hold its output.
#[tokio::test]
async fn a_peer_that_never_reads_loses_its_job() {
    require_root!();
    let mut svc = Service::start();
    let spec = JobSpec {
        request_id: "deaf".into(),
        code: "import sys, time\nsys.stdout.write('x' * (1 << 20))\nsys.stdout.flush()\ntime.sleep(60)".into(),
        stdin: None,
        timeout_ms: Some(90_000),
        limits: Default::default(),
        files: vec![],
        collect_files: false,
        network: None,
    };
    let mut stream = connect(&svc).await;
    stream
        .write_all(&frame(&Request::Hello(Hello::CURRENT)))
        .await
        .expect("send hello");
    stream
        .write_all(&frame(&Request::Run(spec)))
        .await
        .expect("send the job");
    let gave_up = pysandbox_tests::wait_until_async(Duration::from_secs(40), || {
        svc.executor
            .log()
            .contains("the peer stopped taking frames; job killed")
    })
    .await;
    assert!(
        gave_up,
        "the executor kept sending to a peer that never reads"
    );
    let empty = pysandbox_tests::wait_until_async(Duration::from_secs(10), || {
        svc.executor.jail_processes().is_empty()
    })
    .await;
    assert!(empty, "the deaf peer's job is still running");
    drop(stream);
    assert_still_serving(&mut svc).await;
}
