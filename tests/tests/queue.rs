//! The executor owns job policy: how many jobs run, how many wait and for how long,
//! when a job's deadline starts, and what a shutdown does to running and waiting
//! jobs. Every answer is truthful: a job that could not start is told "busy", never
//! "connection lost", and a job stopped by a restart is never blamed for it.

use std::time::Duration;

use pysandbox_tests::{assert_error, require_root, Executor, Frontend, Service};
use serde_json::json;

/// A job that holds its slot for `secs` seconds, then prints `slept`.
fn sleeper(secs: u32) -> serde_json::Value {
    json!({"code": format!("import time\ntime.sleep({secs})\nprint('slept')"), "timeoutMs": 60000})
}

/// Waits until the executor reports `n` running jobs (and so holds their slots).
async fn until_running(svc: &Service, n: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while svc.health().await.json["runningJobs"].as_u64() != Some(n) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the executor never ran {n} jobs at once"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The review's M2: a job that waited for a slot longer than its own timeout plus
/// the frontend's 30 s grace used to come back as `503 executor connection lost`.
/// The deadline now counts from the executor's `Started` frame.
#[tokio::test]
async fn a_queued_job_gets_its_whole_timeout_once_it_starts() {
    require_root!();
    let svc = Service::builder()
        .executor_args(["--max-jobs", "1", "--warm-pool-size", "0"])
        .executor_config_toml("queue_timeout_ms = 60000")
        .start();
    let long = svc.run(sleeper(33));
    let short = async {
        until_running(&svc, 1).await;
        svc.post_execute(&json!({"code": "print('short')", "timeoutMs": 1000}))
            .await
    };
    let (long, short) = tokio::join!(long, short);
    assert_eq!(long["stdout"], "slept\n", "{long}");
    assert_eq!(short.status, 200, "{}", short.text);
    assert_eq!(short.json["stdout"], "short\n", "{}", short.text);
}

/// A full queue is answered at once, and a job that cannot start within the queue
/// timeout is answered when it runs out: both `503 busy` with `Retry-After`, and
/// nothing of either job ran.
#[tokio::test]
async fn a_job_that_cannot_start_is_told_the_service_is_busy() {
    require_root!();
    let svc = Service::builder()
        .executor_args(["--max-jobs", "1", "--warm-pool-size", "0"])
        .executor_config_toml("max_queued_jobs = 1\nqueue_timeout_ms = 3000")
        .start();
    let busy = json!({"error": "service busy: every job slot is taken; retry later"});
    let holder = svc.run(sleeper(8));
    let others = async {
        until_running(&svc, 1).await;
        let body = json!({"code": "open('ran', 'w')"});
        let waiting = svc.post_execute(&body);
        let refused = async {
            // The first of the two takes the one place in the queue.
            tokio::time::sleep(Duration::from_millis(500)).await;
            svc.post_execute(&json!({"code": "print(1)"})).await
        };
        tokio::join!(waiting, refused)
    };
    let (held, (waited, refused)) = tokio::join!(holder, others);
    assert_eq!(held["stdout"], "slept\n", "{held}");
    for reply in [&refused, &waited] {
        assert_error(reply, 503, busy.clone());
        assert_eq!(reply.header("retry-after"), Some("1"));
    }
    let health = svc.health().await;
    assert_eq!(health.json["queuedJobs"], 0, "{}", health.text);
}

/// `systemctl restart` of a socket-activated executor: the running job finishes
/// (drained), and the job waiting for a slot is turned away before it started and
/// sent again by the frontend, to the next executor: both answer 200.
#[tokio::test(flavor = "multi_thread")]
async fn a_restart_drains_running_jobs_and_requeues_waiting_ones() {
    require_root!();
    let mut executor = Executor::builder()
        .args(["--max-jobs", "1", "--warm-pool-size", "0"])
        .socket_activated()
        .start();
    let frontend = Frontend::start(&executor, &[]);
    let post = |body: serde_json::Value| {
        let url = frontend.url("/execute");
        let token = frontend.token().to_owned();
        async move {
            let reply = reqwest::Client::new()
                .post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .expect("the frontend answers");
            let status = reply.status().as_u16();
            (
                status,
                reply.json::<serde_json::Value>().await.expect("JSON"),
            )
        }
    };
    let running = post(sleeper(3));
    let waiting = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        post(json!({"code": "print('after the restart')"})).await
    };
    let restart = async {
        tokio::time::sleep(Duration::from_millis(2000)).await;
        // The harness's stop is SIGTERM and a wait, as systemd's is.
        tokio::task::block_in_place(|| executor.restart());
    };
    let (running, waiting, ()) = tokio::join!(running, waiting, restart);
    assert_eq!(running.0, 200, "{}", running.1);
    assert_eq!(
        (&running.1["stdout"], &running.1["exitCode"]),
        (&json!("slept\n"), &json!(0)),
        "{}",
        running.1
    );
    assert_eq!(waiting.0, 200, "{}", waiting.1);
    assert_eq!(waiting.1["stdout"], "after the restart\n", "{}", waiting.1);
    assert!(executor
        .log()
        .contains("jobs waiting for a slot are turned away"));
}

/// A job still running when the shutdown grace is over is killed, and its client
/// told the truth: `503 executor restarting` with `Retry-After`, never a 200 that
/// blames the job for a SIGTERM it did not cause.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_killed_at_the_end_of_the_grace_is_told_the_executor_restarts() {
    require_root!();
    let svc = Service::builder()
        .executor_config_toml("shutdown_grace_secs = 1")
        .start();
    let body = sleeper(30);
    let job = svc.post_execute(&body);
    let stop = async {
        until_running(&svc, 1).await;
        let pid = svc.executor.pid().expect("the executor runs");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("cannot run kill");
        assert!(status.success());
    };
    let (reply, ()) = tokio::join!(job, stop);
    assert_error(
        &reply,
        503,
        json!({"error": "executor restarting; retry later"}),
    );
    assert_eq!(reply.header("retry-after"), Some("5"));
}
