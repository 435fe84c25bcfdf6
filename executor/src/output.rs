//! A job's stdout and stderr, passed on as they are written: up to a cap, in chunks
//! of at most [`MAX_CHUNK_BYTES`], and the rest read and dropped, so a flood costs
//! the daemons no memory and never blocks the job on a full pipe. A slow reader
//! does block it: each chunk waits for room in the job's frame queue.

use pysandbox_shared::{OutputChunk, Response, Stream, MAX_CHUNK_BYTES};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

/// Reads `stream` to its end and sends its first `cap` bytes to `frames`. Returns
/// whether anything was dropped past the cap. Once nobody receives the frames, the
/// rest is only drained: the job is being killed anyway.
pub(crate) async fn forward<R: AsyncRead + Unpin>(
    stream: Option<R>,
    which: Stream,
    cap: usize,
    frames: &mpsc::Sender<Response>,
) -> bool {
    let Some(mut stream) = stream else {
        return false;
    };
    let mut chunk = vec![0u8; MAX_CHUNK_BYTES];
    let (mut sent, mut truncated, mut listening) = (0usize, false, true);
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return truncated,
            Ok(n) => n,
        };
        let kept = n.min(cap - sent);
        truncated |= kept < n;
        if kept > 0 && listening {
            sent += kept;
            let frame = Response::Output(OutputChunk {
                stream: which,
                data: chunk[..kept].to_vec(),
            });
            listening = frames.send(frame).await.is_ok();
        }
    }
}

/// Reads `stream` to its end and keeps its first `cap` bytes as text: what a jail
/// that failed to start said on its way out.
pub(crate) async fn last_words<R: AsyncRead + Unpin>(stream: Option<R>, cap: usize) -> String {
    let Some(mut stream) = stream else {
        return String::new();
    };
    let mut kept = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => kept.extend_from_slice(&chunk[..n.min(cap - kept.len())]),
        }
    }
    String::from_utf8_lossy(&kept).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn forwarded(input: &[u8], cap: usize) -> (Vec<u8>, usize, bool) {
        let (tx, mut rx) = mpsc::channel(1024);
        let truncated = forward(Some(input), Stream::Stdout, cap, &tx).await;
        drop(tx);
        let (mut bytes, mut frames) = (Vec::new(), 0);
        while let Some(frame) = rx.recv().await {
            let Response::Output(OutputChunk { stream, data }) = frame else {
                panic!("not an output frame: {frame:?}");
            };
            assert_eq!(stream, Stream::Stdout);
            assert!(data.len() <= MAX_CHUNK_BYTES);
            bytes.extend(data);
            frames += 1;
        }
        (bytes, frames, truncated)
    }

    #[tokio::test]
    async fn keeps_the_head_in_bounded_chunks_and_drains_the_rest() {
        let input = vec![b'x'; 300_000];
        let (bytes, frames, truncated) = forwarded(&input, 200_000).await;
        assert_eq!(bytes.len(), 200_000);
        assert!(frames >= 200_000 / MAX_CHUNK_BYTES);
        assert!(truncated);
    }

    #[tokio::test]
    async fn exactly_the_cap_is_not_truncated() {
        assert_eq!(forwarded(b"abcd", 4).await, (b"abcd".to_vec(), 1, false));
    }

    #[tokio::test]
    async fn a_gone_receiver_only_drains() {
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let input = vec![b'x'; 300_000];
        assert!(!forward(Some(&input[..]), Stream::Stderr, 1 << 20, &tx).await);
    }

    #[tokio::test]
    async fn last_words_are_capped_text() {
        assert_eq!(
            last_words(Some(&b"bwrap: \xffno"[..]), 9).await,
            "bwrap: \u{fffd}n"
        );
    }
}
