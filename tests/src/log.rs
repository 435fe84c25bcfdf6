//! Collected output of a daemon, read from its pipes by background threads so the
//! pipes never fill up and block it.

use std::io::{BufRead, BufReader, Read};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

/// The lines a daemon wrote to stdout and stderr, without colour codes.
#[derive(Debug, Clone, Default)]
pub struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    /// Appends one line (colour escape sequences are removed).
    pub fn push(&self, line: &str) {
        let line = strip_ansi(line);
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(line);
    }

    /// All lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// All lines so far, joined with newlines.
    pub fn text(&self) -> String {
        self.lines().join("\n")
    }

    /// Whether any line so far contains `needle`.
    pub fn contains(&self, needle: &str) -> bool {
        self.lines().iter().any(|l| l.contains(needle))
    }

    /// Reads `reader` line by line on a thread until EOF, adding each line (prefixed
    /// with `prefix`) and calling `on_line` with it.
    pub(crate) fn drain<R, F>(
        &self,
        reader: R,
        prefix: &'static str,
        mut on_line: F,
    ) -> JoinHandle<()>
    where
        R: Read + Send + 'static,
        F: FnMut(&str) + Send + 'static,
    {
        let log = self.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(reader);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf);
                        let line = strip_ansi(line.trim_end_matches(['\n', '\r']));
                        on_line(&line);
                        log.push(&format!("{prefix}{line}"));
                    }
                }
            }
        })
    }
}

/// Removes ANSI escape sequences (`ESC [ ... letter`), which tracing adds when it
/// believes it writes to a terminal.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}
