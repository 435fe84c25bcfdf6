//! Frames and payload encoding, kept in this one module so that the payload format
//! (postcard, chosen over the unmaintained bincode: RUSTSEC-2025-0141) is a one-line change.
//!
//! A frame is a 4-byte big-endian length followed by that many payload bytes. Each
//! direction has its own hard maximum, checked before anything is allocated: a job
//! result carries the job's produced files and may be large, a request stays
//! smaller. A payload must decode to exactly one message with no bytes left over.

use bytes::{BufMut, Bytes, BytesMut};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{Decoder, Encoder, Framed, LengthDelimitedCodec};

use crate::files::{MAX_INPUT_BYTES, MAX_INPUT_FILES, MAX_PATH_LEN, MAX_SKIPPED_LISTED};
use crate::job::JobError;
use crate::protocol::{Hello, Request, Response, PROTOCOL_VERSION};

const MIB: usize = 1 << 20;

/// The most one path costs on the wire, with room for a name that was not UTF-8 and
/// is reported with a 3-byte U+FFFD per bad byte, and for its length prefixes.
const PATH_ON_WIRE: usize = 2 * MAX_PATH_LEN;

/// The largest frame the executor accepts (frontend → executor): 16 MiB for the
/// code, stdin and the rest of a job, plus every input file at the hard maxima.
pub const MAX_REQUEST_FRAME_LEN: usize =
    16 * MIB + MAX_INPUT_BYTES as usize + MAX_INPUT_FILES as usize * PATH_ON_WIRE;

/// The largest frame the frontend accepts (executor → frontend). Output and file
/// bytes come in chunks of [`crate::MAX_CHUNK_BYTES`]; the largest frame is the
/// list of skipped work-dir entries at its maximum, plus 1 MiB for the rest (about
/// 9 MiB).
pub const MAX_RESPONSE_FRAME_LEN: usize = MAX_SKIPPED_LISTED * (PATH_ON_WIRE + 16) + MIB;

/// Why a message could not be sent or received.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The socket failed, or a frame's length was over the limit of its direction.
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
    /// The payload is not a valid message.
    #[error("undecodable message: {0}")]
    Decode(#[source] postcard::Error),
    /// The payload held a valid message followed by extra bytes.
    #[error("message followed by {0} unexpected bytes")]
    TrailingBytes(usize),
    /// The message could not be encoded.
    #[error("cannot encode message: {0}")]
    Encode(#[source] postcard::Error),
}

/// Encodes one message as a frame payload.
pub fn encode<M: Serialize>(msg: &M) -> Result<Bytes, ProtocolError> {
    postcard::to_stdvec(msg)
        .map(Bytes::from)
        .map_err(ProtocolError::Encode)
}

/// Decodes one frame payload, rejecting trailing bytes.
pub fn decode<M: DeserializeOwned>(payload: &[u8]) -> Result<M, ProtocolError> {
    let (msg, rest) = postcard::take_from_bytes(payload).map_err(ProtocolError::Decode)?;
    if rest.is_empty() {
        Ok(msg)
    } else {
        Err(ProtocolError::TrailingBytes(rest.len()))
    }
}

/// Length-prefixed frames with a limit for each direction: a frame read is checked
/// against `max_recv` before its payload is buffered, one sent against `max_send`.
#[derive(Debug)]
struct FrameCodec {
    read: LengthDelimitedCodec,
    max_send: usize,
}

impl FrameCodec {
    fn new(max_recv: usize, max_send: usize) -> FrameCodec {
        let read = LengthDelimitedCodec::builder()
            .length_field_length(4)
            .big_endian()
            .max_frame_length(max_recv)
            .new_codec();
        FrameCodec { read, max_send }
    }
}

impl Decoder for FrameCodec {
    type Item = BytesMut;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, Self::Error> {
        self.read.decode(src)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, Self::Error> {
        self.read.decode_eof(src)
    }
}

impl Encoder<Bytes> for FrameCodec {
    type Error = std::io::Error;

    fn encode(&mut self, payload: Bytes, dst: &mut BytesMut) -> Result<(), Self::Error> {
        let len = u32::try_from(payload.len())
            .ok()
            .filter(|_| payload.len() <= self.max_send)
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "a {}-byte frame is over the peer's limit of {}",
                        payload.len(),
                        self.max_send
                    ),
                )
            })?;
        dst.reserve(4 + payload.len());
        dst.put_u32(len);
        dst.extend_from_slice(&payload);
        Ok(())
    }
}

/// One end of a frontend–executor connection: sends and receives whole messages of
/// any type. The daemons use the typed ends below; this one is for tests that must
/// send what a daemon never would.
#[derive(Debug)]
pub struct Connection<S> {
    framed: Framed<S, FrameCodec>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// The frontend's end of a connected stream: sends requests, receives results.
    pub fn client(stream: S) -> Self {
        Connection::with_limits(stream, MAX_RESPONSE_FRAME_LEN, MAX_REQUEST_FRAME_LEN)
    }

    /// The executor's end of a connected stream: receives requests, sends results.
    pub fn server(stream: S) -> Self {
        Connection::with_limits(stream, MAX_REQUEST_FRAME_LEN, MAX_RESPONSE_FRAME_LEN)
    }

    fn with_limits(stream: S, max_recv: usize, max_send: usize) -> Self {
        Connection {
            framed: Framed::new(stream, FrameCodec::new(max_recv, max_send)),
        }
    }

    /// Sends one message and flushes it.
    pub async fn send<M: Serialize>(&mut self, msg: &M) -> Result<(), ProtocolError> {
        let payload = encode(msg)?;
        self.framed.send(payload).await?;
        Ok(())
    }

    /// Receives the next message; `None` when the peer closed the connection cleanly.
    ///
    /// Cancel-safe: a partly read frame stays buffered, so this can sit in a
    /// `select!` that watches for the peer going away.
    pub async fn recv<M: DeserializeOwned>(&mut self) -> Result<Option<M>, ProtocolError> {
        match self.framed.next().await {
            None => Ok(None),
            Some(frame) => decode(&frame?).map(Some),
        }
    }
}

/// Why the hello exchange did not open a connection.
#[derive(Debug, thiserror::Error)]
pub enum HelloError {
    /// The socket failed or the peer sent an undecodable frame.
    #[error("hello exchange failed")]
    Protocol(#[from] ProtocolError),
    /// The peer closed the connection before its hello.
    #[error("the peer closed the connection before its hello")]
    Closed,
    /// The peer opened with another message (its variant name).
    #[error("the peer opened with a {0} message instead of a hello")]
    Unexpected(&'static str),
    /// The peer speaks another protocol version.
    #[error("the peer speaks protocol version {theirs}, this build {PROTOCOL_VERSION}")]
    Version {
        /// The peer's version.
        theirs: u32,
    },
    /// The executor refused the connection.
    #[error("the executor refused the connection")]
    Refused(#[source] JobError),
}

/// The frontend's end of a connection: sends [`Request`]s, receives [`Response`]s.
#[derive(Debug)]
pub struct ClientConnection<S>(Connection<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> ClientConnection<S> {
    /// Says hello on `stream`, sends `first` right behind it (one round trip less
    /// than after the executor's hello; an executor that refuses the hello reads
    /// nothing further), and waits for the executor's hello, which must be of this
    /// build's version. No time limit of its own: callers bound it.
    pub async fn open(stream: S, first: Option<&Request>) -> Result<Self, HelloError> {
        let mut conn = Connection::client(stream);
        conn.send(&Request::Hello(Hello::CURRENT)).await?;
        if let Some(first) = first {
            conn.send(first).await?;
        }
        match conn.recv::<Response>().await? {
            Some(Response::Hello(Hello {
                version: PROTOCOL_VERSION,
            })) => Ok(ClientConnection(conn)),
            Some(Response::Hello(Hello { version })) => {
                Err(HelloError::Version { theirs: version })
            }
            Some(Response::Failed(e)) => Err(HelloError::Refused(e)),
            Some(other) => Err(HelloError::Unexpected(other.kind())),
            None => Err(HelloError::Closed),
        }
    }

    /// Sends one request.
    pub async fn send(&mut self, request: &Request) -> Result<(), ProtocolError> {
        self.0.send(request).await
    }

    /// Receives the next response; `None` when the executor closed the connection.
    /// Cancel-safe.
    pub async fn recv(&mut self) -> Result<Option<Response>, ProtocolError> {
        self.0.recv().await
    }

    /// Splits the connection, so that answers to a job's questions can be sent
    /// while its frames are read. The connection closes once both halves are gone.
    pub fn split(self) -> (ClientSender<S>, ClientReceiver<S>) {
        let (sink, stream) = self.0.framed.split();
        (ClientSender(sink), ClientReceiver(stream))
    }
}

/// The sending half of a [`ClientConnection`].
#[derive(Debug)]
pub struct ClientSender<S>(SplitSink<Framed<S, FrameCodec>, Bytes>);

impl<S: AsyncRead + AsyncWrite + Unpin> ClientSender<S> {
    /// Sends one request.
    pub async fn send(&mut self, request: &Request) -> Result<(), ProtocolError> {
        self.0.send(encode(request)?).await?;
        Ok(())
    }
}

/// The receiving half of a [`ClientConnection`].
#[derive(Debug)]
pub struct ClientReceiver<S>(SplitStream<Framed<S, FrameCodec>>);

impl<S: AsyncRead + AsyncWrite + Unpin> ClientReceiver<S> {
    /// Receives the next response; `None` when the executor closed the connection.
    /// Cancel-safe.
    pub async fn recv(&mut self) -> Result<Option<Response>, ProtocolError> {
        match self.0.next().await {
            None => Ok(None),
            Some(frame) => decode(&frame?).map(Some),
        }
    }
}

/// The executor's end of a connection: receives [`Request`]s, sends [`Response`]s.
#[derive(Debug)]
pub struct ServerConnection<S>(Connection<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> ServerConnection<S> {
    /// Waits for the frontend's hello and answers with this build's. `Ok(None)` when
    /// the peer closed first. A peer of another version is told so
    /// ([`JobError::VersionMismatch`]) before the error returns. No time limit of its
    /// own: callers bound it.
    pub async fn accept(stream: S) -> Result<Option<Self>, HelloError> {
        let mut conn = Connection::server(stream);
        let hello = match conn.recv::<Request>().await? {
            Some(Request::Hello(hello)) => hello,
            Some(other) => {
                let kind = other.kind();
                let reason = format!("expected a hello, got a {kind} message");
                conn.send(&Response::Failed(JobError::Protocol { reason }))
                    .await?;
                return Err(HelloError::Unexpected(kind));
            }
            None => return Ok(None),
        };
        conn.send(&Response::Hello(Hello::CURRENT)).await?;
        if hello.version != PROTOCOL_VERSION {
            let mismatch = JobError::VersionMismatch {
                executor: PROTOCOL_VERSION,
                frontend: hello.version,
            };
            conn.send(&Response::Failed(mismatch)).await?;
            return Err(HelloError::Version {
                theirs: hello.version,
            });
        }
        Ok(Some(ServerConnection(conn)))
    }

    /// Receives the next request; `None` when the peer closed the connection.
    /// Cancel-safe.
    pub async fn recv(&mut self) -> Result<Option<Request>, ProtocolError> {
        self.0.recv().await
    }

    /// Sends one response.
    pub async fn send(&mut self, response: &Response) -> Result<(), ProtocolError> {
        self.0.send(response).await
    }

    /// Splits the connection, so that a job's frames can be sent while the peer is
    /// watched for going away.
    pub fn split(self) -> (ServerSender<S>, ServerReceiver<S>) {
        let (sink, stream) = self.0.framed.split();
        (ServerSender(sink), ServerReceiver(stream))
    }
}

/// The sending half of a [`ServerConnection`].
#[derive(Debug)]
pub struct ServerSender<S>(SplitSink<Framed<S, FrameCodec>, Bytes>);

impl<S: AsyncRead + AsyncWrite + Unpin> ServerSender<S> {
    /// Sends one response.
    pub async fn send(&mut self, response: &Response) -> Result<(), ProtocolError> {
        self.0.send(encode(response)?).await?;
        Ok(())
    }
}

/// The receiving half of a [`ServerConnection`].
#[derive(Debug)]
pub struct ServerReceiver<S>(SplitStream<Framed<S, FrameCodec>>);

impl<S: AsyncRead + AsyncWrite + Unpin> ServerReceiver<S> {
    /// Receives the next request; `None` when the peer closed the connection.
    /// Cancel-safe.
    pub async fn recv(&mut self) -> Result<Option<Request>, ProtocolError> {
        match self.0.next().await {
            None => Ok(None),
            Some(frame) => decode(&frame?).map(Some),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Request, Response};
    use serde_bytes::ByteBuf;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut payload = encode(&Request::Status).unwrap().to_vec();
        payload.push(0);
        assert!(matches!(
            decode::<Request>(&payload),
            Err(ProtocolError::TrailingBytes(1))
        ));
    }

    /// A small xorshift generator: deterministic, so a failure reproduces.
    fn garbage(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn garbage_payloads_never_panic() {
        for seed in 0..20_000u64 {
            let bytes = garbage(seed, (seed % 64) as usize);
            let _ = decode::<Request>(&bytes);
            let _ = decode::<Response>(&bytes);
        }
    }

    #[test]
    fn huge_declared_lengths_do_not_allocate() {
        // Variant Run, then a string length of ~2^63 with no bytes behind it.
        let bytes = [1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f];
        assert!(matches!(
            decode::<Request>(&bytes),
            Err(ProtocolError::Decode(_))
        ));
    }

    #[tokio::test]
    async fn oversized_frame_is_rejected_before_reading_it() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut conn = Connection::server(server);
        let len = (MAX_REQUEST_FRAME_LEN as u32 + 1).to_be_bytes();
        client.write_all(&len).await.unwrap();
        assert!(matches!(
            conn.recv::<Request>().await,
            Err(ProtocolError::Io(_))
        ));
    }

    #[tokio::test]
    async fn each_direction_has_its_own_limit() {
        let (client, server) = tokio::io::duplex(1 << 16);
        let (mut client, mut server) = (Connection::client(client), Connection::server(server));
        // A request may be larger than any response, but not larger than its own limit.
        let big = ByteBuf::from(vec![0u8; MAX_RESPONSE_FRAME_LEN + 1]);
        let (sent, received) = tokio::join!(client.send(&big), server.recv::<ByteBuf>());
        sent.unwrap();
        assert_eq!(received.unwrap().map(|v| v.len()), Some(big.len()));
        assert!(server.send(&big).await.is_err());
        let huge = ByteBuf::from(vec![0u8; MAX_REQUEST_FRAME_LEN]);
        assert!(client.send(&huge).await.is_err());
    }

    #[test]
    fn frame_limits_are_what_the_docs_say() {
        assert!((55 * MIB..56 * MIB).contains(&MAX_REQUEST_FRAME_LEN));
        assert!((8 * MIB..10 * MIB).contains(&MAX_RESPONSE_FRAME_LEN));
    }

    #[tokio::test]
    async fn hello_opens_typed_ends() {
        let (client, server) = tokio::io::duplex(1024);
        let (client, server) = tokio::join!(
            ClientConnection::open(client, None),
            ServerConnection::accept(server)
        );
        let (mut client, mut server) = (client.unwrap(), server.unwrap().unwrap());
        client.send(&Request::Status).await.unwrap();
        assert_eq!(server.recv().await.unwrap(), Some(Request::Status));
    }

    #[tokio::test]
    async fn another_version_is_told_and_refused() {
        let (client, server) = tokio::io::duplex(1024);
        let mut client = Connection::client(client);
        client
            .send(&Request::Hello(Hello { version: 1 }))
            .await
            .unwrap();
        let accepted = ServerConnection::accept(server).await;
        assert!(matches!(accepted, Err(HelloError::Version { theirs: 1 })));
        assert_eq!(
            client.recv::<Response>().await.unwrap(),
            Some(Response::Hello(Hello::CURRENT))
        );
        assert_eq!(
            client.recv::<Response>().await.unwrap(),
            Some(Response::Failed(JobError::VersionMismatch {
                executor: PROTOCOL_VERSION,
                frontend: 1
            }))
        );
    }

    #[tokio::test]
    async fn a_first_message_other_than_hello_is_named_not_echoed() {
        let (client, server) = tokio::io::duplex(1 << 16);
        let mut client = Connection::client(client);
        client.send(&Request::Status).await.unwrap();
        let accepted = ServerConnection::accept(server).await;
        assert!(matches!(accepted, Err(HelloError::Unexpected("Status"))));
        assert_eq!(
            client.recv::<Response>().await.unwrap(),
            Some(Response::Failed(JobError::Protocol {
                reason: "expected a hello, got a Status message".into()
            }))
        );
    }

    #[tokio::test]
    async fn messages_cross_a_stream() {
        let (client, server) = tokio::io::duplex(1024);
        let (mut client, mut server) = (Connection::client(client), Connection::server(server));
        client.send(&Request::Status).await.unwrap();
        assert_eq!(
            server.recv::<Request>().await.unwrap(),
            Some(Request::Status)
        );
        drop(client);
        assert_eq!(server.recv::<Request>().await.unwrap(), None);
    }

    #[tokio::test]
    async fn truncated_frame_is_an_error_not_a_clean_close() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut conn = Connection::server(server);
        client.write_all(&[0, 0, 0, 9, 1, 2]).await.unwrap();
        drop(client);
        assert!(conn.recv::<Request>().await.is_err());
    }
}
