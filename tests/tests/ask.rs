//! The ask callback (`network.ask_url`): a host neither list covers is allowed or
//! refused by a callback the frontend calls for the executor.
//!
//! A [`Callback`] on 127.0.0.1 answers each question by its host, the way the test
//! says, and records what it was asked. The test names resolve through
//! `[network.resolve]` to an [`Origin`] on loopback, as in `network.rs`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use pysandbox_shared::{AskAnswer, AskOutcome, ClientConnection, JobSpec, Request, Response};
use pysandbox_tests::{require_root, stdout_json, Origin, Service};
use serde_json::{json, Value};
use tokio::net::UnixStream;

/// How the callback answers questions about one host.
#[derive(Clone)]
enum Answer {
    /// These bytes, as the whole HTTP response.
    Raw(Vec<u8>),
    /// Nothing until the test ends.
    Hang,
}

fn http(status: &str, extra: &str, body: &str) -> Answer {
    Answer::Raw(
        format!(
            "HTTP/1.1 {status}\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

fn yes() -> Answer {
    http("200 OK", "", r#"{"allow": true}"#)
}

/// One question as the callback received it.
#[derive(Debug, Clone)]
struct Question {
    authorization: Option<String>,
    body: Value,
}

/// A local ask callback: one thread per connection, blocking sockets.
struct Callback {
    port: u16,
    asked: Arc<Mutex<Vec<Question>>>,
}

impl Callback {
    /// Answers questions about each host of `answers` as it says, `{"allow": false}`
    /// about any other.
    fn start(answers: BTreeMap<&'static str, Answer>) -> Callback {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the callback");
        let port = listener.local_addr().expect("the callback address").port();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let (record, answers) = (Arc::clone(&asked), Arc::new(answers));
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (record, answers) = (Arc::clone(&record), Arc::clone(&answers));
                std::thread::spawn(move || answer(stream, &record, &answers));
            }
        });
        Callback { port, asked }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/ask", self.port)
    }

    fn asked(&self) -> Vec<Question> {
        self.asked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The hosts asked about, in order.
    fn hosts(&self) -> Vec<String> {
        self.asked()
            .iter()
            .map(|q| q.body["host"].as_str().unwrap_or("?").to_owned())
            .collect()
    }
}

fn answer(
    mut stream: TcpStream,
    record: &Mutex<Vec<Question>>,
    answers: &BTreeMap<&'static str, Answer>,
) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    let (head, length) = loop {
        let Ok(n) = stream.read(&mut buf) else { return };
        if n == 0 {
            return;
        }
        request.extend_from_slice(&buf[..n]);
        if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&request[..end]).to_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            request.drain(..end + 4);
            break (head, length);
        }
    };
    while request.len() < length {
        let Ok(n) = stream.read(&mut buf) else { return };
        if n == 0 {
            return;
        }
        request.extend_from_slice(&buf[..n]);
    }
    let body: Value = serde_json::from_slice(&request).unwrap_or(Value::Null);
    let authorization = head
        .lines()
        .find_map(|l| l.strip_prefix("authorization:"))
        .map(|v| v.trim().to_owned());
    let host = body["host"].as_str().unwrap_or_default().to_owned();
    // Where a followed redirect lands: a yes, unrecorded.
    if head.split(' ').nth(1) == Some("/yes") {
        if let Answer::Raw(bytes) = yes() {
            let _ = stream.write_all(&bytes);
        }
        return;
    }
    record
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Question {
            authorization,
            body,
        });
    match answers
        .get(host.as_str())
        .cloned()
        .unwrap_or_else(|| http("200 OK", "", r#"{"allow": false}"#))
    {
        Answer::Raw(bytes) => {
            let _ = stream.write_all(&bytes);
        }
        Answer::Hang => std::thread::sleep(Duration::from_secs(120)),
    }
}

/// Python helpers: fetch over plain HTTP with urllib, or through a CONNECT tunnel.
const HELPERS: &str = r#"
import http.client, json, urllib.error, urllib.request

def via_http(url):
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return [r.status, r.read().decode()]
    except urllib.error.HTTPError as e:
        return [e.code, e.read().decode()]
    except Exception as e:
        return ["error", repr(e)]

def via_connect(host, port):
    c = http.client.HTTPConnection("127.0.0.1", 3128, timeout=30)
    c.set_tunnel(host, port)
    try:
        c.request("GET", "/tunnel")
        r = c.getresponse()
        return [r.status, r.read().decode()]
    except OSError as e:
        return ["error", str(e)]
    finally:
        c.close()
"#;

/// A service whose proxy reaches the origin on loopback for the `.test` names
/// below, and asks `callback` about what its lists do not cover.
fn start(origin: &Origin, callback: &Callback, extra: &str) -> Service {
    let toml = format!(
        r#"
[network]
allowed_domains = ["allowed.test"]
denied_domains = ["denied.test"]
allowed_ports = [80, {port}]
ask_url = "{url}"
{extra}

[network.resolve]
"allowed.test" = "127.0.0.1"
"denied.test" = "127.0.0.1"
"asked.test" = "127.0.0.1"
"refused.test" = "127.0.0.1"
"huge.test" = "127.0.0.1"
"text.test" = "127.0.0.1"
"redirect.test" = "127.0.0.1"
"string.test" = "127.0.0.1"
"slow.test" = "127.0.0.1"
"#,
        port = origin.port(),
        url = callback.url(),
    );
    Service::builder().executor_config_toml(&toml).start()
}

/// Runs `code` (after the helpers, with `PORT` set) with `network`, asserts it
/// exited 0, and returns the whole result.
async fn probe(svc: &Service, origin: &Origin, network: Value, code: &str) -> Value {
    let code = format!("{HELPERS}\nPORT = {}\n{code}", origin.port());
    let out = svc.run(json!({ "code": code, "network": network })).await;
    assert_eq!(out["exitCode"], 0, "the probe failed: {out:#}");
    out
}

/// The `violations` entry and `[sandbox]` line of a refused GET.
fn refused(target: &str, reason: &str) -> (Value, String) {
    (
        json!({"method": "GET", "target": target, "reason": reason}),
        format!("[sandbox] network: blocked GET {target} ({reason})\n"),
    )
}

/// Lets the proxy reach the origin on loopback; the callback gets a token.
const PRIVATE_OK_AND_TOKEN: &str =
    "allow_private_cidrs = [\"127.0.0.0/8\"]\nask_token = \"callback-token\"";

const REFUSED: &str = "not in allowed domains, and refused by the ask callback";
const NO_ANSWER: &str = "not in allowed domains, and the ask callback gave no valid answer";

#[tokio::test]
async fn the_callback_decides_unknown_hosts_once_each_and_nothing_else() {
    require_root!();
    let origin = Origin::start();
    let callback = Callback::start(BTreeMap::from([("asked.test", yes())]));
    let svc = start(&origin, &callback, PRIVATE_OK_AND_TOKEN);
    let port = origin.port();
    let code = r#"
print(json.dumps([
    via_http("http://asked.test:%d/one" % PORT),
    via_http("http://asked.test:%d/two" % PORT),
    via_connect("asked.test", PORT),
    via_http("http://refused.test:%d/" % PORT),
    via_http("http://refused.test:%d/" % PORT),
    via_http("http://denied.test:%d/" % PORT),
    via_http("http://allowed.test:%d/" % PORT),
]))
"#;
    let out = probe(&svc, &origin, json!({}), code).await;
    let seen = |path: &str, host: &str| {
        json!([200, format!("origin saw GET {path} HTTP/1.1 host {host}")])
    };
    let (target, refused_host) = (asked_target(port), format!("refused.test:{port}"));
    let body = |target: &str, reason: &str| {
        json!([403, format!("pysandbox: blocked GET {target} ({reason})\n")])
    };
    assert_eq!(
        stdout_json(&out),
        json!([
            seen("/one", &target),
            seen("/two", &target),
            seen("/tunnel", &target),
            body(&refused_host, REFUSED),
            body(&refused_host, REFUSED),
            body(&format!("denied.test:{port}"), "in denied domains"),
            seen("/", &format!("allowed.test:{port}")),
        ]),
        "{out:#}"
    );
    // Asked once per host:port, whatever the answer; never about a listed host.
    assert_eq!(callback.hosts(), ["asked.test", "refused.test"]);
    let asked = callback.asked();
    assert_eq!(
        asked[0].authorization.as_deref(),
        Some("bearer callback-token"),
        "the header as received, lower-cased"
    );
    let request_id = asked[0].body["requestId"].as_str().unwrap_or_default();
    assert!(!request_id.is_empty(), "{:?}", asked[0]);
    assert_eq!(
        asked[0].body,
        json!({"host": "asked.test", "port": port, "requestId": request_id, "method": "GET"})
    );
    let (v1, l1) = refused(&refused_host, REFUSED);
    let (v2, l2) = refused(&format!("denied.test:{port}"), "in denied domains");
    assert_eq!(out["violations"], json!([v1, v1, v2]), "{out:#}");
    assert_eq!(out["stderr"], format!("{l1}{l1}{l2}"), "{out:#}");

    // A job that narrows its domains is never asked about another host.
    let narrowed = json!({"allowedDomains": ["allowed.test"]});
    let out = probe(
        &svc,
        &origin,
        narrowed,
        r#"print(json.dumps(via_http("http://asked.test:%d/" % PORT)))"#,
    )
    .await;
    let not_allowed = "not in allowed domains";
    assert_eq!(
        stdout_json(&out),
        body(&asked_target(port), not_allowed),
        "{out:#}"
    );
    assert_eq!(callback.hosts().len(), 2, "{:?}", callback.hosts());

    // A new job asks afresh: answers hold for one job only.
    let out = probe(
        &svc,
        &origin,
        json!({}),
        r#"print(json.dumps(via_http("http://asked.test:%d/again" % PORT)))"#,
    )
    .await;
    assert_eq!(stdout_json(&out), seen("/again", &target), "{out:#}");
    assert_eq!(
        callback.hosts(),
        ["asked.test", "refused.test", "asked.test"]
    );
}

fn asked_target(port: u16) -> String {
    format!("asked.test:{port}")
}

/// Anything but `200 {"allow": true}` refuses: a huge body, text, a redirect to a
/// yes, `"yes"` for `true`, and an answer that never comes.
#[tokio::test]
async fn hostile_and_slow_answers_refuse() {
    require_root!();
    let origin = Origin::start();
    let huge = format!(r#"{{"allow": true, "pad": "{}"}}"#, "x".repeat(1 << 20));
    let callback = Callback::start(BTreeMap::from([
        ("huge.test", http("200 OK", "", &huge)),
        ("text.test", http("200 OK", "", "allow")),
        (
            "redirect.test",
            http("302 Found", "Location: /yes\r\n", r#"{"allow": true}"#),
        ),
        ("string.test", http("200 OK", "", r#"{"allow": "yes"}"#)),
        ("slow.test", Answer::Hang),
    ]));
    let svc = start(
        &origin,
        &callback,
        "allow_private_cidrs = [\"127.0.0.0/8\"]\nask_timeout_ms = 300",
    );
    let port = origin.port();
    let code = r#"
print(json.dumps([via_http("http://%s.test:%d/" % (h, PORT)) for h in ["huge", "text", "redirect", "string", "slow"]]))
"#;
    let out = probe(&svc, &origin, json!({}), code).await;
    let slow = "not in allowed domains, and the ask callback did not answer within 300 ms";
    let reasons = [
        ("huge", NO_ANSWER),
        ("text", NO_ANSWER),
        ("redirect", NO_ANSWER),
        ("string", NO_ANSWER),
        ("slow", slow),
    ];
    let (mut violations, mut lines, mut bodies) = (Vec::new(), String::new(), Vec::new());
    for (host, reason) in reasons {
        let target = format!("{host}.test:{port}");
        let (violation, line) = refused(&target, reason);
        violations.push(violation);
        lines.push_str(&line);
        bodies.push(json!([
            403,
            format!("pysandbox: blocked GET {target} ({reason})\n")
        ]));
    }
    assert_eq!(stdout_json(&out), Value::Array(bodies), "{out:#}");
    assert_eq!(out["violations"], Value::Array(violations), "{out:#}");
    assert_eq!(out["stderr"], lines, "{out:#}");
    assert_eq!(
        origin.seen(),
        Vec::<String>::new(),
        "a refused request got through"
    );
    assert_eq!(
        callback.hosts(),
        ["huge", "text", "redirect", "string", "slow"].map(|h| format!("{h}.test"))
    );
}

/// An allow opens the lists only: a name that resolves to loopback is still
/// refused (no `allow_private_cidrs` here), and past `max_asks_per_job` the rest
/// are refused unasked.
#[tokio::test]
async fn address_checks_and_the_question_limit_still_apply_after_an_allow() {
    require_root!();
    let origin = Origin::start();
    let callback = Callback::start(BTreeMap::from([
        ("localhost", yes()),
        ("asked.test", yes()),
        ("one.invalid", yes()),
        ("two.invalid", yes()),
    ]));
    let svc = start(&origin, &callback, "max_asks_per_job = 2");
    let code = r#"
print(json.dumps([
    via_http("http://localhost:%d/" % PORT),
    via_http("http://asked.test:%d/" % PORT),
    via_http("http://one.invalid:%d/" % PORT),
    via_http("http://two.invalid:%d/" % PORT),
]))
"#;
    let out = probe(&svc, &origin, json!({}), code).await;
    let results = stdout_json(&out);
    let statuses: Vec<&Value> = results
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| &r[0])
        .collect();
    // `one.invalid` was allowed, then found no address: a 502, not a refusal.
    assert_eq!(
        statuses,
        [&json!(403), &json!(403), &json!(502), &json!(403)],
        "{out:#}"
    );
    let violations = out["violations"].as_array().cloned().unwrap_or_default();
    let reasons: Vec<&str> = violations
        .iter()
        .map(|v| v["reason"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(reasons.len(), 3, "{out:#}");
    // `localhost` is looked up after the allow, and refused for its address.
    assert!(
        reasons[0].starts_with("resolves to ") && reasons[0].ends_with(", a loopback address"),
        "{out:#}"
    );
    // `asked.test` has a fixed loopback address: refused before any question.
    assert_eq!(
        reasons[1], "resolves to 127.0.0.1, a loopback address",
        "{out:#}"
    );
    assert_eq!(
        reasons[2],
        "not in allowed domains, and this job asked the ask callback 2 questions already"
    );
    assert_eq!(
        origin.seen(),
        Vec::<String>::new(),
        "a refused request got through"
    );
    assert_eq!(callback.hosts(), ["localhost", "one.invalid"]);
}

/// The executor's end, with a frontend played by the test: answers to questions
/// never asked (made-up ids, a yes for a question already answered) open
/// nothing, and do not end the job as a stray frame would.
#[tokio::test]
async fn stray_answers_open_nothing() {
    require_root!();
    let origin = Origin::start();
    let callback = Callback::start(BTreeMap::new());
    let svc = start(&origin, &callback, PRIVATE_OK_AND_TOKEN);
    let code = format!(
        "{HELPERS}\nprint(json.dumps([via_http('http://asked.test:{0}/'), via_http('http://asked.test:{0}/')]))",
        origin.port()
    );
    let spec = JobSpec {
        request_id: "stray".into(),
        code,
        stdin: None,
        timeout_ms: Some(60_000),
        limits: Default::default(),
        files: vec![],
        collect_files: false,
        network: None,
    };
    let stream = UnixStream::connect(svc.executor.socket())
        .await
        .expect("root may always connect to the executor");
    let mut conn = ClientConnection::open(stream, None).await.expect("hello");
    conn.send(&Request::Run(spec)).await.expect("send the job");
    let answer = |id, outcome| Request::Answer(AskAnswer { id, outcome });
    let (mut asks, mut stdout, mut end) = (Vec::new(), Vec::new(), None);
    let read_all = async {
        while let Ok(Some(response)) = conn.recv().await {
            match response {
                Response::Ask(ask) => {
                    for stray in [0, ask.id + 1, u32::MAX] {
                        let _ = conn.send(&answer(stray, AskOutcome::Allowed)).await;
                    }
                    let _ = conn.send(&answer(ask.id, AskOutcome::Refused)).await;
                    let _ = conn.send(&answer(ask.id, AskOutcome::Allowed)).await;
                    asks.push(ask);
                }
                Response::Output(chunk) => stdout.extend_from_slice(&chunk.data),
                Response::Ended(ended) => end = Some(ended),
                Response::Finished(_) | Response::Failed(_) => break,
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(120), read_all)
        .await
        .expect("the job ends");
    let end = end.expect("the job ran to its end");
    assert_eq!(end.exit_code, Some(0), "{end:?}");
    assert_eq!(asks.len(), 1, "asked once: {asks:?}");
    assert_eq!(
        (
            asks[0].host.as_str(),
            asks[0].url.as_str(),
            asks[0].token.as_deref()
        ),
        (
            "asked.test",
            callback.url().as_str(),
            Some("callback-token")
        )
    );
    let stdout: Value = serde_json::from_slice(&stdout).expect("the job printed JSON");
    let target = asked_target(origin.port());
    let refusal = json!([
        403,
        format!("pysandbox: blocked GET {target} ({REFUSED})\n")
    ]);
    assert_eq!(stdout, json!([refusal, refusal]));
    assert_eq!(end.violations.len(), 2, "{end:?}");
    assert_eq!(origin.seen(), Vec::<String>::new());
    assert!(
        callback.asked().is_empty(),
        "the executor called nothing itself"
    );
}

/// With `ask_url` and no allowed domains, jobs get network through the callback
/// alone; a job asking for no network (`[]`) still gets none, and is never asked
/// about.
#[tokio::test]
async fn the_callback_alone_gives_jobs_network() {
    require_root!();
    let origin = Origin::start();
    let callback = Callback::start(BTreeMap::from([("asked.test", yes())]));
    let toml = format!(
        "[network]\nallowed_ports = [{}]\nallow_private_cidrs = [\"127.0.0.0/8\"]\nask_url = \"{}\"\n\n[network.resolve]\n\"asked.test\" = \"127.0.0.1\"\n",
        origin.port(),
        callback.url()
    );
    let svc = Service::builder().executor_config_toml(&toml).start();
    let code = r#"print(json.dumps(via_http("http://asked.test:%d/alone" % PORT)))"#;
    let out = probe(&svc, &origin, json!({}), code).await;
    let target = asked_target(origin.port());
    let seen = format!("origin saw GET /alone HTTP/1.1 host {target}");
    assert_eq!(stdout_json(&out), json!([200, seen]), "{out:#}");
    let out = probe(&svc, &origin, json!({"allowedDomains": []}), code).await;
    let failed = stdout_json(&out);
    assert_eq!(failed[0], "error", "no proxy, no network: {out:#}");
    assert_eq!(callback.hosts(), ["asked.test"]);
}
