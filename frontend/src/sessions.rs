//! The session routes: `POST /sessions` opens one, `GET` and `DELETE
//! /sessions/{sessionId}` describe and end it, and `POST
//! /sessions/{sessionId}/execute` is `/execute` in it. The executor holds every
//! session; the frontend keeps nothing of them, so restarting it loses none.

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, SecondsFormat};
use pysandbox_shared::{is_session_id, Request as ExecutorRequest, SessionSpec, SessionState};
use serde::Serialize;

use crate::error::ApiError;
use crate::openapi::{ErrorBody, ExecuteBody, ExecuteResult, OpenSessionBody, StreamEvent};
use crate::request::OpenSessionRequest;
use crate::routes::{run, AppState, RequestId};

/// A session as `POST /sessions` and `GET /sessions/{sessionId}` show it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SessionBody {
    /// Names the session in the URL of every later request. Its first part, up to
    /// the dot, names the instance that holds it (`session_route`).
    #[schema(pattern = "^[a-z0-9-]+\\.[0-9a-f]{32}$")]
    session_id: String,
    /// RFC 3339.
    created_at: String,
    /// When its last call ended (or it was created); RFC 3339.
    last_used_at: String,
    /// When it ends unless called again; RFC 3339.
    expires_at: String,
    idle_timeout_ms: u32,
    /// Calls run in it so far.
    calls: u64,
    /// Whether a call runs in it now: another one would get 409.
    busy: bool,
    /// Memory its processes use now; `null` where no cgroup counts it.
    memory_bytes: Option<u64>,
    /// The limits that hold for the whole session.
    limits: SessionLimits,
}

/// The limits a session holds for all its calls together.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SessionLimits {
    memory_mb: u32,
    max_processes: u32,
    disk_mb: u32,
}

impl SessionBody {
    /// The session's id, as every later request names it.
    pub(crate) fn id(&self) -> &str {
        &self.session_id
    }
}

impl From<SessionState> for SessionBody {
    fn from(state: SessionState) -> Self {
        SessionBody {
            session_id: state.session_id,
            created_at: rfc3339(state.created_ms),
            last_used_at: rfc3339(state.last_used_ms),
            expires_at: rfc3339(state.expires_ms),
            idle_timeout_ms: state.idle_timeout_ms,
            calls: state.calls,
            busy: state.busy,
            memory_bytes: state.memory_bytes,
            limits: SessionLimits {
                memory_mb: state.memory_mb,
                max_processes: state.max_processes,
                disk_mb: state.disk_mb,
            },
        }
    }
}

fn rfc3339(unix_ms: u64) -> String {
    let at = i64::try_from(unix_ms)
        .ok()
        .and_then(DateTime::from_timestamp_millis)
        .unwrap_or_default();
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Opens a session: one interpreter that keeps its variables, imports and work-dir
/// files from call to call until it is deleted, sits idle past its timeout, or its
/// interpreter ends.
#[utoipa::path(
    post,
    path = "/sessions",
    tag = "sessions",
    operation_id = "createSession",
    security(("jobToken" = [])),
    request_body(content = Option<OpenSessionBody>, content_type = "application/json",
        description = "Optional: an empty body opens a session with the defaults."),
    responses(
        (status = 201, description = "The session is open and waits for its first call.", body = SessionBody),
        (status = 400, description = "Body not JSON or not an object, or a field invalid or over the executor's maximum.", body = ErrorBody),
        (status = 401, description = "No `Authorization` header, or not `Bearer <token>`.", body = ErrorBody),
        (status = 403, description = "Wrong token.", body = ErrorBody),
        (status = 429, description = "As many sessions are open, or hold as much memory, as the executor allows.", body = ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait before trying again."))),
        (status = 503, description = "The executor is busy, restarting or unreachable, or could not start the session's jail.", body = ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait before trying again."))),
    )
)]
pub(crate) async fn create(
    State(state): State<AppState>,
    request: Request,
) -> Result<Response, ApiError> {
    let answer = async {
        let (parts, body) = request.into_parts();
        state.check_token(&parts.headers)?;
        let (body, _reservation) = state.read_body(body).await?;
        let asked = OpenSessionRequest::parse(&body)?;
        let request_id = parts.extensions.get::<RequestId>().cloned();
        let opened = open(
            &state,
            asked,
            request_id.unwrap_or_else(RequestId::generate),
        )
        .await?;
        Ok((StatusCode::CREATED, Json(opened)).into_response())
    };
    state.counted(answer.await)
}

/// What the session is and holds now.
#[utoipa::path(
    get,
    path = "/sessions/{sessionId}",
    tag = "sessions",
    operation_id = "getSession",
    security(("jobToken" = [])),
    params(("sessionId" = String, Path, description = "As `POST /sessions` returned it.")),
    responses(
        (status = 200, description = "The session.", body = SessionBody),
        (status = 401, description = "No `Authorization` header, or not `Bearer <token>`.", body = ErrorBody),
        (status = 403, description = "Wrong token.", body = ErrorBody),
        (status = 404, description = "No such session: never opened, deleted, expired, or ended long ago.", body = ErrorBody),
        (status = 410, description = "The session ended: its interpreter exited or was killed. Says why.", body = ErrorBody),
        (status = 503, description = "The executor is unreachable.", body = ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait before trying again."))),
    )
)]
pub(crate) async fn describe(
    State(state): State<AppState>,
    Path(session_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let answer = async {
        let id = checked(&state, &headers, session_id)?;
        match state
            .executor()
            .session(ExecutorRequest::DescribeSession(id))
            .await?
        {
            pysandbox_shared::Response::Session(session) => {
                Ok(Json(SessionBody::from(session)).into_response())
            }
            _ => Err(ApiError::Internal),
        }
    };
    state.counted(answer.await)
}

/// Ends the session: its processes, mounts, cgroups and files are gone when this
/// answers. A call running in it is interrupted.
#[utoipa::path(
    delete,
    path = "/sessions/{sessionId}",
    tag = "sessions",
    operation_id = "deleteSession",
    security(("jobToken" = [])),
    params(("sessionId" = String, Path, description = "As `POST /sessions` returned it.")),
    responses(
        (status = 204, description = "Gone, everything of it removed."),
        (status = 401, description = "No `Authorization` header, or not `Bearer <token>`.", body = ErrorBody),
        (status = 403, description = "Wrong token.", body = ErrorBody),
        (status = 404, description = "No such session.", body = ErrorBody),
        (status = 503, description = "The executor is unreachable.", body = ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait before trying again."))),
    )
)]
pub(crate) async fn close(
    State(state): State<AppState>,
    Path(session_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let answer = async {
        let id = checked(&state, &headers, session_id)?;
        end(&state, id).await?;
        Ok(StatusCode::NO_CONTENT.into_response())
    };
    state.counted(answer.await)
}

/// Runs Python in the session: `/execute`'s body and answers, with the session's
/// variables, imports and files. `limits.memoryMb`, `maxProcesses`, `diskMb` and
/// `network` are the session's and may not be given here.
#[utoipa::path(
    post,
    path = "/sessions/{sessionId}/execute",
    tag = "sessions",
    operation_id = "executeInSession",
    security(("jobToken" = [])),
    params(("sessionId" = String, Path, description = "As `POST /sessions` returned it.")),
    request_body(content = ExecuteBody, content_type = "application/json"),
    responses(
        (status = 200, description = "The call ran (even if the Python failed). A call over its time limit is interrupted (`KeyboardInterrupt`) and the session lives on.", content(
            (ExecuteResult = "application/json"),
            (StreamEvent = "text/event-stream"),
        )),
        (status = 400, description = "Body invalid, or a limit that is the session's.", body = ErrorBody),
        (status = 401, description = "No `Authorization` header, or not `Bearer <token>`.", body = ErrorBody),
        (status = 403, description = "Wrong token.", body = ErrorBody),
        (status = 404, description = "No such session.", body = ErrorBody),
        (status = 409, description = "Another call runs in the session.", body = ErrorBody),
        (status = 410, description = "The session ended; says why.", body = ErrorBody),
        (status = 429, description = "`MAX_INFLIGHT` jobs running and `MAX_QUEUE` waiting.", body = ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait before trying again."))),
        (status = 503, description = "The executor is busy, restarting or unreachable.", body = ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait before trying again."))),
    )
)]
pub(crate) async fn execute(
    State(state): State<AppState>,
    Path(session_id): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let answer = async {
        let id = checked(&state, request.headers(), session_id)?;
        run(&state, request, Some(id)).await
    };
    state.counted(answer.await)
}

/// Opens the session `asked` for at the executor: `POST /sessions`, and the MCP
/// tool `create_session`.
pub(crate) async fn open(
    state: &AppState,
    asked: OpenSessionRequest,
    request_id: RequestId,
) -> Result<SessionBody, ApiError> {
    let spec = SessionSpec {
        request_id: request_id.as_str().into(),
        idle_timeout_ms: asked.idle_timeout_ms,
        limits: asked.limits,
        network: asked.network,
    };
    match state
        .executor()
        .session(ExecutorRequest::OpenSession(spec))
        .await?
    {
        pysandbox_shared::Response::Session(opened) => Ok(SessionBody::from(opened)),
        _ => Err(ApiError::Internal),
    }
}

/// Ends the session `id` (as [`parse_id`] took it) and removes everything of it: `DELETE
/// /sessions/{sessionId}`, and the MCP tool `end_session`.
pub(crate) async fn end(state: &AppState, id: String) -> Result<(), ApiError> {
    state
        .executor()
        .session(ExecutorRequest::CloseSession(id))
        .await?;
    Ok(())
}

/// `id` if some session could have it; one no session could have is not found,
/// without asking the executor.
pub(crate) fn parse_id(id: String) -> Result<String, ApiError> {
    if is_session_id(&id) {
        Ok(id)
    } else {
        Err(ApiError::SessionNotFound)
    }
}

/// The token first, then the id.
fn checked(state: &AppState, headers: &HeaderMap, id: String) -> Result<String, ApiError> {
    state.check_token(headers)?;
    parse_id(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_in_utc_with_milliseconds() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_796_000_000_123), "2026-11-30T00:53:20.123Z");
        assert_eq!(rfc3339(u64::MAX), "1970-01-01T00:00:00.000Z");
    }
}
