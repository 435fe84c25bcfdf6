//! The HTTP surface: `POST /execute` (a JSON body, or with `Accept:
//! text/event-stream` a stream of events, see [`crate::stream`]), `GET /health`,
//! JSON 404/405 for the rest, and per-request ids and logging around all of them.

use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use pysandbox_shared::text::shown;
use pysandbox_shared::{JobSpec, SessionCall};
use serde::Serialize;
use tracing::{info, info_span, Instrument, Span};

use crate::admission::{Admission, Slot};
use crate::ask::AskCaller;
use crate::auth::AuthToken;
use crate::body_budget::{BodyBudget, Reservation};
use crate::config::Config;
use crate::error::ApiError;
use crate::executor_client::{ExecutorClient, Job, Ran, Running};
use crate::health::StatusCache;
use crate::mcp;
use crate::metrics::{self, Metrics};
use crate::openapi::{self, ErrorBody, ExecuteBody, ExecuteResult, StreamEvent};
use crate::request::{read_body, ExecuteRequest};
use crate::response::{render, ExecuteResponse, Skipped};
use crate::sessions;
use crate::stream;
use crate::upload::Uploader;

/// The most characters of a client's text (a path, a host name, a file name) in
/// one log field: a 60 KB request path must not make a 60 KB log line.
pub(crate) const MAX_LOGGED_CHARS: usize = 200;

/// The response header carrying the request id.
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Marks a request that came on a connection from the `/health` reserve (every
/// ordinary connection slot was taken): it is answered only when it asks for
/// `/health`.
#[derive(Debug, Clone, Copy)]
pub struct HealthOnly;

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    token: AuthToken,
    max_body_bytes: u64,
    body_budget: BodyBudget,
    body_timeout: Duration,
    admission: Admission,
    executor: ExecutorClient,
    health: StatusCache,
    uploader: Uploader,
    sse_keepalive: Duration,
    metrics: Metrics,
    /// `METRICS_TOKEN`: when set, `/metrics` wants it (and never the job token).
    metrics_token: Option<AuthToken>,
    /// `METRICS_ADDR` is set: `/metrics` is served there, not by [`router`].
    metrics_apart: bool,
}

impl AppState {
    /// State for a service configured by `config`, checking clients against `token`.
    /// Fails only when the outbound HTTP client cannot be built.
    pub fn new(config: &Config, token: AuthToken) -> reqwest::Result<Self> {
        let metrics = Metrics::default();
        let asks = AskCaller::new(metrics.asks())?;
        Ok(AppState {
            inner: Arc::new(Inner {
                token,
                max_body_bytes: config.max_body_bytes.get(),
                body_budget: BodyBudget::new(config.body_buffer_bytes.get()),
                body_timeout: config.body_timeout(),
                admission: Admission::new(config.max_inflight.get(), config.max_queue),
                executor: ExecutorClient::new(config.executor_socket.clone()).with_asks(asks),
                health: StatusCache::new(ExecutorClient::new(config.executor_socket.clone())),
                uploader: Uploader::new(config.upload()),
                sse_keepalive: config.sse_keepalive(),
                metrics,
                metrics_token: config.metrics_token(),
                metrics_apart: config.metrics_addr.is_some(),
            }),
        })
    }
}

/// Every route's template, as `pysandbox_http_requests_total` labels it.
pub(crate) const ROUTES: [&str; 8] = [
    "/execute",
    "/health",
    "/metrics",
    "/openapi.json",
    "/mcp",
    "/sessions",
    "/sessions/{sessionId}",
    "/sessions/{sessionId}/execute",
];

/// The service's routes; `/metrics` only when it is not served on its own address.
pub fn router(state: AppState) -> Router {
    let mut routes = Router::new()
        .route(ROUTES[0], post(execute))
        .route(ROUTES[1], get(health))
        .route(ROUTES[3], get(openapi::openapi_json))
        .route(ROUTES[4], mcp::route(state.clone()))
        .route(ROUTES[5], post(sessions::create))
        .route(ROUTES[6], get(sessions::describe).delete(sessions::close))
        .route(ROUTES[7], post(sessions::execute));
    if !state.inner.metrics_apart {
        routes = routes.route(ROUTES[2], get(metrics));
    }
    finish(routes, state)
}

/// The routes of `METRICS_ADDR`: `/metrics` and nothing else.
pub fn metrics_router(state: AppState) -> Router {
    finish(Router::new().route(ROUTES[2], get(metrics)), state)
}

/// `routes` with JSON 404/405 answers, and request ids and logging around it all.
fn finish(routes: Router<AppState>, state: AppState) -> Router {
    routes
        // Applies to the routes above, so it must come after them.
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .fallback(|| async { ApiError::NotFound })
        // Last, so that it wraps the fallbacks too: every response gets an id.
        .layer(middleware::from_fn_with_state(state.clone(), log_request))
        .with_state(state)
}

/// Runs Python in a fresh sandbox. With `Accept: text/event-stream`, the answer is
/// a stream of events ending with the same body.
#[utoipa::path(
    post,
    path = "/execute",
    tag = "jobs",
    operation_id = "execute",
    security(("jobToken" = [])),
    request_body(content = ExecuteBody, content_type = "application/json"),
    responses(
        (status = 200, description = "The job ran (even if the Python failed).", content(
            (ExecuteResult = "application/json"),
            (StreamEvent = "text/event-stream"),
        )),
        (status = 400, description = "Body not JSON or not an object, a field missing or invalid, or over the executor's maximum.", body = ErrorBody),
        (status = 401, description = "No `Authorization` header, or not `Bearer <token>`.", body = ErrorBody),
        (status = 403, description = "Wrong token.", body = ErrorBody),
        (status = 408, description = "The body did not arrive within `BODY_TIMEOUT_MS`.", body = ErrorBody),
        (status = 413, description = "The body is over `MAX_BODY_BYTES`.", body = ErrorBody),
        (status = 429, description = "`MAX_INFLIGHT` jobs running and `MAX_QUEUE` waiting.", body = ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait before trying again."))),
        (status = 503, description = "The executor is busy, restarting, unreachable or could not set up a jail; or the frontend is out of connections or body buffer. Nothing ran, or the executor was lost mid-job.", body = ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait before trying again."))),
        (status = 500, description = "A bug; the cause is in the log.", body = ErrorBody),
    )
)]
pub(crate) async fn execute(
    State(state): State<AppState>,
    request: Request,
) -> Result<Response, ApiError> {
    state.counted(run(&state, request, None).await)
}

/// `POST /execute`, or in the session `session` its `execute` route: the same body,
/// the same answers.
pub(crate) async fn run(
    state: &AppState,
    request: Request,
    session: Option<String>,
) -> Result<Response, ApiError> {
    let app = &state.inner;
    let (parts, body) = request.into_parts();
    // The contract's order: auth, body size, JSON, admission, executor.
    state.check_token(&parts.headers)?;
    let (body, reservation) = state.read_body(body).await?;
    let job = ExecuteRequest::parse(&body)?;
    // From here on, admission bounds what requests hold.
    drop((body, reservation));
    let request_id = parts
        .extensions
        .get::<RequestId>()
        .cloned()
        .unwrap_or_else(RequestId::generate);
    // Every refusal comes before the job starts, as a JSON error, streamed or not.
    let (running, after) = state.start(job, request_id, session).await?;
    if stream::wanted(&parts.headers) {
        let state = state.clone();
        let answer = move |ran| async move {
            let app = &state.inner;
            after.answer(ran, &app.uploader, &app.metrics).await
        };
        return Ok(stream::respond(running, app.sse_keepalive, answer));
    }
    let ran = running.finish().await?;
    Ok(after.answer(ran, &app.uploader, &app.metrics).await)
}

impl AppState {
    /// The executor, for the routes that ask it something else than a job.
    pub(crate) fn executor(&self) -> &ExecutorClient {
        &self.inner.executor
    }

    /// Checks the service token in `headers`, as every job route does.
    pub(crate) fn check_token(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        self.inner.token.check(headers.get(header::AUTHORIZATION))
    }

    /// Reads a job route's body within the configured size, time and budget.
    pub(crate) async fn read_body(&self, body: Body) -> Result<(Bytes, Reservation), ApiError> {
        let app = &self.inner;
        read_body(body, app.max_body_bytes, &app.body_budget, app.body_timeout).await
    }

    /// `answer`, counted for `/metrics` when it is a failure, as every route does.
    pub(crate) fn counted(&self, answer: Result<Response, ApiError>) -> Result<Response, ApiError> {
        if let Err(error) = &answer {
            self.count_error(error);
        }
        answer
    }

    /// Counts a request that failed, as `/metrics` reports it.
    pub(crate) fn count_error(&self, error: &ApiError) {
        self.inner.metrics.error(error);
    }

    /// Runs `job` to its end (in `session`, when given), as `POST /execute`
    /// without streaming does, and answers with that route's `200` response.
    pub(crate) async fn execute(
        &self,
        job: ExecuteRequest,
        request_id: RequestId,
        session: Option<String>,
    ) -> Result<Response, ApiError> {
        let app = &self.inner;
        let (running, after) = self.start(job, request_id, session).await?;
        let ran = running.finish().await?;
        Ok(after.answer(ran, &app.uploader, &app.metrics).await)
    }

    /// Admits `job` and starts it at the executor (in `session`, when given): the
    /// one way in for every route that runs code, so the upload policy, admission
    /// and the job spec are the same for all of them.
    async fn start(
        &self,
        job: ExecuteRequest,
        request_id: RequestId,
        session: Option<String>,
    ) -> Result<(Running, AfterRun), ApiError> {
        let app = &self.inner;
        if let Some(target) = &job.file_upload_url {
            app.uploader.allowed_hosts().check(target)?;
        }
        let upload = job
            .upload_target()
            .map(|(target, token)| (target.url.clone(), token.to_owned()));
        let collect_files = upload.is_some() || job.return_files;

        // Held until the response body is sent, uploads included: the slot bounds how
        // many results (output in memory, files in the spool) the frontend holds.
        let slot = app.admission.enter()?.slot().await?;
        let spec = JobSpec {
            request_id: request_id.0,
            code: job.code,
            stdin: job.stdin,
            // The executor owns the default: it says which limit it applied.
            timeout_ms: job.timeout_ms,
            limits: job.limits,
            files: job.files,
            collect_files,
            network: job.network,
        };
        let work = match session {
            None => Job::Fresh(spec),
            Some(session_id) => Job::InSession(SessionCall { session_id, spec }),
        };
        let running = app.executor.start(work).await?;
        let after = AfterRun {
            upload,
            public: job.public,
            return_files: job.return_files,
            slot,
        };
        Ok((running, after))
    }
}

/// What becomes of a job's result once it ran: the same for a streamed call (its
/// `result` event) as for a plain one (its body).
struct AfterRun {
    /// Where to upload the produced files, and the token.
    upload: Option<(url::Url, String)>,
    public: Option<bool>,
    return_files: bool,
    slot: Slot,
}

impl AfterRun {
    /// Uploads what the request asked to, and renders the JSON answer.
    async fn answer(self, ran: Ran, uploader: &Uploader, metrics: &Metrics) -> Response {
        let mut response = ExecuteResponse::new(ran.end, ran.stdout, ran.stderr);
        let displays = ran.displays.into_files();
        if self.upload.is_none() && !self.return_files {
            return render(response, displays, None, self.slot);
        }
        let files = ran.files.into_files();
        let skipped = ran.skipped;
        if let Some((url, token)) = &self.upload {
            response.uploads = uploader
                .upload(url, token, self.public, &files, &skipped.skipped_files)
                .await;
            // One entry per file, then one per skipped entry.
            let (uploaded, _) = response
                .uploads
                .split_at(files.len().min(response.uploads.len()));
            let not_uploaded = skipped.skipped_files.len() + skipped.skipped_unlisted as usize;
            metrics.uploads(uploaded, not_uploaded);
        }
        response.skipped_files = Some(skipped.skipped_files.iter().map(Skipped::from).collect());
        response.skipped_files_unlisted = skipped.skipped_unlisted;
        let returned = self.return_files.then_some(files);
        render(response, displays, returned, self.slot)
    }
}

/// The `/health` body; the counts only when the executor is up.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Health {
    /// Always `true`: the frontend answers.
    ok: bool,
    /// `up` or `down`: whether the executor answered.
    #[schema(value_type = String, pattern = "^(up|down)$")]
    executor: &'static str,
    /// Jobs running now.
    #[serde(skip_serializing_if = "Option::is_none")]
    running_jobs: Option<u32>,
    /// Jobs that may run at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    max_jobs: Option<u32>,
    /// Jobs waiting at the executor for a slot.
    #[serde(skip_serializing_if = "Option::is_none")]
    queued_jobs: Option<u32>,
    /// Warm jails waiting for a job.
    #[serde(skip_serializing_if = "Option::is_none")]
    warm_jails: Option<u32>,
    /// Sessions open now.
    #[serde(skip_serializing_if = "Option::is_none")]
    sessions: Option<u32>,
    /// How each limit is enforced on the executor's host.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<std::collections::BTreeMap<String, String>>)]
    limits: Option<serde_json::Map<String, serde_json::Value>>,
    /// The isolation layers in force there (landlock ABI, seccomp, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<std::collections::BTreeMap<String, String>>)]
    isolation: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Whether the service and its executor are up; no secret in it.
#[utoipa::path(
    get,
    path = "/health",
    tag = "operations",
    operation_id = "health",
    security(()),
    responses((status = 200, description = "Always, even when the executor is down.", body = Health))
)]
pub(crate) async fn health(State(app): State<AppState>) -> Json<Health> {
    let status = app.inner.health.status().await;
    Json(Health {
        ok: true,
        executor: if status.is_some() { "up" } else { "down" },
        running_jobs: status.as_ref().map(|s| s.running_jobs),
        max_jobs: status.as_ref().map(|s| s.max_jobs),
        queued_jobs: status.as_ref().map(|s| s.queued_jobs),
        warm_jails: status.as_ref().map(|s| s.warm_jails),
        sessions: status.as_ref().map(|s| s.sessions),
        limits: status.as_ref().map(|s| {
            s.enforcement
                .iter()
                .map(|e| (e.limit.clone(), e.mechanism.clone().into()))
                .collect()
        }),
        isolation: status.map(|s| {
            s.isolation
                .into_iter()
                .map(|layer| (layer.name, layer.detail.into()))
                .collect()
        }),
    })
}

/// `GET /metrics`: without auth unless `METRICS_TOKEN` is set, then with it only.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    operation_id = "metrics",
    description = "Prometheus text exposition (format 0.0.4). No auth unless `METRICS_TOKEN` is set; the job token never opens it. With `METRICS_ADDR` set it is served on that address instead, and answered 404 here.",
    security((), ("metricsToken" = [])),
    responses(
        (status = 200, description = "The exposition.", body = String, content_type = "text/plain; version=0.0.4; charset=utf-8"),
        (status = 401, description = "`METRICS_TOKEN` is set and no `Bearer` token came.", body = ErrorBody),
        (status = 403, description = "`METRICS_TOKEN` is set and another token came.", body = ErrorBody),
        (status = 404, description = "`METRICS_ADDR` is set: it is served there.", body = ErrorBody),
        (status = 503, description = "Every connection slot is taken.", body = ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait before trying again."))),
    )
)]
pub(crate) async fn metrics(
    State(app): State<AppState>,
    request: Request,
) -> Result<Response, ApiError> {
    let app = &app.inner;
    if let Some(token) = &app.metrics_token {
        token.check(request.headers().get(header::AUTHORIZATION))?;
    }
    let status = app.health.status().await;
    let body = app.metrics.render(status.as_ref());
    Ok(([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], body).into_response())
}

/// Identifies one request in the logs of both daemons and in `x-request-id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(String);

impl RequestId {
    /// A fresh id: 16 hex digits, unpredictable and unique within this process.
    ///
    /// SipHash under a random key (std's `RandomState`) of a counter: a keyed
    /// permutation-like mix that needs no extra dependency and never repeats a
    /// counter value's input.
    pub fn generate() -> Self {
        static KEY: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let hash = KEY.get_or_init(Default::default).hash_one(n);
        RequestId(format!("{hash:016x}"))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Gives the request an id (extension, span, response header) and logs one line
/// when it ends.
async fn log_request(State(app): State<AppState>, mut request: Request, next: Next) -> Response {
    let id = RequestId::generate();
    let span = info_span!("request", request_id = %id);
    let mut log = RequestLog {
        span: span.clone(),
        // Client text: tracing writes `%` fields raw, so C1 controls, NEL and
        // U+2028 would reach the log as they are (security-2 F5).
        method: shown(request.method().as_str(), MAX_LOGGED_CHARS),
        path: shown(request.uri().path(), MAX_LOGGED_CHARS),
        started: Instant::now(),
        status: None,
    };
    let header = HeaderValue::from_str(id.as_str());
    let health_only = request.extensions().get::<HealthOnly>().is_some();
    // A template of ours, never the raw path: one series per route.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .and_then(|matched| ROUTES.iter().find(|r| **r == matched.as_str()))
        .copied()
        .unwrap_or(metrics::UNMATCHED_ROUTE);
    let mut response = if health_only && request.uri().path() != "/health" {
        app.inner.metrics.error(&ApiError::ConnectionsFull);
        ApiError::ConnectionsFull.into_response()
    } else {
        request.extensions_mut().insert(id);
        next.run(request).instrument(span).await
    };
    if let Ok(value) = header {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    log.status = Some(response.status());
    app.inner.metrics.request(route, response.status().as_u16());
    response
}

/// Writes the request's log line when dropped: after the handler answered, or when
/// hyper dropped the handler because the client went away.
struct RequestLog {
    span: Span,
    method: String,
    path: String,
    started: Instant,
    status: Option<StatusCode>,
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        let _entered = self.span.enter();
        let duration_ms = self.started.elapsed().as_millis() as u64;
        match self.status {
            Some(status) => info!(
                method = %self.method,
                path = %self.path,
                status = status.as_u16(),
                duration_ms,
                "request done"
            ),
            None => info!(
                method = %self.method,
                path = %self.path,
                duration_ms,
                "client went away before the answer; request dropped"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use clap::Parser;
    use serde_json::{json, Value};
    use std::collections::HashSet;
    use tower::ServiceExt;

    /// State whose executor socket does not exist: requests that get past
    /// admission end in 503.
    fn state(flags: &[&str]) -> AppState {
        let mut args = vec![
            "pysandbox-frontend",
            "--auth-token",
            "tok",
            "--executor-socket",
            "/nonexistent/pysandbox-test.sock",
            "--max-body-bytes",
            "64",
        ];
        args.extend_from_slice(flags);
        let config = Config::try_parse_from(args).unwrap();
        AppState::new(&config, config.token().unwrap()).unwrap()
    }

    async fn call(
        state: &AppState,
        method: &str,
        path: &str,
        auth: Option<&str>,
        body: impl Into<Body>,
    ) -> (u16, Value) {
        let mut request = axum::http::Request::builder().method(method).uri(path);
        if let Some(auth) = auth {
            request = request.header(header::AUTHORIZATION, auth);
        }
        let request = request
            .header(header::CONTENT_TYPE, "text/plain")
            .body(body.into())
            .unwrap();
        let response = router(state.clone()).oneshot(request).await.unwrap();
        let id = response
            .headers()
            .get(REQUEST_ID_HEADER)
            .expect("x-request-id");
        assert_eq!(id.len(), 16);
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    const BIG: &str = "{\"code\":\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}";

    #[tokio::test]
    async fn auth_comes_before_the_body() {
        let state = state(&[]);
        let (status, body) = call(&state, "POST", "/execute", None, BIG).await;
        assert_eq!(status, 401);
        assert_eq!(
            body,
            json!({"error": "missing or malformed Authorization header (expected: Bearer <token>)"})
        );
        let (status, body) = call(&state, "POST", "/execute", Some("Bearer nope"), "nope").await;
        assert_eq!((status, body), (403, json!({"error": "invalid token"})));
    }

    #[tokio::test]
    async fn size_comes_before_json() {
        let state = state(&[]);
        let expected = (
            413,
            json!({"error": "request body is larger than 64 bytes"}),
        );
        let (status, body) = call(&state, "POST", "/execute", Some("Bearer tok"), BIG).await;
        assert_eq!((status, body), expected);
        // Without a declared length, the limit applies while the body streams in.
        let chunks = futures::stream::iter(
            ["{\"code\":\"", &"x".repeat(40), &"x".repeat(40), "\"}"]
                .map(|s| Ok::<_, std::io::Error>(bytes::Bytes::from(s.to_owned()))),
        );
        let (status, body) = call(
            &state,
            "POST",
            "/execute",
            Some("Bearer tok"),
            Body::from_stream(chunks),
        )
        .await;
        assert_eq!((status, body), expected);
    }

    #[tokio::test]
    async fn json_comes_before_admission_and_admission_before_the_executor() {
        let state = state(&["--max-inflight", "1", "--max-queue", "0"]);
        let auth = Some("Bearer tok");
        let (status, body) = call(&state, "POST", "/execute", auth, "{not json").await;
        assert_eq!(
            (status, body),
            (400, json!({"error": "request body is not valid JSON"}))
        );

        let held = state.inner.admission.enter().unwrap();
        let (status, body) = call(&state, "POST", "/execute", auth, r#"{"code":""}"#).await;
        assert_eq!(
            (status, body),
            (
                400,
                json!({"error": "code: must not be empty", "field": "code"})
            )
        );
        let (status, body) = call(&state, "POST", "/execute", auth, r#"{"code":"1"}"#).await;
        assert_eq!(
            (status, body),
            (
                429,
                json!({"error": "too many jobs in flight; retry later"})
            )
        );

        drop(held);
        let (status, body) = call(&state, "POST", "/execute", auth, r#"{"code":"1"}"#).await;
        assert_eq!(
            (status, body),
            (503, json!({"error": "executor unavailable"}))
        );
        assert_eq!(state.inner.admission.in_service(), 0);
    }

    #[tokio::test]
    async fn unknown_paths_and_methods_are_json() {
        let state = state(&[]);
        let auth = Some("Bearer tok");
        for (method, path) in [
            ("GET", "/"),
            ("POST", "/nope"),
            ("GET", "/execute/x"),
            ("POST", "/health/"),
        ] {
            let (status, body) = call(&state, method, path, auth, "").await;
            assert_eq!(
                (status, body),
                (404, json!({"error": "not found"})),
                "{method} {path}"
            );
        }
        for (method, path) in [
            ("GET", "/execute"),
            ("PUT", "/execute"),
            ("POST", "/health"),
            ("DELETE", "/health"),
        ] {
            let (status, body) = call(&state, method, path, auth, "").await;
            assert_eq!(
                (status, body),
                (405, json!({"error": "method not allowed"})),
                "{method} {path}"
            );
        }
    }

    #[tokio::test]
    async fn health_needs_no_auth() {
        let (status, body) = call(&state(&[]), "GET", "/health", None, "").await;
        assert_eq!(
            (status, body),
            (200, json!({"ok": true, "executor": "down"}))
        );
    }

    #[tokio::test]
    async fn metrics_apart_leave_the_main_port_and_nothing_else_comes_along() {
        let apart = state(&["--metrics-addr", "127.0.0.1:0"]);
        let auth = Some("Bearer tok");
        let (status, body) = call(&apart, "GET", "/metrics", None, "").await;
        assert_eq!((status, body), (404, json!({"error": "not found"})));
        let metrics_only =
            |request: axum::http::Request<Body>| metrics_router(apart.clone()).oneshot(request);
        let get = |path: &str| {
            axum::http::Request::builder()
                .uri(path)
                .header(header::AUTHORIZATION, "Bearer tok")
                .body(Body::empty())
                .unwrap()
        };
        let response = metrics_only(get("/metrics")).await.unwrap();
        assert_eq!(response.status(), 200);
        for path in ["/health", "/execute", "/openapi.json"] {
            let response = metrics_only(get(path)).await.unwrap();
            assert_eq!(response.status(), 404, "{path}");
        }
        let (status, _) = call(&apart, "GET", "/health", auth, "").await;
        assert_eq!(status, 200);
        // Without METRICS_ADDR, the main port serves it.
        let response = router(state(&[])).oneshot(get("/metrics")).await.unwrap();
        assert_eq!(response.status(), 200);
    }

    #[test]
    fn request_ids_are_16_hex_digits_and_distinct() {
        let ids: HashSet<String> = (0..10_000).map(|_| RequestId::generate().0).collect();
        assert_eq!(ids.len(), 10_000);
        for id in &ids {
            assert_eq!(id.len(), 16, "{id}");
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        }
    }
}
