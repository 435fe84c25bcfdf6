//! Calling the ask callback for the executor, which makes no outbound call itself.
//!
//! For each [`Ask`] frame of a running job, the frontend POSTs
//! `{"host", "port", "requestId", "method"}` to the URL the executor sent (its
//! operator's `network.ask_url`), with the configured bearer token, and answers
//! with the outcome. Only `200` with JSON `{"allow": true}` allows; anything else
//! refuses: `false`, another status, a redirect (never followed), a body that is
//! not that JSON or is larger than [`MAX_ANSWER_BYTES`], an error, a timeout.
//!
//! The URL is the operator's, not a client's: the upload address policy (which
//! keeps clients from pointing the frontend at private addresses) does not apply
//! to it, so a callback on the operator's own network works.

use std::sync::Arc;
use std::time::Duration;

use pysandbox_shared::text::shown;
use pysandbox_shared::{Ask, AskOutcome};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::duplicate_keys::first_duplicate_key;
use crate::metrics::AskCounters;
use crate::routes::MAX_LOGGED_CHARS;
use crate::upload::{outbound_client, read_capped};

/// The most of the callback's answer that is read: `{"allow": true}` is 15 bytes.
const MAX_ANSWER_BYTES: usize = 4096;

/// Calls the ask callback, counting each call.
#[derive(Debug, Clone)]
pub struct AskCaller {
    client: reqwest::Client,
    counters: Arc<AskCounters>,
}

/// The question as the callback receives it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Question<'a> {
    host: &'a str,
    port: u16,
    request_id: &'a str,
    method: &'a str,
}

/// The only answer read: unknown fields are ignored, a missing or non-boolean
/// `allow` makes it no answer.
#[derive(Deserialize)]
struct Verdict {
    allow: bool,
}

/// The `allow` of a JSON object, or `None`. The derived decoder alone would also
/// take `[true]` (a sequence in field order) and the last of two `allow` keys
/// (where a proxy in front of the callback may have read the first).
fn verdict(body: &[u8]) -> Option<bool> {
    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(body).ok()?;
    if first_duplicate_key(body).is_some() {
        return None;
    }
    serde_json::from_slice::<Verdict>(body)
        .ok()
        .map(|verdict| verdict.allow)
}

impl AskCaller {
    /// A caller counting into `counters`.
    pub fn new(counters: Arc<AskCounters>) -> reqwest::Result<AskCaller> {
        Ok(AskCaller {
            client: outbound_client().build()?,
            counters,
        })
    }

    /// Asks the callback about `ask` for the job of `request_id`.
    pub async fn call(&self, ask: &Ask, request_id: &str) -> AskOutcome {
        let started = Instant::now();
        let limit = Duration::from_millis(ask.timeout_ms.into());
        let (outcome, why) = match tokio::time::timeout(limit, self.exchange(ask, request_id)).await
        {
            Ok(Ok(true)) => (AskOutcome::Allowed, None),
            Ok(Ok(false)) => (AskOutcome::Refused, None),
            Ok(Err(why)) => (AskOutcome::Failed, Some(why)),
            Err(_) => (AskOutcome::TimedOut, None),
        };
        let took = started.elapsed();
        self.counters.observe(outcome, took);
        let (host, method) = (
            shown(&ask.host, MAX_LOGGED_CHARS),
            shown(&ask.method, MAX_LOGGED_CHARS),
        );
        let elapsed_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
        match why {
            None => info!(
                host,
                port = ask.port,
                method,
                outcome = outcome.as_str(),
                elapsed_ms,
                "ask callback answered"
            ),
            Some(why) => warn!(
                host,
                port = ask.port,
                method,
                elapsed_ms,
                "ask callback failed, so the target is refused: {why}"
            ),
        }
        outcome
    }

    /// The callback's `allow`, or why there is none.
    async fn exchange(&self, ask: &Ask, request_id: &str) -> Result<bool, String> {
        let question = Question {
            host: &ask.host,
            port: ask.port,
            request_id,
            method: &ask.method,
        };
        let mut request = self
            .client
            .post(&ask.url)
            .header(reqwest::header::ACCEPT, "application/json")
            .json(&question);
        if let Some(token) = &ask.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| {
            // Without the URL, which may carry a secret of the operator's in its
            // query; the causes say why.
            let e = e.without_url();
            let mut why = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                why = format!("{why}: {cause}");
                source = cause.source();
            }
            why
        })?;
        let status = response.status();
        if status != StatusCode::OK {
            return Err(format!("HTTP {}, not 200", status.as_u16()));
        }
        let body = read_capped(response, MAX_ANSWER_BYTES)
            .await
            .map_err(|e| format!("reading the answer: {}", e.without_url()))?
            .ok_or_else(|| format!("an answer larger than {MAX_ANSWER_BYTES} bytes"))?;
        verdict(&body).ok_or_else(|| "not a JSON object with one boolean allow".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A callback answering every request with `answer` (raw HTTP), after
    /// `delay`; returns its URL and the requests it got.
    async fn callback(
        answer: Vec<u8>,
        delay: Duration,
    ) -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/ask", listener.local_addr().unwrap());
        let (seen, requests) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (answer, seen) = (answer.clone(), seen.clone());
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 4096];
                    // Head and a small JSON body: read until the body is complete.
                    loop {
                        let n = stream.read(&mut buf).await.unwrap_or(0);
                        request.extend_from_slice(&buf[..n]);
                        let text = String::from_utf8_lossy(&request);
                        if n == 0 || text.ends_with('}') {
                            break;
                        }
                    }
                    let text = String::from_utf8_lossy(&request).into_owned();
                    // Where a followed redirect would land: a yes.
                    let answer = match text.split(' ').nth(1) {
                        Some("/yes") => reply("200 OK", "", br#"{"allow": true}"#),
                        _ => answer,
                    };
                    let _ = seen.send(text);
                    tokio::time::sleep(delay).await;
                    let _ = stream.write_all(&answer).await;
                });
            }
        });
        (url, requests)
    }

    fn reply(status: &str, extra: &str, body: &[u8]) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(body);
        out
    }

    fn ask(url: &str, timeout_ms: u32) -> Ask {
        Ask {
            id: 1,
            host: "api.example.com".into(),
            port: 443,
            method: "CONNECT".into(),
            url: url.into(),
            token: Some("tok".into()),
            timeout_ms,
        }
    }

    async fn outcome_of(answer: Vec<u8>) -> AskOutcome {
        let (url, _requests) = callback(answer, Duration::ZERO).await;
        let caller = AskCaller::new(Arc::default()).unwrap();
        caller.call(&ask(&url, 10_000), "r-1").await
    }

    #[tokio::test]
    async fn only_200_with_allow_true_allows() {
        let (url, mut requests) =
            callback(reply("200 OK", "", br#"{"allow": true}"#), Duration::ZERO).await;
        let counters = Arc::new(AskCounters::default());
        let caller = AskCaller::new(Arc::clone(&counters)).unwrap();
        assert_eq!(
            caller.call(&ask(&url, 10_000), "r-1").await,
            AskOutcome::Allowed
        );
        let request = requests.recv().await.unwrap();
        assert!(request.starts_with("POST /ask HTTP/1.1\r\n"), "{request}");
        assert!(
            request.contains("authorization: Bearer tok\r\n"),
            "{request}"
        );
        assert!(request.ends_with(
            r#"{"host":"api.example.com","port":443,"requestId":"r-1","method":"CONNECT"}"#
        ));
        assert_eq!(
            outcome_of(reply("200 OK", "", br#"{"allow":false,"why":"no"}"#)).await,
            AskOutcome::Refused
        );
    }

    /// Every answer that is not exactly a yes refuses.
    #[tokio::test]
    async fn hostile_answers_refuse() {
        let huge = format!(r#"{{"allow": true, "pad": "{}"}}"#, "x".repeat(1 << 20));
        for answer in [
            reply("200 OK", "", br#"{"allow": "yes"}"#),
            reply("200 OK", "", br#"{"allow": 1}"#),
            reply("200 OK", "", br#"{"allow": false, "allow": true}"#),
            reply("200 OK", "", br#"[true]"#),
            reply("200 OK", "", br#"{"allow": true, "x": {"a": 1, "a": 2}}"#),
            reply("200 OK", "", b"allow"),
            reply("200 OK", "", b""),
            reply("200 OK", "", br#"{"allow": true"#),
            reply("200 OK", "", huge.as_bytes()),
            reply("201 Created", "", br#"{"allow": true}"#),
            reply("302 Found", "Location: /yes\r\n", br#"{"allow": true}"#),
            reply("307 Temporary Redirect", "Location: /yes\r\n", b""),
            reply("500 Oops", "", br#"{"allow": true}"#),
            b"garbage\r\n\r\n".to_vec(),
        ] {
            let shown = String::from_utf8_lossy(&answer[..answer.len().min(80)]).into_owned();
            assert_eq!(outcome_of(answer).await, AskOutcome::Failed, "{shown}");
        }
    }

    #[tokio::test]
    async fn a_slow_callback_times_out_and_an_unreachable_one_fails() {
        let (url, _requests) = callback(
            reply("200 OK", "", br#"{"allow": true}"#),
            Duration::from_secs(30),
        )
        .await;
        let caller = AskCaller::new(Arc::default()).unwrap();
        assert_eq!(
            caller.call(&ask(&url, 100), "r").await,
            AskOutcome::TimedOut
        );
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", closed.local_addr().unwrap());
        drop(closed);
        assert_eq!(
            caller.call(&ask(&url, 5_000), "r").await,
            AskOutcome::Failed
        );
    }
}
