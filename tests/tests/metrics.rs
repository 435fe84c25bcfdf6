//! `GET /metrics`, read by the official Prometheus client's parser: the job
//! counters move by exactly the jobs run, labels are route templates and fixed
//! identifiers, `METRICS_TOKEN` closes it to everyone else (the job token too), and
//! `METRICS_ADDR` moves it to an address of its own.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use pysandbox_tests::{require_root, wait_until, Service, StubReply, UploadStub};
use serde_json::{json, Value};

/// The samples of an exposition as the Prometheus client parsed them, keyed by
/// sample name and labels.
type Samples = BTreeMap<(String, BTreeMap<String, String>), f64>;

/// `GET /metrics` with `authorization`, if any: its status, content type and body.
async fn scrape(svc: &Service, authorization: Option<&str>) -> (u16, String, String) {
    fetch(&svc.url("/metrics"), authorization).await
}

/// `GET url` with `authorization`, if any: its status, content type and body.
async fn fetch(url: &str, authorization: Option<&str>) -> (u16, String, String) {
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("HTTP client");
    let mut request = client.get(url);
    if let Some(auth) = authorization {
        request = request.header("authorization", auth);
    }
    let response = request.send().await.expect("GET");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().expect("ASCII content type").to_owned())
        .unwrap_or_default();
    (
        status,
        content_type,
        response.text().await.expect("the body"),
    )
}

/// Parses `text` with `prometheus_client.parser` (Debian's python3-prometheus-client).
fn parse(text: &str) -> Samples {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/parse_metrics.py");
    let mut child = Command::new("/usr/bin/python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (with python3-prometheus-client) must be installed");
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin.write_all(text.as_bytes()).expect("feed the parser");
    drop(stdin);
    let out = child.wait_with_output().expect("the parser's output");
    assert!(
        out.status.success(),
        "the Prometheus parser refused the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let families: Vec<Value> = serde_json::from_slice(&out.stdout).expect("JSON samples");
    let mut samples = Samples::new();
    for family in families {
        for sample in family["samples"].as_array().into_iter().flatten() {
            let labels = sample[1].as_object().into_iter().flatten();
            let labels = labels
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect();
            let key = (sample[0].as_str().unwrap_or_default().to_owned(), labels);
            samples.insert(key, sample[2].as_f64().expect("a numeric value"));
        }
    }
    samples
}

fn get(samples: &Samples, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    samples.get(&(name.to_owned(), labels)).copied()
}

fn jobs(samples: &Samples, outcome: &str) -> f64 {
    get(samples, "pysandbox_jobs_total", &[("outcome", outcome)])
        .unwrap_or_else(|| panic!("no pysandbox_jobs_total{{outcome={outcome:?}}}"))
}

fn all_jobs(samples: &Samples) -> f64 {
    samples
        .iter()
        .filter(|((name, _), _)| name == "pysandbox_jobs_total")
        .map(|(_, v)| v)
        .sum()
}

/// Scrapes until `done` holds of the samples; the executor's figures are cached for
/// up to a second.
async fn scrape_until(svc: &Service, done: impl Fn(&Samples) -> bool) -> Samples {
    for _ in 0..100 {
        let (status, _, text) = scrape(svc, None).await;
        assert_eq!(status, 200, "{text}");
        let samples = parse(&text);
        if done(&samples) {
            return samples;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the metrics never reached the expected state");
}

#[tokio::test]
async fn job_counters_move_by_exactly_the_jobs_run() {
    require_root!();
    let svc = Service::start();
    let (status, content_type, _) = scrape(&svc, None).await;
    assert_eq!(
        (status, content_type.as_str()),
        (200, "text/plain; version=0.0.4; charset=utf-8")
    );
    // The templates are ready (the harness waited for them) when the fork server is
    // on, the default; the warm and cold passes of CI run with it off.
    let forking = if svc.executor.fork_server() { 1.0 } else { 0.0 };
    let before = scrape_until(&svc, |s| {
        get(s, "pysandbox_executor_up", &[]) == Some(1.0)
            && get(s, "pysandbox_fork_server_ready", &[]) == Some(forking)
    })
    .await;
    assert_eq!(all_jobs(&before), 0.0);
    assert_eq!(
        get(
            &before,
            "pysandbox_build_info",
            &[
                ("version", env!("CARGO_PKG_VERSION")),
                ("protocol", &pysandbox_shared::PROTOCOL_VERSION.to_string())
            ]
        ),
        Some(1.0)
    );

    let ok = svc.run_code("print(1)").await;
    assert_eq!(ok["exitCode"], 0);
    let failed = svc.run_code("raise SystemExit(3)").await;
    assert_eq!(failed["exitCode"], 3);
    let slow = svc
        .run(json!({"code": "while True: pass", "timeoutMs": 300}))
        .await;
    assert_eq!(slow["limitExceeded"], "time");
    // Path text must never become a label: only route templates do.
    let secret = "/never-a-label-7f3a";
    let reply = svc.request(reqwest::Method::GET, secret, &[], None).await;
    assert_eq!(reply.status, 404);

    let after = scrape_until(&svc, |s| all_jobs(s) >= 3.0).await;
    assert_eq!(all_jobs(&after), 3.0, "{after:?}");
    assert_eq!(jobs(&after, "ok"), 1.0);
    assert_eq!(jobs(&after, "error_exit"), 1.0);
    assert_eq!(jobs(&after, "limit_time"), 1.0);
    assert_eq!(jobs(&after, "client_gone"), 0.0);
    assert_eq!(
        get(&after, "pysandbox_job_duration_seconds_count", &[]),
        Some(3.0)
    );
    assert_eq!(
        get(
            &after,
            "pysandbox_job_duration_seconds_bucket",
            &[("le", "+Inf")]
        ),
        Some(3.0)
    );
    assert_eq!(
        get(
            &after,
            "pysandbox_http_requests_total",
            &[("route", "/execute"), ("status", "200")]
        ),
        Some(3.0)
    );
    assert_eq!(
        get(
            &after,
            "pysandbox_http_requests_total",
            &[("route", "unmatched"), ("status", "404")]
        ),
        Some(1.0)
    );
    assert_eq!(get(&after, "pysandbox_jobs_running", &[]), Some(0.0));
    for (_, labels) in after.keys() {
        assert!(
            labels.values().all(|v| !v.contains("never-a-label")),
            "{labels:?}"
        );
    }
}

#[tokio::test]
async fn metrics_token_is_its_own_and_the_job_token_does_not_open_it() {
    require_root!();
    let svc = Service::builder()
        .frontend_env("METRICS_TOKEN", "metrics-only-token")
        .start();
    let (status, _, body) = scrape(&svc, None).await;
    assert_eq!(status, 401);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"error": "missing or malformed Authorization header (expected: Bearer <token>)"})
    );
    let job_token = format!("Bearer {}", svc.token());
    let (status, _, body) = scrape(&svc, Some(&job_token)).await;
    assert_eq!(
        (status, serde_json::from_str::<Value>(&body).unwrap()),
        (403, json!({"error": "invalid token"}))
    );
    let (status, _, body) = scrape(&svc, Some("Bearer metrics-only-token")).await;
    assert_eq!(status, 200);
    assert!(parse(&body).contains_key(&("pysandbox_executor_up".to_owned(), BTreeMap::new())));
}

#[tokio::test]
async fn metrics_addr_moves_metrics_there_and_nothing_else_comes_along() {
    require_root!();
    let svc = Service::builder()
        .frontend_env("METRICS_ADDR", "127.0.0.1:0")
        .frontend_env("METRICS_TOKEN", "metrics-only-token")
        .start();
    let needle = "metrics: listening on ";
    let log = svc.frontend.log();
    assert!(
        wait_until(Duration::from_secs(30), || log.contains(needle)),
        "no `{needle}` line"
    );
    let text = log.text();
    let rest = &text[text.find(needle).expect("the line") + needle.len()..];
    let addr: SocketAddr = rest
        .split_whitespace()
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address after `{needle}`: {rest}"));
    assert_ne!(addr, svc.frontend.addr());

    // Gone from the main port, with or without a token.
    let not_found = (404, json!({"error": "not found"}));
    for auth in [None, Some("Bearer metrics-only-token")] {
        let (status, _, body) = scrape(&svc, auth).await;
        assert_eq!(
            (status, serde_json::from_str::<Value>(&body).unwrap()),
            not_found
        );
    }
    // There, behind its token as before.
    let metrics = format!("http://{addr}/metrics");
    let (status, _, _) = fetch(&metrics, None).await;
    assert_eq!(status, 401);
    let (status, content_type, body) = fetch(&metrics, Some("Bearer metrics-only-token")).await;
    assert_eq!(status, 200);
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    assert!(parse(&body).contains_key(&("pysandbox_executor_up".to_owned(), BTreeMap::new())));
    // And the job API is not reachable through it.
    let job_token = format!("Bearer {}", svc.token());
    for path in ["/health", "/openapi.json", "/execute"] {
        let (status, _, body) = fetch(&format!("http://{addr}{path}"), Some(&job_token)).await;
        assert_eq!(
            (status, serde_json::from_str::<Value>(&body).unwrap()),
            not_found,
            "{path}"
        );
    }
    let reply = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("HTTP client")
        .post(format!("http://{addr}/execute"))
        .header("authorization", &job_token)
        .json(&json!({"code": "print(1)"}))
        .send()
        .await
        .expect("POST /execute");
    assert_eq!(reply.status(), 404);
}

#[tokio::test]
async fn uploads_are_counted_by_result_and_skipped_entries_apart() {
    require_root!();
    let svc = Service::builder()
        .frontend_env("UPLOAD_ALLOWED_HOSTS", "127.0.0.1")
        .start();
    let stub = UploadStub::start(StubReply::Url);
    let code = "import os\nopen('a.txt', 'w').write('a')\nos.symlink('/etc/passwd', 'link')";
    let out = svc
        .run(json!({"code": code, "fileUploadUrl": stub.url("/u"), "uploadToken": "t"}))
        .await;
    assert_eq!(
        out["uploads"],
        json!([
            {"filename": "a.txt", "url": "http://files.test/0/a.txt", "status": 200},
            {"filename": "link", "status": 0, "error": "skipped: symlink"},
        ]),
        "{out:#}"
    );
    let samples = scrape_until(&svc, |s| {
        get(s, "pysandbox_uploads_total", &[("result", "ok")]) == Some(1.0)
    })
    .await;
    let uploads = |result| get(&samples, "pysandbox_uploads_total", &[("result", result)]);
    assert_eq!(
        (uploads("ok"), uploads("failed"), uploads("skipped")),
        (Some(1.0), Some(0.0), Some(1.0))
    );
}
