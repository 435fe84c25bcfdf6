//! HTTP replies as the tests see them, and a raw HTTP/1.1 exchange for requests a
//! well-behaved client would not send.

use std::net::SocketAddr;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response: status, headers and its body, which the contract says is always JSON.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The response headers.
    pub headers: HeaderMap,
    /// The body as text.
    pub text: String,
    /// The body parsed as JSON.
    pub json: Value,
}

impl Reply {
    /// Builds a reply, panicking if the body is not JSON (every response must be,
    /// but a `204`, which must be empty: its `json` is `null`).
    #[track_caller]
    pub fn new(status: u16, headers: HeaderMap, body: &[u8]) -> Reply {
        let text = String::from_utf8_lossy(body).into_owned();
        if status == 204 {
            assert!(body.is_empty(), "a 204 with a body: {text:?}");
            return Reply {
                status,
                headers,
                text,
                json: serde_json::Value::Null,
            };
        }
        let json = serde_json::from_slice(body).unwrap_or_else(|e| {
            panic!("the {status} response body is not JSON ({e}): {text:?}; headers: {headers:?}")
        });
        Reply {
            status,
            headers,
            text,
            json,
        }
    }

    /// A header's value, if present and readable as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Asserts an error reply: exact status, exact JSON body, `application/json`.
#[track_caller]
pub fn assert_error(reply: &Reply, status: u16, body: Value) {
    assert_eq!(
        (reply.status, &reply.json),
        (status, &body),
        "unexpected reply: {}",
        reply.text
    );
    let content_type = reply.header("content-type").unwrap_or("");
    assert!(
        content_type.starts_with("application/json"),
        "error content-type is {content_type:?}, expected application/json"
    );
}

/// Sends `request` (a complete HTTP/1.1 request, best with `Connection: close`) to
/// `addr` while reading the response concurrently, so a server that answers before
/// reading the whole body (413) is still heard. Returns the parsed response.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> std::io::Result<Reply> {
    let work = async {
        let stream = TcpStream::connect(addr).await?;
        let (mut rd, mut wr) = stream.into_split();
        let writer = async move {
            // The server may close before taking the whole body: that is allowed.
            let _ = wr.write_all(request).await;
            wr
        };
        let reader = async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            loop {
                match rd.read(&mut chunk).await {
                    Ok(0) => break Ok(buf),
                    Ok(n) => {
                        buf.extend_from_slice(&chunk[..n]);
                        if complete_response(&buf) {
                            break Ok(buf);
                        }
                    }
                    // A reset after the response arrived still leaves a response.
                    Err(e) if buf.is_empty() => break Err(e),
                    Err(_) => break Ok(buf),
                }
            }
        };
        let (_wr, response) = tokio::join!(writer, reader);
        response
    };
    let bytes = tokio::time::timeout(Duration::from_secs(30), work)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no response in 30 s"))??;
    parse_raw_response(&bytes)
        .map_err(|why| std::io::Error::new(std::io::ErrorKind::InvalidData, why))
}

/// Whether `buf` holds a whole response (headers plus a Content-Length body).
fn complete_response(buf: &[u8]) -> bool {
    let Some((head, body)) = split_head(buf) else {
        return false;
    };
    match content_length(head) {
        Some(len) => body.len() >= len,
        None => false,
    }
}

fn split_head(buf: &[u8]) -> Option<(&str, &[u8])> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    Some((head, &buf[end + 4..]))
}

fn content_length(head: &str) -> Option<usize> {
    head.lines().skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}

/// Parses an HTTP/1.1 response (Content-Length, chunked, or read-to-close body).
pub fn parse_raw_response(bytes: &[u8]) -> Result<Reply, String> {
    let (head, body) = split_head(bytes).ok_or_else(|| {
        format!(
            "no complete response head in {:?}",
            String::from_utf8_lossy(bytes)
        )
    })?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut headers = HeaderMap::new();
    let mut chunked = false;
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("bad header line {line:?}"))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|e| e.to_string())?;
        let value = HeaderValue::from_str(value.trim()).map_err(|e| e.to_string())?;
        if name == "transfer-encoding" && value.as_bytes().eq_ignore_ascii_case(b"chunked") {
            chunked = true;
        }
        headers.append(name, value);
    }
    let body = if let Some(len) = content_length(head) {
        body.get(..len)
            .ok_or_else(|| format!("body shorter than its Content-Length {len}"))?
            .to_vec()
    } else if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    let text = String::from_utf8_lossy(&body).into_owned();
    let json = serde_json::from_slice(&body)
        .map_err(|e| format!("the {status} response body is not JSON ({e}): {text:?}"))?;
    Ok(Reply {
        status,
        headers,
        text,
        json,
    })
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk size")?;
        let size_text = std::str::from_utf8(&body[..end]).map_err(|e| e.to_string())?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|e| e.to_string())?;
        body = &body[end + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(body.get(..size).ok_or("truncated chunk")?);
        body = body.get(size + 2..).ok_or("truncated chunk end")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_length_and_chunked_bodies() {
        let reply = parse_raw_response(
            b"HTTP/1.1 413 Payload Too Large\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"error\":1}trailing",
        )
        .unwrap();
        assert_eq!(reply.status, 413);
        assert_eq!(reply.json, serde_json::json!({ "error": 1 }));
        assert_eq!(reply.header("content-type"), Some("application/json"));

        let reply = parse_raw_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:2}\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(reply.json, serde_json::json!({ "a": 2 }));
    }

    #[test]
    fn rejects_non_json_bodies() {
        let err =
            parse_raw_response(b"HTTP/1.1 500 Oops\r\ncontent-length: 4\r\n\r\n<h1>").unwrap_err();
        assert!(err.contains("not JSON"), "{err}");
    }
}
