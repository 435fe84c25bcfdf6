//! Harness for pysandbox's black-box tests: builds the real daemons once per test
//! process, starts them the way production does (executor as root on a private Unix
//! socket, frontend as an unprivileged uid on a free loopback port), and talks to
//! them over HTTP or the executor's wire protocol. A local upload service stub
//! records what the frontend uploads.
//!
//! Every process it starts is killed when its handle is dropped; when a test panics,
//! the daemons' logs are printed so the failure message shows what they said.
//!
//! ```no_run
//! # async fn demo() {
//! pysandbox_tests::require_root!();
//! let svc = pysandbox_tests::Service::start();
//! let out = svc.run_code("print(2 + 2)").await;
//! assert_eq!(out["stdout"], "4\n");
//! # }
//! ```
#![forbid(unsafe_code)]

mod binaries;
mod executor;
mod frontend;
mod http;
mod log;
mod origin;
mod procs;
mod service;
mod upload_stub;
mod venv;

pub use binaries::{binaries, Binaries};
pub use executor::{ensure_sandbox_user, Executor, ExecutorBuilder, SANDBOX_USER};
pub use frontend::Frontend;
pub use http::{assert_error, parse_raw_response, raw_exchange, Reply};
pub use log::Log;
pub use origin::Origin;
pub use procs::{
    cgroup_dirs, cmdline, exit_output, host_processes_matching, parent_pids, peak_rss, py_concat,
    random_bytes, random_hex, sleep_needle, wait_until, wait_until_async, PY_OUTCOME,
};
pub use service::{template_ready, Service, ServiceBuilder};
pub use upload_stub::{FormPart, Received, StubReply, UploadStub};
pub use venv::venv_python;

/// The uid and gid the frontend runs as: not root, not the sandbox user's.
pub const FRONTEND_UID: u32 = 65533;
/// See [`FRONTEND_UID`].
pub const FRONTEND_GID: u32 = 65533;

/// Whether the test may go on: true when running as root. Otherwise it panics when
/// the `CI` variable is set (these tests must never skip in CI) and says on stderr
/// that the test is skipped. Prefer the [`require_root!`] macro.
pub fn require_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("these tests need root (they start bwrap jails), and CI must run them as root");
    }
    eprintln!("skipped: needs root (the executor builds bwrap jails as root)");
    false
}

/// Returns from the calling test (after saying so on stderr) unless it runs as
/// root; panics instead when `CI` is set.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::require_root() {
            return;
        }
    };
}

/// The job's stdout parsed as JSON (tests make Python `print(json.dumps(...))`);
/// panics with the whole result if it is not JSON.
#[track_caller]
pub fn stdout_json(result: &serde_json::Value) -> serde_json::Value {
    let stdout = result["stdout"].as_str().unwrap_or_default();
    serde_json::from_str(stdout)
        .unwrap_or_else(|e| panic!("the job's stdout is not JSON ({e}); result: {result:#}"))
}

/// The landlock ABI this kernel offers, asked the way the executor asks
/// (landlock_create_ruleset(2) with `LANDLOCK_CREATE_RULESET_VERSION`): what
/// `/health` and `check` must report, not what the executor was written for.
/// Panics when the kernel offers none.
pub fn kernel_landlock_abi() -> u32 {
    let asked = std::process::Command::new("python3")
        .args([
            "-c",
            "import ctypes\nlibc = ctypes.CDLL(None)\nlibc.syscall.restype = ctypes.c_long\n\
             print(libc.syscall(444, None, 0, 1))",
        ])
        .output()
        .expect("run python3");
    String::from_utf8_lossy(&asked.stdout)
        .trim()
        .parse::<u32>()
        .ok()
        .filter(|&abi| abi >= 1)
        .unwrap_or_else(|| panic!("this kernel offers no landlock: {asked:?}"))
}
