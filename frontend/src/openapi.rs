//! `GET /openapi.json`: the OpenAPI 3.1 document of the HTTP API, generated with
//! `utoipa` from the response types themselves and from the `#[utoipa::path]`
//! annotations on the handlers in [`crate::routes`].
//!
//! The request body is parsed by hand ([`crate::request`]: exact messages, seed
//! aliases, `null` as absent), so its schema is described here by types that exist
//! only for it; the tests below hold them to what the parser really accepts.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::path::{HttpMethod, OperationBuilder, PathItem};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ContentBuilder, RefOr, ResponseBuilder, Schema, SecurityRequirement};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::response::{ExecuteResponse, ViolationBody};
use crate::stream::{ErrorData, TextData, TruncatedData};

/// The document: every route there is.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "pysandbox",
        description = "Runs untrusted Python in a fresh sandbox per job and returns what it \
                       printed, its exit status, the figures it showed and the files it made."
    ),
    paths(
        crate::routes::execute,
        crate::routes::health,
        crate::routes::metrics,
        openapi_json,
        crate::sessions::create,
        crate::sessions::describe,
        crate::sessions::close,
        crate::sessions::execute
    ),
    components(schemas(StreamEvent, LimitName, ErrorBody)),
    modifiers(&Security, &Mcp),
    tags(
        (name = "jobs", description = "Running Python"),
        (name = "sessions", description = "An interpreter that keeps its variables and files across calls"),
        (name = "operations", description = "Health, metrics and this document")
    )
)]
struct ApiDoc;

/// The name of the security scheme of the job token (`AUTH_TOKEN`); the handlers'
/// annotations spell it out (a test checks they name only schemes defined here).
const JOB_TOKEN: &str = "jobToken";

/// The name of the security scheme of `METRICS_TOKEN`.
const METRICS_TOKEN: &str = "metricsToken";

/// Adds the two bearer schemes the paths refer to.
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for (name, what) in [
            (JOB_TOKEN, "AUTH_TOKEN: the token that runs jobs."),
            (
                METRICS_TOKEN,
                "METRICS_TOKEN, only when the operator set one: the job token never opens /metrics.",
            ),
        ] {
            let mut scheme = Http::new(HttpAuthScheme::Bearer);
            scheme.description = Some(what.to_owned());
            components.add_security_scheme(name, SecurityScheme::Http(scheme));
        }
    }
}

/// `POST /mcp`, the Model Context Protocol endpoint.
///
/// Built by hand: the route is the MCP SDK's service behind `/execute`'s gate
/// (`crate::mcp`), no handler a `#[utoipa::path]` could sit on. JSON-RPC 2.0 over
/// streamable HTTP, stateless, the job token.
struct Mcp;

impl Modify for Mcp {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let json_rpc = || {
            ContentBuilder::new()
                .schema(Some(ObjectBuilder::new().description(Some(
                    "A JSON-RPC 2.0 message of MCP (one object: batches are refused).",
                ))))
                .build()
        };
        let operation = OperationBuilder::new()
            .tag("jobs")
            .operation_id(Some("mcp"))
            .summary(Some("Model Context Protocol server (streamable HTTP, stateless)"))
            .description(Some(
                "Tools: run_python (a fresh sandbox per call: nothing is kept), and create_session, run_in_session and end_session (one interpreter that keeps variables, imports and files between calls).",
            ))
            .request_body(Some(
                RequestBodyBuilder::new()
                    .content("application/json", json_rpc())
                    .required(Some(utoipa::openapi::Required::True))
                    .build(),
            ))
            .response(
                "200",
                ResponseBuilder::new()
                    .description("The JSON-RPC answer, as JSON or as a one-event SSE stream.")
                    .content("application/json", json_rpc())
                    .content("text/event-stream", ContentBuilder::new().build()),
            )
            .response(
                "400",
                error_response("Not JSON, not one object (a batch), or a key twice outside the tool's arguments."),
            )
            .response(
                "401",
                error_response("No `Authorization: Bearer` header, or a wrong token (MCP wants 401 for both); with `WWW-Authenticate: Bearer`."),
            )
            .response("413", error_response("The body is over `MAX_BODY_BYTES`."))
            .security(SecurityRequirement::new(JOB_TOKEN, Vec::<String>::new()))
            .build();
        openapi.paths.paths.insert(
            "/mcp".to_owned(),
            PathItem::new(HttpMethod::Post, operation),
        );
    }
}

fn error_response(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                    "ErrorBody",
                ))))
                .build(),
        )
        .build()
}

/// The document as JSON, made once.
fn document() -> &'static [u8] {
    static JSON: OnceLock<Vec<u8>> = OnceLock::new();
    JSON.get_or_init(|| {
        ApiDoc::openapi()
            .to_pretty_json()
            .map(String::into_bytes)
            .unwrap_or_default()
    })
}

/// The OpenAPI 3.1 document of this API.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    operation_id = "openapi",
    security(()),
    responses(
        (status = 200, description = "This document.", content_type = "application/json"),
        (status = 503, description = "Every connection slot is taken.", body = ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait before trying again."))),
    )
)]
pub(crate) async fn openapi_json() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], document()).into_response()
}

/// The body of `POST /execute`. A `null` field counts as absent; unknown fields are
/// ignored; a key given twice in one object is refused (400). Whether a limit, an
/// input file or a domain is within the executor's configuration is its to say
/// (400 naming the field and the maximum).
#[derive(ToSchema)]
#[schema(as = ExecuteRequest)]
#[serde(rename_all = "camelCase")]
#[allow(
    dead_code,
    reason = "exists for its schema only; the parser is request.rs"
)]
pub(crate) struct ExecuteBody {
    /// Python source, run as `__main__` with cwd `/work`.
    #[schema(min_length = 1)]
    code: String,
    /// Wall-clock limit in milliseconds, counted from the moment the job leaves the
    /// executor's queue; default: the executor's `default_timeout_ms`. `1000.0` is an
    /// integer too.
    #[schema(minimum = 1, maximum = 120000)]
    timeout_ms: Option<u32>,
    /// The job's standard input; without it, stdin reads EOF at once.
    stdin: Option<String>,
    /// Lower any limit for this job.
    limits: Option<LimitsBody>,
    /// Network access for this job, within the executor's configured domains.
    network: Option<NetworkBody>,
    /// Where produced files are POSTed (only when `uploadToken` is given too).
    #[schema(format = "uri")]
    file_upload_url: Option<String>,
    /// The seed's name of `fileUploadUrl`; `fileUploadUrl` wins when both are given.
    #[serde(rename = "file_upload_url")]
    #[schema(format = "uri", deprecated)]
    file_upload_url_alias: Option<String>,
    /// Bearer token for the upload endpoint.
    upload_token: Option<String>,
    /// The seed's name of `uploadToken`; `uploadToken` wins when both are given.
    #[serde(rename = "api_token")]
    #[schema(deprecated)]
    api_token: Option<String>,
    /// Passed to the upload endpoint as `?public=`; the seed's strings `"true"` and
    /// `"false"` are accepted too.
    #[schema(schema_with = public_flag)]
    public: Option<bool>,
    /// Input files written into the work dir before the job starts; no two paths
    /// may collide (`a` and `a/b`).
    files: Option<Vec<InputFileBody>>,
    /// Also return the produced files in the response, base64-encoded.
    #[schema(schema_with = return_files_flag)]
    return_files: Option<bool>,
}

/// `public`: a boolean, `"true"`, `"false"` or `null`, as `request::boolean` reads it.
fn public_flag() -> Schema {
    seed_boolean(
        "Passed to the upload endpoint as `?public=`; the seed's strings \"true\" and \"false\" \
         are accepted too.",
    )
}

/// `returnFiles`: read like `public`.
fn return_files_flag() -> Schema {
    seed_boolean("Also return the produced files in the response, base64-encoded.")
}

/// A boolean, the seed's strings `"true"` and `"false"`, or `null`.
fn seed_boolean(description: &str) -> Schema {
    OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::Boolean))
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(["true", "false"])),
        )
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .description(Some(description))
        .into()
}

/// Limits for one job; each may only lower the executor's maximum. Unknown names are
/// refused, so a misspelt limit is never silently ignored.
#[derive(ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(
    dead_code,
    reason = "exists for its schema only; the parser is request.rs"
)]
pub(crate) struct LimitsBody {
    /// Memory of all the job's processes together, in MiB.
    #[schema(minimum = 1, maximum = 4294967295.0)]
    memory_mb: Option<u32>,
    /// CPU time of all its processes, in milliseconds.
    #[schema(minimum = 1, maximum = 4294967295.0)]
    cpu_ms: Option<u32>,
    /// Processes and threads at once.
    #[schema(minimum = 1, maximum = 4294967295.0)]
    max_processes: Option<u32>,
    /// Size of the work dir, in MiB.
    #[schema(minimum = 1, maximum = 4294967295.0)]
    disk_mb: Option<u32>,
    /// Bytes of stdout and of stderr kept, each.
    #[schema(minimum = 1, maximum = 4294967295.0)]
    output_bytes: Option<u32>,
}

/// `POST /sessions`: every field optional, the body too. `limits` and `network`
/// follow `/execute`'s rules; memory, processes and disk hold for the whole
/// session, CPU time and output are each call's default; the network holds for the
/// whole session (the ask callback is not asked on its behalf).
#[derive(ToSchema)]
#[schema(as = OpenSessionRequest)]
#[serde(rename_all = "camelCase")]
#[allow(
    dead_code,
    reason = "exists for its schema only; the parser is request.rs"
)]
pub(crate) struct OpenSessionBody {
    /// How long the session may sit unused before it ends; default and maximum are
    /// the executor's `session_idle_timeout_ms` and `session_max_idle_timeout_ms`.
    #[schema(minimum = 1000)]
    idle_timeout_ms: Option<u32>,
    limits: Option<LimitsBody>,
    network: Option<NetworkBody>,
}

/// Network access for one job.
#[derive(ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(
    dead_code,
    reason = "exists for its schema only; the parser is request.rs"
)]
pub(crate) struct NetworkBody {
    /// Only these of the configured domains (`example.com`, `*.example.com`); `[]`:
    /// no network; absent or `null`: all the configured domains.
    #[schema(max_items = 256)]
    allowed_domains: Option<Vec<String>>,
}

/// A file to place in the work dir.
#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(
    dead_code,
    reason = "exists for its schema only; the parser is request.rs"
)]
pub(crate) struct InputFileBody {
    /// Relative, without `..`, `.` or empty components or control characters, at
    /// most 16 levels and 4096 bytes.
    #[schema(min_length = 1, max_length = 4096)]
    path: String,
    /// The content, standard base64 with or without padding.
    #[schema(content_encoding = "base64")]
    content_base64: String,
}

/// The `200` body of `POST /execute` (and the data of the `result` event): the job's
/// outcome, then the figures it showed and, when asked for, the files it made, in
/// the order `response::render` writes them.
#[derive(ToSchema)]
#[schema(as = ExecuteResult)]
#[serde(rename_all = "camelCase")]
#[allow(
    dead_code,
    reason = "exists for its schema only; render writes the body"
)]
pub(crate) struct ExecuteResult {
    #[serde(flatten)]
    response: ExecuteResponse,
    /// Figures shown, then those left open, in order.
    displays: Vec<DisplayBody>,
    /// The produced files; only with `returnFiles`.
    #[serde(skip_serializing_if = "Option::is_none")]
    files: Option<Vec<ReturnedFile>>,
}

/// A figure the job showed.
#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(
    dead_code,
    reason = "exists for its schema only; render writes the body"
)]
pub(crate) struct DisplayBody {
    /// Always `image/png`.
    #[schema(example = "image/png")]
    content_type: String,
    /// The PNG, standard base64 with padding.
    #[schema(content_encoding = "base64", content_media_type = "image/png")]
    content_base64: String,
}

/// A produced file returned inline (`returnFiles`).
#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(
    dead_code,
    reason = "exists for its schema only; render writes the body"
)]
pub(crate) struct ReturnedFile {
    /// Its path relative to the work dir.
    path: String,
    /// Its size in bytes.
    size: u64,
    /// Its MIME type, guessed from the extension.
    content_type: String,
    /// Its bytes, standard base64 with padding.
    #[schema(content_encoding = "base64")]
    content_base64: String,
}

/// Every error: `{"error": "..."}`, with `field` naming the key the client used
/// when one field is wrong. 429 and 503 come with `Retry-After`.
#[derive(ToSchema)]
#[allow(
    dead_code,
    reason = "exists for its schema only; ApiError writes the body"
)]
pub(crate) struct ErrorBody {
    /// What went wrong, e.g. `timeoutMs: must be an integer from 1 to 120000`.
    error: String,
    /// The request key at fault, e.g. `files[2].path` (400 only).
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<String>,
}

/// Which limit stopped or cut a job.
#[derive(ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code, reason = "exists for its schema only")]
pub(crate) enum LimitName {
    /// Killed by the OOM killer at the memory limit.
    Memory,
    /// Killed at the wall-clock limit.
    Time,
    /// Killed at the CPU time limit.
    Cpu,
    /// Refused a process or thread at the limit.
    Processes,
    /// Wrote past the work dir's size or inode limit.
    Disk,
    /// Output cut at the output cap.
    Output,
}

/// One event of `POST /execute` answered as `text/event-stream`, shown as the
/// object `{"event": name, "data": JSON}`: on the wire it is `event: <name>`,
/// `data: <JSON on one line>`, a blank line. `result` (or, after a failure once
/// the stream began, `error`) is always the last; `: keep-alive` comments come
/// while the job is silent.
#[derive(ToSchema)]
#[serde(tag = "event", content = "data", rename_all = "lowercase")]
#[allow(
    dead_code,
    reason = "exists for its schema only; stream.rs writes the events"
)]
pub(crate) enum StreamEvent {
    /// A chunk the job wrote to stdout, as it wrote it.
    Stdout(TextData),
    /// A chunk the job wrote to stderr.
    Stderr(TextData),
    /// A stream passed its cap; the rest of it is dropped.
    Truncated(TruncatedData),
    /// A figure was shown.
    Display(DisplayBody),
    /// The egress proxy refused a request.
    Violation(ViolationBody),
    /// Exactly the body of the same call without streaming.
    Result(Box<ExecuteResult>),
    /// The job failed after the stream began.
    Error(ErrorData),
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use pysandbox_shared::{JobLimits, MAX_REQUESTED_DOMAINS, MAX_TIMEOUT_MS};
    use serde_json::{json, Value};

    use super::*;
    use crate::request::ExecuteRequest;
    use crate::ApiError;

    fn doc() -> Value {
        serde_json::from_slice(document()).unwrap()
    }

    fn schema(name: &str) -> Value {
        doc()["components"]["schemas"][name].clone()
    }

    fn properties(name: &str) -> BTreeSet<String> {
        schema(name)["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    }

    fn field_error(body: &Value) -> String {
        match ExecuteRequest::parse(body.to_string().as_bytes()) {
            Err(ApiError::InvalidField { field, .. }) => field,
            other => panic!("{body}: expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn every_route_is_documented_and_nothing_else() {
        let doc = doc();
        assert_eq!(doc["openapi"], "3.1.0");
        let documented: BTreeSet<&str> = doc["paths"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let served: BTreeSet<&str> = crate::routes::ROUTES.into_iter().collect();
        assert_eq!(documented, served);
    }

    #[test]
    fn every_security_requirement_names_a_scheme() {
        let doc = doc();
        let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
        assert_eq!(
            schemes.keys().map(String::as_str).collect::<Vec<_>>(),
            [JOB_TOKEN, METRICS_TOKEN]
        );
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                let security = operation["security"].as_array();
                let security = security.unwrap_or_else(|| panic!("{method} {path}: no security"));
                for requirement in security {
                    for name in requirement.as_object().unwrap().keys() {
                        assert!(schemes.contains_key(name), "{method} {path}: {name}");
                    }
                }
            }
        }
    }

    #[test]
    fn every_429_and_503_says_retry_after() {
        let doc = doc();
        let mut seen = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                for status in ["429", "503"] {
                    let response = &operation["responses"][status];
                    if !response.is_null() {
                        seen += 1;
                        assert!(
                            response["headers"]["Retry-After"].is_object(),
                            "{method} {path} {status}"
                        );
                    }
                }
            }
        }
        assert!(seen >= 4, "{seen}");
    }

    #[test]
    fn bounds_are_the_parsers() {
        let request = schema("ExecuteRequest");
        assert_eq!(request["required"], json!(["code"]));
        assert_eq!(request["properties"]["code"]["minLength"], 1);
        assert_eq!(request["properties"]["timeoutMs"]["minimum"], 1);
        assert_eq!(
            request["properties"]["timeoutMs"]["maximum"],
            json!(MAX_TIMEOUT_MS)
        );
        let network = schema("NetworkBody");
        assert_eq!(
            network["properties"]["allowedDomains"]["maxItems"],
            json!(MAX_REQUESTED_DOMAINS)
        );
        assert_eq!(network["additionalProperties"], false);
        let limits = schema("LimitsBody");
        assert_eq!(limits["additionalProperties"], false);
        for (name, limit) in limits["properties"].as_object().unwrap() {
            assert_eq!(limit["minimum"], 1, "{name}");
            assert_eq!(
                limit["maximum"].as_f64(),
                Some(f64::from(u32::MAX)),
                "{name}"
            );
        }
        // Unknown top-level keys are ignored, so they must not be refused here either.
        assert!(request.get("additionalProperties").is_none());
    }

    /// Each documented key is one the parser reads: a wrong value under it is a
    /// 400 naming it.
    #[test]
    fn the_parser_reads_every_documented_key() {
        for key in properties("ExecuteRequest") {
            let mut body = json!({"code": "x"});
            body[&key] = json!([7]);
            let field = field_error(&body);
            assert!(field.starts_with(&key), "{key}: the parser named {field}");
        }
        // Unknown keys are refused in these two, so a good value must pass.
        for key in properties("LimitsBody") {
            let good = json!({"code": "x", "limits": {&key: 1}});
            assert!(
                ExecuteRequest::parse(good.to_string().as_bytes()).is_ok(),
                "{key}"
            );
            let body = json!({"code": "x", "limits": {&key: 0}});
            assert_eq!(field_error(&body), format!("limits.{key}"));
        }
        for key in properties("NetworkBody") {
            let good = json!({"code": "x", "network": {&key: []}});
            assert!(
                ExecuteRequest::parse(good.to_string().as_bytes()).is_ok(),
                "{key}"
            );
            let body = json!({"code": "x", "network": {&key: 7}});
            assert_eq!(field_error(&body), format!("network.{key}"));
        }
        for key in properties("InputFileBody") {
            let mut file = json!({"path": "a", "contentBase64": ""});
            file[&key] = json!(7);
            let body = json!({"code": "x", "files": [file]});
            assert_eq!(field_error(&body), format!("files[0].{key}"));
        }
    }

    /// Every field of the parsed request comes from a documented key: adding a
    /// field to `ExecuteRequest` breaks the pattern below until its key is in the
    /// schema and set here.
    #[test]
    fn every_request_field_has_a_documented_key() {
        let limits: serde_json::Map<String, Value> = properties("LimitsBody")
            .into_iter()
            .map(|key| (key, json!(1)))
            .collect();
        let body = json!({
            "code": "x",
            "timeoutMs": 1,
            "stdin": "in",
            "fileUploadUrl": "https://up.example/",
            "uploadToken": "t",
            "public": true,
            "limits": limits,
            "files": [{"path": "a", "contentBase64": ""}],
            "returnFiles": true,
            "network": {"allowedDomains": []},
        });
        let documented = properties("ExecuteRequest");
        for key in body.as_object().unwrap().keys() {
            assert!(documented.contains(key), "{key} is not documented");
        }
        let ExecuteRequest {
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
        } = ExecuteRequest::parse(body.to_string().as_bytes()).unwrap();
        assert_eq!(code, "x");
        assert!(timeout_ms.is_some() && stdin.is_some() && public.is_some());
        assert!(file_upload_url.is_some() && upload_token.is_some());
        assert!(!files.is_empty() && return_files && network.is_some());
        let JobLimits {
            memory_mb,
            cpu_ms,
            max_processes,
            disk_mb,
            output_bytes,
        } = limits;
        for (i, limit) in [memory_mb, cpu_ms, max_processes, disk_mb, output_bytes]
            .into_iter()
            .enumerate()
        {
            assert_eq!(limit, Some(1), "limit {i} has no documented key");
        }
        // The seed's aliases are documented, and read.
        let alias = json!({"code": "x", "file_upload_url": "http://h/", "api_token": "t"});
        assert!(documented.contains("file_upload_url") && documented.contains("api_token"));
        let parsed = ExecuteRequest::parse(alias.to_string().as_bytes()).unwrap();
        assert!(parsed.upload_target().is_some());
    }

    #[test]
    fn limit_names_are_the_executors() {
        let names: Vec<String> =
            serde_json::from_value(schema("LimitName")["enum"].clone()).unwrap();
        use pysandbox_shared::LimitKind::*;
        let kinds = [Memory, Time, Cpu, Processes, Disk, Output].map(|k| k.as_str());
        assert_eq!(names, kinds);
    }

    #[test]
    fn every_stream_event_is_documented() {
        let events: Vec<Value> = schema("StreamEvent")["oneOf"]
            .as_array()
            .unwrap()
            .iter()
            .map(|event| event["properties"]["event"]["enum"][0].clone())
            .collect();
        assert_eq!(
            events,
            json!([
                "stdout",
                "stderr",
                "truncated",
                "display",
                "violation",
                "result",
                "error"
            ])
            .as_array()
            .unwrap()
            .clone()
        );
    }
}
