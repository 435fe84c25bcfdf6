//! A virtualenv with the third-party clients that tests drive the service with (an
//! OpenAPI validator, an MCP client, the project's own Python client…), listed in
//! `tests/python/requirements.txt`. Made on first use, so `cargo test --workspace`
//! on a fresh machine needs nothing more than PyPI.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The requirements the virtualenv is made from.
const REQUIREMENTS: &str = include_str!("../python/requirements.txt");

/// Where the virtualenv lives: outside the target dir, shared by every test binary,
/// one per set of requirements, so that checkouts with different requirements
/// (branches, worktrees) testing at once do not remake each other's venv under
/// their feet.
fn venv_dir() -> String {
    let mut hasher = DefaultHasher::new();
    REQUIREMENTS.hash(&mut hasher);
    format!("/var/tmp/pysandbox-test-venv-{:016x}", hasher.finish())
}

/// The virtualenv's `python`, after making the venv if it is missing or older than
/// the requirements. Panics with pip's output if that fails.
pub fn venv_python() -> PathBuf {
    static MADE: OnceLock<PathBuf> = OnceLock::new();
    MADE.get_or_init(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/make-venv");
        let venv = venv_dir();
        let out = Command::new("flock")
            .args([&format!("{venv}.lock"), script, &venv])
            .output()
            .expect("run flock (util-linux)");
        assert!(
            out.status.success(),
            "making the test virtualenv failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        PathBuf::from(venv).join("bin/python")
    })
    .clone()
}
