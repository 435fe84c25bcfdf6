//! The HTTP API: what a job that ran returns, and every error a client can cause,
//! with the exact status and JSON of /work/api-contract.md.

use std::time::{Duration, Instant};

use pysandbox_tests::{
    assert_error, host_processes_matching, py_concat, require_root, sleep_needle, wait_until_async,
    Reply, Service,
};
use reqwest::Method;
use serde_json::{json, Value};

const AUTH_ERROR: &str = "missing or malformed Authorization header (expected: Bearer <token>)";
const DEFAULT_BODY_LIMIT: usize = 1_048_576;

/// `{"code":"print(1)"}` padded with spaces to exactly `len` bytes.
fn padded_body(len: usize) -> Vec<u8> {
    let head = br#"{"code":"print(1)""#;
    let mut body = head.to_vec();
    body.resize(len - 1, b' ');
    body.push(b'}');
    body
}

/// Posts `body` with the right token and asserts a 400 naming `field`.
async fn assert_field_error(svc: &Service, body: Value, field: &str, reason: &str) {
    let reply = svc.post_execute(&body).await;
    assert_eq!(
        (reply.status, &reply.json),
        (
            400,
            &json!({ "error": format!("{field}: {reason}"), "field": field })
        ),
        "request {body} answered {}",
        reply.text
    );
}

async fn post_with_auth(svc: &Service, authorization: Option<&str>) -> Reply {
    let mut headers = vec![("content-type", "application/json")];
    if let Some(auth) = authorization {
        headers.push(("authorization", auth));
    }
    svc.post_raw("/execute", &headers, r#"{"code":"print(1)"}"#)
        .await
}

#[tokio::test]
async fn seed_example_prints_four() {
    require_root!();
    let svc = Service::start();
    let mut out = svc.run_code("print(2 + 2)").await;
    let duration = out.as_object_mut().and_then(|o| o.remove("durationMs"));
    assert!(
        duration.as_ref().is_some_and(Value::is_u64),
        "durationMs must be a non-negative integer: {duration:?}"
    );
    let usage = out.as_object_mut().and_then(|o| o.remove("usage"));
    assert_eq!(
        usage.as_ref().and_then(|u| u.get("wallMs")),
        duration.as_ref(),
        "usage.wallMs is durationMs: {usage:?}"
    );
    assert_eq!(
        out,
        json!({
            "exitCode": 0,
            "signal": null,
            "stdout": "4\n",
            "stderr": "",
            "uploads": [],
            "timedOut": false,
            "stdoutTruncated": false,
            "stderrTruncated": false,
            "limitExceeded": null,
            "violations": [],
            "result": null,
            "displays": [],
        })
    );
}

#[tokio::test]
async fn result_keys_come_in_contract_order() {
    require_root!();
    let svc = Service::start();
    let reply = svc.post_execute(&json!({ "code": "pass" })).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let keys = [
        "exitCode",
        "signal",
        "stdout",
        "stderr",
        "uploads",
        "timedOut",
        "durationMs",
        "stdoutTruncated",
        "stderrTruncated",
        "limitExceeded",
        "usage",
        "violations",
    ];
    let positions: Vec<Option<usize>> = keys
        .iter()
        .map(|k| reply.text.find(&format!("\"{k}\":")))
        .collect();
    assert!(
        positions.iter().all(Option::is_some) && positions.windows(2).all(|w| w[0] < w[1]),
        "keys not in the order {keys:?}: {}",
        reply.text
    );
    assert_eq!(reply.header("content-type"), Some("application/json"));
}

#[tokio::test]
async fn exit_code_is_passed_through() {
    require_root!();
    let svc = Service::start();
    let out = svc.run_code("import sys; sys.exit(3)").await;
    assert_eq!(
        (&out["exitCode"], &out["signal"], &out["timedOut"]),
        (&json!(3), &Value::Null, &json!(false)),
        "{out}"
    );
}

#[tokio::test]
async fn uncaught_exception_exits_1_with_a_traceback() {
    require_root!();
    let svc = Service::start();
    let out = svc.run_code("raise ValueError(\"boom\")").await;
    assert_eq!(out["exitCode"], 1, "{out}");
    assert_eq!(out["signal"], Value::Null, "{out}");
    assert_eq!(out["stdout"], "", "{out}");
    let stderr = out["stderr"].as_str().unwrap_or_default();
    assert!(
        stderr.contains("Traceback (most recent call last)") && stderr.contains("ValueError: boom"),
        "stderr: {stderr:?}"
    );
}

#[tokio::test]
async fn unicode_output_round_trips() {
    require_root!();
    let svc = Service::start();
    let out = svc
        .run_code("import sys\nprint(\"héllo ✓ 日本\")\nprint(\"ß 🐍\", file=sys.stderr)")
        .await;
    assert_eq!(out["stdout"], "héllo ✓ 日本\n", "{out}");
    assert_eq!(out["stderr"], "ß 🐍\n", "{out}");
}

#[tokio::test]
async fn invalid_utf8_output_is_replaced() {
    require_root!();
    let svc = Service::start();
    let out = svc
        .run_code(
            "import sys\nsys.stdout.buffer.write(b\"a\\xffb\")\nsys.stderr.buffer.write(b\"c\\xfed\")",
        )
        .await;
    assert_eq!(out["exitCode"], 0, "{out}");
    assert_eq!(out["stdout"], "a\u{FFFD}b", "{out}");
    assert_eq!(out["stderr"], "c\u{FFFD}d", "{out}");
}

/// A character whose bytes arrive in two separate writes must not be mangled by
/// decoding each pipe read on its own.
#[tokio::test]
async fn multibyte_character_split_across_writes_survives() {
    require_root!();
    let svc = Service::start();
    let code = r#"
import sys, time
out = sys.stdout.buffer
out.write(b"\xc3"); out.flush()
time.sleep(0.3)
out.write(b"\xa9\n"); out.flush()
"#;
    let out = svc.run_code(code).await;
    assert_eq!(out["stdout"], "é\n", "{out}");
}

#[tokio::test]
async fn stdin_is_fed_to_the_job() {
    require_root!();
    let svc = Service::start();
    let out = svc
        .run(json!({ "code": "print(input())", "stdin": "abc\n" }))
        .await;
    assert_eq!(out["stdout"], "abc\n", "{out}");
}

/// More stdin than a pipe buffer holds, so the executor must not write it all
/// before it starts reading the job's output.
#[tokio::test]
async fn large_stdin_is_fed_whole() {
    require_root!();
    let svc = Service::start();
    let stdin = "é".repeat(150_000);
    let code = "import sys\ndata = sys.stdin.read()\nprint(len(data), set(data) == {'é'})";
    let out = svc.run(json!({ "code": code, "stdin": stdin })).await;
    assert_eq!(out["stdout"], "150000 True\n", "{out}");
}

#[tokio::test]
async fn absent_stdin_reads_eof_at_once() {
    require_root!();
    let svc = Service::start();
    let started = Instant::now();
    let out = svc
        .run(json!({
            "code": "import sys; print(repr(sys.stdin.read()))",
            "timeoutMs": 20000,
        }))
        .await;
    assert_eq!(out["stdout"], "''\n", "{out}");
    assert_eq!(out["timedOut"], false, "{out}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "reading an absent stdin took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn missing_authorization_is_401() {
    require_root!();
    let svc = Service::start();
    let reply = post_with_auth(&svc, None).await;
    assert_error(&reply, 401, json!({ "error": AUTH_ERROR }));
}

#[tokio::test]
async fn non_bearer_authorization_is_401() {
    require_root!();
    let svc = Service::start();
    let token = svc.token().to_owned();
    let basic = "Basic x".to_owned();
    let other_scheme = format!("Token {token}");
    for auth in [&basic, &other_scheme, &token] {
        let reply = post_with_auth(&svc, Some(auth)).await;
        assert_error(&reply, 401, json!({ "error": AUTH_ERROR }));
    }
}

#[tokio::test]
async fn bearer_without_token_is_401() {
    require_root!();
    let svc = Service::start();
    let reply = post_with_auth(&svc, Some("Bearer")).await;
    assert_error(&reply, 401, json!({ "error": AUTH_ERROR }));
}

#[tokio::test]
async fn wrong_token_is_403() {
    require_root!();
    let svc = Service::start();
    let token = svc.token();
    let wrong = [
        "Bearer wrong".to_owned(),
        format!("Bearer {token}x"),
        format!("Bearer {}", &token[..token.len() - 1]),
    ];
    for auth in &wrong {
        let reply = post_with_auth(&svc, Some(auth)).await;
        assert_error(&reply, 403, json!({ "error": "invalid token" }));
    }
}

#[tokio::test]
async fn body_over_the_limit_is_413() {
    require_root!();
    let svc = Service::start();
    let auth = format!("Bearer {}", svc.token());
    let request = svc.execute_request_bytes(Some(&auth), &padded_body(DEFAULT_BODY_LIMIT + 1));
    let reply = svc.raw(&request).await;
    assert_error(
        &reply,
        413,
        json!({ "error": "request body is larger than 1048576 bytes" }),
    );
}

#[tokio::test]
async fn body_at_the_limit_is_accepted() {
    require_root!();
    let svc = Service::start();
    let auth = format!("Bearer {}", svc.token());
    let reply = svc
        .post_raw(
            "/execute",
            &[("authorization", &auth)],
            padded_body(DEFAULT_BODY_LIMIT),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json["stdout"], "1\n", "{}", reply.text);
}

#[tokio::test]
async fn configured_body_limit_is_enforced_and_named() {
    require_root!();
    let svc = Service::builder()
        .frontend_env("MAX_BODY_BYTES", "2048")
        .start();
    let auth = format!("Bearer {}", svc.token());
    let reply = svc
        .raw(&svc.execute_request_bytes(Some(&auth), &padded_body(2049)))
        .await;
    assert_error(
        &reply,
        413,
        json!({ "error": "request body is larger than 2048 bytes" }),
    );
    let reply = svc
        .post_raw("/execute", &[("authorization", &auth)], padded_body(2048))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
}

/// Without a Content-Length the limit must hold for the bytes actually streamed.
#[tokio::test]
async fn chunked_body_over_the_limit_is_413() {
    require_root!();
    let svc = Service::builder()
        .frontend_env("MAX_BODY_BYTES", "2048")
        .start();
    let body = padded_body(4096);
    let mut request = format!(
        "POST /execute HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        svc.frontend.addr(),
        svc.token()
    )
    .into_bytes();
    for chunk in body.chunks(1024) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let reply = svc.raw(&request).await;
    assert_error(
        &reply,
        413,
        json!({ "error": "request body is larger than 2048 bytes" }),
    );
}

/// The contract's order: auth, then body size, then JSON.
#[tokio::test]
async fn auth_is_checked_before_size_and_json() {
    require_root!();
    let svc = Service::start();
    let oversized = svc.execute_request_bytes(None, &padded_body(DEFAULT_BODY_LIMIT + 1));
    assert_error(
        &svc.raw(&oversized).await,
        401,
        json!({ "error": AUTH_ERROR }),
    );
    let reply = svc
        .post_raw(
            "/execute",
            &[("authorization", "Bearer wrong")],
            "{not json",
        )
        .await;
    assert_error(&reply, 403, json!({ "error": "invalid token" }));
}

#[tokio::test]
async fn malformed_json_is_400() {
    require_root!();
    let svc = Service::start();
    let auth = format!("Bearer {}", svc.token());
    for body in [
        r#"{"code":"#,
        "",
        r#"{"code":"print(1)"} x"#,
        "{'code': 'x'}",
    ] {
        let reply = svc
            .post_raw("/execute", &[("authorization", &auth)], body)
            .await;
        assert_error(
            &reply,
            400,
            json!({ "error": "request body is not valid JSON" }),
        );
    }
}

#[tokio::test]
async fn non_object_body_is_400() {
    require_root!();
    let svc = Service::start();
    for body in [json!([]), json!("x"), json!(42), json!(null), json!(true)] {
        let reply = svc.post_execute(&body).await;
        assert_error(
            &reply,
            400,
            json!({ "error": "request body must be a JSON object" }),
        );
    }
}

#[tokio::test]
async fn content_type_is_not_checked() {
    require_root!();
    let svc = Service::start();
    let auth = format!("Bearer {}", svc.token());
    let text_plain = [
        ("authorization", auth.as_str()),
        ("content-type", "text/plain"),
    ];
    let no_type = [("authorization", auth.as_str())];
    for headers in [&text_plain[..], &no_type[..]] {
        let reply = svc
            .post_raw("/execute", headers, r#"{"code":"print(5)"}"#)
            .await;
        assert_eq!(reply.status, 200, "{headers:?}: {}", reply.text);
        assert_eq!(reply.json["stdout"], "5\n");
    }
}

#[tokio::test]
async fn code_field_errors_are_400() {
    require_root!();
    let svc = Service::start();
    for (body, reason) in [
        (json!({}), "is required"),
        (json!({ "code": null }), "is required"),
        (json!({ "code": "" }), "must not be empty"),
        (json!({ "code": 42 }), "must be a string"),
        (json!({ "code": ["print(1)"] }), "must be a string"),
        (json!({ "code": { "a": 1 } }), "must be a string"),
    ] {
        assert_field_error(&svc, body, "code", reason).await;
    }
}

#[tokio::test]
async fn timeout_ms_field_errors_are_400() {
    require_root!();
    let svc = Service::start();
    for timeout in [
        json!(0),
        json!(120001),
        json!(1.5),
        json!("100"),
        json!(-1),
        json!(true),
        json!(1e20),
    ] {
        assert_field_error(
            &svc,
            json!({ "code": "print(1)", "timeoutMs": timeout }),
            "timeoutMs",
            "must be an integer from 1 to 120000",
        )
        .await;
    }
}

#[tokio::test]
async fn timeout_ms_bounds_are_accepted() {
    require_root!();
    let svc = Service::start();
    let out = svc
        .run(json!({ "code": "print(1)", "timeoutMs": 120000 }))
        .await;
    assert_eq!(
        (&out["stdout"], &out["timedOut"]),
        (&json!("1\n"), &json!(false)),
        "{out}"
    );
    // The lower bound is accepted and enforced. The job itself outlasts 1 ms, so
    // this holds on both paths (a warm jail's Python is already running when the
    // clock starts, so a job that prints at once might finish in time).
    let code = "import time\ntime.sleep(5)\nprint(1)";
    let out = svc.run(json!({ "code": code, "timeoutMs": 1 })).await;
    assert_eq!(
        (&out["timedOut"], &out["signal"], &out["exitCode"]),
        (&json!(true), &json!("SIGKILL"), &Value::Null),
        "{out}"
    );
}

#[tokio::test]
async fn file_upload_url_field_errors_are_400() {
    require_root!();
    let svc = Service::start();
    for key in ["fileUploadUrl", "file_upload_url"] {
        for url in [
            json!("ftp://x"),
            json!("not a url"),
            json!(""),
            json!("/relative/path"),
            json!("file:///etc/passwd"),
            json!("javascript:alert(1)"),
            json!(5),
        ] {
            assert_field_error(
                &svc,
                json!({ "code": "print(1)", key: url }),
                key,
                "must be an http or https URL",
            )
            .await;
        }
    }
}

#[tokio::test]
async fn camel_case_key_wins_over_its_alias() {
    require_root!();
    let svc = Service::start();
    assert_field_error(
        &svc,
        json!({
            "code": "print(1)",
            "fileUploadUrl": "ftp://x",
            "file_upload_url": "http://127.0.0.1:9/upload",
        }),
        "fileUploadUrl",
        "must be an http or https URL",
    )
    .await;
}

/// A key given twice is refused, naming it: a gateway reading the first `code`
/// would have checked another job than the one that runs (security-2 F12).
#[tokio::test]
async fn duplicate_keys_are_400_naming_the_key() {
    require_root!();
    let svc = Service::start();
    let auth = format!("Bearer {}", svc.token());
    for (body, field) in [
        (r#"{"code":"print(1)","code":"print(2)"}"#, "code"),
        (r#"{"code":"print(1)","\u0063ode":"print(2)"}"#, "code"),
        (
            r#"{"code":"1","limits":{"memoryMb":64,"memoryMb":128}}"#,
            "limits.memoryMb",
        ),
    ] {
        let reply = svc
            .post_raw("/execute", &[("authorization", auth.as_str())], body)
            .await;
        assert_eq!(
            (reply.status, &reply.json),
            (
                400,
                &json!({ "error": format!("{field}: appears more than once"), "field": field })
            ),
            "{body}"
        );
    }
}

#[tokio::test]
async fn upload_token_field_errors_are_400() {
    require_root!();
    let svc = Service::start();
    for key in ["uploadToken", "api_token"] {
        for token in [json!(5), json!(["t"]), json!(false)] {
            assert_field_error(
                &svc,
                json!({ "code": "print(1)", key: token }),
                key,
                "must be a string",
            )
            .await;
        }
    }
}

#[tokio::test]
async fn public_field_errors_are_400() {
    require_root!();
    let svc = Service::start();
    for public in [json!("yes"), json!(1), json!([]), json!("")] {
        assert_field_error(
            &svc,
            json!({ "code": "print(1)", "public": public }),
            "public",
            "must be a boolean",
        )
        .await;
    }
}

#[tokio::test]
async fn stdin_field_errors_are_400() {
    require_root!();
    let svc = Service::start();
    for stdin in [json!(5), json!(["a"]), json!({ "a": 1 })] {
        assert_field_error(
            &svc,
            json!({ "code": "print(1)", "stdin": stdin }),
            "stdin",
            "must be a string",
        )
        .await;
    }
}

#[tokio::test]
async fn null_fields_count_as_absent() {
    require_root!();
    let svc = Service::start();
    let out = svc
        .run(json!({
            "code": "import sys; print(repr(sys.stdin.read()))",
            "timeoutMs": null,
            "fileUploadUrl": null,
            "file_upload_url": null,
            "uploadToken": null,
            "api_token": null,
            "public": null,
            "stdin": null,
        }))
        .await;
    assert_eq!(out["stdout"], "''\n", "{out}");
    assert_eq!(out["exitCode"], 0, "{out}");
}

#[tokio::test]
async fn unknown_fields_are_ignored() {
    require_root!();
    let svc = Service::start();
    let out = svc
        .run(json!({ "code": "print(7)", "language": "python", "extra": { "x": [1] } }))
        .await;
    assert_eq!(out["stdout"], "7\n", "{out}");
}

#[tokio::test]
async fn seed_aliases_are_accepted() {
    require_root!();
    let svc = Service::start();
    for public in [json!("true"), json!("false"), json!(true), json!(false)] {
        let out = svc
            .run(json!({
                "code": "print(1)",
                "file_upload_url": "http://127.0.0.1:9/upload",
                "api_token": "t",
                "public": public,
            }))
            .await;
        assert_eq!(
            (&out["stdout"], &out["uploads"]),
            (&json!("1\n"), &json!([])),
            "public {public}: {out}"
        );
    }
}

#[tokio::test]
async fn unknown_route_is_404() {
    require_root!();
    let svc = Service::start();
    let auth = format!("Bearer {}", svc.token());
    for (method, path) in [
        (Method::GET, "/nope"),
        (Method::POST, "/nope"),
        (Method::GET, "/"),
        (Method::GET, "/execute/x"),
    ] {
        let reply = svc
            .request(method.clone(), path, &[("authorization", &auth)], None)
            .await;
        assert_error(&reply, 404, json!({ "error": "not found" }));
    }
}

#[tokio::test]
async fn wrong_method_is_405() {
    require_root!();
    let svc = Service::start();
    let auth = format!("Bearer {}", svc.token());
    for (method, path) in [
        (Method::GET, "/execute"),
        (Method::PUT, "/execute"),
        (Method::DELETE, "/execute"),
        (Method::POST, "/health"),
    ] {
        let reply = svc
            .request(method.clone(), path, &[("authorization", &auth)], None)
            .await;
        assert_error(&reply, 405, json!({ "error": "method not allowed" }));
    }
}

#[tokio::test]
async fn every_response_carries_a_request_id() {
    require_root!();
    let svc = Service::start();
    let replies = [
        svc.post_execute(&json!({ "code": "pass" })).await,
        svc.post_execute(&json!({})).await,
        svc.post_raw("/execute", &[], "{}").await,
        svc.request(Method::GET, "/nope", &[], None).await,
        svc.health().await,
    ];
    let ids: Vec<&str> = replies
        .iter()
        .map(|r| {
            r.header("x-request-id")
                .filter(|id| !id.is_empty())
                .unwrap_or_else(|| panic!("no x-request-id on the {} reply {}", r.status, r.text))
        })
        .collect();
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "request ids repeat: {ids:?}");
}

#[tokio::test]
async fn no_cors_headers() {
    require_root!();
    let svc = Service::start();
    let auth = format!("Bearer {}", svc.token());
    let preflight = svc
        .request(
            Method::OPTIONS,
            "/execute",
            &[
                ("origin", "http://evil.example"),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", "authorization"),
            ],
            None,
        )
        .await;
    assert_error(&preflight, 405, json!({ "error": "method not allowed" }));
    let post = svc
        .post_raw(
            "/execute",
            &[("authorization", &auth), ("origin", "http://evil.example")],
            r#"{"code":"pass"}"#,
        )
        .await;
    assert_eq!(post.status, 200, "{}", post.text);
    for reply in [&preflight, &post] {
        let cors: Vec<_> = reply
            .headers
            .keys()
            .filter(|k| k.as_str().starts_with("access-control-"))
            .collect();
        assert!(
            cors.is_empty(),
            "CORS headers on a {} reply: {cors:?}",
            reply.status
        );
    }
}

#[tokio::test]
async fn health_needs_no_auth_and_leaks_nothing() {
    require_root!();
    let svc = Service::builder()
        .executor_args(["--max-jobs", "3"])
        .start();
    let reply = svc.health().await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let mut body = reply.json.clone();
    let limits = body.as_object_mut().and_then(|o| o.remove("limits"));
    let isolation = body.as_object_mut().and_then(|o| o.remove("isolation"));
    let warm = body.as_object_mut().and_then(|o| o.remove("warmJails"));
    // The harness waited for the pool to fill: every jail of it is counted.
    let pool = svc.executor.warm_pool_size();
    assert_eq!(warm, Some(json!(pool)), "warmJails");
    let isolation = isolation.expect("/health names the isolation layers");
    let abi = pysandbox_tests::kernel_landlock_abi();
    assert!(
        isolation["landlock"]
            .as_str()
            .is_some_and(|l| l.starts_with(&format!("ABI {abi}: "))),
        "landlock ABI {abi} in /health: {isolation}"
    );
    assert_eq!(
        body,
        json!({ "ok": true, "executor": "up", "runningJobs": 0, "maxJobs": 3, "queuedJobs": 0, "sessions": 0 })
    );
    let limits = limits.expect("/health names the limit mechanisms");
    for limit in ["memory", "time", "cpu", "processes", "disk", "output"] {
        assert!(limits[limit].is_string(), "{limit} missing: {limits}");
    }
    assert!(
        !reply.text.contains(svc.token()),
        "token in /health: {}",
        reply.text
    );
    let headers = format!("{:?}", reply.headers);
    assert!(
        !headers.contains(svc.token()),
        "token in /health headers: {headers}"
    );
}

#[tokio::test]
async fn saturation_is_429_with_retry_after() {
    require_root!();
    let svc = Service::builder()
        .frontend_env("MAX_INFLIGHT", "1")
        .frontend_env("MAX_QUEUE", "1")
        .start();
    let needle = sleep_needle("765.");
    let long = json!({
        "code": format!("import subprocess\nsubprocess.run(['sleep', {}])", py_concat(&needle)),
        "timeoutMs": 30000,
    });
    let in_flight = svc.post_execute(&long);
    let queued = svc.post_execute(&long);
    let third = async {
        let started = wait_until_async(Duration::from_secs(10), || {
            !host_processes_matching(&needle).is_empty()
        })
        .await;
        assert!(started, "the first job never started");
        // Let the second request reach the queue.
        tokio::time::sleep(Duration::from_millis(500)).await;
        svc.post_execute(&json!({ "code": "print(1)" })).await
    };
    let reply = tokio::select! {
        reply = third => reply,
        r = in_flight => panic!("the first job ended early: {}", r.text),
        r = queued => panic!("the queued job ended early: {}", r.text),
    };
    assert_error(
        &reply,
        429,
        json!({ "error": "too many jobs in flight; retry later" }),
    );
    assert_eq!(reply.header("retry-after"), Some("1"));
}

#[tokio::test]
async fn parallel_jobs_get_their_own_output() {
    require_root!();
    let svc = Service::start();
    let jobs = (0..6).map(|i| {
        let svc = &svc;
        async move {
            let code = format!("import time\ntime.sleep(0.3)\nprint({i})");
            (i, svc.post_execute(&json!({ "code": code })).await)
        }
    });
    for (i, reply) in futures::future::join_all(jobs).await {
        assert_eq!(reply.status, 200, "job {i}: {}", reply.text);
        assert_eq!(
            reply.json["stdout"],
            format!("{i}\n"),
            "job {i}: {}",
            reply.text
        );
        assert_eq!(reply.json["exitCode"], 0, "job {i}: {}", reply.text);
    }
}
