//! The frontend's front door against unauthenticated clients: what they can write
//! into its log, and how many connections they can hold. Only the frontend runs;
//! its executor socket has nobody behind it.

use std::io::{ErrorKind, Read};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use pysandbox_tests::{
    parse_raw_response, raw_exchange, require_root, wait_until, Frontend, Reply,
};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A frontend alone, with `env` added.
fn frontend(env: &[(&str, &str)]) -> (tempfile::TempDir, Frontend) {
    let dir = tempfile::tempdir().expect("cannot make a temp dir");
    let socket: PathBuf = dir.path().join("nobody.sock");
    let frontend = Frontend::start_on_socket(&socket, env);
    (dir, frontend)
}

/// C1 controls (CSI, OSC), NEL and U+2028 in a request path reach the log escaped,
/// and a 60 KB path makes a short line (security-2 F5).
#[tokio::test]
async fn request_paths_are_logged_escaped_and_capped() {
    require_root!();
    let (_dir, frontend) = frontend(&[]);
    let forged = "GET /csi\u{9b}31mRED\u{9b}0m/osc\u{9d}0;pwned\u{9c}/nel\u{85}FAKE/ls\u{2028}LINE/rlo\u{202e}txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let reply = raw_exchange(frontend.addr(), forged.as_bytes())
        .await
        .unwrap();
    assert_eq!(reply.status, 404);
    let long = format!(
        "GET /long{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "a".repeat(60_000)
    );
    let reply = raw_exchange(frontend.addr(), long.as_bytes())
        .await
        .unwrap();
    assert_eq!(reply.status, 404);

    let escaped = "path=/csi\\u{9b}31mRED\\u{9b}0m/osc\\u{9d}0;pwned\\u{9c}/nel\\u{85}FAKE/ls\\u{2028}LINE/rlo\\u{202e}txt";
    let log = frontend.log();
    assert!(
        wait_until(Duration::from_secs(10), || log.contains(escaped)
            && log.contains("/longaaaa")),
        "{}",
        log.text()
    );
    for line in log.lines() {
        assert!(
            !line.contains(['\u{9b}', '\u{9d}', '\u{9c}', '\u{85}', '\u{2028}', '\u{202e}']),
            "raw control in the log: {line:?}"
        );
        assert!(line.len() < 1000, "a log line of {} bytes", line.len());
    }
    assert!(log.contains("…[59805 more chars]"), "{}", log.text());
}

/// Sends `request` from the local address `from` and reads the whole answer, within
/// a generous deadline (a request stuck in the listen backlog fails here).
async fn exchange_from(from: [u8; 4], to: SocketAddr, request: &str) -> Reply {
    let work = async {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(IpAddr::from(from), 0))?;
        let mut stream = socket.connect(to).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = tokio::time::timeout(Duration::from_secs(30), work)
        .await
        .expect("no answer within 30 s")
        .expect("the exchange failed");
    parse_raw_response(&answer).expect("not an HTTP response")
}

const HEALTH: &str = "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

/// `count` connections from `from`, each having sent one byte of a request head;
/// non-blocking.
async fn idle_connections(from: [u8; 4], to: SocketAddr, count: usize) -> Vec<TcpStream> {
    let mut streams = Vec::new();
    for _ in 0..count {
        let socket = tokio::net::TcpSocket::new_v4().expect("cannot make a socket");
        socket
            .bind(SocketAddr::new(IpAddr::from(from), 0))
            .expect("cannot bind the client address");
        let mut stream = socket.connect(to).await.expect("cannot connect");
        stream.write_all(b"G").await.expect("cannot write");
        streams.push(stream.into_std().expect("cannot take the socket"));
    }
    streams
}

/// Whether the server closed the connection (EOF or reset).
fn closed(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match (&*stream).read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != ErrorKind::WouldBlock,
    }
}

/// One client holding more connections than its cap gets the excess closed at
/// once, and another client's `/health` still succeeds (review L6).
#[tokio::test]
async fn a_client_over_its_connection_cap_is_closed_and_health_answers() {
    require_root!();
    let (_dir, frontend) = frontend(&[
        ("MAX_CONNECTIONS_PER_IP", "8"),
        ("HEADER_TIMEOUT_MS", "120000"),
    ]);
    let flood = idle_connections([127, 0, 0, 1], frontend.addr(), 20).await;
    let mut closed_ones = Vec::new();
    assert!(
        wait_until(Duration::from_secs(20), || {
            for (i, stream) in flood.iter().enumerate() {
                if !closed_ones.contains(&i) && closed(stream) {
                    closed_ones.push(i);
                }
            }
            closed_ones.len() >= 12
        }),
        "only {} of the 12 excess connections were closed",
        closed_ones.len()
    );
    let health = exchange_from([127, 0, 0, 2], frontend.addr(), HEALTH).await;
    assert_eq!(health.status, 200, "{}", health.text);
    assert_eq!(health.json["ok"], true);
    let still_open = (0..flood.len())
        .filter(|i| !closed_ones.contains(i) && !closed(&flood[*i]))
        .count();
    assert_eq!(still_open, 8, "the client keeps exactly its cap");
}

/// With every ordinary slot held (by clients within their cap), `/health` still
/// gets through on the reserve, which serves nothing else.
#[tokio::test]
async fn health_gets_through_when_every_connection_slot_is_held() {
    require_root!();
    let (_dir, frontend) = frontend(&[
        ("MAX_CONNECTIONS", "4"),
        ("MAX_CONNECTIONS_PER_IP", "2"),
        ("HEADER_TIMEOUT_MS", "120000"),
    ]);
    let mut held = idle_connections([127, 0, 0, 3], frontend.addr(), 2).await;
    held.extend(idle_connections([127, 0, 0, 4], frontend.addr(), 2).await);
    let health = exchange_from([127, 0, 0, 2], frontend.addr(), HEALTH).await;
    assert_eq!(health.status, 200, "{}", health.text);
    assert_eq!(health.json["ok"], true);
    let other = exchange_from(
        [127, 0, 0, 2],
        frontend.addr(),
        "GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(other.status, 503);
    assert_eq!(other.headers["retry-after"], "1");
    assert_eq!(
        other.json,
        json!({"error": "too many open connections; retry later"})
    );
}
