//! `POST /mcp`: a Model Context Protocol server (streamable HTTP, stateless, JSON
//! answers) on the official SDK, `rmcp`, with four tools: `run_python` runs a job,
//! `create_session`, `run_in_session` and `end_session` are the session routes.
//!
//! Each tool's arguments are its route's body and go through that route's parser,
//! and the work is done by the same functions as the routes' (admission, executor,
//! uploads, rendering; opening and ending sessions): one policy, not two. The MCP
//! server keeps no state: a session lives in the executor, named by the
//! `sessionId` argument. Before the SDK sees a request, it passes the same gate as
//! `/execute`: the service token, then the body's size, time and budget.

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
use crate::request::{ExecuteRequest, OpenSessionRequest};
use crate::routes::{AppState, RequestId, MAX_LOGGED_CHARS};
use crate::sessions::{self, SessionBody};

/// The tools, by the name a client calls them with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ToolName {
    RunPython,
    CreateSession,
    RunInSession,
    EndSession,
}

impl ToolName {
    /// In the order the tool list shows them.
    const ALL: [ToolName; 4] = [
        ToolName::RunPython,
        ToolName::CreateSession,
        ToolName::RunInSession,
        ToolName::EndSession,
    ];

    fn named(name: &str) -> Option<ToolName> {
        ToolName::ALL.into_iter().find(|tool| tool.name() == name)
    }

    fn name(self) -> &'static str {
        match self {
            ToolName::RunPython => "run_python",
            ToolName::CreateSession => "create_session",
            ToolName::RunInSession => "run_in_session",
            ToolName::EndSession => "end_session",
        }
    }
}

// What the model reading the tool list is told: each description says plainly what
// is kept from one call to the next, and what is not.

const RUN_PYTHON: &str = "Run Python 3 code in a fresh, isolated sandbox and return what it printed, its exit status, the value of a final expression, any figures it showed (as PNG images) and the files it wrote in its working directory. \
Nothing is kept between calls: every call starts a new interpreter in an empty working directory, so variables, imports, installed packages and files from earlier calls are gone; pass what the code needs in `files` and `stdin`, or use a session (create_session, run_in_session) to keep state between calls. \
numpy, pandas and matplotlib are available. There is no network unless the service allows some domains; `network.allowedDomains` can only narrow that list. \
The result's structured content is the JSON answer of the service's POST /execute.";

const CREATE_SESSION: &str = "Start a Python session: one sandboxed interpreter that keeps its state from one run_in_session call to the next, like a notebook. \
What it keeps: variables, imports, and the files in its working directory. It keeps them until end_session is called, until it goes unused for idleTimeoutMs (the service's default when not given), or until its interpreter exits (sys.exit(), a crash, or a kill at its memory limit); then everything of it is gone and later calls fail. \
Its memory, process and disk limits hold for all its calls together; its network (none unless the service allows some domains, which `network.allowedDomains` can only narrow) holds for its whole life. \
Returns the session's id, to pass as sessionId; the structured content is the JSON answer of the service's POST /sessions. The service allows only a few sessions at once: end the ones you are done with.";

const RUN_IN_SESSION: &str = "Run Python 3 code in a session that create_session started: the code sees the variables, imports and working-directory files that earlier calls in the session left, and what it leaves is kept for later calls. \
Returns what run_python returns: what it printed, its exit status, the value of a final expression, figures as PNG images, and the files this call created or changed. \
An uncaught exception, or a call over its time limit (interrupted with KeyboardInterrupt), leaves the session and its state alive. sys.exit(), or the interpreter being killed (at the memory limit, or when it ignores the interrupt), ends the session: later calls fail with \"session ended\". \
Its calls run one at a time: a second call while one runs fails with \"session is busy with another call\". \
The structured content is the JSON answer of the service's POST /sessions/{sessionId}/execute.";

const END_SESSION: &str = "End a session and delete everything it kept: its interpreter, variables, imports, background processes and working-directory files. \
Later calls with its id fail with \"session not found\". Sessions also end by themselves when unused for their idle timeout.";

/// What a client is told about the server as a whole.
const INSTRUCTIONS: &str = "Runs Python in a sandbox. run_python starts a fresh interpreter for each call and keeps nothing between calls. \
A session (create_session, then run_in_session, then end_session) keeps variables, imports and working-directory files between its calls until it is ended, goes idle for too long, or its interpreter exits.";

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
        move || Ok(Tools(factory_state.clone())),
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
struct Tools(AppState);

impl ServerHandler for Tools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("pysandbox", env!("CARGO_PKG_VERSION")))
            .with_instructions(INSTRUCTIONS)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(
            ToolName::ALL.into_iter().map(tool).collect(),
        ))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        ToolName::named(name).map(tool)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let Some(name) = ToolName::named(&request.name) else {
            let names: Vec<&str> = ToolName::ALL.into_iter().map(ToolName::name).collect();
            return Err(McpError::invalid_params(
                format!("unknown tool; the tools are {}", names.join(", ")),
                None,
            ));
        };
        let parts = context.extensions.get::<axum::http::request::Parts>();
        let extension = |parts: &axum::http::request::Parts| parts.extensions.clone();
        let extensions = parts.map(extension).unwrap_or_default();
        let job = call(
            &self.0,
            name,
            request.arguments.unwrap_or_default(),
            &extensions,
        );
        // The SDK runs this in a task of its own and only signals a client that went
        // away; dropping the job closes its executor connection, which kills it (or,
        // in a session, interrupts the call).
        let result = tokio::select! {
            result = job => result,
            () = context.ct.cancelled() => {
                return Err(McpError::internal_error("the client went away", None));
            }
        };
        Ok(CallToolResponse::Complete(result))
    }
}

/// A tool call, its arguments parsed.
#[derive(Debug)]
enum Call {
    /// `run_python`, or `run_in_session` in `session`.
    Run {
        session: Option<String>,
        job: Box<ExecuteRequest>,
    },
    /// `create_session`.
    Open(OpenSessionRequest),
    /// `end_session`.
    End(String),
}

/// Runs one call of a tool: a request error, a busy service, a refusal of the
/// session or a failed job is a tool error (`isError`) carrying the HTTP route's
/// message and error body.
async fn call(
    state: &AppState,
    name: ToolName,
    mut arguments: JsonObject,
    extensions: &axum::http::Extensions,
) -> CallToolResult {
    let held = extensions.get::<HeldBody>();
    let parsed = parse(name, &mut arguments, extensions.get::<DuplicateArgument>());
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
        Ok(Call::Run { session, job }) => match state.execute(*job, request_id, session).await {
            Ok(response) => return ran(response, extensions.get::<UntilSent>()).await,
            Err(error) => Err(error),
        },
        Ok(Call::Open(asked)) => sessions::open(state, asked, request_id).await.map(opened),
        Ok(Call::End(id)) => sessions::end(state, id.clone()).await.map(|()| ended(&id)),
        Err(error) => Err(error),
    };
    match answer {
        Ok(result) => result,
        Err(error) => {
            state.count_error(&error);
            refused(error).await
        }
    }
}

/// The arguments of tool `name` as its HTTP route would parse them: the body, and
/// for a session's tools the `sessionId` of its path, as an argument.
fn parse(
    name: ToolName,
    arguments: &mut JsonObject,
    duplicate: Option<&DuplicateArgument>,
) -> Result<Call, ApiError> {
    if let Some(DuplicateArgument(field)) = duplicate {
        return Err(ApiError::InvalidField {
            field: field.clone(),
            reason: "appears more than once".into(),
        });
    }
    Ok(match name {
        ToolName::RunPython => Call::Run {
            session: None,
            job: Box::new(execute_request(arguments)?),
        },
        // The path's id before the body, as the route checks them.
        ToolName::RunInSession => Call::Run {
            session: Some(session_id(arguments)?),
            job: Box::new(execute_request(arguments)?),
        },
        ToolName::CreateSession => {
            let body = serde_json::to_vec(arguments).map_err(|_| ApiError::InvalidJson)?;
            Call::Open(OpenSessionRequest::parse(&body)?)
        }
        ToolName::EndSession => Call::End(session_id(arguments)?),
    })
}

/// The `sessionId` argument, taken out of `arguments` (the rest is the body); an id
/// no session could have is not found, as in a route's path.
fn session_id(arguments: &mut JsonObject) -> Result<String, ApiError> {
    let invalid = |reason: &str| ApiError::InvalidField {
        field: "sessionId".into(),
        reason: reason.into(),
    };
    match arguments.remove("sessionId") {
        None | Some(Value::Null) => Err(invalid("is required")),
        Some(Value::String(id)) => sessions::parse_id(id),
        Some(_) => Err(invalid("must be a string")),
    }
}

/// The arguments as `/execute` would parse them as its body, except that produced
/// files come back unless `returnFiles` is `false`: a tool's caller has no other
/// way to get them.
fn execute_request(arguments: &mut JsonObject) -> Result<ExecuteRequest, ApiError> {
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

/// `create_session`'s result: the id first, for the model to pass on, and what
/// `POST /sessions` answers as structured content.
fn opened(session: SessionBody) -> CallToolResult {
    let id = session.id();
    let text = format!(
        "sessionId: {id}\nPass it to run_in_session: each call keeps the variables, imports and files of the calls before it, until end_session, the idle timeout, or the interpreter exiting.\n"
    );
    let mut result = CallToolResult::success(vec![ContentBlock::text(text)]);
    result.structured_content = serde_json::to_value(&session).ok();
    result
}

/// `end_session`'s result.
fn ended(id: &str) -> CallToolResult {
    let text = format!("session {id} ended: its interpreter, variables and files are gone\n");
    CallToolResult::success(vec![ContentBlock::text(text)])
}

/// A tool error with the HTTP route's message as text and its error body as
/// structured content.
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

/// Tool `name` as the tool list shows it.
fn tool(name: ToolName) -> Tool {
    let (title, description, schema) = match name {
        ToolName::RunPython => ("Run Python in a sandbox", RUN_PYTHON, run_python_schema()),
        ToolName::CreateSession => (
            "Start a Python session",
            CREATE_SESSION,
            create_session_schema(),
        ),
        ToolName::RunInSession => (
            "Run Python in a session",
            RUN_IN_SESSION,
            run_in_session_schema(),
        ),
        ToolName::EndSession => ("End a Python session", END_SESSION, end_session_schema()),
    };
    let Value::Object(schema) = schema else {
        unreachable!("the schema literals are objects")
    };
    // Every tool changes the sandbox's state (a job, or a session's), none destroys
    // the caller's but `end_session`, and no call is idempotent.
    let annotations = ToolAnnotations::default()
        .read_only(false)
        .destructive(name == ToolName::EndSession)
        // No `openWorldHint`: it depends on the operator's network policy.
        .idempotent(false);
    Tool::new(name.name(), description, Arc::new(schema))
        .with_title(title)
        .with_annotations(annotations)
}

/// A limit's schema: a positive 32-bit count.
fn count() -> Value {
    json!({"type": "integer", "minimum": 1, "maximum": u32::MAX})
}

/// `run_python`'s arguments: `POST /execute`'s body, the fields a tool caller needs.
fn run_python_schema() -> Value {
    let mut properties = job_properties("Return the files the code wrote as embedded resources.");
    properties.insert(
        "limits".into(),
        json!({
            "type": "object",
            "description": "Lower limits than the service's; a higher one is refused.",
            "properties": {
                "memoryMb": count(), "cpuMs": count(), "maxProcesses": count(),
                "diskMb": count(), "outputBytes": count()
            },
            "additionalProperties": false
        }),
    );
    properties.insert("network".into(), network_schema());
    json!({"type": "object", "properties": properties, "required": ["code"]})
}

/// `network`, for a job or a whole session.
fn network_schema() -> Value {
    json!({
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
    })
}

/// `create_session`'s arguments: `POST /sessions`' body.
fn create_session_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "idleTimeoutMs": {
                "type": "integer",
                "minimum": 1000,
                "maximum": u32::MAX,
                "description": "End the session after this many milliseconds without a call; the service's default when absent. Over the service's maximum is refused."
            },
            "limits": {
                "type": "object",
                "description": "Lower limits than the service's: memory, processes and disk for the whole session, all its calls together; CPU time and output for each call that sets none. A higher one is refused.",
                "properties": {
                    "memoryMb": count(), "maxProcesses": count(), "diskMb": count(),
                    "cpuMs": count(), "outputBytes": count()
                },
                "additionalProperties": false
            },
            "network": network_schema()
        }
    })
}

/// `run_in_session`'s arguments: the session, and `POST
/// /sessions/{sessionId}/execute`'s body, with the limits a call may set.
fn run_in_session_schema() -> Value {
    let mut properties =
        job_properties("Return the files this call created or changed as embedded resources.");
    properties.insert("sessionId".into(), session_id_schema());
    properties.insert(
        "limits".into(),
        json!({
            "type": "object",
            "description": "Lower limits than the service's for this call; memory, processes and disk are the session's.",
            "properties": {"cpuMs": count(), "outputBytes": count()},
            "additionalProperties": false
        }),
    );
    json!({"type": "object", "properties": properties, "required": ["sessionId", "code"]})
}

/// `end_session`'s argument.
fn end_session_schema() -> Value {
    json!({
        "type": "object",
        "properties": {"sessionId": session_id_schema()},
        "required": ["sessionId"]
    })
}

fn session_id_schema() -> Value {
    json!({"type": "string", "description": "The sessionId create_session returned."})
}

/// The fields of a job's body that `run_python` and `run_in_session` share;
/// `return_files` says what `returnFiles` returns.
fn job_properties(return_files: &str) -> Map<String, Value> {
    let Value::Object(properties) = json!({
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
            "description": "Files placed in the working directory before the code runs (replacing any of the same path).",
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
        "returnFiles": {
            "type": "boolean",
            "default": true,
            "description": return_files
        }
    }) else {
        unreachable!("the schema literal is an object")
    };
    properties
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

    /// The job of `run_python(arguments)`, or its refusal's message.
    fn job(arguments: Value) -> Result<ExecuteRequest, String> {
        match parse(ToolName::RunPython, &mut object(arguments), None) {
            Ok(Call::Run { session: None, job }) => Ok(*job),
            Ok(other) => panic!("not a job: {other:?}"),
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn arguments_are_execute_bodies_that_return_files_by_default() {
        assert!(job(json!({"code": "1"})).unwrap().return_files);
        assert!(
            !job(json!({"code": "1", "returnFiles": false}))
                .unwrap()
                .return_files
        );
        assert_eq!(
            job(json!({"code": "1", "returnFiles": "yes"})).unwrap_err(),
            "returnFiles: must be a boolean"
        );
        let duplicate = DuplicateArgument("limits.cpuMs".into());
        for name in ToolName::ALL {
            let mut arguments = object(json!({"code": "1", "sessionId": "h.0"}));
            assert_eq!(
                parse(name, &mut arguments, Some(&duplicate))
                    .unwrap_err()
                    .to_string(),
                "limits.cpuMs: appears more than once"
            );
        }
    }

    #[test]
    fn session_tools_take_the_id_of_the_route_path_as_an_argument() {
        let id = format!("host-1.{}", "0".repeat(32));
        let mut arguments = object(json!({"sessionId": id, "code": "x = 1"}));
        match parse(ToolName::RunInSession, &mut arguments, None) {
            Ok(Call::Run {
                session: Some(session),
                job,
            }) => {
                assert_eq!(session, id);
                assert_eq!(job.code, "x = 1");
                assert!(job.return_files);
            }
            other => panic!("{other:?}"),
        }
        let mut arguments = object(json!({"sessionId": id}));
        assert!(matches!(
            parse(ToolName::EndSession, &mut arguments, None),
            Ok(Call::End(ended)) if ended == id
        ));
        let refusal = |name, arguments| {
            parse(name, &mut object(arguments), None)
                .unwrap_err()
                .to_string()
        };
        for name in [ToolName::RunInSession, ToolName::EndSession] {
            assert_eq!(
                refusal(name, json!({"code": "1"})),
                "sessionId: is required"
            );
            assert_eq!(
                refusal(name, json!({"code": "1", "sessionId": 7})),
                "sessionId: must be a string"
            );
            // Found by no one, as `/sessions/../x` is: before the body is read.
            assert_eq!(
                refusal(name, json!({"code": "", "sessionId": "../x"})),
                "session not found"
            );
        }
        assert_eq!(
            refusal(ToolName::RunInSession, json!({"sessionId": id, "code": ""})),
            "code: must not be empty"
        );
    }

    #[test]
    fn create_session_takes_post_sessions_body() {
        let open = |arguments| match parse(ToolName::CreateSession, &mut object(arguments), None) {
            Ok(Call::Open(asked)) => Ok(asked),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e.to_string()),
        };
        assert_eq!(open(json!({})).unwrap(), OpenSessionRequest::default());
        let asked = open(json!({"idleTimeoutMs": 5000, "limits": {"memoryMb": 64}})).unwrap();
        assert_eq!(asked.idle_timeout_ms, Some(5000));
        assert_eq!(asked.limits.memory_mb, Some(64));
        assert_eq!(
            open(json!({"idleTimeoutMs": "5"})).unwrap_err(),
            "idleTimeoutMs: must be a positive integer"
        );
    }

    #[test]
    fn every_tool_is_listed_by_its_name_and_says_what_it_keeps() {
        for name in ToolName::ALL {
            assert_eq!(ToolName::named(name.name()), Some(name));
            let listed = tool(name);
            assert_eq!(listed.name, name.name());
            assert_eq!(listed.input_schema.get("type"), Some(&json!("object")));
        }
        assert_eq!(ToolName::named("rm_rf"), None);
        assert!(RUN_PYTHON.contains("Nothing is kept between calls"));
        for kept in ["variables, imports", "files", "network"] {
            assert!(CREATE_SESSION.contains(kept), "{kept}");
        }
        assert!(RUN_IN_SESSION.contains("one at a time"));
    }
}
