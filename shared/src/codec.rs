//! Frames and payload encoding, kept in this one module so that the payload format
//! (postcard, chosen over the unmaintained bincode: RUSTSEC-2025-0141) is a one-line change.
//!
//! A frame is a 4-byte big-endian length followed by that many payload bytes. The
//! length is checked against [`MAX_FRAME_LEN`] before anything is allocated, and a
//! payload must decode to exactly one message with no bytes left over.

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

/// The largest payload either side accepts: room for the 1 MiB request body and the
/// default 1 MiB stdout and stderr captures with ample headroom, small enough that a
/// hostile peer cannot make a daemon allocate much.
pub const MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

/// Why a message could not be sent or received.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The socket failed, or a frame's length was over [`MAX_FRAME_LEN`].
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
    /// The payload is not a valid message.
    #[error("undecodable message: {0}")]
    Decode(#[source] postcard::Error),
    /// The payload held a valid message followed by extra bytes.
    #[error("message followed by {0} unexpected bytes")]
    TrailingBytes(usize),
    /// The message could not be encoded (it is over [`MAX_FRAME_LEN`]).
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

fn frame_codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .big_endian()
        .max_frame_length(MAX_FRAME_LEN)
        .new_codec()
}

/// One end of a frontend–executor connection: sends and receives whole messages.
#[derive(Debug)]
pub struct Connection<S> {
    framed: Framed<S, LengthDelimitedCodec>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// Wraps a connected stream.
    pub fn new(stream: S) -> Self {
        Connection {
            framed: Framed::new(stream, frame_codec()),
        }
    }

    /// Sends one message and flushes it.
    pub async fn send<M: Serialize>(&mut self, msg: &M) -> Result<(), ProtocolError> {
        let payload = encode(msg)?;
        if payload.len() > MAX_FRAME_LEN {
            return Err(ProtocolError::Encode(postcard::Error::SerializeBufferFull));
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Request, Response};
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
        let mut conn = Connection::new(server);
        let len = (MAX_FRAME_LEN as u32 + 1).to_be_bytes();
        client.write_all(&len).await.unwrap();
        assert!(matches!(
            conn.recv::<Request>().await,
            Err(ProtocolError::Io(_))
        ));
    }

    #[tokio::test]
    async fn messages_cross_a_stream() {
        let (client, server) = tokio::io::duplex(1024);
        let (mut client, mut server) = (Connection::new(client), Connection::new(server));
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
        let mut conn = Connection::new(server);
        client.write_all(&[0, 0, 0, 9, 1, 2]).await.unwrap();
        drop(client);
        assert!(conn.recv::<Request>().await.is_err());
    }
}
