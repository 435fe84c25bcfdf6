//! `GET /openapi.json`, judged by third parties: `openapi-spec-validator` says the
//! document is valid OpenAPI 3.1, and `jsonschema` holds the README's example
//! requests and the service's real answers (plain, streamed, errors, `/health`) to
//! its schemas. Each README example is also sent to the service, which must run
//! it: docs, schema and parser cannot drift apart.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use pysandbox_tests::{require_root, venv_python, Service};
use reqwest::Method;
use serde_json::{json, Value};

/// `check_openapi.py` with `args`, `lines` on its stdin; panics with its output
/// when it reports a failure.
#[track_caller]
fn check(args: &[&str], lines: &[Value]) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/check_openapi.py");
    let mut child = Command::new(venv_python())
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the test venv's python");
    let mut stdin = child.stdin.take().expect("piped stdin");
    for line in lines {
        writeln!(stdin, "{line}").expect("feed the checker");
    }
    drop(stdin);
    let out = child.wait_with_output().expect("the checker's output");
    assert!(
        out.status.success(),
        "{args:?} failed:\n{}{}\n{lines:#?}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether `check_openapi.py` accepts `line` under schema `name`.
fn fits(doc: &Path, name: &str, line: &Value) -> bool {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/check_openapi.py");
    let mut child = Command::new(venv_python())
        .arg(script)
        .args(["instances", doc.to_str().expect("UTF-8 path"), name])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("run the test venv's python");
    let mut stdin = child.stdin.take().expect("piped stdin");
    writeln!(stdin, "{line}").expect("feed the checker");
    drop(stdin);
    child.wait().expect("the checker's status").success()
}

/// Fetches the document without a token and writes it to a temp file.
async fn document(svc: &Service) -> (Value, tempfile::NamedTempFile) {
    let reply = svc.request(Method::GET, "/openapi.json", &[], None).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(reply.text.as_bytes())
        .expect("write the document");
    (reply.json, file)
}

/// The JSON bodies of the `-d '{…}'` arguments of the README's `curl` examples.
fn readme_request_bodies() -> Vec<Value> {
    let readme = include_str!("../../README.md");
    let bodies: Vec<Value> = readme
        .split(" -d '{")
        .skip(1)
        .map(|rest| {
            let body = format!("{{{}", &rest[..rest.find('\'').expect("a closing quote")]);
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("README body {body}: {e}"))
        })
        .collect();
    // Guards against an extraction that finds nothing and so proves nothing.
    assert!(bodies.len() >= 2, "found only {bodies:?}");
    bodies
}

/// The JSON bodies of the README's `curl …/sessions … --data '{…}'` examples.
fn readme_session_bodies() -> Vec<Value> {
    let readme = include_str!("../../README.md");
    let bodies: Vec<Value> = readme
        .lines()
        .filter(|line| line.contains("/sessions -H"))
        .filter_map(|line| {
            let rest = &line[line.find(" --data '")? + " --data '".len()..];
            let body = &rest[..rest.find('\'').expect("a closing quote")];
            Some(serde_json::from_str(body).unwrap_or_else(|e| panic!("README body {body}: {e}")))
        })
        .collect();
    assert!(!bodies.is_empty(), "no session example found");
    bodies
}

#[tokio::test]
async fn readme_session_requests_and_real_sessions_fit_the_schemas() {
    require_root!();
    let svc = Service::start();
    let (_, file) = document(&svc).await;
    let path = file.path().to_str().expect("UTF-8 path");
    let json_body = |body: &Value| Some(body.to_string().into_bytes());
    let bodies = readme_session_bodies();
    let mut states = Vec::new();
    let mut calls = Vec::new();
    for body in &bodies {
        let opened = svc
            .authorized(Method::POST, "/sessions", json_body(body))
            .await;
        assert_eq!(opened.status, 201, "{body}: {}", opened.text);
        let id = opened.json["sessionId"].as_str().expect("an id").to_owned();
        let session = format!("/sessions/{id}");
        let call = svc
            .authorized(
                Method::POST,
                &format!("{session}/execute"),
                json_body(&json!({"code": "6 * 7"})),
            )
            .await;
        assert_eq!(call.json["result"], "42", "{}", call.text);
        let described = svc.authorized(Method::GET, &session, None).await;
        let closed = svc.authorized(Method::DELETE, &session, None).await;
        assert_eq!(closed.status, 204, "{}", closed.text);
        states.extend([opened.json, described.json]);
        calls.push(call.json);
    }
    let refused = json!({"idleTimeoutMs": 0});
    let reply = svc
        .authorized(Method::POST, "/sessions", json_body(&refused))
        .await;
    assert_eq!(reply.status, 400, "{}", reply.text);
    check(&["instances", path, "OpenSessionRequest"], &bodies);
    assert!(!fits(file.path(), "OpenSessionRequest", &refused));
    check(&["instances", path, "SessionBody"], &states);
    check(&["instances", path, "ExecuteResult"], &calls);
}

#[tokio::test]
async fn the_document_needs_no_token_and_is_valid_openapi_3_1() {
    require_root!();
    let svc = Service::start();
    let (doc, file) = document(&svc).await;
    assert_eq!(doc["openapi"], "3.1.0");
    let path = file.path().to_str().expect("UTF-8 path");
    check(&["spec", path], &[]);
    // A wrong token does not close it either.
    let reply = svc
        .request(
            Method::GET,
            "/openapi.json",
            &[("authorization", "Bearer wrong")],
            None,
        )
        .await;
    assert_eq!(reply.status, 200);
}

#[tokio::test]
async fn readme_requests_fit_the_schema_and_run() {
    require_root!();
    let svc = Service::start();
    let (_, file) = document(&svc).await;
    let path = file.path().to_str().expect("UTF-8 path");
    let bodies = readme_request_bodies();
    for body in &bodies {
        let reply = svc.post_execute(body).await;
        assert_eq!(reply.status, 200, "{body}: {}", reply.text);
    }
    check(&["instances", path, "ExecuteRequest"], &bodies);
    // The schema is not vacuous: what the parser refuses, it refuses too. (Every
    // request first: the checks take seconds, longer than the frontend keeps an
    // idle keep-alive connection open.)
    let refused = [
        json!({"code": ""}),
        json!({"stdin": "x"}),
        json!({"code": "1", "timeoutMs": 0}),
        json!({"code": "1", "timeoutMs": 120_001}),
        json!({"code": "1", "limits": {"memroyMb": 64}}),
        json!({"code": "1", "network": {"allowedDomains": "a.io"}}),
        json!({"code": "1", "public": "yes"}),
        json!({"code": "1", "files": [{"path": "a"}]}),
    ];
    for bad in &refused {
        assert_eq!(svc.post_execute(bad).await.status, 400, "{bad}");
    }
    for bad in &refused {
        assert!(!fits(file.path(), "ExecuteRequest", bad), "{bad}");
    }
}

#[tokio::test]
async fn real_answers_fit_the_schemas() {
    require_root!();
    let svc = Service::start();
    let (_, file) = document(&svc).await;
    let path = file.path().to_str().expect("UTF-8 path");

    let code = "import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()\n\
                open('out.txt', 'w').write('hi')\nprint('x' * 10)\n6 * 7";
    let full = svc
        .run(json!({
            "code": code,
            "returnFiles": true,
            "limits": {"outputBytes": 4},
            "files": [{"path": "in/a.csv", "contentBase64": "YQo="}],
        }))
        .await;
    assert_eq!(full["result"], "42");
    assert_eq!(full["displays"].as_array().map(Vec::len), Some(1), "{full}");
    assert_eq!(full["limitExceeded"], "output");
    let killed = svc
        .run(json!({"code": "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)"}))
        .await;
    assert_eq!(killed["signal"], "SIGKILL");
    let plain = svc.run_code("print(1)").await;

    let streamed = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("HTTP client")
        .post(svc.url("/execute"))
        .bearer_auth(svc.token())
        .header("accept", "text/event-stream")
        .json(&json!({"code": code, "limits": {"outputBytes": 4}}))
        .send()
        .await
        .expect("POST /execute, streamed");
    assert_eq!(streamed.status(), 200);
    let streamed = streamed.text().await.expect("the stream");
    let events: Vec<Value> = streamed
        .split("\n\n")
        .filter_map(|event| {
            let name = event.lines().find_map(|l| l.strip_prefix("event: "))?;
            let data = event.lines().find_map(|l| l.strip_prefix("data: "))?;
            let data: Value = serde_json::from_str(data).expect("JSON data");
            Some(json!({"event": name, "data": data}))
        })
        .collect();
    let names: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    for name in ["stdout", "truncated", "display", "result"] {
        assert!(names.contains(&name), "no {name} event in {names:?}");
    }
    let errors = [
        svc.post_raw("/execute", &[], "{}").await,
        svc.post_execute(&json!({"code": 1})).await,
    ];
    let errors: Vec<Value> = errors.into_iter().map(|r| r.json).collect();
    let health = svc.health().await.json;

    // Checked once every request is done: the checks take seconds, longer than
    // the frontend keeps an idle keep-alive connection open.
    check(&["instances", path, "StreamEvent"], &events);
    check(&["instances", path, "ErrorBody"], &errors);
    check(&["instances", path, "Health"], &[health]);
    // And the schema is not vacuous here either.
    let mut broken = plain.clone();
    broken["exitCode"] = json!("0");
    assert!(!fits(file.path(), "ExecuteResult", &broken));
    check(
        &["instances", path, "ExecuteResult"],
        &[full, killed, plain],
    );
}
