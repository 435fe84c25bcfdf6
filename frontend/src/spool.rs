//! Produced files on their way through the frontend.
//!
//! The executor streams a job's files in chunks; they are written to an unlinked
//! temp file as they arrive and read back a chunk at a time for the uploads and for
//! the response body, so the frontend's memory does not grow with what jobs return
//! (up to 64 MiB of files each). The temp file disappears with its last handle.

use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use futures::Stream;
use pysandbox_shared::files::{MAX_FILES, MAX_FILES_BYTES};

/// The bytes read back at a time: a multiple of 3, so that base64 of consecutive
/// chunks concatenates to the base64 of the whole.
pub const READ_CHUNK: usize = 48 * 1024;

/// Why the executor's files could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The temp file could not be created or written.
    #[error("cannot spool produced files")]
    Io(#[from] io::Error),
    /// The executor sent more, or other, than a job may produce.
    #[error("the executor sent {0}")]
    Unexpected(&'static str),
}

/// The files (or displays) of one job, as they arrive.
#[derive(Debug)]
pub struct Spool {
    /// Created with the first file: most jobs have none.
    file: Option<Arc<std::fs::File>>,
    len: u64,
    files: Vec<Produced>,
    max_files: usize,
    max_bytes: u64,
}

impl Default for Spool {
    /// A spool for produced files, within the hard caps of one job's.
    fn default() -> Self {
        Spool::new(MAX_FILES as usize, MAX_FILES_BYTES)
    }
}

impl Spool {
    /// A spool that refuses more than `max_files` files or `max_bytes` bytes.
    pub fn new(max_files: usize, max_bytes: u64) -> Self {
        Spool {
            file: None,
            len: 0,
            files: Vec::new(),
            max_files,
            max_bytes,
        }
    }

    /// A file begins.
    pub fn begin(&mut self, path: String) -> Result<(), SpoolError> {
        if self.files.len() >= self.max_files {
            return Err(SpoolError::Unexpected("more files than a job may produce"));
        }
        let file = match &self.file {
            Some(file) => Arc::clone(file),
            None => Arc::clone(self.file.insert(Arc::new(tempfile::tempfile()?))),
        };
        self.files.push(Produced {
            path,
            region: Region {
                file,
                offset: self.len,
                len: 0,
            },
        });
        Ok(())
    }

    /// The next bytes of the file last begun. Blocking, but on a local temp file and
    /// at most one chunk: no worse than the socket read that brought it.
    pub fn append(&mut self, data: &[u8]) -> Result<(), SpoolError> {
        let (Some(file), Some(last)) = (&self.file, self.files.last_mut()) else {
            return Err(SpoolError::Unexpected("file data before any file"));
        };
        let len = self.len + data.len() as u64;
        if len > self.max_bytes {
            return Err(SpoolError::Unexpected(
                "more file bytes than a job may produce",
            ));
        }
        (&**file).write_all(data)?;
        self.len = len;
        last.region.len += data.len() as u64;
        Ok(())
    }

    /// The file last begun, as far as it came.
    pub fn last(&self) -> Option<Produced> {
        self.files.last().cloned()
    }

    /// The files, in the order they came.
    pub fn into_files(self) -> Vec<Produced> {
        self.files
    }
}

/// A file the job produced, ready to upload or return.
#[derive(Debug, Clone)]
pub struct Produced {
    /// Its path relative to the work dir.
    pub path: String,
    region: Region,
}

/// Where a file's bytes are in the spool.
#[derive(Debug, Clone)]
struct Region {
    file: Arc<std::fs::File>,
    offset: u64,
    len: u64,
}

impl Produced {
    /// Its size in bytes.
    pub fn size(&self) -> u64 {
        self.region.len
    }

    /// Its MIME type, guessed from the extension.
    pub fn content_type(&self) -> &'static str {
        mime_guess::from_path(&self.path)
            .first_raw()
            .unwrap_or("application/octet-stream")
    }

    /// Its bytes, [`READ_CHUNK`] at a time, read on the blocking pool.
    pub fn chunks(&self) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
        let region = self.region.clone();
        futures::stream::try_unfold(0u64, move |done| {
            let region = region.clone();
            async move {
                if done >= region.len {
                    return Ok(None);
                }
                let want = (region.len - done).min(READ_CHUNK as u64) as usize;
                let chunk = tokio::task::spawn_blocking(move || {
                    let mut chunk = vec![0u8; want];
                    region
                        .file
                        .read_exact_at(&mut chunk, region.offset + done)
                        .map(|()| chunk)
                })
                .await
                .map_err(io::Error::other)??;
                Ok(Some((Bytes::from(chunk), done + want as u64)))
            }
        })
    }
}

#[cfg(test)]
pub(crate) fn produced(path: &str, data: &[u8]) -> Produced {
    let mut spool = Spool::default();
    spool.begin(path.into()).unwrap();
    spool.append(data).unwrap();
    spool.into_files().remove(0)
}

#[cfg(test)]
mod tests {
    use futures::TryStreamExt;

    use super::*;

    async fn read_back(file: &Produced) -> Vec<u8> {
        let chunks: Vec<Bytes> = file.chunks().try_collect().await.unwrap();
        assert!(chunks.iter().all(|c| c.len() <= READ_CHUNK));
        chunks.concat()
    }

    #[tokio::test]
    async fn files_come_back_whole_and_apart() {
        let big: Vec<u8> = (0..READ_CHUNK * 2 + 7).map(|i| i as u8).collect();
        let mut spool = Spool::default();
        spool.begin("a.bin".into()).unwrap();
        spool.append(&big[..1000]).unwrap();
        spool.append(&big[1000..]).unwrap();
        spool.begin("empty".into()).unwrap();
        spool.begin("c.png".into()).unwrap();
        spool.append(b"png").unwrap();
        let files = spool.into_files();
        assert_eq!(files.len(), 3);
        assert_eq!(read_back(&files[0]).await, big);
        assert_eq!((files[1].size(), read_back(&files[1]).await), (0, vec![]));
        assert_eq!(read_back(&files[2]).await, b"png");
        assert_eq!(files[2].content_type(), "image/png");
    }

    #[test]
    fn more_than_a_job_may_produce_is_refused() {
        let mut spool = Spool::default();
        assert!(matches!(spool.append(b"x"), Err(SpoolError::Unexpected(_))));
        for i in 0..MAX_FILES {
            spool.begin(i.to_string()).unwrap();
        }
        assert!(spool.begin("one more".into()).is_err());
    }
}
