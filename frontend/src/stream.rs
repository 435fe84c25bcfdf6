//! A job answered as Server-Sent Events (`Accept: text/event-stream`): its output,
//! displays and refused requests as they happen, then, always last, the very JSON
//! body the same call without streaming returns.
//!
//! ```text
//! event: stdout | stderr    data: {"text": "..."}
//! event: truncated          data: {"stream": "stdout", "capBytes": 1048576}
//! event: display            data: {"contentType": "image/png", "contentBase64": "..."}
//! event: violation          data: one entry of "violations"
//! event: result             data: the JSON body
//! event: error              data: {"error": "..."}      instead of result
//! ```
//!
//! The body stream owns the job's [`Running`] connection: when the client goes
//! away, hyper drops the body, which closes the connection, which kills the job.
//! It asks the executor for the next frame only when the client took the last
//! event, so a job that prints in a tight loop waits for the client (the
//! executor's frame queue and the socket are the only buffers), and nothing of it
//! piles up in the frontend. Any route that starts a job can answer with
//! [`respond`]; only `POST /execute` does today.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use bytes::Bytes;
use futures::stream::{self, BoxStream};
use futures::{StreamExt, TryStreamExt};
use pysandbox_shared::{OutputChunk, Stream, Truncated};
use serde::Serialize;
use utoipa::ToSchema;

use crate::executor_client::{Progress, Ran, Running};
use crate::response::ViolationBody;

/// The media type of the stream, as `Accept` names it.
const EVENT_STREAM: &str = "text/event-stream";

/// The comment sent while a job is silent: proxies close idle connections.
const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";

/// Whether the request asked for a stream: an `Accept` header lists
/// `text/event-stream` (parameters and case aside).
pub fn wanted(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|range| {
            let media = range.split(';').next().unwrap_or_default();
            media.trim().eq_ignore_ascii_case(EVENT_STREAM)
        })
}

/// The `200 text/event-stream` answer of a job that started: its events as they
/// come, a keep-alive comment after each `keep_alive` of silence, and last the
/// body `answer` makes of what it produced (it runs once the job finished: the
/// uploads, then the rendering).
pub fn respond<A, F>(running: Running, keep_alive: Duration, answer: A) -> Response
where
    A: FnOnce(Ran) -> F + Send + 'static,
    F: Future<Output = Response> + Send + 'static,
{
    let live = Live {
        running,
        stdout: Utf8Text::default(),
        stderr: Utf8Text::default(),
    };
    let state = State::Live(Box::new(live), answer);
    let events = stream::unfold(state, move |state| state.step(keep_alive)).flatten();
    let mut response = Body::from_stream(events).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(EVENT_STREAM));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // nginx buffers responses unless told not to; this stream must not wait there.
    headers.insert(
        HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    );
    response
}

/// The parts of one event's bytes, in order.
type Event = BoxStream<'static, io::Result<Bytes>>;

/// Where the stream is.
enum State<A, F> {
    /// The job runs; `A` turns what it produced into the answer.
    Live(Box<Live>, A),
    /// The job finished and its answer (uploads first) is being made.
    Answering(Pin<Box<F>>),
    /// The last event was sent.
    Done,
}

/// A running job and the text of its streams so far.
struct Live {
    running: Running,
    stdout: Utf8Text,
    stderr: Utf8Text,
}

impl<A, F> State<A, F>
where
    A: FnOnce(Ran) -> F + Send + 'static,
    F: Future<Output = Response> + Send + 'static,
{
    /// The next event, or a keep-alive comment when none came within `keep_alive`.
    async fn step(self, keep_alive: Duration) -> Option<(Event, Self)> {
        match self {
            State::Live(mut live, answer) => {
                // `next` is cancel-safe: the timer losing or winning loses no frame.
                let progress = tokio::select! {
                    progress = live.running.next() => progress,
                    () = tokio::time::sleep(keep_alive) => {
                        return Some((piece(KEEP_ALIVE.to_vec()), State::Live(live, answer)));
                    }
                };
                Some(match progress {
                    Ok(Progress::Finished(ran)) => {
                        // The last bytes of each stream: a character the job left
                        // unfinished shows as U+FFFD, as in the body.
                        let (out, err) = (live.stdout.finish(), live.stderr.finish());
                        let rest = text_event("stdout", out).chain(text_event("stderr", err));
                        drop(live);
                        (rest.boxed(), State::Answering(Box::pin(answer(*ran))))
                    }
                    Ok(progress) => (live.event(progress), State::Live(live, answer)),
                    Err(e) => (
                        json_event(
                            "error",
                            &ErrorData {
                                error: e.to_string(),
                            },
                        ),
                        State::Done,
                    ),
                })
            }
            State::Answering(mut answering) => {
                let answer = tokio::select! {
                    answer = &mut answering => answer,
                    () = tokio::time::sleep(keep_alive) => {
                        return Some((piece(KEEP_ALIVE.to_vec()), State::Answering(answering)));
                    }
                };
                Some((result_event(answer), State::Done))
            }
            State::Done => None,
        }
    }
}

impl Live {
    /// The event of one step of the job (never [`Progress::Finished`]).
    fn event(&mut self, progress: Progress) -> Event {
        match progress {
            Progress::Output(OutputChunk { stream, data }) => match stream {
                Stream::Stdout => text_event("stdout", self.stdout.push(&data)),
                Stream::Stderr => text_event("stderr", self.stderr.push(&data)),
            },
            Progress::Truncated(cut) => {
                // The body drops a character the cap cut in half; so does the stream.
                match cut.stream {
                    Stream::Stdout => self.stdout.cut(),
                    Stream::Stderr => self.stderr.cut(),
                }
                json_event("truncated", &TruncatedData::from(cut))
            }
            Progress::Violation(violation) => {
                json_event("violation", &ViolationBody::from(violation))
            }
            Progress::Display(png) => {
                let head =
                    b"event: display\ndata: {\"contentType\":\"image/png\",\"contentBase64\":\"";
                // Chunks of a multiple of 3 bytes: their encodings concatenate.
                let content = png
                    .chunks()
                    .map_ok(|chunk| Bytes::from(BASE64.encode(chunk)));
                piece(head.to_vec())
                    .chain(content)
                    .chain(piece(b"\"}\n\n".to_vec()))
                    .boxed()
            }
            Progress::Finished(_) => stream::empty().boxed(),
        }
    }
}

/// The `result` event: `answer`'s body as its data, streamed (files and displays
/// come from the spool). A JSON body is one line: serde escapes every newline in
/// its strings and the rest of it is written without any.
fn result_event(answer: Response) -> Event {
    let body = answer
        .into_body()
        .into_data_stream()
        .map_err(io::Error::other);
    piece(b"event: result\ndata: ".to_vec())
        .chain(body)
        .chain(piece(b"\n\n".to_vec()))
        .boxed()
}

/// A `stdout` or `stderr` event; none for no text.
fn text_event(name: &'static str, text: String) -> Event {
    if text.is_empty() {
        return stream::empty().boxed();
    }
    json_event(name, &TextData { text })
}

/// An event whose data is `data` as JSON (one line, see [`result_event`]).
fn json_event(name: &str, data: &impl Serialize) -> Event {
    let mut bytes = format!("event: {name}\ndata: ").into_bytes();
    bytes.extend(serde_json::to_vec(data).unwrap_or_default());
    bytes.extend_from_slice(b"\n\n");
    piece(bytes)
}

fn piece(bytes: Vec<u8>) -> Event {
    stream::once(async { Ok(Bytes::from(bytes)) }).boxed()
}

/// The data of a `stdout` or `stderr` event.
#[derive(Serialize, ToSchema)]
pub(crate) struct TextData {
    /// The chunk's text (up to 64 KiB), UTF-8 decoded across chunks.
    text: String,
}

/// The data of an `error` event.
#[derive(Serialize, ToSchema)]
pub(crate) struct ErrorData {
    /// Why the job failed after the stream began.
    error: String,
}

/// The data of a `truncated` event.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TruncatedData {
    /// `stdout` or `stderr`.
    #[schema(value_type = String, pattern = "^std(out|err)$")]
    stream: &'static str,
    /// The cap it passed, in bytes.
    cap_bytes: u32,
}

impl From<Truncated> for TruncatedData {
    fn from(cut: Truncated) -> Self {
        TruncatedData {
            stream: match cut.stream {
                Stream::Stdout => "stdout",
                Stream::Stderr => "stderr",
            },
            cap_bytes: cut.cap_bytes,
        }
    }
}

/// Output bytes turned into text as they come: a character split across two chunks
/// waits (at most 3 bytes) for the rest of it, and invalid bytes become U+FFFD,
/// exactly as the body's lossy decoding of the whole does.
#[derive(Debug, Default)]
struct Utf8Text {
    carry: Vec<u8>,
}

impl Utf8Text {
    /// The text of `bytes` after what came before.
    fn push(&mut self, bytes: &[u8]) -> String {
        let mut joined = std::mem::take(&mut self.carry);
        joined.extend_from_slice(bytes);
        let unfinished = unfinished_tail(&joined);
        self.carry = joined.split_off(joined.len() - unfinished);
        String::from_utf8_lossy(&joined).into_owned()
    }

    /// The stream ended: an unfinished character is invalid.
    fn finish(&mut self) -> String {
        String::from_utf8_lossy(&std::mem::take(&mut self.carry)).into_owned()
    }

    /// The stream was cut at its cap: an unfinished character is dropped.
    fn cut(&mut self) {
        self.carry.clear();
    }
}

/// How many bytes at the end of `bytes` begin a character that is not complete.
fn unfinished_tail(bytes: &[u8]) -> usize {
    match bytes.utf8_chunks().last() {
        Some(chunk) => {
            let invalid = chunk.invalid();
            let unfinished = std::str::from_utf8(invalid).is_err_and(|e| e.error_len().is_none());
            if unfinished {
                invalid.len()
            } else {
                0
            }
        }
        None => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_must_name_the_event_stream() {
        let with = |values: &[&str]| {
            let mut headers = HeaderMap::new();
            for value in values {
                headers.append(header::ACCEPT, HeaderValue::from_str(value).unwrap());
            }
            wanted(&headers)
        };
        assert!(with(&["text/event-stream"]));
        assert!(with(&["application/json, Text/Event-Stream;q=0.5"]));
        assert!(with(&["application/json", "text/event-stream"]));
        assert!(!with(&[]));
        assert!(!with(&["application/json"]));
        assert!(!with(&["*/*"]));
        assert!(!with(&["text/event-streamx", "text/*"]));
    }

    /// Every way to split hostile bytes into chunks gives the text the body gives
    /// the whole: characters split across chunks whole, invalid bytes U+FFFD.
    #[test]
    fn text_decoded_chunk_by_chunk_is_the_text_of_the_whole() {
        let inputs: [&[u8]; 5] = [
            "a\u{2713}b\u{1F600}c".as_bytes(),
            b"\xe2\x9c",
            b"x\xff\xe2\x9c\x93\xf0\x9f\x98",
            b"\xe2\x28\xa1\xc3\xf0\x9f\x98\x80\xed\xa0\x80",
            b"\xf0\x9f\x98\xff\xf0",
        ];
        for input in inputs {
            let whole = String::from_utf8_lossy(input);
            for a in 0..=input.len() {
                for b in a..=input.len() {
                    let mut text = Utf8Text::default();
                    let mut streamed = text.push(&input[..a]);
                    streamed += &text.push(&input[a..b]);
                    streamed += &text.push(&input[b..]);
                    streamed += &text.finish();
                    assert_eq!(streamed, whole, "{input:?} split at {a}, {b}");
                }
            }
        }
    }

    #[test]
    fn a_character_cut_by_the_cap_is_dropped() {
        let mut text = Utf8Text::default();
        assert_eq!(text.push("ab\u{2713}".as_bytes()[..3].as_ref()), "ab");
        text.cut();
        assert_eq!(text.finish(), "");
    }

    #[test]
    fn events_are_one_data_line_whatever_the_text() {
        let event = json_event(
            "stdout",
            &TextData {
                text: "a\nb\r\n\u{2028}".into(),
            },
        );
        let parts: Vec<Bytes> = futures::executor::block_on(event.try_collect()).unwrap();
        assert_eq!(
            parts.concat(),
            b"event: stdout\ndata: {\"text\":\"a\\nb\\r\\n\xe2\x80\xa8\"}\n\n"
        );
    }
}
