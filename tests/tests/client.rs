//! The Python client (`clients/python`), installed with pip as a user would, run
//! against the real service: its own pytest suite, and the README's example as
//! written.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pysandbox_tests::{require_root, venv_python, Service};

/// `clients/python`, copied away from the source tree (pip builds a local
/// directory in place, which would leave `build/` and `*.egg-info` in it) and
/// installed into the test venv without `-e`. Returns the copy, which holds the
/// tests too.
fn install_client() -> tempfile::TempDir {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/python");
    let copy = tempfile::tempdir().expect("temp dir");
    let status = Command::new("cp")
        .arg("-a")
        .arg(source.join("."))
        .arg(copy.path())
        .status()
        .expect("cp");
    assert!(status.success(), "copying clients/python failed");
    let python = venv_python();
    // Under the venv's lock: test binaries sharing the venv install one at a time.
    let lock = format!("{}.lock", python_venv(&python).display());
    let out = Command::new("flock")
        .arg(lock)
        .arg(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(["--force-reinstall", "--no-deps"])
        .arg(copy.path())
        .output()
        .expect("pip install");
    assert_ok("pip install clients/python", &out);
    copy
}

/// The venv directory of its `bin/python`.
fn python_venv(python: &Path) -> PathBuf {
    python
        .ancestors()
        .nth(2)
        .expect("<venv>/bin/python")
        .to_owned()
}

#[track_caller]
fn assert_ok(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The venv's python with the service's address and token in its environment and
/// nothing else of ours: no proxy variables to route around.
fn python_for(svc: &Service, cwd: &Path) -> Command {
    let mut cmd = Command::new(venv_python());
    cmd.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("PYSANDBOX_URL", svc.url(""))
        .env("PYSANDBOX_TOKEN", svc.token())
        .current_dir(cwd);
    cmd
}

/// The first ```python block of the README's "Python client" section.
fn readme_example() -> &'static str {
    let readme = include_str!("../../README.md");
    let section = &readme[readme.find("### Python client").expect("the section")..];
    let start = section.find("```python\n").expect("a python block") + "```python\n".len();
    let end = start + section[start..].find("```").expect("the block's end");
    &section[start..end]
}

#[tokio::test]
async fn the_client_passes_its_tests_against_the_service() {
    require_root!();
    let svc = Service::start();
    let client = install_client();
    let out = python_for(&svc, client.path())
        // No cache directory: the copy is thrown away anyway.
        .args(["-m", "pytest", "-p", "no:cacheprovider", "-q", "tests"])
        .output()
        .expect("run pytest");
    assert_ok("pytest clients/python/tests", &out);
    // Every test ran and passed: none skipped, none lost to a collection error.
    let tests = std::fs::read_to_string(client.path().join("tests/test_client.py"))
        .expect("the client's tests");
    let count = tests.matches("\ndef test_").count();
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        summary.contains(&format!("{count} passed")) && !summary.contains("skipped"),
        "{count} tests expected: {summary}"
    );
}

#[tokio::test]
async fn the_readme_example_runs_as_written() {
    require_root!();
    let svc = Service::start();
    let client = install_client();
    let out = python_for(&svc, client.path())
        .args(["-c", readme_example()])
        .output()
        .expect("run the example");
    assert_ok("the README's client example", &out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.first(), Some(&"3"), "{stdout}");
    assert!(lines.contains(&"42"), "the session's line: {stdout}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("Output Output(stream='stdout', text='live")),
        "{stdout}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("Result Result(")),
        "{stdout}"
    );
    assert_eq!(
        lines.last(),
        Some(&"400 code code: must not be empty"),
        "{stdout}"
    );
}
