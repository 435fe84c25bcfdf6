//! Sessions (issue 15; the HTTP contract in `/work/briefs/sessions-api.md`): an
//! interpreter that keeps its variables, imports and work dir across
//! `POST /sessions/{id}/execute` calls. One test per rule: what persists between
//! calls; what an exception, an interrupt, an ignored interrupt, `sys.exit` and a
//! memory kill do to the session (it lives on, or later calls get 410); 409, 404,
//! 401/403, 400 and 429 with their exact JSON; the state JSON; `returnFiles`, input
//! files and figures per call; a streamed call; isolation between two sessions; that
//! DELETE, idle expiry and an executor restart leave no process, cgroup, mount or
//! file of a session on the host; that `/execute` stays stateless beside a session;
//! and that a session writing junk or forged records to its own channels breaks at
//! most itself, never the executor, another session or a host process.

use std::fs;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use pysandbox_tests::{
    assert_error, cgroup_dirs, host_processes_matching, py_concat, random_hex, require_root,
    sleep_needle, stdout_json, wait_until_async, Reply, Service,
};
use reqwest::Method;
use serde_json::{json, Value};

const AUTH_ERROR: &str = "missing or malformed Authorization header (expected: Bearer <token>)";
const NOT_FOUND: &str = "session not found";
const BUSY: &str = "session is busy with another call";
/// Every 410's error starts so, followed by the reason.
const ENDED: &str = "session ended: ";
/// The keys of a session's state, sorted.
const STATE_KEYS: [&str; 9] = [
    "busy",
    "calls",
    "createdAt",
    "expiresAt",
    "idleTimeoutMs",
    "lastUsedAt",
    "limits",
    "memoryBytes",
    "sessionId",
];
/// How long the host may take to lose a session whose end nobody waits for (an
/// expiry, a kill, a restart): generous, as two cores are shared by the suite.
const CLEANUP_DEADLINE: Duration = Duration::from_secs(30);
/// How long a background process started by a call may take to show on the host.
const START_DEADLINE: Duration = Duration::from_secs(10);
const MIB: u64 = 1 << 20;

/// One session of a service, by its id, with the state `POST /sessions` answered.
#[derive(Debug)]
struct Session<'a> {
    svc: &'a Service,
    id: String,
    created: Value,
}

impl<'a> Session<'a> {
    /// `POST /sessions` with `body` as JSON, asserting a 201.
    async fn open(svc: &'a Service, body: Value) -> Session<'a> {
        let reply = post_sessions(svc, body.to_string()).await;
        Session::from_reply(svc, reply, &body.to_string())
    }

    /// `POST /sessions` with an empty body, asserting a 201.
    async fn open_default(svc: &'a Service) -> Session<'a> {
        let reply = post_sessions(svc, "").await;
        Session::from_reply(svc, reply, "an empty body")
    }

    fn from_reply(svc: &'a Service, reply: Reply, asked: &str) -> Session<'a> {
        assert_eq!(
            reply.status, 201,
            "POST /sessions with {asked} answered {}",
            reply.text
        );
        let id = reply.json["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no sessionId in {}", reply.text))
            .to_owned();
        Session {
            svc,
            id,
            created: reply.json,
        }
    }

    /// `/sessions/{id}` followed by `rest`.
    fn path(&self, rest: &str) -> String {
        format!("/sessions/{}{rest}", self.id)
    }

    /// `POST /sessions/{id}/execute` of `body`.
    async fn execute(&self, body: &Value) -> Reply {
        execute_in(self.svc, &self.id, body).await
    }

    /// [`Session::execute`] asserting a 200; the call's result.
    #[track_caller]
    fn run(&self, body: Value) -> impl Future<Output = Value> + '_ {
        let caller = std::panic::Location::caller();
        async move {
            let reply = self.execute(&body).await;
            assert_eq!(
                reply.status,
                200,
                "POST {} {body} (at {caller}) answered {}",
                self.path("/execute"),
                reply.text
            );
            reply.json
        }
    }

    /// [`Session::run`] of `{"code": code}`.
    #[track_caller]
    fn run_code(&self, code: &str) -> impl Future<Output = Value> + '_ {
        self.run(json!({ "code": code }))
    }

    /// `GET /sessions/{id}`.
    async fn state(&self) -> Reply {
        get_session(self.svc, &self.id).await
    }

    /// `DELETE /sessions/{id}`, asserting `204` with an empty body.
    async fn delete(&self) {
        let reply = delete_session(self.svc, &self.id).await;
        assert_eq!(
            (reply.status, reply.text.as_str()),
            (204, ""),
            "DELETE {}",
            self.path("")
        );
    }
}

fn bearer(svc: &Service) -> String {
    format!("Bearer {}", svc.token())
}

/// `POST /sessions` with the token and `body` as it is.
async fn post_sessions(svc: &Service, body: impl Into<Vec<u8>>) -> Reply {
    svc.authorized(Method::POST, "/sessions", Some(body.into()))
        .await
}

/// `POST /sessions/{id}/execute` of `body` with the token.
async fn execute_in(svc: &Service, id: &str, body: &Value) -> Reply {
    let path = format!("/sessions/{id}/execute");
    svc.authorized(Method::POST, &path, Some(body.to_string().into_bytes()))
        .await
}

/// `GET /sessions/{id}` with the token.
async fn get_session(svc: &Service, id: &str) -> Reply {
    svc.authorized(Method::GET, &format!("/sessions/{id}"), None)
        .await
}

/// `DELETE /sessions/{id}` with the token.
async fn delete_session(svc: &Service, id: &str) -> Reply {
    svc.authorized(Method::DELETE, &format!("/sessions/{id}"), None)
        .await
}

/// Asserts `410 {"error": "session ended: <reason>"}` (JSON, a reason given).
#[track_caller]
fn assert_ended(reply: &Reply) {
    let error = reply.json["error"].as_str().unwrap_or_default();
    let keys = reply.json.as_object().map_or(0, |o| o.len());
    assert!(
        reply.status == 410 && error.starts_with(ENDED) && error.len() > ENDED.len() && keys == 1,
        "expected 410 {{\"error\": \"{ENDED}<reason>\"}}, got {} {}",
        reply.status,
        reply.text
    );
    assert!(
        reply
            .header("content-type")
            .is_some_and(|ct| ct.starts_with("application/json")),
        "content-type of the 410: {:?}",
        reply.header("content-type")
    );
}

/// Asserts 404 `session not found` or a 410: what a session that is gone may answer.
#[track_caller]
fn assert_gone_or_ended(reply: &Reply) {
    if reply.status == 410 {
        assert_ended(reply);
    } else {
        assert_error(reply, 404, json!({ "error": NOT_FOUND }));
    }
}

/// Asserts `429 {"error": "too many sessions: ..."}` with a `Retry-After` in seconds.
#[track_caller]
fn assert_too_many(reply: &Reply) {
    let error = reply.json["error"].as_str().unwrap_or_default();
    assert!(
        reply.status == 429 && error.starts_with("too many sessions: "),
        "expected 429 too many sessions, got {} {}",
        reply.status,
        reply.text
    );
    let retry = reply.header("retry-after");
    assert!(
        retry
            .and_then(|r| r.parse::<u64>().ok())
            .is_some_and(|s| s >= 1),
        "Retry-After of the 429: {retry:?}"
    );
}

/// Asserts a 400 naming `field`, its error `<field>: <reason>`; returns the error.
#[track_caller]
fn assert_field_error<'r>(reply: &'r Reply, field: &str) -> &'r str {
    let error = reply.json["error"].as_str().unwrap_or_default();
    assert!(
        reply.status == 400
            && reply.json["field"] == field
            && error.starts_with(&format!("{field}: ")),
        "expected a 400 naming {field}, got {} {}",
        reply.status,
        reply.text
    );
    error
}

/// Python that starts `sleep <needle>` in the background and keeps its handle; the
/// needle itself is not in the code (see [`py_concat`]).
fn background_sleep(needle: &str) -> String {
    format!(
        "import subprocess\n_sleeper = subprocess.Popen(['sleep', {}])\n",
        py_concat(needle)
    )
}

/// Waits for the host process `sleep <needle>` and returns its pid.
async fn wait_for_process(needle: &str) -> u32 {
    let seen = wait_until_async(START_DEADLINE, || {
        !host_processes_matching(needle).is_empty()
    })
    .await;
    assert!(seen, "`sleep {needle}` never showed on the host");
    host_processes_matching(needle)[0]
}

/// Whether no host process matches `needle` within `timeout`.
async fn process_gone(needle: &str, timeout: Duration) -> bool {
    wait_until_async(timeout, || host_processes_matching(needle).is_empty()).await
}

/// Polls an async `check` every 100 ms until it holds (true) or `timeout` passes.
async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every mount point in the test's mount namespace (the host's).
fn mount_points() -> Vec<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .expect("read mountinfo")
        .lines()
        .filter_map(|line| line.split(' ').nth(4).map(str::to_owned))
        .collect()
}

/// The first file named `name` below `dir`, without following links.
fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    for entry in fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if entry.file_name() == name {
            return Some(path);
        }
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            if let Some(found) = find_file(&path, name) {
                return Some(found);
            }
        }
    }
    None
}

/// What the host shows of a live session: its background `sleep`, the cgroups
/// that process is in (but the executor is not), the file it wrote in its work
/// dir as seen under the executor's state dir, and the mounts holding that file.
#[derive(Debug)]
struct Footprint {
    needle: String,
    cgroups: Vec<PathBuf>,
    marker: PathBuf,
    mounts: Vec<String>,
}

impl Footprint {
    /// Records the footprint of the session that runs `sleep <needle>` and wrote
    /// the file `marker` in its work dir. Panics when the host shows one of them
    /// not at all: "gone" would then prove nothing.
    async fn take(svc: &Service, needle: &str, marker: &str) -> Footprint {
        let pid = wait_for_process(needle).await;
        let executor = cgroup_dirs(svc.executor.pid().expect("the executor runs"));
        let cgroups: Vec<PathBuf> = cgroup_dirs(pid)
            .into_iter()
            .filter(|dir| !executor.contains(dir))
            .collect();
        assert!(
            !cgroups.is_empty(),
            "the session's process {pid} is in no cgroup of its own: {:?}",
            fs::read_to_string(format!("/proc/{pid}/cgroup"))
        );
        let state_dir = svc.executor.state_dir();
        let marker = find_file(state_dir, marker).unwrap_or_else(|| {
            panic!(
                "the session's work-dir file {marker} is not under {}",
                state_dir.display()
            )
        });
        let mounts: Vec<String> = mount_points()
            .into_iter()
            .filter(|point| {
                let point = Path::new(point);
                point.starts_with(state_dir) && point != state_dir && marker.starts_with(point)
            })
            .collect();
        assert!(
            !mounts.is_empty(),
            "no mount under {} holds the session's work-dir file {}",
            state_dir.display(),
            marker.display()
        );
        Footprint {
            needle: needle.to_owned(),
            cgroups,
            marker,
            mounts,
        }
    }

    /// What of it is still on the host.
    fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        let pids = host_processes_matching(&self.needle);
        if !pids.is_empty() {
            left.push(format!("its background sleep (pids {pids:?})"));
        }
        for dir in self.cgroups.iter().filter(|dir| dir.exists()) {
            left.push(format!("cgroup {}", dir.display()));
        }
        let mounted = mount_points();
        for point in &self.mounts {
            let below: Vec<&String> = mounted
                .iter()
                .filter(|m| Path::new(m).starts_with(point))
                .collect();
            if !below.is_empty() {
                left.push(format!("mounts {below:?}"));
            }
            if Path::new(point).exists() {
                left.push(format!("directory {point}"));
            }
        }
        if self.marker.exists() {
            left.push(format!("work-dir file {}", self.marker.display()));
        }
        left
    }

    /// Asserts that nothing of it is left within `timeout` (checked once if zero).
    async fn assert_gone_within(&self, timeout: Duration, after: &str) {
        let gone = wait_until_async(timeout, || self.leftovers().is_empty()).await;
        assert!(
            gone,
            "{after}, the session left on the host: {:?}",
            self.leftovers()
        );
    }
}

/// Nanoseconds since the epoch of an RFC 3339 timestamp such as
/// `2026-12-02T12:39:19.123456Z` or `…+01:00`; `None` for anything else.
fn parse_rfc3339(text: &str) -> Option<i128> {
    fn digits(text: &str, range: std::ops::Range<usize>) -> Option<i128> {
        let part = text.get(range)?;
        part.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| part.parse().ok())
            .flatten()
    }
    let b = text.as_bytes();
    let shape = b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && matches!(b[10], b'T' | b't')
        && b[13] == b':'
        && b[16] == b':';
    if !shape {
        return None;
    }
    let (year, month, day) = (
        digits(text, 0..4)?,
        digits(text, 5..7)?,
        digits(text, 8..10)?,
    );
    let (hour, minute, second) = (
        digits(text, 11..13)?,
        digits(text, 14..16)?,
        digits(text, 17..19)?,
    );
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    let mut rest = &text[19..];
    let mut nanos = 0;
    if let Some(fraction) = rest.strip_prefix('.') {
        let count = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if count == 0 {
            return None;
        }
        nanos = format!("{:0<9}", &fraction[..count.min(9)]).parse().ok()?;
        rest = &fraction[count..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && rest.as_bytes()[3] == b':' => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            sign * (digits(rest, 1..3)? * 3600 + digits(rest, 4..6)? * 60)
        }
        _ => return None,
    };
    // Days from 1970-01-01 to the date (Howard Hinnant's days_from_civil).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset;
    Some(seconds * 1_000_000_000 + nanos)
}

/// [`parse_rfc3339`] of the state's `key`, panicking with the state otherwise.
#[track_caller]
fn timestamp(state: &Value, key: &str) -> i128 {
    state[key]
        .as_str()
        .and_then(parse_rfc3339)
        .unwrap_or_else(|| panic!("{key} is not an RFC 3339 timestamp: {state:#}"))
}

/// Asserts that `state` has exactly the keys of the contract's state JSON.
#[track_caller]
fn assert_state_keys(state: &Value) {
    let mut keys: Vec<&str> = state
        .as_object()
        .unwrap_or_else(|| panic!("the state is not an object: {state}"))
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, STATE_KEYS, "{state:#}");
}

/// The result without what differs between two runs of one call: its timings.
fn untimed(result: &Value) -> Value {
    let mut result = result.clone();
    let object = result.as_object_mut().expect("the result is an object");
    object.remove("durationMs");
    object.remove("usage");
    result
}

/// `returnFiles` entries as (path, decoded content), in the order returned.
fn returned_files(out: &Value) -> Vec<(String, String)> {
    out["files"]
        .as_array()
        .unwrap_or_else(|| panic!("no files array: {out:#}"))
        .iter()
        .map(|f| {
            let bytes = BASE64
                .decode(f["contentBase64"].as_str().unwrap_or_default())
                .expect("contentBase64 is base64");
            (
                f["path"].as_str().unwrap_or_default().to_owned(),
                String::from_utf8_lossy(&bytes).into_owned(),
            )
        })
        .collect()
}

/// The value of the unlabelled sample `name` in `GET /metrics`, if present.
async fn metric(svc: &Service, name: &str) -> Option<f64> {
    let text = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
        .get(svc.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("the metrics");
    text.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// `POST /sessions/{id}/execute` of `body` with `Accept: text/event-stream`, read
/// with an SSE client: every event's name and JSON data, in order.
async fn stream_call(svc: &Service, id: &str, body: &Value) -> Vec<(String, Value)> {
    let response = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
        .post(svc.url(&format!("/sessions/{id}/execute")))
        .bearer_auth(svc.token())
        .header("accept", "text/event-stream")
        .json(body)
        .send()
        .await
        .expect("POST /sessions/{id}/execute");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().ok(),
        Some("text/event-stream")
    );
    let mut events = Vec::new();
    let mut parsed = std::pin::pin!(response.bytes_stream().eventsource());
    while let Some(event) = parsed.next().await {
        let event = event.expect("a well-formed event stream");
        let data = serde_json::from_str(&event.data)
            .unwrap_or_else(|e| panic!("{} data is not JSON ({e}): {}", event.event, event.data));
        events.push((event.event, data));
    }
    events
}

/// A call's answer in short, for the log: status, then exit, signal, time-out and
/// stdout, or the error.
fn outcome(reply: &Reply) -> String {
    let out = &reply.json;
    match reply.status {
        200 => format!(
            "200 exitCode {} signal {} timedOut {} stdout {}",
            out["exitCode"], out["signal"], out["timedOut"], out["stdout"]
        ),
        status => format!("{status} {}", reply.text),
    }
}

/// Runs `hostile` (with `timeoutMs` 3000) in a session of its own, beside a
/// bystander session, then asserts that at worst it broke its own session: its
/// call answered 200, later calls to it answer 200 or 410, and the bystander's
/// state, a new session and `/execute` work as before (so the executor was
/// neither broken nor restarted).
async fn assert_breaks_at_most_its_own_session(svc: &Service, hostile: &str) {
    let bystander = Session::open_default(svc).await;
    bystander.run_code("kept = 'bystander'").await;
    let victim = Session::open_default(svc).await;
    victim.run_code("ready = True").await;
    let reply = victim
        .execute(&json!({ "code": hostile, "timeoutMs": 3000 }))
        .await;
    assert_eq!(
        reply.status, 200,
        "the hostile call was not answered as a call: {}",
        reply.text
    );
    let mut outcomes = vec![outcome(&reply)];
    for _ in 0..2 {
        let later = victim
            .execute(&json!({ "code": "print(6 * 7)", "timeoutMs": 3000 }))
            .await;
        if later.status != 200 {
            assert_ended(&later);
        }
        outcomes.push(outcome(&later));
    }
    eprintln!("the hostile call, then two calls after it: {outcomes:#?}");
    let kept = bystander.run_code("kept").await;
    assert_eq!(kept["result"], "'bystander'", "the bystander: {kept:#}");
    let fresh = Session::open_default(svc).await;
    fresh.run_code("y = 6").await;
    let out = fresh.run_code("y * 7").await;
    assert_eq!(out["result"], "42", "a new session: {out:#}");
    let out = svc.run_code("print(2 + 2)").await;
    assert_eq!(out["stdout"], "4\n", "/execute: {out:#}");
    let status = delete_session(svc, &victim.id).await.status;
    assert!(
        [204, 404, 410].contains(&status),
        "DELETE of the victim: {status}"
    );
    bystander.delete().await;
    fresh.delete().await;
}

#[test]
fn rfc3339_parser_reads_what_the_contract_allows() {
    assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
    assert_eq!(
        parse_rfc3339("2026-12-02T12:39:19.5Z"),
        Some(1_796_215_159_500_000_000)
    );
    assert_eq!(
        parse_rfc3339("2026-12-02T13:39:19.500+01:00"),
        parse_rfc3339("2026-12-02T12:39:19.5Z")
    );
    for bad in [
        "2026-12-02 12:39:19",
        "2026-13-02T12:39:19Z",
        "1796215159",
        "",
    ] {
        assert_eq!(parse_rfc3339(bad), None, "{bad:?}");
    }
}

#[tokio::test]
async fn variables_imports_functions_and_files_persist_between_calls() {
    require_root!();
    let svc = Service::start();
    let session = Session::open_default(&svc).await;
    let first = session
        .run_code(
            "x = 41\n\
             import numpy as np\n\
             def double(v):\n\
             \x20   return 2 * v\n\
             with open('kept.txt', 'w') as f:\n\
             \x20   f.write('written by call 1')\n",
        )
        .await;
    assert_eq!(
        (&first["exitCode"], &first["stderr"], &first["result"]),
        (&json!(0), &json!(""), &Value::Null),
        "{first:#}"
    );
    let second = session
        .run_code("print(open('kept.txt').read(), int(np.arange(5).sum()), double(21))\nx + 1")
        .await;
    assert_eq!(
        (&second["exitCode"], &second["stderr"]),
        (&json!(0), &json!("")),
        "{second:#}"
    );
    assert_eq!(second["stdout"], "written by call 1 10 42\n", "{second:#}");
    assert_eq!(second["result"], "42", "{second:#}");
}

#[tokio::test]
async fn each_call_reads_its_own_stdin() {
    require_root!();
    let svc = Service::start();
    let session = Session::open_default(&svc).await;
    session.run_code("import sys\nseen = []").await;
    for (stdin, expected) in [
        (Some("first"), "['first']\n"),
        (Some("second"), "['first', 'second']\n"),
        (None, "['first', 'second', '']\n"),
    ] {
        let mut body = json!({ "code": "seen.append(sys.stdin.read())\nprint(seen)" });
        if let Some(stdin) = stdin {
            body["stdin"] = json!(stdin);
        }
        let out = session.run(body).await;
        assert_eq!(out["stdout"], expected, "{out:#}");
    }
}

#[tokio::test]
async fn an_uncaught_exception_reports_a_traceback_and_the_session_lives_on() {
    require_root!();
    let svc = Service::start();
    let session = Session::open_default(&svc).await;
    session.run_code("before = 'kept'").await;
    let out = session
        .run_code("during = 'set before the raise'\nraise ValueError('boom')")
        .await;
    assert_eq!(
        (
            &out["exitCode"],
            &out["signal"],
            &out["timedOut"],
            &out["stdout"]
        ),
        (&json!(1), &Value::Null, &json!(false), &json!("")),
        "{out:#}"
    );
    let stderr = out["stderr"].as_str().unwrap_or_default();
    assert!(
        stderr.starts_with("Traceback (most recent call last):\n")
            && stderr.ends_with("ValueError: boom\n"),
        "stderr: {stderr:?}"
    );
    let after = session.run_code("print(before, '/', during)").await;
    assert_eq!(
        (&after["exitCode"], &after["stdout"]),
        (&json!(0), &json!("kept / set before the raise\n")),
        "{after:#}"
    );
}

#[tokio::test]
async fn a_call_over_its_timeout_is_interrupted_and_the_session_lives_on() {
    require_root!();
    let svc = Service::start();
    for (what, code) in [
        ("a busy loop", "while True:\n    pass"),
        ("a sleep", "import time\ntime.sleep(60)"),
    ] {
        let session = Session::open_default(&svc).await;
        session.run_code("before = 'kept'").await;
        let out = session
            .run(json!({ "code": format!("during = 'set'\n{code}"), "timeoutMs": 1000 }))
            .await;
        assert_eq!(
            (
                &out["timedOut"],
                &out["limitExceeded"],
                &out["exitCode"],
                &out["signal"]
            ),
            (&json!(true), &json!("time"), &Value::Null, &json!("SIGINT")),
            "{what}: {out:#}"
        );
        let stderr = out["stderr"].as_str().unwrap_or_default();
        assert!(
            stderr.contains("Traceback (most recent call last)")
                && stderr.contains("KeyboardInterrupt"),
            "{what}: stderr {stderr:?}"
        );
        let after = session.run_code("print(before, during)").await;
        assert_eq!(
            (&after["exitCode"], &after["stdout"]),
            (&json!(0), &json!("kept set\n")),
            "after {what}: {after:#}"
        );
        session.delete().await;
    }
}

/// A call longer than the idle timeout is use, not idleness: the session is there
/// right after it.
#[tokio::test]
async fn a_session_does_not_expire_during_a_long_call() {
    require_root!();
    let svc = Service::start();
    let session = Session::open(&svc, json!({ "idleTimeoutMs": 4000 })).await;
    let out = session
        .run(json!({ "code": "import time\ntime.sleep(8)\nlong = 'done'", "timeoutMs": 30000 }))
        .await;
    assert_eq!(out["exitCode"], 0, "{out:#}");
    let after = session.run_code("print(long)").await;
    assert_eq!(after["stdout"], "done\n", "{after:#}");
}

/// A client that hangs up mid-call interrupts its call (issue 16: "a client that
/// disconnects kills ... its call, for a session"); the session lives on.
#[tokio::test]
async fn a_client_that_hangs_up_interrupts_its_call_and_the_session_lives_on() {
    require_root!();
    let svc = Service::start();
    let needle = sleep_needle("600.");
    let session = Session::open_default(&svc).await;
    session.run_code("kept = 'before'").await;
    let body = json!({
        "code": format!(
            "import subprocess\nsubprocess.run(['sleep', {}])\nfinished = True",
            py_concat(&needle)
        ),
        "timeoutMs": 60000,
    })
    .to_string();
    let request = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        session.path("/execute"),
        svc.frontend.addr(),
        svc.token(),
        body.len()
    );
    let mut client = tokio::net::TcpStream::connect(svc.frontend.addr())
        .await
        .expect("connect");
    tokio::io::AsyncWriteExt::write_all(&mut client, request.as_bytes())
        .await
        .expect("send");
    wait_for_process(&needle).await;
    drop(client);
    assert!(
        process_gone(&needle, CLEANUP_DEADLINE).await,
        "the call outlived its client: {:?}",
        host_processes_matching(&needle)
    );
    let (svc_ref, id) = (&svc, session.id.as_str());
    let idle = eventually(CLEANUP_DEADLINE, || async move {
        get_session(svc_ref, id).await.json["busy"] == false
    })
    .await;
    assert!(idle, "still busy: {}", session.state().await.text);
    let after = session
        .run_code("print(kept, 'finished' in globals())")
        .await;
    assert_eq!(after["stdout"], "before False\n", "{after:#}");
}

#[tokio::test]
async fn code_that_ignores_the_interrupt_is_killed_and_later_calls_get_410() {
    require_root!();
    let svc = Service::start();
    let needle = sleep_needle("600.");
    let session = Session::open_default(&svc).await;
    session.run_code(&background_sleep(&needle)).await;
    wait_for_process(&needle).await;
    let code = "import time\n\
                while True:\n\
                \x20   try:\n\
                \x20       time.sleep(60)\n\
                \x20   except KeyboardInterrupt:\n\
                \x20       print('ignored', flush=True)\n";
    let out = session
        .run(json!({ "code": code, "timeoutMs": 1000 }))
        .await;
    assert_eq!(
        (
            &out["timedOut"],
            &out["limitExceeded"],
            &out["exitCode"],
            &out["signal"]
        ),
        (
            &json!(true),
            &json!("time"),
            &Value::Null,
            &json!("SIGKILL")
        ),
        "{out:#}"
    );
    // The interrupt did come, and was ignored.
    assert!(
        out["stdout"]
            .as_str()
            .is_some_and(|s| s.starts_with("ignored\n")),
        "{out:#}"
    );
    assert_ended(&session.execute(&json!({ "code": "print(1)" })).await);
    assert_ended(&session.state().await);
    assert!(
        process_gone(&needle, CLEANUP_DEADLINE).await,
        "the killed session's background process lives on: {:?}",
        host_processes_matching(&needle)
    );
}

#[tokio::test]
async fn sys_exit_answers_its_call_then_ends_the_session() {
    require_root!();
    let svc = Service::start();
    let needle = sleep_needle("600.");
    let session = Session::open_default(&svc).await;
    session.run_code(&background_sleep(&needle)).await;
    wait_for_process(&needle).await;
    let out = session
        .run_code("import sys\nprint('bye')\nsys.exit(3)")
        .await;
    assert_eq!(
        (
            &out["exitCode"],
            &out["signal"],
            &out["timedOut"],
            &out["stdout"]
        ),
        (&json!(3), &Value::Null, &json!(false), &json!("bye\n")),
        "{out:#}"
    );
    assert_ended(&session.execute(&json!({ "code": "print(1)" })).await);
    assert_ended(&session.state().await);
    // Background processes live until the session ends: now.
    assert!(
        process_gone(&needle, CLEANUP_DEADLINE).await,
        "the ended session's background process lives on: {:?}",
        host_processes_matching(&needle)
    );
}

#[tokio::test]
async fn an_ended_session_answers_410_for_session_ended_keep_ms_then_404() {
    require_root!();
    let svc = Service::builder()
        .executor_config_toml("session_ended_keep_ms = 2000\n")
        .start();
    let session = Session::open_default(&svc).await;
    let out = session.run_code("import sys\nsys.exit(0)").await;
    assert_eq!(out["exitCode"], 0, "{out:#}");
    assert_ended(&session.state().await);
    let (svc, id) = (&svc, session.id.as_str());
    let forgotten = eventually(CLEANUP_DEADLINE, || async move {
        get_session(svc, id).await.status == 404
    })
    .await;
    assert!(forgotten, "still {}", session.state().await.text);
    assert_error(&session.state().await, 404, json!({ "error": NOT_FOUND }));
    assert_error(
        &session.execute(&json!({ "code": "print(1)" })).await,
        404,
        json!({ "error": NOT_FOUND }),
    );
}

#[tokio::test]
async fn a_memory_limit_kill_ends_the_session() {
    require_root!();
    let svc = Service::start();
    let session = Session::open(&svc, json!({ "limits": { "memoryMb": 64 } })).await;
    let small = session.run_code("x = 1\nprint('fits')").await;
    assert_eq!(small["stdout"], "fits\n", "{small:#}");
    let out = session
        .run(json!({ "code": "block = b'x' * (200 << 20)\nprint('survived')", "timeoutMs": 30000 }))
        .await;
    assert_eq!(out["limitExceeded"], "memory", "{out:#}");
    assert_eq!(out["stdout"], "", "{out:#}");
    assert_ended(&session.execute(&json!({ "code": "print(x)" })).await);
    assert_ended(&session.state().await);
}

#[tokio::test]
async fn a_second_call_while_one_runs_gets_409() {
    require_root!();
    let svc = Service::start();
    let needle = sleep_needle("8.");
    let session = Session::open_default(&svc).await;
    let code = format!(
        "import subprocess\nsubprocess.run(['sleep', {}])\nprint('first done')",
        py_concat(&needle)
    );
    let first = session.run(json!({ "code": code, "timeoutMs": 60000 }));
    let meanwhile = async {
        wait_for_process(&needle).await;
        let second = session.execute(&json!({ "code": "print('second')" })).await;
        let state = session.state().await;
        (second, state)
    };
    let (first, (second, state)) = tokio::join!(first, meanwhile);
    assert_error(&second, 409, json!({ "error": BUSY }));
    assert_eq!(state.status, 200, "{}", state.text);
    assert_eq!(state.json["busy"], true, "{}", state.text);
    assert_eq!(first["stdout"], "first done\n", "{first:#}");
    let after = session.run_code("print('second')").await;
    assert_eq!(after["stdout"], "second\n", "{after:#}");
    let state = session.state().await;
    assert_eq!(
        (&state.json["busy"], &state.json["calls"]),
        (&json!(false), &json!(2)),
        "the refused call counted: {}",
        state.text
    );
}

#[tokio::test]
async fn two_sessions_share_no_variable_file_process_namespace_or_cgroup() {
    require_root!();
    let svc = Service::start();
    let (needle_a, needle_b) = (sleep_needle("600."), sleep_needle("600."));
    let a = Session::open_default(&svc).await;
    let b = Session::open_default(&svc).await;
    a.run_code(&format!(
        "{}secret = 'only in a'\nopen('a-only.txt', 'w').write('a')",
        background_sleep(&needle_a)
    ))
    .await;
    b.run_code(&background_sleep(&needle_b)).await;
    let (pid_a, pid_b) = (
        wait_for_process(&needle_a).await,
        wait_for_process(&needle_b).await,
    );
    let probe = r#"
import json, os
def cmdline(pid):
    try:
        with open('/proc/%d/cmdline' % pid, 'rb') as f:
            return f.read().replace(b'\0', b' ').decode('utf-8', 'replace')
    except OSError as e:
        return repr(e)
pids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())
print(json.dumps({
    'secret': 'secret' in globals(),
    'work': sorted(os.listdir('.')),
    'cmdlines': [cmdline(p) for p in pids],
    'ns': {n: os.readlink('/proc/self/ns/' + n) for n in ('pid', 'mnt', 'net', 'ipc', 'uts', 'cgroup')},
    'work_dev': os.stat('.').st_dev,
}))
"#;
    let seen_a = stdout_json(&a.run_code(probe).await);
    let seen_b = stdout_json(&b.run_code(probe).await);
    // What A holds, A sees (the controls); B sees none of it.
    assert_eq!(
        (&seen_a["secret"], &seen_a["work"]),
        (&json!(true), &json!(["a-only.txt"])),
        "{seen_a:#}"
    );
    assert_eq!(
        (&seen_b["secret"], &seen_b["work"]),
        (&json!(false), &json!([])),
        "{seen_b:#}"
    );
    let cmdlines: Vec<&str> = seen_b["cmdlines"]
        .as_array()
        .expect("cmdlines")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        cmdlines.iter().any(|c| c.contains(&needle_b)),
        "B does not see its own sleep: {cmdlines:?}"
    );
    assert!(
        !cmdlines.iter().any(|c| c.contains(&needle_a)),
        "B sees A's sleep: {cmdlines:?}"
    );
    assert!(
        cmdlines.len() <= 5,
        "B sees more than its own few processes: {cmdlines:?}"
    );
    for ns in ["pid", "mnt", "net", "ipc", "uts", "cgroup"] {
        assert_ne!(
            seen_a["ns"][ns], seen_b["ns"][ns],
            "the sessions share their {ns} namespace"
        );
    }
    assert_ne!(
        seen_a["work_dev"], seen_b["work_dev"],
        "the sessions' work dirs are one filesystem"
    );
    let executor = cgroup_dirs(svc.executor.pid().expect("the executor runs"));
    let own = |pid: u32| -> Vec<PathBuf> {
        cgroup_dirs(pid)
            .into_iter()
            .filter(|dir| !executor.contains(dir))
            .collect()
    };
    let (cgroups_a, cgroups_b) = (own(pid_a), own(pid_b));
    assert!(
        !cgroups_a.is_empty() && !cgroups_b.is_empty(),
        "a session runs in the executor's cgroups: {cgroups_a:?} / {cgroups_b:?}"
    );
    assert!(
        cgroups_a.iter().all(|dir| !cgroups_b.contains(dir)),
        "the sessions share a cgroup: {cgroups_a:?} / {cgroups_b:?}"
    );
}

#[tokio::test]
async fn delete_leaves_nothing_and_background_processes_live_until_then() {
    require_root!();
    let svc = Service::start();
    let needle = sleep_needle("600.");
    let marker = format!("marker-{}.txt", random_hex(6));
    let session = Session::open_default(&svc).await;
    let first = session
        .run_code(&format!(
            "{}open({marker:?}, 'w').write('x')",
            background_sleep(&needle)
        ))
        .await;
    assert_eq!(first["exitCode"], 0, "{first:#}");
    // Alive after the call that started it answered, and after the next call.
    let pid = wait_for_process(&needle).await;
    let between = session.run_code("print('between')").await;
    assert_eq!(between["stdout"], "between\n", "{between:#}");
    assert_eq!(
        host_processes_matching(&needle),
        [pid],
        "the background process did not outlive the calls"
    );
    let footprint = Footprint::take(&svc, &needle, &marker).await;
    assert!(
        !svc.executor.jail_processes().is_empty(),
        "the live session shows no jail process on the host"
    );
    session.delete().await;
    // At once: the contract says everything is gone before the answer.
    footprint
        .assert_gone_within(Duration::ZERO, "when DELETE answered")
        .await;
    assert_eq!(
        svc.executor.jail_processes(),
        Vec::<u32>::new(),
        "jail processes left after DELETE"
    );
    let gone = json!({ "error": NOT_FOUND });
    assert_error(&session.state().await, 404, gone.clone());
    assert_error(
        &session.execute(&json!({ "code": "print(1)" })).await,
        404,
        gone.clone(),
    );
    assert_error(&delete_session(&svc, &session.id).await, 404, gone);
}

#[tokio::test]
async fn an_idle_session_expires_and_leaves_nothing() {
    require_root!();
    let svc = Service::start();
    let needle = sleep_needle("600.");
    let marker = format!("marker-{}.txt", random_hex(6));
    let session = Session::open(&svc, json!({ "idleTimeoutMs": 1000 })).await;
    assert_eq!(
        session.created["idleTimeoutMs"], 1000,
        "{:#}",
        session.created
    );
    session
        .run_code(&format!(
            "{}open({marker:?}, 'w').write('x')",
            background_sleep(&needle)
        ))
        .await;
    let footprint = Footprint::take(&svc, &needle, &marker).await;
    // Watched from the host only: a GET meanwhile might count as use.
    footprint
        .assert_gone_within(CLEANUP_DEADLINE, "30 s after a 1 s idle timeout")
        .await;
    let gone = json!({ "error": NOT_FOUND });
    assert_error(&session.state().await, 404, gone.clone());
    assert_error(
        &session.execute(&json!({ "code": "print(1)" })).await,
        404,
        gone,
    );
}

#[tokio::test]
async fn post_sessions_is_429_with_retry_after_at_session_max() {
    require_root!();
    let svc = Service::builder()
        .executor_config_toml("session_max = 2\n")
        .start();
    let first = Session::open_default(&svc).await;
    let _second = Session::open(&svc, json!({})).await;
    assert_too_many(&post_sessions(&svc, "{}").await);
    let counted = wait_until_async(Duration::from_secs(10), || {
        svc.blocking_health()["sessions"] == 2
    })
    .await;
    assert!(counted, "/health: {}", svc.blocking_health());
    let svc_ref = &svc;
    let gauge = eventually(Duration::from_secs(10), || async move {
        metric(svc_ref, "pysandbox_sessions_active").await == Some(2.0)
    })
    .await;
    assert!(
        gauge,
        "pysandbox_sessions_active: {:?}",
        metric(&svc, "pysandbox_sessions_active").await
    );
    // A place frees when a session goes.
    first.delete().await;
    let third = Session::open_default(&svc).await;
    let out = third.run_code("6 * 7").await;
    assert_eq!(out["result"], "42", "{out:#}");
    assert_too_many(&post_sessions(&svc, "").await);
    // And when one ends (410 now): only live sessions count.
    let out = third.run_code("import sys\nsys.exit(0)").await;
    assert_eq!(out["exitCode"], 0, "{out:#}");
    assert_ended(&third.state().await);
    let fourth = Session::open_default(&svc).await;
    let out = fourth.run_code("6 * 7").await;
    assert_eq!(out["result"], "42", "{out:#}");
}

#[tokio::test]
async fn post_sessions_is_429_when_their_memory_would_pass_session_memory_mb() {
    require_root!();
    let svc = Service::builder()
        .executor_config_toml("session_memory_mb = 200\n")
        .start();
    let big = json!({ "limits": { "memoryMb": 128 } });
    let first = Session::open(&svc, big.clone()).await;
    assert_too_many(&post_sessions(&svc, big.to_string()).await);
    // 128 + 64 fits in 200: it is the memory that is full, not a count.
    let small = Session::open(&svc, json!({ "limits": { "memoryMb": 64 } })).await;
    assert_eq!(
        small.created["limits"]["memoryMb"], 64,
        "{:#}",
        small.created
    );
    assert_too_many(&post_sessions(&svc, big.to_string()).await);
    // A deleted session's memory is given back: 64 + 128 fits again.
    first.delete().await;
    let again = Session::open(&svc, big.clone()).await;
    assert_eq!(
        again.created["limits"]["memoryMb"], 128,
        "{:#}",
        again.created
    );
}

#[tokio::test]
async fn unknown_and_malformed_ids_are_404() {
    require_root!();
    let svc = Service::start();
    let live = Session::open_default(&svc).await;
    let (route, _) = live.id.split_once('.').expect("<route>.<hex>");
    let ids = [
        "nope".to_owned(),
        "a".repeat(300),
        format!("{route}.{}", random_hex(150)),
        "..%2F..".to_owned(),
        "..%2F..%2F..%2Fetc".to_owned(),
        format!("{route}.{}", random_hex(16)),
        format!("{}0", live.id),
        format!("other-route.{}", random_hex(16)),
    ];
    let not_found = json!({ "error": NOT_FOUND });
    for id in &ids {
        assert_error(&get_session(&svc, id).await, 404, not_found.clone());
        let reply = execute_in(&svc, id, &json!({ "code": "print(1)" })).await;
        assert_error(&reply, 404, not_found.clone());
        assert_error(&delete_session(&svc, id).await, 404, not_found.clone());
    }
    let state = live.state().await;
    assert_eq!(
        (state.status, &state.json["calls"]),
        (200, &json!(0)),
        "{}",
        state.text
    );
}

#[tokio::test]
async fn every_session_route_needs_the_token() {
    require_root!();
    let svc = Service::start();
    let session = Session::open_default(&svc).await;
    let routes = [
        (Method::POST, "/sessions".to_owned(), "{}"),
        (Method::GET, session.path(""), ""),
        (Method::DELETE, session.path(""), ""),
        (
            Method::POST,
            session.path("/execute"),
            r#"{"code":"print(1)"}"#,
        ),
    ];
    for (method, path, body) in &routes {
        let send = |auth: Option<&'static str>| {
            let mut headers = vec![("content-type", "application/json")];
            if let Some(auth) = auth {
                headers.push(("authorization", auth));
            }
            let body = (*method == Method::POST).then(|| body.as_bytes().to_vec());
            let (svc, method, path) = (&svc, method.clone(), path.clone());
            async move { svc.request(method, &path, &headers, body).await }
        };
        for auth in [None, Some("Basic Zm9vOmJhcg=="), Some("Bearer")] {
            let reply = send(auth).await;
            assert_error(&reply, 401, json!({ "error": AUTH_ERROR }));
        }
        let reply = send(Some("Bearer not-the-token")).await;
        assert_error(&reply, 403, json!({ "error": "invalid token" }));
    }
    // Nothing was run, deleted or created.
    let state = session.state().await;
    assert_eq!(
        (state.status, &state.json["calls"]),
        (200, &json!(0)),
        "{}",
        state.text
    );
    let health = wait_until_async(Duration::from_secs(10), || {
        svc.blocking_health()["sessions"] == 1
    })
    .await;
    assert!(health, "/health: {}", svc.blocking_health());
}

#[tokio::test]
async fn session_limits_and_network_in_a_call_are_400_but_cpu_and_output_apply() {
    require_root!();
    let svc = Service::start();
    let session = Session::open_default(&svc).await;
    for limit in ["memoryMb", "maxProcesses", "diskMb"] {
        let reply = session
            .execute(&json!({ "code": "print(1)", "limits": { limit: 64 } }))
            .await;
        let field = format!("limits.{limit}");
        assert_error(
            &reply,
            400,
            json!({
                "error": format!("{field}: is the session's: set it when the session is created"),
                "field": field,
            }),
        );
    }
    let reply = session
        .execute(&json!({ "code": "print(1)", "network": { "allowedDomains": [] } }))
        .await;
    let field = reply.json["field"].as_str().unwrap_or_default().to_owned();
    assert!(
        field.starts_with("network"),
        "a network field in a call: {}",
        reply.text
    );
    assert_field_error(&reply, &field);
    // The same validation as /execute for what a call may set.
    let reply = session
        .execute(&json!({ "code": "print(1)", "timeoutMs": 120001 }))
        .await;
    assert_error(
        &reply,
        400,
        json!({
            "error": "timeoutMs: must be an integer from 1 to 120000",
            "field": "timeoutMs",
        }),
    );
    let out = session
        .run(json!({
            "code": "print('x' * 1000)",
            "limits": { "cpuMs": 5000, "outputBytes": 100 },
        }))
        .await;
    assert_eq!(
        (
            out["stdout"].as_str().map(str::len),
            &out["stdoutTruncated"],
            &out["limitExceeded"]
        ),
        (Some(100), &json!(true), &json!("output")),
        "{out:#}"
    );
    // A call's CPU limit interrupts that call only, as its time limit does.
    session.run_code("kept = 'before'").await;
    let out = session
        .run(json!({
            "code": "while True:\n    pass",
            "limits": { "cpuMs": 500 },
            "timeoutMs": 60000,
        }))
        .await;
    assert_eq!(out["limitExceeded"], "cpu", "{out:#}");
    let after = session.run_code("print(kept)").await;
    assert_eq!(after["stdout"], "before\n", "{after:#}");
    let state = session.state().await;
    assert_eq!(
        state.json["calls"], 4,
        "a refused call counted: {}",
        state.text
    );
}

#[tokio::test]
async fn a_bad_post_sessions_body_is_400() {
    require_root!();
    let svc = Service::start();
    assert_error(
        &post_sessions(&svc, "{nope").await,
        400,
        json!({ "error": "request body is not valid JSON" }),
    );
    for body in ["[]", "\"x\"", "42", "true"] {
        assert_error(
            &post_sessions(&svc, body).await,
            400,
            json!({ "error": "request body must be a JSON object" }),
        );
    }
    for idle in [
        json!(0),
        json!(999),
        json!(3_600_001),
        json!(-1),
        json!("1000"),
    ] {
        let reply = post_sessions(&svc, json!({ "idleTimeoutMs": idle }).to_string()).await;
        assert_field_error(&reply, "idleTimeoutMs");
    }
    let reply = post_sessions(&svc, json!({ "limits": { "memoryMb": 5000 } }).to_string()).await;
    assert_error(
        &reply,
        400,
        json!({ "error": "limits.memoryMb: must be from 16 to 4096", "field": "limits.memoryMb" }),
    );
    // Nothing is allowed by this configuration (the exact message under one that
    // allows something: a_session_may_narrow_the_configured_network_as_execute_does).
    let reply = post_sessions(
        &svc,
        json!({ "network": { "allowedDomains": ["evil.com"] } }).to_string(),
    )
    .await;
    assert_field_error(&reply, "network.allowedDomains");
    // The bounds themselves are accepted.
    for idle in [1000, 3_600_000] {
        let session = Session::open(&svc, json!({ "idleTimeoutMs": idle })).await;
        assert_eq!(
            session.created["idleTimeoutMs"], idle,
            "{:#}",
            session.created
        );
        session.delete().await;
    }
}

/// `network` in `POST /sessions` follows `/execute`'s rules: a session may ask for
/// what the configuration allows, and its proxy refuses the rest.
#[tokio::test]
async fn a_session_may_narrow_the_configured_network_as_execute_does() {
    require_root!();
    let svc = Service::builder()
        .executor_config_toml("[network]\nallowed_domains = [\"allowed.test\"]\n")
        .start();
    let reply = post_sessions(
        &svc,
        json!({ "network": { "allowedDomains": ["evil.test"] } }).to_string(),
    )
    .await;
    assert_error(
        &reply,
        400,
        json!({
            "error": "network.allowedDomains: evil.test is not allowed by the executor's configuration",
            "field": "network.allowedDomains",
        }),
    );
    let session = Session::open(
        &svc,
        json!({ "network": { "allowedDomains": ["allowed.test"] } }),
    )
    .await;
    let code = "import socket\n\
                s = socket.create_connection(('127.0.0.1', 3128), timeout=20)\n\
                s.sendall(b'CONNECT evil.test:443 HTTP/1.1\\r\\nHost: evil.test:443\\r\\n\\r\\n')\n\
                print(s.recv(100).split()[1].decode())";
    let out = session.run_code(code).await;
    assert_eq!(out["stdout"], "403\n", "{out:#}");
    assert_eq!(out["violations"][0]["target"], "evil.test:443", "{out:#}");
}

#[tokio::test]
async fn the_state_shows_calls_times_memory_and_limits() {
    require_root!();
    let svc = Service::builder()
        .executor_config_toml(
            "session_route = \"pod-7\"\n\
             session_idle_timeout_ms = 90000\n\
             session_max_idle_timeout_ms = 120000\n",
        )
        .start();
    let asked = json!({ "memoryMb": 256, "maxProcesses": 32, "diskMb": 64 });
    let session = Session::open(&svc, json!({ "idleTimeoutMs": 120000, "limits": asked })).await;
    let created = &session.created;
    assert_state_keys(created);
    let (route, key) = session.id.split_once('.').expect("<route>.<hex>");
    assert_eq!(route, "pod-7", "{}", session.id);
    assert!(
        key.len() == 32 && key.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
        "not 32 lowercase hex digits after the route: {}",
        session.id
    );
    assert_eq!(
        (
            &created["calls"],
            &created["busy"],
            &created["idleTimeoutMs"],
            &created["limits"]
        ),
        (&json!(0), &json!(false), &json!(120000), &asked),
        "{created:#}"
    );
    session.run_code("x = 1").await;
    session.run_code("x + 1").await;
    let reply = session.state().await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let state = &reply.json;
    assert_state_keys(state);
    assert_eq!(
        (
            &state["sessionId"],
            &state["calls"],
            &state["busy"],
            &state["idleTimeoutMs"],
            &state["limits"],
            &state["createdAt"]
        ),
        (
            &json!(session.id),
            &json!(2),
            &json!(false),
            &json!(120000),
            &asked,
            &created["createdAt"]
        ),
        "{state:#}"
    );
    let (created_at, last_used, expires) = (
        timestamp(state, "createdAt"),
        timestamp(state, "lastUsedAt"),
        timestamp(state, "expiresAt"),
    );
    assert!(
        created_at <= last_used && last_used < expires,
        "createdAt <= lastUsedAt < expiresAt does not hold: {state:#}"
    );
    assert!(
        last_used >= timestamp(created, "lastUsedAt"),
        "lastUsedAt went back: {created:#} then {state:#}"
    );
    // Expiry is an idle timeout after the last use (to a second: rounding).
    let idle_nanos = 120_000 * 1_000_000;
    assert!(
        (expires - last_used - idle_nanos).abs() <= 1_000_000_000,
        "expiresAt is not lastUsedAt + idleTimeoutMs: {state:#}"
    );
    // The host's clock, give or take five minutes: the epoch and zone are right.
    let now = i128::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_nanos(),
    )
    .expect("nanoseconds fit");
    assert!(
        (now - created_at).abs() < 300 * 1_000_000_000,
        "createdAt is not now: {state:#}"
    );
    let memory = state["memoryBytes"].as_u64().unwrap_or_default();
    assert!(
        memory > 0 && memory <= 256 * MIB,
        "memoryBytes is not a positive number within the 256 MiB limit: {state:#}"
    );
    // Without a body: the configured default idle timeout and /execute's limits.
    let plain = Session::open_default(&svc).await;
    assert_eq!(
        (&plain.created["idleTimeoutMs"], &plain.created["limits"]),
        (
            &json!(90000),
            &json!({ "memoryMb": 512, "maxProcesses": 64, "diskMb": 256 })
        ),
        "{:#}",
        plain.created
    );
    assert_ne!(plain.id, session.id);
    // And the configured maximum.
    let reply = post_sessions(&svc, json!({ "idleTimeoutMs": 120001 }).to_string()).await;
    assert_field_error(&reply, "idleTimeoutMs");
}

#[tokio::test]
async fn return_files_returns_only_what_the_call_created_or_changed() {
    require_root!();
    let svc = Service::start();
    let session = Session::open_default(&svc).await;
    let first = session
        .run(json!({
            "code": "open('a.txt', 'w').write('a')\nopen('b.txt', 'w').write('b1')",
            "returnFiles": true,
        }))
        .await;
    assert_eq!(
        returned_files(&first),
        [("a.txt".into(), "a".into()), ("b.txt".into(), "b1".into())],
        "{first:#}"
    );
    let second = session
        .run(json!({
            "code": "import os\n\
                     assert open('a.txt').read() == 'a'\n\
                     open('b.txt', 'w').write('b2, longer')\n\
                     os.makedirs('sub', exist_ok=True)\n\
                     open('sub/c.txt', 'w').write('c')",
            "returnFiles": true,
        }))
        .await;
    assert_eq!(second["exitCode"], 0, "{second:#}");
    assert_eq!(
        returned_files(&second),
        [
            ("b.txt".into(), "b2, longer".into()),
            ("sub/c.txt".into(), "c".into())
        ],
        "{second:#}"
    );
    let third = session
        .run(json!({ "code": "print(sorted(os.listdir('.')))", "returnFiles": true }))
        .await;
    assert_eq!(third["stdout"], "['a.txt', 'b.txt', 'sub']\n", "{third:#}");
    assert_eq!(returned_files(&third), [], "{third:#}");
    // Quick calls back to back, each writing at its very end: a call that starts
    // within a clock tick of the previous one's last write must not return it.
    for step in 0..10 {
        let name = format!("step-{step}.txt");
        let out = session
            .run(json!({
                "code": format!("open({name:?}, 'w').write('{step}')"),
                "returnFiles": true,
            }))
            .await;
        assert_eq!(
            returned_files(&out),
            [(name, step.to_string())],
            "call {step} of the quick ones: {out:#}"
        );
    }
}

#[tokio::test]
async fn input_files_overwrite_what_an_earlier_call_left() {
    require_root!();
    let svc = Service::start();
    let session = Session::open_default(&svc).await;
    session
        .run_code(
            "import os\nos.makedirs('data')\n\
             open('data/in.csv', 'w').write('old content, longer than the new\\n')\n\
             open('other.txt', 'w').write('kept')",
        )
        .await;
    let out = session
        .run(json!({
            "code": "print(repr(open('data/in.csv').read()), open('other.txt').read())\n\
                     open('data/in.csv', 'a').write('more\\n')",
            "files": [{ "path": "data/in.csv", "contentBase64": BASE64.encode("new\n") }],
        }))
        .await;
    assert_eq!(
        (&out["exitCode"], &out["stdout"]),
        (&json!(0), &json!("'new\\n' kept\n")),
        "{out:#}"
    );
    let after = session
        .run_code("print(repr(open('data/in.csv').read()))")
        .await;
    assert_eq!(after["stdout"], "'new\\nmore\\n'\n", "{after:#}");
}

#[tokio::test]
async fn open_figures_come_back_as_displays_and_are_closed_and_the_last_value_is_the_result() {
    require_root!();
    let svc = Service::start();
    let session = Session::open_default(&svc).await;
    let out = session
        .run_code("import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\n6 * 7")
        .await;
    assert_eq!(out["result"], "42", "{out:#}");
    let displays = out["displays"].as_array().expect("displays");
    assert_eq!(displays.len(), 1, "{out:#}");
    assert_eq!(displays[0]["contentType"], "image/png");
    let png = BASE64
        .decode(displays[0]["contentBase64"].as_str().unwrap_or_default())
        .expect("contentBase64 is base64");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let next = session.run_code("plt.get_fignums()").await;
    assert_eq!(
        (&next["result"], &next["displays"]),
        (&json!("[]"), &json!([])),
        "{next:#}"
    );
    // A figure shown explicitly comes back once, not again at the cell's end.
    let shown = session
        .run_code("plt.figure()\nplt.plot([3, 1])\nplt.show()\nfigure_done = True")
        .await;
    assert_eq!(
        (shown["displays"].as_array().map(Vec::len), &shown["result"]),
        (Some(1), &Value::Null),
        "{shown:#}"
    );
}

#[tokio::test]
async fn a_streamed_session_call_ends_with_the_plain_result() {
    require_root!();
    let svc = Service::start();
    let code = "import sys\n\
                import matplotlib.pyplot as plt\n\
                print('out', flush=True)\n\
                print('err', file=sys.stderr, flush=True)\n\
                plt.plot([1, 2])\n\
                open('made.txt', 'w').write('made')\n\
                made_here = 'streamed'\n\
                6 * 7";
    let body = json!({ "code": code, "returnFiles": true });
    let plain = Session::open_default(&svc).await;
    let plain_result = plain.run(body.clone()).await;
    let streamed = Session::open_default(&svc).await;
    let events = stream_call(&svc, &streamed.id, &body).await;
    let (last, data) = events.last().expect("no event at all");
    assert_eq!(last, "result", "the last event: {events:?}");
    assert_eq!(
        events.iter().filter(|(name, _)| name == "result").count(),
        1,
        "{events:?}"
    );
    assert_eq!(untimed(data), untimed(&plain_result), "streamed vs plain");
    assert_eq!(data["result"], "42");
    let text = |stream: &str| -> String {
        events
            .iter()
            .filter(|(name, _)| name == stream)
            .filter_map(|(_, data)| data["text"].as_str())
            .collect()
    };
    assert_eq!(
        (text("stdout"), text("stderr")),
        ("out\n".into(), "err\n".into())
    );
    let displays: Vec<&Value> = events
        .iter()
        .filter(|(name, _)| name == "display")
        .map(|(_, data)| data)
        .collect();
    assert_eq!(displays, [&data["displays"][0]], "{events:?}");
    // The streamed call was a call of its session.
    let after = streamed.run_code("print(made_here)").await;
    assert_eq!(after["stdout"], "streamed\n", "{after:#}");
    // Errors before the call starts keep their JSON status.
    let reply = svc
        .request(
            Method::POST,
            "/sessions/nope/execute",
            &[
                ("authorization", bearer(&svc).as_str()),
                ("accept", "text/event-stream"),
            ],
            Some(br#"{"code":"print(1)"}"#.to_vec()),
        )
        .await;
    assert_error(&reply, 404, json!({ "error": NOT_FOUND }));
}

#[tokio::test]
async fn execute_stays_stateless_beside_a_live_session() {
    require_root!();
    let svc = Service::start();
    let session = Session::open_default(&svc).await;
    session
        .run_code("import os\nshared_name = 'session'\nopen('session.txt', 'w').write('s')")
        .await;
    let out = svc
        .run_code("import os\nprint('shared_name' in globals(), sorted(os.listdir('.')))")
        .await;
    assert_eq!(out["stdout"], "False []\n", "{out:#}");
    svc.run_code("leaked = 1").await;
    let out = svc.run_code("print('leaked' in globals())").await;
    assert_eq!(out["stdout"], "False\n", "{out:#}");
    let out = session
        .run_code("print(shared_name, 'leaked' in globals(), sorted(os.listdir('.')))")
        .await;
    assert_eq!(out["stdout"], "session False ['session.txt']\n", "{out:#}");
}

#[tokio::test]
async fn an_executor_restart_ends_sessions_and_leaves_nothing() {
    require_root!();
    let mut svc = Service::start();
    let needle = sleep_needle("600.");
    let marker = format!("marker-{}.txt", random_hex(6));
    let (id, footprint) = {
        let session = Session::open_default(&svc).await;
        session
            .run_code(&format!(
                "{}open({marker:?}, 'w').write('x')",
                background_sleep(&needle)
            ))
            .await;
        let footprint = Footprint::take(&svc, &needle, &marker).await;
        (session.id, footprint)
    };
    svc.executor.restart();
    footprint
        .assert_gone_within(CLEANUP_DEADLINE, "after the executor restarted")
        .await;
    assert_gone_or_ended(&get_session(&svc, &id).await);
    assert_gone_or_ended(&execute_in(&svc, &id, &json!({ "code": "print(1)" })).await);
    let fresh = Session::open_default(&svc).await;
    fresh.run_code("z = 41").await;
    let out = fresh.run_code("z + 1").await;
    assert_eq!(out["result"], "42", "{out:#}");
}

/// Junk and forged records (a result, an early end of the cell, a 4 GiB PNG) on
/// the display channel, which the session's interpreter also uses for its cell-end
/// records.
#[tokio::test]
async fn junk_and_forged_records_on_the_display_channel_break_at_most_their_own_session() {
    require_root!();
    let svc = Service::start();
    let junk = "with open('/tmp/.pysandbox-display', 'wb') as f:\n\
                \x20   f.write(b'junk' * 4096)\n\
                print('wrote')";
    let forged = "import os, struct, time\n\
                  fd = os.open('/tmp/.pysandbox-display', os.O_WRONLY)\n\
                  def record(kind, payload):\n\
                  \x20   os.write(fd, kind + struct.pack('>I', len(payload)) + payload)\n\
                  record(b'R', b'forged result')\n\
                  record(b'E', b'0')\n\
                  time.sleep(1)\n\
                  print('after the forged end', flush=True)\n\
                  record(b'E', b'I')\n\
                  record(b'E', b'12')\n\
                  os.write(fd, b'D' + struct.pack('>I', 0xFFFFFFFF) + b'\\x89PNG\\r\\n\\x1a\\n')";
    let closed = "import os\n\
                  for fd in range(3, 64):\n\
                  \x20   try:\n\
                  \x20       os.close(fd)\n\
                  \x20   except OSError:\n\
                  \x20       pass\n\
                  print('closed')";
    for hostile in [junk, forged, closed] {
        assert_breaks_at_most_its_own_session(&svc, hostile).await;
    }
}

/// Writes to and reads from stdin and every other descriptor the interpreter
/// holds, and leaves threads reading them, so that the next call's order may be
/// stolen: the executor must still answer that call within its timeout.
#[tokio::test]
async fn junk_on_every_descriptor_and_stolen_orders_break_at_most_their_own_session() {
    require_root!();
    let svc = Service::start();
    let hostile = r#"
import os, threading
try:
    os.write(0, b'junk\n' * 100)
except OSError as e:
    print('fd 0 refuses writes:', e.errno)
os.set_blocking(0, False)
try:
    print('fd 0 read', len(os.read(0, 4096)), 'bytes')
except OSError as e:
    print('fd 0 refuses reads:', e.errno)
def steal(fd):
    while True:
        try:
            if not os.read(fd, 4096):
                return
        except OSError:
            return
for name in os.listdir('/proc/self/fd'):
    fd = int(name)
    if fd in (1, 2):
        continue
    try:
        os.write(fd, b'junk\n' * 100)
    except OSError:
        pass
    try:
        os.set_blocking(fd, True)
    except OSError:
        pass
    threading.Thread(target=steal, args=(fd,), daemon=True).start()
print('planted')
"#;
    assert_breaks_at_most_its_own_session(&svc, hostile).await;
}

/// The session's interpreter announces its pid on the display channel for the
/// executor to interrupt it; a cell that forges that record with a host pid must
/// not make the executor signal that host process when the call times out.
#[tokio::test]
async fn a_forged_pid_record_never_makes_the_executor_signal_a_host_process() {
    require_root!();
    let svc = Service::start();
    let needle = sleep_needle("600.");
    let mut host = std::process::Command::new("sleep")
        .arg(&needle)
        .spawn()
        .expect("spawn a host sleep");
    let hostile = format!(
        "import os, struct\n\
         fd = os.open('/tmp/.pysandbox-display', os.O_WRONLY)\n\
         pid = b'{}'\n\
         os.write(fd, b'P' + struct.pack('>I', len(pid)) + pid)\n\
         while True:\n\
         \x20   pass",
        host.id()
    );
    assert_breaks_at_most_its_own_session(&svc, &hostile).await;
    let status = host.try_wait().expect("wait for the host sleep");
    let _ = host.kill();
    let _ = host.wait();
    assert_eq!(status, None, "the host process was signalled");
}

#[tokio::test]
async fn the_session_cpu_and_output_limits_are_each_call_s_default() {
    require_root!();
    let svc = Service::start();
    let session = Session::open(
        &svc,
        json!({ "limits": { "outputBytes": 10, "cpuMs": 300 } }),
    )
    .await;
    let printed = session.run_code("print('x' * 100)").await;
    assert_eq!(printed["stdout"], "x".repeat(10), "{printed:#}");
    assert_eq!(printed["limitExceeded"], "output", "{printed:#}");
    let spun = session.run_code("while True: pass").await;
    assert_eq!(
        (&spun["limitExceeded"], &spun["signal"]),
        (&json!("cpu"), &json!("SIGINT")),
        "{spun:#}"
    );
    // A call may ask for its own, within the maxima.
    let own = session
        .run(json!({ "code": "print('y' * 20)", "limits": { "outputBytes": 50 } }))
        .await;
    assert_eq!(own["stdout"], format!("{}\n", "y".repeat(20)), "{own:#}");
}

#[tokio::test]
async fn delete_interrupts_a_running_call_at_once() {
    require_root!();
    let svc = Service::start();
    let needle = sleep_needle("99.");
    let session = Session::open_default(&svc).await;
    let code = format!(
        "import subprocess\nsubprocess.run(['sleep', {}])\nprint('finished')",
        py_concat(&needle)
    );
    let body = json!({ "code": code, "timeoutMs": 100000 });
    let running = session.execute(&body);
    let deleting = async {
        wait_for_process(&needle).await;
        session.delete().await;
        // The sleep (99 s) is gone with the session, not waited for.
        assert!(
            process_gone(&needle, Duration::ZERO).await,
            "the call's process outlived DELETE"
        );
    };
    let (call, ()) = tokio::join!(running, deleting);
    assert!(
        !call.text.contains("finished"),
        "the call ran to its end: {}",
        call.text
    );
    assert_eq!(get_session(&svc, &session.id).await.status, 404);
}
