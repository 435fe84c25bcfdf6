//! The body of `POST /execute`, parsed into a typed request.
//!
//! Parsing goes through `serde_json::Value` rather than a derived `Deserialize` so
//! that each rule yields the contract's exact message naming the key the client used,
//! the seed's aliases keep working, and `null` counts as absent.

use std::time::Duration;

use axum::body::{Body, HttpBody};
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use pysandbox_shared::files::first_conflict;
use pysandbox_shared::text::shown;
use pysandbox_shared::{
    InputFile, JobLimits, NetworkRequest, RelativePath, MAX_REQUESTED_DOMAINS, MAX_TIMEOUT_MS,
};
use serde_json::{Map, Value};
use tracing::debug;
use url::Url;

use crate::body_budget::{BodyBudget, Reservation};
use crate::duplicate_keys::first_duplicate_key;
use crate::error::ApiError;
use crate::routes::MAX_LOGGED_CHARS;

/// Reads a whole request body, at most `limit` bytes, within `deadline`, with
/// room for it reserved in `budget` (returned with it, to drop once parsed).
///
/// A declared `Content-Length` over the limit is refused before anything is read,
/// and a chunked body is refused as soon as it passes the limit, so an oversized
/// body is never buffered. The deadline covers the whole body, so a client that
/// trickles bytes cannot hold a connection (and its memory) for long.
pub async fn read_body(
    body: Body,
    limit: u64,
    budget: &BodyBudget,
    deadline: Duration,
) -> Result<(Bytes, Reservation), ApiError> {
    let hint = body.size_hint();
    if hint.lower() > limit {
        return Err(ApiError::BodyTooLarge { limit });
    }
    // A chunked body may be as large as the limit.
    let reservation = budget.reserve(hint.exact().unwrap_or(limit))?;
    let bytes = tokio::time::timeout(deadline, collect(body, limit))
        .await
        .map_err(|_| ApiError::BodyTimeout)??;
    Ok((bytes, reservation))
}

async fn collect(body: Body, limit: u64) -> Result<Bytes, ApiError> {
    let mut stream = body.into_data_stream();
    let mut buf = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            debug!("reading the request body failed: {e}");
            ApiError::BodyUnreadable
        })?;
        if (buf.len() + chunk.len()) as u64 > limit {
            return Err(ApiError::BodyTooLarge { limit });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// A validated `POST /execute` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecuteRequest {
    /// Python source; never empty.
    pub code: String,
    /// Wall-clock limit asked for, in milliseconds (1 to [`MAX_TIMEOUT_MS`]).
    pub timeout_ms: Option<u32>,
    /// What the job reads on standard input; `None` means EOF at once.
    pub stdin: Option<String>,
    /// Where produced files are to be POSTed (when `upload_token` is given too).
    pub file_upload_url: Option<UploadUrl>,
    /// Bearer token for the upload endpoint.
    pub upload_token: Option<String>,
    /// Passed to the upload endpoint as `?public=`.
    pub public: Option<bool>,
    /// Limits asked for; the executor checks each against its configured maximum.
    pub limits: JobLimits,
    /// Files to place in the work dir before the job starts; the executor checks
    /// their number and size against its caps.
    pub files: Vec<InputFile>,
    /// Whether to return the produced files in the response.
    pub return_files: bool,
    /// Network access asked for; the executor checks it against its configuration.
    pub network: Option<NetworkRequest>,
}

/// The upload URL, with the key the client gave it under (for error messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadUrl {
    /// `fileUploadUrl` or the seed's `file_upload_url`.
    pub field: &'static str,
    /// The URL, http or https with a host.
    pub url: Url,
}

impl ExecuteRequest {
    /// The upload target and token when both are given: only then are files uploaded.
    pub fn upload_target(&self) -> Option<(&UploadUrl, &str)> {
        Some((
            self.file_upload_url.as_ref()?,
            self.upload_token.as_deref()?,
        ))
    }
}

impl ExecuteRequest {
    /// Parses a request body; the checks run in the contract's order, so the first
    /// failing rule is the one reported.
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let fields = object(body)?;
        let fields = Fields(&fields);

        let code = match fields.get(&["code"]) {
            None => return Err(invalid("code", "is required")),
            Some((_, Value::String(code))) if code.is_empty() => {
                return Err(invalid("code", "must not be empty"))
            }
            Some((_, Value::String(code))) => code.clone(),
            Some((key, _)) => return Err(invalid(key, "must be a string")),
        };
        let timeout_ms = fields
            .get(&["timeoutMs"])
            .map(|(key, v)| {
                timeout(v).ok_or_else(|| invalid(key, "must be an integer from 1 to 120000"))
            })
            .transpose()?;
        let file_upload_url = fields
            .get(&["fileUploadUrl", "file_upload_url"])
            .map(|(field, v)| {
                let url =
                    http_url(v).ok_or_else(|| invalid(field, "must be an http or https URL"))?;
                Ok::<_, ApiError>(UploadUrl { field, url })
            })
            .transpose()?;
        let upload_token = fields
            .get(&["uploadToken", "api_token"])
            .map(|(key, v)| string(v).ok_or_else(|| invalid(key, "must be a string")))
            .transpose()?;
        let public = fields
            .get(&["public"])
            .map(|(key, v)| boolean(v).ok_or_else(|| invalid(key, "must be a boolean")))
            .transpose()?;
        let stdin = fields
            .get(&["stdin"])
            .map(|(key, v)| string(v).ok_or_else(|| invalid(key, "must be a string")))
            .transpose()?;
        let limits = fields
            .get(&["limits"])
            .map(|(_, v)| limits(v))
            .transpose()?
            .unwrap_or_default();
        let files = fields
            .get(&["files"])
            .map(|(_, v)| input_files(v))
            .transpose()?
            .unwrap_or_default();
        let return_files = fields
            .get(&["returnFiles"])
            .map(|(key, v)| boolean(v).ok_or_else(|| invalid(key, "must be a boolean")))
            .transpose()?
            .unwrap_or(false);
        let network = fields
            .get(&["network"])
            .map(|(_, v)| network(v))
            .transpose()?;

        Ok(ExecuteRequest {
            code,
            timeout_ms,
            stdin,
            file_upload_url,
            upload_token,
            public,
            limits,
            files,
            return_files,
            network,
        })
    }
}

/// A validated `POST /sessions` request: every field is optional, and so is the body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenSessionRequest {
    /// How long the session may sit unused; the executor checks its range.
    pub idle_timeout_ms: Option<u32>,
    /// Limits for the whole session, as `/execute` takes them.
    pub limits: JobLimits,
    /// Network asked for, as `/execute` takes it.
    pub network: Option<NetworkRequest>,
}

impl OpenSessionRequest {
    /// Parses a request body, empty or a JSON object, with `/execute`'s rules for
    /// the fields they share.
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(OpenSessionRequest::default());
        }
        let fields = object(body)?;
        let fields = Fields(&fields);
        let idle_timeout_ms = fields
            .get(&["idleTimeoutMs"])
            .map(|(key, v)| {
                integer(v, u32::MAX).ok_or_else(|| invalid(key, "must be a positive integer"))
            })
            .transpose()?;
        let limits = fields
            .get(&["limits"])
            .map(|(_, v)| limits(v))
            .transpose()?
            .unwrap_or_default();
        let network = fields
            .get(&["network"])
            .map(|(_, v)| network(v))
            .transpose()?;
        Ok(OpenSessionRequest {
            idle_timeout_ms,
            limits,
            network,
        })
    }
}

/// The body as a JSON object without a key given twice, or why it is not one, in
/// the contract's order.
fn object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|_| ApiError::InvalidJson)?;
    let Value::Object(fields) = value else {
        return Err(ApiError::NotAnObject);
    };
    if let Some(key) = first_duplicate_key(body) {
        return Err(invalid(
            &shown(&key, MAX_LOGGED_CHARS),
            "appears more than once",
        ));
    }
    Ok(fields)
}

/// The body's top-level object.
struct Fields<'a>(&'a Map<String, Value>);

impl<'a> Fields<'a> {
    /// The first of `keys` (the API name, then its seed aliases) that is present and
    /// not `null`, with the key it was found under.
    fn get(&self, keys: &[&'static str]) -> Option<(&'static str, &'a Value)> {
        keys.iter().find_map(|&key| match self.0.get(key) {
            None | Some(Value::Null) => None,
            Some(value) => Some((key, value)),
        })
    }
}

fn invalid(field: &str, reason: &str) -> ApiError {
    ApiError::InvalidField {
        field: field.to_owned(),
        reason: reason.to_owned(),
    }
}

/// The `limits` object: each known key a positive integer or `null`. Unknown keys are
/// refused, so a misspelt limit is not silently ignored. Whether a value is within
/// the configured maximum is the executor's to say.
fn limits(value: &Value) -> Result<JobLimits, ApiError> {
    let Value::Object(map) = value else {
        return Err(invalid("limits", "must be an object"));
    };
    let mut limits = JobLimits::default();
    for (key, value) in map {
        let slot = match key.as_str() {
            "memoryMb" => &mut limits.memory_mb,
            "cpuMs" => &mut limits.cpu_ms,
            "maxProcesses" => &mut limits.max_processes,
            "diskMb" => &mut limits.disk_mb,
            "outputBytes" => &mut limits.output_bytes,
            _ => {
                // The key is the client's: keep the message short whatever it sent.
                let key: String = key.chars().take(64).collect();
                return Err(invalid(
                    &format!("limits.{key}"),
                    "is not a limit (memoryMb, cpuMs, maxProcesses, diskMb, outputBytes)",
                ));
            }
        };
        if !value.is_null() {
            *slot =
                Some(integer(value, u32::MAX).ok_or_else(|| {
                    invalid(&format!("limits.{key}"), "must be a positive integer")
                })?);
        }
    }
    Ok(limits)
}

/// Standard base64, with or without padding.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The `files` array: `{path, contentBase64}` objects with relative paths, no two
/// of which are in each other's way.
fn input_files(value: &Value) -> Result<Vec<InputFile>, ApiError> {
    let Value::Array(items) = value else {
        return Err(invalid("files", "must be an array"));
    };
    let mut files = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Value::Object(item) = item else {
            return Err(invalid(&format!("files[{i}]"), "must be an object"));
        };
        let field = |name: &str| format!("files[{i}].{name}");
        let text = |name: &str| match item.get(name) {
            None | Some(Value::Null) => Err(invalid(&field(name), "is required")),
            Some(Value::String(s)) => Ok(s),
            Some(_) => Err(invalid(&field(name), "must be a string")),
        };
        let path = RelativePath::parse(text("path")?)
            .map_err(|e| invalid(&field("path"), &e.to_string()))?;
        let data = BASE64
            .decode(text("contentBase64")?)
            .map_err(|_| invalid(&field("contentBase64"), "must be valid base64"))?;
        files.push(InputFile { path, data });
    }
    if let Some((first, later)) = first_conflict(files.iter().map(|f| &f.path)) {
        return Err(invalid(
            &format!("files[{later}].path"),
            &format!("conflicts with files[{first}].path"),
        ));
    }
    Ok(files)
}

/// The `network` object: `allowedDomains`, an array of strings or `null` (the
/// executor's whole list). Whether each entry is a valid pattern within the
/// configured list is the executor's to say.
fn network(value: &Value) -> Result<NetworkRequest, ApiError> {
    let Value::Object(map) = value else {
        return Err(invalid("network", "must be an object"));
    };
    let mut request = NetworkRequest::default();
    for (key, value) in map {
        if key != "allowedDomains" {
            let key: String = key.chars().take(64).collect();
            return Err(invalid(
                &format!("network.{key}"),
                "is not a network setting (allowedDomains)",
            ));
        }
        let field = "network.allowedDomains";
        request.allowed_domains = match value {
            Value::Null => None,
            Value::Array(entries) if entries.len() > MAX_REQUESTED_DOMAINS => {
                return Err(invalid(
                    field,
                    &format!("must have at most {MAX_REQUESTED_DOMAINS} entries"),
                ))
            }
            Value::Array(entries) => Some(
                entries
                    .iter()
                    .map(|e| e.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| invalid(field, "must be an array of strings"))?,
            ),
            _ => return Err(invalid(field, "must be an array of strings")),
        };
    }
    Ok(request)
}

/// The timeout: an integer number of milliseconds in range.
fn timeout(value: &Value) -> Option<u32> {
    integer(value, MAX_TIMEOUT_MS)
}

/// An integer from 1 to `max`. A float with no fractional part (`1000.0`, `1e3`) is
/// the same number in JSON and in the JavaScript seed, so it counts as an integer;
/// strings do not.
fn integer(value: &Value, max: u32) -> Option<u32> {
    let Value::Number(n) = value else {
        return None;
    };
    let int = match n.as_u64() {
        Some(int) => int,
        None => {
            let f = n.as_f64()?;
            // The range check comes first, so the cast below is exact.
            if !(1.0..=f64::from(max)).contains(&f) || f.fract() != 0.0 {
                return None;
            }
            f as u64
        }
    };
    u32::try_from(int)
        .ok()
        .filter(|int| (1..=max).contains(int))
}

fn http_url(value: &Value) -> Option<Url> {
    let url = Url::parse(value.as_str()?).ok()?;
    (matches!(url.scheme(), "http" | "https") && url.has_host()).then_some(url)
}

fn string(value: &Value) -> Option<String> {
    value.as_str().map(str::to_owned)
}

/// A JSON boolean, or the seed's string forms `"true"` and `"false"`.
fn boolean(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(b) => Some(*b),
        Value::String(s) if s == "true" => Some(true),
        Value::String(s) if s == "false" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<ExecuteRequest, ApiError> {
        ExecuteRequest::parse(body.as_bytes())
    }

    fn field_error(body: &str) -> (String, String) {
        match parse(body) {
            Err(ApiError::InvalidField { field, reason }) => (field, reason),
            other => panic!("{body}: expected a field error, got {other:?}"),
        }
    }

    fn minimal(code: &str) -> ExecuteRequest {
        ExecuteRequest {
            code: code.into(),
            timeout_ms: None,
            stdin: None,
            file_upload_url: None,
            upload_token: None,
            public: None,
            limits: JobLimits::default(),
            files: Vec::new(),
            return_files: false,
            network: None,
        }
    }

    /// A body of a streamed (chunked) request, in these chunks.
    fn streamed(chunks: &[&'static str]) -> Body {
        let chunks: Vec<_> = chunks
            .iter()
            .map(|c| Ok::<_, std::io::Error>(Bytes::from_static(c.as_bytes())))
            .collect();
        Body::from_stream(futures::stream::iter(chunks))
    }

    /// A body is read whole up to the limit and refused past it: before anything
    /// is read or reserved when its length is declared, as it streams when not.
    #[tokio::test]
    async fn bodies_are_read_up_to_the_limit_and_no_further() {
        let budget = BodyBudget::new(1 << 20);
        let read = |body: Body| read_body(body, 4, &budget, Duration::from_secs(3600));
        let too_large = ApiError::BodyTooLarge { limit: 4 };
        for body in [
            Body::from("abcd"),
            streamed(&["ab", "cd"]),
            streamed(&["abcd"]),
        ] {
            let (bytes, _reservation) = read(body).await.unwrap();
            assert_eq!(&bytes[..], b"abcd");
        }
        for chunks in [&["abcde"][..], &["ab", "cde"], &["a", "bcde"]] {
            let refused = read(streamed(chunks)).await.map(|(bytes, _)| bytes);
            assert_eq!(refused, Err(too_large.clone()), "{chunks:?}");
        }
        // With the whole budget taken, a declared length over the limit is still
        // refused as too large: it never waited for room.
        let _all = budget.reserve(u64::MAX).unwrap();
        let refused = read(Body::from("abcde")).await.map(|(bytes, _)| bytes);
        assert_eq!(refused, Err(too_large));
    }

    #[test]
    fn network_rules() {
        let network = |body: &str| parse(body).unwrap().network;
        assert_eq!(network(r#"{"code":"1","network":null}"#), None);
        assert_eq!(
            network(r#"{"code":"1","network":{}}"#),
            Some(NetworkRequest::default())
        );
        assert_eq!(
            network(r#"{"code":"1","network":{"allowedDomains":null}}"#),
            Some(NetworkRequest::default())
        );
        assert_eq!(
            network(r#"{"code":"1","network":{"allowedDomains":["a.io","*.b.io"]}}"#),
            Some(NetworkRequest {
                allowed_domains: Some(vec!["a.io".into(), "*.b.io".into()])
            })
        );
        assert_eq!(
            network(r#"{"code":"1","network":{"allowedDomains":[]}}"#),
            Some(NetworkRequest {
                allowed_domains: Some(vec![])
            })
        );
        let strings = "must be an array of strings";
        for (body, field, reason) in [
            (
                r#"{"code":"1","network":true}"#,
                "network",
                "must be an object",
            ),
            (
                r#"{"code":"1","network":["a.io"]}"#,
                "network",
                "must be an object",
            ),
            (
                r#"{"code":"1","network":{"allowedDomains":"a.io"}}"#,
                "network.allowedDomains",
                strings,
            ),
            (
                r#"{"code":"1","network":{"allowedDomains":[1]}}"#,
                "network.allowedDomains",
                strings,
            ),
            (
                r#"{"code":"1","network":{"allowedDomains":["a.io",null]}}"#,
                "network.allowedDomains",
                strings,
            ),
            (
                r#"{"code":"1","network":{"allowedDomains":{}}}"#,
                "network.allowedDomains",
                strings,
            ),
            (
                r#"{"code":"1","network":{"allowed_domains":["a.io"]}}"#,
                "network.allowed_domains",
                "is not a network setting (allowedDomains)",
            ),
        ] {
            assert_eq!(field_error(body), (field.into(), reason.into()), "{body}");
        }
        let many = format!(
            r#"{{"code":"1","network":{{"allowedDomains":{}}}}}"#,
            serde_json::to_string(&vec!["a.io"; MAX_REQUESTED_DOMAINS + 1]).unwrap()
        );
        assert_eq!(
            field_error(&many),
            (
                "network.allowedDomains".into(),
                format!("must have at most {MAX_REQUESTED_DOMAINS} entries")
            )
        );
        let most = format!(
            r#"{{"code":"1","network":{{"allowedDomains":{}}}}}"#,
            serde_json::to_string(&vec!["a.io"; MAX_REQUESTED_DOMAINS]).unwrap()
        );
        let allowed = network(&most).and_then(|n| n.allowed_domains);
        assert_eq!(allowed.map(|d| d.len()), Some(MAX_REQUESTED_DOMAINS));
    }

    #[test]
    fn limits_are_positive_integers_with_known_names() {
        let request =
            parse(r#"{"code":"1","limits":{"memoryMb":128,"cpuMs":1e3,"diskMb":null}}"#).unwrap();
        assert_eq!(
            request.limits,
            JobLimits {
                memory_mb: Some(128),
                cpu_ms: Some(1000),
                ..JobLimits::default()
            }
        );
        let all = r#"{"code":"1","limits":{"maxProcesses":8,"outputBytes":10}}"#;
        assert_eq!(parse(all).unwrap().limits.max_processes, Some(8));
        assert_eq!(
            field_error(r#"{"code":"1","limits":{"memoryMb":0}}"#),
            (
                "limits.memoryMb".into(),
                "must be a positive integer".into()
            )
        );
        assert_eq!(
            field_error(r#"{"code":"1","limits":{"cpuMs":"5"}}"#),
            ("limits.cpuMs".into(), "must be a positive integer".into())
        );
        assert_eq!(
            field_error(r#"{"code":"1","limits":{"memroyMb":5}}"#),
            (
                "limits.memroyMb".into(),
                "is not a limit (memoryMb, cpuMs, maxProcesses, diskMb, outputBytes)".into()
            )
        );
        assert_eq!(
            field_error(r#"{"code":"1","limits":[1]}"#),
            ("limits".into(), "must be an object".into())
        );
    }

    #[test]
    fn minimal_request() {
        assert_eq!(
            parse(r#"{"code":"print(2 + 2)"}"#),
            Ok(minimal("print(2 + 2)"))
        );
    }

    #[test]
    fn full_request() {
        let got = parse(
            r#"{"code":"x","timeoutMs":1000,"stdin":"in","fileUploadUrl":"https://up.example/f",
                "uploadToken":"t","public":true}"#,
        )
        .unwrap();
        assert_eq!(
            got,
            ExecuteRequest {
                code: "x".into(),
                timeout_ms: Some(1000),
                stdin: Some("in".into()),
                file_upload_url: Some(UploadUrl {
                    field: "fileUploadUrl",
                    url: Url::parse("https://up.example/f").unwrap()
                }),
                upload_token: Some("t".into()),
                public: Some(true),
                limits: JobLimits::default(),
                files: Vec::new(),
                return_files: false,
                network: None,
            }
        );
    }

    #[test]
    fn body_must_be_a_json_object() {
        for body in ["", "{", "code=1", "{\"code\":\"x\"} trailing", "\u{feff}{}"] {
            assert_eq!(parse(body), Err(ApiError::InvalidJson), "{body:?}");
        }
        for body in ["[]", "\"code\"", "1", "null", "true", "[{\"code\":\"x\"}]"] {
            assert_eq!(parse(body), Err(ApiError::NotAnObject), "{body:?}");
        }
    }

    #[test]
    fn code_rules() {
        let cases = [
            (r#"{}"#, "is required"),
            (r#"{"code":null}"#, "is required"),
            (r#"{"code":""}"#, "must not be empty"),
            (r#"{"code":1}"#, "must be a string"),
            (r#"{"code":["print(1)"]}"#, "must be a string"),
            (r#"{"code":false}"#, "must be a string"),
        ];
        for (body, reason) in cases {
            assert_eq!(field_error(body), ("code".into(), reason.into()), "{body}");
        }
    }

    #[test]
    fn code_is_checked_before_other_fields() {
        assert_eq!(field_error(r#"{"timeoutMs":0}"#).0, "code");
    }

    #[test]
    fn timeout_rules() {
        for bad in [
            "1.5",
            "\"100\"",
            "0",
            "120001",
            "-1",
            "true",
            "{}",
            "1e10",
            "18446744073709551616",
        ] {
            let body = format!(r#"{{"code":"x","timeoutMs":{bad}}}"#);
            assert_eq!(
                field_error(&body),
                (
                    "timeoutMs".into(),
                    "must be an integer from 1 to 120000".into()
                ),
                "{bad}"
            );
        }
        for (good, ms) in [
            ("1", 1),
            ("120000", 120_000),
            ("1000.0", 1000),
            ("1e3", 1000),
        ] {
            let body = format!(r#"{{"code":"x","timeoutMs":{good}}}"#);
            assert_eq!(parse(&body).unwrap().timeout_ms, Some(ms), "{good}");
        }
        assert_eq!(
            parse(r#"{"code":"x","timeoutMs":null}"#)
                .unwrap()
                .timeout_ms,
            None
        );
    }

    #[test]
    fn upload_url_rules() {
        for bad in [
            "\"ftp://example.com/\"",
            "\"example.com/upload\"",
            "\"/upload\"",
            "\"\"",
            "\"http://\"",
            "\"file:///etc/passwd\"",
            "\"javascript:alert(1)\"",
            "42",
        ] {
            for key in ["fileUploadUrl", "file_upload_url"] {
                let body = format!(r#"{{"code":"x","{key}":{bad}}}"#);
                assert_eq!(
                    field_error(&body),
                    (key.into(), "must be an http or https URL".into()),
                    "{body}"
                );
            }
        }
        let url = |body: &str| {
            parse(body)
                .unwrap()
                .file_upload_url
                .map(|u| String::from(u.url))
        };
        assert_eq!(
            url(r#"{"code":"x","file_upload_url":"http://h:8080/u?a=b"}"#).as_deref(),
            Some("http://h:8080/u?a=b")
        );
        assert_eq!(
            url(r#"{"code":"x","fileUploadUrl":"HTTPS://H/u"}"#).as_deref(),
            Some("https://h/u")
        );
    }

    #[test]
    fn upload_token_rules() {
        for key in ["uploadToken", "api_token"] {
            let body = format!(r#"{{"code":"x","{key}":7}}"#);
            assert_eq!(field_error(&body), (key.into(), "must be a string".into()));
            let body = format!(r#"{{"code":"x","{key}":"tok"}}"#);
            assert_eq!(parse(&body).unwrap().upload_token.as_deref(), Some("tok"));
        }
    }

    #[test]
    fn public_rules() {
        for (value, want) in [
            ("true", true),
            ("false", false),
            ("\"true\"", true),
            ("\"false\"", false),
        ] {
            let body = format!(r#"{{"code":"x","public":{value}}}"#);
            assert_eq!(parse(&body).unwrap().public, Some(want), "{value}");
        }
        for bad in ["\"TRUE\"", "\"yes\"", "1", "0", "\"\"", "[]"] {
            let body = format!(r#"{{"code":"x","public":{bad}}}"#);
            assert_eq!(
                field_error(&body),
                ("public".into(), "must be a boolean".into()),
                "{bad}"
            );
        }
    }

    #[test]
    fn stdin_rules() {
        assert_eq!(
            field_error(r#"{"code":"x","stdin":["a"]}"#),
            ("stdin".into(), "must be a string".into())
        );
        assert_eq!(
            parse(r#"{"code":"x","stdin":""}"#)
                .unwrap()
                .stdin
                .as_deref(),
            Some("")
        );
        assert_eq!(parse(r#"{"code":"x","stdin":null}"#).unwrap().stdin, None);
    }

    #[test]
    fn null_counts_as_absent() {
        let body = r#"{"code":"x","timeoutMs":null,"stdin":null,"fileUploadUrl":null,
                       "uploadToken":null,"public":null,"file_upload_url":null,"api_token":null}"#;
        assert_eq!(parse(body), Ok(minimal("x")));
    }

    #[test]
    fn camel_case_wins_over_its_alias() {
        let got = parse(
            r#"{"code":"x","fileUploadUrl":"https://a/","file_upload_url":"not a url",
                "uploadToken":"camel","api_token":5}"#,
        )
        .unwrap();
        assert_eq!(
            got.file_upload_url.map(|u| String::from(u.url)).as_deref(),
            Some("https://a/")
        );
        assert_eq!(got.upload_token.as_deref(), Some("camel"));
    }

    #[test]
    fn a_null_camel_case_key_falls_back_to_the_alias() {
        let got = parse(r#"{"code":"x","uploadToken":null,"api_token":"alias"}"#).unwrap();
        assert_eq!(got.upload_token.as_deref(), Some("alias"));
        assert_eq!(
            field_error(r#"{"code":"x","fileUploadUrl":null,"file_upload_url":1}"#).0,
            "file_upload_url"
        );
    }

    #[test]
    fn the_upload_url_remembers_its_key() {
        let got = parse(r#"{"code":"x","file_upload_url":"http://h/","api_token":"t"}"#).unwrap();
        let (target, token) = got.upload_target().unwrap();
        assert_eq!((target.field, token), ("file_upload_url", "t"));
        let no_token = parse(r#"{"code":"x","fileUploadUrl":"http://h/"}"#).unwrap();
        assert_eq!(no_token.upload_target(), None);
    }

    #[test]
    fn input_files_are_decoded_with_their_paths_checked() {
        let got = parse(
            r#"{"code":"x","files":[{"path":"data/in.csv","contentBase64":"YSxiCg=="},
                {"path":"bin","contentBase64":"AP8"},{"path":"empty","contentBase64":""}]}"#,
        )
        .unwrap();
        let files: Vec<(&str, &[u8])> = got
            .files
            .iter()
            .map(|f| (f.path.as_str(), f.data.as_slice()))
            .collect();
        assert_eq!(
            files,
            [
                ("data/in.csv", b"a,b\n".as_slice()),
                ("bin", &[0, 255]),
                ("empty", b""),
            ]
        );
        let file =
            |path: &str, content: &str| format!(r#"{{"path":{path},"contentBase64":{content}}}"#);
        let cases = [
            ("5".to_owned(), "files", "must be an array"),
            ("[1]".into(), "files[0]", "must be an object"),
            (
                format!("[{}]", file("null", r#""""#)),
                "files[0].path",
                "is required",
            ),
            (
                format!("[{}]", file("7", r#""""#)),
                "files[0].path",
                "must be a string",
            ),
            (
                format!(
                    "[{},{}]",
                    file(r#""ok""#, r#""""#),
                    file(r#""../x""#, r#""""#)
                ),
                "files[1].path",
                "must be a relative path without ..",
            ),
            (
                format!("[{}]", file(r#""/etc/passwd""#, r#""""#)),
                "files[0].path",
                "must be a relative path without ..",
            ),
            (
                format!("[{}]", file(r#""a//b""#, r#""""#)),
                "files[0].path",
                "must not have empty or . components",
            ),
            (
                format!("[{}]", file(r#""a\nb""#, r#""""#)),
                "files[0].path",
                "must not contain control characters",
            ),
            (
                format!("[{}]", file(r#""a""#, "null")),
                "files[0].contentBase64",
                "is required",
            ),
            (
                format!("[{}]", file(r#""a""#, r#""not base64!""#)),
                "files[0].contentBase64",
                "must be valid base64",
            ),
            (
                format!(
                    "[{},{}]",
                    file(r#""a""#, r#""""#),
                    file(r#""a/b""#, r#""""#)
                ),
                "files[1].path",
                "conflicts with files[0].path",
            ),
        ];
        for (files, field, reason) in cases {
            let body = format!(r#"{{"code":"x","files":{files}}}"#);
            assert_eq!(field_error(&body), (field.into(), reason.into()), "{body}");
        }
    }

    #[test]
    fn return_files_is_a_boolean() {
        assert!(
            parse(r#"{"code":"x","returnFiles":true}"#)
                .unwrap()
                .return_files
        );
        assert!(
            !parse(r#"{"code":"x","returnFiles":null}"#)
                .unwrap()
                .return_files
        );
        assert_eq!(
            field_error(r#"{"code":"x","returnFiles":1}"#),
            ("returnFiles".into(), "must be a boolean".into())
        );
    }

    #[test]
    fn unknown_fields_are_ignored() {
        assert_eq!(
            parse(r#"{"code":"x","language":"python","extra":{"a":[1]}}"#),
            Ok(minimal("x"))
        );
    }

    #[test]
    fn a_session_request_may_be_empty_and_shares_the_job_rules() {
        for empty in ["", "  \n", "{}"] {
            assert_eq!(
                OpenSessionRequest::parse(empty.as_bytes()).unwrap(),
                OpenSessionRequest::default()
            );
        }
        let full = br#"{"idleTimeoutMs": 5000, "limits": {"memoryMb": 64}, "network": {"allowedDomains": []}}"#;
        let parsed = OpenSessionRequest::parse(full).unwrap();
        assert_eq!(parsed.idle_timeout_ms, Some(5000));
        assert_eq!(parsed.limits.memory_mb, Some(64));
        assert!(parsed.network.is_some());
        let field = |body: &str| match OpenSessionRequest::parse(body.as_bytes()) {
            Err(ApiError::InvalidField { field, .. }) => field,
            other => panic!("{body}: {other:?}"),
        };
        assert_eq!(field(r#"{"idleTimeoutMs": 0}"#), "idleTimeoutMs");
        assert_eq!(field(r#"{"idleTimeoutMs": "5"}"#), "idleTimeoutMs");
        assert_eq!(field(r#"{"limits": {"memMb": 1}}"#), "limits.memMb");
        assert!(matches!(
            OpenSessionRequest::parse(b"[]"),
            Err(ApiError::NotAnObject)
        ));
        assert!(matches!(
            OpenSessionRequest::parse(b"{"),
            Err(ApiError::InvalidJson)
        ));
    }
}
