//! Capture of a job's stdout and stderr: the head is kept up to a cap, the rest is
//! read and dropped, so a flood costs the daemons no memory and never blocks the job
//! on a full pipe.

use std::future::Future;

use tokio::io::{AsyncRead, AsyncReadExt};

/// What was kept of one output stream.
#[derive(Debug, Default)]
pub struct Captured {
    pub bytes: Vec<u8>,
    /// Whether anything was dropped past the cap.
    pub truncated: bool,
}

/// Reads `stream` to its end, or until `until` resolves, keeping the first `cap`
/// bytes.
pub async fn capture<R: AsyncRead + Unpin>(
    mut stream: R,
    cap: usize,
    until: impl Future<Output = ()>,
) -> Captured {
    let mut captured = Captured::default();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut until = std::pin::pin!(until);
    loop {
        let read = tokio::select! {
            read = stream.read(&mut chunk) => read,
            () = &mut until => return captured,
        };
        let n = match read {
            Ok(0) | Err(_) => return captured,
            Ok(n) => n,
        };
        let room = cap - captured.bytes.len();
        if n > room {
            captured.truncated = true;
        }
        captured.bytes.extend_from_slice(&chunk[..n.min(room)]);
    }
}

impl Captured {
    /// The kept bytes as text: invalid UTF-8 is replaced, and a character cut in half
    /// by the cap is dropped rather than shown as garbage.
    pub fn into_text(self) -> String {
        let mut bytes = self.bytes;
        if self.truncated {
            if let Err(e) = std::str::from_utf8(&bytes) {
                if e.error_len().is_none() {
                    bytes.truncate(e.valid_up_to());
                }
            }
        }
        match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keeps_the_head_and_drains_the_rest() {
        let input = vec![b'x'; 300_000];
        let captured = capture(&input[..], 1000, std::future::pending()).await;
        assert_eq!(captured.bytes.len(), 1000);
        assert!(captured.truncated);
    }

    #[tokio::test]
    async fn exactly_the_cap_is_not_truncated() {
        let captured = capture(&b"abcd"[..], 4, std::future::pending()).await;
        assert!(!captured.truncated);
        assert_eq!(captured.into_text(), "abcd");
    }

    #[tokio::test]
    async fn a_stream_that_never_ends_gives_what_it_sent_when_told_to_stop() {
        let (mut tx, rx) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut tx, b"partial")
            .await
            .unwrap();
        let stop = tokio::time::sleep(std::time::Duration::from_millis(100));
        let captured = capture(rx, 100, stop).await;
        assert_eq!(captured.into_text(), "partial");
        drop(tx);
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        let captured = Captured {
            bytes: b"a\xffb".to_vec(),
            truncated: false,
        };
        assert_eq!(captured.into_text(), "a\u{fffd}b");
    }

    #[test]
    fn a_character_cut_by_the_cap_is_dropped() {
        let captured = Captured {
            bytes: "ab\u{2713}".as_bytes()[..3].to_vec(),
            truncated: true,
        };
        assert_eq!(captured.into_text(), "ab");
    }
}
