//! A local file service for the upload tests: an HTTP/1.1 server on 127.0.0.1 that
//! records every request it gets (headers, multipart parts) and answers the way the
//! test asks — with a URL in one of the JSON shapes upload services use, a redirect,
//! a status, or never.
//!
//! It runs on its own threads with blocking sockets, so it answers whatever the
//! test's runtime is doing. Each connection carries one request and is closed after
//! the answer.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How the stub answers uploads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StubReply {
    /// `200` with JSON naming a URL for the file, in turn as `url`, `data.url` and
    /// `file.url`: `http://files.test/<n>/<filename>`.
    Url,
    /// `302` to this location.
    Redirect(String),
    /// This status with an empty JSON object.
    Status(u16),
    /// Reads the request and never answers.
    Hang,
    /// `200` with this body.
    Json(String),
}

/// One request as the stub received it.
#[derive(Debug, Clone)]
pub struct Received {
    /// `POST`, usually.
    pub method: String,
    /// The request target: path and query.
    pub target: String,
    /// Header names (lowercase) and values, in order.
    pub headers: Vec<(String, String)>,
    /// The multipart parts of the body (none if it was not multipart).
    pub parts: Vec<FormPart>,
    /// The URL the stub put in its answer, if it answered with one.
    pub returned_url: Option<String>,
    /// When its headers had arrived.
    pub started: Instant,
    /// When the answer was written, if it was.
    pub answered: Option<Instant>,
}

impl Received {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The part named `file`; panics if there is not exactly one part, named so.
    #[track_caller]
    pub fn file(&self) -> &FormPart {
        match self.parts.as_slice() {
            [part] if part.name == "file" => part,
            parts => panic!("expected one part named file, got {parts:?}"),
        }
    }
}

/// One part of a `multipart/form-data` body.
#[derive(Clone, PartialEq, Eq)]
pub struct FormPart {
    /// Its `name` parameter.
    pub name: String,
    /// Its `filename` parameter, as sent.
    pub filename: Option<String>,
    /// Its `Content-Type`.
    pub content_type: Option<String>,
    /// Its bytes.
    pub data: Vec<u8>,
}

impl std::fmt::Debug for FormPart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FormPart")
            .field("name", &self.name)
            .field("filename", &self.filename)
            .field("content_type", &self.content_type)
            .field("len", &self.data.len())
            .finish()
    }
}

/// How long an earlier connection gets to show its client closed it, when the
/// next request arrives.
const CLOSE_GRACE: Duration = Duration::from_millis(300);

#[derive(Debug, Default)]
struct State {
    received: Mutex<Vec<Received>>,
    connections: AtomicUsize,
    answered: AtomicUsize,
    stop: AtomicBool,
    /// Connections whose request arrived and that the stub still serves, by number.
    in_flight: Mutex<Vec<(usize, TcpStream)>>,
    max_in_flight: AtomicUsize,
    arrivals: AtomicUsize,
}

impl State {
    /// Counts `stream`'s request as in flight, with every earlier one whose client
    /// has not closed its connection yet (a client that gave up on a hanging
    /// request has closed it: the kernel holds its FIN, seen with a peek), and
    /// keeps the highest count. A client's connection task may send that FIN a
    /// moment after it started the next request: an earlier connection gets
    /// [`CLOSE_GRACE`] to close. Returns the entry's number for [`State::done`].
    fn arrived(&self, stream: &TcpStream) -> usize {
        let mut open = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let deadline = Instant::now() + CLOSE_GRACE;
        loop {
            open.retain(|(_, other)| still_open(other));
            if open.is_empty() || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let number = self.arrivals.fetch_add(1, Ordering::SeqCst);
        if let Ok(copy) = stream.try_clone() {
            open.push((number, copy));
        }
        self.max_in_flight.fetch_max(open.len(), Ordering::SeqCst);
        number
    }

    /// The stub is done with request `number`.
    fn done(&self, number: usize) {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(n, _)| *n != number);
    }
}

/// Whether the peer of `stream` has not closed it: a peek that neither finds the
/// end of the stream nor fails.
fn still_open(stream: &TcpStream) -> bool {
    use nix::sys::socket::{recv, MsgFlags};
    use std::os::fd::AsRawFd;
    let mut byte = [0u8; 1];
    match recv(
        stream.as_raw_fd(),
        &mut byte,
        MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
    ) {
        Ok(0) => false,
        Ok(_) => true,
        Err(e) => e == nix::errno::Errno::EAGAIN,
    }
}

/// A running stub; stops (and lets hanging requests go) when dropped.
#[derive(Debug)]
pub struct UploadStub {
    addr: SocketAddr,
    state: Arc<State>,
    acceptor: Option<JoinHandle<()>>,
}

impl UploadStub {
    /// Starts a stub on a free port of 127.0.0.1 that answers every upload with `reply`.
    pub fn start(reply: StubReply) -> UploadStub {
        let listener = TcpListener::bind("127.0.0.1:0").expect("cannot bind the upload stub");
        let addr = listener.local_addr().expect("the stub's address");
        listener
            .set_nonblocking(true)
            .expect("cannot make the stub's listener non-blocking");
        let state = Arc::new(State::default());
        let shared = Arc::clone(&state);
        let acceptor = std::thread::spawn(move || accept_loop(&listener, &shared, &reply));
        UploadStub {
            addr,
            state,
            acceptor: Some(acceptor),
        }
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// The most requests it has held at once: arrived, not yet answered, and with
    /// their client still connected.
    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }

    /// Requests received so far, in the order their headers arrived.
    pub fn received(&self) -> Vec<Received> {
        self.state
            .received
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for UploadStub {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, state: &Arc<State>, reply: &StubReply) {
    while !state.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                state.connections.fetch_add(1, Ordering::SeqCst);
                let state = Arc::clone(state);
                let reply = reply.clone();
                std::thread::spawn(move || {
                    let _ = serve(stream, &state, &reply);
                });
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Reads one request, records it and answers it.
fn serve(mut stream: TcpStream, state: &State, reply: &StubReply) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_millis(50)))?;
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            break end;
        }
        if !read_some(&mut stream, &mut buf, state)? {
            return Ok(());
        }
    };
    let started = Instant::now();
    let number = state.arrived(&stream);
    let served = answer_request(&mut stream, buf, head_end, started, state, reply);
    state.done(number);
    served
}

/// Parses and records the request whose head ends at `head_end` in `buf`, reads
/// its body, and answers it.
fn answer_request(
    stream: &mut TcpStream,
    mut buf: Vec<u8>,
    head_end: usize,
    started: Instant,
    state: &State,
    reply: &StubReply,
) -> std::io::Result<()> {
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let method = request_line.next().unwrap_or_default().to_owned();
    let target = request_line.next().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let mut body = buf.split_off(head_end + 4);
    if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while body.len() < len {
            if !read_some(stream, &mut body, state)? {
                return Ok(());
            }
        }
        body.truncate(len);
    } else if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        body = loop {
            if let Some(whole) = dechunk(&body) {
                break whole;
            }
            if !read_some(stream, &mut body, state)? {
                return Ok(());
            }
        };
    }
    let parts = header("content-type")
        .and_then(|ct| boundary(&ct))
        .map(|b| multipart(&body, &b))
        .unwrap_or_default();
    let n = state.answered.fetch_add(1, Ordering::SeqCst);
    let filename = parts
        .first()
        .and_then(|p| p.filename.clone())
        .unwrap_or_default();
    let (answer, returned_url) = match reply {
        StubReply::Url => {
            let url = format!("http://files.test/{n}/{filename}");
            let json = match n % 3 {
                0 => serde_json::json!({ "url": url }),
                1 => serde_json::json!({ "data": { "url": url } }),
                _ => serde_json::json!({ "file": { "url": url, "id": n } }),
            };
            (response(200, "OK", &[], &json.to_string()), Some(url))
        }
        StubReply::Redirect(location) => {
            (response(302, "Found", &[("Location", location)], ""), None)
        }
        StubReply::Status(status) => (response(*status, "Status", &[], "{}"), None),
        StubReply::Hang => (Vec::new(), None),
        StubReply::Json(body) => (response(200, "OK", &[], body), None),
    };
    let index = {
        let mut received = state
            .received
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        received.push(Received {
            method,
            target,
            headers,
            parts,
            returned_url,
            started,
            answered: None,
        });
        received.len() - 1
    };
    if *reply == StubReply::Hang {
        while !state.stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
        return Ok(());
    }
    stream.write_all(&answer)?;
    stream.flush()?;
    if let Some(r) = state
        .received
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get_mut(index)
    {
        r.answered = Some(Instant::now());
    }
    Ok(())
}

/// Reads what is there into `buf`; false when the peer closed or the stub stops.
fn read_some(stream: &mut TcpStream, buf: &mut Vec<u8>, state: &State) -> std::io::Result<bool> {
    let mut chunk = [0u8; 64 * 1024];
    loop {
        if state.stop.load(Ordering::SeqCst) {
            return Ok(false);
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(false),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return Ok(true);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(e),
        }
    }
}

fn response(status: u16, reason: &str, headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} {reason}\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str(&format!(
        "Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    out.into_bytes()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The whole body of a chunked message, or `None` while it is incomplete.
fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let end = find(body, b"\r\n")?;
        let size = std::str::from_utf8(&body[..end]).ok()?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        body = &body[end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

fn boundary(content_type: &str) -> Option<String> {
    let (kind, params) = content_type.split_once(';')?;
    if !kind.trim().eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    params.split(';').find_map(|p| {
        let (name, value) = p.trim().split_once('=')?;
        (name == "boundary").then(|| value.trim_matches('"').to_owned())
    })
}

/// The parts of a multipart body delimited by `boundary`.
fn multipart(body: &[u8], boundary: &str) -> Vec<FormPart> {
    let delimiter = format!("--{boundary}");
    let separator = format!("\r\n--{boundary}");
    let mut parts = Vec::new();
    let Some(first) = find(body, delimiter.as_bytes()) else {
        return parts;
    };
    let mut pos = first + delimiter.len();
    while !body[pos..].starts_with(b"--") {
        pos += 2; // CRLF after the delimiter
        let Some(len) = find(&body[pos..], separator.as_bytes()) else {
            break;
        };
        let raw = &body[pos..pos + len];
        pos += len + separator.len();
        let Some(head_end) = find(raw, b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
        let mut part = FormPart {
            name: String::new(),
            filename: None,
            content_type: None,
            data: raw[head_end + 4..].to_vec(),
        };
        for line in head.split("\r\n") {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            match name.trim().to_ascii_lowercase().as_str() {
                "content-type" => part.content_type = Some(value.trim().to_owned()),
                "content-disposition" => {
                    for param in value.split(';').skip(1) {
                        let Some((key, value)) = param.trim().split_once('=') else {
                            continue;
                        };
                        let value = value.trim_matches('"').to_owned();
                        match key {
                            "name" => part.name = value,
                            "filename" => part.filename = Some(value),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        parts.push(part);
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_multipart_body() {
        let body = b"--XY\r\nContent-Disposition: form-data; name=\"file\"; filename=\"data/out.csv\"\r\nContent-Type: text/csv\r\n\r\na,b\r\n1,2\r\n--XY--\r\n";
        let parts = multipart(body, "XY");
        assert_eq!(
            parts,
            [FormPart {
                name: "file".into(),
                filename: Some("data/out.csv".into()),
                content_type: Some("text/csv".into()),
                data: b"a,b\r\n1,2".to_vec(),
            }]
        );
        assert_eq!(
            boundary("multipart/form-data; boundary=XY").as_deref(),
            Some("XY")
        );
        assert_eq!(
            dechunk(b"3\r\nabc\r\n0\r\n\r\n").as_deref(),
            Some(&b"abc"[..])
        );
        assert_eq!(dechunk(b"3\r\nab"), None);
    }

    #[test]
    fn records_a_multipart_upload_and_answers_with_a_url() {
        let stub = UploadStub::start(StubReply::Url);
        let body = "--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n\r\nhi\r\n--B--\r\n";
        let request = format!(
            "POST /up?public=true HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\nContent-Type: multipart/form-data; boundary=B\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let mut stream = TcpStream::connect(stub.addr()).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        assert!(
            answer.ends_with(r#"{"url":"http://files.test/0/a.txt"}"#),
            "{answer}"
        );
        let received = stub.received();
        assert_eq!(received.len(), 1);
        assert_eq!(received[0].target, "/up?public=true");
        assert_eq!(received[0].header("authorization"), Some("Bearer t"));
        assert_eq!(received[0].file().data, b"hi");
        assert_eq!(stub.connections(), 1);
    }
}
