//! Uploading a job's produced files to the caller's file service.
//!
//! Each file is POSTed as multipart field `file`, its filename the path relative to
//! the work dir, with `Authorization: Bearer <uploadToken>` and `?public=` when the
//! caller gave it; a few at a time, each within a timeout, all within a budget. The
//! URL in the answer is read from its JSON (`url`, `data.url` or `file.url`). A
//! failed upload is an entry with an error, never a failed request.
//!
//! The frontend must not become a way to reach what its caller could not (SSRF):
//! redirects are not followed, and unless the host is listed in
//! `UPLOAD_ALLOWED_HOSTS`, the host is resolved here, refused if any address is
//! not public or is this host's own (see [`crate::upload_policy`]), and the
//! connection goes to exactly the addresses checked — the client resolves nothing
//! by itself, so a DNS answer cannot change between check and connect.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use pysandbox_shared::text::{is_unsafe_to_show, shown};
use pysandbox_shared::SkippedFile;
use reqwest::dns::{Name, Resolve, Resolving};
use reqwest::multipart::{Form, Part};
use reqwest::redirect::Policy;
use serde_json::Value;
use tokio::time::Instant;
use tracing::{debug, warn};
use url::{Host, Url};

use crate::response::Upload;
use crate::routes::MAX_LOGGED_CHARS;
use crate::spool::Produced;
use crate::upload_policy::{interface_addresses, refusal, AllowedHosts};

/// The most of an upload service's answer that is read, looking for the URL.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The longest URL taken from an upload service's answer (it is reflected to the
/// client, once per file: security-2 F10).
const MAX_URL_CHARS: usize = 2048;

/// How uploads are made.
#[derive(Debug, Clone)]
pub struct UploadConfig {
    /// Time one upload may take, from connecting to the end of the answer.
    pub timeout: Duration,
    /// Uploads of one job's files at once.
    pub concurrency: usize,
    /// Time all uploads of one job's files may take together.
    pub budget: Duration,
    /// Hosts uploads may go to; see [`AllowedHosts`].
    pub allowed: AllowedHosts,
}

/// Uploads produced files as configured.
#[derive(Debug, Clone)]
pub struct Uploader {
    config: UploadConfig,
}

/// Where one job's files go, and how to reach it.
#[derive(Debug)]
struct Target {
    url: Url,
    client: reqwest::Client,
}

impl Uploader {
    /// An uploader with `config`.
    pub fn new(config: UploadConfig) -> Self {
        Uploader { config }
    }

    /// The uploads policy, for checking requests.
    pub fn allowed_hosts(&self) -> &AllowedHosts {
        &self.config.allowed
    }

    /// Uploads `files` to `url` and returns one entry per file, then one per entry of
    /// `skipped`, in that order.
    pub async fn upload(
        &self,
        url: &Url,
        token: &str,
        public: Option<bool>,
        files: &[Produced],
        skipped: &[SkippedFile],
    ) -> Vec<Upload> {
        let deadline = Instant::now() + self.config.budget;
        let mut uploads: Vec<Upload> = if files.is_empty() {
            // Nothing to send: not even a DNS lookup.
            Vec::new()
        } else {
            match self.target(url, public).await {
                Ok(target) => {
                    // Owned items (cheap: a path and an `Arc`): with borrowed ones, the compiler
                    // cannot prove the handler's future Send for every lifetime.
                    futures::stream::iter(files.to_vec())
                        .map(|file| self.upload_one(&target, token, file, deadline))
                        .buffered(self.config.concurrency)
                        .collect()
                        .await
                }
                Err(reason) => {
                    warn!(
                        host = shown(url.host_str().unwrap_or_default(), MAX_LOGGED_CHARS),
                        "uploads refused: {}",
                        shown(&reason, MAX_LOGGED_CHARS)
                    );
                    files
                        .iter()
                        .map(|file| failed(&file.path, 0, reason.clone()))
                        .collect()
                }
            }
        };
        uploads.extend(
            skipped
                .iter()
                .map(|s| failed(&s.path, 0, format!("skipped: {}", s.reason))),
        );
        uploads
    }

    /// The URL with `?public=`, and a client that reaches only addresses that passed
    /// the policy; or why nothing may be uploaded there.
    async fn target(&self, url: &Url, public: Option<bool>) -> Result<Target, String> {
        let mut url = url.clone();
        if let Some(public) = public {
            url.query_pairs_mut()
                .append_pair("public", if public { "true" } else { "false" });
        }
        let host = url.host().ok_or("the upload URL has no host")?;
        // Looked up once here, within the upload timeout, for listed hosts too: the
        // client then connects to these addresses and resolves nothing itself.
        let addrs = self.resolve(&url, &host).await?;
        if !self.config.allowed.contains(&host) {
            Self::check_addrs(&host, &addrs)?;
        }
        let client = self.client(&host, &addrs).map_err(|e| {
            warn!("cannot build the upload client: {e}");
            "internal error preparing the upload".to_owned()
        })?;
        Ok(Target { url, client })
    }

    /// A client that follows no redirect, uses no proxy and resolves no name by
    /// itself: it reaches `host` (when a name) at exactly `pinned`, and nothing else
    /// at all.
    fn client(&self, host: &Host<&str>, pinned: &[SocketAddr]) -> reqwest::Result<reqwest::Client> {
        let builder = outbound_client()
            .connect_timeout(self.config.timeout)
            .dns_resolver(Arc::new(NoResolver));
        let builder = match host {
            Host::Domain(name) => builder.resolve_to_addrs(name, pinned),
            Host::Ipv4(_) | Host::Ipv6(_) => builder,
        };
        builder.build()
    }

    /// The host's addresses, looked up within the upload timeout.
    async fn resolve(&self, url: &Url, host: &Host<&str>) -> Result<Vec<SocketAddr>, String> {
        let port = url.port_or_known_default().unwrap_or(80);
        let addrs: Vec<SocketAddr> = match host {
            Host::Ipv4(ip) => vec![SocketAddr::new((*ip).into(), port)],
            Host::Ipv6(ip) => vec![SocketAddr::new((*ip).into(), port)],
            Host::Domain(name) => {
                let lookup = tokio::net::lookup_host((*name, port));
                match tokio::time::timeout(self.config.timeout, lookup).await {
                    Ok(Ok(addrs)) => addrs.collect(),
                    Ok(Err(e)) => return Err(format!("cannot resolve {name}: {e}")),
                    Err(_) => return Err(format!("cannot resolve {name}: timed out")),
                }
            }
        };
        if addrs.is_empty() {
            return Err(format!("cannot resolve {host}: no addresses"));
        }
        Ok(addrs)
    }

    /// Why `host`, at `addrs`, may not be uploaded to: one of its addresses is not
    /// a public one (README's upload policy).
    fn check_addrs(host: &Host<&str>, addrs: &[SocketAddr]) -> Result<(), String> {
        let own = interface_addresses().map_err(|e| {
            warn!("cannot read this host's interface addresses: {e}");
            "upload refused: this host's addresses cannot be checked".to_owned()
        })?;
        for addr in addrs {
            let ip = addr.ip();
            if let Some(why) = refusal(ip, &own) {
                let hint = "list the host in UPLOAD_ALLOWED_HOSTS to open a private file service";
                return Err(match host {
                    Host::Domain(name) => {
                        format!("upload refused: {name} resolves to {ip}, {why}; {hint}")
                    }
                    _ => format!("upload refused: {ip} is {why}; {hint}"),
                });
            }
        }
        Ok(())
    }

    async fn upload_one(
        &self,
        target: &Target,
        token: &str,
        file: Produced,
        deadline: Instant,
    ) -> Upload {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return failed(&file.path, 0, self.budget_used_up());
        }
        let limit = left.min(self.config.timeout);
        let body = reqwest::Body::wrap_stream(file.chunks());
        let part = Part::stream_with_length(body, file.size())
            .file_name(header_filename(&file.path))
            .mime_str(file.content_type());
        let part = match part {
            Ok(part) => part,
            Err(e) => return failed(&file.path, 0, format!("upload failed: {e}")),
        };
        let form = Form::new().percent_encode_noop().part("file", part);
        let request = target
            .client
            .post(target.url.clone())
            .bearer_auth(token)
            .header(reqwest::header::ACCEPT, "application/json")
            .multipart(form);
        let exchange = async {
            let response = request.send().await?;
            let status = response.status();
            let answer = read_capped(response, MAX_ANSWER_BYTES).await?;
            Ok::<_, reqwest::Error>((status, answer))
        };
        let (status, answer) = match tokio::time::timeout(limit, exchange).await {
            Ok(Ok(answered)) => answered,
            Ok(Err(e)) => return failed(&file.path, 0, describe(&e)),
            Err(_) if limit < self.config.timeout => {
                return failed(&file.path, 0, self.budget_used_up())
            }
            Err(_) => {
                let ms = self.config.timeout.as_millis();
                return failed(&file.path, 0, format!("upload timed out after {ms} ms"));
            }
        };
        let code = status.as_u16();
        if status.is_redirection() {
            return failed(
                &file.path,
                code,
                format!(
                    "the upload service answered HTTP {code}, a redirect, which is not followed"
                ),
            );
        }
        if !status.is_success() {
            return failed(
                &file.path,
                code,
                format!("the upload service answered HTTP {code}"),
            );
        }
        let Some(answer) = answer else {
            return failed(
                &file.path,
                code,
                format!("the upload service's answer is larger than {MAX_ANSWER_BYTES} bytes"),
            );
        };
        let url = match url_in_answer(&answer) {
            Ok(url) => url,
            Err(reason) => return failed(&file.path, code, reason),
        };
        if url.is_none() {
            debug!(
                file = shown(&file.path, MAX_LOGGED_CHARS),
                "the upload service's answer names no URL"
            );
        }
        Upload {
            filename: file.path.clone(),
            url,
            status: code,
            error: None,
        }
    }

    fn budget_used_up(&self) -> String {
        format!(
            "upload budget of {} ms used up before this file finished",
            self.config.budget.as_millis()
        )
    }
}

/// The start of every outbound HTTP client of the frontend (uploads, the ask
/// callback): it follows no redirect, since a redirect could send the request (and
/// its bearer token) where nobody checked, and uses no proxy from the environment.
pub(crate) fn outbound_client() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .redirect(Policy::none())
        // A proxy would make the connection, to an address we never checked.
        .no_proxy()
}

/// The body of `response`, or `None` when it is larger than `max` bytes (never
/// buffered past them).
pub(crate) async fn read_capped(
    mut response: reqwest::Response,
    max: usize,
) -> reqwest::Result<Option<Vec<u8>>> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > max {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// A resolver that resolves nothing: the client may only connect to addresses set
/// with `resolve_to_addrs`, which passed the policy.
struct NoResolver;

impl Resolve for NoResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let message = format!(
            "{} was not checked against the upload policy",
            name.as_str()
        );
        Box::pin(async move { Err(message.into()) })
    }
}

impl fmt::Debug for NoResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NoResolver")
    }
}

fn failed(path: &str, status: u16, error: String) -> Upload {
    Upload {
        filename: path.to_owned(),
        url: None,
        status,
        error: Some(error),
    }
}

/// The filename as the multipart header carries it: raw UTF-8 with `"` escaped as
/// `%22`, as browsers send it (WHATWG HTML, multipart/form-data encoding). Produced
/// paths never hold control characters, so no CR or LF can reach the header.
fn header_filename(path: &str) -> String {
    path.replace('"', "%22")
}

/// What went wrong with an upload, for its entry: the kind and the innermost cause.
fn describe(e: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(source) = cause.source() {
        cause = source;
    }
    let what = if e.is_connect() {
        "cannot connect to the upload service"
    } else if e.is_timeout() {
        "the upload timed out"
    } else {
        "the upload failed"
    };
    format!("{what}: {cause}")
}

/// The URL in an upload service's JSON answer: `url`, `data.url` or `file.url`;
/// `None` when it names none. A URL that is not http(s), is longer than
/// [`MAX_URL_CHARS`] or holds whitespace or characters unsafe to show is refused
/// with the reason: it would be handed to the client as a link.
pub fn url_in_answer(answer: &[u8]) -> Result<Option<String>, String> {
    let Ok(json) = serde_json::from_slice::<Value>(answer) else {
        return Ok(None);
    };
    let Some(url) = [&json["url"], &json["data"]["url"], &json["file"]["url"]]
        .into_iter()
        .find_map(|v| v.as_str().filter(|s| !s.is_empty()))
    else {
        return Ok(None);
    };
    let refused = |why: &str| Err(format!("the upload service answered a URL that {why}"));
    if url.chars().count() > MAX_URL_CHARS {
        return refused(&format!("is longer than {MAX_URL_CHARS} characters"));
    }
    // The parser drops tabs and newlines; the URL handed on is the text checked.
    if url
        .chars()
        .any(|c| c.is_whitespace() || is_unsafe_to_show(c))
    {
        return refused("holds whitespace or control characters");
    }
    match Url::parse(url) {
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => Ok(Some(url.to_owned())),
        _ => refused("is not an http(s) URL"),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_url_comes_from_url_data_url_or_file_url() {
        let cases: [(&str, Option<&str>); 10] = [
            (r#"{"url":"https://f/1"}"#, Some("https://f/1")),
            (r#"{"url":"HTTP://F/x?y#z"}"#, Some("HTTP://F/x?y#z")),
            (r#"{"data":{"url":"https://f/2"}}"#, Some("https://f/2")),
            (r#"{"file":{"url":"https://f/3"}}"#, Some("https://f/3")),
            (
                r#"{"url":"https://a","data":{"url":"https://b"}}"#,
                Some("https://a"),
            ),
            (r#"{"url":5,"file":{"url":"https://c"}}"#, Some("https://c")),
            (r#"{"url":""}"#, None),
            (r#"{"link":"https://f"}"#, None),
            (r#"["https://f"]"#, None),
            ("<html>", None),
        ];
        for (answer, url) in cases {
            assert_eq!(
                url_in_answer(answer.as_bytes()),
                Ok(url.map(str::to_owned)),
                "{answer}"
            );
        }
    }

    #[test]
    fn only_short_http_urls_are_taken_from_the_answer() {
        let long = format!("https://f/{}", "a".repeat(MAX_URL_CHARS));
        for (url, why) in [
            (
                "javascript:alert(document.domain)//",
                "is not an http(s) URL",
            ),
            ("data:text/html,<script>x</script>", "is not an http(s) URL"),
            ("file:///etc/passwd", "is not an http(s) URL"),
            ("/relative/path", "is not an http(s) URL"),
            (
                "java\tscript:alert(1)",
                "holds whitespace or control characters",
            ),
            (
                "https://f/\u{202e}gnp.exe",
                "holds whitespace or control characters",
            ),
            ("https://f/a\nb", "holds whitespace or control characters"),
            (long.as_str(), "is longer than 2048 characters"),
        ] {
            for answer in [
                json!({ "url": url }),
                json!({ "data": { "url": url } }),
                json!({ "file": { "url": url } }),
            ] {
                assert_eq!(
                    url_in_answer(answer.to_string().as_bytes()),
                    Err(format!("the upload service answered a URL that {why}")),
                    "{answer}"
                );
            }
        }
        let longest = format!("https://f/{}", "a".repeat(MAX_URL_CHARS - 10));
        let answer = json!({ "url": longest }).to_string();
        assert_eq!(url_in_answer(answer.as_bytes()), Ok(Some(longest)));
    }

    fn uploader(allowed: &str) -> Uploader {
        Uploader::new(UploadConfig {
            timeout: Duration::from_secs(5),
            concurrency: 2,
            budget: Duration::from_secs(10),
            allowed: allowed.parse().unwrap(),
        })
    }

    fn produced(path: &str) -> Produced {
        crate::spool::produced(path, b"x")
    }

    /// A listener that counts the connections it accepts.
    async fn counting_listener() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = Arc::clone(&count);
        tokio::spawn(async move {
            while let Ok((_stream, _)) = listener.accept().await {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
        (addr, count)
    }

    #[tokio::test]
    async fn refused_addresses_are_never_connected_to() {
        let (addr, connections) = counting_listener().await;
        let port = addr.port();
        let uploader = uploader("");
        for (url, error) in [
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
                "http://169.254.169.254/latest/meta-data/".into(),
                "upload refused: 169.254.169.254 is a cloud metadata address; list the host in UPLOAD_ALLOWED_HOSTS to open a private file service",
            ),
        ] {
            let url = Url::parse(&url).unwrap();
            let uploads = uploader
                .upload(&url, "t", None, &[produced("a"), produced("b")], &[])
                .await;
            assert_eq!(uploads.len(), 2);
            for upload in uploads {
                let got = upload.error.unwrap_or_default();
                assert!(got.starts_with(error), "{url}: {got}");
                assert_eq!((upload.status, upload.url), (0, None));
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    /// A listener on every interface, reached through this host's own
    /// non-loopback address, is refused with the same text whether the port is
    /// open or closed, and never connected to (review M1).
    #[tokio::test]
    async fn this_hosts_own_address_is_refused_whatever_the_port() {
        let own = crate::upload_policy::interface_addresses().unwrap();
        let Some(mine) = own.into_iter().find(|ip| ip.is_ipv4() && !ip.is_loopback()) else {
            assert!(
                std::env::var_os("CI").is_none(),
                "no non-loopback IPv4 address"
            );
            eprintln!("skipped: this host has no non-loopback IPv4 address");
            return;
        };
        let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
        let open = listener.local_addr().unwrap().port();
        let closed = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
        let closed_port = closed.local_addr().unwrap().port();
        drop(closed);
        let uploader = uploader("");
        let mut errors = Vec::new();
        for port in [open, closed_port] {
            let url = Url::parse(&format!("http://{mine}:{port}/up")).unwrap();
            let uploads = uploader
                .upload(&url, "t", None, &[produced("a")], &[])
                .await;
            errors.push((uploads[0].status, uploads[0].error.clone()));
        }
        assert_eq!(errors[0], errors[1], "the answer depends on the port");
        let want = format!("upload refused: {mine} is ");
        let got = errors[0].1.clone().unwrap_or_default();
        assert!(got.starts_with(&want), "{got}");
        assert!(
            got.ends_with("; list the host in UPLOAD_ALLOWED_HOSTS to open a private file service"),
            "{got}"
        );
        let accepted = tokio::time::timeout(Duration::from_millis(100), listener.accept()).await;
        assert!(accepted.is_err(), "the refused address was connected to");
    }

    /// The pinned client reaches the pinned name at the checked address, and
    /// resolves no other name (the address here is loopback only because tests may
    /// reach nothing else).
    #[tokio::test]
    async fn a_pinned_client_connects_only_to_the_checked_addresses() {
        let (addr, connections) = counting_listener().await;
        let uploader = uploader("");
        let client = uploader
            .client(&Host::Domain("files.test"), &[addr])
            .unwrap();
        let port = addr.port();
        let quick = Duration::from_millis(300);
        // The listener never answers: the request times out after connecting.
        let _ = client
            .get(format!("http://files.test:{port}/"))
            .timeout(quick)
            .send()
            .await;
        let err = client
            .get(format!("http://localhost:{port}/"))
            .timeout(quick)
            .send()
            .await
            .unwrap_err();
        assert!(
            describe(&err).ends_with("localhost was not checked against the upload policy"),
            "{}",
            describe(&err)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn content_types_come_from_the_extension() {
        for (path, mime) in [
            ("chart.png", "image/png"),
            ("data/out.csv", "text/csv"),
            ("a.json", "application/json"),
            ("noext", "application/octet-stream"),
        ] {
            assert_eq!(produced(path).content_type(), mime, "{path}");
        }
        assert_eq!(header_filename("a\"b/c.txt"), "a%22b/c.txt");
    }
}
