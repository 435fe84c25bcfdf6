//! `POST /mcp`: a Model Context Protocol server (streamable HTTP, stateless, JSON
//! answers) on the official SDK, `rmcp`, with one tool, `run_python`.
//!
//! The tool's arguments are `POST /execute`'s body and go through its parser, and
//! the job runs through the same function as `/execute` (admission, executor,
//! uploads, rendering): one policy, not two. Before the SDK sees a request, it
//! passes the same gate as `/execute`: the service token, then the body's size,
//! time and budget.

use std::sync::{Arc, Mutex, PoisonError};

use axum::body::{Body, BodyDataStream};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, MethodRouter};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use futures::StreamExt;
use pysandbox_shared::text::shown;
use rmcp::handler::server::ServerHandler;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    JsonObject, ListToolsResult, PaginatedRequestParams, ResourceContents, ServerCapabilities,
    ServerConfig, Tool, ToolAnnotations,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::ErrorData as McpError;
use serde_json::{json, Map, Value};
use tracing::warn;

use crate::body_budget::Reservation;
use crate::duplicate_keys::first_duplicate_key;
use crate::error::ApiError;
use crate::request::ExecuteRequest;
use crate::routes::{AppState, RequestId, MAX_LOGGED_CHARS};

/// The one tool.
const RUN_PYTHON: &str = "run_python";

/// What the model reading the tool list is told; says plainly that nothing is kept.
const DESCRIPTION: &str = "Run Python 3 code in a fresh, isolated sandbox and return what it printed, its exit status, any figures it showed (as PNG images) and the files it wrote in its working directory. \
Nothing is kept between calls: every call starts a new interpreter in an empty working directory, so variables, imports, installed packages and files from earlier calls are gone; pass what the code needs in `files` and `stdin`. \
numpy, pandas and matplotlib are available. There is no network unless the service allows some domains; `network.allowedDomains` can only narrow that list. \
The result's structured content is the JSON answer of the service's POST /execute.";

/// `POST /mcp`, for [`crate::routes::router`].
pub(crate) fn route(state: AppState) -> MethodRouter<AppState> {
    let factory_state = state.clone();
    let config = StreamableHttpServerConfig::default()
        // Stateless: every call is independent, as the tool is; no session ids.
        .with_legacy_session_mode(false)
        .with_json_response(true)
        // `gate` has read the body within `MAX_BODY_BYTES` already.
        .with_max_request_body_bytes(usize::MAX)
        // The bearer token is what guards the endpoint; `Host` is whatever name the
        // operator serves it under.
        .disable_allowed_hosts();
    let service = StreamableHttpService::new(
        move || Ok(RunPython(factory_state.clone())),
        Arc::new(NeverSessionManager::default()),
        config,
    );
    post(move |State(state): State<AppState>, request: Request| {
        let service = service.clone();
        async move {
            let until_sent = UntilSent::default();
            match gate(&state, request, &until_sent).await {
                Ok(request) => {
                    let answer = service.handle(request).await.map(Body::new);
                    until_sent.attach(plain_errors(answer).await)
                }
                Err(error) => {
                    state.count_error(&error);
                    refusal(error)
                }
            }
        }
    })
}

/// The checks `/execute` makes before it parses a body, in its order: the token,
/// then the body's size, time and budget. The body is read whole here, so the SDK
/// never reads an unbounded one.
async fn gate(
    state: &AppState,
    request: Request,
    until_sent: &UntilSent,
) -> Result<Request, ApiError> {
    let (mut parts, body) = request.into_parts();
    state.check_token(&parts.headers)?;
    let (body, reservation) = state.read_body(body).await?;
    // `/execute`'s answers to a body that is not one JSON object; a JSON-RPC batch
    // (an array) is one of them: streamable HTTP has had none since 2025-06-18.
    serde_json::from_slice::<serde::de::IgnoredAny>(&body).map_err(|_| ApiError::InvalidJson)?;
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::NotAnObject);
    }
    if let Some(path) = first_duplicate_key(&body) {
        // A duplicate inside the arguments is the tool's request error, as
        // `/execute` reports it; anywhere else the message itself is ambiguous.
        // The key is the client's: shown as `/execute` shows it, short and inert.
        match path.strip_prefix("params.arguments.") {
            Some(field) => {
                let field = shown(field, MAX_LOGGED_CHARS);
                parts.extensions.insert(DuplicateArgument(field));
            }
            None => {
                return Err(ApiError::InvalidField {
                    field: shown(&path, MAX_LOGGED_CHARS),
                    reason: "appears more than once".into(),
                })
            }
        }
    }
    // Given back once the tool has parsed its arguments, as `/execute` does.
    parts
        .extensions
        .insert(HeldBody(Arc::new(Mutex::new(Some(reservation)))));
    parts.extensions.insert(until_sent.clone());
    Ok(Request::from_parts(parts, Body::from(body)))
}

/// A refusal before the SDK: `/execute`'s JSON error, except that a wrong token is
/// a 401 too, as MCP's authorization rules want of an invalid token.
fn refusal(error: ApiError) -> Response {
    let unauthorized = matches!(error, ApiError::MissingAuth | ApiError::InvalidToken);
    let mut response = error.into_response();
    if unauthorized {
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

/// The SDK's own HTTP errors (406, 415, 413…) have plain-text bodies; every error
/// of this service is JSON, so they become `{"error": ...}` with the same status.
async fn plain_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !status.is_client_error() && !status.is_server_error() || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let retry_after = parts.headers.get(header::RETRY_AFTER).cloned();
    // The SDK's messages are one short sentence; a longer one is not shown.
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let message = String::from_utf8_lossy(&text);
    let mut answer = (status, axum::Json(json!({ "error": message.trim() }))).into_response();
    if let Some(value) = retry_after {
        answer.headers_mut().insert(header::RETRY_AFTER, value);
    }
    answer
}

/// The body's budget reservation, carried to the tool in the request's extensions.
#[derive(Debug, Clone)]
struct HeldBody(Arc<Mutex<Option<Reservation>>>);

/// What a call's job holds until the call's answer is sent: the rendered result,
/// with the job's admission slot inside. As on `/execute`, the slot bounds how
/// many results the frontend holds, also for clients that read them slowly.
#[derive(Debug, Clone, Default)]
struct UntilSent(Arc<Mutex<Option<BodyDataStream>>>);

impl UntilSent {
    fn hold(&self, rendered: BodyDataStream) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(rendered);
    }

    /// `answer`, whose body lets go of what is held once it is sent or dropped.
    fn attach(self, answer: Response) -> Response {
        let (parts, body) = answer.into_parts();
        let guard = ReleaseOnDrop(self);
        let body = body.into_data_stream().map(move |chunk| {
            let _ = &guard;
            chunk
        });
        Response::from_parts(parts, Body::from_stream(body))
    }
}

/// Empties an [`UntilSent`] when dropped, even if the SDK's task still has a copy.
struct ReleaseOnDrop(UntilSent);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        (self.0)
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }
}

/// The path inside `arguments` of a key that appears twice there.
#[derive(Debug, Clone)]
struct DuplicateArgument(String);

/// The MCP server of one request.
#[derive(Debug, Clone)]
struct RunPython(AppState);

impl ServerHandler for RunPython {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("pysandbox", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Runs Python in a sandbox with the run_python tool. Nothing persists between calls.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(vec![tool()]))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        (name == RUN_PYTHON).then(tool)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        if request.name != RUN_PYTHON {
            return Err(McpError::invalid_params(
                format!("unknown tool; the only tool is {RUN_PYTHON}"),
                None,
            ));
        }
        let parts = context.extensions.get::<axum::http::request::Parts>();
        let extension = |parts: &axum::http::request::Parts| parts.extensions.clone();
        let extensions = parts.map(extension).unwrap_or_default();
        let job = run_python(&self.0, request.arguments.unwrap_or_default(), &extensions);
        // The SDK runs this in a task of its own and only signals a client that went
        // away; dropping the job closes its executor connection, which kills it.
        let result = tokio::select! {
            result = job => result,
            () = context.ct.cancelled() => {
                return Err(McpError::internal_error("the client went away", None));
            }
        };
        Ok(CallToolResponse::Complete(result))
    }
}

/// Runs one call of the tool: a request error, a busy service or a failed job is a
/// tool error (`isError`) carrying `/execute`'s message and error body.
async fn run_python(
    state: &AppState,
    mut arguments: JsonObject,
    extensions: &axum::http::Extensions,
) -> CallToolResult {
    let held = extensions.get::<HeldBody>();
    let parsed = parse(&mut arguments, extensions.get::<DuplicateArgument>());
    // The arguments are parsed (or refused): the body's bytes are given back.
    drop(arguments);
    if let Some(HeldBody(held)) = held {
        held.lock().unwrap_or_else(PoisonError::into_inner).take();
    }
    let request_id = extensions
        .get::<RequestId>()
        .cloned()
        .unwrap_or_else(RequestId::generate);
    let answer = match parsed {
        Ok(job) => state.execute(job, request_id, None).await,
        Err(error) => Err(error),
    };
    match answer {
        Ok(response) => ran(response, extensions.get::<UntilSent>()).await,
        Err(error) => {
            state.count_error(&error);
            refused(error).await
        }
    }
}

/// The arguments as `/execute` would parse them as its body, except that produced
/// files come back unless `returnFiles` is `false`: a tool's caller has no other
/// way to get them.
fn parse(
    arguments: &mut JsonObject,
    duplicate: Option<&DuplicateArgument>,
) -> Result<ExecuteRequest, ApiError> {
    if let Some(DuplicateArgument(field)) = duplicate {
        return Err(ApiError::InvalidField {
            field: field.clone(),
            reason: "appears more than once".into(),
        });
    }
    if arguments.get("returnFiles").is_none_or(Value::is_null) {
        arguments.insert("returnFiles".into(), Value::Bool(true));
    }
    let body = serde_json::to_vec(arguments).map_err(|_| ApiError::InvalidJson)?;
    ExecuteRequest::parse(&body)
}

/// The tool result of a job that ran, from `/execute`'s `200` body; what the
/// body holds (the admission slot) goes to `until_sent`.
async fn ran(response: Response, until_sent: Option<&UntilSent>) -> CallToolResult {
    // The body is bounded by the executor's output, display and file caps.
    let mut rendered = response.into_body().into_data_stream();
    let mut body = Vec::new();
    while let Some(chunk) = rendered.next().await {
        match chunk {
            Ok(chunk) => body.extend_from_slice(&chunk),
            Err(e) => {
                warn!("reading a job's rendered result failed: {e}");
                return refused(ApiError::Internal).await;
            }
        }
    }
    if let Some(until_sent) = until_sent {
        until_sent.hold(rendered);
    }
    let Ok(Value::Object(answer)) = serde_json::from_slice::<Value>(&body) else {
        warn!("a job's rendered result is not a JSON object");
        return refused(ApiError::Internal).await;
    };
    drop(body);
    let mut content = vec![ContentBlock::text(summary(&answer))];
    for display in entries(&answer, "displays") {
        if let Some(data) = display.get("contentBase64").and_then(Value::as_str) {
            content.push(ContentBlock::image(data, "image/png"));
        }
    }
    for file in entries(&answer, "files") {
        if let Some(resource) = resource(file) {
            content.push(ContentBlock::resource(resource));
        }
    }
    let mut result = CallToolResult::success(content);
    result.structured_content = Some(Value::Object(answer));
    result
}

/// The entries of the array `key` of `answer`.
fn entries<'a>(answer: &'a Map<String, Value>, key: &str) -> impl Iterator<Item = &'a Value> {
    answer
        .get(key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

/// A produced file as an embedded resource: text when its type is text and its
/// bytes are UTF-8, base64 otherwise.
fn resource(file: &Value) -> Option<ResourceContents> {
    let path = file.get("path")?.as_str()?;
    let mime_type = file.get("contentType")?.as_str()?;
    let data = file.get("contentBase64")?.as_str()?;
    let uri = file_uri(path)?;
    let text = (mime_type.starts_with("text/") || mime_type == "application/json")
        .then(|| BASE64.decode(data).ok())
        .flatten()
        .and_then(|bytes| String::from_utf8(bytes).ok());
    Some(match text {
        Some(text) => ResourceContents::TextResourceContents {
            uri,
            mime_type: Some(mime_type.to_owned()),
            text,
            meta: None,
        },
        None => ResourceContents::BlobResourceContents {
            uri,
            mime_type: Some(mime_type.to_owned()),
            blob: data.to_owned(),
            meta: None,
        },
    })
}

/// `sandbox:///work/<path>`, each segment percent-encoded: the file's place in the
/// job's (gone) work dir, which no client can fetch again.
fn file_uri(path: &str) -> Option<String> {
    let mut uri = url::Url::parse("sandbox:///work").ok()?;
    uri.path_segments_mut().ok()?.extend(path.split('/'));
    Some(uri.into())
}

/// The text a model reads first: exit status, limit verdict, output, violations.
fn summary(answer: &Map<String, Value>) -> String {
    let field = |key: &str| answer.get(key).unwrap_or(&Value::Null);
    let text = |key: &str| field(key).as_str().unwrap_or_default();
    let mut out = match (field("exitCode").as_i64(), field("signal").as_str()) {
        (Some(code), _) => format!("exit status: {code}\n"),
        (None, Some(signal)) => format!("killed by signal {signal}\n"),
        (None, None) => "exit status: unknown\n".to_owned(),
    };
    if let Some(limit) = field("limitExceeded").as_str() {
        out.push_str(&format!("limit exceeded: {limit}\n"));
    }
    for (name, key, truncated) in [
        ("stdout", "stdout", "stdoutTruncated"),
        ("stderr", "stderr", "stderrTruncated"),
    ] {
        let cut = if field(truncated).as_bool() == Some(true) {
            " (truncated)"
        } else {
            ""
        };
        out.push_str(&format!("--- {name}{cut} ---\n{}", text(key)));
        if !text(key).is_empty() && !text(key).ends_with('\n') {
            out.push('\n');
        }
    }
    let violations: Vec<&Value> = entries(answer, "violations").collect();
    if !violations.is_empty() {
        out.push_str("--- network requests refused ---\n");
        for v in violations {
            let part = |key: &str| v.get(key).and_then(Value::as_str).unwrap_or_default();
            out.push_str(&format!(
                "{} {}: {}\n",
                part("method"),
                part("target"),
                part("reason")
            ));
        }
    }
    if let Some(value) = field("result").as_str() {
        out.push_str(&format!("--- value of the last expression ---\n{value}\n"));
    }
    out
}

/// A tool error with `/execute`'s message as text and its error body as structured
/// content.
async fn refused(error: ApiError) -> CallToolResult {
    let message = error.to_string();
    let body = axum::body::to_bytes(error.into_response().into_body(), 4096)
        .await
        .ok()
        .and_then(|body| serde_json::from_slice::<Value>(&body).ok());
    let mut result = CallToolResult::error(vec![ContentBlock::text(message)]);
    result.structured_content = body;
    result
}

/// `run_python` as the tool list shows it.
fn tool() -> Tool {
    let Value::Object(schema) = input_schema() else {
        unreachable!("the schema literal is an object")
    };
    Tool::new(RUN_PYTHON, DESCRIPTION, Arc::new(schema))
        .with_title("Run Python in a sandbox")
        .with_annotations(
            ToolAnnotations::default()
                .read_only(false)
                .destructive(false)
                // No `openWorldHint`: it depends on the operator's network policy.
                .idempotent(false),
        )
}

/// The arguments: `POST /execute`'s body, the fields a tool caller needs.
fn input_schema() -> Value {
    let count = json!({"type": "integer", "minimum": 1, "maximum": u32::MAX});
    json!({
        "type": "object",
        "properties": {
            "code": {
                "type": "string",
                "minLength": 1,
                "description": "Python source to run. The value of a final expression is returned, as a REPL shows it."
            },
            "stdin": {
                "type": "string",
                "description": "What the code reads on standard input; empty when absent."
            },
            "files": {
                "type": "array",
                "description": "Files placed in the working directory before the code runs.",
                "items": {
                    "type": "object",
                    "properties": {
                        "path": {"type": "string", "description": "Relative path, e.g. data/input.csv."},
                        "contentBase64": {"type": "string", "description": "The file's bytes, base64."}
                    },
                    "required": ["path", "contentBase64"]
                }
            },
            "timeoutMs": {
                "type": "integer",
                "minimum": 1,
                "maximum": pysandbox_shared::MAX_TIMEOUT_MS,
                "description": "Wall-clock limit in milliseconds; the service's default when absent."
            },
            "limits": {
                "type": "object",
                "description": "Lower limits than the service's; a higher one is refused.",
                "properties": {
                    "memoryMb": count, "cpuMs": count, "maxProcesses": count,
                    "diskMb": count, "outputBytes": count
                },
                "additionalProperties": false
            },
            "network": {
                "type": "object",
                "properties": {
                    "allowedDomains": {
                        "type": "array",
                        "items": {"type": "string"},
                        "maxItems": pysandbox_shared::MAX_REQUESTED_DOMAINS,
                        "description": "Narrows the service's allowed domains (exact or *.example.com); never widens them."
                    }
                },
                "additionalProperties": false
            },
            "returnFiles": {
                "type": "boolean",
                "default": true,
                "description": "Return the files the code wrote as embedded resources."
            }
        },
        "required": ["code"]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn the_summary_says_how_it_ended_what_it_printed_and_what_was_refused() {
        let killed = object(json!({
            "exitCode": null, "signal": "SIGKILL", "limitExceeded": "memory",
            "stdout": "partial", "stdoutTruncated": true,
            "stderr": "[sandbox] killed: memory limit\n", "stderrTruncated": false,
            "violations": [{"method": "CONNECT", "target": "evil.com:443", "reason": "not in allowed domains"}],
            "result": null
        }));
        assert_eq!(
            summary(&killed),
            "killed by signal SIGKILL\nlimit exceeded: memory\n--- stdout (truncated) ---\npartial\n\
             --- stderr ---\n[sandbox] killed: memory limit\n\
             --- network requests refused ---\nCONNECT evil.com:443: not in allowed domains\n"
        );
        let value = object(json!({"exitCode": 0, "stdout": "", "stderr": "", "result": "42"}));
        assert_eq!(
            summary(&value),
            "exit status: 0\n--- stdout ---\n--- stderr ---\n--- value of the last expression ---\n42\n"
        );
    }

    #[test]
    fn file_uris_encode_every_segment() {
        assert_eq!(
            file_uri("out/a b?#%.txt").as_deref(),
            Some("sandbox:///work/out/a%20b%3F%23%25.txt")
        );
    }

    #[test]
    fn text_files_are_text_and_the_rest_base64() {
        let file = |content_type: &str, bytes: &[u8]| json!({"path": "f", "contentType": content_type, "contentBase64": BASE64.encode(bytes)});
        assert!(matches!(
            resource(&file("text/csv", b"a,b\n")),
            Some(ResourceContents::TextResourceContents { text, .. }) if text == "a,b\n"
        ));
        // Text by its name, but not UTF-8: the bytes go back unchanged.
        assert!(matches!(
            resource(&file("text/plain", b"\xff")),
            Some(ResourceContents::BlobResourceContents { blob, .. }) if blob == "/w=="
        ));
        assert!(matches!(
            resource(&file("image/png", b"\x89PNG")),
            Some(ResourceContents::BlobResourceContents { blob, .. }) if blob == "iVBORw=="
        ));
    }

    #[test]
    fn arguments_are_execute_bodies_that_return_files_by_default() {
        let mut arguments = object(json!({"code": "1"}));
        assert!(parse(&mut arguments, None).unwrap().return_files);
        let mut arguments = object(json!({"code": "1", "returnFiles": false}));
        assert!(!parse(&mut arguments, None).unwrap().return_files);
        let mut arguments = object(json!({"code": "1", "returnFiles": "yes"}));
        assert_eq!(
            parse(&mut arguments, None).unwrap_err().to_string(),
            "returnFiles: must be a boolean"
        );
        let duplicate = DuplicateArgument("limits.cpuMs".into());
        assert_eq!(
            parse(&mut object(json!({"code": "1"})), Some(&duplicate))
                .unwrap_err()
                .to_string(),
            "limits.cpuMs: appears more than once"
        );
    }
}
