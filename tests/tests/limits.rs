//! Resource limits: what each hostile job is stopped by, what the response says
//! about it, that nothing of the job is left on the host, and that the service
//! still serves the next job. Also the per-request `limits` object, usage figures,
//! `/health`'s limit mechanisms and `pysandbox-executor check`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pysandbox_tests::{
    assert_error, binaries, cgroup_dirs, exit_output, host_processes_matching, py_concat,
    require_root, sleep_needle, wait_until_async, Executor, Service,
};
use serde_json::{json, Value};

const MIB: u64 = 1 << 20;
/// The executor's default maxima, in the order the API names the limits.
const MAXIMA: [(&str, u64); 5] = [
    ("memoryMb", 4096),
    ("cpuMs", 600_000),
    ("maxProcesses", 512),
    ("diskMb", 2048),
    ("outputBytes", 4_194_304),
];
const DEFAULT_OUTPUT_BYTES: usize = 1_048_576;
/// The least a job may ask for (README's Limits table): below these a jail cannot
/// start.
const MINIMA: [(&str, u64); 5] = [
    ("memoryMb", 16),
    ("cpuMs", 1),
    ("maxProcesses", 4),
    ("diskMb", 1),
    ("outputBytes", 1),
];

/// The same service still runs an ordinary job correctly.
#[track_caller]
fn assert_still_serves(svc: &Service) -> impl std::future::Future<Output = ()> + '_ {
    let caller = std::panic::Location::caller();
    async move {
        let out = svc.run_code("print(2 + 2)").await;
        assert_eq!(
            (
                &out["exitCode"],
                &out["stdout"],
                &out["stderr"],
                &out["limitExceeded"]
            ),
            (&json!(0), &json!("4\n"), &json!(""), &Value::Null),
            "after the hostile job (at {caller}) print(2 + 2) gave {out:#}"
        );
    }
}

fn stderr_of(out: &Value) -> &str {
    out["stderr"].as_str().unwrap_or_default()
}

/// What a result says of its output: exit code, stdout, both truncation flags and
/// the limit hit.
fn output_flags(out: &Value) -> (&Value, &Value, &Value, &Value, &Value) {
    (
        &out["exitCode"],
        &out["stdout"],
        &out["stdoutTruncated"],
        &out["stderrTruncated"],
        &out["limitExceeded"],
    )
}

fn usage_u64(out: &Value, key: &str) -> u64 {
    out["usage"][key]
        .as_u64()
        .unwrap_or_else(|| panic!("usage.{key} is not a non-negative integer: {out:#}"))
}

fn pid(raw: u32) -> Pid {
    Pid::from_raw(i32::try_from(raw).expect("pid fits in i32"))
}

/// Code that runs `sleep <needle>` as a child and waits for it.
fn sleeper(needle: &str) -> String {
    format!(
        "import subprocess\nsubprocess.run(['sleep', {}])",
        py_concat(needle)
    )
}

/// The host directories of the pysandbox cgroups `pid` is in (one per hierarchy).
fn pysandbox_cgroups_of(pid: u32) -> Vec<PathBuf> {
    cgroup_dirs(pid)
        .into_iter()
        .filter(|dir| dir.to_string_lossy().contains("/pysandbox-"))
        .collect()
}

/// `job-*` directories directly under `instance` (an executor's cgroup dir), but
/// those of the executor's idle warm jails.
fn job_cgroups_under(instance: &Path, executor: &Executor) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(instance) else {
        return Vec::new();
    };
    let idle: Vec<String> = executor
        .idle_jail_ids()
        .iter()
        .map(|id| format!("job-{id}"))
        .collect();
    entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("job-") && !idle.contains(name))
        .map(|name| instance.join(name))
        .collect()
}

/// Mount points below the executor's state dir in the test's mount namespace, but
/// those of its idle warm jails.
fn mounts_under(executor: &Executor) -> Vec<PathBuf> {
    let state_dir = executor.state_dir();
    let idle: Vec<PathBuf> = executor
        .idle_jail_ids()
        .iter()
        .map(|id| state_dir.join("jobs").join(id))
        .collect();
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|point| point.starts_with(state_dir) && point != state_dir)
        .filter(|point| !idle.iter().any(|dir| point.starts_with(dir)))
        .collect()
}

/// The names in the executor's jobs dir (`<state dir>/jobs`, which must exist), but
/// those of its idle warm jails.
fn jobs_dir_entries(executor: &Executor) -> Vec<String> {
    let jobs = executor.state_dir().join("jobs");
    let idle = executor.idle_jail_ids();
    fs::read_dir(&jobs)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", jobs.display()))
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| !idle.contains(name))
        .collect()
}

/// Waits (3 s at most) until what the executor's ended jobs left is removed, which
/// happens right after their answers: the tmpfs mounts and `<state dir>/jobs`
/// entries but those of its idle jails, and `cgroups`. Panics with what is left.
async fn assert_remains_removed(executor: &Executor, cgroups: &[PathBuf]) {
    let left = || {
        let cgroups: Vec<&PathBuf> = cgroups.iter().filter(|d| d.exists()).collect();
        let (mounts, entries) = (mounts_under(executor), jobs_dir_entries(executor));
        (cgroups.is_empty() && mounts.is_empty() && entries.is_empty())
            .then_some(())
            .ok_or(format!(
                "cgroups {cgroups:?}, mounts {mounts:?}, jobs dir entries {entries:?}"
            ))
    };
    wait_until_async(Duration::from_secs(3), || left().is_ok()).await;
    if let Err(what) = left() {
        panic!("an ended job's remains are left: {what}");
    }
}

/// The pid namespace of `pid`, e.g. `pid:[4026532301]`.
fn pid_namespace(pid: u32) -> Option<String> {
    fs::read_link(format!("/proc/{pid}/ns/pid"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// Whether `pid` has exited and waits to be reaped (or is gone already).
fn is_zombie(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
        // `pid (comm) S ...`: the state follows the last `)`.
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']))
    })
}

/// `pid`'s number in its own (innermost) pid namespace.
fn pid_inside(pid: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    line.split_whitespace().last()?.parse().ok()
}

/// Live host processes in the pid namespace `ns`. Zombies do not count: they
/// have exited and hold nothing but their pid until their parent (often the
/// host's init, once the jail's bwrap is gone) reaps them.
fn processes_in_namespace(ns: &str) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| pid_namespace(p).as_deref() == Some(ns) && !is_zombie(p))
        .collect()
}

/// Bytes available to unprivileged users on the filesystem holding `path`.
fn free_bytes(path: &Path) -> u64 {
    let st = nix::sys::statvfs::statvfs(path).expect("statvfs");
    st.blocks_available() * st.fragment_size()
}

/// A job that, once running, shows itself on the host: the process whose command
/// line holds the needle, and what was recorded about it.
#[derive(Debug)]
struct Sighting {
    sleep_pid: u32,
    namespace: String,
    cgroups: Vec<PathBuf>,
    mounts: Vec<PathBuf>,
}

/// Waits (up to 10 s) for `sleep <needle>` and records its pid namespace,
/// pysandbox cgroups and the mounts under the executor's state dir while it runs.
async fn sight(needle: &str, executor: &Executor) -> Sighting {
    let found = wait_until_async(Duration::from_secs(10), || {
        !host_processes_matching(needle).is_empty()
    })
    .await;
    assert!(found, "the job's `sleep {needle}` never showed on the host");
    let sleep_pid = host_processes_matching(needle)[0];
    let sighting = Sighting {
        sleep_pid,
        namespace: pid_namespace(sleep_pid).expect("the sleep's pid namespace"),
        cgroups: pysandbox_cgroups_of(sleep_pid),
        mounts: mounts_under(executor),
    };
    assert!(
        !sighting.cgroups.is_empty() && !sighting.mounts.is_empty(),
        "the running job has no pysandbox cgroup or no work-dir mount: {sighting:?}"
    );
    sighting
}

/// `VmRSS` of `pid` in KiB.
fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Samples the `VmRSS` of some processes every 50 ms on a thread until stopped.
#[derive(Debug)]
struct RssSampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(Vec<u64>, u32)>,
}

impl RssSampler {
    fn start(pids: Vec<u32>) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut peaks = vec![0; pids.len()];
            let mut samples = 0;
            loop {
                for (peak, pid) in peaks.iter_mut().zip(&pids) {
                    if let Some(rss) = vm_rss_kib(*pid) {
                        *peak = (*peak).max(rss);
                    }
                }
                samples += 1;
                if flag.load(Ordering::Relaxed) {
                    return (peaks, samples);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        RssSampler { stop, thread }
    }

    /// The peak RSS (KiB) of each process, and how many samples were taken.
    fn finish(self) -> (Vec<u64>, u32) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the RSS sampler panicked")
    }
}

#[tokio::test]
async fn memory_bomb_is_killed_at_the_memory_limit() {
    require_root!();
    let svc = Service::start();
    // Each step touches every page, so it is really charged to the job.
    let code = r#"
held = []
for step in range(1, 65):
    block = bytearray(64 << 20)
    block[::4096] = b"\x01" * (len(block) // 4096)
    held.append(block)
    print(step, flush=True)
"#;
    let started = Instant::now();
    let out = svc
        .run(json!({ "code": code, "timeoutMs": 30000, "limits": { "memoryMb": 256 } }))
        .await;
    let elapsed = started.elapsed();
    let stdout = out["stdout"].as_str().unwrap_or_default();
    let steps = stdout.lines().count();
    let peak = usage_u64(&out, "peakMemoryBytes");
    eprintln!(
        "memory bomb: {steps} steps of 64 MiB printed, peak {} MiB, answered in {elapsed:?}",
        peak / MIB
    );
    assert_eq!(
        (
            &out["limitExceeded"],
            &out["signal"],
            &out["exitCode"],
            &out["timedOut"]
        ),
        (
            &json!("memory"),
            &json!("SIGKILL"),
            &Value::Null,
            &json!(false)
        ),
        "{out:#}"
    );
    assert_eq!(
        stderr_of(&out),
        "[sandbox] killed: memory limit 256 MiB exceeded\n",
        "{out:#}"
    );
    // 3 × 64 MiB fit under 256 MiB beside the interpreter; a 4th cannot.
    let expected: String = (1..=3).map(|i| format!("{i}\n")).collect();
    assert_eq!(
        stdout, expected,
        "the bomb did not stop at 192 MiB: {out:#}"
    );
    assert!(
        (192 * MIB..=256 * MIB + 8 * MIB).contains(&peak),
        "peakMemoryBytes {peak} is not between 192 MiB and the 256 MiB limit (+8 MiB)"
    );
    assert!(
        elapsed < Duration::from_secs(10),
        "answered after {elapsed:?}"
    );
    assert_still_serves(&svc).await;
}

#[tokio::test]
async fn fork_bomb_is_refused_at_the_process_limit_and_leaves_nothing() {
    require_root!();
    let svc = Service::start();
    let needle = sleep_needle("654.3");
    // A sentinel in the job's tree to find its namespace and cgroups by; the
    // bomb's processes all run the same interpreter command line as any job's.
    let code = format!(
        "import os, subprocess, time\nsubprocess.Popen(['sleep', {}])\ntime.sleep(0.5)\nwhile True:\n    os.fork()\n",
        py_concat(&needle)
    );
    let body = json!({ "code": code, "timeoutMs": 10000, "limits": { "maxProcesses": 16 } });
    let started = Instant::now();
    let (out, seen) = tokio::join!(svc.run(body), sight(&needle, &svc.executor));
    let elapsed = started.elapsed();
    eprintln!(
        "fork bomb: answered in {elapsed:?}, exitCode {}, signal {}, {} bytes of stderr",
        out["exitCode"],
        out["signal"],
        stderr_of(&out).len()
    );
    assert_eq!(
        (&out["limitExceeded"], &out["timedOut"]),
        (&json!("processes"), &json!(false)),
        "{out:#}"
    );
    // The first refused fork ends the main interpreter with an uncaught error.
    assert_eq!(
        (&out["exitCode"], &out["signal"]),
        (&json!(1), &Value::Null),
        "{out:#}"
    );
    let stderr = stderr_of(&out);
    assert!(
        stderr.contains("BlockingIOError")
            && stderr
                .ends_with("[sandbox] process limit of 16 reached: a fork or thread was refused\n"),
        "stderr: {stderr:?}"
    );
    assert!(
        elapsed < Duration::from_secs(5),
        "answered after {elapsed:?}"
    );
    // Checked at once: every process that ran code of the job is gone before the
    // response is sent. A forked job's pid 1 and the holder of its memory (pids 1
    // and 3 in its namespace), which run none, die right after; so do its cgroups
    // and tmpfs.
    let forked = svc.executor.jails_started() == ["forked"];
    let survivors: Vec<u32> = processes_in_namespace(&seen.namespace)
        .into_iter()
        .filter(|&pid| !(forked && matches!(pid_inside(pid), Some(1 | 3))))
        .collect();
    assert_eq!(
        survivors,
        Vec::<u32>::new(),
        "processes of the jail's pid namespace {} survived (sleep was {})",
        seen.namespace,
        seen.sleep_pid
    );
    let emptied = wait_until_async(Duration::from_secs(5), || {
        processes_in_namespace(&seen.namespace).is_empty()
    })
    .await;
    assert!(emptied, "the pid namespace {} stayed", seen.namespace);
    assert_eq!(host_processes_matching(&needle), Vec::<u32>::new());
    assert_eq!(svc.executor.jail_processes(), Vec::<u32>::new());
    assert_remains_removed(&svc.executor, &seen.cgroups).await;
    assert_still_serves(&svc).await;
}

/// Python that writes 10 GiB to `path` in 1 MiB chunks and prints the errno name,
/// the whole MiB written and the message of the error that stopped it.
fn big_write(path: &str) -> String {
    format!(
        r#"
import errno
written = 0
chunk = b"x" * (1 << 20)
try:
    with open({path:?}, "wb", buffering=0) as f:
        for _ in range(10240):
            written += f.write(chunk)
except OSError as e:
    print(errno.errorcode[e.errno], written >> 20, e.strerror)
else:
    print("wrote", written)
"#
    )
}

#[tokio::test]
async fn big_writes_to_the_work_dir_and_tmp_stop_at_the_disk_limit() {
    require_root!();
    let svc = Service::start();
    let state_dir = svc.executor.state_dir().to_owned();
    for path in ["big.bin", "/tmp/big.bin"] {
        let free_before = free_bytes(&state_dir);
        let out = svc
            .run(
                json!({ "code": big_write(path), "timeoutMs": 30000, "limits": { "diskMb": 128 } }),
            )
            .await;
        let free_after = free_bytes(&state_dir);
        let dropped = free_before.saturating_sub(free_after);
        let stdout = out["stdout"].as_str().unwrap_or_default();
        eprintln!(
            "10 GiB write to {path}: {stdout:?}, host free space dropped by {} KiB",
            dropped / 1024
        );
        // One file may take the whole 128 MiB (RLIMIT_FSIZE, EFBIG; its value is
        // pinned by `rlimits_are_the_documented_values`), unless the
        // tmpfs runs out a little earlier (ENOSPC). The disk limit is well above
        // the host-disk noise of a busy CI machine, so that the check below can
        // tell a file landing on the host from other processes writing.
        let fields: Vec<&str> = stdout.trim_end().splitn(3, ' ').collect();
        let ok = match fields[..] {
            ["EFBIG", mib, "File too large"] => mib == "128",
            ["ENOSPC", mib, "No space left on device"] => {
                mib.parse::<u32>().is_ok_and(|m| (124..=128).contains(&m))
            }
            _ => false,
        };
        assert!(
            ok && stdout.ends_with('\n'),
            "writing to {path}: {stdout:?}; {out:#}"
        );
        assert_eq!(
            (&out["exitCode"], &out["limitExceeded"]),
            (&json!(0), &json!("disk")),
            "writing to {path}: {out:#}"
        );
        assert_eq!(
            stderr_of(&out),
            "[sandbox] disk limit of 128 MiB reached (work dir and /tmp together)\n",
            "writing to {path}"
        );
        assert!(
            dropped < 64 * MIB,
            "the host's free space dropped by {dropped} bytes while writing to {path}"
        );
        assert_still_serves(&svc).await;
    }
}

#[tokio::test]
async fn inode_flood_is_refused_with_enospc() {
    require_root!();
    let svc = Service::start();
    let code = r#"
import errno
n = 0
try:
    while n < 300000:
        open("f%d" % n, "x").close()
        n += 1
except OSError as e:
    print(errno.errorcode[e.errno], n)
else:
    print("created", n)
"#;
    let started = Instant::now();
    let out = svc.run(json!({ "code": code, "timeoutMs": 30000 })).await;
    let elapsed = started.elapsed();
    let stdout = out["stdout"].as_str().unwrap_or_default();
    eprintln!("inode flood: {stdout:?} in {elapsed:?}");
    let created = stdout
        .strip_prefix("ENOSPC ")
        .and_then(|n| n.strip_suffix('\n'))
        .and_then(|n| n.parse::<u32>().ok());
    // 16384 inodes, a few of them taken by the tmpfs's own directories.
    assert!(
        created.is_some_and(|n| (16384 - 64..16384).contains(&n)),
        "stdout {stdout:?}; {out:#}"
    );
    assert_eq!(
        (&out["exitCode"], &out["limitExceeded"]),
        (&json!(0), &json!("disk")),
        "{out:#}"
    );
    assert_eq!(
        stderr_of(&out),
        "[sandbox] disk limit of 256 MiB reached (work dir and /tmp together)\n"
    );
    assert!(
        elapsed < Duration::from_secs(10),
        "answered after {elapsed:?}"
    );
    assert_remains_removed(&svc.executor, &[]).await;
    assert_still_serves(&svc).await;
}

#[tokio::test]
async fn stdout_flood_is_cut_quickly_with_bounded_daemon_memory() {
    require_root!();
    let svc = Service::start();
    let pids = vec![
        svc.executor.pid().expect("the executor runs"),
        svc.frontend.pid().expect("the frontend runs"),
    ];
    let code = "import sys\nchunk = b'x' * (1 << 20)\nfor _ in range(200):\n    sys.stdout.buffer.write(chunk)\nprint('done', file=sys.stderr)";
    let sampler = RssSampler::start(pids);
    let started = Instant::now();
    let out = svc.run(json!({ "code": code, "timeoutMs": 60000 })).await;
    let elapsed = started.elapsed();
    let (peaks, samples) = sampler.finish();
    let stdout = out["stdout"].as_str().unwrap_or_default();
    eprintln!(
        "200 MiB stdout flood: answered in {elapsed:?}; peak VmRSS executor {} KiB, frontend {} KiB ({samples} samples)",
        peaks[0], peaks[1]
    );
    assert!(
        elapsed < Duration::from_secs(10),
        "answered after {elapsed:?}"
    );
    assert_eq!(stdout.len(), DEFAULT_OUTPUT_BYTES);
    assert!(stdout.bytes().all(|b| b == b'x'), "stdout is not the job's");
    assert_eq!(
        (
            &out["exitCode"],
            &out["stdoutTruncated"],
            &out["stderrTruncated"],
            &out["limitExceeded"]
        ),
        (&json!(0), &json!(true), &json!(false), &json!("output")),
        "{}",
        out["stderr"]
    );
    assert_eq!(
        stderr_of(&out),
        "done\n[sandbox] stdout truncated at 1048576 bytes\n"
    );
    assert!(peaks.iter().all(|&kib| kib > 0), "no VmRSS read: {peaks:?}");
    assert!(
        peaks[0] < 64 * 1024 && peaks[1] < 64 * 1024,
        "peak VmRSS executor {} KiB, frontend {} KiB: not under 64 MiB",
        peaks[0],
        peaks[1]
    );
    assert_still_serves(&svc).await;
}

#[tokio::test]
async fn eight_spinning_threads_are_killed_at_the_wall_clock_timeout() {
    require_root!();
    let svc = Service::start();
    let code = r#"
import threading
def spin():
    while True:
        pass
for _ in range(8):
    threading.Thread(target=spin, daemon=True).start()
print("spinning", flush=True)
spin()
"#;
    let started = Instant::now();
    let out = svc.run(json!({ "code": code, "timeoutMs": 2000 })).await;
    let elapsed = started.elapsed();
    eprintln!(
        "8 spinning threads: answered in {elapsed:?}, usage {}",
        out["usage"]
    );
    assert!(
        elapsed < Duration::from_millis(3500),
        "answered after {elapsed:?}: {out:#}"
    );
    assert_eq!(
        (
            &out["limitExceeded"],
            &out["timedOut"],
            &out["signal"],
            &out["stdout"]
        ),
        (
            &json!("time"),
            &json!(true),
            &json!("SIGKILL"),
            &json!("spinning\n")
        ),
        "{out:#}"
    );
    assert_eq!(
        stderr_of(&out),
        "[sandbox] killed: wall-clock timeout of 2000 ms exceeded\n"
    );
    assert_still_serves(&svc).await;
}

#[tokio::test]
async fn cpu_time_limit_kills_a_busy_loop() {
    require_root!();
    let svc = Service::start();
    let started = Instant::now();
    let out = svc
        .run(json!({ "code": "while True:\n    pass", "timeoutMs": 20000, "limits": { "cpuMs": 1000 } }))
        .await;
    let elapsed = started.elapsed();
    let cpu = usage_u64(&out, "cpuMs");
    let wall = usage_u64(&out, "wallMs");
    eprintln!("CPU limit 1000 ms: usage.cpuMs {cpu}, usage.wallMs {wall}, answered in {elapsed:?}");
    assert_eq!(
        (
            &out["limitExceeded"],
            &out["timedOut"],
            &out["signal"],
            &out["exitCode"]
        ),
        (
            &json!("cpu"),
            &json!(false),
            &json!("SIGKILL"),
            &Value::Null
        ),
        "{out:#}"
    );
    assert_eq!(
        stderr_of(&out),
        "[sandbox] killed: CPU time limit of 1000 ms exceeded\n"
    );
    assert!((1000..=2500).contains(&cpu), "usage.cpuMs {cpu}");
    assert!(wall < 5000, "usage.wallMs {wall}");
    assert!(
        elapsed < Duration::from_secs(6),
        "answered after {elapsed:?}"
    );
    assert_still_serves(&svc).await;
}

/// `limitExceeded` and the `[sandbox]` lines are the executor's word: a job that
/// only looks as if the CPU limit killed it (exit status 152 = 128 + SIGXCPU, or
/// SIGXCPU sent to itself) gets neither.
#[tokio::test]
async fn a_job_cannot_forge_the_cpu_limit_verdict() {
    require_root!();
    let svc = Service::start();
    for code in [
        "import sys\nprint('x')\nsys.exit(152)",
        "import os, signal\nprint('x')\nos.kill(os.getpid(), signal.SIGXCPU)",
    ] {
        let out = svc
            .run(json!({ "code": code, "limits": { "cpuMs": 1000 } }))
            .await;
        assert_eq!(
            (
                &out["stdout"],
                &out["stderr"],
                &out["signal"],
                &out["limitExceeded"]
            ),
            (&json!("x\n"), &json!(""), &json!("SIGXCPU"), &Value::Null),
            "{code}: {out:#}"
        );
    }
}

#[tokio::test]
async fn lowered_output_limit_keeps_the_first_bytes() {
    require_root!();
    let svc = Service::start();
    let out = svc
        .run(json!({ "code": "print('0123456789abcdef')", "limits": { "outputBytes": 10 } }))
        .await;
    assert_eq!(
        output_flags(&out),
        (
            &json!(0),
            &json!("0123456789"),
            &json!(true),
            &json!(false),
            &json!("output")
        ),
        "{out:#}"
    );
    assert_eq!(stderr_of(&out), "[sandbox] stdout truncated at 10 bytes\n");
}

#[tokio::test]
async fn limits_above_the_maximum_are_400_and_at_the_maximum_run() {
    require_root!();
    let svc = Service::start();
    for ((key, max), (_, min)) in MAXIMA.into_iter().zip(MINIMA) {
        let body = json!({ "code": "print(1)", "limits": { key: max + 1 } });
        let reply = svc.post_execute(&body).await;
        let field = format!("limits.{key}");
        assert_error(
            &reply,
            400,
            json!({ "error": format!("{field}: must be from {min} to {max}"), "field": field }),
        );
    }
    let at_max: serde_json::Map<String, Value> = MAXIMA
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect();
    let out = svc
        .run(json!({ "code": "print(1)", "limits": at_max }))
        .await;
    assert_eq!(
        (&out["exitCode"], &out["stdout"], &out["limitExceeded"]),
        (&json!(0), &json!("1\n"), &Value::Null),
        "{out:#}"
    );
}

/// Below a minimum a request is refused with 400 naming the field (not a 503 after a
/// failed jail setup); at every minimum together print(1) runs, in a warm jail and
/// in a cold one, and no limit reads as fired.
#[tokio::test]
async fn limits_below_the_minimum_are_400_and_at_the_minimum_run() {
    require_root!();
    for pool in ["2", "0"] {
        let svc = Service::builder()
            .executor_args(["--warm-pool-size", pool])
            .start();
        for ((key, min), (_, max)) in MINIMA
            .into_iter()
            .zip(MAXIMA)
            .filter(|((_, min), _)| *min > 1)
        {
            let body = json!({ "code": "print(1)", "limits": { key: min - 1 } });
            let reply = svc.post_execute(&body).await;
            let field = format!("limits.{key}");
            assert_error(
                &reply,
                400,
                json!({ "error": format!("{field}: must be from {min} to {max}"), "field": field }),
            );
        }
        // cpuMs 1 and outputBytes 1 fire by design: Python's start takes more CPU,
        // and print(1) prints two bytes.
        let at_min: serde_json::Map<String, Value> = MINIMA
            .iter()
            .filter(|(k, _)| !["cpuMs", "outputBytes"].contains(k))
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect();
        let out = svc
            .run(json!({ "code": "print(1)", "limits": at_min }))
            .await;
        assert_eq!(
            (
                &out["exitCode"],
                &out["stdout"],
                &out["stderr"],
                &out["limitExceeded"]
            ),
            (&json!(0), &json!("1\n"), &json!(""), &Value::Null),
            "warm pool {pool}: {out:#}"
        );
    }
}

/// A warm jail that already uses more memory than a job may have (it imported
/// numpy) does not take that job: a cold jail runs it. Otherwise cgroup v1 refuses
/// the lower limit (503) and v2 would OOM-kill the job before its first line.
#[tokio::test]
async fn a_job_below_a_warm_jails_memory_gets_a_cold_jail() {
    require_root!();
    let svc = Service::builder()
        .executor_args(["--warm-pool-size", "1"])
        .executor_config_toml("preload = [\"numpy\"]")
        .start();
    // Wait (generously: numpy's import) until the pool holds the warm jail.
    let warm_jails = || async { svc.health().await.json["warmJails"].as_u64() };
    let mut confirmed = false;
    for _ in 0..600 {
        if warm_jails().await == Some(1) {
            confirmed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(confirmed, "the warm jail never said it waits");
    let out = svc
        .run(json!({ "code": "print(1)", "limits": { "memoryMb": 16 } }))
        .await;
    assert_eq!(
        (&out["exitCode"], &out["stdout"], &out["limitExceeded"]),
        (&json!(0), &json!("1\n"), &Value::Null),
        "{out:#}"
    );
}

/// The code lives on the job's disk: code larger than `diskMb` is a 400 naming the
/// field, not a 503 from a failed setup; with room for it, it runs.
#[tokio::test]
async fn code_larger_than_the_disk_is_400() {
    require_root!();
    let svc = Service::builder()
        .frontend_env("MAX_BODY_BYTES", &(4 * MIB).to_string())
        .start();
    let code = format!("#{}\nprint(1)", "x".repeat(3 * MIB as usize / 2));
    let reply = svc
        .post_execute(&json!({ "code": code, "limits": { "diskMb": 1 } }))
        .await;
    assert_error(
        &reply,
        400,
        json!({
            "error": "code: does not fit in the job's disk limit of 1 MiB (limits.diskMb)",
            "field": "code"
        }),
    );
    let out = svc
        .run(json!({ "code": code, "limits": { "diskMb": 2 } }))
        .await;
    assert_eq!(
        (&out["exitCode"], &out["stdout"], &out["limitExceeded"]),
        (&json!(0), &json!("1\n"), &Value::Null),
        "{out:#}"
    );
}

#[tokio::test]
async fn malformed_limits_are_400() {
    require_root!();
    let svc = Service::start();
    let mut failures = Vec::new();
    let mut expect = |body: Value, field: &str, reason: &str, reply: pysandbox_tests::Reply| {
        let want = json!({ "error": format!("{field}: {reason}"), "field": field });
        if (reply.status, &reply.json) != (400, &want) {
            failures.push(format!("{body} answered {} {}", reply.status, reply.text));
        }
    };
    for (key, _) in MAXIMA {
        for bad in [
            json!(0),
            json!(-1),
            json!(1.5),
            json!("5"),
            json!(true),
            json!([5]),
        ] {
            let body = json!({ "code": "print(1)", "limits": { key: bad } });
            let reply = svc.post_execute(&body).await;
            expect(
                body,
                &format!("limits.{key}"),
                "must be a positive integer",
                reply,
            );
        }
    }
    let known = "is not a limit (memoryMb, cpuMs, maxProcesses, diskMb, outputBytes)";
    for key in ["memoryMB", "timeoutMs", "memory_mb", ""] {
        let body = json!({ "code": "print(1)", "limits": { key: 64 } });
        let reply = svc.post_execute(&body).await;
        expect(body, &format!("limits.{key}"), known, reply);
    }
    for bad in [json!(5), json!("memoryMb"), json!([256]), json!(true)] {
        let body = json!({ "code": "print(1)", "limits": bad });
        let reply = svc.post_execute(&body).await;
        expect(body, "limits", "must be an object", reply);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn usage_of_a_small_job_is_plausible() {
    require_root!();
    let svc = Service::start();
    let out = svc.run_code("print(2+2)").await;
    assert_eq!(
        (&out["stdout"], &out["limitExceeded"]),
        (&json!("4\n"), &Value::Null),
        "{out:#}"
    );
    let usage = out["usage"]
        .as_object()
        .unwrap_or_else(|| panic!("no usage object: {out:#}"));
    // serde_json's map is sorted by key.
    let keys: Vec<&str> = usage.keys().map(String::as_str).collect();
    assert_eq!(keys, ["cpuMs", "peakMemoryBytes", "wallMs"], "{out:#}");
    let (wall, cpu, peak) = (
        usage_u64(&out, "wallMs"),
        usage_u64(&out, "cpuMs"),
        usage_u64(&out, "peakMemoryBytes"),
    );
    eprintln!("print(2+2): wallMs {wall}, cpuMs {cpu}, peakMemoryBytes {peak}");
    assert!((1..5000).contains(&wall), "wallMs {wall}");
    assert!(cpu < 2000, "cpuMs {cpu}");
    // A jail's Python counts whole (≈9 MiB); a forked job only the pages it wrote
    // itself (≈0.5 MiB from a spare that warmed up before the job).
    assert!(
        (256 * 1024..200 * MIB).contains(&peak),
        "peakMemoryBytes {peak}"
    );
}

/// The executor killed with SIGKILL mid-job: once started again, it has swept
/// every trace of the job (process, cgroups, tmpfs mount, work dir).
#[tokio::test]
async fn executor_killed_mid_job_leaves_nothing_once_restarted() {
    require_root!();
    let mut svc = Service::start();
    let executor_pid = pid(svc.executor.pid().expect("the executor runs"));
    let needle = sleep_needle("765.4");
    let body = json!({ "code": sleeper(&needle), "timeoutMs": 60000 });
    let crash = async {
        let seen = sight(&needle, &svc.executor).await;
        kill(executor_pid, Signal::SIGKILL).expect("cannot kill the executor");
        seen
    };
    let (reply, seen) = tokio::join!(svc.post_execute(&body), crash);
    assert_eq!(reply.status, 503, "{}", reply.text);
    svc.executor.kill();
    let cgroups_left = seen.cgroups.iter().filter(|d| d.exists()).count();
    eprintln!(
        "executor killed mid-job: before the restart {} of {} job cgroups and {} work-dir mounts are left, sleep alive: {}",
        cgroups_left,
        seen.cgroups.len(),
        mounts_under(&svc.executor).len(),
        !host_processes_matching(&needle).is_empty()
    );
    svc.executor.restart();

    assert_eq!(
        host_processes_matching(&needle),
        Vec::<u32>::new(),
        "the job's sleep survived"
    );
    assert_eq!(processes_in_namespace(&seen.namespace), Vec::<u32>::new());
    let left: Vec<&PathBuf> = seen.cgroups.iter().filter(|d| d.exists()).collect();
    assert!(left.is_empty(), "job cgroups left: {left:?}");
    let instances: Vec<PathBuf> = seen
        .cgroups
        .iter()
        .filter_map(|d| d.parent().map(Path::to_path_buf))
        .collect();
    let jobs: Vec<PathBuf> = instances
        .iter()
        .flat_map(|d| job_cgroups_under(d, &svc.executor))
        .collect();
    assert!(jobs.is_empty(), "job cgroups of this executor: {jobs:?}");
    assert_eq!(mounts_under(&svc.executor), Vec::<PathBuf>::new());
    assert_eq!(jobs_dir_entries(&svc.executor), Vec::<String>::new());
    assert_still_serves(&svc).await;
}

#[tokio::test]
async fn health_reports_the_limit_mechanisms() {
    require_root!();
    let svc = Service::start();
    let health = svc.health().await;
    assert_eq!(health.status, 200, "{}", health.text);
    let limits: BTreeMap<String, String> = health.json["limits"]
        .as_object()
        .unwrap_or_else(|| panic!("no limits object: {}", health.text))
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
        .collect();
    let keys: Vec<&str> = limits.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        ["cpu", "disk", "memory", "output", "processes", "time"],
        "{}",
        health.text
    );
    assert!(limits.values().all(|v| !v.is_empty()), "{}", health.text);
    for key in ["memory", "processes", "cpu"] {
        assert!(
            limits[key].contains("cgroup"),
            "limits.{key} does not say cgroup: {}",
            health.text
        );
    }
}

/// Runs `pysandbox-executor <args> check` with a fresh state dir; kills it (and
/// fails) after 30 s.
fn run_check(extra: &[&str]) -> Output {
    let dir = tempfile::Builder::new()
        .prefix("pysandbox-check.")
        .tempdir()
        .expect("temp dir");
    // The sandbox uid must reach the state dir, as with the harness's executors.
    fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    pysandbox_tests::ensure_sandbox_user();
    let child = Command::new(&binaries().executor)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(extra)
        .arg("check")
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the executor's check");
    exit_output(child, "check", Duration::from_secs(30))
}

/// Check's lines as (mark, name, detail): `ok   name             detail`.
fn check_lines(stdout: &str) -> Vec<(String, String, String)> {
    stdout
        .lines()
        .map(|line| {
            let field = |range: std::ops::Range<usize>| {
                line.get(range).unwrap_or_default().trim().to_owned()
            };
            (
                field(0..5),
                field(5..22),
                line.get(22..).unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// All nine of README's checks pass here, in order, and say what they found.
#[test]
fn check_passes_on_this_host() {
    require_root!();
    let out = run_check(&[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = check_lines(&stdout);
    let marks: Vec<(&str, &str)> = lines
        .iter()
        .map(|(mark, name, _)| (mark.as_str(), name.as_str()))
        .collect();
    let names = [
        "root",
        "bwrap",
        "python",
        "fork library",
        "socat",
        "user namespaces",
        "seccomp",
        "landlock",
        "cgroups",
        "jail",
    ];
    assert_eq!(marks, names.map(|n| ("ok", n)), "{stdout}");
    let detail = |name: &str| {
        lines
            .iter()
            .find(|(_, n, _)| n == name)
            .map(|(_, _, d)| d.as_str())
            .unwrap_or_default()
    };
    assert_eq!(detail("root"), "running as root");
    assert_eq!(detail("bwrap"), "/usr/bin/bwrap");
    assert_eq!(detail("python"), "/usr/bin/python3");
    let abi = pysandbox_tests::kernel_landlock_abi();
    assert_eq!(detail("landlock"), format!("ABI {abi}"), "{stdout}");
    assert!(detail("seccomp").starts_with("available ("), "{stdout}");
    assert!(
        detail("cgroups").starts_with("v1: memory, pids")
            || detail("cgroups").starts_with("v2: memory, pids"),
        "{stdout}"
    );
    let sandbox_uid = nix::unistd::User::from_name(pysandbox_tests::SANDBOX_USER)
        .ok()
        .flatten()
        .expect("the sandbox user exists")
        .uid;
    assert!(
        detail("jail").starts_with(&format!("print(2 + 2) ran as uid {sandbox_uid} in ")),
        "{stdout}"
    );
}

/// A required check that fails makes check exit 1 and names the fix; a missing
/// socat only warns (only jobs that may use the network need it).
#[test]
fn check_fails_and_names_the_fix_for_each_missing_tool() {
    require_root!();
    let out = run_check(&["--python", "/usr/bin/nonexistent-python"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let lines = check_lines(&stdout);
    assert!(lines.contains(&(
        "FAIL".into(),
        "python".into(),
        "/usr/bin/nonexistent-python not found: install python3, or set `python` to an interpreter under /usr or ro_binds".into()
    )), "{stdout}");
    assert!(
        lines.contains(&("ok".into(), "bwrap".into(), "/usr/bin/bwrap".into())),
        "{stdout}"
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("executor.toml");
    fs::write(
        &config,
        "bwrap = \"/nonexistent/bwrap\"\n[network]\nsocat = \"/nonexistent/socat\"\n",
    )
    .expect("write the config");
    let out = run_check(&["--config", config.to_str().expect("a UTF-8 temp path")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let lines = check_lines(&stdout);
    assert!(
        lines.contains(&(
            "FAIL".into(),
            "bwrap".into(),
            "/nonexistent/bwrap not found: apt-get install bubblewrap".into()
        )),
        "{stdout}"
    );
    assert!(lines.contains(&(
        "warn".into(),
        "socat".into(),
        "/nonexistent/socat not found: apt-get install socat (jobs that may use the network relay through it)".into()
    )), "{stdout}");
    assert!(
        lines
            .iter()
            .any(|(mark, name, _)| mark == "FAIL" && name == "jail"),
        "{stdout}"
    );
}

/// README: every job runs with `RLIMIT_NOFILE` 256, `RLIMIT_STACK` 8 MiB and
/// `RLIMIT_CORE` 0; `RLIMIT_FSIZE` is the disk limit and `RLIMIT_CPU` the CPU limit
/// in seconds, rounded up, plus one: the defaults, or the job's own limits.
#[tokio::test]
async fn rlimits_are_the_documented_values() {
    require_root!();
    let svc = Service::start();
    let code = r#"
import json, subprocess, sys
probe = """
import json, resource
names = ["RLIMIT_NOFILE", "RLIMIT_STACK", "RLIMIT_CORE", "RLIMIT_FSIZE", "RLIMIT_CPU"]
print(json.dumps({n: list(resource.getrlimit(getattr(resource, n))) for n in names}))
"""
exec(probe)
# A child inherits them: the limits hold for every process of the job.
child = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
sys.stderr.write(child.stdout)
"#;
    let mib = 1u64 << 20;
    let expect = |disk_mb: u64, cpu_s: u64| {
        json!({
            "RLIMIT_NOFILE": [256, 256],
            "RLIMIT_STACK": [8 * mib, 8 * mib],
            "RLIMIT_CORE": [0, 0],
            "RLIMIT_FSIZE": [disk_mb * mib, disk_mb * mib],
            "RLIMIT_CPU": [cpu_s, cpu_s],
        })
    };
    // Defaults (256 MiB of disk, 60000 ms of CPU), then a job's own.
    for (limits, want) in [
        (json!(null), expect(256, 61)),
        (json!({ "diskMb": 10, "cpuMs": 2500 }), expect(10, 4)),
    ] {
        let mut body = json!({ "code": code });
        if !limits.is_null() {
            body["limits"] = limits;
        }
        let out = svc.run(body).await;
        assert_eq!(out["exitCode"], 0, "{out:#}");
        assert_eq!(pysandbox_tests::stdout_json(&out), want, "the job's own");
        let child: Value = serde_json::from_str(stderr_of(&out))
            .unwrap_or_else(|e| panic!("the child's limits are not JSON ({e}): {out:#}"));
        assert_eq!(child, want, "its child's");
    }
}

/// README's defaults (512 MiB of memory with swap off, 64 processes, one CPU) are
/// what the kernel holds for a job that asks for nothing: read from its cgroup on
/// the host while it runs, whichever cgroup version this host has.
#[tokio::test]
async fn default_limits_are_in_the_jobs_cgroup() {
    require_root!();
    let svc = Service::start();
    let needle = sleep_needle("321.9");
    let stream = svc
        .open_execute(&json!({ "code": sleeper(&needle), "timeoutMs": 60000 }))
        .await;
    let seen = sight(&needle, &svc.executor).await;
    let read = |name: &str| {
        seen.cgroups.iter().find_map(|dir| {
            fs::read_to_string(dir.join(name))
                .ok()
                .map(|v| v.trim().to_owned())
        })
    };
    let memory = (512u64 << 20).to_string();
    let (memory_files, swap_off, cpu) = match read("memory.max") {
        // v2: swap.max is 0 where swap exists at all.
        Some(max) => (
            vec![max],
            read("memory.swap.max").is_none_or(|swap| swap == "0"),
            read("cpu.max"),
        ),
        // v1: memory+swap equal to memory means no swap, where it is accounted.
        None => (
            vec![read("memory.limit_in_bytes").unwrap_or_default()],
            read("memory.memsw.limit_in_bytes").is_none_or(|memsw| memsw == memory),
            read("cpu.cfs_quota_us")
                .zip(read("cpu.cfs_period_us"))
                .map(|(quota, period)| format!("{quota} {period}")),
        ),
    };
    let pids = read("pids.max");
    // Only now: the job's cgroups go with it.
    drop(stream);
    assert_eq!(memory_files, [memory], "memory limit in {:?}", seen.cgroups);
    assert!(swap_off, "swap is not off in {:?}", seen.cgroups);
    assert_eq!(pids.as_deref(), Some("64"), "{:?}", seen.cgroups);
    // One CPU: the quota equals the period.
    assert_eq!(cpu.as_deref(), Some("100000 100000"), "{:?}", seen.cgroups);
}

/// Nothing of an executor is left on the host once it stopped: not even the empty
/// cgroup directory it kept per hierarchy for its jobs (thousands of those, one
/// per executor the tests started, made every cgroup write on the host slower).
#[tokio::test]
async fn a_stopped_executor_leaves_no_cgroup_behind() {
    require_root!();
    let mut svc = Service::start();
    let needle = sleep_needle("321.7");
    let stream = svc
        .open_execute(&json!({ "code": sleeper(&needle), "timeoutMs": 60000 }))
        .await;
    let seen = sight(&needle, &svc.executor).await;
    // A job's cgroup sits in its executor's own, one per hierarchy.
    let instances: Vec<PathBuf> = seen
        .cgroups
        .iter()
        .filter_map(|job| job.parent().map(Path::to_owned))
        .collect();
    assert!(!instances.is_empty(), "{:?}", seen.cgroups);
    drop(stream);
    assert!(instances.iter().all(|dir| dir.is_dir()), "{instances:?}");
    svc.executor.stop();
    let left: Vec<&PathBuf> = instances.iter().filter(|dir| dir.exists()).collect();
    assert!(left.is_empty(), "the stopped executor left {left:?}");
}

/// The default process limit (64) holds for threads too: they fail with EAGAIN
/// (Python: "can't start new thread") short of 64, and the result says which
/// limit fired.
#[tokio::test]
async fn threads_stop_at_the_default_process_limit() {
    require_root!();
    let svc = Service::start();
    let code = r#"
import json, threading
stop = threading.Event()
started = 0
try:
    for _ in range(1000):
        threading.Thread(target=stop.wait).start()
        started += 1
    error = None
except RuntimeError as e:
    error = str(e)
stop.set()
print(json.dumps([started, error]))
"#;
    let out = svc.run_code(code).await;
    let [started, error] = <[Value; 2]>::try_from(
        pysandbox_tests::stdout_json(&out)
            .as_array()
            .cloned()
            .unwrap_or_default(),
    )
    .unwrap_or_else(|bad| panic!("not [started, error]: {bad:?}; {out:#}"));
    assert_eq!(error, "can't start new thread", "{out:#}");
    let started = started.as_u64().unwrap_or_default();
    // The interpreter itself and the jail's init count too.
    assert!((48..64).contains(&started), "{started} threads started");
    assert_eq!(
        (&out["exitCode"], &out["limitExceeded"]),
        (&json!(0), &json!("processes")),
        "{out:#}"
    );
}

/// The output cap holds for stderr as for stdout: what passes it is cut, said so
/// at the end of stderr, and flagged.
#[tokio::test]
async fn stderr_is_capped_like_stdout() {
    require_root!();
    let svc = Service::start();
    let code = "import sys\nsys.stderr.write('e' * 10000)\nprint('fine')";
    let out = svc
        .run(json!({ "code": code, "limits": { "outputBytes": 4096 } }))
        .await;
    assert_eq!(
        output_flags(&out),
        (
            &json!(0),
            &json!("fine\n"),
            &json!(false),
            &json!(true),
            &json!("output")
        ),
        "{out:#}"
    );
    assert_eq!(
        stderr_of(&out),
        format!(
            "{}\n[sandbox] stderr truncated at 4096 bytes\n",
            "e".repeat(4096)
        )
    );
}

/// `/dev/shm` is a tmpfs of the configured size (`shm_bytes`, 64 MiB by
/// default), the job's own, and refuses writes past it.
#[tokio::test]
async fn dev_shm_is_a_sized_tmpfs_of_the_jobs_own() {
    require_root!();
    let svc = Service::start();
    let code = r#"
import errno, os
st = os.statvfs("/dev/shm")
print(st.f_blocks * st.f_frsize)
try:
    with open("/dev/shm/fill", "wb") as f:
        for _ in range(80):
            f.write(b"\0" * (1 << 20))
            f.flush()
    print("not full")
except OSError as e:
    print(errno.errorcode[e.errno])
"#;
    let out = svc
        .run(json!({ "code": code, "limits": { "memoryMb": 512 } }))
        .await;
    assert_eq!(out["stdout"], "67108864\nENOSPC\n", "{out:#}");
    let next = svc
        .run_code("import os\nprint(os.listdir('/dev/shm'))")
        .await;
    assert_eq!(next["stdout"], "[]\n", "{next:#}");
}
