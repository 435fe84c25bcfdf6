//! Network policy: the egress proxy, its allow and deny lists, and the empty
//! network namespace of a job that may not use the network.
//!
//! An [`Origin`] on the host (listening on every address) stands in for the
//! internet; `[network.resolve]` maps the test names to 127.0.0.1 (and two to
//! private and metadata addresses), and `allow_private_cidrs = ["127.0.0.0/8"]` lets
//! the proxy reach the origin on loopback.

use std::path::Path;
use std::time::Duration;

use pysandbox_tests::{
    assert_error, host_processes_matching, require_root, stdout_json, wait_until_async, Origin,
    Service, PY_OUTCOME,
};
use serde_json::{json, Value};

/// Python helpers every probe starts with: fetch over plain HTTP with urllib, fetch
/// through a CONNECT tunnel with http.client, or send raw bytes to the proxy.
const HELPERS: &str = r#"
import http.client, json, os, socket, sys, time, urllib.error, urllib.request

def via_http(url):
    try:
        with urllib.request.urlopen(url, timeout=20) as r:
            return [r.status, r.read().decode()]
    except urllib.error.HTTPError as e:
        return [e.code, e.read().decode()]
    except Exception as e:
        return ["error", repr(e)]

def via_connect(host, port, path="/tunnel"):
    c = http.client.HTTPConnection("127.0.0.1", 3128, timeout=20)
    c.set_tunnel(host, port)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return [r.status, r.read().decode()]
    except OSError as e:
        return ["error", str(e)]
    finally:
        c.close()

def raw(data):
    s = socket.create_connection(("127.0.0.1", 3128), timeout=20)
    s.sendall(data.encode())
    out = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        out += chunk
    s.close()
    return out.decode(errors="replace")
"#;

/// The executor's `[network]` config for an origin on `port`.
fn network_config(port: u16, extra: &str) -> String {
    format!(
        r#"
[network]
allowed_domains = ["allowed.test", "*.wild.test", "private.test", "metadata.test"]
denied_domains = ["blocked.wild.test"]
allowed_ports = [80, 443, {port}]
allow_private_cidrs = ["127.0.0.0/8"]
{extra}

[network.resolve]
"allowed.test" = "127.0.0.1"
"a.wild.test" = "127.0.0.1"
"blocked.wild.test" = "127.0.0.1"
"wild.test" = "127.0.0.1"
"evil-allowed.test" = "127.0.0.1"
"allowed.test.evil.com" = "127.0.0.1"
"unlisted.test" = "127.0.0.1"
"private.test" = "10.0.0.1"
"metadata.test" = "169.254.169.254"
"#
    )
}

fn start(origin: &Origin, extra: &str) -> Service {
    Service::builder()
        .executor_config_toml(&network_config(origin.port(), extra))
        .start()
}

/// Runs `code` (after the helpers, with `PORT` set) with `network`, asserts it
/// exited 0, and returns the whole result.
async fn probe(svc: &Service, origin: &Origin, network: Value, code: &str) -> Value {
    let code = format!("{HELPERS}\nPORT = {}\n{code}", origin.port());
    let out = svc.run(json!({ "code": code, "network": network })).await;
    assert_eq!(out["exitCode"], 0, "the probe failed: {out:#}");
    out
}

fn stderr_of(out: &Value) -> &str {
    out["stderr"].as_str().unwrap_or_default()
}

/// Seed clients send no `network` field: they get the configured domains.
#[tokio::test]
async fn a_request_without_a_network_field_gets_the_configured_domains() {
    require_root!();
    let origin = Origin::start();
    let svc = start(&origin, "");
    let code = format!(
        "{HELPERS}\nprint(json.dumps(via_http('http://allowed.test:{}/seed')))",
        origin.port()
    );
    let out = svc.run(json!({ "code": code })).await;
    assert_eq!(
        stdout_json(&out),
        json!([
            200,
            format!(
                "origin saw GET /seed HTTP/1.1 host allowed.test:{}",
                origin.port()
            )
        ]),
        "{out:#}"
    );
}

#[tokio::test]
async fn allowed_names_are_fetched_over_plain_http_and_through_connect() {
    require_root!();
    let origin = Origin::start();
    let svc = start(&origin, "");
    let port = origin.port();
    let code = r#"
env = {k: os.environ.get(k) for k in ["HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"]}
print(json.dumps({
    "plain": via_http("http://allowed.test:%d/plain?q=1" % PORT),
    "tunnel": via_connect("a.wild.test", PORT),
    "env": env,
}))
"#;
    let out = probe(&svc, &origin, json!({}), code).await;
    let seen = stdout_json(&out);
    assert_eq!(
        seen["plain"],
        json!([
            200,
            format!("origin saw GET /plain?q=1 HTTP/1.1 host allowed.test:{port}")
        ]),
        "{out:#}"
    );
    assert_eq!(
        seen["tunnel"],
        json!([
            200,
            format!("origin saw GET /tunnel HTTP/1.1 host a.wild.test:{port}")
        ]),
        "{out:#}"
    );
    let proxy = "http://127.0.0.1:3128";
    assert_eq!(
        seen["env"],
        json!({
            "HTTP_PROXY": proxy, "http_proxy": proxy, "HTTPS_PROXY": proxy, "https_proxy": proxy,
            "ALL_PROXY": proxy, "all_proxy": proxy, "NO_PROXY": "", "no_proxy": "",
        })
    );
    assert_eq!(
        (stderr_of(&out), &out["violations"]),
        ("", &json!([])),
        "{out:#}"
    );
    assert_eq!(origin.seen().len(), 2, "{:?}", origin.seen());
}

/// `(method, target, reason)` triples as `violations` lists them.
fn violations(list: &[(&str, String, &str)]) -> Value {
    list.iter()
        .map(|(method, target, reason)| json!({"method": method, "target": target, "reason": reason}))
        .collect()
}

fn blocked_lines(list: &[(&str, String, &str)]) -> String {
    list.iter()
        .map(|(method, target, reason)| {
            format!("[sandbox] network: blocked {method} {target} ({reason})\n")
        })
        .collect()
}

#[tokio::test]
async fn refused_targets_are_403_with_the_reason_in_stderr_and_violations() {
    require_root!();
    let origin = Origin::start();
    let svc = start(&origin, "");
    let port = origin.port();
    let code = r#"
results = [
    via_http("http://blocked.wild.test:%d/" % PORT),
    via_http("http://unlisted.test:%d/" % PORT),
    via_http("http://evil-allowed.test:%d/" % PORT),
    via_http("http://allowed.test.evil.com:%d/" % PORT),
    via_connect("wild.test", PORT),
    via_http("http://127.0.0.1:%d/" % PORT),
    raw("CONNECT 2130706433:%d HTTP/1.1\r\n\r\n" % PORT),
    raw("CONNECT 0177.1:%d HTTP/1.1\r\n\r\n" % PORT),
    raw("CONNECT 0x7f.1:%d HTTP/1.1\r\n\r\n" % PORT),
    raw("CONNECT [::ffff:127.0.0.1]:%d HTTP/1.1\r\n\r\n" % PORT),
    raw("CONNECT [::1]:%d HTTP/1.1\r\n\r\n" % PORT),
    via_http("http://allowed.test:8/"),
    via_http("http://private.test:%d/" % PORT),
    via_connect("metadata.test", 80),
    raw("GET http://allowed.test:%d/ HTTP/1.1\r\nHost: unlisted.test:%d\r\n\r\n" % (PORT, PORT)),
    raw("GET https://allowed.test/ HTTP/1.1\r\nHost: allowed.test\r\n\r\n"),
    raw("CONNECT allowed.test:%d:1 HTTP/1.1\r\n\r\n" % PORT),
]
print(json.dumps(results))
"#;
    let out = probe(&svc, &origin, json!({}), code).await;
    let results = stdout_json(&out);
    let lo = format!("127.0.0.1:{port}");
    let ip_literal = "IP address not in allowed domains";
    let not_allowed = "not in allowed domains";
    let expected = [
        (
            "GET",
            format!("blocked.wild.test:{port}"),
            "in denied domains",
        ),
        ("GET", format!("unlisted.test:{port}"), not_allowed),
        ("GET", format!("evil-allowed.test:{port}"), not_allowed),
        ("GET", format!("allowed.test.evil.com:{port}"), not_allowed),
        ("CONNECT", format!("wild.test:{port}"), not_allowed),
        ("GET", lo.clone(), ip_literal),
        ("CONNECT", lo.clone(), ip_literal),
        ("CONNECT", lo.clone(), ip_literal),
        ("CONNECT", lo.clone(), ip_literal),
        ("CONNECT", lo.clone(), ip_literal),
        ("CONNECT", format!("[::1]:{port}"), ip_literal),
        ("GET", "allowed.test:8".into(), "port 8 not allowed"),
        (
            "GET",
            format!("private.test:{port}"),
            "resolves to 10.0.0.1, a private address",
        ),
        (
            "CONNECT",
            "metadata.test:80".into(),
            "resolves to 169.254.169.254, a cloud metadata address",
        ),
        (
            "GET",
            format!("allowed.test:{port}"),
            "Host header does not match the request target",
        ),
        (
            "GET",
            "https://allowed.test/".into(),
            "only http:// URLs and CONNECT are supported",
        ),
        (
            "CONNECT",
            format!("allowed.test:{port}:1"),
            "malformed target: invalid port",
        ),
    ];
    let results = results.as_array().cloned().unwrap_or_default();
    assert_eq!(results.len(), expected.len(), "{out:#}");
    for (result, (method, target, reason)) in results.iter().zip(&expected) {
        let text = result.to_string();
        assert!(text.contains("403"), "{method} {target}: not a 403: {text}");
        // http.client reports a refused tunnel as "Tunnel connection failed: 403";
        // every other client sees the reason in the body.
        if !text.contains("Tunnel connection failed") {
            let line = format!("pysandbox: blocked {method} {target} ({reason})");
            assert!(text.contains(&line), "{line:?} missing from {text}");
        }
    }
    assert_eq!(stderr_of(&out), blocked_lines(&expected), "{out:#}");
    assert_eq!(out["violations"], violations(&expected), "{out:#}");
    assert_eq!(
        origin.seen(),
        Vec::<String>::new(),
        "a refused request got through"
    );
}

#[tokio::test]
async fn a_keep_alive_connection_cannot_switch_hosts() {
    require_root!();
    let origin = Origin::start();
    let svc = start(&origin, "");
    let port = origin.port();
    let code = r#"
two = ("GET http://allowed.test:%d/first HTTP/1.1\r\nHost: allowed.test:%d\r\n\r\n"
       "GET http://unlisted.test:%d/second HTTP/1.1\r\nHost: unlisted.test:%d\r\n\r\n") % (PORT, PORT, PORT, PORT)
pipelined = raw(two)
c = http.client.HTTPConnection("127.0.0.1", 3128, timeout=20)
c.request("GET", "http://allowed.test:%d/third" % PORT, headers={"Host": "allowed.test:%d" % PORT})
r = c.getresponse()
first = [r.status, r.getheader("Connection"), r.read().decode()]
# http.client reconnects, since the proxy said Connection: close: the next request
# is checked afresh.
c.request("GET", "http://unlisted.test:%d/fourth" % PORT, headers={"Host": "unlisted.test:%d" % PORT})
r = c.getresponse()
second = [r.status, r.read().decode()]
print(json.dumps({"pipelined": pipelined, "first": first, "second": second}))
"#;
    let out = probe(&svc, &origin, json!({}), code).await;
    let seen = stdout_json(&out);
    let pipelined = seen["pipelined"].as_str().unwrap_or_default();
    // One response, the first request's; the second was never read.
    assert!(pipelined.starts_with("HTTP/1.1 200 OK\r\n"), "{pipelined}");
    assert!(
        pipelined.contains("\r\nConnection: close\r\n"),
        "{pipelined}"
    );
    assert!(
        pipelined.ends_with(
            "/first HTTP/1.1 host allowed.test:%d"
                .replace("%d", &port.to_string())
                .as_str()
        ),
        "{pipelined}"
    );
    assert_eq!(
        (&seen["first"][0], &seen["first"][1]),
        (&json!(200), &json!("close")),
        "{out:#}"
    );
    assert_eq!(seen["second"][0], 403, "{out:#}");
    let refused = [(
        "GET",
        format!("unlisted.test:{port}"),
        "not in allowed domains",
    )];
    assert_eq!(out["violations"], violations(&refused), "{out:#}");
    let seen_paths: Vec<String> = origin
        .seen()
        .iter()
        .map(|s| s.split(' ').nth(1).unwrap_or_default().to_owned())
        .collect();
    assert_eq!(seen_paths, ["/first", "/third"]);
}

#[tokio::test]
async fn a_request_may_narrow_the_allowed_domains_but_not_widen_them() {
    require_root!();
    let origin = Origin::start();
    let svc = start(&origin, "");
    let port = origin.port();
    let code = r#"
print(json.dumps([via_http("http://allowed.test:%d/" % PORT), via_connect("a.wild.test", PORT)]))
"#;
    let out = probe(
        &svc,
        &origin,
        json!({"allowedDomains": ["Allowed.Test."]}),
        code,
    )
    .await;
    let results = stdout_json(&out);
    assert_eq!(results[0][0], 200, "{out:#}");
    assert!(results[1].to_string().contains("403"), "{out:#}");
    let refused = [(
        "CONNECT",
        format!("a.wild.test:{port}"),
        "not in allowed domains",
    )];
    assert_eq!(out["violations"], violations(&refused), "{out:#}");

    let out = probe(
        &svc,
        &origin,
        json!({"allowedDomains": ["*.wild.test"]}),
        code,
    )
    .await;
    let results = stdout_json(&out);
    assert_eq!(results[0][0], 403, "{out:#}");
    assert_eq!(results[1][0], 200, "{out:#}");

    let field = "network.allowedDomains";
    for (domains, reason) in [
        (json!(["allowed.test", "evil.com"]), "evil.com is not allowed by the executor's configuration"),
        (json!(["wild.test"]), "wild.test is not allowed by the executor's configuration"),
        (json!(["*.test"]), "*.test is not a valid domain pattern: a wildcard must name a domain of at least two labels, as in *.example.com"),
        (json!(["127.0.0.1"]), "127.0.0.1 is not allowed by the executor's configuration"),
        (json!(["allowed.test:80"]), "allowed.test:80 is not a valid domain pattern: has a port; ports are allowed with allowed_ports"),
        (json!("allowed.test"), "must be an array of strings"),
        (json!([7]), "must be an array of strings"),
    ] {
        let body = json!({"code": "print(1)", "network": {"allowedDomains": domains}});
        let reply = svc.post_execute(&body).await;
        assert_error(&reply, 400, json!({"error": format!("{field}: {reason}"), "field": field}));
    }
    let reply = svc
        .post_execute(&json!({"code": "1", "network": "yes"}))
        .await;
    assert_error(
        &reply,
        400,
        json!({"error": "network: must be an object", "field": "network"}),
    );

    // An empty list asks for no network at all.
    let code = r#"
try:
    socket.create_connection(("127.0.0.1", 3128), timeout=5).close()
    relay = "connected"
except OSError as e:
    relay = type(e).__name__
print(json.dumps({"proxy": os.environ.get("HTTP_PROXY"), "relay": relay}))
"#;
    let out = probe(&svc, &origin, json!({"allowedDomains": []}), code).await;
    assert_eq!(
        stdout_json(&out),
        // Landlock allows TCP connects only to the relay's port, and only in a jail
        // that has a relay: here the connect is refused before it is tried.
        json!({"proxy": null, "relay": "PermissionError"}),
        "{out:#}"
    );
}

/// This host's own addresses (IPv4 from the routing table's local entries, global
/// IPv6 from `if_inet6`), loopback included.
fn host_addresses() -> Vec<String> {
    let mut addresses = Vec::new();
    let trie = std::fs::read_to_string("/proc/net/fib_trie").unwrap_or_default();
    let mut last = "";
    for line in trie.lines() {
        if let Some(addr) = line.trim().strip_prefix("|-- ") {
            last = addr;
        } else if line.contains("/32 host LOCAL") && !addresses.iter().any(|a| a == last) {
            addresses.push(last.to_owned());
        }
    }
    let inet6 = std::fs::read_to_string("/proc/net/if_inet6").unwrap_or_default();
    for line in inet6.lines() {
        let Some(hex) = line.split_whitespace().next() else {
            continue;
        };
        let Ok(bits) = u128::from_str_radix(hex, 16) else {
            continue;
        };
        let v6 = std::net::Ipv6Addr::from(bits);
        // Link-local ones need a scope id to mean anything.
        if v6.segments()[0] & 0xffc0 != 0xfe80 {
            addresses.push(v6.to_string());
        }
    }
    addresses
}

#[tokio::test]
async fn without_network_a_job_reaches_nothing_and_has_no_dns() {
    require_root!();
    use std::os::linux::net::SocketAddrExt;
    let origin = Origin::start();
    // No allow list in the configuration: no network for any job.
    let svc = Service::start();
    let abstract_name = format!("pysandbox-test-{}", pysandbox_tests::random_hex(8));
    let abstract_addr = std::os::unix::net::SocketAddr::from_abstract_name(&abstract_name)
        .expect("abstract address");
    let abstract_listener =
        std::os::unix::net::UnixListener::bind_addr(&abstract_addr).expect("bind abstract");
    abstract_listener
        .set_nonblocking(true)
        .expect("nonblocking");
    let addresses = host_addresses();
    assert!(addresses.iter().any(|a| a == "127.0.0.1"), "{addresses:?}");
    let code = format!(
        r#"
import errno, json, os, socket
PORT = {port}
def attempt(family, addr):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect(addr)
        return "connected"
    except OSError as e:
        return errno.errorcode.get(e.errno, type(e).__name__)
    finally:
        s.close()
def lookup(name):
    try:
        return "resolved to %s" % socket.getaddrinfo(name, 80)[0][4][0]
    except socket.gaierror as e:
        return "gaierror"
out = {{
    "loopback": attempt(socket.AF_INET, ("127.0.0.1", PORT)),
    "metadata": attempt(socket.AF_INET, ("169.254.169.254", 80)),
    "abstract": attempt(socket.AF_UNIX, "\0" + {abstract_name:?}),
    "dns": lookup("example.com"),
    "dns_configured": lookup("allowed.test"),
    "proxy_env": [k for k in os.environ if k.lower().endswith("_proxy")],
    "proxy_socket": os.path.exists("/run/pysandbox/proxy.sock"),
}}
for a in {addresses:?}:
    out["host " + a] = attempt(socket.AF_INET6 if ":" in a else socket.AF_INET, (a, PORT))
print(json.dumps(out))
"#,
        port = origin.port(),
    );
    let out = svc.run(json!({ "code": code })).await;
    assert_eq!(out["exitCode"], 0, "{out:#}");
    let seen = stdout_json(&out);
    // Landlock answers TCP first (no connect right: EACCES); the abstract name does
    // not exist in the job's network namespace (ECONNREFUSED) before landlock's
    // scope would be asked. `layers.rs` shows each layer refusing alone.
    let refusal = |what: &str| match what {
        "loopback" | "metadata" => Some("EACCES"),
        "abstract" => Some("ECONNREFUSED"),
        host if host.starts_with("host ") => Some("EACCES"),
        _ => None,
    };
    for (what, result) in seen.as_object().into_iter().flatten() {
        if let Some(errno) = refusal(what) {
            assert_eq!(result, errno, "{what}: {seen:#}");
        }
    }
    assert_eq!(seen["dns"], "gaierror", "{seen:#}");
    assert_eq!(seen["dns_configured"], "gaierror", "{seen:#}");
    assert_eq!(seen["proxy_env"], json!([]), "{seen:#}");
    assert_eq!(seen["proxy_socket"], json!(false), "{seen:#}");
    assert_eq!(out["violations"], json!([]), "{out:#}");
    assert!(origin.seen().is_empty(), "{:?}", origin.seen());
    assert!(
        abstract_listener.accept().is_err(),
        "the host's abstract socket got a connection"
    );
}

/// Whether `pid` descends from `ancestor` (by the parent chain in /proc).
fn descends_from(pid: u32, ancestor: u32) -> bool {
    let mut current = pid;
    for _ in 0..64 {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{current}/stat")) else {
            return false;
        };
        // The command name may hold spaces and parentheses: fields follow the last ')'.
        let after = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .unwrap_or_default();
        let Some(parent) = after.split_whitespace().nth(1).and_then(|p| p.parse().ok()) else {
            return false;
        };
        if parent == ancestor {
            return true;
        }
        if parent <= 1 {
            return false;
        }
        current = parent;
    }
    false
}

/// The socat relays of this executor's jails.
fn relays_of(svc: &Service) -> Vec<u32> {
    let executor = svc.executor.pid().unwrap_or_default();
    host_processes_matching("UNIX-CONNECT:/run/pysandbox/proxy.sock")
        .into_iter()
        .filter(|&pid| descends_from(pid, executor))
        .collect()
}

/// Proxy socket dirs in the jobs dir.
fn proxy_dirs(svc: &Service) -> Vec<String> {
    std::fs::read_dir(svc.executor.state_dir().join("jobs"))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.ends_with(".proxy"))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn the_proxy_socket_and_socat_are_gone_after_the_job() {
    require_root!();
    let origin = Origin::start();
    let svc = start(&origin, "");
    // Once ending normally, once killed at its wall-clock limit.
    for (timeout_ms, sleep_s) in [(30_000, 2), (2_000, 60)] {
        let body = json!({
            "code": format!("import time\ntime.sleep({sleep_s})"),
            "network": {},
            "timeoutMs": timeout_ms,
        });
        let mut during = (Vec::new(), Vec::new());
        let watch = async {
            wait_until_async(Duration::from_secs(20), || {
                during = (relays_of(&svc), proxy_dirs(&svc));
                !during.0.is_empty() && !during.1.is_empty()
            })
            .await
        };
        let (out, seen) = tokio::join!(svc.run(body), watch);
        assert!(seen, "no socat or proxy dir while the job ran: {during:?}");
        let socket = svc
            .executor
            .state_dir()
            .join("jobs")
            .join(&during.1[0])
            .join("proxy.sock");
        assert_eq!(out["timedOut"], timeout_ms < 30_000, "{out:#}");
        let gone = wait_until_async(Duration::from_secs(5), || {
            during
                .0
                .iter()
                .all(|pid| !Path::new(&format!("/proc/{pid}")).exists())
                && relays_of(&svc).is_empty()
        })
        .await;
        assert!(gone, "socat outlived its job: {:?}", relays_of(&svc));
        assert!(!socket.exists(), "{} outlived its job", socket.display());
        assert_eq!(proxy_dirs(&svc), Vec::<String>::new());
    }
}

/// The executor killed with SIGKILL mid-job: socat dies with the jail at once, and
/// the proxy socket left on disk is swept when the executor starts again.
#[tokio::test]
async fn executor_killed_mid_job_leaves_no_socat_and_no_proxy_socket_once_restarted() {
    require_root!();
    let origin = Origin::start();
    let mut svc = start(&origin, "");
    let executor = nix::unistd::Pid::from_raw(
        i32::try_from(svc.executor.pid().expect("the executor runs")).expect("pid fits"),
    );
    let body = json!({ "code": "import time\ntime.sleep(60)", "network": {}, "timeoutMs": 60000 });
    let mut relays = Vec::new();
    let crash = async {
        let seen = wait_until_async(Duration::from_secs(20), || {
            relays = relays_of(&svc);
            !relays.is_empty() && !proxy_dirs(&svc).is_empty()
        })
        .await;
        nix::sys::signal::kill(executor, nix::sys::signal::Signal::SIGKILL)
            .expect("cannot kill the executor");
        seen
    };
    let (reply, seen) = tokio::join!(svc.post_execute(&body), crash);
    assert!(seen, "no socat or proxy dir while the job ran");
    assert_eq!(reply.status, 503, "{}", reply.text);
    let gone = wait_until_async(Duration::from_secs(5), || {
        relays
            .iter()
            .all(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    })
    .await;
    assert!(gone, "socat {relays:?} outlived the executor");
    svc.executor.kill();
    svc.executor.restart();
    assert_eq!(proxy_dirs(&svc), Vec::<String>::new());
    let out = probe(
        &svc,
        &origin,
        json!({}),
        "print(json.dumps(via_http('http://allowed.test:%d/' % PORT)[0]))",
    )
    .await;
    assert_eq!(out["stdout"], "200\n", "{out:#}");
}

#[tokio::test]
async fn connections_and_bytes_are_capped_per_job() {
    require_root!();
    let origin = Origin::start();
    let svc = start(&origin, "max_connections = 1\nmax_bytes = 200000");
    let port = origin.port();
    let code = r#"
held = socket.create_connection(("127.0.0.1", 3128), timeout=20)
held.sendall(b"CONNECT allowed.test:%d HTTP/1.1\r\n\r\n" % PORT)
established = held.recv(100).decode()
second = via_connect("a.wild.test", PORT)
held.close()
# The slot comes back once the proxy has seen the close: wait for it, counting
# the refusals meanwhile (each is one more violation).
retries = 0
while via_connect("a.wild.test", PORT)[0] != 200:
    retries += 1
    time.sleep(0.02)
# The tunnel that got through holds the slot until the proxy sees its close too.
big_retries = 0
while (big := via_http("http://allowed.test:%d/big/1000000" % PORT))[0] == 403:
    big_retries += 1
    time.sleep(0.02)
after = via_http("http://allowed.test:%d/small" % PORT)
print(json.dumps({"established": established, "second": second, "retries": retries, "big_retries": big_retries, "big": big[0], "after": after[0]}))
"#;
    let out = probe(&svc, &origin, json!({}), code).await;
    let seen = stdout_json(&out);
    assert!(
        seen["established"]
            .as_str()
            .unwrap_or_default()
            .starts_with("HTTP/1.1 200"),
        "{out:#}"
    );
    assert!(seen["second"].to_string().contains("403"), "{out:#}");
    assert_eq!(seen["big"], "error", "the big download was cut: {out:#}");
    assert_eq!(seen["after"], 403, "{out:#}");
    let bytes = "byte limit of 200000 bytes per job reached";
    let refused = (
        "CONNECT",
        format!("a.wild.test:{port}"),
        "too many concurrent connections (limit 1)",
    );
    let retries = seen["retries"].as_u64().expect("the retry count") as usize;
    let big_retries = seen["big_retries"].as_u64().expect("the retry count") as usize;
    let mut expected = vec![refused; 1 + retries];
    let busy = (
        "GET",
        format!("allowed.test:{port}"),
        "too many concurrent connections (limit 1)",
    );
    expected.extend(vec![busy; big_retries]);
    expected.push(("GET", format!("allowed.test:{port}"), bytes));
    expected.push(("GET", format!("allowed.test:{port}"), bytes));
    assert_eq!(out["violations"], violations(&expected), "{out:#}");
    assert_eq!(stderr_of(&out), blocked_lines(&expected), "{out:#}");
}

/// Fifty requests in a row by each route all get through, each answered by the
/// origin: a series of failed attempts (a 502, a refused tunnel) cannot hide in an
/// average. How long they take is a benchmark's business, not a test's.
#[tokio::test]
async fn fifty_proxied_requests_in_a_row_all_get_through() {
    require_root!();
    let origin = Origin::start();
    let svc = start(&origin, "");
    let port = origin.port();
    let code = "plain = [via_http('http://allowed.test:%d/' % PORT) for _ in range(50)]\n\
                tunnel = [via_connect('allowed.test', PORT, '/') for _ in range(50)]\n\
                print(json.dumps({'plain': sorted(set(map(json.dumps, plain))), 'tunnel': sorted(set(map(json.dumps, tunnel)))}))";
    let out = probe(&svc, &origin, json!({}), code).await;
    let one = json!([
        200,
        format!("origin saw GET / HTTP/1.1 host allowed.test:{port}")
    ])
    .to_string();
    // Every answer of a route is the same one (after `json.dumps`, Python's spacing).
    let one = one.replace(",", ", ");
    assert_eq!(
        stdout_json(&out),
        json!({ "plain": [one], "tunnel": [one] }),
        "{out:#}"
    );
    assert_eq!(out["violations"], json!([]), "{out:#}");
    assert_eq!(origin.seen().len(), 100, "the origin saw every request");
}

#[test]
fn malformed_network_config_is_refused_at_startup_naming_the_entry() {
    require_root!();
    let dir = tempfile::tempdir().expect("temp dir");
    for (entry, why) in [
        ("*", "* may only be the whole first label"),
        (
            "*.com",
            "a wildcard must name a domain of at least two labels",
        ),
        ("https://example.com/", "looks like a URL"),
        ("example.com:443", "has a port"),
        ("exa mple.com", "not a valid domain name"),
        ("ex..com", "empty label"),
    ] {
        let config = dir.path().join("executor.toml");
        std::fs::write(
            &config,
            format!(
                "socket = \"{0}/executor.sock\"\nstate_dir = \"{0}/state\"\n\
                 [network]\nallowed_domains = [\"ok.example\", {entry:?}]\n",
                dir.path().display()
            ),
        )
        .expect("write the config");
        let out = std::process::Command::new(&pysandbox_tests::binaries().executor)
            .arg("--config")
            .arg(&config)
            .env_clear()
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run the executor");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{entry}: {stderr}");
        let named = format!("network.allowed_domains: {entry:?}: {why}");
        assert!(stderr.contains(&named), "{named:?} missing from {stderr}");
    }
}

/// Security review L2: a job connects to its proxy's socket directly, stalls a
/// CONNECT tunnel to an upstream that never reads, and passes its own stdout and
/// stderr into the socket (`SCM_RIGHTS`). Its result must still come back, whole.
#[tokio::test]
async fn output_pipes_passed_into_the_proxy_do_not_hide_the_result() {
    require_root!();
    let origin = Origin::start();
    // An upstream that accepts and never reads, so the proxy stops reading the
    // tunnel and the passed descriptors stay queued in its socket.
    let stall = std::net::TcpListener::bind(("0.0.0.0", 0)).unwrap();
    let stall_port = stall.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut streams = Vec::new();
        while let Ok((stream, _)) = stall.accept() {
            streams.push(stream);
        }
    });
    let config = network_config(origin.port(), "").replace(
        "allowed_ports = [80, 443,",
        &format!("allowed_ports = [80, 443, {stall_port},"),
    );
    let svc = Service::builder().executor_config_toml(&config).start();
    let code = format!(
        r#"
import array, socket, sys
u = socket.socket(socket.AF_UNIX)
u.connect("/run/pysandbox/proxy.sock")
u.sendall(b"CONNECT allowed.test:{stall_port} HTTP/1.1\r\n\r\n")
print("tunnel:", u.recv(100).decode().splitlines()[0], flush=True)
u.settimeout(1.5)
try:
    while True:
        u.send(b"\0" * 65536)
except socket.timeout:
    pass
u.setblocking(False)
try:
    u.sendmsg([b"Y"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [1, 2]))])
    print("passed", flush=True)
except OSError as e:
    print("refused", e.errno, flush=True)
print("to stderr", file=sys.stderr, flush=True)
"#
    );
    let out = svc
        .run(json!({ "code": code, "network": {}, "timeoutMs": 4000 }))
        .await;
    assert_eq!(out["exitCode"], 0, "{out:#}");
    let stdout = out["stdout"].as_str().unwrap_or_default();
    assert!(
        stdout.starts_with("tunnel: HTTP/1.1 200 Connection established\n"),
        "{out:#}"
    );
    assert!(
        stdout.ends_with("passed\n") || stdout.ends_with("refused 1\n"),
        "{out:#}"
    );
    assert_eq!(stderr_of(&out), "to stderr\n", "{out:#}");
}

/// Security review 2, F2 (scaled down): 20 processes of one job each open 100
/// connections to the proxy's socket and hold them idle. The executor's
/// descriptors grow by the per-job cap at most, not by 2,000.
#[tokio::test]
async fn idle_proxy_connections_cannot_use_up_the_executors_descriptors() {
    require_root!();
    let origin = Origin::start();
    let svc = start(&origin, "");
    let pid = svc.executor.pid().expect("the executor's pid");
    let fds = || std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    let code = r#"
import os, socket, time
kids = []
for _ in range(20):
    pid = os.fork()
    if pid == 0:
        held = []
        for _ in range(100):
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect("/run/pysandbox/proxy.sock")
                held.append(s)
            except OSError:
                pass
        time.sleep(4)
        os._exit(0)
    kids.append(pid)
for pid in kids:
    os.waitpid(pid, 0)
print("done")
"#;
    let before = fds();
    let mut peak = before;
    let body = json!({ "code": code, "network": {}, "limits": {"maxProcesses": 64} });
    let run = svc.run(body);
    tokio::pin!(run);
    let out = loop {
        tokio::select! {
            out = &mut run => break out,
            () = tokio::time::sleep(Duration::from_millis(50)) => peak = peak.max(fds()),
        }
    };
    println!("executor descriptors: {before} before the job, {peak} at most during it");
    assert_eq!(out["stdout"], "done\n", "{out:#}");
    assert!(peak <= before + 100, "{before} -> {peak}");
    let refused = out["violations"][0]["reason"].as_str().unwrap_or_default();
    assert_eq!(
        refused, "too many open connections to the proxy (limit 32); this one was closed",
        "{out:#}"
    );
}

/// An allowed name whose address refuses connections: 502 with the cause, for
/// plain HTTP and CONNECT alike, and no violation (the policy allowed it).
#[tokio::test]
async fn an_allowed_but_unreachable_target_is_502_not_a_violation() {
    require_root!();
    // A port nothing listens on (bound, then freed).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("cannot find a free port")
        .port();
    let svc = Service::builder()
        .executor_config_toml(&network_config(port, ""))
        .start();
    let code = format!(
        "{HELPERS}\nprint(json.dumps([via_http('http://allowed.test:{port}/x'), via_connect('allowed.test', {port})]))"
    );
    let out = svc.run(json!({ "code": code, "network": {} })).await;
    assert_eq!(out["exitCode"], 0, "{out:#}");
    let why = "127.0.0.1: Connection refused (os error 111)";
    assert_eq!(
        stdout_json(&out),
        json!([
            [
                502,
                format!("pysandbox: cannot reach allowed.test:{port}: {why}\n")
            ],
            ["error", "Tunnel connection failed: 502 Bad Gateway"],
        ]),
        "{out:#}"
    );
    assert_eq!(
        (stderr_of(&out), &out["violations"]),
        ("", &json!([])),
        "{out:#}"
    );
}

/// The proxy socket: its directory root's and 0711, the socket the sandbox uid's
/// and 0700, so another uid cannot even connect (EACCES); and a peer the kernel
/// lets through anyway (root) is checked by `SO_PEERCRED` and dropped unanswered.
/// The control: the job itself, afterwards, gets through the same socket.
#[tokio::test]
async fn the_proxy_socket_serves_the_sandbox_uid_alone() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    require_root!();
    let origin = Origin::start();
    let svc = start(&origin, "");
    let port = origin.port();
    let code = "while not os.path.exists('/work/go'):\n    time.sleep(0.02)\nprint(json.dumps(via_connect('allowed.test', PORT)))";
    let host = async {
        let mut dirs = Vec::new();
        let found = wait_until_async(Duration::from_secs(30), || {
            dirs = proxy_dirs(&svc);
            !dirs.is_empty()
        })
        .await;
        assert!(found, "no proxy dir while the job ran");
        let jobs = svc.executor.state_dir().join("jobs");
        let dir = jobs.join(&dirs[0]);
        let socket = dir.join("proxy.sock");
        let ready = wait_until_async(Duration::from_secs(10), || socket.exists()).await;
        assert!(ready, "no {}", socket.display());
        let meta = |p: &Path| std::fs::metadata(p).expect("stat the proxy's files");
        let (d, s) = (meta(&dir), meta(&socket));
        assert_eq!(
            (d.uid(), d.permissions().mode() & 0o7777),
            (0, 0o711),
            "{}",
            dir.display()
        );
        let sandbox_uid = nix::unistd::User::from_name(pysandbox_tests::SANDBOX_USER)
            .ok()
            .flatten()
            .expect("the sandbox user exists")
            .uid
            .as_raw();
        assert_eq!(
            (s.uid(), s.permissions().mode() & 0o7777),
            (sandbox_uid, 0o700),
            "{}",
            socket.display()
        );

        // Another uid (the frontend's): the socket's mode stops it.
        let other = tokio::process::Command::new("python3")
            .args([
                "-c",
                "import errno, socket, sys\ns = socket.socket(socket.AF_UNIX)\ntry:\n    s.connect(sys.argv[1])\n    print('connected')\nexcept OSError as e:\n    print(errno.errorcode[e.errno])",
            ])
            .arg(&socket)
            .uid(pysandbox_tests::FRONTEND_UID)
            .gid(pysandbox_tests::FRONTEND_GID)
            .output()
            .await
            .expect("run python3 as the frontend uid");
        assert_eq!(
            String::from_utf8_lossy(&other.stdout),
            "EACCES\n",
            "{other:?}"
        );

        // Root passes the mode; the proxy's peer check drops it without a word.
        let mut stream = tokio::net::UnixStream::connect(&socket)
            .await
            .expect("root connects to the proxy socket");
        let request =
            format!("CONNECT allowed.test:{port} HTTP/1.1\r\nHost: allowed.test:{port}\r\n\r\n");
        let _ = stream.write_all(request.as_bytes()).await;
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer))
            .await
            .expect("the proxy kept a foreign peer's connection open");
        assert!(
            read.is_err() || answer.is_empty(),
            "the proxy answered root: {:?}",
            String::from_utf8_lossy(&answer)
        );
        let logged = wait_until_async(Duration::from_secs(10), || {
            svc.executor
                .log()
                .contains("proxy connection from another uid refused")
        })
        .await;
        assert!(logged, "the refusal was not logged");

        let id = dirs[0].trim_end_matches(".proxy");
        std::fs::write(jobs.join(id).join("work/go"), "").expect("release the job");
    };
    let body = json!({
        "code": format!("{HELPERS}\nPORT = {port}\n{code}"),
        "network": {},
        "timeoutMs": 60000,
    });
    let (out, ()) = tokio::join!(svc.run(body), host);
    assert_eq!(
        stdout_json(&out),
        json!([
            200,
            format!("origin saw GET /tunnel HTTP/1.1 host allowed.test:{port}")
        ]),
        "{out:#}"
    );
    assert_eq!(out["violations"], json!([]), "{out:#}");
}

/// Names go through `[network.resolve]` first and the system resolver otherwise:
/// `localhost` (in every host's `/etc/hosts`, never in the map of the other tests)
/// is looked up and fetched; mapped to a private address, the map wins and the
/// proxy refuses it without asking the system.
#[tokio::test]
async fn names_the_map_lacks_go_to_the_system_resolver_and_the_map_comes_first() {
    require_root!();
    let origin = Origin::start();
    let port = origin.port();
    let config = |resolve: &str| {
        format!(
            "[network]\nallowed_domains = [\"localhost\"]\nallowed_ports = [{port}]\n\
             allow_private_cidrs = [\"127.0.0.0/8\", \"::1/128\"]\n{resolve}"
        )
    };
    let code = format!(
        "{HELPERS}\nprint(json.dumps([via_http('http://localhost:{port}/sys'), via_connect('localhost', {port})]))"
    );
    let fetch = |svc: Service| {
        let code = code.clone();
        async move {
            let out = svc.run(json!({ "code": code, "network": {} })).await;
            assert_eq!(out["exitCode"], 0, "{out:#}");
            out
        }
    };

    let system = Service::builder().executor_config_toml(&config("")).start();
    let out = fetch(system).await;
    assert_eq!(
        stdout_json(&out),
        json!([
            [
                200,
                format!("origin saw GET /sys HTTP/1.1 host localhost:{port}")
            ],
            [
                200,
                format!("origin saw GET /tunnel HTTP/1.1 host localhost:{port}")
            ],
        ]),
        "{out:#}"
    );
    assert_eq!(out["violations"], json!([]), "{out:#}");

    let mapped = Service::builder()
        .executor_config_toml(&config(
            "\n[network.resolve]\n\"localhost\" = \"10.0.0.1\"\n",
        ))
        .start();
    let out = fetch(mapped).await;
    let reason = "resolves to 10.0.0.1, a private address";
    let refused = [
        ("GET", format!("localhost:{port}"), reason),
        ("CONNECT", format!("localhost:{port}"), reason),
    ];
    assert_eq!(out["violations"], violations(&refused), "{out:#}");
    assert_eq!(origin.seen().len(), 2, "{:?}", origin.seen());
}

/// The proxy's socket is bound read-only at `/run/pysandbox`: the job can neither
/// add a file beside it nor remove or replace it, and the proxy still answers.
#[tokio::test]
async fn the_proxy_socket_is_bound_read_only() {
    require_root!();
    let origin = Origin::start();
    let svc = start(&origin, "");
    let code = r#"
def create():
    open("/run/pysandbox/x", "w").close()
print(json.dumps({
    "create": outcome(create),
    "unlink": outcome(lambda: os.unlink("/run/pysandbox/proxy.sock")),
    "rename": outcome(lambda: os.rename("/run/pysandbox/proxy.sock", "/run/pysandbox/y")),
    "chmod": outcome(lambda: os.chmod("/run/pysandbox/proxy.sock", 0o777)),
    "fetch": via_http("http://allowed.test:%d/after" % PORT),
}))
"#;
    let out = probe(&svc, &origin, json!({}), &[PY_OUTCOME, code].concat()).await;
    let port = origin.port();
    assert_eq!(
        stdout_json(&out),
        json!({
            "create": "EROFS",
            "unlink": "EROFS",
            "rename": "EROFS",
            "chmod": "EROFS",
            "fetch": [200, format!("origin saw GET /after HTTP/1.1 host allowed.test:{port}")],
        }),
        "{out:#}"
    );
}

/// The first 100 refusals are listed (in `violations` and one `[sandbox]` line
/// each), the rest counted in one line; a target that does not parse is shown raw,
/// cut at 100 characters.
#[tokio::test]
async fn a_hundred_refusals_are_listed_and_the_rest_counted() {
    require_root!();
    let origin = Origin::start();
    let svc = start(&origin, "");
    let port = origin.port();
    let long = format!("{}:{port}:1", "a".repeat(150));
    let code = format!(
        "{HELPERS}\nraw('CONNECT {long} HTTP/1.1\\r\\n\\r\\n')\n\
         for _ in range(100):\n    raw('CONNECT unlisted.test:{port} HTTP/1.1\\r\\n\\r\\n')\n\
         print('done')"
    );
    let out = svc.run(json!({ "code": code, "network": {} })).await;
    assert_eq!(
        (&out["exitCode"], &out["stdout"]),
        (&json!(0), &json!("done\n")),
        "{out:#}"
    );
    let cut = format!(
        "{}…[{} more chars]",
        "a".repeat(100),
        long.chars().count() - 100
    );
    let mut listed = vec![(
        "CONNECT",
        cut,
        "malformed target: label longer than 63 characters",
    )];
    listed.extend(std::iter::repeat_n(
        (
            "CONNECT",
            format!("unlisted.test:{port}"),
            "not in allowed domains",
        ),
        99,
    ));
    assert_eq!(out["violations"], violations(&listed), "{out:#}");
    assert_eq!(
        stderr_of(&out),
        format!(
            "{}[sandbox] network: 1 more blocked requests not listed\n",
            blocked_lines(&listed)
        ),
        "{out:#}"
    );
    assert_eq!(origin.seen(), Vec::<String>::new());
}

/// A DNS server on `addr` (UDP) for tests: answers every A query for any name,
/// the first with `first` and every later one with `later`, and every other query
/// with no record; counts the A queries.
struct RebindingDns {
    a_queries: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RebindingDns {
    fn start(addr: &str, first: [u8; 4], later: [u8; 4]) -> RebindingDns {
        use std::sync::atomic::Ordering;
        let socket = std::net::UdpSocket::bind(addr).expect("bind the test DNS server");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("read timeout");
        let a_queries = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (count, stopped) = (a_queries.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !stopped.load(Ordering::SeqCst) {
                let Ok((len, peer)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                let query = &buf[..len];
                // Header (12 bytes), then one question: labels, a zero, type, class.
                let Some(end) = query.get(12..).and_then(|q| q.iter().position(|&b| b == 0)) else {
                    continue;
                };
                let question_end = 12 + end + 1 + 4;
                if query.len() < question_end {
                    continue;
                }
                let qtype = u16::from_be_bytes([query[question_end - 4], query[question_end - 3]]);
                let mut answer = query[..2].to_vec();
                answer.extend([0x81, 0x80, 0, 1]);
                let address = (qtype == 1).then(|| {
                    let n = count.fetch_add(1, Ordering::SeqCst);
                    if n == 0 {
                        first
                    } else {
                        later
                    }
                });
                answer.extend([0, u8::from(address.is_some()), 0, 0, 0, 0]);
                answer.extend(&query[12..question_end]);
                if let Some(ip) = address {
                    // The question's name by pointer, A, IN, TTL 0, four bytes.
                    answer.extend([0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4]);
                    answer.extend(ip);
                }
                let _ = socket.send_to(&answer, peer);
            }
        });
        RebindingDns {
            a_queries,
            stop,
            thread: Some(thread),
        }
    }

    fn a_queries(&self) -> usize {
        self.a_queries.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for RebindingDns {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// README: the proxy connects to an address it checked, never after a second
/// lookup. The executor's resolver (its own mount namespace, `/etc/resolv.conf`
/// naming a test DNS server) answers a name's first lookup with 127.0.0.1, where an
/// origin listens, and every later one with 127.0.0.2, where nothing does: a proxy
/// that looked the name up again to connect would get a 502. The request gets the
/// origin's answer, and the server saw exactly one A query.
#[tokio::test]
async fn the_proxy_connects_to_the_address_it_checked_without_a_second_lookup() {
    use std::io::{Read, Write};

    require_root!();
    let dns = RebindingDns::start("127.0.0.78:53", [127, 0, 0, 1], [127, 0, 0, 2]);
    let origin = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the origin");
    let port = origin.local_addr().expect("origin address").port();
    std::thread::spawn(move || {
        for mut stream in origin.incoming().flatten() {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
                head.push(byte[0]);
            }
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nConnection: close\r\n\r\nchecked one",
            );
        }
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(
        &resolv,
        "nameserver 127.0.0.78\noptions timeout:5 attempts:1\n",
    )
    .expect("write resolv.conf");
    let executor = pysandbox_tests::Executor::builder()
        .wrapper([
            "unshare".as_ref(),
            "--mount".as_ref(),
            "--propagation".as_ref(),
            "private".as_ref(),
            "sh".as_ref(),
            "-c".as_ref(),
            "mount --bind \"$0\" /etc/resolv.conf && exec \"$@\"".as_ref(),
            resolv.as_os_str(),
        ])
        .config_toml(&format!(
            "[network]\nallowed_domains = [\"rebind.test\"]\nallowed_ports = [{port}]\n\
             allow_private_cidrs = [\"127.0.0.0/8\"]\n"
        ))
        .start();
    let frontend = pysandbox_tests::Frontend::start(&executor, &[]);
    let svc = Service::new(frontend, executor);
    svc.wait_for_warm_pool();
    let code = format!("{HELPERS}\nprint(json.dumps(via_http('http://rebind.test:{port}/x')))");
    let out = svc.run(json!({ "code": code, "network": {} })).await;
    assert_eq!(out["exitCode"], 0, "{out:#}");
    assert_eq!(stdout_json(&out), json!([200, "checked one"]), "{out:#}");
    assert_eq!(out["violations"], json!([]), "{out:#}");
    assert_eq!(dns.a_queries(), 1, "A queries for one request");
}
