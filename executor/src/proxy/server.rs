//! One job's proxy: its socket, the requests it serves, and what it refused.
//!
//! Each connection carries one request. CONNECT opens a tunnel to the checked
//! address; any other method must name an absolute `http://` URL whose `Host`
//! header agrees with it, is forwarded with `Connection: close`, and its response
//! goes back with `Connection: close` too. So a keep-alive client cannot send a
//! second request, for another host, down a connection that was checked for the
//! first: it must open a new connection, which is checked afresh. Bytes the client
//! sends after the first request's body are never forwarded.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use pysandbox_shared::text::shown;
use pysandbox_shared::{NetworkViolation, MAX_VIOLATIONS};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, warn};

use super::policy::{Destination, Policy, Refusal, MAX_SHOWN_CHARS};
use super::target::Target;
use crate::error::Error;

/// The socket's file name in the job's proxy directory.
pub const SOCKET_NAME: &str = "proxy.sock";

/// A request head larger than this is refused.
const MAX_REQUEST_HEAD: usize = 16 * 1024;
/// A response head larger than this ends the connection.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Headers in one head, at most.
const MAX_HEADERS: usize = 100;
/// A chunk-size or trailer line longer than this ends the connection.
const MAX_CHUNK_LINE: usize = 4096;
/// Bytes moved per read.
const BUF_SIZE: usize = 16 * 1024;
/// How long a refused client may go on sending before its connection is closed
/// (closing with unread data could reset the connection before the 403 is read).
const LINGER: Duration = Duration::from_millis(500);

/// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded; `Connection: close` is
/// set instead.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "upgrade",
];

/// Bounds on one job's use of the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyLimits {
    /// Name lookup plus TCP connect, for one request.
    pub connect_timeout: Duration,
    /// A connection with no byte moving either way for this long is closed.
    pub idle_timeout: Duration,
    /// No connection lives longer than this.
    pub connection_timeout: Duration,
    /// Upstream connections open at once.
    pub max_connections: u32,
    /// Bytes relayed both ways over the whole job.
    pub max_bytes: u64,
}

/// What a job's proxy refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkReport {
    /// The first [`MAX_VIOLATIONS`] refusals, in order.
    pub violations: Vec<NetworkViolation>,
    /// Refusals past those.
    pub dropped: u32,
}

/// A job's running proxy. Dropping it stops every task it runs and removes its
/// socket.
#[derive(Debug)]
pub struct JobProxy {
    dir: PathBuf,
    task: JoinHandle<()>,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    policy: Policy,
    limits: ProxyLimits,
    /// The only uid that may connect: the job's.
    peer_uid: u32,
    connections: Arc<Semaphore>,
    bytes: AtomicU64,
    log: Mutex<Log>,
}

#[derive(Debug, Default)]
struct Log {
    report: NetworkReport,
    bytes_reported: bool,
}

impl JobProxy {
    /// Creates `<jobs dir>/<id>.proxy/` (root's, mode 0711: the jail's bwrap, running
    /// as the sandbox uid, must reach it to bind it), binds the socket in it for
    /// `owner` alone, and serves it under `policy`.
    pub fn start(
        jobs_dir: &Path,
        id: u64,
        owner: (u32, u32),
        policy: Policy,
        limits: ProxyLimits,
    ) -> Result<JobProxy, Error> {
        let dir = jobs_dir.join(format!("{id}.proxy"));
        std::fs::create_dir(&dir).map_err(Error::setup("create", &dir))?;
        let listener = match bind(&dir, owner) {
            Ok(listener) => listener,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let shared = Arc::new(Shared {
            policy,
            limits,
            peer_uid: owner.0,
            connections: Arc::new(Semaphore::new(limits.max_connections as usize)),
            bytes: AtomicU64::new(0),
            log: Mutex::default(),
        });
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Ok(JobProxy { dir, task, shared })
    }

    /// The directory holding the socket, to bind into the jail.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stops the proxy and returns what it refused.
    pub fn finish(self) -> NetworkReport {
        self.task.abort();
        let mut log = self
            .shared
            .log
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        std::mem::take(&mut log.report)
    }
}

impl Drop for JobProxy {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every connection.
        self.task.abort();
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            warn!(path = %self.dir.display(), error = %e, "cannot remove a proxy socket dir");
        }
    }
}

fn bind(dir: &Path, (uid, gid): (u32, u32)) -> Result<UnixListener, Error> {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
        .map_err(Error::setup("chmod", dir))?;
    let socket = dir.join(SOCKET_NAME);
    // Created 0700 under the executor's umask, then handed to the sandbox uid: no
    // other local user can connect and use the job's policy.
    let listener = UnixListener::bind(&socket).map_err(Error::setup("bind", &socket))?;
    std::os::unix::fs::chown(&socket, Some(uid), Some(gid))
        .map_err(Error::setup("chown", &socket))?;
    Ok(listener)
}

async fn accept_loop(listener: UnixListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    // The file mode already restricts who connects; the kernel's word
                    // on the peer also covers a socket exposed by mistake.
                    match stream.peer_cred() {
                        Ok(cred) if cred.uid() == shared.peer_uid => {}
                        other => {
                            warn!(peer = ?other, "proxy connection from another uid refused");
                            continue;
                        }
                    }
                    let shared = Arc::clone(&shared);
                    connections.spawn(async move { serve(stream, &shared).await });
                }
                Err(e) => {
                    warn!(error = %e, "proxy accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve(client: UnixStream, shared: &Shared) {
    let limit = shared.limits.connection_timeout;
    match tokio::time::timeout(limit, handle(client, shared)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(error = %e, "proxy connection ended"),
        Err(_) => debug!("proxy connection closed at its total time limit"),
    }
}

/// One client connection: read and check its request, then serve it.
async fn handle(mut client: UnixStream, shared: &Shared) -> io::Result<()> {
    let mut session = Session {
        shared,
        activity: Activity::new(),
        attempt: Attempt::default(),
    };
    let Some(head) = session.read_request_head(&mut client).await? else {
        return Ok(());
    };
    let (attempt, parsed) = parse_request(&head);
    session.attempt = attempt;
    let (request, head_len) = match parsed {
        Ok(parsed) => parsed,
        Err(refusal) => return session.refuse(client, refusal).await,
    };
    let leftover = head[head_len..].to_vec();
    let upstream = match session.open(request.target()).await {
        Ok(upstream) => upstream,
        Err(Opened::Refused(refusal)) => return session.refuse(client, refusal).await,
        Err(Opened::Unreachable(why)) => {
            info!(target = %session.attempt.target, %why, "egress target unreachable");
            let body = format!(
                "pysandbox: cannot reach {}: {why}\n",
                session.attempt.target
            );
            return answer(client, "502 Bad Gateway", &body).await;
        }
    };
    let (upstream, _permit) = upstream;
    match request {
        Request::Connect(_) => session.tunnel(client, upstream, &leftover).await,
        Request::Forward(forward) => session.forward(client, upstream, leftover, forward).await,
    }
}

/// What a request tried, as its violation shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Attempt {
    method: String,
    target: String,
}

impl Default for Attempt {
    fn default() -> Self {
        Attempt {
            method: "-".into(),
            target: "-".into(),
        }
    }
}

/// A request the proxy understood, before the policy looked at it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Request {
    Connect(Target),
    Forward(Forward),
}

impl Request {
    fn target(&self) -> &Target {
        match self {
            Request::Connect(target) => target,
            Request::Forward(forward) => &forward.target,
        }
    }
}

/// Header names and values, in order.
type Headers = Vec<(String, Vec<u8>)>;

/// A plain-HTTP request to forward.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Forward {
    target: Target,
    method: String,
    /// The origin-form target sent upstream, e.g. `/path?q`.
    path: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    version: u8,
    /// End-to-end headers, in order.
    headers: Headers,
    body: Body,
}

impl Forward {
    /// The head sent upstream.
    fn head(&self) -> Vec<u8> {
        let mut head =
            format!("{} {} HTTP/1.{}\r\n", self.method, self.path, self.version).into_bytes();
        for (name, value) in &self.headers {
            head.extend_from_slice(name.as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value);
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(b"Connection: close\r\n\r\n");
        head
    }
}

/// How a request body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    None,
    Length(u64),
    Chunked,
}

/// Parses a request head (which `buf` starts with) into a request and the head's
/// length, or the refusal; the attempt is filled in as far as the head was read.
fn parse_request(buf: &[u8]) -> (Attempt, Result<(Request, usize), Refusal>) {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let status = req.parse(buf);
    let mut attempt = Attempt {
        method: req.method.map_or("-".into(), |m| shown(m, MAX_SHOWN_CHARS)),
        target: req.path.map_or("-".into(), |p| shown(p, MAX_SHOWN_CHARS)),
    };
    let head_len = match status {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_REQUEST_HEAD => {
            return (attempt, Err(Refusal::BadRequest("request head too large")))
        }
        Ok(httparse::Status::Partial) => {
            return (attempt, Err(Refusal::BadRequest("incomplete request head")))
        }
        Err(_) => return (attempt, Err(Refusal::BadRequest("not an HTTP/1 request"))),
    };
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        return (attempt, Err(Refusal::BadRequest("incomplete request line")));
    };
    if method == "CONNECT" {
        return match Target::parse_authority(path, None) {
            Ok(target) => {
                attempt.target = target.to_string();
                (attempt, Ok((Request::Connect(target), head_len)))
            }
            Err(malformed) => (attempt, Err(malformed.into())),
        };
    }
    let (target, origin) = match absolute_uri(path) {
        Ok(parsed) => parsed,
        Err(refusal) => return (attempt, Err(refusal)),
    };
    attempt.target = target.to_string();
    let forwarded = forwarded_request(req.headers, &target).map(|(headers, body)| {
        let forward = Forward {
            target,
            method: method.to_owned(),
            path: origin,
            version,
            headers,
            body,
        };
        (Request::Forward(forward), head_len)
    });
    (attempt, forwarded)
}

/// Splits `http://authority/path?query#fragment` into the target (port 80 unless
/// given) and the origin-form `/path?query` to send upstream.
fn absolute_uri(uri: &str) -> Result<(Target, String), Refusal> {
    let scheme_end = "http://".len();
    let rest = match uri.get(..scheme_end) {
        Some(scheme) if scheme.eq_ignore_ascii_case("http://") => &uri[scheme_end..],
        _ if uri.contains("://") => return Err(Refusal::Scheme),
        _ => {
            return Err(Refusal::BadRequest(
                "not a proxy request (expected CONNECT or an absolute http:// URL)",
            ))
        }
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let target = Target::parse_authority(authority, Some(80))?;
    // The fragment is the client's business; it is never sent.
    let tail = tail.split('#').next().unwrap_or_default();
    let origin = match tail {
        "" => "/".to_owned(),
        query if query.starts_with('?') => format!("/{query}"),
        path => path.to_owned(),
    };
    Ok((target, origin))
}

/// Checks the headers of a plain-HTTP request against its target and returns those
/// to forward, with the body's framing.
fn forwarded_request(
    headers: &[httparse::Header<'_>],
    target: &Target,
) -> Result<(Headers, Body), Refusal> {
    let named = |name: &'static str| {
        headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    let hosts: Vec<&[u8]> = named("host").collect();
    let [host] = hosts.as_slice() else {
        return Err(Refusal::BadRequest("exactly one Host header is required"));
    };
    let host = std::str::from_utf8(host)
        .ok()
        .and_then(|h| Target::parse_authority(h.trim(), Some(80)).ok());
    if host.as_ref() != Some(target) {
        return Err(Refusal::HostMismatch);
    }
    let lengths: Vec<&[u8]> = named("content-length").collect();
    let encodings: Vec<&[u8]> = named("transfer-encoding").collect();
    // Two framings at once is how request smuggling starts (RFC 9112 §6.3).
    let body = match (lengths.as_slice(), encodings.as_slice()) {
        ([], []) => Body::None,
        ([length], []) => Body::Length(
            std::str::from_utf8(length)
                .ok()
                .map(str::trim)
                .filter(|l| !l.is_empty() && l.len() <= 18 && l.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|l| l.parse().ok())
                .ok_or(Refusal::BadRequest("invalid Content-Length"))?,
        ),
        ([], [encoding]) if encoding.trim_ascii().eq_ignore_ascii_case(b"chunked") => Body::Chunked,
        ([], _) => return Err(Refusal::BadRequest("unsupported Transfer-Encoding")),
        _ => {
            return Err(Refusal::BadRequest(
                "conflicting Content-Length and Transfer-Encoding",
            ))
        }
    };
    let dropped = connection_options(named("connection"));
    let kept = headers
        .iter()
        .filter(|h| !is_hop_by_hop(h.name, &dropped))
        .map(|h| (h.name.to_owned(), h.value.to_vec()))
        .collect();
    Ok((kept, body))
}

/// The header names a `Connection` header lists, lowercased.
fn connection_options<'a>(values: impl Iterator<Item = &'a [u8]>) -> Vec<String> {
    values
        .flat_map(|v| {
            String::from_utf8_lossy(v)
                .split(',')
                .map(|s| s.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .filter(|s| !s.is_empty())
        .collect()
}

fn is_hop_by_hop(name: &str, listed: &[String]) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
        || listed.iter().any(|l| name.eq_ignore_ascii_case(l))
}

/// A response head as forwarded: interim (1xx) heads as they are, the final head
/// without hop-by-hop headers and with `Connection: close`. `None` until `buf`
/// holds a whole head.
fn response_head(buf: &[u8]) -> io::Result<Option<(Vec<u8>, usize, bool)>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
    };
    let (Some(version), Some(code)) = (resp.version, resp.code) else {
        return Err(io::ErrorKind::InvalidData.into());
    };
    let interim = (100..200).contains(&code) && code != 101;
    if interim {
        return Ok(Some((buf[..len].to_vec(), len, true)));
    }
    let reason = resp.reason.unwrap_or_default();
    let mut head = format!("HTTP/1.{version} {code} {reason}\r\n").into_bytes();
    let listed = connection_options(
        resp.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
            .map(|h| h.value),
    );
    for header in resp
        .headers
        .iter()
        .filter(|h| !is_hop_by_hop(h.name, &listed))
    {
        head.extend_from_slice(header.name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(header.value);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"Connection: close\r\n\r\n");
    Ok(Some((head, len, false)))
}

/// The size on a chunk-size line (`1a;ext\r\n`).
fn chunk_size(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\r\n")?;
    let end = line.iter().position(|&b| b == b';').unwrap_or(line.len());
    let digits = line[..end].trim_ascii_end();
    if digits.is_empty() || digits.len() > 15 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
}

/// When a connection last moved a byte, shared by both directions.
#[derive(Debug)]
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(now, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

enum Opened {
    Refused(Refusal),
    Unreachable(String),
}

/// One connection being served.
struct Session<'a> {
    shared: &'a Shared,
    activity: Activity,
    attempt: Attempt,
}

impl Session<'_> {
    /// Reads until `buf` holds a whole request head, something that cannot become
    /// one, or [`MAX_REQUEST_HEAD`] bytes; `None` when the client sent nothing.
    async fn read_request_head(&self, client: &mut UnixStream) -> io::Result<Option<Vec<u8>>> {
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = vec![0; 4096];
        loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let done = !matches!(
                httparse::Request::new(&mut headers).parse(&buf),
                Ok(httparse::Status::Partial)
            );
            if (done && !buf.is_empty()) || buf.len() >= MAX_REQUEST_HEAD {
                return Ok(Some(buf));
            }
            let room = (MAX_REQUEST_HEAD - buf.len()).min(chunk.len());
            let n = self.read(client, &mut chunk[..room]).await?;
            if n == 0 {
                return Ok((!buf.is_empty()).then_some(buf));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Checks the target, resolves it if need be, checks every address, and
    /// connects to a checked one.
    async fn open(&self, target: &Target) -> Result<(TcpStream, OwnedSemaphorePermit), Opened> {
        let shared = self.shared;
        let limits = &shared.limits;
        let deadline = tokio::time::Instant::now() + limits.connect_timeout;
        let addresses = match shared
            .policy
            .check_target(target)
            .map_err(Opened::Refused)?
        {
            Destination::Addresses(addresses) => addresses,
            Destination::Lookup(name) => {
                let lookup = tokio::net::lookup_host((name.as_str(), target.port));
                let found = tokio::time::timeout_at(deadline, lookup)
                    .await
                    .map_err(|_| Opened::Unreachable("name lookup timed out".into()))?
                    .map_err(|e| Opened::Unreachable(format!("name lookup failed: {e}")))?;
                let mut addresses: Vec<IpAddr> = Vec::new();
                for ip in found.map(|addr| addr.ip()) {
                    shared
                        .policy
                        .check_address(ip, true)
                        .map_err(Opened::Refused)?;
                    if !addresses.contains(&ip) {
                        addresses.push(ip);
                    }
                }
                addresses
            }
        };
        if shared.bytes.load(Ordering::Relaxed) >= limits.max_bytes {
            return Err(Opened::Refused(Refusal::Bytes(limits.max_bytes)));
        }
        let permit = Arc::clone(&shared.connections)
            .try_acquire_owned()
            .map_err(|_| Opened::Refused(Refusal::TooManyConnections(limits.max_connections)))?;
        let mut why = "the name has no address".to_owned();
        for ip in addresses {
            let connect = TcpStream::connect(SocketAddr::new(ip, target.port));
            match tokio::time::timeout_at(deadline, connect).await {
                Ok(Ok(stream)) => return Ok((stream, permit)),
                Ok(Err(e)) => why = format!("{ip}: {e}"),
                Err(_) => return Err(Opened::Unreachable("connect timed out".into())),
            }
        }
        Err(Opened::Unreachable(why))
    }

    /// Answers 403 with the reason, and records the violation.
    async fn refuse(&self, client: UnixStream, refusal: Refusal) -> io::Result<()> {
        self.shared.record(&self.attempt, &refusal);
        let Attempt { method, target } = &self.attempt;
        let body = format!("pysandbox: blocked {method} {target} ({refusal})\n");
        answer(client, "403 Forbidden", &body).await
    }

    /// CONNECT: confirms, then relays both ways until both sides are done.
    async fn tunnel(
        &self,
        client: UnixStream,
        upstream: TcpStream,
        early: &[u8],
    ) -> io::Result<()> {
        let (client_rx, mut client_tx) = client.into_split();
        let (upstream_rx, mut upstream_tx) = upstream.into_split();
        client_tx
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await?;
        if !early.is_empty() {
            self.send(&mut upstream_tx, early).await?;
        }
        tokio::try_join!(
            self.pump(client_rx, upstream_tx),
            self.pump(upstream_rx, client_tx)
        )?;
        Ok(())
    }

    /// Plain HTTP: sends the request head and exactly its body upstream, and relays
    /// the response until the server closes.
    async fn forward(
        &self,
        client: UnixStream,
        upstream: TcpStream,
        early: Vec<u8>,
        request: Forward,
    ) -> io::Result<()> {
        let (client_rx, mut client_tx) = client.into_split();
        let (upstream_rx, mut upstream_tx) = upstream.into_split();
        let upload = async {
            self.send(&mut upstream_tx, &request.head()).await?;
            let mut body = BufReader::new(std::io::Cursor::new(early).chain(client_rx));
            match request.body {
                Body::None => {}
                Body::Length(len) => self.copy_exact(&mut body, &mut upstream_tx, len).await?,
                Body::Chunked => self.copy_chunked(&mut body, &mut upstream_tx).await?,
            }
            // Whatever the client sends next is not forwarded; the response ends this.
            std::future::pending::<io::Result<()>>().await
        };
        let download = self.relay_response(upstream_rx, &mut client_tx);
        tokio::select! {
            result = upload => result,
            result = download => result,
        }
    }

    async fn relay_response<R, W>(&self, mut upstream: R, client: &mut W) -> io::Result<()>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut buf = Vec::new();
        let mut chunk = vec![0; BUF_SIZE];
        loop {
            let (head, len, interim) = loop {
                if let Some(parsed) = response_head(&buf)? {
                    break parsed;
                }
                if buf.len() >= MAX_RESPONSE_HEAD {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "response head too large",
                    ));
                }
                let n = self.read(&mut upstream, &mut chunk).await?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                buf.extend_from_slice(&chunk[..n]);
            };
            self.send(client, &head).await?;
            buf.drain(..len);
            if !interim {
                break;
            }
        }
        if !buf.is_empty() {
            self.send(client, &buf).await?;
        }
        self.pump(upstream, client).await
    }

    /// Copies until `from` ends, then closes `to` for writing.
    async fn pump<R, W>(&self, mut from: R, mut to: W) -> io::Result<()>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut buf = vec![0; BUF_SIZE];
        loop {
            let n = self.read(&mut from, &mut buf).await?;
            if n == 0 {
                let _ = to.shutdown().await;
                return Ok(());
            }
            self.send(&mut to, &buf[..n]).await?;
        }
    }

    async fn copy_exact<R, W>(&self, from: &mut R, to: &mut W, len: u64) -> io::Result<()>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut buf = vec![0; BUF_SIZE];
        let mut left = len;
        while left > 0 {
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = self.read(from, &mut buf[..want]).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.send(to, &buf[..n]).await?;
            left -= n as u64;
        }
        Ok(())
    }

    /// Forwards a chunked body exactly, checking its framing (RFC 9112 §7.1), and
    /// stops after its last chunk and trailers.
    async fn copy_chunked<R, W>(&self, from: &mut R, to: &mut W) -> io::Result<()>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed chunked body");
        loop {
            let line = self.read_line(from).await?;
            let size = chunk_size(&line).ok_or_else(bad)?;
            self.send(to, &line).await?;
            if size == 0 {
                loop {
                    let trailer = self.read_line(from).await?;
                    self.send(to, &trailer).await?;
                    if trailer == b"\r\n" {
                        return Ok(());
                    }
                }
            }
            self.copy_exact(from, to, size).await?;
            let end = self.read_line(from).await?;
            if end != b"\r\n" {
                return Err(bad());
            }
            self.send(to, &end).await?;
        }
    }

    /// One line, `\n` included, of at most [`MAX_CHUNK_LINE`] bytes; `from` is
    /// buffered, so reading a byte at a time is cheap.
    async fn read_line<R: AsyncRead + Unpin>(&self, from: &mut R) -> io::Result<Vec<u8>> {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while line.len() < MAX_CHUNK_LINE {
            if self.read(from, &mut byte).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            line.push(byte[0]);
            if byte[0] == b'\n' {
                return Ok(line);
            }
        }
        Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"))
    }

    /// A read that fails once neither direction has moved a byte for the idle
    /// timeout.
    async fn read<R: AsyncRead + Unpin>(&self, from: &mut R, buf: &mut [u8]) -> io::Result<usize> {
        let idle = self.shared.limits.idle_timeout;
        loop {
            let wait = idle.saturating_sub(self.activity.idle_for());
            if wait.is_zero() {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout"));
            }
            // Reads are cancel-safe: a timed-out one loses nothing.
            if let Ok(read) = tokio::time::timeout(wait, from.read(buf)).await {
                self.activity.touch();
                return read;
            }
        }
    }

    /// Writes relayed bytes, counting them against the job's byte limit.
    async fn send<W: AsyncWrite + Unpin>(&self, to: &mut W, bytes: &[u8]) -> io::Result<()> {
        let shared = self.shared;
        let max = shared.limits.max_bytes;
        let before = shared
            .bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        if before + bytes.len() as u64 > max {
            shared.record_once_bytes(&self.attempt, max);
            return Err(io::Error::other("byte limit reached"));
        }
        tokio::time::timeout(shared.limits.idle_timeout, to.write_all(bytes))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "write timed out"))??;
        self.activity.touch();
        Ok(())
    }
}

impl Shared {
    fn record(&self, attempt: &Attempt, refusal: &Refusal) {
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        let report = &mut log.report;
        // Logged as listed: a job looping over refused requests cannot flood the log.
        if report.violations.len() < MAX_VIOLATIONS {
            info!(method = %attempt.method, target = %attempt.target, reason = %refusal, "egress request refused");
            report.violations.push(NetworkViolation {
                method: attempt.method.clone(),
                target: attempt.target.clone(),
                reason: refusal.to_string(),
            });
        } else {
            report.dropped = report.dropped.saturating_add(1);
        }
    }

    /// Records the byte limit the first time a transfer hits it.
    fn record_once_bytes(&self, attempt: &Attempt, max: u64) {
        let first = {
            let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
            !std::mem::replace(&mut log.bytes_reported, true)
        };
        if first {
            self.record(attempt, &Refusal::Bytes(max));
        }
    }
}

/// Sends a whole small response and closes, first letting the client finish
/// sending for a moment so the close does not reset the connection under it.
async fn answer(mut client: UnixStream, status: &str, body: &str) -> io::Result<()> {
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    client.write_all(response.as_bytes()).await?;
    client.shutdown().await?;
    let mut sink = vec![0; BUF_SIZE];
    let drain = async {
        while let Ok(n) = client.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::policy::DomainPattern;
    use crate::proxy::target::Host;
    use std::collections::BTreeMap;
    use tokio::net::TcpListener;

    fn request(text: &str) -> (Attempt, Result<(Request, usize), Refusal>) {
        parse_request(text.as_bytes())
    }

    fn refusal(text: &str) -> (String, String, String) {
        let (attempt, parsed) = request(text);
        let refusal = parsed.expect_err(text);
        (attempt.method, attempt.target, refusal.to_string())
    }

    #[test]
    fn connect_targets_are_normalized() {
        let (attempt, parsed) =
            request("CONNECT Example.COM.:443 HTTP/1.1\r\nHost: x\r\n\r\nearly");
        let (connect, len) = parsed.unwrap();
        assert_eq!(attempt.target, "example.com:443");
        assert_eq!(connect.target().to_string(), "example.com:443");
        assert_eq!(
            len,
            "CONNECT Example.COM.:443 HTTP/1.1\r\nHost: x\r\n\r\n".len()
        );
        let (attempt, _) = request("CONNECT 0x7f.1:443 HTTP/1.1\r\n\r\n");
        assert_eq!(
            attempt.target, "127.0.0.1:443",
            "an odd IPv4 form is shown normalized"
        );
        assert_eq!(
            refusal("CONNECT evil.com HTTP/1.1\r\n\r\n"),
            (
                "CONNECT".into(),
                "evil.com".into(),
                "malformed target: no port".into()
            )
        );
    }

    #[test]
    fn plain_http_requests_become_origin_form_with_connection_close() {
        let text =
            "POST http://Allowed.Test:8080/a/b?c=d#frag HTTP/1.1\r\nHost: allowed.test:8080\r\n\
                    Connection: keep-alive, X-Secret\r\nX-Secret: 1\r\nProxy-Authorization: x\r\n\
                    Keep-Alive: 5\r\nContent-Length: 3\r\nAccept: */*\r\n\r\nabc";
        let (attempt, parsed) = request(text);
        assert_eq!(
            attempt,
            Attempt {
                method: "POST".into(),
                target: "allowed.test:8080".into()
            }
        );
        let (Request::Forward(forward), len) = parsed.unwrap() else {
            panic!("not a forward")
        };
        assert_eq!(&text[len..], "abc");
        assert_eq!(forward.body, Body::Length(3));
        assert_eq!(
            String::from_utf8(forward.head()).unwrap(),
            "POST /a/b?c=d HTTP/1.1\r\nHost: allowed.test:8080\r\nContent-Length: 3\r\n\
             Accept: */*\r\nConnection: close\r\n\r\n"
        );
        let (_, parsed) = request("GET http://a.test?q HTTP/1.0\r\nHost: a.test:80\r\n\r\n");
        let (Request::Forward(forward), _) = parsed.unwrap() else {
            panic!("not a forward")
        };
        assert_eq!((forward.path.as_str(), forward.version), ("/?q", 0));
        let (_, parsed) = request(
            "PUT http://a.test/ HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: Chunked\r\n\r\n",
        );
        let (Request::Forward(forward), _) = parsed.unwrap() else {
            panic!("not a forward")
        };
        assert_eq!(forward.body, Body::Chunked);
    }

    #[test]
    fn bad_plain_http_requests_are_refused() {
        for (text, reason) in [
            ("GET http://a.test/ HTTP/1.1\r\nHost: b.test\r\n\r\n", "Host header does not match the request target"),
            ("GET http://a.test/ HTTP/1.1\r\nHost: a.test:81\r\n\r\n", "Host header does not match the request target"),
            ("GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nHost: a.test\r\n\r\n", "malformed request: exactly one Host header is required"),
            ("GET http://a.test/ HTTP/1.1\r\n\r\n", "malformed request: exactly one Host header is required"),
            ("GET /index.html HTTP/1.1\r\nHost: a.test\r\n\r\n", "malformed request: not a proxy request (expected CONNECT or an absolute http:// URL)"),
            ("GET https://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n", "only http:// URLs and CONNECT are supported"),
            ("GET ftp://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n", "only http:// URLs and CONNECT are supported"),
            ("GET http://u@a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n", "malformed target: user info (@) in the target"),
            ("GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", "malformed request: conflicting Content-Length and Transfer-Encoding"),
            ("GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", "malformed request: conflicting Content-Length and Transfer-Encoding"),
            ("GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nContent-Length: -1\r\n\r\n", "malformed request: invalid Content-Length"),
            ("GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "malformed request: unsupported Transfer-Encoding"),
            ("\x16\x03\x01\x00", "malformed request: not an HTTP/1 request"),
            ("GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\n", "malformed request: incomplete request head"),
        ] {
            let (_, _, got) = refusal(text);
            assert_eq!(got, reason, "{text:?}");
        }
    }

    #[test]
    fn response_heads_lose_hop_by_hop_headers() {
        let text = b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\n\r\nok";
        let (head, len, interim) = response_head(text).unwrap().unwrap();
        assert!(!interim);
        assert_eq!(&text[len..], b"ok");
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n"
        );
        let (head, _, interim) = response_head(b"HTTP/1.1 100 Continue\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(interim);
        assert_eq!(head, b"HTTP/1.1 100 Continue\r\n\r\n");
        assert!(response_head(b"HTTP/1.1 200 OK\r\n").unwrap().is_none());
        assert!(response_head(b"garbage\r\n\r\n").is_err());
    }

    #[test]
    fn chunk_sizes() {
        assert_eq!(chunk_size(b"1a\r\n"), Some(26));
        assert_eq!(chunk_size(b"0\r\n"), Some(0));
        assert_eq!(chunk_size(b"A;ext=1\r\n"), Some(10));
        for bad in [
            &b"\r\n"[..],
            b"1a\n",
            b"+1\r\n",
            b"x\r\n",
            b"1 2\r\n",
            b"ffffffffffffffff\r\n",
        ] {
            assert_eq!(chunk_size(bad), None, "{bad:?}");
        }
    }

    /// A proxy for `allowed.test` and `*.wild.test` (both mapped to 127.0.0.1,
    /// private addresses allowed only in 127.0.0.0/8) on `port`.
    fn test_policy(port: u16) -> Policy {
        let name = |n: &str| match Host::parse(n).unwrap() {
            Host::Name(name) => name,
            Host::Ip(_) => unreachable!(),
        };
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let resolve = BTreeMap::from([
            (name("allowed.test"), vec![lo]),
            (name("a.wild.test"), vec![lo]),
            (name("private.test"), vec!["10.0.0.1".parse().unwrap()]),
        ]);
        Policy::new(
            ["allowed.test", "*.wild.test", "private.test"]
                .iter()
                .map(|p| p.parse::<DomainPattern>().unwrap())
                .collect(),
            vec![],
            vec![port],
            vec!["127.0.0.0/8".parse().unwrap()],
            resolve,
        )
    }

    fn limits() -> ProxyLimits {
        ProxyLimits {
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(5),
            connection_timeout: Duration::from_secs(10),
            max_connections: 2,
            max_bytes: 1 << 20,
        }
    }

    /// An origin server answering every request with its request head echoed.
    async fn origin() -> (u16, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body = String::from_utf8_lossy(&buf).into_owned();
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(reply.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        (port, task)
    }

    /// Runs one exchange through a proxy connection served by `shared`.
    async fn exchange(shared: &Arc<Shared>, request: &str) -> String {
        let (mut client, server) = UnixStream::pair().unwrap();
        let shared = Arc::clone(shared);
        let task = tokio::spawn(async move { serve(server, &shared).await });
        client.write_all(request.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        task.await.unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    fn shared(port: u16) -> Arc<Shared> {
        Arc::new(Shared {
            policy: test_policy(port),
            limits: limits(),
            peer_uid: 0,
            connections: Arc::new(Semaphore::new(2)),
            bytes: AtomicU64::new(0),
            log: Mutex::default(),
        })
    }

    #[tokio::test]
    async fn forwards_plain_http_and_closes_after_one_request() {
        let (port, _origin) = origin().await;
        let shared = shared(port);
        let request = format!(
            "GET http://allowed.test:{port}/x HTTP/1.1\r\nHost: allowed.test:{port}\r\n\r\n\
             GET http://evil.test:{port}/ HTTP/1.1\r\nHost: evil.test:{port}\r\n\r\n"
        );
        let reply = exchange(&shared, &request).await;
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
        assert!(reply.contains("\r\nConnection: close\r\n"), "{reply}");
        assert!(!reply.contains("keep-alive"), "{reply}");
        assert!(
            reply.contains(&format!(
                "GET /x HTTP/1.1\r\nHost: allowed.test:{port}\r\nConnection: close\r\n\r\n"
            )),
            "{reply}"
        );
        assert!(
            !reply.contains("evil"),
            "the second request went nowhere: {reply}"
        );
        assert_eq!(shared.log.lock().unwrap().report, NetworkReport::default());
    }

    #[tokio::test]
    async fn tunnels_connect() {
        let (port, _origin) = origin().await;
        let shared = shared(port);
        let request = format!(
            "CONNECT a.wild.test:{port} HTTP/1.1\r\n\r\nGET /t HTTP/1.1\r\nHost: a\r\n\r\n"
        );
        let reply = exchange(&shared, &request).await;
        assert!(
            reply.starts_with("HTTP/1.1 200 Connection established\r\n\r\nHTTP/1.1 200 OK\r\n"),
            "{reply}"
        );
        assert!(
            reply.contains("GET /t HTTP/1.1\r\nHost: a\r\n\r\n"),
            "{reply}"
        );
    }

    #[tokio::test]
    async fn refusals_are_403_and_recorded() {
        let (port, _origin) = origin().await;
        let shared = shared(port);
        let cases = [
            (
                format!("CONNECT evil.test:{port} HTTP/1.1\r\n\r\n"),
                format!("blocked CONNECT evil.test:{port} (not in allowed domains)"),
            ),
            (
                format!("CONNECT wild.test:{port} HTTP/1.1\r\n\r\n"),
                format!("blocked CONNECT wild.test:{port} (not in allowed domains)"),
            ),
            (
                format!("CONNECT 2130706433:{port} HTTP/1.1\r\n\r\n"),
                format!("blocked CONNECT 127.0.0.1:{port} (IP address not in allowed domains)"),
            ),
            (
                "CONNECT allowed.test:1 HTTP/1.1\r\n\r\n".to_owned(),
                "blocked CONNECT allowed.test:1 (port 1 not allowed)".to_owned(),
            ),
            (
                format!(
                    "GET http://private.test:{port}/ HTTP/1.1\r\nHost: private.test:{port}\r\n\r\n"
                ),
                format!(
                    "blocked GET private.test:{port} (resolves to 10.0.0.1, a private address)"
                ),
            ),
        ];
        for (request, want) in &cases {
            let reply = exchange(&shared, request).await;
            assert!(reply.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{reply}");
            assert!(
                reply.ends_with(&format!("\r\n\r\npysandbox: {want}\n")),
                "{reply}"
            );
        }
        let log = shared.log.lock().unwrap();
        assert_eq!(log.report.violations.len(), cases.len());
        assert_eq!(
            log.report.violations[4].reason,
            "resolves to 10.0.0.1, a private address"
        );
        assert_eq!(log.report.violations[4].method, "GET");
    }

    #[tokio::test]
    async fn the_byte_limit_cuts_and_is_recorded_once() {
        let (port, _origin) = origin().await;
        let shared = Arc::new(Shared {
            limits: ProxyLimits {
                max_bytes: 100,
                ..limits()
            },
            ..Arc::into_inner(shared(port)).unwrap()
        });
        let request = format!(
            "GET http://allowed.test:{port}/{} HTTP/1.1\r\nHost: allowed.test:{port}\r\n\r\n",
            "x".repeat(200)
        );
        let reply = exchange(&shared, &request).await;
        assert_eq!(reply, "", "nothing relayed past the limit");
        let reply = exchange(&shared, &request).await;
        assert!(reply.starts_with("HTTP/1.1 403"), "{reply}");
        let log = shared.log.lock().unwrap();
        let reasons: Vec<_> = log
            .report
            .violations
            .iter()
            .map(|v| v.reason.as_str())
            .collect();
        assert_eq!(reasons, ["byte limit of 100 bytes per job reached"; 2]);
    }

    #[tokio::test]
    async fn chunked_bodies_are_forwarded_exactly() {
        let (port, _origin) = origin().await;
        let shared = shared(port);
        let request = format!(
            "POST http://allowed.test:{port}/ HTTP/1.1\r\nHost: allowed.test:{port}\r\nTransfer-Encoding: chunked\r\n\r\n\
             3\r\nabc\r\n0\r\nX-T: 1\r\n\r\nGET http://evil.test/ HTTP/1.1\r\n\r\n"
        );
        let reply = exchange(&shared, &request).await;
        assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
        assert!(!reply.contains("evil"), "{reply}");
    }

    #[tokio::test]
    async fn a_job_proxy_serves_its_socket_and_removes_it() {
        let (port, _origin) = origin().await;
        let jobs = tempfile::tempdir().unwrap();
        let me = (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        );
        let proxy = JobProxy::start(jobs.path(), 7, me, test_policy(port), limits()).unwrap();
        let socket = proxy.dir().join(SOCKET_NAME);
        assert_eq!(proxy.dir(), jobs.path().join("7.proxy"));
        let mut client = UnixStream::connect(&socket).await.unwrap();
        client
            .write_all(b"CONNECT evil.test:1 HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        client.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 403"), "{out}");
        let report = proxy.finish();
        assert_eq!(report.violations.len(), 1);
        assert!(!jobs.path().join("7.proxy").exists());
    }
}
