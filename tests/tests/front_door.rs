//! The frontend's front door against unauthenticated clients: what they can write
//! into its log, and how many connections they can hold. Only the frontend runs;
//! its executor socket has nobody behind it.

use std::path::PathBuf;
use std::time::Duration;

use pysandbox_tests::{raw_exchange, require_root, wait_until, Frontend};

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
