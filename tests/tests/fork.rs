//! The fork server (issue 13, `docs/fork-server.md`): jobs forked from a template
//! that already imported numpy, pandas and matplotlib, each in fresh namespaces of
//! its own. Each invariant the issue lists is a test here; the whole black-box
//! suite also runs with every job forked (`PYSANDBOX_TEST_FORK_SERVER=1`, in CI).

use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pysandbox_tests::{
    host_processes_matching, py_concat, require_root, sleep_needle, stdout_json, template_ready,
    wait_until_async, Service,
};
use serde_json::{json, Value};

fn forking() -> Service {
    Service::builder()
        .executor_args(["--fork-server", "true"])
        .start()
}

/// The ready template's host pid and generation, from `/health`.
fn template(health: &Value) -> Option<(i32, u64)> {
    if !template_ready(health) {
        return None;
    }
    // "ready: template pid N (generation G) ..."
    let detail = health["isolation"]["fork server"].as_str()?;
    let number_after = |key: &str| -> Option<u64> {
        let rest = &detail[detail.find(key)? + key.len()..];
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    Some((
        i32::try_from(number_after("pid ")?).ok()?,
        number_after("generation ")?,
    ))
}

/// Polls `/health` (cached for a second) until a template of a generation after
/// `after` is ready; its pid and generation.
async fn wait_for_generation(svc: &Service, after: u64) -> (i32, u64) {
    let mut seen = None;
    let ready = wait_until_async(Duration::from_secs(120), || {
        seen = template(&svc.blocking_health()).filter(|&(_, g)| g > after);
        seen.is_some()
    })
    .await;
    assert!(
        ready,
        "no template after generation {after}; executor log:\n{}",
        svc.executor.log().text()
    );
    seen.expect("just seen")
}

#[tokio::test]
async fn a_job_is_forked_from_the_template_and_runs_as_a_script_would() {
    require_root!();
    let svc = forking();
    let code = "import sys\nprint(2 + 2)\nprint('pandas' in sys.modules, sys.argv, file=sys.stderr)\nsys.exit(3)";
    let out = svc.run_code(code).await;
    assert_eq!(out["stdout"], "4\n", "{out:#}");
    assert_eq!(out["stderr"], "True ['/sandbox/main.py']\n", "{out:#}");
    assert_eq!(out["exitCode"], 3, "{out:#}");
    let out = svc.run_code("raise ValueError('boom')").await;
    assert_eq!(out["exitCode"], 1, "{out:#}");
    let stderr = out["stderr"].as_str().expect("stderr");
    assert!(
        stderr.starts_with("Traceback (most recent call last):\n  File \"/sandbox/main.py\", line 1, in <module>\n"),
        "{stderr}"
    );
    assert!(stderr.ends_with("ValueError: boom\n"), "{stderr}");
    let out = svc
        .run_code("import os, signal\nos.kill(os.getpid(), signal.SIGTERM)")
        .await;
    assert_eq!(
        (out["exitCode"].clone(), out["signal"].clone()),
        (Value::Null, json!("SIGTERM"))
    );
    assert_eq!(svc.executor.jails_started(), ["forked", "forked", "forked"]);
}

/// A forked job is alone: pid 2 of its own pid namespace, no capability, seccomp
/// and no_new_privs on, only its stdio open, one thread, and neither its pid 1,
/// nor the holder of its memory (pid 3), nor anything of the template within reach.
#[tokio::test]
async fn a_forked_job_sees_nothing_of_the_template() {
    require_root!();
    let svc = forking();
    let code = r#"
import ctypes, errno, json, os, socket, threading
libc = ctypes.CDLL(None, use_errno=True)
def err(call):
    try:
        call()
        return "ok"
    except OSError as e:
        return errno.errorcode[e.errno]
def status_of(pid):
    lines = open("/proc/%s/status" % pid).read().splitlines()
    return dict(l.split(":\t", 1) for l in lines if ":\t" in l)
status = status_of("self")
def caps_of(status):
    return sorted({status[k].strip() for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")})
def abstract():
    s = socket.socket(socket.AF_UNIX)
    s.connect("\0pysandbox-template-probe")
print(json.dumps({
    "pid": os.getpid(),
    "procs": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
    "fds": sorted(int(f) for f in os.listdir("/proc/self/fd")),
    "threads": len(os.listdir("/proc/self/task")),
    "caps": caps_of(status),
    "pid1_caps": caps_of(status_of(1)),
    "holder": {k: status_of(3)[k].strip() for k in ("Seccomp", "NoNewPrivs", "SigBlk")},
    "holder_filters": int(status_of(3)["Seccomp_filters"]) - int(status_of(1)["Seccomp_filters"]),
    "holder_caps": caps_of(status_of(3)),
    "kill_holder": err(lambda: os.kill(3, 9)),
    "ptrace_holder": libc.ptrace(16, 3, 0, 0),
    "no_new_privs": status["NoNewPrivs"].strip(),
    "seccomp": status["Seccomp"].strip(),
    "kill_pid1": err(lambda: os.kill(1, 0)),
    "ptrace_pid1": libc.ptrace(16, 1, 0, 0),
    "unshare": libc.unshare(0x10000000),
    "mount": libc.mount(b"none", b"/tmp", b"tmpfs", 0, None),
    "abstract": err(abstract),
    "usr_writable": os.access("/usr/lib", os.W_OK),
}))
"#;
    let out = svc.run_code(code).await;
    let probe = stdout_json(&out);
    assert_eq!(probe["pid"], 2, "{probe:#}");
    assert_eq!(probe["procs"], json!([1, 2, 3]), "{probe:#}");
    // 0, 1, 2 and the descriptor that lists /proc/self/fd.
    assert_eq!(probe["fds"], json!([0, 1, 2, 3]), "{probe:#}");
    assert_eq!(probe["threads"], 1);
    assert_eq!(probe["caps"], json!(["0000000000000000"]));
    // Its pid 1, the reaper, holds none either.
    assert_eq!(probe["pid1_caps"], json!(["0000000000000000"]));
    assert_eq!(probe["no_new_privs"], "1");
    assert_eq!(probe["seccomp"], "2");
    assert_eq!(probe["kill_pid1"], "EPERM");
    assert_eq!(probe["ptrace_pid1"], -1);
    // The holder shares the job's memory, so the job could write its stack: it
    // never returns from its last call (no signal reaches it: all are blocked, and
    // the job may send it none), and were it to, its filter allows only read and
    // write on its own pipes.
    assert_eq!(
        probe["holder"],
        json!({"Seccomp": "2", "NoNewPrivs": "1", "SigBlk": "fffffffffffbfeff"}),
        "{probe:#}"
    );
    // One filter more than the template's, which its pid 1 has.
    assert_eq!(probe["holder_filters"], 1, "{probe:#}");
    assert_eq!(probe["holder_caps"], json!(["0000000000000000"]));
    assert_eq!(probe["kill_holder"], "EPERM");
    assert_eq!(probe["ptrace_holder"], -1);
    assert_eq!(probe["unshare"], -1);
    assert_eq!(probe["mount"], -1);
    assert_eq!(probe["abstract"], "ECONNREFUSED");
    assert_eq!(probe["usr_writable"], false);
}

/// What one job does to its memory, files, IPC and random state, the next job
/// does not start from; what it leaves running dies with it.
#[tokio::test]
async fn jobs_share_nothing_and_leave_nothing() {
    require_root!();
    let svc = forking();
    let needle = sleep_needle("611.5");
    let marks = format!(
        r#"
import json, os, random, ssl, subprocess, sys, sysconfig, tempfile, uuid
import numpy
seen = {{
    "numpy_mark": hasattr(numpy, "pysandbox_mark"),
    "module_mark": "pysandbox_planted" in sys.modules,
    "tmp": sorted(os.listdir("/tmp")),
    "shm": sorted(os.listdir("/dev/shm")),
    "work": sorted(os.listdir("/work")),
    "random": [random.random(), float(numpy.random.random()), uuid.uuid4().hex,
               next(tempfile._get_candidate_names()), ssl.RAND_bytes(8).hex()],
}}
numpy.pysandbox_mark = True
sys.modules["pysandbox_planted"] = sys
for path in ("/tmp/planted", "/dev/shm/planted", "/work/planted"):
    open(path, "w").write("x")
subprocess.Popen(["sleep", {}], start_new_session=True)
print(json.dumps(seen))
"#,
        py_concat(&needle)
    );
    let first = stdout_json(&svc.run_code(&marks).await);
    assert!(
        host_processes_matching(&needle).is_empty(),
        "a process of the first job outlived its response"
    );
    let second = stdout_json(&svc.run_code(&marks).await);
    for seen in [&first, &second] {
        assert_eq!(seen["numpy_mark"], false, "{seen:#}");
        assert_eq!(seen["module_mark"], false, "{seen:#}");
        // The display channel the executor makes, and nothing else.
        assert_eq!(seen["tmp"], json!([".pysandbox-display"]), "{seen:#}");
        assert_eq!(seen["shm"], json!([]), "{seen:#}");
        assert_eq!(seen["work"], json!([]), "{seen:#}");
    }
    let (a, b) = (
        first["random"].as_array().unwrap(),
        second["random"].as_array().unwrap(),
    );
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert_ne!(x, y, "random source {i} repeats between jobs");
    }
    assert!(host_processes_matching(&needle).is_empty());
    // What the two jobs left is removed right after their answers; the kits made
    // ahead for the next jobs (no code handed to them) stay.
    let jobs = svc.executor.state_dir().join("jobs");
    let ended = || -> Vec<String> {
        let idle = svc.executor.idle_jail_ids();
        std::fs::read_dir(&jobs)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| !idle.contains(name))
            .collect()
    };
    let gone = wait_until_async(Duration::from_secs(3), || ended().is_empty()).await;
    assert!(gone, "ended jobs' directories are left: {:?}", ended());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let idle = svc.executor.idle_jail_ids();
    let job_mounts: Vec<&str> = mounts
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|point| std::path::Path::new(point).starts_with(&jobs))
        .filter(|point| {
            !idle
                .iter()
                .any(|id| std::path::Path::new(point).starts_with(jobs.join(id)))
        })
        .collect();
    assert_eq!(
        job_mounts,
        Vec::<&str>::new(),
        "an ended job's tmpfs is still mounted"
    );
}

/// Pages shared with the template are not the job's: a 48 MiB job runs next to a
/// template of about 100 MiB; pages it writes are, and hit its limit.
#[tokio::test]
async fn memory_limits_count_what_the_job_writes_not_the_template() {
    require_root!();
    let svc = forking();
    let small = svc
        .run(json!({
            "code": "import pandas\nprint(pandas.DataFrame({'a': [1, 2]}).a.sum())",
            "limits": { "memoryMb": 48 },
        }))
        .await;
    assert_eq!(small["stdout"], "3\n", "{small:#}");
    assert_eq!(small["limitExceeded"], Value::Null);
    let big = svc
        .run(json!({
            "code": "x = bytearray(200 << 20)\nprint('survived')",
            "limits": { "memoryMb": 48 },
        }))
        .await;
    assert_eq!(big["limitExceeded"], "memory", "{big:#}");
    assert_eq!(big["stdout"], "");
}

/// The executor makes the tmpfs and cgroups of the next forked jobs ahead, at the
/// default limits: a job at other limits gets its own, made for it, and a job at
/// the defaults after it gets the defaults again, in a fresh work dir.
#[tokio::test]
async fn kits_made_ahead_hold_only_for_the_default_limits() {
    require_root!();
    let svc = forking();
    // The work dir's size (its tmpfs is the disk limit), whether a file the
    // previous job left is there, and whether 80 MiB fit in memory.
    let code = "import os\nst = os.statvfs('.')\nleft = os.path.exists('left')\nopen('left', 'w').close()\nx = bytearray(80 << 20)\nprint(st.f_blocks * st.f_frsize >> 20, left)";
    let at = |limits: Value| json!({ "code": code, "limits": limits, "collectFiles": false });
    for _ in 0..2 {
        let default = svc.run(at(json!({}))).await;
        assert_eq!(default["stdout"], "256 False\n", "{default:#}");
        let small = svc.run(at(json!({ "diskMb": 64, "memoryMb": 48 }))).await;
        assert_eq!(
            (&small["stdout"], &small["limitExceeded"]),
            (&json!(""), &json!("memory")),
            "{small:#}"
        );
        let larger = svc.run(at(json!({ "diskMb": 512 }))).await;
        assert_eq!(larger["stdout"], "512 False\n", "{larger:#}");
    }
    assert!(svc.executor.jails_started().iter().all(|j| j == "forked"));
}

/// Charts and the last expression's value come back from a forked job as from a
/// jail of its own.
#[tokio::test]
async fn figures_and_the_last_value_come_back() {
    require_root!();
    let svc = forking();
    let out = svc
        .run_code("import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()\n6 * 7")
        .await;
    assert_eq!(out["result"], "42", "{out:#}");
    let displays = out["displays"].as_array().expect("displays");
    assert_eq!(displays.len(), 1, "{out:#}");
    assert_eq!(displays[0]["contentType"], "image/png");
}

/// Killing the template leaves the service up: jobs run in cold jails meanwhile,
/// and a new template (the next generation) takes over.
#[tokio::test]
async fn a_killed_template_is_replaced_and_jobs_go_on() {
    require_root!();
    let svc = forking();
    let (pid, generation) = wait_for_generation(&svc, 0).await;
    kill(Pid::from_raw(pid), Signal::SIGKILL).expect("kill the template's bwrap");
    let out = svc.run_code("print('still served')").await;
    assert_eq!(out["stdout"], "still served\n", "{out:#}");
    let (new_pid, _) = wait_for_generation(&svc, generation).await;
    assert_ne!(new_pid, pid);
    let out = svc.run_code("print('forked again')").await;
    assert_eq!(out["stdout"], "forked again\n", "{out:#}");
    assert_eq!(
        svc.executor.jails_started().last().map(String::as_str),
        Some("forked")
    );
}

/// SIGHUP replaces the template without failing the job running in the old one.
#[tokio::test]
async fn a_reload_lets_running_jobs_finish() {
    require_root!();
    let svc = forking();
    let (_, generation) = wait_for_generation(&svc, 0).await;
    let executor = Pid::from_raw(svc.executor.pid().expect("running") as i32);
    let job = svc.run(json!({ "code": "import time\ntime.sleep(3)\nprint('finished')" }));
    let reload = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        kill(executor, Signal::SIGHUP).expect("SIGHUP");
        wait_for_generation(&svc, generation).await
    };
    let (out, _) = tokio::join!(job, reload);
    assert_eq!(out["stdout"], "finished\n", "{out:#}");
    assert_eq!(out["exitCode"], 0);
}

/// A job that may use the network takes a jail of its own: its relay must exist
/// before the job does.
#[tokio::test]
async fn a_job_with_network_starts_cold() {
    require_root!();
    let svc = Service::builder()
        .executor_args(["--fork-server", "true"])
        .executor_config_toml("[network]\nallowed_domains = [\"allowed.test\"]\n")
        .start();
    let out = svc.run_code("print('networked')").await;
    assert_eq!(out["stdout"], "networked\n", "{out:#}");
    assert_eq!(svc.executor.jails_started(), ["cold"]);
}

/// The template follows the host: a change to what jails bind (here an extra
/// read-only directory, as an upgrade changes the interpreter's packages) makes
/// a fresh template, whose jobs see the change.
#[tokio::test]
async fn a_change_on_the_host_replaces_the_template() {
    require_root!();
    // Not under /tmp, which every job's own /tmp covers.
    let packages = tempfile::Builder::new()
        .prefix("pysandbox-packages.")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    std::fs::set_permissions(
        packages.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let dir = packages.path().display().to_string();
    let svc = Service::builder()
        .executor_args(["--fork-server", "true"])
        .executor_config_toml(&format!("ro_binds = [{dir:?}]\n"))
        .start();
    let (_, generation) = wait_for_generation(&svc, 0).await;
    std::fs::write(packages.path().join("fresh.py"), "VALUE = 42\n").expect("install");
    let (_, newer) = wait_for_generation(&svc, generation).await;
    assert!(newer > generation);
    let out = svc
        .run_code(&format!(
            "import sys\nsys.path.insert(0, {dir:?})\nimport fresh\nprint(fresh.VALUE)"
        ))
        .await;
    assert_eq!(out["stdout"], "42\n", "{out:#}");
    assert_eq!(svc.executor.jails_started(), ["forked"]);
}

/// A template serves at most `fork_template_max_age_ms`: then a fresh one takes
/// over, without failing the job running in the old one, and what a template's
/// jobs share with each other (here the hash secret) changes with it.
#[tokio::test]
async fn a_template_is_replaced_when_it_reaches_its_age() {
    require_root!();
    let svc = Service::builder()
        .executor_args(["--fork-server", "true"])
        .executor_config_toml("fork_template_max_age_ms = 2000\n")
        .start();
    let (_, generation) = wait_for_generation(&svc, 0).await;
    // Naming numpy sends the job to the heavy template, whose generation /health
    // shows first.
    let hash = "import numpy\nprint(hash('pysandbox'))";
    let first = svc.run_code(hash).await;
    let again = svc.run_code(hash).await;
    let outlives = svc.run(json!({ "code": "import time\ntime.sleep(3)\nprint('finished')" }));
    let later = async {
        let (_, later) = wait_for_generation(&svc, generation).await;
        (later, svc.run_code(hash).await)
    };
    let (outlived, (later, replaced)) = tokio::join!(outlives, later);
    assert_eq!(outlived["stdout"], "finished\n", "{outlived:#}");
    assert!(later > generation);
    assert_eq!(
        first["stdout"], again["stdout"],
        "one template, one hash secret"
    );
    assert_ne!(
        first["stdout"], replaced["stdout"],
        "the replacement has a hash secret of its own"
    );
    assert!(svc
        .executor
        .log()
        .text()
        .contains("it served fork_template_max_age_ms"));
}

/// The host pid of the lean template's bwrap, from `/health`.
fn lean_template(health: &Value) -> Option<i32> {
    let detail = health["isolation"]["fork server"].as_str()?;
    let key = "lean template pid ";
    let rest = &detail[detail.find(key)? + key.len()..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// The processes under `root` that are in a pid namespace nested in its own: the
/// spares the template keeps (their pid 1 and job process).
fn spares_under(root: u32) -> Vec<u32> {
    let parents = pysandbox_tests::parent_pids();
    let descends = |mut pid: u32| loop {
        match parents.get(&pid) {
            Some(&parent) if parent == root => return true,
            Some(&parent) if parent > 1 => pid = parent,
            _ => return false,
        }
    };
    parents
        .keys()
        .copied()
        .filter(|&pid| descends(pid))
        .filter(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            status
                .lines()
                .find_map(|l| l.strip_prefix("NSpid:"))
                .is_some_and(|ids| ids.split_whitespace().count() >= 3)
        })
        .collect()
}

/// An order its template never took — here the template dies with the order
/// queued, its spares stopped — is no failure: no code of the job ran, so the job
/// runs in a jail of its own instead, and the client sees only its answer.
#[tokio::test]
async fn a_job_its_template_never_took_runs_in_a_jail_of_its_own() {
    require_root!();
    let svc = forking();
    wait_for_generation(&svc, 0).await;
    let lean = lean_template(&svc.blocking_health()).expect("the lean template's pid");
    let spares = spares_under(lean as u32);
    assert!(!spares.is_empty(), "the lean template keeps spares");
    for &pid in &spares {
        kill(Pid::from_raw(pid as i32), Signal::SIGSTOP).expect("stop a spare");
    }
    let job = svc.run_code("print('ran anyway')");
    let orphan = async {
        // Once the order was handed to the template, where no spare takes it...
        let handed = wait_until_async(Duration::from_secs(30), || {
            svc.executor.jails_started().first().map(String::as_str) == Some("forked")
        })
        .await;
        assert!(handed, "the job was not handed to the template");
        // ...the template goes, and the order with it.
        kill(Pid::from_raw(lean), Signal::SIGKILL).expect("kill the lean template");
    };
    let (out, ()) = tokio::join!(job, orphan);
    assert_eq!(out["stdout"], "ran anyway\n", "{out:#}");
    assert_eq!(out["exitCode"], 0);
    assert_eq!(svc.executor.jails_started(), ["forked", "cold"]);
    assert!(svc
        .executor
        .log()
        .text()
        .contains("the fork server did not take the job"));
}

/// A job cannot reach its template's spares — the processes the next jobs will
/// run in — nor the template: a job that signals every process it can leaves them
/// all standing, and the next jobs fork from the same template.
#[tokio::test]
async fn a_job_that_signals_everything_leaves_the_spares_standing() {
    require_root!();
    let svc = forking();
    let (pid, generation) = wait_for_generation(&svc, 0).await;
    let lean = lean_template(&svc.blocking_health()).expect("the lean template's pid");
    // Both spares made: three processes each in a job's pid namespace (pid 1, the
    // job's process, the holder of its memory).
    let mut before = Vec::new();
    let made = wait_until_async(Duration::from_secs(10), || {
        before = spares_under(lean as u32);
        before.len() == 6
    })
    .await;
    assert!(made, "{before:?}");
    let out = svc
        .run_code(
            "import os, signal\nfor sig in (signal.SIGSTOP, signal.SIGKILL):\n    \
             try:\n        os.kill(-1, sig)\n    except OSError as e:\n        print(e.errno)\nprint('still here')",
        )
        .await;
    // No error: `kill(-1)` reports none when every process it found (pid 1 and
    // the holder of its memory, outside its landlock domain) refused the signal.
    assert_eq!(out["stdout"], "still here\n", "{out:#}");
    // One spare became the job and is gone (its pid 1 and holder right after the
    // answer); the other, and the one made while the job ran, wait as they did.
    // Until then, the finished job's may still be seen beside a spare still
    // being made; a spare the job killed would never be seen again.
    let mut after = Vec::new();
    let settled = wait_until_async(Duration::from_secs(10), || {
        after = spares_under(lean as u32);
        let kept = before.iter().filter(|pid| after.contains(pid)).count();
        (after.len(), kept) == (6, 3)
    })
    .await;
    assert!(settled, "{before:?} {after:?}");
    // Each spare ends up waiting for an order (S); one the job had stopped (T) or
    // killed never would. The one made while the job ran may still be building.
    let state = |spare: &u32| {
        let stat = std::fs::read_to_string(format!("/proc/{spare}/stat")).unwrap_or_default();
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .map(str::to_owned)
    };
    let waiting = wait_until_async(Duration::from_secs(10), || {
        after
            .iter()
            .all(|spare| state(spare).as_deref() == Some("S"))
    })
    .await;
    let states: Vec<_> = after.iter().map(|spare| (spare, state(spare))).collect();
    assert!(waiting, "a spare was reached: {states:?}");
    for _ in 0..3 {
        let out = svc.run_code("print('next')").await;
        assert_eq!(out["stdout"], "next\n", "{out:#}");
    }
    assert_eq!(
        template(&svc.blocking_health()),
        Some((pid, generation)),
        "the template was replaced"
    );
    assert!(svc.executor.jails_started().iter().all(|j| j == "forked"));
}
