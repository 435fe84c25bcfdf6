//! HTTP/1 as the proxy reads and writes it, without I/O: request heads (CONNECT or an
//! absolute `http://` URI), the request forwarded upstream, response heads and
//! chunk-size lines.

use std::io;

use pysandbox_shared::text::shown;

use super::policy::{Refusal, MAX_SHOWN_CHARS};
use super::target::Target;

/// A request head larger than this is refused.
pub(super) const MAX_REQUEST_HEAD: usize = 16 * 1024;
/// A response head larger than this ends the connection.
pub(super) const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Headers in one head, at most.
const MAX_HEADERS: usize = 100;

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

/// Headers always forwarded, whatever `Connection` lists.
const END_TO_END: &[&str] = &["host", "content-length", "transfer-encoding"];

/// What a request tried, as its violation shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Attempt {
    pub(super) method: String,
    pub(super) target: String,
}

impl Default for Attempt {
    fn default() -> Self {
        Attempt {
            method: "-".into(),
            target: "-".into(),
        }
    }
}

/// A request head the proxy understood, before the policy looked at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Parsed {
    pub(super) attempt: Attempt,
    pub(super) request: Request,
    /// Where the head ends in the buffer it was parsed from.
    pub(super) head_len: usize,
}

/// A request the proxy understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Request {
    Connect(Target),
    Forward(Forward),
}

impl Request {
    pub(super) fn target(&self) -> &Target {
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
pub(super) struct Forward {
    target: Target,
    method: String,
    /// The origin-form target sent upstream, e.g. `/path?q`.
    path: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    version: u8,
    /// End-to-end headers, in order.
    headers: Headers,
    pub(super) body: Body,
}

impl Forward {
    /// The head sent upstream.
    pub(super) fn head(&self) -> Vec<u8> {
        let start = format!("{} {} HTTP/1.{}", self.method, self.path, self.version);
        serialize_head(
            &start,
            self.headers
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_slice())),
        )
    }
}

/// How a request body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Body {
    None,
    Length(u64),
    Chunked,
}

/// Whether `buf` holds a whole request head, or something that can never become
/// one (the parser then says why).
pub(super) fn request_head_done(buf: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    !buf.is_empty()
        && !matches!(
            httparse::Request::new(&mut headers).parse(buf),
            Ok(httparse::Status::Partial)
        )
        || buf.len() >= MAX_REQUEST_HEAD
}

/// Parses a request head (which `buf` starts with), or says why it is refused and
/// what the request tried, as far as the head was read.
pub(super) fn parse_request(buf: &[u8]) -> Result<Parsed, (Attempt, Refusal)> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let status = req.parse(buf);
    let mut attempt = Attempt {
        method: req
            .method
            .map_or_else(|| "-".into(), |m| shown(m, MAX_SHOWN_CHARS)),
        target: req
            .path
            .map_or_else(|| "-".into(), |p| shown(p, MAX_SHOWN_CHARS)),
    };
    let bad = |attempt, why| Err((attempt, Refusal::BadRequest(why)));
    let head_len = match status {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_REQUEST_HEAD => {
            return bad(attempt, "request head too large")
        }
        Ok(httparse::Status::Partial) => return bad(attempt, "incomplete request head"),
        Err(_) => return bad(attempt, "not an HTTP/1 request"),
    };
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        return bad(attempt, "incomplete request line");
    };
    let request = if method == "CONNECT" {
        match Target::parse_authority(path, None) {
            Ok(target) => Request::Connect(target),
            Err(malformed) => return Err((attempt, malformed.into())),
        }
    } else {
        let (target, origin) = match absolute_uri(path) {
            Ok(parsed) => parsed,
            Err(refusal) => return Err((attempt, refusal)),
        };
        attempt.target = target.to_string();
        match forwarded_request(req.headers, &target) {
            Ok((headers, body)) => Request::Forward(Forward {
                target,
                method: method.to_owned(),
                path: origin,
                version,
                headers,
                body,
            }),
            Err(refusal) => return Err((attempt, refusal)),
        }
    };
    attempt.target = request.target().to_string();
    Ok(Parsed {
        attempt,
        request,
        head_len,
    })
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

/// Whether a header is not forwarded: a standard hop-by-hop one, or one the
/// `Connection` header lists, except those that frame the message or name its
/// host. Those were checked above; a `Connection: Host` must not strip the Host
/// header the proxy just matched against the target (security review L3).
fn is_hop_by_hop(name: &str, listed: &[String]) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
        || (listed.iter().any(|l| name.eq_ignore_ascii_case(l))
            && !END_TO_END.iter().any(|e| name.eq_ignore_ascii_case(e)))
}

/// A response head as forwarded: interim (1xx) heads as they are, the final head
/// without hop-by-hop headers and with `Connection: close`. `None` until `buf`
/// holds a whole head.
pub(super) fn response_head(buf: &[u8]) -> io::Result<Option<(Vec<u8>, usize, bool)>> {
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
    let listed = connection_options(
        resp.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
            .map(|h| h.value),
    );
    let kept = resp
        .headers
        .iter()
        .filter(|h| !is_hop_by_hop(h.name, &listed))
        .map(|h| (h.name, h.value));
    let head = serialize_head(&format!("HTTP/1.{version} {code} {reason}"), kept);
    Ok(Some((head, len, false)))
}

/// A head as the proxy sends it on: the start line, the headers in order, and
/// `Connection: close`.
fn serialize_head<'a>(start: &str, headers: impl Iterator<Item = (&'a str, &'a [u8])>) -> Vec<u8> {
    let mut head = format!("{start}\r\n").into_bytes();
    for (name, value) in headers {
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"Connection: close\r\n\r\n");
    head
}

/// The size on a chunk-size line (`1a;ext\r\n`).
pub(super) fn chunk_size(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\r\n")?;
    let end = line.iter().position(|&b| b == b';').unwrap_or(line.len());
    let digits = line[..end].trim_ascii_end();
    if digits.is_empty() || digits.len() > 15 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(text: &str) -> Parsed {
        parse_request(text.as_bytes()).expect(text)
    }

    fn refusal(text: &str) -> (String, String, String) {
        let (attempt, refusal) = parse_request(text.as_bytes()).expect_err(text);
        (attempt.method, attempt.target, refusal.to_string())
    }

    #[test]
    fn connect_targets_are_normalized() {
        let parsed = request("CONNECT Example.COM.:443 HTTP/1.1\r\nHost: x\r\n\r\nearly");
        assert_eq!(parsed.attempt.target, "example.com:443");
        assert_eq!(parsed.request.target().to_string(), "example.com:443");
        assert_eq!(
            parsed.head_len,
            "CONNECT Example.COM.:443 HTTP/1.1\r\nHost: x\r\n\r\n".len()
        );
        let parsed = request("CONNECT 0x7f.1:443 HTTP/1.1\r\n\r\n");
        assert_eq!(
            parsed.attempt.target, "127.0.0.1:443",
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
        let parsed = request(text);
        assert_eq!(
            parsed.attempt,
            Attempt {
                method: "POST".into(),
                target: "allowed.test:8080".into()
            }
        );
        let Request::Forward(forward) = parsed.request else {
            panic!("not a forward")
        };
        assert_eq!(&text[parsed.head_len..], "abc");
        assert_eq!(forward.body, Body::Length(3));
        assert_eq!(
            String::from_utf8(forward.head()).unwrap(),
            "POST /a/b?c=d HTTP/1.1\r\nHost: allowed.test:8080\r\nContent-Length: 3\r\n\
             Accept: */*\r\nConnection: close\r\n\r\n"
        );
        let parsed = request("GET http://a.test?q HTTP/1.0\r\nHost: a.test:80\r\n\r\n");
        let Request::Forward(forward) = parsed.request else {
            panic!("not a forward")
        };
        assert_eq!((forward.path.as_str(), forward.version), ("/?q", 0));
        let parsed = request(
            "PUT http://a.test/ HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: Chunked\r\n\r\n",
        );
        let Request::Forward(forward) = parsed.request else {
            panic!("not a forward")
        };
        assert_eq!(forward.body, Body::Chunked);
    }

    #[test]
    fn connection_cannot_strip_the_checked_host_or_the_framing() {
        let text = "POST http://a.test/ HTTP/1.1\r\nHost: a.test\r\nContent-Length: 2\r\n\
                    Connection: Host, content-length, X-Hop\r\nX-Hop: 1\r\n\r\nok";
        let Request::Forward(forward) = request(text).request else {
            panic!("not a forward")
        };
        assert_eq!(
            String::from_utf8(forward.head()).unwrap(),
            "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 2\r\nConnection: close\r\n\r\n"
        );
        let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: transfer-encoding\r\n\r\n";
        let (head, _, _) = response_head(chunked.as_bytes()).unwrap().unwrap();
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        );
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
            // Rust's parse takes a `+`, and 19 digits could be leading zeros: a
            // length is 1 to 18 plain digits, read one way only (RFC 9112 §6.3).
            ("GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nContent-Length: +1\r\n\r\n", "malformed request: invalid Content-Length"),
            ("GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nContent-Length: 0000000000000000001\r\n\r\n", "malformed request: invalid Content-Length"),
            ("GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "malformed request: unsupported Transfer-Encoding"),
            ("\x16\x03\x01\x00", "malformed request: not an HTTP/1 request"),
            ("GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\n", "malformed request: incomplete request head"),
        ] {
            let (_, _, got) = refusal(text);
            assert_eq!(got, reason, "{text:?}");
        }
    }

    /// A head is parsed once it is whole, or once it can never become one: not
    /// HTTP, or 16 KiB without its end, which is refused as too large.
    #[test]
    fn a_head_is_awaited_until_whole_or_too_large() {
        assert!(!request_head_done(b""));
        assert!(!request_head_done(
            b"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\n"
        ));
        assert!(request_head_done(
            b"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n"
        ));
        assert!(request_head_done(b"\x16\x03\x01\x00"));
        let start = "GET http://a.test/ HTTP/1.1\r\nX-Long: ";
        let partial = |len: usize| format!("{start}{}", "a".repeat(len - start.len()));
        assert!(!request_head_done(partial(16 * 1024 - 1).as_bytes()));
        assert!(request_head_done(partial(16 * 1024).as_bytes()));
        assert_eq!(
            refusal(&partial(16 * 1024 - 1)).2,
            "malformed request: incomplete request head"
        );
        assert_eq!(
            refusal(&partial(16 * 1024)).2,
            "malformed request: request head too large"
        );
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
}

/// Properties over arbitrary input: the parsers never panic, and what they accept
/// comes back out the same way.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn request_heads_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = request_head_done(&bytes);
            if let Ok(parsed) = parse_request(&bytes) {
                prop_assert!(parsed.head_len <= bytes.len());
                if let Request::Forward(forward) = &parsed.request {
                    // What goes upstream is one whole head.
                    let head = forward.head();
                    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS + 1];
                    let parsed_again = httparse::Request::new(&mut headers).parse(&head);
                    prop_assert!(matches!(parsed_again, Ok(httparse::Status::Complete(n)) if n == head.len()));
                }
            }
        }

        #[test]
        fn textual_requests_never_panic(text in "[A-Z]{1,8} [ -~]{0,64} HTTP/1\\.[01]\r\n([A-Za-z-]{1,12}: [ -~]{0,32}\r\n){0,6}\r\n") {
            let _ = parse_request(text.as_bytes());
        }

        #[test]
        fn forwarded_heads_parse_back_to_the_same_target(
            host in "[a-z]{1,10}\\.test",
            port in 1u16..,
            path in "/[a-zA-Z0-9/._~-]{0,30}",
            names in proptest::collection::vec("[A-Za-z][A-Za-z0-9-]{0,10}", 0..5),
        ) {
            let mut text = format!("GET http://{host}:{port}{path} HTTP/1.1\r\nHost: {host}:{port}\r\n");
            for name in &names {
                text.push_str(&format!("{name}: v\r\n"));
            }
            text.push_str("\r\n");
            let Ok(parsed) = parse_request(text.as_bytes()) else {
                // Only header names the proxy refuses (framing, a second Host).
                return Ok(());
            };
            let Request::Forward(forward) = parsed.request else {
                return Err(TestCaseError::fail("not a forward"));
            };
            let head = forward.head();
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut again = httparse::Request::new(&mut headers);
            prop_assert!(matches!(again.parse(&head), Ok(httparse::Status::Complete(n)) if n == head.len()));
            prop_assert_eq!(again.path, Some(path.as_str()));
            let hosts: Vec<_> = again.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("host")).collect();
            prop_assert_eq!(hosts.len(), 1);
            let want = format!("{host}:{port}");
            prop_assert_eq!(hosts[0].value, want.as_bytes());
        }

        #[test]
        fn response_heads_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            if let Ok(Some((head, len, _))) = response_head(&bytes) {
                prop_assert!(len <= bytes.len());
                // What is sent on is itself a whole head.
                prop_assert!(matches!(response_head(&head), Ok(Some(_))));
            }
        }

        #[test]
        fn chunk_sizes_round_trip(size in 0u64..(1 << 60), ext in "(;[a-z=]{0,8})?") {
            let line = format!("{size:x}{ext}\r\n");
            prop_assert_eq!(chunk_size(line.as_bytes()), Some(size));
        }

        #[test]
        fn chunk_size_lines_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = chunk_size(&bytes);
        }
    }
}
