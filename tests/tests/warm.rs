//! Warm jails: which path a job takes is observable (the executor logs
//! `job started jail="warm"` or `"cold"`), and the pool behaves as README says:
//! a full pool serves the next job, network jobs run cold, the pool refills after
//! a job and after a client went away, and `preload` imports ahead of the job.
//!
//! The harness waits until the pool is full before a test's first job
//! ([`Service::wait_for_warm_pool`]), so these assertions are deterministic.

use std::time::Duration;

use pysandbox_tests::{
    host_processes_matching, py_concat, require_root, sleep_needle, wait_until_async, Service,
};
use serde_json::json;

/// How long a pool may take to refill (generous: two cores shared by the suite).
const REFILL_TIMEOUT: Duration = Duration::from_secs(60);

async fn warm_jails(svc: &Service) -> u64 {
    let health = svc.health().await;
    assert_eq!(health.status, 200, "{}", health.text);
    health.json["warmJails"]
        .as_u64()
        .unwrap_or_else(|| panic!("/health has no warmJails count: {}", health.text))
}

/// Polls `/health` until it reports `want` warm jails; panics after [`REFILL_TIMEOUT`].
async fn wait_for_warm_jails(svc: &Service, want: u64) {
    let deadline = tokio::time::Instant::now() + REFILL_TIMEOUT;
    let mut seen = warm_jails(svc).await;
    while seen != want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "warmJails stayed at {seen}, expected {want} within {REFILL_TIMEOUT:?}; executor log:\n{}",
            svc.executor.log().text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        seen = warm_jails(svc).await;
    }
}

#[tokio::test]
async fn a_full_pool_serves_the_next_job_and_refills_after_it() {
    require_root!();
    let svc = Service::builder()
        .executor_args(["--warm-pool-size", "2"])
        .start();
    assert_eq!(svc.executor.warm_pool_size(), 2);
    assert_eq!(warm_jails(&svc).await, 2);
    let out = svc.run_code("print(2 + 2)").await;
    assert_eq!(
        (&out["stdout"], &out["exitCode"]),
        (&json!("4\n"), &json!(0))
    );
    assert_eq!(svc.executor.jails_started(), ["warm"]);
    wait_for_warm_jails(&svc, 2).await;
    // The refilled jail serves too.
    svc.run_code("print(3)").await;
    assert_eq!(svc.executor.jails_started(), ["warm", "warm"]);
}

/// CI runs the suite three times: with the executor's defaults (the fork server,
/// no pool), with PYSANDBOX_TEST_FORK_SERVER=0 (the default pool of two), and with
/// PYSANDBOX_TEST_WARM_POOL=0 too (cold jails); each pass takes the path it claims.
#[tokio::test]
async fn each_pass_of_the_suite_takes_the_path_it_claims() {
    require_root!();
    let svc = Service::start();
    let switch = |name: &str| std::env::var(name).is_ok_and(|v| v == "0");
    let (fork_off, pool_off) = (
        switch("PYSANDBOX_TEST_FORK_SERVER"),
        switch("PYSANDBOX_TEST_WARM_POOL"),
    );
    let (size, path) = match (fork_off, pool_off) {
        (false, _) => (0, "forked"),
        (true, true) => (0, "cold"),
        (true, false) => (2, "warm"),
    };
    assert_eq!(svc.executor.warm_pool_size(), size);
    assert_eq!(svc.executor.fork_server(), !fork_off);
    assert_eq!(warm_jails(&svc).await, u64::from(size));
    svc.run_code("print(1)").await;
    assert_eq!(svc.executor.jails_started(), [path]);
}

#[tokio::test]
async fn without_a_pool_every_job_runs_cold() {
    require_root!();
    let svc = Service::builder()
        .executor_args(["--warm-pool-size", "0"])
        .start();
    svc.run_code("print(1)").await;
    svc.run_code("print(2)").await;
    assert_eq!(svc.executor.jails_started(), ["cold", "cold"]);
    assert_eq!(warm_jails(&svc).await, 0);
}

/// A job that may use the network needs its proxy before its jail, so it never
/// takes a warm one; on a host with allowed domains only `"allowedDomains": []`
/// (no network) uses the pool.
#[tokio::test]
async fn network_jobs_run_cold_and_leave_the_pool_alone() {
    require_root!();
    let svc = Service::builder()
        .executor_args(["--warm-pool-size", "1"])
        .executor_config_toml("[network]\nallowed_domains = [\"allowed.test\"]\n")
        .start();
    assert_eq!(warm_jails(&svc).await, 1);
    for network in [
        json!(null),
        json!({}),
        json!({ "allowedDomains": ["allowed.test"] }),
    ] {
        let mut body = json!({ "code": "print(1)" });
        if !network.is_null() {
            body["network"] = network;
        }
        svc.run(body).await;
        // Still there: the network job did not take it.
        assert_eq!(warm_jails(&svc).await, 1);
    }
    assert_eq!(svc.executor.jails_started(), ["cold", "cold", "cold"]);
    svc.run(json!({ "code": "print(1)", "network": { "allowedDomains": [] } }))
        .await;
    assert_eq!(
        svc.executor.jails_started(),
        ["cold", "cold", "cold", "warm"]
    );
}

#[tokio::test]
async fn the_pool_refills_after_a_client_went_away() {
    require_root!();
    let svc = Service::builder()
        .executor_args(["--warm-pool-size", "2"])
        .start();
    let needle = sleep_needle("765.4");
    let code = format!(
        "import subprocess\nsubprocess.run(['sleep', {}])",
        py_concat(&needle)
    );
    let stream = svc
        .open_execute(&json!({ "code": code, "timeoutMs": 60000 }))
        .await;
    let running = wait_until_async(REFILL_TIMEOUT, || {
        !host_processes_matching(&needle).is_empty()
    })
    .await;
    assert!(running, "the job never started its sleep");
    assert_eq!(svc.executor.jails_started(), ["warm"]);
    drop(stream);
    let gone = wait_until_async(REFILL_TIMEOUT, || {
        host_processes_matching(&needle).is_empty()
    })
    .await;
    assert!(gone, "the job outlived its client");
    wait_for_warm_jails(&svc, 2).await;
}

/// `preload` modules are imported before the job: `sys.modules` holds them at the
/// job's first line. The control: a cold jail (no pool) has not imported it.
#[tokio::test]
async fn preloaded_modules_are_imported_before_the_job() {
    require_root!();
    // colorsys: tiny, and imported by nothing at Python's start or in the launcher.
    let code = "import sys\nprint('colorsys' in sys.modules)";
    let warm = Service::builder()
        .executor_args(["--warm-pool-size", "1"])
        .executor_config_toml("preload = [\"colorsys\"]\n")
        .start();
    let out = warm.run_code(code).await;
    assert_eq!(out["stdout"], "True\n", "{out:#}");
    assert_eq!(warm.executor.jails_started(), ["warm"]);

    let cold = Service::builder()
        .executor_args(["--warm-pool-size", "0"])
        .executor_config_toml("preload = [\"colorsys\"]\n")
        .start();
    let out = cold.run_code(code).await;
    assert_eq!(out["stdout"], "False\n", "{out:#}");
    assert_eq!(cold.executor.jails_started(), ["cold"]);
}

/// The pool refills only while a job slot is free: with one slot, the job that took
/// a warm jail holds it, so that jail is not replaced while the job runs (setting
/// one up takes well under the 3 s watched here), and it is once the job ends.
#[tokio::test]
async fn the_pool_refills_only_while_a_job_slot_is_free() {
    require_root!();
    let svc = Service::builder()
        .executor_args(["--warm-pool-size", "2", "--max-jobs", "1"])
        .start();
    assert_eq!(warm_jails(&svc).await, 2);
    let needle = sleep_needle("766.4");
    let code = format!(
        "import subprocess\nsubprocess.run(['sleep', {}])",
        py_concat(&needle)
    );
    let stream = svc
        .open_execute(&json!({ "code": code, "timeoutMs": 60000 }))
        .await;
    let running = wait_until_async(REFILL_TIMEOUT, || {
        !host_processes_matching(&needle).is_empty()
    })
    .await;
    assert!(running, "the job never started its sleep");
    assert_eq!(svc.executor.jails_started(), ["warm"]);
    // /health's status may be a second old: first see the jail the job took gone.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while warm_jails(&svc).await != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the pool refilled while the only job slot was taken (or /health never \
             showed the jail the job took)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..30 {
        assert_eq!(
            warm_jails(&svc).await,
            1,
            "the pool refilled while the only job slot was taken"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !host_processes_matching(&needle).is_empty(),
        "the job ended early"
    );
    drop(stream);
    wait_for_warm_jails(&svc, 2).await;
}
