//! Produced files and input files: what a job leaves in its work dir is collected
//! safely (no link followed, no FIFO opened, caps held), uploaded to the caller's
//! file service or returned inline, and what a request hands in arrives. The file
//! service is a local stub that records what it receives.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use pysandbox_tests::{assert_error, require_root, Received, Service, StubReply, UploadStub};
use serde_json::{json, Value};

const UPLOAD_TOKEN: &str = "upload-secret";

/// A 1×1 PNG (red pixel), byte for byte.
const PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x02, 0x00, 0x00, 0x00, 0x90, 0x77, 0x53,
    0xde, 0x00, 0x00, 0x00, 0x0c, 0x49, 0x44, 0x41, 0x54, 0x08, 0xd7, 0x63, 0xf8, 0xcf, 0xc0, 0x00,
    0x00, 0x03, 0x01, 0x01, 0x00, 0x18, 0xdd, 0x8d, 0xb0, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e,
    0x44, 0xae, 0x42, 0x60, 0x82,
];
const CSV: &str = "x,y\n1,2\n3,4\n";

/// A service whose frontend may upload to the stubs on 127.0.0.1.
fn service(env: &[(&str, &str)]) -> Service {
    let mut builder = Service::builder().frontend_env("UPLOAD_ALLOWED_HOSTS", "127.0.0.1");
    for (key, value) in env {
        builder = builder.frontend_env(key, value);
    }
    builder.start()
}

/// Python that writes `bytes` to `path` (creating its directory).
fn py_write(path: &str, bytes: &[u8]) -> String {
    format!(
        "import base64, os\nos.makedirs(os.path.dirname({path:?}) or '.', exist_ok=True)\n\
         open({path:?}, 'wb').write(base64.b64decode({:?}))\n",
        BASE64.encode(bytes)
    )
}

fn uploads(out: &Value) -> &Vec<Value> {
    out["uploads"]
        .as_array()
        .unwrap_or_else(|| panic!("no uploads array: {out:#}"))
}

/// The stub's requests by the filename of their file part.
fn by_filename(received: &[Received]) -> BTreeMap<String, Received> {
    received
        .iter()
        .map(|r| (r.file().filename.clone().unwrap_or_default(), r.clone()))
        .collect()
}

/// `returnFiles` entries by path, with their decoded bytes.
fn returned(out: &Value) -> BTreeMap<String, (Value, Vec<u8>)> {
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
                (f.clone(), bytes),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_png_and_a_nested_csv_are_uploaded_as_the_seed_did() {
    require_root!();
    let stub = UploadStub::start(StubReply::Url);
    let svc = service(&[]);
    let code = format!(
        "{}{}print('made')",
        py_write("chart.png", PNG),
        py_write("data/out.csv", CSV.as_bytes())
    );
    let out = svc
        .run(json!({
            "code": code,
            "fileUploadUrl": stub.url("/upload"),
            "uploadToken": UPLOAD_TOKEN,
            "public": true,
        }))
        .await;
    assert_eq!(out["stdout"], "made\n", "{out:#}");
    let received = by_filename(&stub.received());
    assert_eq!(
        received.keys().collect::<Vec<_>>(),
        ["chart.png", "data/out.csv"],
        "{out:#}"
    );
    for (name, content_type, bytes) in [
        ("chart.png", "image/png", PNG),
        ("data/out.csv", "text/csv", CSV.as_bytes()),
    ] {
        let request = &received[name];
        assert_eq!(request.method, "POST");
        assert_eq!(request.target, "/upload?public=true");
        assert_eq!(
            request.header("authorization"),
            Some(format!("Bearer {UPLOAD_TOKEN}").as_str())
        );
        assert!(
            request
                .header("content-type")
                .is_some_and(|ct| ct.starts_with("multipart/form-data; boundary=")),
            "{request:?}"
        );
        let part = request.file();
        assert_eq!(part.content_type.as_deref(), Some(content_type), "{name}");
        assert_eq!(part.data, bytes, "{name}: the uploaded bytes differ");
    }
    assert_eq!(
        uploads(&out),
        &vec![
            json!({"filename": "chart.png", "url": received["chart.png"].returned_url, "status": 200}),
            json!({"filename": "data/out.csv", "url": received["data/out.csv"].returned_url, "status": 200}),
        ]
    );
    assert_eq!(out["skippedFiles"], json!([]), "{out:#}");
    assert!(
        out.get("files").is_none(),
        "files only with returnFiles: {out:#}"
    );
}

#[tokio::test]
async fn the_seed_aliases_upload_too() {
    require_root!();
    let stub = UploadStub::start(StubReply::Url);
    let svc = service(&[]);
    let out = svc
        .run(json!({
            "code": "open('r.txt', 'w').write('r')",
            "file_upload_url": stub.url("/u?bucket=b"),
            "api_token": UPLOAD_TOKEN,
            "public": "false",
        }))
        .await;
    let received = stub.received();
    assert_eq!(received.len(), 1, "{out:#}");
    assert_eq!(received[0].target, "/u?bucket=b&public=false");
    assert_eq!(
        received[0].header("authorization"),
        Some(format!("Bearer {UPLOAD_TOKEN}").as_str())
    );
    assert_eq!(received[0].file().data, b"r");
    assert_eq!(uploads(&out)[0]["url"], json!(received[0].returned_url));
}

#[tokio::test]
async fn without_both_url_and_token_nothing_is_uploaded() {
    require_root!();
    let stub = UploadStub::start(StubReply::Url);
    let svc = service(&[]);
    let code = "open('r.txt', 'w').write('r')";
    for body in [
        json!({ "code": code, "fileUploadUrl": stub.url("/u") }),
        json!({ "code": code, "uploadToken": UPLOAD_TOKEN }),
        json!({ "code": code, "file_upload_url": stub.url("/u"), "uploadToken": null }),
    ] {
        let out = svc.run(body.clone()).await;
        assert_eq!(out["uploads"], json!([]), "{body}: {out:#}");
        assert!(out.get("skippedFiles").is_none(), "{body}: {out:#}");
    }
    // No `public` given: no query parameter added.
    let out = svc
        .run(json!({ "code": code, "fileUploadUrl": stub.url("/u"), "uploadToken": "t" }))
        .await;
    assert_eq!(uploads(&out).len(), 1, "{out:#}");
    let received = stub.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].target, "/u");
}

#[tokio::test]
async fn links_are_neither_followed_nor_uploaded() {
    require_root!();
    let stub = UploadStub::start(StubReply::Url);
    let svc = service(&[]);
    let code = r#"
import os
os.symlink('/etc/passwd', 'passwd')
os.symlink('/etc', 'etc')
os.symlink('/', 'root')
os.makedirs('d')
open('d/real.txt', 'w').write('real')
os.symlink('../passwd', 'd/up')
open('a.txt', 'w').write('a')
os.link('a.txt', 'b.txt')
open('ok.txt', 'w').write('ok')
"#;
    let out = svc
        .run(json!({ "code": code, "fileUploadUrl": stub.url("/u"), "uploadToken": "t" }))
        .await;
    assert_eq!(out["exitCode"], 0, "{out:#}");
    let received = stub.received();
    let names: Vec<String> = by_filename(&received).into_keys().collect();
    assert_eq!(names, ["d/real.txt", "ok.txt"], "{out:#}");
    for request in &received {
        let data = String::from_utf8_lossy(&request.file().data).into_owned();
        assert!(
            !data.contains("root:"),
            "a passwd file was uploaded: {data}"
        );
    }
    let entries: Vec<(&str, Option<&str>)> = uploads(&out)
        .iter()
        .map(|u| {
            (
                u["filename"].as_str().unwrap_or_default(),
                u["error"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        entries,
        [
            ("d/real.txt", None),
            ("ok.txt", None),
            ("a.txt", Some("skipped: hard link")),
            ("b.txt", Some("skipped: hard link")),
            ("d/up", Some("skipped: symlink")),
            ("etc", Some("skipped: symlink")),
            ("passwd", Some("skipped: symlink")),
            ("root", Some("skipped: symlink")),
        ],
        "{out:#}"
    );
    assert_eq!(
        out["skippedFiles"][0],
        json!({"path": "a.txt", "reason": "hard link"})
    );
}

/// Names that would reorder or break a display (a bidi override makes
/// `rlo\u{202e}gnp.exe` show as "rloexe.png"; U+2028 and NEL break lines) are
/// skipped like control characters, and listed escaped (security-2 F12).
#[tokio::test]
async fn names_with_bidi_overrides_or_line_separators_are_skipped() {
    require_root!();
    let svc = service(&[]);
    let code = "for name in ['rlo\\u202egnp.exe', 'ls\\u2028x', 'ps\\u2029x', 'nel\\x85x', 'ok.txt']:\n    open(name, 'w').write('x')\n";
    let out = svc.run(json!({ "code": code, "returnFiles": true })).await;
    assert_eq!(
        returned(&out).keys().collect::<Vec<_>>(),
        ["ok.txt"],
        "{out:#}"
    );
    let reason = "name has control characters";
    assert_eq!(
        out["skippedFiles"],
        json!([
            {"path": "ls\\u{2028}x", "reason": reason},
            {"path": "nel\\u{85}x", "reason": reason},
            {"path": "ps\\u{2029}x", "reason": reason},
            {"path": "rlo\\u{202e}gnp.exe", "reason": reason},
        ]),
        "{out:#}"
    );
}

#[tokio::test]
async fn a_fifo_or_socket_does_not_hang_collection() {
    require_root!();
    let svc = service(&[]);
    let code = r#"
import os, socket
os.mkfifo('pipe')
s = socket.socket(socket.AF_UNIX)
s.bind('sock')
open('plain.txt', 'w').write('plain')
"#;
    let started = Instant::now();
    let out = svc.run(json!({ "code": code, "returnFiles": true })).await;
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        returned(&out).keys().collect::<Vec<_>>(),
        ["plain.txt"],
        "{out:#}"
    );
    assert_eq!(
        out["skippedFiles"],
        json!([
            {"path": "pipe", "reason": "not a regular file"},
            {"path": "sock", "reason": "not a regular file"},
        ])
    );
}

#[tokio::test]
async fn thousands_of_files_and_a_huge_one_stay_within_the_caps() {
    require_root!();
    let svc = service(&[]);
    let code = r#"
for i in range(3000):
    with open(f'f{i:04d}.txt', 'w') as f:
        f.write(str(i))
chunk = b'\0' * 1_000_000
with open('big.bin', 'wb') as f:
    for _ in range(300):
        f.write(chunk)
print('written')
"#;
    let out = svc
        .run(json!({
            "code": code,
            "returnFiles": true,
            "timeoutMs": 90_000,
            "limits": { "diskMb": 512, "memoryMb": 1024 },
        }))
        .await;
    assert_eq!(out["stdout"], "written\n", "{}", out["stderr"]);
    let files = returned(&out);
    assert_eq!(files.len(), 100);
    let expected: Vec<String> = (0..100).map(|i| format!("f{i:04}.txt")).collect();
    assert_eq!(files.keys().cloned().collect::<Vec<_>>(), expected);
    assert_eq!(files["f0042.txt"].1, b"42");
    let skipped = out["skippedFiles"].as_array().expect("skippedFiles");
    assert_eq!(
        skipped[0],
        json!({"path": "big.bin", "reason": "over the per-file cap of 33554432 bytes"})
    );
    assert_eq!(skipped.len(), 1000, "the listing is capped");
    assert!(skipped[1..]
        .iter()
        .all(|s| s["reason"] == "over the file count cap of 100"));
    assert_eq!(skipped[1]["path"], "f0100.txt");
    let unlisted = out["skippedFilesUnlisted"]
        .as_u64()
        .expect("skippedFilesUnlisted");
    assert_eq!(
        skipped.len() as u64 - 1 + unlisted,
        2900,
        "every file over the count cap is counted"
    );
}

#[tokio::test]
async fn an_upload_service_that_is_down_gives_per_file_errors() {
    require_root!();
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let svc = service(&[]);
    let code = "open('a.txt','w').write('a')\nopen('b.txt','w').write('b')\nprint('still here')";
    let out = svc
        .run(json!({
            "code": code,
            "fileUploadUrl": format!("http://127.0.0.1:{port}/up"),
            "uploadToken": "t",
        }))
        .await;
    assert_eq!(out["stdout"], "still here\n", "{out:#}");
    let uploads = uploads(&out);
    assert_eq!(uploads.len(), 2, "{out:#}");
    for upload in uploads {
        assert_eq!(upload["status"], 0, "{upload}");
        assert!(upload.get("url").is_none(), "{upload}");
        let error = upload["error"].as_str().unwrap_or_default();
        assert!(
            error.starts_with("cannot connect to the upload service"),
            "{error}"
        );
    }
}

/// Each upload has its own timeout, and `UPLOAD_CONCURRENCY` of them run at once:
/// the stub sees both hanging requests in flight together with 2, never with 1.
#[tokio::test]
async fn an_upload_service_that_never_answers_times_out_per_file() {
    require_root!();
    for concurrency in [1, 2] {
        let stub = UploadStub::start(StubReply::Hang);
        let svc = service(&[
            ("UPLOAD_TIMEOUT_MS", "1000"),
            ("UPLOAD_CONCURRENCY", &concurrency.to_string()),
        ]);
        let code = "open('a.txt','w').write('a')\nopen('b.txt','w').write('b')\nprint('done')";
        let out = svc
            .run(json!({ "code": code, "fileUploadUrl": stub.url("/up"), "uploadToken": "t" }))
            .await;
        assert_eq!(out["stdout"], "done\n", "{out:#}");
        assert_eq!(stub.received().len(), 2, "both uploads were tried");
        assert_eq!(
            uploads(&out),
            &vec![
                json!({"filename": "a.txt", "status": 0, "error": "upload timed out after 1000 ms"}),
                json!({"filename": "b.txt", "status": 0, "error": "upload timed out after 1000 ms"}),
            ]
        );
        assert_eq!(
            stub.max_in_flight(),
            concurrency,
            "uploads in flight at once with UPLOAD_CONCURRENCY={concurrency}"
        );
    }
}

#[tokio::test]
async fn the_upload_budget_bounds_all_uploads_together() {
    require_root!();
    let stub = UploadStub::start(StubReply::Hang);
    let svc = service(&[("UPLOAD_BUDGET_MS", "1000"), ("UPLOAD_CONCURRENCY", "1")]);
    let code = "for n in 'abc':\n    open(n + '.txt', 'w').write(n)";
    let started = Instant::now();
    let out = svc
        .run(json!({ "code": code, "fileUploadUrl": stub.url("/up"), "uploadToken": "t" }))
        .await;
    let budget_error = "upload budget of 1000 ms used up before this file finished";
    for upload in uploads(&out) {
        assert_eq!(upload["error"], budget_error, "{out:#}");
    }
    assert_eq!(uploads(&out).len(), 3);
    assert_eq!(
        stub.received().len(),
        1,
        "one at a time: the first used it all"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[tokio::test]
async fn a_redirect_is_not_followed() {
    require_root!();
    let elsewhere = UploadStub::start(StubReply::Url);
    let stub = UploadStub::start(StubReply::Redirect(elsewhere.url("/stolen")));
    let svc = service(&[]);
    let out = svc
        .run(json!({
            "code": "open('a.txt','w').write('a')",
            "fileUploadUrl": stub.url("/up"),
            "uploadToken": "t",
        }))
        .await;
    assert_eq!(
        uploads(&out),
        &vec![json!({
            "filename": "a.txt",
            "status": 302,
            "error": "the upload service answered HTTP 302, a redirect, which is not followed",
        })]
    );
    assert_eq!(stub.received().len(), 1);
    assert_eq!(elsewhere.connections(), 0, "the redirect was followed");
}

#[tokio::test]
async fn an_error_status_is_a_per_file_error() {
    require_root!();
    let stub = UploadStub::start(StubReply::Status(500));
    let svc = service(&[]);
    let out = svc
        .run(json!({
            "code": "open('a.txt','w').write('a')\nprint(1)",
            "fileUploadUrl": stub.url("/up"),
            "uploadToken": "t",
        }))
        .await;
    assert_eq!(out["stdout"], "1\n");
    assert_eq!(
        uploads(&out),
        &vec![
            json!({"filename": "a.txt", "status": 500, "error": "the upload service answered HTTP 500"})
        ]
    );
}

#[tokio::test]
async fn metadata_and_loopback_addresses_are_refused_without_connecting() {
    require_root!();
    let stub = UploadStub::start(StubReply::Url);
    // No UPLOAD_ALLOWED_HOSTS: every host's addresses are checked.
    let svc = Service::start();
    let port = stub.addr().port();
    let cases = [
        (
            "http://169.254.169.254/latest/meta-data/".to_owned(),
            "upload refused: 169.254.169.254 is a cloud metadata address; list the host in UPLOAD_ALLOWED_HOSTS to open a private file service",
        ),
        (
            format!("http://127.0.0.1:{port}/up"),
            "upload refused: 127.0.0.1 is a loopback address; list the host in UPLOAD_ALLOWED_HOSTS to open a private file service",
        ),
        (
            format!("http://[::ffff:127.0.0.1]:{port}/up"),
            "upload refused: ::ffff:127.0.0.1 is a loopback address; list the host in UPLOAD_ALLOWED_HOSTS to open a private file service",
        ),
        (
            format!("http://localhost:{port}/up"),
            "upload refused: localhost resolves to",
        ),
        (
            format!("http://0.0.0.0:{port}/up"),
            "upload refused: 0.0.0.0 is an unspecified address; list the host in UPLOAD_ALLOWED_HOSTS to open a private file service",
        ),
    ];
    for (url, error) in cases {
        let out = svc
            .run(json!({
                "code": "open('a.txt','w').write('a')\nprint('ran')",
                "fileUploadUrl": url,
                "uploadToken": "t",
            }))
            .await;
        assert_eq!(out["stdout"], "ran\n", "{out:#}");
        let uploads = uploads(&out);
        assert_eq!(uploads.len(), 1, "{out:#}");
        assert_eq!(uploads[0]["status"], 0);
        let got = uploads[0]["error"].as_str().unwrap_or_default();
        assert!(got.starts_with(error), "{url}: {got}");
    }
    assert_eq!(stub.connections(), 0, "a refused address was connected to");
}

/// A service bound to every interface must not be reachable through this host's
/// own non-loopback address (review M1); the answer is the same whether the port
/// is open or closed, so it cannot scan ports, and nothing is connected to.
#[tokio::test]
async fn this_hosts_own_address_is_refused_whatever_the_port() {
    require_root!();
    let own = nix::ifaddrs::getifaddrs()
        .expect("cannot read this host's interfaces")
        .filter_map(|i| i.address?.as_sockaddr_in().map(|a| a.ip()))
        .find(|ip| !ip.is_loopback());
    let Some(mine) = own else {
        assert!(
            std::env::var_os("CI").is_none(),
            "this host has no non-loopback IPv4 address to test with"
        );
        eprintln!("skipped: this host has no non-loopback IPv4 address");
        return;
    };
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let open = listener.local_addr().unwrap().port();
    let closed = std::net::TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let svc = Service::start();
    let mut answers = Vec::new();
    for port in [open, closed] {
        let out = svc
            .run(json!({
                "code": "open('a.txt','w').write('a')\nprint('ran')",
                "fileUploadUrl": format!("http://{mine}:{port}/up"),
                "uploadToken": "t",
            }))
            .await;
        assert_eq!(out["stdout"], "ran\n", "{out:#}");
        answers.push(uploads(&out).clone());
    }
    assert_eq!(answers[0], answers[1], "the answer depends on the port");
    let error = answers[0][0]["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with(&format!("upload refused: {mine} is ")),
        "{answers:?}"
    );
    assert!(
        error.ends_with("; list the host in UPLOAD_ALLOWED_HOSTS to open a private file service"),
        "{answers:?}"
    );
    assert_eq!(answers[0][0]["status"], 0);
    assert!(
        listener.accept().is_err(),
        "the refused address was connected to"
    );
}

/// The upload service's answer is not reflected unchecked (security-2 F10): only
/// an http(s) URL of bounded length is taken, and the answer is read only so far.
#[tokio::test]
async fn upload_answers_with_bad_or_huge_urls_become_errors() {
    require_root!();
    let svc = service(&[]);
    let huge = format!("https://files.test/{}", "a".repeat(1 << 20));
    let long = format!("https://files.test/{}", "a".repeat(3000));
    for (answer, error) in [
        (
            json!({"url": "javascript:alert(document.domain)//"}),
            "the upload service answered a URL that is not an http(s) URL",
        ),
        (
            json!({"data": {"url": "data:text/html,<script>alert(1)</script>"}}),
            "the upload service answered a URL that is not an http(s) URL",
        ),
        (
            json!({"file": {"url": long}}),
            "the upload service answered a URL that is longer than 2048 characters",
        ),
        (
            json!({"url": huge}),
            "the upload service's answer is larger than 65536 bytes",
        ),
    ] {
        let stub = UploadStub::start(StubReply::Json(answer.to_string()));
        let out = svc
            .run(json!({
                "code": "open('a.txt','w').write('a')",
                "fileUploadUrl": stub.url("/up"),
                "uploadToken": UPLOAD_TOKEN,
            }))
            .await;
        assert_eq!(
            uploads(&out),
            &vec![json!({"filename": "a.txt", "status": 200, "error": error})],
            "{answer:.80}"
        );
        assert_eq!(stub.received().len(), 1);
    }
}

#[tokio::test]
async fn upload_hosts_off_the_allow_list_are_a_400() {
    require_root!();
    let svc = service(&[]);
    for key in ["fileUploadUrl", "file_upload_url"] {
        let reply = svc
            .post_execute(&json!({
                "code": "print(1)",
                key: "https://files.example.com/upload",
                "uploadToken": "t",
            }))
            .await;
        assert_error(
            &reply,
            400,
            json!({
                "error": format!("{key}: host files.example.com is not in UPLOAD_ALLOWED_HOSTS"),
                "field": key,
            }),
        );
    }
}

#[tokio::test]
async fn input_files_arrive_owned_by_the_job() {
    require_root!();
    let svc = service(&[]);
    let all_bytes: Vec<u8> = (0..=255).collect();
    let code = r#"
import json, os
csv = open('data/in.csv').read()
blob = open('bin/all.bytes', 'rb').read()
mine = all(os.stat(p).st_uid == os.getuid() for p in ['data', 'data/in.csv', 'bin/all.bytes'])
open('data/in.csv', 'a').write('5,6\n')
open('report.txt', 'w').write(str(len(csv.splitlines())))
print(json.dumps({'csv': csv, 'blob': blob == bytes(range(256)), 'mine': mine}))
"#;
    let out = svc
        .run(json!({
            "code": code,
            "files": [
                { "path": "data/in.csv", "contentBase64": BASE64.encode(CSV) },
                { "path": "bin/all.bytes", "contentBase64": BASE64.encode(&all_bytes) },
            ],
            "returnFiles": true,
        }))
        .await;
    assert_eq!(
        pysandbox_tests::stdout_json(&out),
        json!({ "csv": CSV, "blob": true, "mine": true }),
        "{out:#}"
    );
    // The input the job changed comes back; the one it left alone does not.
    let files = returned(&out);
    assert_eq!(
        files.keys().collect::<Vec<_>>(),
        ["data/in.csv", "report.txt"],
        "{out:#}"
    );
    assert_eq!(files["data/in.csv"].1, format!("{CSV}5,6\n").as_bytes());
    assert_eq!(files["report.txt"].1, b"3");
}

#[tokio::test]
async fn input_files_are_checked() {
    require_root!();
    let svc = Service::builder()
        .frontend_env("MAX_BODY_BYTES", "4194304")
        .start();
    let file = |path: &str| json!({ "path": path, "contentBase64": "" });
    for (files, field, reason) in [
        (
            json!([file("../x")]),
            "files[0].path",
            "must be a relative path without ..",
        ),
        (
            json!([file("ok"), file("/etc/passwd")]),
            "files[1].path",
            "must be a relative path without ..",
        ),
        (
            json!([file("a/../../b")]),
            "files[0].path",
            "must be a relative path without ..",
        ),
        (json!([file("")]), "files[0].path", "must not be empty"),
        (
            json!([{ "path": "a", "contentBase64": "%%%" }]),
            "files[0].contentBase64",
            "must be valid base64",
        ),
        (
            json!([file("a"), file("a")]),
            "files[1].path",
            "conflicts with files[0].path",
        ),
        (json!({}), "files", "must be an array"),
    ] {
        let reply = svc
            .post_execute(&json!({ "code": "print(1)", "files": files }))
            .await;
        assert_error(
            &reply,
            400,
            json!({ "error": format!("{field}: {reason}"), "field": field }),
        );
    }
    // The executor's caps: more than the job's disk holds.
    let big = BASE64.encode(vec![7u8; 2 << 20]);
    let reply = svc
        .post_execute(&json!({
            "code": "print(1)",
            "files": [{ "path": "big.bin", "contentBase64": big }],
            "limits": { "diskMb": 1 },
        }))
        .await;
    assert_error(
        &reply,
        400,
        json!({
            "error": "files: do not fit in the job's disk limit of 1 MiB (limits.diskMb)",
            "field": "files",
        }),
    );
}

#[tokio::test]
async fn the_executor_caps_input_bytes() {
    require_root!();
    let svc = Service::builder()
        .executor_config_toml("max_input_bytes = 10\n")
        .start();
    let reply = svc
        .post_execute(&json!({
            "code": "print(1)",
            "files": [{ "path": "a", "contentBase64": BASE64.encode([0u8; 11]) }],
        }))
        .await;
    assert_error(
        &reply,
        400,
        json!({ "error": "files: must total at most 10 bytes", "field": "files" }),
    );
}

#[tokio::test]
async fn return_files_round_trips_bytes() {
    require_root!();
    let svc = service(&[]);
    let blob: Vec<u8> = (0..=255).cycle().take(4096).collect();
    let code = format!(
        "{}{}",
        py_write("blob.bin", &blob),
        py_write("notes/é ü.txt", "héllo\n".as_bytes())
    );
    let reply = svc
        .post_execute(&json!({ "code": code, "returnFiles": true }))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let out = &reply.json;
    let files = returned(out);
    assert_eq!(files.len(), 2, "{out:#}");
    let (entry, bytes) = &files["blob.bin"];
    assert_eq!(bytes, &blob);
    assert_eq!(entry["size"], 4096);
    assert_eq!(entry["contentType"], "application/octet-stream");
    let (entry, bytes) = &files["notes/é ü.txt"];
    assert_eq!(bytes, "héllo\n".as_bytes());
    assert_eq!(entry["contentType"], "text/plain");
    assert_eq!(
        entry
            .as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>()),
        Some(vec![
            "contentBase64".to_owned(),
            "contentType".to_owned(),
            "path".to_owned(),
            "size".to_owned()
        ])
    );
    assert_eq!(out["uploads"], json!([]));
    assert_eq!(out["skippedFiles"], json!([]));
    // The new keys come after every existing one.
    let at = |key: &str| reply.text.find(&format!("\"{key}\":"));
    assert!(
        at("usage") < at("files") && at("files") < at("skippedFiles"),
        "{}",
        reply.text
    );
}

/// The point of it all: an agent asks for a chart and gets a URL for it.
#[tokio::test]
async fn a_matplotlib_chart_is_drawn_and_uploaded() {
    require_root!();
    let importable = Command::new("/usr/bin/python3")
        .args(["-c", "import matplotlib"])
        .status()
        .is_ok_and(|s| s.success());
    if !importable {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install python3-matplotlib for this test"
        );
        return eprintln!("skipped: /usr/bin/python3 cannot import matplotlib");
    }
    let stub = UploadStub::start(StubReply::Url);
    let svc = service(&[]);
    let code = r#"
import matplotlib.pyplot as plt
xs = list(range(10))
plt.plot(xs, [x * x for x in xs], marker='o')
plt.title('squares')
plt.savefig('chart.png')
print('saved')
"#;
    let out = svc
        .run(json!({
            "code": code,
            "fileUploadUrl": stub.url("/charts"),
            "uploadToken": UPLOAD_TOKEN,
            "timeoutMs": 90_000,
        }))
        .await;
    assert_eq!(out["stdout"], "saved\n", "{}", out["stderr"]);
    assert_eq!(
        out["stderr"], "",
        "drawing must not complain (fonts, libraries)"
    );
    let received = stub.received();
    assert_eq!(received.len(), 1, "{out:#}");
    let part = received[0].file();
    assert_eq!(part.filename.as_deref(), Some("chart.png"));
    assert_eq!(part.content_type.as_deref(), Some("image/png"));
    assert!(part.data.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    // IHDR: 640 x 480, matplotlib's default figure at 100 dpi.
    assert_eq!(&part.data[16..24], &[0, 0, 2, 128, 0, 0, 1, 224]);
    assert_eq!(
        uploads(&out),
        &vec![json!({"filename": "chart.png", "url": received[0].returned_url, "status": 200})]
    );
}

/// Fifty files, each uploaded once with its own bytes under its own name, each
/// listed with the URL the service gave for it. (How long they take is printed, for
/// the issue that asked; it is not a bound.)
#[tokio::test]
async fn fifty_files_are_uploaded_each_with_its_own_bytes() {
    require_root!();
    let stub = UploadStub::start(StubReply::Url);
    let svc = service(&[]);
    let content = |i: usize| format!("file {i:02} ").repeat(8192).into_bytes();
    let code = "for i in range(50):\n    open(f'out{i:02d}.bin', 'wb').write((f'file {i:02d} ' * 8192).encode())";
    let started = Instant::now();
    let out = svc
        .run(json!({ "code": code, "fileUploadUrl": stub.url("/up"), "uploadToken": "t" }))
        .await;
    let total = started.elapsed();
    let received = stub.received();
    assert_eq!(received.len(), 50, "one request per file");
    let expected: Vec<Value> = (0..50)
        .map(|i| {
            let name = format!("out{i:02}.bin");
            let sent: Vec<&pysandbox_tests::Received> = received
                .iter()
                .filter(|r| r.file().filename.as_deref() == Some(name.as_str()))
                .collect();
            assert_eq!(sent.len(), 1, "{name} uploaded {} times", sent.len());
            assert!(sent[0].file().data == content(i), "{name}: other bytes");
            json!({ "filename": name, "url": sent[0].returned_url, "status": 200 })
        })
        .collect();
    assert_eq!(uploads(&out), &expected, "{out:#}");
    let first = received.iter().map(|r| r.started).min().expect("requests");
    let last = received
        .iter()
        .filter_map(|r| r.answered)
        .max()
        .expect("answers");
    eprintln!(
        "50 files x 64 KiB uploaded to the local stub: uploads {:?} (first request to last answer), \
         whole request {total:?}, job {} ms",
        last - first,
        out["durationMs"]
    );
}

/// README: `MAX_INFLIGHT` counts jobs at the executor or uploading their files. With
/// one slot, a job whose run is over but whose upload still hangs keeps it: the
/// executor runs nothing, yet the next request is a 429; once the upload has timed
/// out, the slot is free again.
#[tokio::test]
async fn a_job_still_uploading_holds_its_admission_slot() {
    require_root!();
    let stub = UploadStub::start(StubReply::Hang);
    let svc = service(&[
        ("MAX_INFLIGHT", "1"),
        ("MAX_QUEUE", "0"),
        ("UPLOAD_TIMEOUT_MS", "5000"),
    ]);
    let body = json!({
        "code": "open('a.txt', 'w').write('a')",
        "fileUploadUrl": stub.url("/up"),
        "uploadToken": UPLOAD_TOKEN,
    });
    let uploading = svc.run(body);
    let meanwhile = async {
        let started = Instant::now();
        while stub.received().is_empty() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the upload never arrived"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let health = svc.health().await;
        assert_eq!(
            (&health.json["runningJobs"], &health.json["queuedJobs"]),
            (&json!(0), &json!(0)),
            "the job is still at the executor: {}",
            health.text
        );
        let refused = svc.post_execute(&json!({ "code": "print(1)" })).await;
        assert_error(
            &refused,
            429,
            json!({ "error": "too many jobs in flight; retry later" }),
        );
        started.elapsed()
    };
    let (out, waited) = tokio::join!(uploading, meanwhile);
    assert!(
        waited < Duration::from_secs(5),
        "checked too late: {waited:?}"
    );
    assert_eq!(
        uploads(&out),
        &vec![json!({"filename": "a.txt", "status": 0, "error": "upload timed out after 5000 ms"})],
        "{out:#}"
    );
    let next = svc.run_code("print(2)").await;
    assert_eq!(next["stdout"], "2\n", "{next:#}");
}

/// README: `UPLOAD_TIMEOUT_MS` also bounds the DNS lookup of the upload host. The
/// frontend runs in a mount namespace of its own whose `/etc/resolv.conf` names a
/// DNS server on loopback that reads every query and answers none. The frontend
/// looks the name up itself, whether to check its addresses or, for a host in
/// `UPLOAD_ALLOWED_HOSTS`, only to pin them, and says so: the upload fails after
/// about the upload timeout, long before the resolver's own 30 s, with the same
/// error either way; the server saw the query, so the time went to DNS.
#[tokio::test]
async fn the_upload_timeout_bounds_the_dns_lookup() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    require_root!();
    let dns = std::net::UdpSocket::bind("127.0.0.77:53").expect("bind the silent DNS server");
    dns.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("read timeout");
    let queries = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let server = {
        let (queries, stop) = (Arc::clone(&queries), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !stop.load(Ordering::SeqCst) {
                if dns.recv_from(&mut buf).is_ok() {
                    queries.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(
        &resolv,
        "nameserver 127.0.0.77\noptions timeout:30 attempts:1\n",
    )
    .expect("write resolv.conf");
    assert_eq!(
        pysandbox_tests::FRONTEND_UID,
        pysandbox_tests::FRONTEND_GID,
        "setpriv below gives both the one id"
    );

    let error = "cannot resolve files.slow.test: timed out";
    for allowed in [None, Some("files.slow.test")] {
        let executor = pysandbox_tests::Executor::builder().start();
        let token = pysandbox_tests::random_hex(16);
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(
                "mount --bind \"$0\" /etc/resolv.conf && \
                 exec setpriv --reuid=\"$1\" --regid=\"$1\" --clear-groups \"$2\"",
            )
            .arg(&resolv)
            .arg(pysandbox_tests::FRONTEND_UID.to_string())
            .arg(&pysandbox_tests::binaries().frontend)
            .current_dir("/")
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env("AUTH_TOKEN", &token)
            .env("PORT", "0")
            .env("HOST", "127.0.0.1")
            .env("PYSANDBOX_EXECUTOR_SOCKET", executor.socket())
            .env("UPLOAD_TIMEOUT_MS", "1000")
            .stdin(std::process::Stdio::null());
        if let Some(host) = allowed {
            cmd.env("UPLOAD_ALLOWED_HOSTS", host);
        }
        let frontend = pysandbox_tests::Frontend::launch(cmd, &token, executor.socket());
        let svc = Service::new(frontend, executor);
        svc.wait_for_warm_pool();

        queries.store(0, Ordering::SeqCst);
        let started = Instant::now();
        let out = svc
            .run(json!({
                "code": "open('a.txt', 'w').write('a')",
                "fileUploadUrl": "http://files.slow.test:8080/up",
                "uploadToken": UPLOAD_TOKEN,
            }))
            .await;
        let took = started.elapsed();
        assert_eq!(
            uploads(&out),
            &vec![json!({ "filename": "a.txt", "status": 0, "error": error })],
            "allowed hosts {allowed:?}: {out:#}"
        );
        assert!(
            queries.load(Ordering::SeqCst) >= 1,
            "allowed hosts {allowed:?}: the lookup never reached the DNS server"
        );
        assert!(
            took < Duration::from_secs(15),
            "allowed hosts {allowed:?}: the answer took {took:?}"
        );
    }
    stop.store(true, Ordering::SeqCst);
    server.join().expect("the DNS server thread");
}
