//! Isolation: what a job can see and touch inside its jail.

use pysandbox_tests::{require_root, stdout_json, Service, PY_OUTCOME};
use serde_json::{json, Value};

/// Runs `code` with `stdin` and returns its stdout parsed as JSON, asserting it
/// exited 0.
async fn probe(svc: &Service, code: &str, stdin: &str) -> Value {
    let out = svc.run(json!({ "code": code, "stdin": stdin })).await;
    assert_eq!(out["exitCode"], 0, "the probe failed: {out:#}");
    stdout_json(&out)
}

#[tokio::test]
async fn cannot_read_etc_shadow() {
    require_root!();
    let svc = Service::start();
    let code = r#"
import json
try:
    with open("/etc/shadow", "rb") as f:
        result = "read %d bytes" % len(f.read())
except FileNotFoundError:
    result = "absent"
except PermissionError:
    result = "denied"
print(json.dumps(result))
"#;
    // The jail's /etc is generated without a shadow file: "denied" would mean the
    // host's /etc is bound (its shadow is 0640 root:shadow), which must fail here.
    let result = probe(&svc, code, "").await;
    assert_eq!(result, "absent", "/etc/shadow");
}

#[tokio::test]
async fn proc_shows_no_host_process() {
    require_root!();
    let svc = Service::start();
    let code = r#"
import json, os
pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
cmdlines = {}
for pid in pids:
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            cmdlines[pid] = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError as e:
        cmdlines[pid] = repr(e)
print(json.dumps({"self": os.getpid(), "pids": pids, "cmdlines": cmdlines}))
"#;
    let seen = probe(&svc, code, "").await;
    let pids: Vec<u64> = seen["pids"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    let own = seen["self"].as_u64().unwrap_or_default();
    let cmdline = |pid: u64| {
        seen["cmdlines"][pid.to_string()]
            .as_str()
            .unwrap_or_default()
    };
    // bwrap, or in a job forked from a template a copy of the template's pid 1,
    // whose command line is the template's: Python, the launcher, no host path.
    let forked = cmdline(1).starts_with("/usr/bin/python3 -c ")
        && cmdline(1).contains(" --fork-server /run/pysandbox-fork.so");
    assert!(
        cmdline(1).starts_with("/usr/bin/bwrap ") || forked,
        "pid 1: {seen:#}"
    );
    // Pid numbers are the namespace's own, so comparing them with host pids would
    // prove nothing: require exactly the jail's init and the job itself, and in a
    // forked job the holder of its memory (pid 3, with the template's command line).
    let expected = match forked {
        true => vec![1, own, 3],
        false => vec![1, own],
    };
    assert_eq!(pids, expected, "{seen:#}");
    assert!(!forked || cmdline(3) == cmdline(1), "pid 3: {seen:#}");
    assert!(
        cmdline(own).starts_with("/usr/bin/python3 -c "),
        "the job: {seen:#}"
    );
    // pid 1 may be bwrap (whose arguments name host paths), but no process may be
    // one of the daemons.
    let daemons = [
        pysandbox_tests::binaries().executor.display().to_string(),
        pysandbox_tests::binaries().frontend.display().to_string(),
    ];
    for cmdline in seen["cmdlines"]
        .as_object()
        .into_iter()
        .flat_map(|o| o.values())
    {
        let argv0 = cmdline.as_str().unwrap_or_default().split(' ').next();
        assert!(
            !daemons.iter().any(|d| Some(d.as_str()) == argv0),
            "a daemon is visible in the jail: {seen:#}"
        );
    }
}

#[tokio::test]
async fn runs_as_an_unprivileged_uid() {
    require_root!();
    let svc = Service::start();
    let code = r#"
import json, os
print(json.dumps([os.getuid(), os.geteuid(), os.getgid(), os.getegid()]))
"#;
    let ids = probe(&svc, code, "").await;
    let ids: Vec<u64> = ids
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    assert_eq!(ids.len(), 4, "{ids:?}");
    for id in &ids {
        assert!(
            *id != 0 && *id != 65533,
            "uid/gid {id} of a daemon: {ids:?}"
        );
    }
}

#[tokio::test]
async fn job_has_no_capabilities_and_no_new_privs() {
    require_root!();
    let svc = Service::start();
    let code = r#"
import json
status = {}
with open("/proc/self/status") as f:
    for line in f:
        key, _, value = line.partition(":")
        status[key] = value.strip()
print(json.dumps({k: status.get(k) for k in ["CapInh", "CapPrm", "CapEff", "CapAmb", "NoNewPrivs"]}))
"#;
    let status = probe(&svc, code, "").await;
    let none = "0000000000000000";
    assert_eq!(
        status,
        json!({
            "CapInh": none,
            "CapPrm": none,
            "CapEff": none,
            "CapAmb": none,
            "NoNewPrivs": "1",
        })
    );
}

#[tokio::test]
async fn cwd_is_the_work_dir() {
    require_root!();
    let svc = Service::start();
    let out = svc.run_code("import os; print(os.getcwd())").await;
    assert_eq!(out["stdout"], "/work\n", "{out}");
}

/// Writes outside the work dir and `/tmp` fail on the read-only mounts (EROFS),
/// before landlock is even asked; procfs has no new files to make (ENOENT). That landlock
/// alone also stops writes the mounts allow is `layers.rs`'s to show.
#[tokio::test]
async fn writes_only_in_the_work_dir_and_tmp() {
    require_root!();
    let svc = Service::start();
    let code = r#"
import errno, json
result = {}
for path in ["/usr/x", "/etc/x", "/x", "/dev/x", "/proc/x", "x", "/tmp/x"]:
    try:
        with open(path, "w") as f:
            f.write("hi")
        result[path] = "written"
    except OSError as e:
        result[path] = errno.errorcode.get(e.errno, str(e.errno))
print(json.dumps(result))
"#;
    let result = probe(&svc, code, "").await;
    assert_eq!(
        result,
        json!({
            "/usr/x": "EROFS",
            "/etc/x": "EROFS",
            "/x": "EROFS",
            "/dev/x": "EROFS",
            "/proc/x": "ENOENT",
            "x": "written",
            "/tmp/x": "written",
        })
    );
}

#[tokio::test]
async fn env_is_minimal() {
    require_root!();
    let svc = Service::start();
    let env = probe(
        &svc,
        "import json, os\nprint(json.dumps(dict(os.environ)))",
        "",
    )
    .await;
    // Exactly README's list, with its values: nothing added, nothing missing.
    assert_eq!(
        env,
        json!({
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": "/tmp",
            "TMPDIR": "/tmp",
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONSAFEPATH": "1",
            "PYTHONPATH": "/work",
            "MPLBACKEND": "Agg",
            // bwrap's --chdir sets it (README's list leaves it out).
            "PWD": "/work",
        })
    );
    assert!(
        !env.to_string().contains(svc.token()),
        "the token is in {env:#}"
    );
}

/// The executor's environment (where AUTH_TOKEN-like secrets live in production)
/// must not reach the job: not its own env, not pid 1's (bwrap's), not any
/// process's it can read. The needles come through stdin so the job's own source
/// does not contain them.
#[tokio::test]
async fn executor_env_does_not_leak() {
    require_root!();
    let svc = Service::builder()
        .executor_env("PYSANDBOX_CANARY", "leak")
        .executor_env("AUTH_TOKEN", "executor-side-secret")
        .start();
    let code = r#"
import json, os, sys
needles = sys.stdin.read().split()
found, read = [], []
for key, value in os.environ.items():
    if any(n in key or n in value for n in needles):
        found.append("os.environ:" + key)
for entry in os.listdir("/proc"):
    if not (entry.isdigit() or entry == "self"):
        continue
    try:
        with open("/proc/%s/environ" % entry, "rb") as f:
            data = f.read()
    except OSError:
        continue
    read.append(entry)
    for n in needles:
        if n.encode() in data:
            found.append("/proc/%s/environ:%s" % (entry, n))
print(json.dumps({"found": found, "read": read}))
"#;
    let needles = format!(
        "leak PYSANDBOX_CANARY AUTH_TOKEN executor-side-secret {}",
        svc.token()
    );
    let result = probe(&svc, code, &needles).await;
    assert_eq!(result["found"], json!([]), "{result:#}");
    let read = result["read"].as_array().map_or(0, Vec::len);
    assert!(
        read > 0,
        "the probe could read no environ at all: {result:#}"
    );
}

#[tokio::test]
async fn only_standard_fds_are_open() {
    require_root!();
    let svc = Service::start();
    let code = r#"
import json, os
listed = [int(fd) for fd in os.listdir("/proc/self/fd")]
open_fds = {}
for fd in listed:
    try:
        os.fstat(fd)
    except OSError:
        continue  # the descriptor listdir used, closed by now
    try:
        open_fds[fd] = os.readlink("/proc/self/fd/%d" % fd)
    except OSError as e:
        open_fds[fd] = repr(e)
print(json.dumps(open_fds))
"#;
    let fds = probe(&svc, code, "").await;
    let mut numbers: Vec<&String> = fds
        .as_object()
        .map(|o| o.keys().collect())
        .unwrap_or_default();
    numbers.sort();
    assert_eq!(numbers, ["0", "1", "2"], "open descriptors: {fds:#}");
}

/// Landlock refuses the TCP connect (EACCES) before the network namespace is
/// reached; `layers.rs` shows the namespace alone refusing it (ECONNREFUSED).
#[tokio::test]
async fn cannot_connect_to_the_frontend_port() {
    require_root!();
    let svc = Service::start();
    let code = r#"
import errno, json, socket, sys
port = int(sys.stdin.read())
try:
    socket.create_connection(("127.0.0.1", port), timeout=3).close()
    result = "connected"
except OSError as e:
    result = errno.errorcode.get(e.errno, str(e.errno))
print(json.dumps(result))
"#;
    let port = svc.frontend.addr().port().to_string();
    let result = probe(&svc, code, &port).await;
    assert_eq!(result, "EACCES", "connecting to the frontend from the jail");
}

#[tokio::test]
async fn only_the_loopback_interface_exists() {
    require_root!();
    let svc = Service::start();
    let code = r#"
import json
with open("/proc/net/dev") as f:
    names = [line.split(":")[0].strip() for line in f.readlines()[2:]]
print(json.dumps(names))
"#;
    let names = probe(&svc, code, "").await;
    assert_eq!(names, json!(["lo"]));
}

#[tokio::test]
async fn daemon_files_are_invisible() {
    require_root!();
    let svc = Service::start();
    let code = r#"
import json, os, sys
print(json.dumps([p for p in sys.stdin.read().split("\n") if p and os.path.lexists(p)]))
"#;
    let test_binary = std::env::current_exe().expect("the test binary has a path");
    let paths = [
        svc.executor.socket(),
        svc.executor.state_dir(),
        svc.executor.dir(),
        &pysandbox_tests::binaries().executor,
        &pysandbox_tests::binaries().frontend,
        &test_binary,
    ];
    let stdin: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    let visible = probe(&svc, code, &stdin.join("\n")).await;
    assert_eq!(visible, json!([]), "daemon paths visible in the jail");
}

#[tokio::test]
async fn jobs_do_not_share_tmp_or_work_dir() {
    require_root!();
    let svc = Service::start();
    let name = format!("shared-{}", pysandbox_tests::random_hex(6));
    let write = r#"
import json, sys
name = sys.stdin.read()
for path in ["/tmp/" + name, name]:
    with open(path, "w") as f:
        f.write("from job one")
print(json.dumps("ok"))
"#;
    assert_eq!(probe(&svc, write, &name).await, "ok");
    let look = r#"
import json, os, sys
name = sys.stdin.read()
print(json.dumps({p: os.path.exists(p) for p in ["/tmp/" + name, name]}))
"#;
    let seen = probe(&svc, look, &name).await;
    assert_eq!(
        seen,
        json!({ format!("/tmp/{name}"): false, name.clone(): false }),
        "the second job sees the first job's files"
    );
}

/// Every host process of the job that `pid` belongs to: its ancestors below the
/// executor (a jail's bwrap; a forked job's parent, its template and the template's
/// bwrap) and every process in its pid namespace (the job's pid 1 among them).
/// A template's spares, which hold the capabilities of their own, still empty
/// namespaces until they take a job, are not the job's.
fn job_processes(pid: u32, executor: u32) -> Vec<u32> {
    let parents = pysandbox_tests::parent_pids();
    let pid_ns = |p: u32| std::fs::read_link(format!("/proc/{p}/ns/pid")).ok();
    let own_ns = pid_ns(pid).expect("the job's pid namespace");
    let mut pids: Vec<u32> = parents
        .keys()
        .copied()
        .filter(|&p| pid_ns(p).as_ref() == Some(&own_ns))
        .collect();
    let mut up = pid;
    while let Some(&parent) = parents.get(&up).filter(|&&p| p != executor && p > 1) {
        pids.push(parent);
        up = parent;
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// The lines of `/proc/<pid>/status` that say who a process is and what it may do.
fn credentials(pid: u32) -> Vec<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let keys = [
        "Uid:", "Gid:", "CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:",
    ];
    status
        .lines()
        .filter(|line| keys.iter().any(|k| line.starts_with(k)))
        .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

/// What every process of a job must show: `uid` and `gid` in all four fields, and
/// no capability in any set.
fn expected_credentials(uid: u32, gid: u32) -> Vec<String> {
    let mut lines = vec![
        format!("Uid: {uid} {uid} {uid} {uid}"),
        format!("Gid: {gid} {gid} {gid} {gid}"),
    ];
    lines.extend(
        ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"]
            .map(|set| format!("{set} 0000000000000000")),
    );
    lines
}

/// Runs one job per needle, each `sleep <needle>`, all at once. While every sleep
/// runs, reads the credentials of every host process of each job (by pid), then
/// ends the sleeps so the jobs finish.
async fn credentials_of_running_jobs(
    svc: &Service,
    needles: &[&str],
) -> Vec<Vec<(u32, Vec<String>)>> {
    let job = |needle: &str| {
        let code = format!(
            "import subprocess\nsubprocess.run(['sleep', {}])",
            pysandbox_tests::py_concat(needle)
        );
        svc.run(json!({ "code": code, "timeoutMs": 60000 }))
    };
    let sleeps = || -> Option<Vec<u32>> {
        needles
            .iter()
            .map(|n| pysandbox_tests::host_processes_matching(n).first().copied())
            .collect()
    };
    let watch = async {
        let all_run = pysandbox_tests::wait_until_async(std::time::Duration::from_secs(60), || {
            sleeps().is_some()
        })
        .await;
        assert!(all_run, "the jobs' sleeps never ran at once");
        let sleeps = sleeps().expect("still running: only this test ends them");
        let executor = svc.executor.pid().expect("the executor runs");
        let seen: Vec<Vec<_>> = sleeps
            .iter()
            .map(|&sleep| {
                let tree = job_processes(sleep, executor).into_iter();
                tree.map(|pid| (pid, credentials(pid))).collect()
            })
            .collect();
        for sleep in sleeps {
            let pid = nix::unistd::Pid::from_raw(sleep as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
        seen
    };
    let (outs, seen) = tokio::join!(
        futures::future::join_all(needles.iter().map(|n| job(n))),
        watch
    );
    for out in outs {
        assert_eq!(out["signal"], Value::Null, "{out:#}");
    }
    seen
}

/// Jobs run as the dedicated sandbox user, never as root or `nobody`, and hold no
/// capability in any set: checked from the host on every process of a running job
/// (bwrap, its pid 1, Python, the sleep it started).
#[tokio::test]
async fn every_process_of_a_job_is_the_sandbox_user_without_capabilities() {
    require_root!();
    let svc = Service::start();
    let user = nix::unistd::User::from_name(pysandbox_tests::SANDBOX_USER)
        .unwrap()
        .expect("the harness creates the sandbox user");
    let (uid, gid) = (user.uid.as_raw(), user.gid.as_raw());
    assert!(uid != 0 && uid != 65534, "sandbox uid {uid}");
    let needle = pysandbox_tests::sleep_needle("1000.");
    let seen = credentials_of_running_jobs(&svc, &[&needle])
        .await
        .remove(0);
    assert!(
        seen.len() >= 4,
        "bwrap, its pid 1, python and sleep: {seen:?}"
    );
    for (pid, lines) in seen {
        assert_eq!(lines, expected_credentials(uid, gid), "process {pid}");
    }
}

/// With a uid range, two jobs running at once are two different users on the host,
/// each from the range, each process of a job with its job's uid.
#[tokio::test]
async fn with_a_uid_range_concurrent_jobs_are_different_host_users() {
    require_root!();
    let (first, count) = (200_000, 8);
    let svc = Service::builder()
        .executor_args(["--max-jobs", "2", "--sandbox-ids", "8"])
        .executor_args(["--sandbox-uid", "200000", "--sandbox-gid", "200000"])
        .start();
    let (a, b) = (
        pysandbox_tests::sleep_needle("1000."),
        pysandbox_tests::sleep_needle("1001."),
    );
    let seen = credentials_of_running_jobs(&svc, &[&a, &b]).await;
    let (seen_a, seen_b) = (&seen[0], &seen[1]);
    let uid_of = |seen: &[(u32, Vec<String>)]| -> u32 {
        let uid = seen[0].1[0].split(' ').nth(1).unwrap().parse().unwrap();
        let gid = uid;
        for (pid, lines) in seen {
            assert_eq!(lines, &expected_credentials(uid, gid), "process {pid}");
        }
        uid
    };
    let (uid_a, uid_b) = (uid_of(seen_a), uid_of(seen_b));
    assert_ne!(uid_a, uid_b);
    for uid in [uid_a, uid_b] {
        assert!((first..first + count).contains(&uid), "uid {uid}");
    }
}

/// Every namespace of a job is new: none is the host's, and two jobs running at
/// once share none.
#[tokio::test]
async fn every_namespace_of_a_job_is_its_own() {
    require_root!();
    let svc = Service::start();
    let kinds = ["user", "mnt", "pid", "net", "ipc", "uts", "cgroup"];
    let code = format!(
        "import json, os, time\nns = {{k: os.readlink('/proc/self/ns/' + k) for k in {kinds:?}}}\n\
         time.sleep(1)\nprint(json.dumps(ns))"
    );
    let (a, b) = tokio::join!(svc.run_code(&code), svc.run_code(&code));
    let (a, b) = (stdout_json(&a), stdout_json(&b));
    for kind in kinds {
        let host = std::fs::read_link(format!("/proc/self/ns/{kind}")).expect("host ns");
        let host = host.to_string_lossy();
        assert!(a[kind].is_string(), "{kind}: {a}");
        assert_ne!(a[kind], json!(host), "{kind} is the host's");
        assert_ne!(b[kind], json!(host), "{kind} is the host's");
        assert_ne!(a[kind], b[kind], "two jobs share their {kind} namespace");
    }
}

/// The jail's `/etc` is generated: passwd, group and hosts name only root and the
/// sandbox user, and of the host's `/etc` only the files README lists are there
/// (TLS roots and the time zone among them, the same as the host's).
#[tokio::test]
async fn etc_is_generated_with_the_hosts_tls_roots_and_time_zone() {
    require_root!();
    let svc = Service::start();
    let code = r#"
import hashlib, json, os, ssl
def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()
def text(path):
    with open(path) as f:
        return f.read()
print(json.dumps({
    "etc": sorted(os.listdir("/etc")),
    "passwd": text("/etc/passwd"),
    "group": text("/etc/group"),
    "hosts": text("/etc/hosts"),
    "certs": sorted(os.listdir("/etc/ssl/certs")),
    "ca": ssl.create_default_context().cert_store_stats()["x509_ca"],
    "localtime": digest("/etc/localtime"),
}))
"#;
    let seen = probe(&svc, code, "").await;
    let user = nix::unistd::User::from_name(pysandbox_tests::SANDBOX_USER)
        .unwrap()
        .expect("the harness creates the sandbox user");
    let (uid, gid) = (user.uid.as_raw(), user.gid.as_raw());
    // README's list: generated files, then the host's that exist here.
    let host_files = [
        "ld.so.cache",
        "alternatives",
        "ssl",
        "localtime",
        "fonts",
        "matplotlibrc",
    ];
    let mut etc: Vec<&str> = ["passwd", "group", "hosts"].into();
    etc.extend(
        host_files
            .iter()
            .filter(|name| std::path::Path::new("/etc").join(name).exists()),
    );
    etc.sort_unstable();
    assert_eq!(seen["etc"], json!(etc), "{seen:#}");
    assert_eq!(
        seen["passwd"],
        format!(
            "root:x:0:0:root:/root:/usr/sbin/nologin\nsandbox:x:{uid}:{gid}:sandbox:/tmp:/usr/sbin/nologin\n"
        )
    );
    assert_eq!(seen["group"], format!("root:x:0:\nsandbox:x:{gid}:\n"));
    assert_eq!(
        seen["hosts"],
        "127.0.0.1 localhost sandbox\n::1 localhost\n"
    );
    // The host's TLS roots, all of them, and usable.
    let mut certs: Vec<String> = std::fs::read_dir("/etc/ssl/certs")
        .expect("the host has TLS roots")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    certs.sort();
    assert_eq!(seen["certs"], json!(certs));
    assert!(seen["ca"].as_u64().unwrap_or_default() > 0, "{seen:#}");
    // The host's time zone, byte for byte.
    let digest = std::process::Command::new("sha256sum")
        .arg("/etc/localtime")
        .output()
        .expect("sha256sum");
    assert!(
        digest.status.success(),
        "the host has no time zone: {digest:?}"
    );
    let digest = String::from_utf8_lossy(&digest.stdout);
    assert_eq!(
        seen["localtime"],
        digest.split(' ').next().unwrap_or_default()
    );
}

/// `/dev` is bwrap's minimal one (the harmless devices, the pty multiplexer, the
/// standard links) plus the job's `/dev/shm`, and read-only: no host device
/// appears, and nothing can be added.
#[tokio::test]
async fn dev_is_minimal_and_read_only() {
    require_root!();
    let svc = Service::start();
    let checks = r#"
import json, os
print(json.dumps({
    "dev": sorted(os.listdir("/dev")),
    "mkdir": outcome(lambda: os.mkdir("/dev/x")),
    "symlink": outcome(lambda: os.symlink("/work", "/dev/x")),
    "unlink": outcome(lambda: os.unlink("/dev/null")),
}))
"#;
    let seen = probe(&svc, &[PY_OUTCOME, checks].concat(), "").await;
    assert_eq!(
        seen,
        json!({
            "dev": [
                "core", "fd", "full", "null", "ptmx", "pts", "random", "shm", "stderr",
                "stdin", "stdout", "tty", "urandom", "zero",
            ],
            "mkdir": "EROFS",
            "symlink": "EROFS",
            "unlink": "EROFS",
        })
    );
}

/// `/work` and `/tmp` are one tmpfs: one filesystem, and what is written to one
/// leaves that much less room in the other.
#[tokio::test]
async fn work_and_tmp_share_one_tmpfs() {
    require_root!();
    let svc = Service::start();
    let code = r#"
import errno, json, os
chunk = b"\0" * (1 << 20)
def fill(path, mib):
    written = 0
    try:
        with open(path, "wb") as f:
            for _ in range(mib):
                f.write(chunk)
                f.flush()
                written += 1
        return ["ok", written]
    except OSError as e:
        return [errno.errorcode.get(e.errno, str(e.errno)), written]
same = os.stat("/work").st_dev == os.stat("/tmp").st_dev
work = fill("/work/a", 40)
tmp = fill("/tmp/b", 40)
print(json.dumps({"same device": same, "work": work, "tmp": tmp}))
"#;
    let out = svc
        .run(json!({ "code": code, "limits": { "diskMb": 64 } }))
        .await;
    assert_eq!(out["exitCode"], 0, "{out:#}");
    let seen = stdout_json(&out);
    assert_eq!(seen["same device"], true, "{seen:#}");
    assert_eq!(seen["work"], json!(["ok", 40]), "{seen:#}");
    // 40 MiB in /work leave less than 24 MiB of the 64 for /tmp (the code takes a
    // little too): two tmpfs of 64 MiB each would take all 40.
    assert_eq!(seen["tmp"][0], "ENOSPC", "{seen:#}");
    let tmp = seen["tmp"][1].as_u64().unwrap_or(u64::MAX);
    assert!((20..24).contains(&tmp), "{seen:#}");
    assert_eq!(out["limitExceeded"], "disk", "{out:#}");
}

/// The lines of `/proc/<pid>/cgroup` that name a pysandbox cgroup; `None` once the
/// process is gone.
fn pysandbox_cgroups(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    Some(
        text.lines()
            .filter(|line| line.contains("pysandbox"))
            .map(str::to_owned)
            .collect(),
    )
}

/// A jail joins its job's cgroups before bwrap starts, so nothing of it runs
/// outside them: bwrap itself, its pid 1 and every process the job starts are in
/// the same pysandbox cgroups (checked from the host while the job runs).
#[tokio::test]
async fn every_process_of_a_jail_is_in_the_jobs_cgroups() {
    require_root!();
    // Jails of their own: a forked job's ancestors are its template's.
    let svc = Service::builder()
        .executor_args(["--fork-server", "false"])
        .start();
    let needle = pysandbox_tests::sleep_needle("1002.");
    let code = format!(
        "import subprocess\nsubprocess.run(['sleep', {}])",
        pysandbox_tests::py_concat(&needle)
    );
    let job = svc.run(json!({ "code": code, "timeoutMs": 60000 }));
    let watch = async {
        let running = pysandbox_tests::wait_until_async(std::time::Duration::from_secs(60), || {
            !pysandbox_tests::host_processes_matching(&needle).is_empty()
        })
        .await;
        assert!(running, "the job's sleep never ran");
        let sleep = pysandbox_tests::host_processes_matching(&needle)[0];
        let executor = svc.executor.pid().expect("the executor runs");
        let processes = job_processes(sleep, executor);
        let cgroups: Vec<(u32, Vec<String>)> = processes
            .iter()
            // A process that ended meanwhile (a fork on its way to exec) is skipped.
            .filter_map(|&pid| Some((pid, pysandbox_cgroups(pid)?)))
            .collect();
        let parents = pysandbox_tests::parent_pids();
        let below_executor = processes
            .iter()
            .find(|pid| parents.get(pid) == Some(&executor))
            .expect("a process of the job is the executor's child");
        let bwrap =
            std::fs::read_to_string(format!("/proc/{below_executor}/cmdline")).unwrap_or_default();
        let own = pysandbox_cgroups(sleep).expect("the sleep still runs");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(sleep as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        (own, cgroups, bwrap)
    };
    let (out, (own, cgroups, bwrap)) = tokio::join!(job, watch);
    assert_eq!(out["signal"], Value::Null, "{out:#}");
    assert!(!own.is_empty(), "the job's sleep is in no pysandbox cgroup");
    assert!(
        bwrap.starts_with("/usr/bin/bwrap\0"),
        "the first process is not bwrap: {bwrap:?}"
    );
    assert!(
        cgroups.len() >= 4,
        "bwrap, its pid 1, python, sleep: {cgroups:?}"
    );
    for (pid, lines) in &cgroups {
        assert_eq!(lines, &own, "process {pid} is outside the job's cgroups");
    }
}

/// `ro_binds` are mounted read-only at their host paths and readable there (they
/// are in landlock's read set), whichever path the job takes; writing fails.
#[tokio::test]
async fn ro_binds_are_readable_and_read_only() {
    use std::os::unix::fs::PermissionsExt;

    require_root!();
    // Not under /tmp, which every job's own /tmp covers.
    let dir = tempfile::Builder::new()
        .prefix("pysandbox-ro-bind.")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::write(dir.path().join("data.txt"), "from the host\n").expect("write");
    let path = dir.path().display().to_string();
    let svc = Service::builder()
        .executor_config_toml(&format!("ro_binds = [{path:?}]\n"))
        .start();
    let code = r#"
import errno, json, os, sys
d = sys.stdin.read()
def outcome(f):
    try:
        return ["ok", f()]
    except OSError as e:
        return [errno.errorcode.get(e.errno, str(e.errno))]
print(json.dumps({
    "listdir": outcome(lambda: os.listdir(d)),
    "read": outcome(lambda: open(os.path.join(d, "data.txt")).read()),
    "write": outcome(lambda: open(os.path.join(d, "new.txt"), "w").close()),
}))
"#;
    let seen = probe(&svc, code, &path).await;
    assert_eq!(
        seen,
        json!({
            "listdir": ["ok", ["data.txt"]],
            "read": ["ok", "from the host\n"],
            "write": ["EROFS"],
        })
    );
}
