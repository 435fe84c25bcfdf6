//! Builds the two daemons once per test process and finds them next to the tests.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Where the daemons' binaries are.
#[derive(Debug)]
pub struct Binaries {
    /// `pysandbox-executor` in the target directory (run as root).
    pub executor: PathBuf,
    /// A copy of `pysandbox-frontend` in a world-readable directory, so the
    /// unprivileged frontend uid can execute it wherever the clone lives.
    pub frontend: PathBuf,
}

static BINARIES: OnceLock<Result<Binaries, String>> = OnceLock::new();

/// Builds both daemons (once per test process) with the profile the tests were
/// built with, and returns their paths. Panics with cargo's output if the build fails.
pub fn binaries() -> &'static Binaries {
    match BINARIES.get_or_init(build) {
        Ok(bins) => bins,
        Err(why) => panic!("{why}"),
    }
}

fn build() -> Result<Binaries, String> {
    // The test binary is target/<profile>/deps/<name>-<hash>; the daemons land in
    // target/<profile>/.
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the test binary: {e}"))?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| format!("unexpected test binary location {}", exe.display()))?
        .to_path_buf();
    let target_dir = profile_dir
        .parent()
        .ok_or_else(|| format!("unexpected profile dir {}", profile_dir.display()))?;
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| format!("unexpected profile dir {}", profile_dir.display()))?;

    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("the tests crate has no parent directory")?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(workspace)
        .args([
            "build",
            "-p",
            "pysandbox-executor",
            "-p",
            "pysandbox-frontend",
            // The fork server's library, which the executor finds beside itself.
            "-p",
            "pysandbox-fork",
        ])
        // Build where the tests were built, whatever --target-dir they were given.
        .env("CARGO_TARGET_DIR", target_dir);
    match profile {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cargo}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "building the daemons failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }

    let executor = profile_dir.join("pysandbox-executor");
    let frontend_built = profile_dir.join("pysandbox-frontend");
    for bin in [&executor, &frontend_built] {
        if !bin.is_file() {
            return Err(format!("{} was not built", bin.display()));
        }
    }
    let frontend = copy_for_unprivileged_use(&frontend_built)?;
    Ok(Binaries { executor, frontend })
}

/// Copies the frontend into `$TMPDIR/pysandbox-tests.<pid>/` (mode 0755), after
/// removing such directories left by test processes that are gone.
fn copy_for_unprivileged_use(bin: &Path) -> Result<PathBuf, String> {
    let tmp = std::env::temp_dir();
    sweep_stale_copies(&tmp);
    let dir = tmp.join(format!("pysandbox-tests.{}", std::process::id()));
    fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("cannot chmod {}: {e}", dir.display()))?;
    let copy = dir.join("pysandbox-frontend");
    fs::copy(bin, &copy).map_err(|e| format!("cannot copy {}: {e}", bin.display()))?;
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("cannot chmod {}: {e}", copy.display()))?;
    Ok(copy)
}

fn sweep_stale_copies(tmp: &Path) {
    let Ok(entries) = fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("pysandbox-tests."))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            // Best effort: another test process may be sweeping the same directory.
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}
