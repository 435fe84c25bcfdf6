//! Every way a request can fail, and the one place that turns a failure into an
//! HTTP status and JSON body.
//!
//! The message a client sees is the variant's `Display`, fixed by the HTTP contract.
//! Internal causes (socket errors, executor detail) are logged where they happen and
//! never reach this type, so they cannot leak into a response.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// A request that did not produce a job result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// No `Authorization` header, or not of the form `Bearer <token>`.
    #[error("missing or malformed Authorization header (expected: Bearer <token>)")]
    MissingAuth,
    /// A well-formed bearer token that is not ours.
    #[error("invalid token")]
    InvalidToken,
    /// The body is over the configured size limit.
    #[error("request body is larger than {limit} bytes")]
    BodyTooLarge {
        /// The configured limit, `MAX_BODY_BYTES`.
        limit: u64,
    },
    /// The client did not finish sending the body within `BODY_TIMEOUT_MS`.
    #[error("request body timed out")]
    BodyTimeout,
    /// The body broke off or was framed wrongly (the client went away mid-body).
    #[error("request body could not be read")]
    BodyUnreadable,
    /// The body is not JSON.
    #[error("request body is not valid JSON")]
    InvalidJson,
    /// The body is JSON, but not an object.
    #[error("request body must be a JSON object")]
    NotAnObject,
    /// One field of the request is wrong; `field` is the key the client used.
    #[error("{field}: {reason}")]
    InvalidField {
        /// The key as the client spelled it (an alias when the alias was used).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// More requests are in the service than `MAX_INFLIGHT + MAX_QUEUE`.
    #[error("too many jobs in flight; retry later")]
    Saturated,
    /// The executor could not be reached, or would not talk to us.
    #[error("executor unavailable")]
    ExecutorUnavailable,
    /// The executor went away (or stopped answering) while the job ran.
    #[error("executor connection lost while running the job")]
    ExecutorLost,
    /// Every executor job slot stayed taken, and its queue was full or too slow:
    /// nothing ran.
    #[error("service busy: every job slot is taken; retry later")]
    Busy {
        /// Seconds until a retry has a fair chance, as the executor says.
        retry_after: u32,
    },
    /// The executor is restarting (or stopping): it turned the job away before it
    /// started twice, or stopped it at the end of its shutdown grace.
    #[error("executor restarting; retry later")]
    ExecutorRestarting,
    /// The executor could not set up the jail, so the job did not run.
    #[error("sandbox unavailable: could not set up the jail")]
    SandboxUnavailable,
    /// The bytes of request bodies being read at once are at their bound.
    #[error("too many request bodies being read; retry later")]
    BodiesBusy,
    /// Every ordinary connection slot is taken; this connection may only ask for
    /// `/health`.
    #[error("too many open connections; retry later")]
    ConnectionsFull,
    /// No route for this path.
    #[error("not found")]
    NotFound,
    /// The path exists, but not for this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// A bug on our side (or in the executor); the cause is in the log.
    #[error("internal error")]
    Internal,
    /// No session has that id (any more).
    #[error("session not found")]
    SessionNotFound,
    /// The session's interpreter is gone.
    #[error("session ended: {reason}")]
    SessionEnded {
        /// What ended it.
        reason: String,
    },
    /// The session runs another call.
    #[error("session is busy with another call")]
    SessionBusy,
    /// As many sessions are open, or hold as much memory, as the executor allows.
    #[error("too many sessions: {reason}")]
    SessionsFull {
        /// Which cap was reached.
        reason: String,
        /// Seconds until a retry has a fair chance.
        retry_after: u32,
    },
}

impl ApiError {
    /// The HTTP status this failure is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MissingAuth => StatusCode::UNAUTHORIZED,
            ApiError::InvalidToken => StatusCode::FORBIDDEN,
            ApiError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::BodyUnreadable
            | ApiError::InvalidJson
            | ApiError::NotAnObject
            | ApiError::InvalidField { .. } => StatusCode::BAD_REQUEST,
            ApiError::Saturated | ApiError::SessionsFull { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::ExecutorUnavailable
            | ApiError::ExecutorLost
            | ApiError::Busy { .. }
            | ApiError::ExecutorRestarting
            | ApiError::SandboxUnavailable
            | ApiError::ConnectionsFull
            | ApiError::BodiesBusy => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::NotFound | ApiError::SessionNotFound => StatusCode::NOT_FOUND,
            ApiError::SessionEnded { .. } => StatusCode::GONE,
            ApiError::SessionBusy => StatusCode::CONFLICT,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Seconds a client should wait before trying again, when waiting can help.
    pub fn retry_after(&self) -> Option<u32> {
        match self {
            // A slot frees as soon as one job ends, so come back soon.
            ApiError::Saturated | ApiError::ConnectionsFull | ApiError::BodiesBusy => Some(1),
            ApiError::Busy { retry_after } | ApiError::SessionsFull { retry_after, .. } => {
                Some(*retry_after)
            }
            // An executor restart (socket-activated) takes a few seconds.
            ApiError::ExecutorUnavailable
            | ApiError::ExecutorLost
            | ApiError::ExecutorRestarting
            | ApiError::SandboxUnavailable => Some(5),
            _ => None,
        }
    }
}

/// The JSON error body: `{"error": ..., "field": ...}`, `field` only for field errors.
#[derive(Serialize)]
struct ErrorBody<'a> {
    error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let field = match &self {
            ApiError::InvalidField { field, .. } => Some(field.as_str()),
            _ => None,
        };
        let body = ErrorBody {
            error: self.to_string(),
            field,
        };
        let mut response = (self.status(), axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn render(err: ApiError) -> (StatusCode, Option<String>, String, String) {
        let response = err.into_response();
        let status = response.status();
        let retry = response
            .headers()
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_owned());
        let content_type = response.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_owned();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (
            status,
            retry,
            content_type,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    #[tokio::test]
    async fn every_error_has_its_contract_status_body_and_retry_after() {
        let cases: Vec<(ApiError, u16, Option<&str>, &str)> = vec![
            (
                ApiError::SessionNotFound,
                404,
                None,
                r#"{"error":"session not found"}"#,
            ),
            (
                ApiError::SessionEnded {
                    reason: "the interpreter exited with code 3".into(),
                },
                410,
                None,
                r#"{"error":"session ended: the interpreter exited with code 3"}"#,
            ),
            (
                ApiError::SessionBusy,
                409,
                None,
                r#"{"error":"session is busy with another call"}"#,
            ),
            (
                ApiError::SessionsFull {
                    reason: "16 are open, the most allowed".into(),
                    retry_after: 5,
                },
                429,
                Some("5"),
                r#"{"error":"too many sessions: 16 are open, the most allowed"}"#,
            ),
            (
                ApiError::MissingAuth,
                401,
                None,
                r#"{"error":"missing or malformed Authorization header (expected: Bearer <token>)"}"#,
            ),
            (
                ApiError::InvalidToken,
                403,
                None,
                r#"{"error":"invalid token"}"#,
            ),
            (
                ApiError::BodyTooLarge { limit: 1_048_576 },
                413,
                None,
                r#"{"error":"request body is larger than 1048576 bytes"}"#,
            ),
            (
                ApiError::BodyTimeout,
                408,
                None,
                r#"{"error":"request body timed out"}"#,
            ),
            (
                ApiError::BodiesBusy,
                503,
                Some("1"),
                r#"{"error":"too many request bodies being read; retry later"}"#,
            ),
            (
                ApiError::ConnectionsFull,
                503,
                Some("1"),
                r#"{"error":"too many open connections; retry later"}"#,
            ),
            (
                ApiError::BodyUnreadable,
                400,
                None,
                r#"{"error":"request body could not be read"}"#,
            ),
            (
                ApiError::InvalidJson,
                400,
                None,
                r#"{"error":"request body is not valid JSON"}"#,
            ),
            (
                ApiError::NotAnObject,
                400,
                None,
                r#"{"error":"request body must be a JSON object"}"#,
            ),
            (
                ApiError::InvalidField {
                    field: "timeoutMs".into(),
                    reason: "must be an integer from 1 to 120000".into(),
                },
                400,
                None,
                r#"{"error":"timeoutMs: must be an integer from 1 to 120000","field":"timeoutMs"}"#,
            ),
            (
                ApiError::Saturated,
                429,
                Some("1"),
                r#"{"error":"too many jobs in flight; retry later"}"#,
            ),
            (
                ApiError::ExecutorUnavailable,
                503,
                Some("5"),
                r#"{"error":"executor unavailable"}"#,
            ),
            (
                ApiError::ExecutorLost,
                503,
                Some("5"),
                r#"{"error":"executor connection lost while running the job"}"#,
            ),
            (
                ApiError::Busy { retry_after: 2 },
                503,
                Some("2"),
                r#"{"error":"service busy: every job slot is taken; retry later"}"#,
            ),
            (
                ApiError::ExecutorRestarting,
                503,
                Some("5"),
                r#"{"error":"executor restarting; retry later"}"#,
            ),
            (
                ApiError::SandboxUnavailable,
                503,
                Some("5"),
                r#"{"error":"sandbox unavailable: could not set up the jail"}"#,
            ),
            (ApiError::NotFound, 404, None, r#"{"error":"not found"}"#),
            (
                ApiError::MethodNotAllowed,
                405,
                None,
                r#"{"error":"method not allowed"}"#,
            ),
            (
                ApiError::Internal,
                500,
                None,
                r#"{"error":"internal error"}"#,
            ),
        ];
        for (err, status, retry, body) in cases {
            let name = format!("{err:?}");
            let got = render(err).await;
            assert_eq!(got.0.as_u16(), status, "{name}");
            assert_eq!(got.1.as_deref(), retry, "{name}");
            assert_eq!(got.2, "application/json", "{name}");
            assert_eq!(got.3, body, "{name}");
        }
    }
}
