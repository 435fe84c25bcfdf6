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
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use pysandbox_shared::text::shown;
use pysandbox_shared::{NetworkViolation, MAX_VIOLATIONS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, warn};

use super::ask::JobAsks;
use super::http::{parse_request, Attempt, Parsed, Request};
use super::policy::{Destination, Policy, Refusal, MAX_SHOWN_CHARS};
use super::relay::{Activity, Session};
use super::target::Target;
use crate::error::Error;
use crate::metrics::Metrics;

/// Bytes read and dropped at a time while a refused client lingers.
const SINK_SIZE: usize = 16 * 1024;

/// The socket's file name in the job's proxy directory.
pub const SOCKET_NAME: &str = "proxy.sock";

/// How long a refused client may go on sending before its connection is closed
/// (closing with unread data could reset the connection before the 403 is read).
const LINGER: Duration = Duration::from_millis(500);

/// Bounds on the proxy: on one job's use of it, and on all jobs' together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyLimits {
    /// Name lookup plus TCP connect, for one request.
    pub connect_timeout: Duration,
    /// A connection with no byte moving either way for this long is closed.
    pub idle_timeout: Duration,
    /// No connection lives longer than this.
    pub connection_timeout: Duration,
    /// Upstream connections of one job open at once (and so its name lookups in
    /// flight: a connection's permit is taken before its lookup).
    pub max_connections: u32,
    /// Connections from one job's jail open at once, idle ones included; past
    /// this, a new one is closed as soon as it is accepted.
    pub max_client_connections: u32,
    /// Connections from all jails open at once: what bounds the executor's
    /// descriptors spent on proxies, whatever the number of network jobs.
    pub max_total_connections: u32,
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

/// Where a job's proxy sends each refusal it records, as it records it, for the job's
/// live stream. Its capacity is [`MAX_VIOLATIONS`]: only refusals the report keeps
/// are sent, so it never fills, and a proxy never waits on it.
pub(crate) type LiveViolations = mpsc::Sender<NetworkViolation>;

/// The executor's proxies: their limits and the connections they hold together.
#[derive(Debug, Clone)]
pub struct Proxies {
    limits: ProxyLimits,
    total: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

impl Proxies {
    pub fn new(limits: ProxyLimits, metrics: Arc<Metrics>) -> Proxies {
        Proxies {
            limits,
            total: Arc::new(Semaphore::new(limits.max_total_connections as usize)),
            metrics,
        }
    }

    /// Starts a job's proxy; see [`JobProxy::start`].
    pub fn start(
        &self,
        jobs_dir: &Path,
        id: u64,
        owner: (u32, u32),
        policy: Policy,
        live: LiveViolations,
    ) -> Result<JobProxy, Error> {
        JobProxy::start(jobs_dir, id, owner, policy, self, live)
    }
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
pub(super) struct Shared {
    policy: Policy,
    pub(super) limits: ProxyLimits,
    /// The only uid that may connect: the job's.
    peer_uid: u32,
    /// Upstream connections (taken before the name lookup).
    connections: Arc<Semaphore>,
    /// Connections from the jail, idle ones included.
    clients: Arc<Semaphore>,
    /// Connections from every jail, shared by all the executor's proxies.
    total: Arc<Semaphore>,
    pub(super) bytes: AtomicU64,
    /// The executor's counters of refusals and relayed bytes, all jobs together.
    pub(super) metrics: Arc<Metrics>,
    log: Mutex<Log>,
    live: LiveViolations,
    /// The job's questions to the ask callback, when the policy has one.
    asks: Option<JobAsks>,
}

#[derive(Debug, Default)]
struct Log {
    report: NetworkReport,
    bytes_reported: bool,
    /// Lines this job's proxy has logged: refusals and unreachable targets alike
    /// count against [`MAX_LOG_LINES`] (security review 2, F4).
    lines: usize,
}

/// Log lines about one job's requests, at most; the rest are counted in the report
/// (refusals) or dropped (unreachable targets).
const MAX_LOG_LINES: usize = MAX_VIOLATIONS;

impl JobProxy {
    /// Creates `<jobs dir>/<id>.proxy/` (root's, mode 0711: the jail's bwrap, running
    /// as the sandbox uid, must reach it to bind it), binds the socket in it for
    /// `owner` alone, and serves it under `policy`, sending refusals to `live`.
    fn start(
        jobs_dir: &Path,
        id: u64,
        owner: (u32, u32),
        policy: Policy,
        proxies: &Proxies,
        live: LiveViolations,
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
        let shared = Arc::new(Shared::new(policy, proxies, owner.0, live));
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Ok(JobProxy { dir, task, shared })
    }

    /// The directory holding the socket, to bind into the jail.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Closes the socket and every connection the proxy holds. Called once the
    /// jail's processes are gone: a job may have passed its own output pipes into a
    /// connection (`SCM_RIGHTS`), and they close only with it (security review L2).
    pub fn stop(&self) {
        // Aborting the accept loop drops the listener, with the connections waiting
        // in its backlog, and its JoinSet, which aborts every connection.
        self.task.abort();
    }

    /// What the proxy refused since the last time this was asked (a session's
    /// call), and from then on room for as many again.
    pub fn take_report(&self) -> NetworkReport {
        let mut log = self
            .shared
            .log
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        std::mem::take(&mut log.report)
    }

    /// Stops the proxy and returns what it refused.
    pub fn finish(self) -> NetworkReport {
        self.stop();
        self.take_report()
    }
}

impl Drop for JobProxy {
    fn drop(&mut self) {
        self.stop();
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
    refuse_passed_fds(&listener);
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
                    // Permits first, so that a job opening connections without end
                    // costs the executor no descriptor past its cap (security
                    // review 2, F2): above it, the connection is closed at once.
                    let Some(permits) = shared.admit() else {
                        continue;
                    };
                    refuse_passed_fds(&stream);
                    let shared = Arc::clone(&shared);
                    connections.spawn(async move {
                        serve(stream, &shared).await;
                        drop(permits);
                    });
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

/// Asks the kernel to refuse descriptors passed into a proxy socket (set on the
/// listener, and again on each connection in case it is not inherited). The relay
/// never passes any; a job that does could park its own output pipes in the proxy
/// (security review L2). Kernels before 6.16 lack the option: then only the
/// proxy's teardown at the end of the job releases what was passed (plain reads
/// already close descriptors as their bytes are consumed).
fn refuse_passed_fds(socket: &impl AsFd) {
    if let Err(e) = crate::sys::refuse_passed_fds(socket.as_fd()) {
        debug!(error = %e, "the kernel cannot refuse descriptors passed to the proxy");
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
    let Parsed {
        attempt,
        request,
        head_len,
    } = match parse_request(&head) {
        Ok(parsed) => parsed,
        Err((attempt, refusal)) => {
            session.attempt = attempt;
            return session.refuse(client, refusal).await;
        }
    };
    session.attempt = attempt;
    let leftover = head[head_len..].to_vec();
    let upstream = match session.open(request.target()).await {
        Ok(upstream) => upstream,
        Err(Opened::Refused(refusal)) => return session.refuse(client, refusal).await,
        Err(Opened::Unreachable(why)) => {
            shared.log_unreachable(&session.attempt, &why);
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

enum Opened {
    Refused(Refusal),
    Unreachable(String),
}

impl Session<'_> {
    /// Checks the target, resolves it if need be, checks every address, and
    /// connects to a checked one.
    async fn open(&self, target: &Target) -> Result<(TcpStream, OwnedSemaphorePermit), Opened> {
        let shared = self.shared;
        let limits = &shared.limits;
        let destination = match (shared.policy.check_target(target), &shared.asks) {
            // Only a target no list covers is asked about (the deny list is checked
            // first and never asked), and only once it passed everything else that
            // can be checked without a lookup: the callback decides the lists only.
            (Err(Refusal::NotAllowed | Refusal::IpLiteral), Some(asks)) => {
                let destination = shared.policy.destination(target);
                let destination = destination.map_err(Opened::Refused)?;
                let method = &self.attempt.method;
                asks.decide(target, method).await.map_err(Opened::Refused)?;
                destination
            }
            (checked, _) => checked.map_err(Opened::Refused)?,
        };
        // After the question: its wait is not the connection's.
        let deadline = tokio::time::Instant::now() + limits.connect_timeout;
        if shared.bytes.load(Ordering::Relaxed) >= limits.max_bytes {
            return Err(Opened::Refused(Refusal::Bytes(limits.max_bytes)));
        }
        // Before the lookup: getaddrinfo runs on the blocking pool and cannot be
        // cancelled, so the permit is what bounds the lookups a job has in flight
        // (security review 2, F8).
        let permit = Arc::clone(&shared.connections)
            .try_acquire_owned()
            .map_err(|_| Opened::Refused(Refusal::TooManyConnections(limits.max_connections)))?;
        let addresses = match destination {
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
}

impl Shared {
    fn new(policy: Policy, proxies: &Proxies, peer_uid: u32, live: LiveViolations) -> Shared {
        let limits = proxies.limits;
        Shared {
            limits,
            peer_uid,
            connections: Arc::new(Semaphore::new(limits.max_connections as usize)),
            clients: Arc::new(Semaphore::new(limits.max_client_connections as usize)),
            total: Arc::clone(&proxies.total),
            bytes: AtomicU64::new(0),
            metrics: Arc::clone(&proxies.metrics),
            log: Mutex::default(),
            live,
            asks: policy.asker().cloned().map(JobAsks::new),
            policy,
        }
    }

    /// The permits a new connection from the jail holds while it lives, or `None`
    /// (recorded as a refusal) when the job or the executor is at its cap.
    fn admit(&self) -> Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)> {
        let limits = &self.limits;
        let Ok(client) = Arc::clone(&self.clients).try_acquire_owned() else {
            let refusal = Refusal::TooManyClientConnections(limits.max_client_connections);
            self.record(&Attempt::default(), &refusal);
            return None;
        };
        let Ok(total) = Arc::clone(&self.total).try_acquire_owned() else {
            let refusal = Refusal::ExecutorBusy(limits.max_total_connections);
            self.record(&Attempt::default(), &refusal);
            return None;
        };
        Some((client, total))
    }

    fn record(&self, attempt: &Attempt, refusal: &Refusal) {
        self.metrics.refused(refusal.kind());
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        if log.may_log() {
            info!(method = %attempt.method, target = %attempt.target, reason = %refusal, "egress request refused");
        }
        let report = &mut log.report;
        if report.violations.len() < MAX_VIOLATIONS {
            let violation = NetworkViolation {
                method: attempt.method.clone(),
                target: attempt.target.clone(),
                reason: refusal.to_string(),
            };
            // Never full (see LiveViolations); closed once nobody streams the job.
            let _ = self.live.try_send(violation.clone());
            report.violations.push(violation);
        } else {
            report.dropped = report.dropped.saturating_add(1);
        }
    }

    /// Logs a target that was allowed but could not be reached, within the cap.
    fn log_unreachable(&self, attempt: &Attempt, why: &str) {
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        if log.may_log() {
            info!(target = %attempt.target, why = %shown(why, MAX_SHOWN_CHARS), "egress target unreachable");
        }
    }

    /// Records the byte limit the first time a transfer hits it.
    pub(super) fn record_once_bytes(&self, attempt: &Attempt, max: u64) {
        let first = {
            let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
            !std::mem::replace(&mut log.bytes_reported, true)
        };
        if first {
            self.record(attempt, &Refusal::Bytes(max));
        }
    }
}

impl Log {
    /// Whether one more line may be logged; says once that the rest are not.
    fn may_log(&mut self) -> bool {
        self.lines = self.lines.saturating_add(1);
        if self.lines == MAX_LOG_LINES + 1 {
            info!("egress log cap of {MAX_LOG_LINES} lines reached for this job; later requests are not logged");
        }
        self.lines <= MAX_LOG_LINES
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
    let mut sink = vec![0; SINK_SIZE];
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
    use std::time::Instant;
    use tokio::net::TcpListener;

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
            max_client_connections: 3,
            max_total_connections: 4,
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
                    // The request as framed (head, then the body its Content-Length
                    // or chunked coding delimits), echoed byte for byte.
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while framed_len(&buf).is_none() {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.truncate(framed_len(&buf).unwrap_or(buf.len()));
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

    /// The length of the first whole request in `buf` (head and body, by its
    /// framing), or `None` while it is incomplete.
    fn framed_len(buf: &[u8]) -> Option<usize> {
        let head = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        let text = String::from_utf8_lossy(&buf[..head]).to_ascii_lowercase();
        let header = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
        };
        let body = &buf[head..];
        if header("transfer-encoding:").is_some_and(|v| v == "chunked") {
            return chunked_len(body).map(|len| head + len);
        }
        let len: usize = header("content-length:").map_or(Some(0), |v| v.parse().ok())?;
        (body.len() >= len).then_some(head + len)
    }

    /// The length of a whole chunked body (its last chunk and trailers included)
    /// at the start of `body`, or `None` while it is incomplete.
    fn chunked_len(body: &[u8]) -> Option<usize> {
        let mut at = 0;
        loop {
            let line = body[at..].windows(2).position(|w| w == b"\r\n")?;
            let size = std::str::from_utf8(&body[at..at + line]).ok()?;
            let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
            at += line + 2;
            if size == 0 {
                let rest = &body[at..];
                if rest.starts_with(b"\r\n") {
                    return Some(at + 2);
                }
                return Some(at + rest.windows(4).position(|w| w == b"\r\n\r\n")? + 4);
            }
            at += size + 2;
            if body.len() < at {
                return None;
            }
        }
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

    /// A job's shared state whose live refusals nobody receives.
    fn shared(port: u16) -> Arc<Shared> {
        shared_live(port, mpsc::channel(MAX_VIOLATIONS).0)
    }

    fn shared_live(port: u16, live: LiveViolations) -> Arc<Shared> {
        let proxies = Proxies::new(limits(), Arc::default());
        Arc::new(Shared::new(test_policy(port), &proxies, 0, live))
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
        // What the origin received after the head is the chunked body, exactly.
        assert!(
            reply.ends_with("\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n"),
            "{reply}"
        );
    }

    #[tokio::test]
    async fn content_length_bodies_are_forwarded_exactly() {
        let (port, _origin) = origin().await;
        let shared = shared(port);
        // The body holds a blank line and a request line of its own: only its
        // length says where it ends, and what follows it is never forwarded.
        let body = "ab\r\n\r\nGET / HTTP/1.1\r\n\u{0}\u{7f}z";
        let request = format!(
            "POST http://allowed.test:{port}/ HTTP/1.1\r\nHost: allowed.test:{port}\r\nContent-Length: {}\r\n\r\n{body}GET http://evil.test/ HTTP/1.1\r\n\r\n",
            body.len()
        );
        let reply = exchange(&shared, &request).await;
        assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
        assert!(!reply.contains("evil"), "{reply}");
        let length = format!("\r\nContent-Length: {}\r\n", body.len());
        let echoed = format!("\r\n\r\n{body}");
        assert!(
            reply.ends_with(&echoed) && reply.contains(&length),
            "{reply:?}"
        );
    }

    /// A job's proxy for the uid running the tests, started from `proxies`, whose
    /// live refusals nobody receives.
    fn job_proxy(jobs: &Path, id: u64, proxies: &Proxies, port: u16) -> JobProxy {
        job_proxy_live(jobs, id, proxies, port, mpsc::channel(MAX_VIOLATIONS).0)
    }

    fn job_proxy_live(
        jobs: &Path,
        id: u64,
        proxies: &Proxies,
        port: u16,
        live: LiveViolations,
    ) -> JobProxy {
        let me = (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        );
        proxies
            .start(jobs, id, me, test_policy(port), live)
            .unwrap()
    }

    /// Whether the proxy closes `client` without a word (it sent nothing).
    async fn closed_at_once(client: &mut UnixStream) -> bool {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(30), client.read(&mut byte));
        matches!(read.await, Ok(Ok(0)))
    }

    /// Sends a request the policy refuses on a new connection, until it is
    /// served (a closed connection's permit comes back a little after the close).
    async fn served_eventually(socket: &Path) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let mut client = UnixStream::connect(socket).await.unwrap();
            let _ = client
                .write_all(b"CONNECT evil.test:1 HTTP/1.1\r\n\r\n")
                .await;
            let mut out = String::new();
            let _ = client.read_to_string(&mut out).await;
            if out.starts_with("HTTP/1.1 403") {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Whether the running kernel has `SO_PASSRIGHTS` (Linux 6.16).
    fn kernel_has_passrights() -> bool {
        let release = nix::sys::utsname::uname().unwrap();
        let release = release.release().to_string_lossy().into_owned();
        let mut numbers = release
            .split(['.', '-'])
            .map(|n| n.parse::<u32>().unwrap_or(0));
        let (major, minor) = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
        (major, minor) >= (6, 16)
    }

    #[tokio::test]
    async fn descriptors_passed_into_the_proxy_socket_are_refused() {
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
        use std::os::fd::AsRawFd;
        let (port, _origin) = origin().await;
        let jobs = tempfile::tempdir().unwrap();
        let proxy = job_proxy(
            jobs.path(),
            1,
            &Proxies::new(limits(), Arc::default()),
            port,
        );
        let client =
            std::os::unix::net::UnixStream::connect(proxy.dir().join(SOCKET_NAME)).unwrap();
        let fds = [client.as_raw_fd()];
        let sent = sendmsg::<()>(
            client.as_raw_fd(),
            &[std::io::IoSlice::new(b"Y")],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        );
        if kernel_has_passrights() {
            assert_eq!(sent, Err(nix::errno::Errno::EPERM));
        } else {
            assert_eq!(
                sent,
                Ok(1),
                "older kernels queue them; the teardown frees them"
            );
        }
    }

    #[tokio::test]
    async fn log_lines_about_one_job_are_capped() {
        let shared = shared(1);
        for _ in 0..3 * MAX_LOG_LINES {
            shared.log_unreachable(&Attempt::default(), "connection refused");
            shared.record(&Attempt::default(), &Refusal::NotAllowed);
        }
        let log = shared.log.lock().unwrap();
        assert_eq!(log.lines, 6 * MAX_LOG_LINES);
        assert_eq!(log.report.violations.len(), MAX_VIOLATIONS);
        let mut log = Log::default();
        let allowed = (0..3 * MAX_LOG_LINES).filter(|_| log.may_log()).count();
        assert_eq!(allowed, MAX_LOG_LINES);
    }

    /// A flood of refusals: each of the first MAX_VIOLATIONS is sent live as it is
    /// recorded, the same as the report lists, and no more (the channel is the cap).
    #[tokio::test]
    async fn refusals_are_sent_live_up_to_the_cap() {
        let (live, mut received) = mpsc::channel(MAX_VIOLATIONS);
        let shared = shared_live(1, live);
        shared.record(&Attempt::default(), &Refusal::NotAllowed);
        let first = received.try_recv().expect("sent as it was recorded");
        assert_eq!(first.reason, Refusal::NotAllowed.to_string());
        for _ in 0..3 * MAX_VIOLATIONS {
            shared.record(&Attempt::default(), &Refusal::NotAllowed);
        }
        drop(shared);
        let mut sent = vec![first];
        while let Some(violation) = received.recv().await {
            sent.push(violation);
        }
        assert_eq!(sent.len(), MAX_VIOLATIONS);
    }

    #[tokio::test]
    async fn a_job_proxy_serves_its_socket_and_removes_it() {
        let (port, _origin) = origin().await;
        let jobs = tempfile::tempdir().unwrap();
        let (live, mut received) = mpsc::channel(MAX_VIOLATIONS);
        let proxy = job_proxy_live(
            jobs.path(),
            7,
            &Proxies::new(limits(), Arc::default()),
            port,
            live,
        );
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
        assert_eq!(received.try_recv().ok().as_ref(), report.violations.first());
        assert!(!jobs.path().join("7.proxy").exists());
    }

    #[tokio::test]
    async fn idle_connections_past_the_job_cap_are_closed_at_once() {
        let (port, _origin) = origin().await;
        let jobs = tempfile::tempdir().unwrap();
        let proxy = job_proxy(
            jobs.path(),
            1,
            &Proxies::new(limits(), Arc::default()),
            port,
        );
        let socket = proxy.dir().join(SOCKET_NAME);
        let mut held = Vec::new();
        for _ in 0..limits().max_client_connections {
            held.push(UnixStream::connect(&socket).await.unwrap());
        }
        for _ in 0..5 {
            let mut extra = UnixStream::connect(&socket).await.unwrap();
            assert!(closed_at_once(&mut extra).await);
        }
        drop(held.pop());
        assert!(served_eventually(&socket).await);
        let report = proxy.finish();
        let refused = Refusal::TooManyClientConnections(3).to_string();
        assert_eq!(report.violations.len(), 6, "{report:?}");
        assert_eq!(report.violations[0].reason, refused);
        assert_eq!(report.violations[0].target, "-");
    }

    #[tokio::test]
    async fn connections_of_all_jobs_share_the_executor_cap() {
        let (port, _origin) = origin().await;
        let jobs = tempfile::tempdir().unwrap();
        let proxies = Proxies::new(limits(), Arc::default());
        let first = job_proxy(jobs.path(), 1, &proxies, port);
        let second = job_proxy(jobs.path(), 2, &proxies, port);
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(
                UnixStream::connect(first.dir().join(SOCKET_NAME))
                    .await
                    .unwrap(),
            );
        }
        let socket = second.dir().join(SOCKET_NAME);
        held.push(UnixStream::connect(&socket).await.unwrap());
        let mut extra = UnixStream::connect(&socket).await.unwrap();
        assert!(closed_at_once(&mut extra).await);
        drop(first);
        assert!(served_eventually(&socket).await);
        let report = second.finish();
        assert_eq!(
            report.violations[0].reason,
            Refusal::ExecutorBusy(4).to_string()
        );
    }

    #[tokio::test]
    async fn the_upstream_permit_is_taken_before_the_name_lookup() {
        let (port, _origin) = origin().await;
        let shared = shared(port);
        // Two tunnels hold both upstream permits (the origin waits for a head).
        let mut held = Vec::new();
        for _ in 0..2 {
            let (mut client, server) = UnixStream::pair().unwrap();
            let serving = Arc::clone(&shared);
            tokio::spawn(async move { serve(server, &serving).await });
            let connect = format!("CONNECT allowed.test:{port} HTTP/1.1\r\n\r\n");
            client.write_all(connect.as_bytes()).await.unwrap();
            let mut reply = [0u8; 39];
            client.read_exact(&mut reply).await.unwrap();
            assert_eq!(&reply, b"HTTP/1.1 200 Connection established\r\n\r\n");
            held.push(client);
        }
        // A name not in `resolve` needs a lookup: refused before it starts, so a
        // job cannot have more lookups in flight than upstream permits.
        let request = format!("CONNECT no-such-name.wild.test:{port} HTTP/1.1\r\n\r\n");
        let reply = exchange(&shared, &request).await;
        assert!(
            reply.ends_with("(too many concurrent connections (limit 2))\n"),
            "{reply}"
        );
    }

    /// [`exchange`], and how long it took; panics if the proxy has not closed the
    /// connection after 20 s.
    async fn timed_exchange(shared: &Arc<Shared>, request: &str) -> (String, Duration) {
        let started = Instant::now();
        let reply = tokio::time::timeout(Duration::from_secs(20), exchange(shared, request))
            .await
            .expect("the proxy still holds the connection after 20 s");
        (reply, started.elapsed())
    }

    /// A job's shared state for `port` with these proxy timeouts.
    fn shared_with_timeouts(
        port: u16,
        connect: Duration,
        idle: Duration,
        connection: Duration,
    ) -> Arc<Shared> {
        Arc::new(Shared {
            limits: ProxyLimits {
                connect_timeout: connect,
                idle_timeout: idle,
                connection_timeout: connection,
                ..limits()
            },
            ..Arc::into_inner(shared(port)).unwrap()
        })
    }

    /// An origin that accepts and then, with `trickle`, sends a byte every 100 ms
    /// forever, or else never says anything; it never closes first.
    async fn lingering_origin(trickle: bool) -> (u16, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut stream, _)) = listener.accept().await {
                if trickle {
                    held.push(tokio::spawn(async move {
                        while stream.write_all(b"x").await.is_ok() {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }));
                } else {
                    held.push(tokio::spawn(async move {
                        let _keep = stream;
                        std::future::pending::<()>().await;
                    }));
                }
            }
        });
        (port, task)
    }

    /// README: `idle_timeout_ms` closes a tunnel once no byte moved either way for
    /// that long (here 300 ms, well before its 10 s total life).
    #[tokio::test]
    async fn a_silent_tunnel_is_closed_at_the_idle_timeout() {
        let (port, _origin) = lingering_origin(false).await;
        let shared = shared_with_timeouts(
            port,
            Duration::from_secs(5),
            Duration::from_millis(300),
            Duration::from_secs(10),
        );
        let (reply, took) = timed_exchange(
            &shared,
            &format!("CONNECT allowed.test:{port} HTTP/1.1\r\n\r\n"),
        )
        .await;
        assert_eq!(reply, "HTTP/1.1 200 Connection established\r\n\r\n");
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(5),
            "closed after {took:?}"
        );
    }

    /// README: `connection_timeout_ms` is the total life of one proxied connection:
    /// a tunnel that never idles (a byte every 100 ms, idle timeout 300 ms) is still
    /// closed at 1 s.
    #[tokio::test]
    async fn a_busy_tunnel_is_closed_at_the_connection_timeout() {
        let (port, _origin) = lingering_origin(true).await;
        let shared = shared_with_timeouts(
            port,
            Duration::from_secs(5),
            Duration::from_millis(300),
            Duration::from_secs(1),
        );
        let (reply, took) = timed_exchange(
            &shared,
            &format!("CONNECT allowed.test:{port} HTTP/1.1\r\n\r\n"),
        )
        .await;
        let relayed = reply
            .strip_prefix("HTTP/1.1 200 Connection established\r\n\r\n")
            .unwrap_or_else(|| panic!("{reply:?}"));
        // Bytes kept coming (the idle timeout never fired) until the total limit.
        assert!(
            relayed.len() >= 5 && relayed.bytes().all(|b| b == b'x'),
            "{reply:?}"
        );
        assert!(
            took >= Duration::from_secs(1) && took < Duration::from_secs(5),
            "closed after {took:?}"
        );
    }

    /// README: a target that does not accept within `connect_timeout_ms` is a 502,
    /// not a violation. The origin's accept queue is full (backlog 0, nothing
    /// accepted), so the kernel drops the proxy's SYNs and its connect hangs.
    #[tokio::test]
    async fn a_connect_that_hangs_is_502_at_the_connect_timeout() {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(0).unwrap();
        let origin = listener.local_addr().unwrap();
        let port = origin.port();
        let mut queued = Vec::new();
        while let Ok(stream) =
            std::net::TcpStream::connect_timeout(&origin, Duration::from_millis(200))
        {
            queued.push(stream);
            assert!(queued.len() < 8, "the accept queue never filled");
        }
        let shared = shared_with_timeouts(
            port,
            Duration::from_millis(300),
            Duration::from_secs(5),
            Duration::from_secs(10),
        );
        for request in [
            format!("CONNECT allowed.test:{port} HTTP/1.1\r\n\r\n"),
            format!(
                "GET http://allowed.test:{port}/ HTTP/1.1\r\nHost: allowed.test:{port}\r\n\r\n"
            ),
        ] {
            let (reply, took) = timed_exchange(&shared, &request).await;
            assert!(reply.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{reply}");
            assert!(
                reply.ends_with(&format!(
                    "\r\n\r\npysandbox: cannot reach allowed.test:{port}: connect timed out\n"
                )),
                "{reply}"
            );
            assert!(
                took >= Duration::from_millis(300) && took < Duration::from_secs(5),
                "answered after {took:?}"
            );
        }
        assert_eq!(shared.log.lock().unwrap().report, NetworkReport::default());
        drop(listener);
    }
}
