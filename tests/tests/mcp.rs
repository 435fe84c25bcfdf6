//! `POST /mcp`: the stock MCP client (the `mcp` Python package) lists `run_python`
//! and the session tools and runs jobs and sessions through them; the endpoint has
//! `/execute`'s token, body limits and admission, the session routes' refusals, and
//! hostile bodies get a JSON-RPC error or a 4xx, never a hang.

use std::process::Stdio;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use pysandbox_tests::{assert_error, require_root, venv_python, Reply, Service};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

/// What the stock client saw: `{"serverInfo", "tools", "results"}` after calling
/// each of `calls` (`{"name", "arguments"}`) with `token`.
async fn stock_client(svc: &Service, token: &str, calls: Value) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/mcp_client.py");
    let mut child = Command::new(venv_python())
        .args([script, &svc.url("/mcp"), token])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the MCP client");
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin
        .write_all(calls.to_string().as_bytes())
        .await
        .expect("feed the calls");
    drop(stdin);
    let out = child.wait_with_output().await.expect("the client's output");
    assert!(
        out.status.success(),
        "the MCP client failed: {}\nfrontend log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        svc.frontend.log().text()
    );
    serde_json::from_slice(&out.stdout).expect("the client prints JSON")
}

fn run_python(arguments: Value) -> Value {
    json!({"name": "run_python", "arguments": arguments})
}

/// A call of `tool`; `"$session"` in `arguments` stands for the last session
/// `create_session` opened (see `mcp_client.py`).
fn call(tool: &str, arguments: Value) -> Value {
    json!({"name": tool, "arguments": arguments})
}

/// `POST /mcp` of raw `body` with `authorization` and the headers a streamable
/// HTTP client sends.
async fn post_mcp(svc: &Service, authorization: Option<&str>, body: impl Into<Vec<u8>>) -> Reply {
    let mut headers = vec![
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
    ];
    if let Some(auth) = authorization {
        headers.push(("authorization", auth));
    }
    svc.post_raw("/mcp", &headers, body).await
}

/// Sends only the head of a `POST /mcp` (with `authorization`, if any) that
/// announces a body of `length` bytes (and waits for `100 Continue` before sending
/// it), and reads what the frontend answers: a body sent at once would race the
/// frontend's early answer and close, and a reset could swallow the answer.
async fn head_only(svc: &Service, authorization: Option<&str>, length: usize) -> Reply {
    let mut stream = tokio::net::TcpStream::connect(svc.frontend.addr())
        .await
        .expect("connect");
    let authorization = authorization
        .map(|value| format!("Authorization: {value}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "POST /mcp HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Accept: application/json, text/event-stream\r\nExpect: 100-continue\r\n\
         {authorization}Content-Length: {length}\r\nConnection: close\r\n\r\n",
        svc.frontend.addr()
    );
    stream
        .write_all(head.as_bytes())
        .await
        .expect("send the head");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer))
        .await
        .expect("an answer within 30 s")
        .expect("read the answer");
    pysandbox_tests::parse_raw_response(&answer).expect("an HTTP response")
}

fn bearer(svc: &Service) -> String {
    format!("Bearer {}", svc.token())
}

/// The text of a tool result's first content block.
fn text(result: &Value) -> &str {
    result["content"][0]["text"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn the_stock_client_lists_run_python_and_gets_42_a_png_and_files() {
    require_root!();
    let svc = Service::start();
    let plot = "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()\n";
    let writes =
        "open('out.txt', 'w').write('hello')\nopen('raw.bin', 'wb').write(bytes([0, 255]))\n";
    let seen = stock_client(
        &svc,
        svc.token(),
        json!([
            run_python(json!({"code": "print(6*7)"})),
            run_python(json!({"code": plot})),
            run_python(json!({"code": writes})),
            run_python(json!({"code": "print(input())", "stdin": "fed\n", "timeoutMs": 5000})),
        ]),
    )
    .await;
    assert_eq!(seen["serverInfo"]["name"], "pysandbox", "{seen}");

    let tools = seen["tools"].as_array().expect("tools");
    let names: Vec<&str> = tools.iter().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(
        names,
        [
            "run_python",
            "create_session",
            "run_in_session",
            "end_session"
        ],
        "{seen}"
    );
    let tool = &tools[0];
    assert_eq!(tool["name"], "run_python");
    let description = tool["description"].as_str().unwrap_or_default();
    assert!(
        description.contains("Nothing is kept between calls"),
        "{description}"
    );
    let schema = &tool["inputSchema"];
    assert_eq!(schema["type"], "object");
    assert_eq!(schema["required"], json!(["code"]));
    for field in [
        "code",
        "stdin",
        "files",
        "timeoutMs",
        "network",
        "limits",
        "returnFiles",
    ] {
        assert!(schema["properties"][field].is_object(), "{field}: {schema}");
    }
    assert_eq!(
        schema["properties"]["network"]["properties"]["allowedDomains"]["type"],
        "array"
    );
    assert_eq!(schema["properties"]["timeoutMs"]["maximum"], 120000);

    let results = seen["results"].as_array().expect("results");
    let answer = &results[0];
    assert_eq!(answer["isError"], false, "{answer}");
    assert_eq!(
        text(answer),
        "exit status: 0\n--- stdout ---\n42\n--- stderr ---\n",
        "{answer}"
    );
    let structured = &answer["structuredContent"];
    assert_eq!(structured["exitCode"], 0);
    assert_eq!(structured["stdout"], "42\n");
    assert_eq!(structured["displays"], json!([]));
    assert_eq!(structured["files"], json!([]));

    let plotted = &results[1];
    assert_eq!(plotted["isError"], false, "{plotted}");
    let images: Vec<&Value> = plotted["content"]
        .as_array()
        .expect("content")
        .iter()
        .filter(|block| block["type"] == "image")
        .collect();
    assert_eq!(images.len(), 1, "{plotted}");
    assert_eq!(images[0]["mimeType"], "image/png");
    let png = BASE64
        .decode(images[0]["data"].as_str().expect("image data"))
        .expect("base64 image");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");

    let wrote = &results[2];
    let resources: Vec<&Value> = wrote["content"]
        .as_array()
        .expect("content")
        .iter()
        .filter(|block| block["type"] == "resource")
        .map(|block| &block["resource"])
        .collect();
    assert_eq!(
        resources,
        [
            &json!({"uri": "sandbox:///work/out.txt", "mimeType": "text/plain", "text": "hello"}),
            &json!({"uri": "sandbox:///work/raw.bin", "mimeType": "application/octet-stream", "blob": "AP8="}),
        ],
        "{wrote}"
    );

    assert_eq!(results[3]["structuredContent"]["stdout"], "fed\n");
}

/// `GET /sessions/{id}` with the token.
async fn describe_session(svc: &Service, id: &str) -> Reply {
    svc.authorized(Method::GET, &format!("/sessions/{id}"), None)
        .await
}

/// `POST /sessions` with the token and an empty body.
async fn open_session(svc: &Service) -> Reply {
    svc.authorized(Method::POST, "/sessions", None).await
}

/// The session tools as the stock client lists them, then a session that keeps
/// `x` from one call to the next until `end_session` takes it away.
#[tokio::test]
async fn the_stock_client_keeps_a_variable_in_a_session_until_it_ends() {
    require_root!();
    let svc = Service::start();
    let seen = stock_client(
        &svc,
        svc.token(),
        json!([
            call("create_session", json!({"idleTimeoutMs": 60000})),
            call(
                "run_in_session",
                json!({"sessionId": "$session", "code": "x = 41"})
            ),
            call(
                "run_in_session",
                json!({"sessionId": "$session", "code": "x + 1"})
            ),
            call("end_session", json!({"sessionId": "$session"})),
            call(
                "run_in_session",
                json!({"sessionId": "$session", "code": "x"})
            ),
        ]),
    )
    .await;

    let tools = seen["tools"].as_array().expect("tools");
    let tool = |name: &str| {
        tools
            .iter()
            .find(|t| t["name"] == name)
            .unwrap_or_else(|| panic!("no tool {name}: {seen}"))
    };
    let description = |name: &str| tool(name)["description"].as_str().unwrap_or_default();
    for kept in ["variables, imports", "files", "end_session", "network"] {
        assert!(description("create_session").contains(kept), "{kept}");
    }
    assert!(description("run_in_session").contains("one at a time"));
    assert!(description("end_session").contains("session not found"));
    assert_eq!(
        tool("run_in_session")["inputSchema"]["required"],
        json!(["sessionId", "code"])
    );
    assert_eq!(
        tool("end_session")["inputSchema"]["required"],
        json!(["sessionId"])
    );
    assert_eq!(tool("end_session")["annotations"]["destructiveHint"], true);
    let session_limits = &tool("create_session")["inputSchema"]["properties"]["limits"];
    assert!(session_limits["properties"]["memoryMb"].is_object());

    let results = seen["results"].as_array().expect("results");
    let opened = &results[0];
    assert_eq!(opened["isError"], false, "{opened}");
    let session = &opened["structuredContent"];
    let id = session["sessionId"].as_str().expect("a session id");
    assert!(
        text(opened).starts_with(&format!("sessionId: {id}\n")),
        "{opened}"
    );
    assert_eq!(session["idleTimeoutMs"], 60000, "{session}");
    assert_eq!(session["calls"], 0, "{session}");
    assert_eq!(session["busy"], false, "{session}");

    let set = &results[1];
    assert_eq!(set["isError"], false, "{set}");
    assert_eq!(set["structuredContent"]["exitCode"], 0, "{set}");
    let got = &results[2];
    assert_eq!(got["isError"], false, "{got}");
    assert_eq!(got["structuredContent"]["result"], "42", "{got}");
    assert_eq!(
        text(got),
        "exit status: 0\n--- stdout ---\n--- stderr ---\n--- value of the last expression ---\n42\n"
    );

    let ended = &results[3];
    assert_eq!(ended["isError"], false, "{ended}");
    assert!(text(ended).contains(id), "{ended}");
    // DELETE's answer: gone, not ended.
    assert_error(
        &describe_session(&svc, id).await,
        404,
        json!({"error": "session not found"}),
    );

    let gone = &results[4];
    assert_eq!(gone["isError"], true, "{gone}");
    assert_eq!(text(gone), "session not found", "{gone}");
    assert_eq!(
        gone["structuredContent"],
        json!({"error": "session not found"})
    );
}

/// The session routes' refusals, as tool errors with the same message and body:
/// 429 for one session too many, 400 for a call that asks for the session's
/// limits, 410 once `sys.exit` ended it, 404 for an id no session could have.
#[tokio::test]
async fn session_refusals_are_tool_errors_with_the_routes_messages() {
    require_root!();
    let svc = Service::builder()
        .executor_config_toml("session_max = 1\n")
        .start();
    let first = open_session(&svc).await;
    assert_eq!(first.status, 201, "{}", first.text);
    let id = first.json["sessionId"].as_str().expect("a session id");
    let full = open_session(&svc).await;
    assert_eq!(full.status, 429, "{}", full.text);
    let theirs = json!({"code": "1", "limits": {"memoryMb": 64}});
    let auth = bearer(&svc);
    let refused = svc
        .post_raw(
            &format!("/sessions/{id}/execute"),
            &[
                ("authorization", auth.as_str()),
                ("content-type", "application/json"),
            ],
            theirs.to_string(),
        )
        .await;
    assert_eq!(refused.status, 400, "{}", refused.text);

    let mut theirs = theirs;
    theirs["sessionId"] = json!(id);
    let seen = stock_client(
        &svc,
        svc.token(),
        json!([
            call("create_session", json!({})),
            call("run_in_session", theirs),
            call(
                "run_in_session",
                json!({"sessionId": id, "code": "import sys\nsys.exit(2)"})
            ),
            call("run_in_session", json!({"sessionId": id, "code": "1"})),
            call("end_session", json!({"sessionId": "../etc"})),
            call("run_in_session", json!({"code": "1"})),
        ]),
    )
    .await;
    let results = seen["results"].as_array().expect("results");
    let refusal = |result: &Value, reply: &Reply| {
        assert_eq!(result["isError"], true, "{result}");
        assert_eq!(text(result), reply.json["error"], "{result}");
        assert_eq!(result["structuredContent"], reply.json, "{result}");
    };
    refusal(&results[0], &full);
    assert!(
        text(&results[0]).starts_with("too many sessions: "),
        "{}",
        results[0]
    );
    refusal(&results[1], &refused);
    assert_eq!(
        text(&results[1]),
        "limits.memoryMb: is the session's: set it when the session is created"
    );
    let exited = &results[2];
    assert_eq!(exited["isError"], false, "{exited}");
    assert_eq!(exited["structuredContent"]["exitCode"], 2, "{exited}");
    let ended = describe_session(&svc, id).await;
    assert_eq!(ended.status, 410, "{}", ended.text);
    refusal(&results[3], &ended);
    assert!(
        text(&results[3]).starts_with("session ended: "),
        "{}",
        results[3]
    );
    assert_eq!(
        results[4]["structuredContent"],
        json!({"error": "session not found"})
    );
    assert_eq!(results[5]["isError"], true);
    assert_eq!(
        results[5]["structuredContent"],
        json!({"error": "sessionId: is required", "field": "sessionId"})
    );
}

/// A call to a session that runs another one is refused at once, as the route
/// refuses it: 409, "session is busy with another call".
#[tokio::test]
async fn a_busy_session_is_a_tool_error() {
    require_root!();
    let svc = Service::start();
    let opened = open_session(&svc).await;
    assert_eq!(opened.status, 201, "{}", opened.text);
    let id = opened.json["sessionId"].as_str().expect("a session id");
    let auth = bearer(&svc);
    let path = format!("/sessions/{id}/execute");
    let sleep = json!({"code": "import time\ntime.sleep(60)", "timeoutMs": 90000}).to_string();
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    let hold = svc.post_raw(&path, &headers, sleep);
    let busy = async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while describe_session(&svc, id).await.json["busy"] != true {
            assert!(tokio::time::Instant::now() < deadline, "the call never ran");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
            "name": "run_in_session", "arguments": {"sessionId": id, "code": "1"}}});
        post_mcp(&svc, Some(&auth), call.to_string()).await
    };
    let reply = tokio::select! {
        reply = busy => reply,
        held = hold => panic!("the held call ended first: {}", held.text),
    };
    assert_eq!(reply.status, 200, "{}", reply.text);
    let result = &reply.json["result"];
    assert_eq!(result["isError"], true, "{result}");
    assert_eq!(text(result), "session is busy with another call");
    assert_eq!(
        result["structuredContent"],
        json!({"error": "session is busy with another call"})
    );
    // Ending it interrupts the held call; nothing of it is left.
    let ended = post_mcp(
        &svc,
        Some(&auth),
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
            "name": "end_session", "arguments": {"sessionId": id}}})
        .to_string(),
    )
    .await;
    assert_eq!(ended.json["result"]["isError"], false, "{}", ended.text);
    assert_eq!(describe_session(&svc, id).await.status, 404);
}

/// A request `/execute` refuses is a tool error with `/execute`'s message, and a
/// call that finds the service full is one too.
#[tokio::test]
async fn invalid_requests_and_a_full_service_are_tool_errors() {
    require_root!();
    let svc = Service::builder()
        .executor_args(["--max-jobs", "1", "--warm-pool-size", "0"])
        .frontend_env("MAX_INFLIGHT", "1")
        .frontend_env("MAX_QUEUE", "0")
        .start();
    let calls = [
        run_python(json!({"code": ""})),
        run_python(json!({"code": "1", "timeoutMs": 0})),
        run_python(json!({"code": "1", "files": [{"path": "../x", "contentBase64": ""}]})),
        run_python(json!({"code": "1", "files": [{"path": "x", "contentBase64": "%%"}]})),
        run_python(json!({"code": "1", "network": {"allowedDomains": "example.com"}})),
        run_python(json!({"code": "1", "limits": {"memoryMb": 0}})),
        run_python(json!({"code": "1", "limits": {"swapMb": 1}})),
    ];
    let seen = stock_client(&svc, svc.token(), json!(calls)).await;
    let results = seen["results"].as_array().expect("results");
    assert_eq!(results.len(), calls.len());
    for (result, call) in results.iter().zip(calls) {
        // `/execute`'s refusal of the same body, word for word.
        let refusal = svc.post_execute(&call["arguments"]).await;
        assert_eq!(refusal.status, 400, "{}", refusal.text);
        assert_eq!(result["isError"], true, "{call}: {result}");
        assert_eq!(text(result), refusal.json["error"], "{call}: {result}");
        assert_eq!(
            result["structuredContent"], refusal.json,
            "{call}: {result}"
        );
    }
    assert_eq!(
        results[0]["structuredContent"],
        json!({"error": "code: must not be empty", "field": "code"})
    );

    // One job holds the only slot; the tool call is turned away, as `/execute` is.
    let hold = svc.run(json!({"code": "import time\ntime.sleep(30)", "timeoutMs": 60000}));
    let busy = async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while svc.health().await.json["runningJobs"].as_u64() != Some(1) {
            assert!(tokio::time::Instant::now() < deadline, "the job never ran");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let execute = svc.post_execute(&json!({"code": "1"})).await;
        let seen = stock_client(&svc, svc.token(), json!([run_python(json!({"code": "1"}))])).await;
        (execute, seen)
    };
    let result = tokio::select! {
        (execute, seen) = busy => {
            let message = "too many jobs in flight; retry later";
            assert_error(&execute, 429, json!({"error": message}));
            seen
        }
        held = hold => panic!("the held job ended first: {held}"),
    };
    let refused = &result["results"][0];
    assert_eq!(refused["isError"], true, "{refused}");
    assert_eq!(text(refused), "too many jobs in flight; retry later");
    assert_eq!(
        refused["structuredContent"],
        json!({"error": "too many jobs in flight; retry later"})
    );
}

#[tokio::test]
async fn no_token_or_a_wrong_one_is_401() {
    require_root!();
    let svc = Service::start();
    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"}}})
    .to_string();
    let missing = post_mcp(&svc, None, initialize.clone()).await;
    assert_error(
        &missing,
        401,
        json!({"error": "missing or malformed Authorization header (expected: Bearer <token>)"}),
    );
    assert_eq!(missing.header("www-authenticate"), Some("Bearer"));
    let wrong = post_mcp(&svc, Some("Bearer not-the-token"), initialize.clone()).await;
    assert_error(&wrong, 401, json!({"error": "invalid token"}));
    assert_eq!(wrong.header("www-authenticate"), Some("Bearer"));
    // The token comes before the body: a request announcing a huge body without
    // it is answered 401 before a byte of the body is sent (sending it would race
    // the server's close: a reset can swallow the answer).
    let huge = head_only(&svc, None, 2 << 20).await;
    assert_eq!(huge.status, 401, "{}", huge.text);
    let right = post_mcp(&svc, Some(&bearer(&svc)), initialize).await;
    assert_eq!(right.status, 200, "{}", right.text);
    assert_eq!(right.json["result"]["serverInfo"]["name"], "pysandbox");
}

#[tokio::test]
async fn hostile_bodies_get_a_json_rpc_error_or_a_4xx() {
    require_root!();
    // Room for a batch of 10k calls.
    let svc = Service::builder()
        .frontend_env("MAX_BODY_BYTES", "2097152")
        .start();
    let token = bearer(&svc);
    let auth = Some(token.as_str());

    let huge = head_only(&svc, auth, (2 << 20) + 1).await;
    assert_error(
        &huge,
        413,
        json!({"error": "request body is larger than 2097152 bytes"}),
    );

    let garbage = post_mcp(&svc, auth, "{not json").await;
    assert_error(
        &garbage,
        400,
        json!({"error": "request body is not valid JSON"}),
    );
    // What the SDK refuses itself comes as JSON too.
    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).to_string();
    let json_only = svc
        .post_raw(
            "/mcp",
            &[
                ("authorization", token.as_str()),
                ("content-type", "application/json"),
                ("accept", "application/json"),
            ],
            initialize.clone(),
        )
        .await;
    assert_error(
        &json_only,
        406,
        json!({"error": "Not Acceptable: Client must accept both application/json and text/event-stream"}),
    );
    let text = svc
        .post_raw(
            "/mcp",
            &[
                ("authorization", token.as_str()),
                ("content-type", "text/plain"),
                ("accept", "application/json, text/event-stream"),
            ],
            initialize,
        )
        .await;
    assert_error(
        &text,
        415,
        json!({"error": "Unsupported Media Type: Content-Type must be application/json"}),
    );
    // JSON, but no JSON-RPC message: the SDK's refusal, as JSON.
    let empty = post_mcp(&svc, auth, "{}").await;
    assert_eq!(empty.status, 415, "{}", empty.text);
    assert!(empty.json["error"].is_string(), "{}", empty.text);

    // Batches are not part of streamable HTTP since 2025-06-18.
    let call = json!({"jsonrpc": "2.0", "method": "tools/call",
        "params": {"name": "run_python", "arguments": {"code": "1"}}});
    let batch: Vec<Value> = (0..10_000)
        .map(|id| {
            let mut call = call.clone();
            call["id"] = json!(id);
            call
        })
        .collect();
    let batch = serde_json::to_vec(&batch).expect("JSON");
    assert!(batch.len() < 2 << 20, "{} bytes", batch.len());
    let batched = post_mcp(&svc, auth, batch).await;
    assert_error(
        &batched,
        400,
        json!({"error": "request body must be a JSON object"}),
    );

    let unknown = json!({"jsonrpc": "2.0", "id": 7, "method": "no/such/method"}).to_string();
    let unknown = post_mcp(&svc, auth, unknown).await;
    assert_eq!(unknown.json["id"], 7, "{}", unknown.text);
    assert_eq!(unknown.json["error"]["code"], -32601, "{}", unknown.text);

    let tool = json!({"jsonrpc": "2.0", "id": 8, "method": "tools/call",
        "params": {"name": "rm_rf", "arguments": {}}})
    .to_string();
    let tool = post_mcp(&svc, auth, tool).await;
    assert_eq!(tool.json["error"]["code"], -32602, "{}", tool.text);

    // Two `code` keys: a gateway may check one and the job run the other.
    let twice = r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"run_python","arguments":{"code":"print(1)","code":"print(2)"}}}"#;
    let twice = post_mcp(&svc, auth, twice).await;
    assert_eq!(twice.status, 200, "{}", twice.text);
    assert_eq!(twice.json["result"]["isError"], true, "{}", twice.text);
    assert_eq!(
        twice.json["result"]["structuredContent"],
        json!({"error": "code: appears more than once", "field": "code"})
    );
    // The client's key comes back short and inert, as from `/execute`.
    let long = serde_json::to_string(&format!("\u{202e}{}", "k".repeat(5000))).expect("JSON");
    let arguments = format!(r#"{{"code":"1",{long}:1,{long}:2}}"#);
    let call = format!(
        r#"{{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{{"name":"run_python","arguments":{arguments}}}}}"#
    );
    let twice = post_mcp(&svc, auth, call).await;
    let execute = svc
        .post_raw(
            "/execute",
            &[
                ("authorization", token.as_str()),
                ("content-type", "application/json"),
            ],
            arguments,
        )
        .await;
    assert_eq!(execute.status, 400, "{}", execute.text);
    assert_eq!(
        twice.json["result"]["structuredContent"], execute.json,
        "{}",
        twice.text
    );
    let shown = format!("\\u{{202e}}{}…[4801 more chars]", "k".repeat(199));
    assert_eq!(execute.json["field"], shown);
    let envelope = format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/list",{long}:1,{long}:2}}"#);
    let envelope = post_mcp(&svc, auth, envelope).await;
    assert_error(
        &envelope,
        400,
        json!({"error": format!("{shown}: appears more than once"), "field": shown}),
    );
    let envelope = r#"{"jsonrpc":"2.0","id":1,"id":2,"method":"tools/list"}"#;
    let envelope = post_mcp(&svc, auth, envelope).await;
    assert_error(
        &envelope,
        400,
        json!({"error": "id: appears more than once", "field": "id"}),
    );

    // Only POST: no stream to GET, no session to DELETE.
    let get = svc
        .request(
            Method::GET,
            "/mcp",
            &[("authorization", token.as_str())],
            None,
        )
        .await;
    assert_error(&get, 405, json!({"error": "method not allowed"}));

    // Still serving, and a real call still runs.
    assert_eq!(svc.health().await.status, 200);
    let ok = json!({"jsonrpc": "2.0", "id": 10, "method": "tools/call",
        "params": {"name": "run_python", "arguments": {"code": "print(6*7)"}}})
    .to_string();
    let ok = post_mcp(&svc, auth, ok).await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert_eq!(ok.json["result"]["structuredContent"]["stdout"], "42\n");
}

/// `runningJobs` as `/health` says, once it is `n`; panics after 20 s.
async fn until_running(svc: &Service, n: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let health = svc.health().await;
        if health.json["runningJobs"].as_u64() == Some(n) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "runningJobs never became {n}: {}",
            health.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The SDK runs a tool call in a task of its own; a client that goes away must
/// still take its job down with it, as on `/execute`.
#[tokio::test]
async fn a_client_that_goes_away_takes_its_job_down() {
    require_root!();
    let svc = Service::start();
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "run_python",
        "arguments": {"code": "import time\ntime.sleep(60)", "timeoutMs": 90000}}})
    .to_string();
    let request = format!(
        "POST /mcp HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\n\r\n{call}",
        svc.frontend.addr(),
        svc.token(),
        call.len()
    );
    let mut stream = tokio::net::TcpStream::connect(svc.frontend.addr())
        .await
        .expect("connect");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send the call");
    until_running(&svc, 1).await;
    drop(stream);
    // Well before the job's own 60 s.
    until_running(&svc, 0).await;
}

/// A result waits in memory until its client reads it; like `/execute`'s, it keeps
/// its job's admission slot until then, so slow readers cannot pile results up.
#[tokio::test]
async fn an_unread_result_keeps_its_admission_slot() {
    require_root!();
    let svc = Service::builder()
        .frontend_env("MAX_INFLIGHT", "1")
        .frontend_env("MAX_QUEUE", "0")
        .start();
    // 16 MiB of noise: the answer (base64, twice) is far more than socket buffers hold.
    let code = "import os\nopen('noise.bin', 'wb').write(os.urandom(16 << 20))";
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "run_python", "arguments": {"code": code}}})
    .to_string();
    let request = format!(
        "POST /mcp HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\n\r\n{call}",
        svc.frontend.addr(),
        svc.token(),
        call.len()
    );
    let mut stream = tokio::net::TcpStream::connect(svc.frontend.addr())
        .await
        .expect("connect");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send the call");
    // The status line: the answer is being sent, the job long over.
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await.expect("the status line");
    assert_eq!(&head, b"HTTP/1.1 200");

    let refused = svc.post_execute(&json!({"code": "print(1)"})).await;
    assert_error(
        &refused,
        429,
        json!({"error": "too many jobs in flight; retry later"}),
    );
    drop(stream);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let reply = svc.post_execute(&json!({"code": "print(1)"})).await;
        if reply.status == 200 {
            break;
        }
        assert_eq!(reply.status, 429, "{}", reply.text);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
