//! A virtualenv with the third-party clients that tests drive the service with (an
//! OpenAPI validator, an MCP client, the project's own Python client…), listed in
//! `tests/python/requirements.txt`. Made on first use, so `cargo test --workspace`
//! on a fresh machine needs nothing more than PyPI.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// Where the virtualenv lives: outside the target dir, shared by every test binary.
const VENV: &str = "/var/tmp/pysandbox-test-venv";

/// The virtualenv's `python`, after making the venv if it is missing or older than
/// the requirements. Panics with pip's output if that fails.
pub fn venv_python() -> PathBuf {
    static MADE: OnceLock<PathBuf> = OnceLock::new();
    MADE.get_or_init(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/make-venv");
        let out = Command::new("flock")
            .args([&format!("{VENV}.lock"), script, VENV])
            .output()
            .expect("run flock (util-linux)");
        assert!(
            out.status.success(),
            "making the test virtualenv failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(VENV).join("bin/python")
    })
    .clone()
}
