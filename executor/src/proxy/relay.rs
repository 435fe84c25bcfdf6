//! Moving a served request's bytes: reads and writes that count against the job's
//! byte limit and its idle timeout, the CONNECT tunnel, and a plain-HTTP request
//! forwarded with exactly its body and its response relayed back.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UnixStream};

use super::http::{chunk_size, request_head_done, response_head, Attempt, Body, Forward};
use super::http::{MAX_REQUEST_HEAD, MAX_RESPONSE_HEAD};
use super::server::Shared;

/// Bytes moved per read.
const BUF_SIZE: usize = 16 * 1024;
/// A chunk-size or trailer line longer than this ends the connection.
const MAX_CHUNK_LINE: usize = 4096;

/// When a connection last moved a byte, shared by both directions.
#[derive(Debug)]
pub(super) struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    pub(super) fn new() -> Self {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(now, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

/// One connection being served.
pub(super) struct Session<'a> {
    pub(super) shared: &'a Shared,
    pub(super) activity: Activity,
    pub(super) attempt: Attempt,
}

impl Session<'_> {
    /// Reads until `buf` holds a whole request head, something that cannot become
    /// one, or [`MAX_REQUEST_HEAD`] bytes; `None` when the client sent nothing.
    pub(super) async fn read_request_head(
        &self,
        client: &mut UnixStream,
    ) -> io::Result<Option<Vec<u8>>> {
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = vec![0; 4096];
        loop {
            if request_head_done(&buf) {
                return Ok(Some(buf));
            }
            let room = (MAX_REQUEST_HEAD - buf.len()).min(chunk.len());
            let n = self.read(client, &mut chunk[..room]).await?;
            if n == 0 {
                return Ok((!buf.is_empty()).then_some(buf));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// CONNECT: confirms, then relays both ways until both sides are done.
    pub(super) async fn tunnel(
        &self,
        client: UnixStream,
        upstream: TcpStream,
        early: &[u8],
    ) -> io::Result<()> {
        let (client_rx, mut client_tx) = client.into_split();
        let (upstream_rx, mut upstream_tx) = upstream.into_split();
        client_tx
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await?;
        if !early.is_empty() {
            self.send(&mut upstream_tx, early).await?;
        }
        tokio::try_join!(
            self.pump(client_rx, upstream_tx),
            self.pump(upstream_rx, client_tx)
        )?;
        Ok(())
    }

    /// Plain HTTP: sends the request head and exactly its body upstream, and relays
    /// the response until the server closes.
    pub(super) async fn forward(
        &self,
        client: UnixStream,
        upstream: TcpStream,
        early: Vec<u8>,
        request: Forward,
    ) -> io::Result<()> {
        let (client_rx, mut client_tx) = client.into_split();
        let (upstream_rx, mut upstream_tx) = upstream.into_split();
        let upload = async {
            self.send(&mut upstream_tx, &request.head()).await?;
            let mut body = BufReader::new(std::io::Cursor::new(early).chain(client_rx));
            match request.body {
                Body::None => {}
                Body::Length(len) => self.copy_exact(&mut body, &mut upstream_tx, len).await?,
                Body::Chunked => self.copy_chunked(&mut body, &mut upstream_tx).await?,
            }
            // Whatever the client sends next is not forwarded; the response ends this.
            std::future::pending::<io::Result<()>>().await
        };
        let download = self.relay_response(upstream_rx, &mut client_tx);
        tokio::select! {
            result = upload => result,
            result = download => result,
        }
    }

    async fn relay_response<R, W>(&self, mut upstream: R, client: &mut W) -> io::Result<()>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut buf = Vec::new();
        let mut chunk = vec![0; BUF_SIZE];
        loop {
            let (head, len, interim) = loop {
                if let Some(parsed) = response_head(&buf)? {
                    break parsed;
                }
                if buf.len() >= MAX_RESPONSE_HEAD {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "response head too large",
                    ));
                }
                let n = self.read(&mut upstream, &mut chunk).await?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                buf.extend_from_slice(&chunk[..n]);
            };
            self.send(client, &head).await?;
            buf.drain(..len);
            if !interim {
                break;
            }
        }
        if !buf.is_empty() {
            self.send(client, &buf).await?;
        }
        self.pump(upstream, client).await
    }

    /// Copies until `from` ends, then closes `to` for writing.
    async fn pump<R, W>(&self, mut from: R, mut to: W) -> io::Result<()>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut buf = vec![0; BUF_SIZE];
        loop {
            let n = self.read(&mut from, &mut buf).await?;
            if n == 0 {
                let _ = to.shutdown().await;
                return Ok(());
            }
            self.send(&mut to, &buf[..n]).await?;
        }
    }

    async fn copy_exact<R, W>(&self, from: &mut R, to: &mut W, len: u64) -> io::Result<()>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut buf = vec![0; BUF_SIZE];
        let mut left = len;
        while left > 0 {
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = self.read(from, &mut buf[..want]).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.send(to, &buf[..n]).await?;
            left -= n as u64;
        }
        Ok(())
    }

    /// Forwards a chunked body exactly, checking its framing (RFC 9112 §7.1), and
    /// stops after its last chunk and trailers.
    async fn copy_chunked<R, W>(&self, from: &mut R, to: &mut W) -> io::Result<()>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed chunked body");
        loop {
            let line = self.read_line(from).await?;
            let size = chunk_size(&line).ok_or_else(bad)?;
            self.send(to, &line).await?;
            if size == 0 {
                loop {
                    let trailer = self.read_line(from).await?;
                    self.send(to, &trailer).await?;
                    if trailer == b"\r\n" {
                        return Ok(());
                    }
                }
            }
            self.copy_exact(from, to, size).await?;
            let end = self.read_line(from).await?;
            if end != b"\r\n" {
                return Err(bad());
            }
            self.send(to, &end).await?;
        }
    }

    /// One line, `\n` included, of at most [`MAX_CHUNK_LINE`] bytes; `from` is
    /// buffered, so reading a byte at a time is cheap.
    pub(super) async fn read_line<R: AsyncRead + Unpin>(
        &self,
        from: &mut R,
    ) -> io::Result<Vec<u8>> {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while line.len() < MAX_CHUNK_LINE {
            if self.read(from, &mut byte).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            line.push(byte[0]);
            if byte[0] == b'\n' {
                return Ok(line);
            }
        }
        Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"))
    }

    /// A read that fails once neither direction has moved a byte for the idle
    /// timeout.
    async fn read<R: AsyncRead + Unpin>(&self, from: &mut R, buf: &mut [u8]) -> io::Result<usize> {
        let idle = self.shared.limits.idle_timeout;
        loop {
            let wait = idle.saturating_sub(self.activity.idle_for());
            if wait.is_zero() {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout"));
            }
            // Reads are cancel-safe: a timed-out one loses nothing.
            if let Ok(read) = tokio::time::timeout(wait, from.read(buf)).await {
                self.activity.touch();
                return read;
            }
        }
    }

    /// Writes relayed bytes, counting them against the job's byte limit.
    pub(super) async fn send<W: AsyncWrite + Unpin>(
        &self,
        to: &mut W,
        bytes: &[u8],
    ) -> io::Result<()> {
        let shared = self.shared;
        let max = shared.limits.max_bytes;
        let before = shared
            .bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        shared.metrics.relayed(bytes.len() as u64);
        if before + bytes.len() as u64 > max {
            shared.record_once_bytes(&self.attempt, max);
            return Err(io::Error::other("byte limit reached"));
        }
        tokio::time::timeout(shared.limits.idle_timeout, to.write_all(bytes))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "write timed out"))??;
        self.activity.touch();
        Ok(())
    }
}
