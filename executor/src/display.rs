//! What a job shows besides its output: PNGs of the matplotlib figures it showed
//! (or left open), and the REPL value of its last expression.
//!
//! The jail's launcher writes them as records to a FIFO in the job's `/tmp`, made
//! and opened by the executor before the job exists: one byte of kind (`D` a PNG,
//! `R` the value's repr), a 4-byte big-endian length, the payload. The records are
//! the job's own output, as untrusted as its stdout: each is checked against the
//! caps before a byte of it is kept, PNGs are passed on in chunks as they are read,
//! and anything malformed ends the channel.

use std::path::{Path, PathBuf};

use nix::sys::stat::Mode;
use pysandbox_shared::{DisplayStart, Response, MAX_CHUNK_BYTES, MAX_RESULT_BYTES};
use tokio::net::unix::pipe;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::job::Frames;

/// The channel's name in the job's `/tmp` (the launcher opens
/// `/tmp/.pysandbox-display`).
const CHANNEL: &str = ".pysandbox-display";

/// The first bytes of every PNG file.
const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

/// How many and how large the displays of one job may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DisplayCaps {
    /// Displays returned at most; later ones are dropped and counted.
    pub max_count: u32,
    /// Bytes of one PNG; a larger one is dropped.
    pub max_bytes: u64,
    /// Bytes of all returned PNGs together.
    pub max_total_bytes: u64,
}

/// How a session's cell ended, as its `E` record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CellEnd {
    /// It ran to its end.
    Ok,
    /// An uncaught exception; its traceback is on stderr.
    Raised,
    /// The executor's SIGINT interrupted it.
    Interrupted,
}

/// What a job showed, beyond the PNGs already sent on.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Shown {
    /// The repr of the last expression's value, if the job had one.
    pub result: Option<String>,
    /// Displays sent on.
    pub displays: u32,
    /// Displays dropped at a cap.
    pub dropped: u32,
    /// Whether the channel carried something that was not a record.
    pub malformed: bool,
    /// A session's cell: how it ended, once its `E` record came.
    pub cell_end: Option<CellEnd>,
}

/// Makes the channel in the job's `tmp` dir, owned by the sandbox `owner`, and
/// opens its reading end. Called before the jail starts, so nothing of the job can
/// have put anything in its place. Opened read-write, so that it never reads EOF
/// while no job process holds it open: [`read`] ends it when the jail is gone.
pub(crate) fn create(tmp: &Path, owner: (u32, u32)) -> Result<pipe::Receiver, Error> {
    let path: PathBuf = tmp.join(CHANNEL);
    nix::unistd::mkfifo(&path, Mode::from_bits_truncate(0o600))
        .map_err(|e| Error::setup("create the display channel", &path)(e.into()))?;
    std::os::unix::fs::chown(&path, Some(owner.0), Some(owner.1))
        .map_err(Error::setup("chown", &path))?;
    pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(&path)
        .map_err(Error::setup("open", &path))
}

/// Reads the channel until the job is `gone` and everything it wrote is read,
/// sending PNGs to `frames` as [`Response::Display`] and [`Response::Data`]
/// frames within `caps`. In a session (`cell`), the `E` record that ends a cell
/// ends the read too; anywhere else it is as malformed as an unknown kind.
pub(crate) async fn read(
    channel: &mut pipe::Receiver,
    caps: DisplayCaps,
    frames: &Frames,
    gone: &CancellationToken,
    cell: bool,
) -> Shown {
    let mut reader = Reader {
        channel,
        gone,
        over: false,
    };
    let mut shown = Shown::default();
    let mut total = 0u64;
    loop {
        let mut head = [0u8; 5];
        match reader.fill(&mut head).await {
            Fill::Full => {}
            Fill::Empty => return shown,
            Fill::Partial => {
                shown.malformed = true;
                return shown;
            }
        }
        let len = u64::from(u32::from_be_bytes([head[1], head[2], head[3], head[4]]));
        let whole = match head[0] {
            b'D' => {
                let fits = shown.displays < caps.max_count
                    && len <= caps.max_bytes
                    && total + len <= caps.max_total_bytes;
                let outcome = if fits {
                    reader.forward_png(len, frames).await
                } else {
                    reader.skip(len).await.then_some(Png::Dropped)
                };
                match outcome {
                    Some(Png::Sent) => {
                        shown.displays += 1;
                        total += len;
                    }
                    Some(Png::Dropped) => shown.dropped += 1,
                    None => {}
                }
                outcome.is_some()
            }
            b'R' if len <= MAX_RESULT_BYTES as u64 => {
                let mut text = vec![0u8; len as usize];
                let read = len == 0 || matches!(reader.fill(&mut text).await, Fill::Full);
                if read {
                    shown.result = Some(String::from_utf8_lossy(&text).into_owned());
                }
                read
            }
            b'R' => reader.skip(len).await,
            b'E' if cell && len == 1 => {
                let mut status = [0u8];
                let read = matches!(reader.fill(&mut status).await, Fill::Full);
                shown.cell_end = match status[0] {
                    b'0' => Some(CellEnd::Ok),
                    b'1' => Some(CellEnd::Raised),
                    b'I' => Some(CellEnd::Interrupted),
                    _ => None,
                };
                if read && shown.cell_end.is_some() {
                    return shown;
                }
                false
            }
            _ => false,
        };
        if !whole {
            shown.malformed = true;
            return shown;
        }
    }
}

/// What became of a display record.
enum Png {
    Sent,
    /// Over a cap, or not a PNG.
    Dropped,
}

/// How much of a buffer a read filled.
enum Fill {
    Full,
    /// The channel ended before the first byte.
    Empty,
    /// The channel ended in the middle.
    Partial,
}

/// Reads a session's first record, `P` and the pid (in its own pid namespace) of
/// the interpreter that runs its cells; `None` if anything else comes first, or
/// nothing before the session is `gone`.
pub(crate) async fn read_pid(
    channel: &mut pipe::Receiver,
    gone: &CancellationToken,
) -> Option<i32> {
    let mut reader = Reader {
        channel,
        gone,
        over: false,
    };
    let mut head = [0u8; 5];
    if !matches!(reader.fill(&mut head).await, Fill::Full) || head[0] != b'P' {
        return None;
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let mut digits = [0u8; 10];
    if len > digits.len() || !matches!(reader.fill(&mut digits[..len]).await, Fill::Full) {
        return None;
    }
    std::str::from_utf8(&digits[..len])
        .ok()?
        .parse()
        .ok()
        .filter(|&pid| pid > 0)
}

/// The channel, read while the job lives and drained without waiting once it is
/// gone (the executor holds a writing end itself, so it never reads EOF).
struct Reader<'a> {
    channel: &'a mut pipe::Receiver,
    gone: &'a CancellationToken,
    over: bool,
}

impl Reader<'_> {
    /// Reads some bytes; 0 once the job is gone and nothing is left.
    async fn read(&mut self, buf: &mut [u8]) -> usize {
        use std::os::fd::AsRawFd;
        use tokio::io::AsyncReadExt;
        if !self.over {
            tokio::select! {
                read = self.channel.read(buf) => return read.unwrap_or(0),
                () = self.gone.cancelled() => self.over = true,
            }
        }
        // A plain non-blocking read: tokio's `try_read` trusts its cached
        // readiness and could call a full FIFO empty.
        nix::unistd::read(self.channel.as_raw_fd(), buf).unwrap_or(0)
    }

    async fn fill(&mut self, buf: &mut [u8]) -> Fill {
        let mut filled = 0;
        while filled < buf.len() {
            match self.read(&mut buf[filled..]).await {
                0 if filled == 0 => return Fill::Empty,
                0 => return Fill::Partial,
                n => filled += n,
            }
        }
        Fill::Full
    }

    /// Reads and drops `len` bytes; false if the channel ended first.
    async fn skip(&mut self, mut len: u64) -> bool {
        let mut chunk = vec![0u8; MAX_CHUNK_BYTES];
        while len > 0 {
            let want = len.min(chunk.len() as u64) as usize;
            match self.read(&mut chunk[..want]).await {
                0 => return false,
                n => len -= n as u64,
            }
        }
        true
    }

    /// Passes on a PNG of `len` bytes in chunks; `None` when the channel ended in
    /// the middle.
    async fn forward_png(&mut self, len: u64, frames: &Frames) -> Option<Png> {
        let mut chunk = vec![0u8; MAX_CHUNK_BYTES.min(len.max(1) as usize)];
        let first = PNG_SIGNATURE.len().min(len as usize);
        if !matches!(self.fill(&mut chunk[..first]).await, Fill::Full) {
            return None;
        }
        if &chunk[..first] != PNG_SIGNATURE {
            return self.skip(len - first as u64).await.then_some(Png::Dropped);
        }
        let start = Response::Display(DisplayStart {
            content_type: "image/png".into(),
        });
        let mut listening = frames.send(start).await.is_ok();
        let (mut left, mut ready) = (len - first as u64, first);
        loop {
            let want = (left.min((chunk.len() - ready) as u64)) as usize;
            if want > 0 {
                match self.read(&mut chunk[ready..ready + want]).await {
                    0 => return None,
                    n => {
                        ready += n;
                        left -= n as u64;
                    }
                }
            }
            if ready == chunk.len() || left == 0 {
                if listening && ready > 0 {
                    let data = Response::Data(chunk[..ready].to_vec());
                    listening = frames.send(data).await.is_ok();
                }
                ready = 0;
                if left == 0 {
                    return Some(Png::Sent);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;
    use tokio::sync::mpsc;

    use super::*;

    const CAPS: DisplayCaps = DisplayCaps {
        max_count: 2,
        max_bytes: 200_000,
        max_total_bytes: 300_000,
    };

    fn record(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut bytes = vec![kind];
        bytes.extend((payload.len() as u32).to_be_bytes());
        bytes.extend(payload);
        bytes
    }

    fn png(len: usize) -> Vec<u8> {
        let mut png = PNG_SIGNATURE.to_vec();
        png.extend((0..len - PNG_SIGNATURE.len()).map(|i| i as u8));
        png
    }

    /// Writes `bytes` into a real FIFO made by [`create`], ends the job, and returns
    /// what was read and the PNGs as they arrived whole.
    async fn read_all(bytes: Vec<u8>) -> (Shown, Vec<Vec<u8>>) {
        read_as(bytes, false).await
    }

    /// [`read_all`] as a session's cell (`cell`) or a job.
    async fn read_as(bytes: Vec<u8>, cell: bool) -> (Shown, Vec<Vec<u8>>) {
        let dir = tempfile::tempdir().unwrap();
        let me = (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        );
        let mut channel = create(dir.path(), me).unwrap();
        let mut writer = pipe::OpenOptions::new()
            .open_sender(dir.path().join(CHANNEL))
            .unwrap();
        let (tx, mut rx) = mpsc::channel(1024);
        let gone = CancellationToken::new();
        let writing = async {
            writer.write_all(&bytes).await.unwrap();
            drop(writer);
            gone.cancel();
        };
        let (shown, ()) = tokio::join!(read(&mut channel, CAPS, &tx, &gone, cell), writing);
        drop(tx);
        let mut pngs: Vec<Vec<u8>> = Vec::new();
        while let Some(frame) = rx.recv().await {
            match frame {
                Response::Display(start) => {
                    assert_eq!(start.content_type, "image/png");
                    pngs.push(Vec::new());
                }
                Response::Data(data) => {
                    assert!(data.len() <= MAX_CHUNK_BYTES);
                    pngs.last_mut().expect("data after a display").extend(data);
                }
                other => panic!("unexpected frame {other:?}"),
            }
        }
        (shown, pngs)
    }

    #[tokio::test]
    async fn pngs_and_the_result_come_through_whole() {
        let big = png(150_000);
        let mut bytes = record(b'D', &png(100));
        bytes.extend(record(b'R', b"42"));
        bytes.extend(record(b'D', &big));
        let (shown, pngs) = read_all(bytes).await;
        assert_eq!(pngs.len(), 2);
        assert!(
            pngs[0] == png(100) && pngs[1] == big,
            "the PNGs changed on the way"
        );
        assert_eq!(
            shown,
            Shown {
                result: Some("42".into()),
                displays: 2,
                dropped: 0,
                malformed: false,
                cell_end: None,
            }
        );
    }

    #[tokio::test]
    async fn caps_drop_and_count_what_does_not_fit() {
        let mut bytes = record(b'D', &png(250_000)); // over the per-display cap
        bytes.extend(record(b'D', &png(100)));
        bytes.extend(record(b'D', &png(100)));
        bytes.extend(record(b'D', &png(100))); // over the count cap
        let (shown, pngs) = read_all(bytes).await;
        assert_eq!(pngs.len(), 2);
        assert_eq!(
            (shown.displays, shown.dropped, shown.malformed),
            (2, 2, false)
        );
    }

    #[tokio::test]
    async fn what_is_not_a_png_is_dropped() {
        let mut bytes = record(b'D', b"<svg onload=alert(1)>");
        bytes.extend(record(b'R', b"ok"));
        let (shown, pngs) = read_all(bytes).await;
        assert!(pngs.is_empty());
        assert_eq!((shown.result.as_deref(), shown.dropped), (Some("ok"), 1));
    }

    #[tokio::test]
    async fn garbage_and_truncated_records_end_the_channel() {
        let (shown, pngs) = read_all(b"Xjunk".to_vec()).await;
        assert!(shown.malformed && pngs.is_empty());
        let mut cut = record(b'D', &png(1000));
        cut.truncate(500);
        let (shown, _) = read_all(cut).await;
        assert!(shown.malformed);
        let (shown, _) = read_all(record(b'R', &vec![b'x'; MAX_RESULT_BYTES + 1])).await;
        assert_eq!((shown.result, shown.malformed), (None, false));
    }

    #[tokio::test]
    async fn nothing_shown_is_nothing() {
        assert_eq!(read_all(Vec::new()).await, (Shown::default(), vec![]));
    }

    #[tokio::test]
    async fn a_cell_ends_at_its_end_record_and_a_job_may_not_send_one() {
        let mut bytes = record(b'R', b"1");
        bytes.extend(record(b'E', b"I"));
        bytes.extend(record(b'R', b"next cell"));
        let (shown, _) = read_as(bytes.clone(), true).await;
        assert_eq!(shown.cell_end, Some(CellEnd::Interrupted));
        assert_eq!(shown.result.as_deref(), Some("1"));
        let (shown, _) = read_as(bytes, false).await;
        assert!(shown.malformed && shown.cell_end.is_none());
        for forged in [record(b'E', b"X"), record(b'E', b"00"), record(b'P', b"2")] {
            let (shown, _) = read_as(forged, true).await;
            assert!(shown.malformed && shown.cell_end.is_none());
        }
    }

    #[tokio::test]
    async fn a_session_names_its_interpreter_first_or_not_at_all() {
        for (bytes, pid) in [
            (record(b'P', b"2"), Some(2)),
            (record(b'P', b"0"), None),
            (record(b'P', b"-3"), None),
            (record(b'P', b"12345678901"), None),
            (record(b'D', b"2"), None),
            (b"P\0\0".to_vec(), None),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let me = (
                nix::unistd::getuid().as_raw(),
                nix::unistd::getgid().as_raw(),
            );
            let mut channel = create(dir.path(), me).unwrap();
            let mut writer = pipe::OpenOptions::new()
                .open_sender(dir.path().join(CHANNEL))
                .unwrap();
            writer.write_all(&bytes).await.unwrap();
            let gone = CancellationToken::new();
            gone.cancel();
            assert_eq!(read_pid(&mut channel, &gone).await, pid, "{bytes:?}");
        }
    }
}
