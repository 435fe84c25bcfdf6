//! Host process inspection, polling and randomness.

use std::fs;
use std::io::Read;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Pids of host processes (other than this one) whose command line, with its NUL
/// separators read as spaces, contains `needle`.
pub fn host_processes_matching(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    let mut pids: Vec<u32> = host_pids()
        .filter(|&pid| pid != me)
        .filter(|&pid| cmdline(pid).contains(needle))
        .collect();
    pids.sort_unstable();
    pids
}

/// Every pid in the host's `/proc`.
fn host_pids() -> impl Iterator<Item = u32> {
    let entries = fs::read_dir("/proc").into_iter().flatten().flatten();
    entries.filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
}

/// The command line of `pid`, its NUL separators read as spaces; empty once it
/// is gone (a process may exit between listing and reading).
pub fn cmdline(pid: u32) -> String {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let spaced: Vec<u8> = raw
        .into_iter()
        .map(|b| if b == 0 { b' ' } else { b })
        .collect();
    String::from_utf8_lossy(&spaced).into_owned()
}

/// Host pid → parent pid of every process.
pub fn parent_pids() -> std::collections::HashMap<u32, u32> {
    host_pids()
        .filter_map(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // The command name may hold spaces and parentheses: fields follow the last ')'.
            let ppid = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?;
            Some((pid, ppid.parse().ok()?))
        })
        .collect()
}

const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Polls `cond` every 20 ms until it holds (true) or `timeout` passes (false).
/// Blocks the thread: in async tests that need other tasks to run meanwhile, use
/// [`wait_until_async`].
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// [`wait_until`] that sleeps with tokio, so other tasks keep running.
pub async fn wait_until_async(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// `len` bytes from the kernel's random source.
pub fn random_bytes(len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("the tests need /dev/urandom for tokens and garbage");
    buf
}

/// `len` random bytes as lowercase hex (for tokens and unique names).
pub fn random_hex(len: usize) -> String {
    random_bytes(len)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A number for `sleep` that no other process on the host has in its command
/// line: `base` followed by random digits (`base` must contain a `.`).
pub fn sleep_needle(base: &str) -> String {
    let digits: String = random_bytes(8)
        .iter()
        .map(|b| char::from(b'0' + b % 10))
        .collect();
    format!("{base}{digits}")
}

/// A Python expression for the string `s` that does not contain `s` itself (two
/// concatenated halves), so the job's own command line or source never matches
/// [`host_processes_matching`]`(s)`, only the process given `s` as an argument.
pub fn py_concat(s: &str) -> String {
    let mid = s.len() / 2;
    format!("{:?} + {:?}", &s[..mid], &s[mid..])
}

/// Python that defines `outcome(f)`: `"ok"` when `f()` returns, else the name of
/// the errno of the `OSError` it raised. Probes put it before their own code.
pub const PY_OUTCOME: &str = r#"
import errno

def outcome(f):
    try:
        f()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
"#;

/// Waits up to `timeout` for `child` to exit and returns its output; kills it (and
/// fails, with its stderr) if it is still running then.
pub fn exit_output(
    mut child: std::process::Child,
    what: &str,
    timeout: Duration,
) -> std::process::Output {
    let exited = wait_until(timeout, || child.try_wait().ok().flatten().is_some());
    if !exited {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("collect output");
    assert!(
        exited,
        "{what} kept running; stdout: {}; stderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// SIGTERM, then SIGKILL if `child` is still alive after `grace`; returns how it
/// ended.
pub fn terminate(
    mut child: std::process::Child,
    grace: Duration,
) -> Option<std::process::ExitStatus> {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    if wait_until(grace, || child.try_wait().ok().flatten().is_some()) {
        return child.wait().ok();
    }
    let _ = child.kill();
    child.wait().ok()
}

/// The peak resident memory of process `pid` (`VmHWM`), in bytes.
pub fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/status: {e}"));
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status");
    kib * 1024
}

/// The host directories of the cgroups `pid` is in (one per hierarchy), from
/// `/proc/<pid>/cgroup` and the cgroup mounts in `/proc/self/mountinfo`.
pub fn cgroup_dirs(pid: u32) -> Vec<PathBuf> {
    let Ok(own) = fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
        return Vec::new();
    };
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    // (fs type, super options, mount point) of every cgroup mount.
    let mounts: Vec<(String, Vec<String>, PathBuf)> = mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let point = left.split(' ').nth(4)?;
            let mut right = right.split(' ');
            let fs_type = right.next()?;
            let opts = right.nth(1)?;
            fs_type.starts_with("cgroup").then(|| {
                (
                    fs_type.to_owned(),
                    opts.split(',').map(str::to_owned).collect(),
                    PathBuf::from(point),
                )
            })
        })
        .collect();
    own.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let mount = mounts.iter().find(|(fs_type, opts, _)| {
                if id == "0" {
                    fs_type == "cgroup2"
                } else {
                    fs_type == "cgroup"
                        && controllers.split(',').all(|c| opts.iter().any(|o| o == c))
                }
            })?;
            Some(mount.2.join(path.trim_start_matches('/')))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_host_process_by_its_arguments_and_sees_it_go() {
        let needle = sleep_needle("12.");
        let mut child = std::process::Command::new("sleep")
            .arg(&needle)
            .spawn()
            .expect("spawn sleep");
        let pid = child.id();
        assert!(wait_until(Duration::from_secs(5), || {
            host_processes_matching(&needle) == [pid]
        }));
        child.kill().expect("kill sleep");
        child.wait().expect("reap sleep");
        assert!(host_processes_matching(&needle).is_empty());
    }

    #[test]
    fn py_concat_hides_the_string() {
        let expr = py_concat("987.25123");
        assert_eq!(expr, r#""987." + "25123""#);
        assert!(!expr.contains("987.25123"));
    }
}
