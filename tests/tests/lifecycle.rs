//! Job and daemon lifetimes: timeouts, kills, disconnects, restarts, leftovers.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pysandbox_tests::{
    assert_error, host_processes_matching, py_concat, require_root, sleep_needle, wait_until_async,
    Service,
};
use serde_json::{json, Value};

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

async fn wait_for_process(needle: &str, timeout: Duration) -> bool {
    wait_until_async(timeout, || !host_processes_matching(needle).is_empty()).await
}

async fn wait_for_no_process(needle: &str, timeout: Duration) -> bool {
    wait_until_async(timeout, || host_processes_matching(needle).is_empty()).await
}

/// No bwrap process of this executor's jails is left (within 3 s).
async fn assert_no_jail_left(svc: &Service) {
    let gone = wait_until_async(Duration::from_secs(3), || {
        svc.executor.jail_processes().is_empty()
    })
    .await;
    assert!(
        gone,
        "jail processes are left on the host: {:?}",
        svc.executor.jail_processes()
    );
}

#[tokio::test]
async fn timeout_kills_the_job_and_keeps_flushed_output() {
    require_root!();
    let svc = Service::start();
    let started = Instant::now();
    let out = svc
        .run(json!({
            "code": "import time\nprint(\"before\", flush=True)\ntime.sleep(30)",
            "timeoutMs": 1000,
        }))
        .await;
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(2),
        "answered after {elapsed:?}: {out}"
    );
    assert_eq!(out["exitCode"], Value::Null, "{out}");
    assert_eq!(out["signal"], "SIGKILL", "{out}");
    assert_eq!(out["timedOut"], true, "{out}");
    assert_eq!(out["stdout"], "before\n", "{out}");
    let stderr = out["stderr"].as_str().unwrap_or_default();
    assert!(
        stderr.ends_with("[sandbox] killed: wall-clock timeout of 1000 ms exceeded\n"),
        "stderr: {stderr:?}"
    );
    let duration = out["durationMs"].as_u64().unwrap_or(0);
    assert!((950..2000).contains(&duration), "durationMs {duration}");
    assert_no_jail_left(&svc).await;
}

/// A timeout that strikes while the jail is still being set up is still a
/// timed-out job (200), never a jail failure (503), and leaves no jail behind.
/// Timeouts of 1..=40 ms, four at a time, land in every phase of the setup.
#[tokio::test]
async fn timeout_during_jail_setup_is_still_a_timed_out_result() {
    require_root!();
    let svc = Service::start();
    let mut failures = Vec::new();
    for round in 0..10u32 {
        let jobs = (1..=4u32).map(|i| {
            let svc = &svc;
            let timeout = round * 4 + i;
            async move {
                let body = json!({ "code": "print(1)", "timeoutMs": timeout });
                (timeout, svc.post_execute(&body).await)
            }
        });
        for (timeout, reply) in futures::future::join_all(jobs).await {
            let out = &reply.json;
            let ok = reply.status == 200
                && if out["timedOut"] == true {
                    out["signal"] == "SIGKILL"
                        && out["stderr"].as_str().is_some_and(|e| {
                            e.ends_with(&format!(
                                "[sandbox] killed: wall-clock timeout of {timeout} ms exceeded\n"
                            ))
                        })
                } else {
                    out["exitCode"] == 0 && out["stdout"] == "1\n"
                };
            if !ok {
                failures.push(format!(
                    "timeoutMs {timeout}: {} {}",
                    reply.status, reply.text
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 40 jobs:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_no_jail_left(&svc).await;
}

/// The executor owns the default: a request without `timeoutMs` gets the executor's
/// `default_timeout_ms`, even when its `max_timeout_ms` is lower than the usual
/// default (which used to turn such requests into a 400 naming `timeoutMs`).
#[tokio::test]
async fn the_executors_default_timeout_applies_when_none_is_given() {
    require_root!();
    let svc = Service::builder()
        .executor_config_toml("default_timeout_ms = 1000\nmax_timeout_ms = 2000")
        .start();
    let out = svc.run_code("import time\ntime.sleep(30)").await;
    assert_eq!(out["timedOut"], true, "{out}");
    assert_eq!(out["limitExceeded"], "time", "{out}");
    let stderr = out["stderr"].as_str().unwrap_or_default();
    assert!(
        stderr.ends_with("[sandbox] killed: wall-clock timeout of 1000 ms exceeded\n"),
        "stderr: {stderr:?}"
    );
}

#[tokio::test]
async fn job_ignoring_sigterm_is_killed_at_the_timeout() {
    require_root!();
    let svc = Service::start();
    let needle = sleep_needle("543.");
    // The child inherits the ignored SIGTERM across exec.
    let code = format!(
        "import signal, subprocess\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ignoring', flush=True)\nsubprocess.run(['sleep', {}])",
        py_concat(&needle)
    );
    let started = Instant::now();
    let out = svc.run(json!({ "code": code, "timeoutMs": 1000 })).await;
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(5),
        "answered after {elapsed:?}: {out}"
    );
    assert_eq!(
        (
            &out["timedOut"],
            &out["signal"],
            &out["exitCode"],
            &out["stdout"]
        ),
        (
            &json!(true),
            &json!("SIGKILL"),
            &Value::Null,
            &json!("ignoring\n")
        ),
        "{out}"
    );
    assert!(
        wait_for_no_process(&needle, Duration::from_secs(3)).await,
        "the SIGTERM-ignoring child outlived the job: {:?}",
        host_processes_matching(&needle)
    );
    assert_no_jail_left(&svc).await;
}

/// A double-forked, setsid'd daemon that closed its descriptors (so nothing holds
/// the job's pipes open) must be gone once the job is answered.
#[tokio::test]
async fn daemonized_grandchild_is_gone_after_the_response() {
    require_root!();
    let svc = Service::start();
    let needle = sleep_needle("876.5");
    let code = r#"
import os, sys, time
arg = NEEDLE
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.setsid()
    grandchild = os.fork()
    if grandchild == 0:
        os.closerange(0, 1024)
        os.execvp("sleep", ["sleep", arg])
    os.write(w, str(grandchild).encode())
    os._exit(0)
os.close(w)
os.waitpid(pid, 0)
grandchild = int(os.read(r, 32))
deadline = time.time() + 5
while time.time() < deadline:
    try:
        with open("/proc/%d/cmdline" % grandchild, "rb") as f:
            if arg.encode() in f.read():
                print("daemon running")
                break
    except OSError:
        pass
    time.sleep(0.02)
"#
    .replace("NEEDLE", &py_concat(&needle));
    let started = Instant::now();
    let out = svc.run(json!({ "code": code, "timeoutMs": 10000 })).await;
    assert_eq!(
        out["stdout"], "daemon running\n",
        "the daemon never ran: {out:#}"
    );
    assert_eq!(
        (&out["exitCode"], &out["timedOut"]),
        (&json!(0), &json!(false)),
        "{out:#}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the job took {:?}",
        started.elapsed()
    );
    assert!(
        wait_for_no_process(&needle, Duration::from_secs(3)).await,
        "the daemon outlived its job: {:?}",
        host_processes_matching(&needle)
    );
    assert_no_jail_left(&svc).await;
}

/// A daemon that keeps the job's stdout and stderr open must neither delay the
/// answer until the timeout nor survive the job.
#[tokio::test]
async fn daemon_holding_the_output_pipes_does_not_delay_the_answer() {
    require_root!();
    let svc = Service::start();
    let needle = sleep_needle("876.75");
    let code = r#"
import os
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execvp("sleep", ["sleep", NEEDLE])
    os._exit(0)
os.wait()
print("parent done")
"#
    .replace("NEEDLE", &py_concat(&needle));
    let started = Instant::now();
    let out = svc.run(json!({ "code": code, "timeoutMs": 15000 })).await;
    assert_eq!(
        (&out["exitCode"], &out["timedOut"], &out["stdout"]),
        (&json!(0), &json!(false), &json!("parent done\n")),
        "{out:#}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the job took {:?}",
        started.elapsed()
    );
    assert!(
        wait_for_no_process(&needle, Duration::from_secs(3)).await,
        "the daemon outlived its job: {:?}",
        host_processes_matching(&needle)
    );
    assert_no_jail_left(&svc).await;
}

#[tokio::test]
async fn client_disconnect_kills_its_job() {
    require_root!();
    let svc = Service::start();
    let needle = sleep_needle("987.25");
    let stream = svc
        .open_execute(&json!({ "code": sleeper(&needle), "timeoutMs": 60000 }))
        .await;
    assert!(
        wait_for_process(&needle, Duration::from_secs(10)).await,
        "the job's sleep never started"
    );
    assert!(
        !svc.executor.jail_processes().is_empty(),
        "the harness cannot see the running jail"
    );
    drop(stream);
    assert!(
        wait_for_no_process(&needle, Duration::from_secs(5)).await,
        "the job outlived its client by 5 s: {:?}",
        host_processes_matching(&needle)
    );
    assert_no_jail_left(&svc).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let health = svc.health().await;
        if health.json["runningJobs"] == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the executor still counts the job: {}",
            health.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn executor_restart_while_the_frontend_stays_up() {
    require_root!();
    let mut svc = Service::start();
    assert_eq!(svc.run_code("print('first')").await["stdout"], "first\n");
    let frontend_pid = svc.frontend.pid();

    svc.executor.stop();
    let started = Instant::now();
    let reply = svc.post_execute(&json!({ "code": "print(1)" })).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "503 took {:?}",
        started.elapsed()
    );
    assert_error(&reply, 503, json!({ "error": "executor unavailable" }));
    assert_eq!(reply.header("retry-after"), Some("5"));
    // /health serves a status at most a second old.
    let deadline = Instant::now() + Duration::from_secs(5);
    let health = loop {
        let health = svc.health().await;
        if health.json["executor"] == "down" || Instant::now() > deadline {
            break health;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        (health.status, &health.json),
        (200, &json!({ "ok": true, "executor": "down" }))
    );

    svc.executor.restart();
    assert_eq!(svc.run_code("print('back')").await["stdout"], "back\n");
    // /health serves a status at most a second old.
    let deadline = Instant::now() + Duration::from_secs(5);
    let health = loop {
        let health = svc.health().await;
        if health.json["executor"] == "up" || Instant::now() > deadline {
            break health;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(health.json["executor"], "up", "{}", health.text);
    assert!(svc.frontend.is_running());
    assert_eq!(svc.frontend.pid(), frontend_pid);
}

/// An executor crash mid-job: the client gets a prompt 503, nothing of the job is
/// left on the host, and an executor started again on the same (now stale) socket
/// path serves the next job.
#[tokio::test]
async fn executor_crash_during_a_job_is_a_503_and_leaves_nothing() {
    require_root!();
    let mut svc = Service::start();
    let needle = sleep_needle("321.5");
    let executor_pid = pid(svc.executor.pid().expect("the executor runs"));
    let body = json!({ "code": sleeper(&needle), "timeoutMs": 60000 });
    let request = svc.post_execute(&body);
    let crash = async {
        assert!(
            wait_for_process(&needle, Duration::from_secs(10)).await,
            "the job's sleep never started"
        );
        kill(executor_pid, Signal::SIGKILL).expect("cannot kill the executor");
        Instant::now()
    };
    let (reply, killed_at) = tokio::join!(request, crash);
    assert!(
        killed_at.elapsed() < Duration::from_secs(5),
        "the 503 came {:?} after the crash",
        killed_at.elapsed()
    );
    assert_error(
        &reply,
        503,
        json!({ "error": "executor connection lost while running the job" }),
    );
    assert_eq!(reply.header("retry-after"), Some("5"));
    assert!(
        wait_for_no_process(&needle, Duration::from_secs(5)).await,
        "the job outlived the executor: {:?}",
        host_processes_matching(&needle)
    );
    assert_no_jail_left(&svc).await;
    svc.executor.kill();
    svc.executor.restart();
    assert_eq!(svc.run_code("print('again')").await["stdout"], "again\n");
}

#[tokio::test]
async fn work_dir_is_removed_after_the_job() {
    require_root!();
    let svc = Service::start();
    let name = format!("leftover-{}.txt", pysandbox_tests::random_hex(6));
    // The job writes its file, then waits until the host has seen it (and the
    // jail's processes): the controls without which "gone" below proves nothing.
    let code = "import os, sys, time\nname = sys.stdin.read()\nopen(name, 'w').write('x')\n\
                while not os.path.exists(name + '.seen'):\n    time.sleep(0.02)\nprint('wrote')";
    let state_dir = svc.executor.state_dir().to_owned();
    let host = async {
        let mut found = None;
        let seen = wait_until_async(Duration::from_secs(30), || {
            found = find_file(&state_dir, &name);
            found.is_some()
        })
        .await;
        assert!(seen, "the running job's file is not visible from the host");
        assert!(
            !svc.executor.jail_processes().is_empty(),
            "the running job's processes are not visible from the host"
        );
        let mut marker = found.expect("found").into_os_string();
        marker.push(".seen");
        std::fs::write(&marker, "").expect("release the job");
    };
    let (out, ()) = tokio::join!(
        svc.run(json!({ "code": code, "stdin": name, "timeoutMs": 60000 })),
        host
    );
    assert_eq!(out["stdout"], "wrote\n", "{out}");
    let gone = wait_until_async(Duration::from_secs(3), || {
        find_file(&state_dir, &name).is_none()
    })
    .await;
    assert!(
        gone,
        "the job's file is still on the host at {:?}",
        find_file(&state_dir, &name)
    );
    assert_no_jail_left(&svc).await;
}

fn find_file(dir: &std::path::Path, name: &str) -> Option<std::path::PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if entry.file_name() == name {
            return Some(path);
        }
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            if let Some(found) = find_file(&path, name) {
                return Some(found);
            }
        }
    }
    None
}

#[tokio::test]
async fn frontend_sigterm_lets_the_running_job_finish() {
    require_root!();
    let mut svc = Service::start();
    let needle = sleep_needle("1.");
    let code = format!("{}\nprint('finished')", sleeper(&needle));
    let frontend_pid = pid(svc.frontend.pid().expect("the frontend runs"));
    let body = json!({ "code": code, "timeoutMs": 20000 });
    let request = svc.post_execute(&body);
    let terminate = async {
        assert!(
            wait_for_process(&needle, Duration::from_secs(10)).await,
            "the job's sleep never started"
        );
        kill(frontend_pid, Signal::SIGTERM).expect("cannot signal the frontend");
    };
    let (reply, ()) = tokio::join!(request, terminate);
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json["stdout"], "finished\n", "{}", reply.text);
    let status = svc.frontend.stop(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "the frontend ended with {status:?} after SIGTERM"
    );
}

/// A real executor that cannot set up a jail (its `bwrap` is a script that exits 1
/// at once) answers 503 with `Retry-After`, and the job's code never runs: not in a
/// jail, and not unjailed either (it would leave a canary file on the host).
#[tokio::test]
async fn a_jail_that_cannot_be_set_up_is_503_and_runs_nothing() {
    require_root!();
    let dir = tempfile::tempdir().expect("temp dir");
    let bwrap = dir.path().join("bwrap");
    let calls = dir.path().join("calls");
    // bwrap runs as the sandbox uid: it must reach the script and the call log.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod the temp dir");
    std::fs::write(&calls, "").expect("create the call log");
    std::fs::set_permissions(&calls, std::fs::Permissions::from_mode(0o666))
        .expect("chmod the call log");
    std::fs::write(
        &bwrap,
        format!("#!/bin/sh\necho called >> {}\nexit 1\n", calls.display()),
    )
    .expect("write the fake bwrap");
    std::fs::set_permissions(&bwrap, std::fs::Permissions::from_mode(0o755))
        .expect("chmod the fake bwrap");
    let svc = Service::builder()
        .executor_config_toml(&format!("bwrap = {:?}\n", bwrap.display().to_string()))
        .start();
    let canary = format!("/tmp/pysandbox-canary-{}", pysandbox_tests::random_hex(8));
    let code = format!("open({canary:?}, 'w').write('ran')\nprint('ran')");
    let reply = svc.post_execute(&json!({ "code": code })).await;
    assert_error(
        &reply,
        503,
        json!({ "error": "sandbox unavailable: could not set up the jail" }),
    );
    assert_eq!(reply.header("retry-after"), Some("5"));
    assert!(
        !Path::new(&canary).exists(),
        "the job's code ran outside a jail"
    );
    // The fake bwrap was what failed (not something before it).
    let called = std::fs::read_to_string(&calls).unwrap_or_default();
    assert!(
        called.contains("called"),
        "the executor never called its bwrap"
    );
    // Its log is read as it is written: wait for the line.
    let logged = pysandbox_tests::wait_until(Duration::from_secs(10), || {
        svc.executor.log().contains("job did not run")
    });
    assert!(logged, "the failure was not logged");
}

/// README: `systemctl restart pysandbox-frontend` leaves the executor running. A
/// frontend stopped with SIGTERM and a new one started on the same socket: the
/// same executor process (never restarted) serves the new frontend's jobs.
#[tokio::test]
async fn frontend_restart_while_the_executor_keeps_running() {
    require_root!();
    let mut svc = Service::start();
    assert_eq!(svc.run_code("print('before')").await["stdout"], "before\n");
    let executor_pid = svc.executor.pid();
    let started = svc.executor.log().text().matches("listening on").count();

    let token = svc.token().to_owned();
    let status = svc.frontend.stop(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "the frontend ended with {status:?} after SIGTERM"
    );
    svc.frontend =
        pysandbox_tests::Frontend::start(&svc.executor, &[("AUTH_TOKEN", token.as_str())]);

    let out = svc.run_code("print('after')").await;
    assert_eq!(out["stdout"], "after\n", "{out:#}");
    assert!(svc.executor.is_running(), "the executor stopped");
    assert_eq!(svc.executor.pid(), executor_pid, "the executor restarted");
    assert_eq!(
        svc.executor.log().text().matches("listening on").count(),
        started,
        "the executor started listening again"
    );
    assert_eq!(svc.executor.jails_started().len(), 2);
    assert_no_jail_left(&svc).await;
}
