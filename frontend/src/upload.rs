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
//! loopback, link-local (cloud metadata lives at 169.254.169.254) or unspecified,
//! and the connection goes to exactly the addresses checked — the client resolves
//! nothing by itself, so a DNS answer cannot change between check and connect.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use pysandbox_shared::SkippedFile;
use reqwest::dns::{Name, Resolve, Resolving};
use reqwest::multipart::{Form, Part};
use reqwest::redirect::Policy;
use serde_json::Value;
use tokio::time::Instant;
use tracing::{debug, warn};
use url::{Host, Url};

use crate::error::ApiError;
use crate::request::UploadUrl;
use crate::response::Upload;
use crate::spool::Produced;

/// The most of an upload service's answer that is read, looking for the URL.
const MAX_ANSWER_BYTES: usize = 1 << 20;

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

/// `UPLOAD_ALLOWED_HOSTS`: host names or IP addresses, comma-separated. When empty,
/// any host may be used whose addresses are not refused; when not, only these, and
/// their addresses are not checked (the operator vouches for them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedHosts(Vec<AllowedHost>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum AllowedHost {
    Name(String),
    Ip(IpAddr),
}

impl FromStr for AllowedHosts {
    type Err = String;

    fn from_str(list: &str) -> Result<Self, Self::Err> {
        let mut hosts = Vec::new();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let bare = entry
                .strip_prefix('[')
                .and_then(|e| e.strip_suffix(']'))
                .unwrap_or(entry);
            let host = match bare.parse::<IpAddr>() {
                Ok(ip) => AllowedHost::Ip(ip),
                Err(_) => match Host::parse(entry) {
                    Ok(Host::Domain(name)) => AllowedHost::Name(name),
                    Ok(Host::Ipv4(ip)) => AllowedHost::Ip(ip.into()),
                    Ok(Host::Ipv6(ip)) => AllowedHost::Ip(ip.into()),
                    Err(_) => return Err(format!("{entry:?} is not a host name or IP address")),
                },
            };
            hosts.push(host);
        }
        Ok(AllowedHosts(hosts))
    }
}

impl AllowedHosts {
    /// Whether the list is empty (any host whose addresses pass may be used).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `host` is on the list.
    fn contains(&self, host: &Host<&str>) -> bool {
        self.0.iter().any(|allowed| match (allowed, host) {
            (AllowedHost::Name(name), Host::Domain(domain)) => name.eq_ignore_ascii_case(domain),
            (AllowedHost::Ip(ip), Host::Ipv4(v4)) => *ip == IpAddr::V4(*v4),
            (AllowedHost::Ip(ip), Host::Ipv6(v6)) => *ip == IpAddr::V6(*v6),
            _ => false,
        })
    }

    /// Refuses an upload URL off a non-empty list, naming the field the caller used.
    pub fn check(&self, target: &UploadUrl) -> Result<(), ApiError> {
        match target.url.host() {
            Some(host) if self.is_empty() || self.contains(&host) => Ok(()),
            host => Err(ApiError::InvalidField {
                field: target.field.to_owned(),
                reason: format!(
                    "host {} is not in UPLOAD_ALLOWED_HOSTS",
                    host.map(|h| h.to_string()).unwrap_or_default()
                ),
            }),
        }
    }
}

/// Why an address may not be uploaded to, or `None` when it may. IPv4-mapped IPv6
/// addresses (`::ffff:127.0.0.1`) reach their IPv4 address, so they count as it.
pub fn refused_kind(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => refused_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => refused_v4(v4),
            None => refused_v6(v6),
        },
    }
}

fn refused_v4(ip: Ipv4Addr) -> Option<&'static str> {
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if ip.octets()[0] == 0 {
        // 0.0.0.0/8, "this network": Linux connects 0.0.0.0 to the local host.
        Some("unspecified")
    } else {
        None
    }
}

fn refused_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.segments()[0] & 0xffc0 == 0xfe80 {
        Some("link-local")
    } else {
        None
    }
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
                    warn!(host = url.host_str(), "uploads refused: {reason}");
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
        let pinned = if self.config.allowed.contains(&host) {
            None
        } else {
            Some(self.checked_addrs(&url, &host).await?)
        };
        let client = self.client(&host, pinned.as_deref()).map_err(|e| {
            warn!("cannot build the upload client: {e}");
            "internal error preparing the upload".to_owned()
        })?;
        Ok(Target { url, client })
    }

    /// A client that follows no redirect and uses no proxy. With `pinned`, it
    /// resolves no name by itself: it reaches `host` (when a name) at exactly those
    /// addresses, and nothing else at all.
    fn client(
        &self,
        host: &Host<&str>,
        pinned: Option<&[SocketAddr]>,
    ) -> reqwest::Result<reqwest::Client> {
        let builder = reqwest::Client::builder()
            .redirect(Policy::none())
            // A proxy would make the connection, to an address we never checked.
            .no_proxy()
            .connect_timeout(self.config.timeout);
        let builder = match (pinned, host) {
            (None, _) => builder,
            (Some(addrs), Host::Domain(name)) => builder
                .dns_resolver(Arc::new(NoResolver))
                .resolve_to_addrs(name, addrs),
            (Some(_), Host::Ipv4(_) | Host::Ipv6(_)) => builder.dns_resolver(Arc::new(NoResolver)),
        };
        builder.build()
    }

    /// The host's addresses, every one of them allowed.
    async fn checked_addrs(&self, url: &Url, host: &Host<&str>) -> Result<Vec<SocketAddr>, String> {
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
        for addr in &addrs {
            if let Some(kind) = refused_kind(addr.ip()) {
                let ip = addr.ip();
                let a = if kind.starts_with('u') { "an" } else { "a" };
                return Err(match host {
                    Host::Domain(name) => format!(
                        "upload refused: {name} resolves to {ip}, {a} {kind} address \
                         (not in UPLOAD_ALLOWED_HOSTS)"
                    ),
                    _ => format!(
                        "upload refused: {ip} is {a} {kind} address (not in UPLOAD_ALLOWED_HOSTS)"
                    ),
                });
            }
        }
        Ok(addrs)
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
            let mut response = request.send().await?;
            let status = response.status();
            let mut answer = Vec::new();
            while answer.len() < MAX_ANSWER_BYTES {
                match response.chunk().await? {
                    Some(chunk) => answer.extend_from_slice(&chunk),
                    None => break,
                }
            }
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
        let url = url_in_answer(&answer);
        if url.is_none() {
            debug!(file = %file.path, "the upload service's answer names no URL");
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

/// The URL in an upload service's JSON answer: `url`, `data.url` or `file.url`.
pub fn url_in_answer(answer: &[u8]) -> Option<String> {
    let json: Value = serde_json::from_slice(answer).ok()?;
    let url = [&json["url"], &json["data"]["url"], &json["file"]["url"]]
        .into_iter()
        .find_map(|v| v.as_str().filter(|s| !s.is_empty()).map(str::to_owned));
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str, field: &'static str) -> UploadUrl {
        UploadUrl {
            field,
            url: Url::parse(url).unwrap(),
        }
    }

    #[test]
    fn the_url_comes_from_url_data_url_or_file_url() {
        let cases: [(&str, Option<&str>); 9] = [
            (r#"{"url":"https://f/1"}"#, Some("https://f/1")),
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
            assert_eq!(url_in_answer(answer.as_bytes()).as_deref(), url, "{answer}");
        }
    }

    #[test]
    fn loopback_link_local_and_unspecified_addresses_are_refused() {
        let refused = [
            ("127.0.0.1", "loopback"),
            ("127.255.0.9", "loopback"),
            ("::1", "loopback"),
            ("169.254.169.254", "link-local"),
            ("169.254.0.1", "link-local"),
            ("fe80::1", "link-local"),
            ("febf::1", "link-local"),
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "unspecified"),
            ("::", "unspecified"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "link-local"),
            ("::ffff:0.0.0.0", "unspecified"),
        ];
        for (ip, kind) in refused {
            assert_eq!(refused_kind(ip.parse().unwrap()), Some(kind), "{ip}");
        }
        for ip in [
            "93.184.215.14",
            "10.0.0.1",
            "192.168.1.1",
            "2001:db8::1",
            "fec0::1",
        ] {
            assert_eq!(refused_kind(ip.parse().unwrap()), None, "{ip}");
        }
    }

    #[test]
    fn allowed_hosts_parse_names_and_addresses() {
        let hosts: AllowedHosts = " Files.Example ,127.0.0.1,[::1],, ::2 ".parse().unwrap();
        assert_eq!(
            hosts,
            AllowedHosts(vec![
                AllowedHost::Name("files.example".into()),
                AllowedHost::Ip("127.0.0.1".parse().unwrap()),
                AllowedHost::Ip("::1".parse().unwrap()),
                AllowedHost::Ip("::2".parse().unwrap()),
            ])
        );
        assert!("".parse::<AllowedHosts>().unwrap().is_empty());
        assert!("a b".parse::<AllowedHosts>().is_err());
        assert!("http://x/".parse::<AllowedHosts>().is_err());
    }

    #[test]
    fn a_non_empty_list_refuses_other_hosts_naming_the_field() {
        let hosts: AllowedHosts = "files.example,127.0.0.1,::1".parse().unwrap();
        for ok in [
            "http://FILES.example/up",
            "https://files.example:8443/",
            "http://127.0.0.1:9/",
            "http://[::1]/",
        ] {
            assert_eq!(hosts.check(&target(ok, "fileUploadUrl")), Ok(()), "{ok}");
        }
        assert_eq!(
            hosts.check(&target("http://example.com/", "file_upload_url")),
            Err(ApiError::InvalidField {
                field: "file_upload_url".into(),
                reason: "host example.com is not in UPLOAD_ALLOWED_HOSTS".into(),
            })
        );
        assert_eq!(
            hosts.check(&target("http://[::2]/", "fileUploadUrl")),
            Err(ApiError::InvalidField {
                field: "fileUploadUrl".into(),
                reason: "host [::2] is not in UPLOAD_ALLOWED_HOSTS".into(),
            })
        );
        let empty = AllowedHosts::default();
        assert_eq!(
            empty.check(&target("http://169.254.169.254/", "fileUploadUrl")),
            Ok(())
        );
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
                "upload refused: 127.0.0.1 is a loopback address (not in UPLOAD_ALLOWED_HOSTS)",
            ),
            (
                format!("http://[::ffff:127.0.0.1]:{port}/up"),
                "upload refused: ::ffff:127.0.0.1 is a loopback address (not in UPLOAD_ALLOWED_HOSTS)",
            ),
            (
                format!("http://localhost:{port}/up"),
                "upload refused: localhost resolves to",
            ),
            (
                "http://169.254.169.254/latest/meta-data/".into(),
                "upload refused: 169.254.169.254 is a link-local address (not in UPLOAD_ALLOWED_HOSTS)",
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

    /// The pinned client reaches the pinned name at the checked address, and
    /// resolves no other name (the address here is loopback only because tests may
    /// reach nothing else).
    #[tokio::test]
    async fn a_pinned_client_connects_only_to_the_checked_addresses() {
        let (addr, connections) = counting_listener().await;
        let uploader = uploader("");
        let client = uploader
            .client(&Host::Domain("files.test"), Some(&[addr]))
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
