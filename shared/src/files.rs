//! Files that cross the socket: input files a request places in the job's work dir
//! before it starts, and the files the job left there, collected after it ended.
//!
//! The hard maxima here bound the frames that carry files (see [`crate::codec`]);
//! the executor's configuration may only lower them.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::text::is_unsafe_to_show;

/// Path components (directories plus the file name) a path may have, for input files
/// and collected files alike.
pub const MAX_PATH_DEPTH: usize = 16;
/// Bytes one path component may have (Linux's `NAME_MAX`).
pub const MAX_NAME_LEN: usize = 255;
/// Bytes a whole path may have: [`MAX_PATH_DEPTH`] names of [`MAX_NAME_LEN`] and
/// their separators fit.
pub const MAX_PATH_LEN: usize = 4096;

/// The most produced files one result may carry.
pub const MAX_FILES: u32 = 1000;
/// The most bytes of produced files one result may carry, all files together.
pub const MAX_FILES_BYTES: u64 = 64 << 20;
/// The most skipped work-dir entries one result lists; the rest are only counted.
pub const MAX_SKIPPED_LISTED: usize = 1000;
/// The most input files one job may be given.
pub const MAX_INPUT_FILES: u32 = 1000;
/// The most bytes of input files one job may be given, all files together.
pub const MAX_INPUT_BYTES: u64 = 32 << 20;

/// A path relative to the job's work dir: no leading `/`, no `..`, `.` or empty
/// components, no control characters (in the broad sense of
/// [`crate::text::is_unsafe_to_show`]: line separators, bidi overrides and
/// invisible format characters too, so `rlo\u{202e}gnp.exe` cannot pass for a
/// `.png`), at most [`MAX_PATH_DEPTH`] components of at
/// most [`MAX_NAME_LEN`] bytes. Only such paths are ever joined to a work dir.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RelativePath(String);

/// Why a string is not a [`RelativePath`]; its `Display` is the API's reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The string is empty.
    #[error("must not be empty")]
    Empty,
    /// It starts with `/` or has a `..` component.
    #[error("must be a relative path without ..")]
    Escapes,
    /// It has an empty (`a//b`, `a/`) or `.` component.
    #[error("must not have empty or . components")]
    EmptyComponent,
    /// It has a control character (NUL, newline, NEL, U+2028, a bidi override, …).
    #[error("must not contain control characters")]
    ControlCharacter,
    /// It is longer than [`MAX_PATH_LEN`] bytes.
    #[error("must be at most 4096 bytes")]
    TooLong,
    /// It has more than [`MAX_PATH_DEPTH`] components.
    #[error("must be at most 16 levels deep")]
    TooDeep,
    /// One of its components is longer than [`MAX_NAME_LEN`] bytes.
    #[error("must have names of at most 255 bytes")]
    NameTooLong,
}

impl RelativePath {
    /// Checks `path` against the rules above.
    pub fn parse(path: &str) -> Result<RelativePath, PathError> {
        if path.is_empty() {
            return Err(PathError::Empty);
        }
        if path.starts_with('/') || path.split('/').any(|c| c == "..") {
            return Err(PathError::Escapes);
        }
        if path.split('/').any(|c| c.is_empty() || c == ".") {
            return Err(PathError::EmptyComponent);
        }
        if path.chars().any(is_unsafe_to_show) {
            return Err(PathError::ControlCharacter);
        }
        if path.len() > MAX_PATH_LEN {
            return Err(PathError::TooLong);
        }
        if path.split('/').count() > MAX_PATH_DEPTH {
            return Err(PathError::TooDeep);
        }
        if path.split('/').any(|c| c.len() > MAX_NAME_LEN) {
            return Err(PathError::NameTooLong);
        }
        Ok(RelativePath(path.to_owned()))
    }

    /// The path as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Its components, each a plain name (never empty, `.` or `..`).
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }
}

impl TryFrom<String> for RelativePath {
    type Error = PathError;

    fn try_from(path: String) -> Result<Self, Self::Error> {
        RelativePath::parse(&path)
    }
}

impl From<RelativePath> for String {
    fn from(path: RelativePath) -> String {
        path.0
    }
}

impl fmt::Display for RelativePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The first pair of paths that cannot both be files: the same path twice, or one
/// path inside another (`a` and `a/b`). Returns `(earlier, later)` indices.
pub fn first_conflict<'a>(
    paths: impl IntoIterator<Item = &'a RelativePath>,
) -> Option<(usize, usize)> {
    let paths: Vec<&str> = paths.into_iter().map(RelativePath::as_str).collect();
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(paths.len());
    for (i, path) in paths.iter().enumerate() {
        if let Some(&first) = seen.get(path) {
            return Some((first, i));
        }
        seen.insert(path, i);
    }
    let mut conflicts = paths.iter().enumerate().filter_map(|(i, path)| {
        path.match_indices('/')
            .find_map(|(end, _)| seen.get(&path[..end]))
            .map(|&dir| (dir.min(i), dir.max(i)))
    });
    conflicts.next()
}

/// A file the request places in the work dir before the job starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputFile {
    /// Where, relative to the work dir; missing directories are created.
    pub path: RelativePath,
    /// Its content.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// A work-dir entry that was not collected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedFile {
    /// Its path relative to the work dir; bytes that are not UTF-8 are shown as
    /// U+FFFD and control characters escaped (`\u{a}`), as
    /// [`crate::text::shown`] does.
    pub path: String,
    /// Why it was skipped.
    pub reason: SkipReason,
}

/// Why a work-dir entry was not collected. Its `Display` is the API's reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SkipReason {
    /// A symbolic link: never followed, wherever it points.
    Symlink,
    /// A regular file with more than one name, which may be another file's content.
    HardLink,
    /// A FIFO, socket or device: never opened.
    NotRegular,
    /// Its name is not valid UTF-8.
    NameNotUtf8,
    /// Its name contains a control character, line separator, bidi control or
    /// invisible format character (see [`crate::text::is_unsafe_to_show`]).
    NameHasControlCharacter,
    /// A directory at [`MAX_PATH_DEPTH`]: nothing below it is looked at.
    TooDeep,
    /// Larger than the per-file cap.
    OverFileCap {
        /// The cap, in bytes.
        cap: u64,
    },
    /// Came after the file count cap was reached.
    OverCountCap {
        /// The cap.
        cap: u32,
    },
    /// Would have taken the collected files over the total size cap.
    OverTotalCap {
        /// The cap, in bytes.
        cap: u64,
    },
    /// Could not be opened or read.
    Unreadable,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::Symlink => f.write_str("symlink"),
            SkipReason::HardLink => f.write_str("hard link"),
            SkipReason::NotRegular => f.write_str("not a regular file"),
            SkipReason::NameNotUtf8 => f.write_str("name not UTF-8"),
            SkipReason::NameHasControlCharacter => f.write_str("name has control characters"),
            SkipReason::TooDeep => write!(f, "nested more than {MAX_PATH_DEPTH} levels deep"),
            SkipReason::OverFileCap { cap } => write!(f, "over the per-file cap of {cap} bytes"),
            SkipReason::OverCountCap { cap } => write!(f, "over the file count cap of {cap}"),
            SkipReason::OverTotalCap { cap } => {
                write!(f, "over the total size cap of {cap} bytes")
            }
            SkipReason::Unreadable => f.write_str("unreadable"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(s: &str) -> RelativePath {
        RelativePath::parse(s).unwrap()
    }

    #[test]
    fn relative_paths_are_plain_names_below_the_work_dir() {
        for good in ["a", "data/in.csv", "a b/ü.txt", ".hidden/..x/x..", "a\\b"] {
            assert_eq!(path(good).as_str(), good);
        }
        let deep = vec!["d"; MAX_PATH_DEPTH].join("/");
        assert_eq!(path(&deep).components().count(), MAX_PATH_DEPTH);
        let cases = [
            ("", PathError::Empty),
            ("/etc/passwd", PathError::Escapes),
            ("..", PathError::Escapes),
            ("a/../../b", PathError::Escapes),
            ("a/..", PathError::Escapes),
            ("a//b", PathError::EmptyComponent),
            ("a/", PathError::EmptyComponent),
            ("./a", PathError::EmptyComponent),
            ("a/./b", PathError::EmptyComponent),
            ("a\nb", PathError::ControlCharacter),
            ("a\0b", PathError::ControlCharacter),
            ("a\u{7f}", PathError::ControlCharacter),
            ("a\u{85}", PathError::ControlCharacter),
            ("rlo\u{202e}gnp.exe", PathError::ControlCharacter),
            ("a\u{2028}b", PathError::ControlCharacter),
            ("a\u{2029}b", PathError::ControlCharacter),
            ("a\u{2067}b", PathError::ControlCharacter),
            ("zero\u{200b}width", PathError::ControlCharacter),
        ];
        for (bad, error) in cases {
            assert_eq!(RelativePath::parse(bad), Err(error), "{bad:?}");
        }
        let too_deep = vec!["d"; MAX_PATH_DEPTH + 1].join("/");
        assert_eq!(RelativePath::parse(&too_deep), Err(PathError::TooDeep));
        let long_name = "n".repeat(MAX_NAME_LEN + 1);
        assert_eq!(RelativePath::parse(&long_name), Err(PathError::NameTooLong));
        let long_path = vec!["n".repeat(MAX_NAME_LEN); MAX_PATH_DEPTH + 1].join("/");
        assert_eq!(RelativePath::parse(&long_path), Err(PathError::TooLong));
        assert_eq!(
            PathError::Escapes.to_string(),
            "must be a relative path without .."
        );
    }

    #[test]
    fn decoding_checks_the_path_too() {
        let bytes = postcard::to_stdvec("../x").unwrap();
        assert!(postcard::from_bytes::<RelativePath>(&bytes).is_err());
        let bytes = postcard::to_stdvec("ok/x").unwrap();
        assert_eq!(
            postcard::from_bytes::<RelativePath>(&bytes).unwrap(),
            path("ok/x")
        );
    }

    #[test]
    fn conflicts_are_duplicates_and_files_inside_files() {
        let check =
            |paths: &[&str]| first_conflict(&paths.iter().map(|p| path(p)).collect::<Vec<_>>());
        assert_eq!(check(&["a", "b", "c/d", "c/e"]), None);
        assert_eq!(check(&["a", "a-b", "a.b"]), None);
        assert_eq!(check(&["x", "a", "b", "a"]), Some((1, 3)));
        assert_eq!(check(&["a/b/c", "a-b", "a/b"]), Some((0, 2)));
        assert_eq!(check(&["a", "a/b"]), Some((0, 1)));
    }

    #[test]
    fn skip_reasons_read_as_the_api_says() {
        let cases = [
            (SkipReason::Symlink, "symlink"),
            (SkipReason::HardLink, "hard link"),
            (SkipReason::NotRegular, "not a regular file"),
            (SkipReason::NameNotUtf8, "name not UTF-8"),
            (
                SkipReason::NameHasControlCharacter,
                "name has control characters",
            ),
            (SkipReason::TooDeep, "nested more than 16 levels deep"),
            (
                SkipReason::OverFileCap { cap: 10 },
                "over the per-file cap of 10 bytes",
            ),
            (
                SkipReason::OverCountCap { cap: 100 },
                "over the file count cap of 100",
            ),
            (
                SkipReason::OverTotalCap { cap: 20 },
                "over the total size cap of 20 bytes",
            ),
            (SkipReason::Unreadable, "unreadable"),
        ];
        for (reason, text) in cases {
            assert_eq!(reason.to_string(), text);
        }
    }
}
