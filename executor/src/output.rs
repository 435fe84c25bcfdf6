//! A job's stdout and stderr, passed on as they are written: up to a cap, in chunks
//! of at most [`MAX_CHUNK_BYTES`], and the rest read and dropped, so a flood costs
//! the daemons no memory and never blocks the job on a full pipe. A slow reader
//! does block it: each chunk waits for room in the job's frame queue. The moment a
//! stream passes its cap is a frame of its own, for clients that watch live.

use std::future::Future;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use pysandbox_shared::{OutputChunk, Response, Stream, Truncated, MAX_CHUNK_BYTES};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::unix::pipe;
use tokio::sync::mpsc;

/// How long a session's stream is drained, at most, once its cell ended: what the
/// cell wrote is in the pipe by then, but a background process may keep writing.
const DRAIN_BUDGET: Duration = Duration::from_millis(100);

/// Reads `stream` to its end, or until `until` resolves, and sends its first `cap`
/// bytes to `frames`, then one [`Response::Truncated`] when it first drops
/// something. Returns whether anything was dropped past the cap. Once
/// nobody receives the frames, the rest is only drained: the job is being killed
/// anyway.
pub(crate) async fn forward<R: AsyncRead + Unpin>(
    stream: Option<R>,
    which: Stream,
    cap: usize,
    frames: &mpsc::Sender<Response>,
    until: impl Future<Output = ()>,
) -> bool {
    let Some(mut stream) = stream else {
        return false;
    };
    let mut passer = Passer::new(which, cap, frames);
    let mut chunk = vec![0u8; MAX_CHUNK_BYTES];
    let mut until = std::pin::pin!(until);
    loop {
        let read = tokio::select! {
            read = stream.read(&mut chunk) => read,
            () = &mut until => return passer.truncated,
        };
        match read {
            Ok(0) | Err(_) => return passer.truncated,
            Ok(n) => passer.pass(&chunk[..n]).await,
        }
    }
}

/// [`forward`] for one call of a session, whose pipes outlive it: reads `stream`
/// until `until` resolves (the cell ended), then what is in the pipe already,
/// without waiting, for at most [`DRAIN_BUDGET`]. Returns whether anything was
/// dropped past the cap.
pub(crate) async fn forward_call(
    stream: &mut pipe::Receiver,
    which: Stream,
    cap: usize,
    frames: &mpsc::Sender<Response>,
    until: impl Future<Output = ()>,
) -> bool {
    let mut passer = Passer::new(which, cap, frames);
    let mut chunk = vec![0u8; MAX_CHUNK_BYTES];
    let mut until = std::pin::pin!(until);
    loop {
        let read = tokio::select! {
            read = stream.read(&mut chunk) => read,
            () = &mut until => break,
        };
        match read {
            Ok(0) | Err(_) => return passer.truncated,
            Ok(n) => passer.pass(&chunk[..n]).await,
        }
    }
    // A plain non-blocking read: tokio's cached readiness may not know yet of what
    // the cell wrote just before it ended.
    let deadline = Instant::now() + DRAIN_BUDGET;
    while Instant::now() < deadline {
        match nix::unistd::read(stream.as_raw_fd(), &mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => passer.pass(&chunk[..n]).await,
        }
    }
    passer.truncated
}

/// One stream on its way to the frontend: its first `cap` bytes, then one
/// [`Response::Truncated`] frame when it first drops something.
struct Passer<'a> {
    which: Stream,
    cap: usize,
    frames: &'a mpsc::Sender<Response>,
    sent: usize,
    truncated: bool,
    /// Whether anyone still receives the frames.
    listening: bool,
}

impl<'a> Passer<'a> {
    fn new(which: Stream, cap: usize, frames: &'a mpsc::Sender<Response>) -> Self {
        Passer {
            which,
            cap,
            frames,
            sent: 0,
            truncated: false,
            listening: true,
        }
    }

    async fn pass(&mut self, data: &[u8]) {
        let kept = data.len().min(self.cap - self.sent);
        if kept > 0 && self.listening {
            self.sent += kept;
            let frame = Response::Output(OutputChunk {
                stream: self.which,
                data: data[..kept].to_vec(),
            });
            self.listening = self.frames.send(frame).await.is_ok();
        }
        if kept < data.len() && !self.truncated {
            self.truncated = true;
            if self.listening {
                let frame = Response::Truncated(Truncated {
                    stream: self.which,
                    cap_bytes: u32::try_from(self.cap).unwrap_or(u32::MAX),
                });
                self.listening = self.frames.send(frame).await.is_ok();
            }
        }
    }
}

/// Reads `stream` to its end, or until `until` resolves, and keeps its first `cap`
/// bytes as text: what a jail that failed to start said on its way out.
pub(crate) async fn last_words<R: AsyncRead + Unpin>(
    stream: Option<R>,
    cap: usize,
    until: impl Future<Output = ()>,
) -> String {
    let Some(mut stream) = stream else {
        return String::new();
    };
    let mut kept = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut until = std::pin::pin!(until);
    loop {
        let read = tokio::select! {
            read = stream.read(&mut chunk) => read,
            () = &mut until => break,
        };
        match read {
            Ok(0) | Err(_) => break,
            Ok(n) => kept.extend_from_slice(&chunk[..n.min(cap - kept.len())]),
        }
    }
    String::from_utf8_lossy(&kept).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes passed on, how many output frames carried them, whether `forward`
    /// said it truncated, and the frames that said so, with how many bytes came
    /// before each.
    async fn forwarded(
        input: &[u8],
        cap: usize,
    ) -> (Vec<u8>, usize, bool, Vec<(usize, Truncated)>) {
        let (tx, mut rx) = mpsc::channel(1024);
        let never = std::future::pending();
        let truncated = forward(Some(input), Stream::Stdout, cap, &tx, never).await;
        drop(tx);
        let (mut bytes, mut frames, mut cuts) = (Vec::new(), 0, Vec::new());
        while let Some(frame) = rx.recv().await {
            match frame {
                Response::Output(OutputChunk { stream, data }) => {
                    assert_eq!(stream, Stream::Stdout);
                    assert!(data.len() <= MAX_CHUNK_BYTES);
                    bytes.extend(data);
                    frames += 1;
                }
                Response::Truncated(cut) => cuts.push((bytes.len(), cut)),
                other => panic!("not an output frame: {other:?}"),
            }
        }
        (bytes, frames, truncated, cuts)
    }

    /// A flood far past the cap: the head in bounded chunks, then exactly one frame
    /// saying the rest is dropped, however many reads the rest takes.
    #[tokio::test]
    async fn keeps_the_head_in_bounded_chunks_says_so_once_and_drains_the_rest() {
        let input = vec![b'x'; 300_000];
        let (bytes, frames, truncated, cuts) = forwarded(&input, 200_000).await;
        assert_eq!(bytes.len(), 200_000);
        assert!(frames >= 200_000 / MAX_CHUNK_BYTES);
        assert!(truncated);
        let cut = Truncated {
            stream: Stream::Stdout,
            cap_bytes: 200_000,
        };
        assert_eq!(cuts, vec![(200_000, cut)]);
    }

    #[tokio::test]
    async fn exactly_the_cap_is_not_truncated() {
        assert_eq!(
            forwarded(b"abcd", 4).await,
            (b"abcd".to_vec(), 1, false, vec![])
        );
    }

    #[tokio::test]
    async fn a_gone_receiver_only_drains() {
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let input = vec![b'x'; 300_000];
        let never = std::future::pending();
        assert!(!forward(Some(&input[..]), Stream::Stderr, 1 << 20, &tx, never).await);
    }

    #[tokio::test]
    async fn last_words_are_capped_text() {
        let words = last_words(Some(&b"bwrap: \xffno"[..]), 9, std::future::pending()).await;
        assert_eq!(words, "bwrap: \u{fffd}n");
    }

    /// A stream whose writer never closes it (a job passed its pipe somewhere that
    /// outlives it) ends when `until` does, with what was read so far.
    #[tokio::test]
    async fn until_ends_a_stream_that_never_closes() {
        let (tx, mut rx) = mpsc::channel(8);
        let (mut writer, reader) = tokio::io::duplex(1024);
        tokio::io::AsyncWriteExt::write_all(&mut writer, b"head")
            .await
            .unwrap();
        let until = tokio::time::sleep(std::time::Duration::from_millis(100));
        assert!(!forward(Some(reader), Stream::Stdout, 1 << 20, &tx, until).await);
        drop(writer);
        let Some(Response::Output(chunk)) = rx.recv().await else {
            panic!("no output frame");
        };
        assert_eq!(chunk.data, b"head");
    }
}
