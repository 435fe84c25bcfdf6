//! The daemons' command lines and config files.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use pysandbox_tests::{binaries, exit_output, require_root, Executor, Frontend, Service};
use serde_json::json;

fn frontend_without_token(token: Option<&str>) -> Output {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cmd = Frontend::command();
    cmd.env("PORT", "0")
        .env("HOST", "127.0.0.1")
        .env("PYSANDBOX_EXECUTOR_SOCKET", dir.path().join("none.sock"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(token) = token {
        cmd.env("AUTH_TOKEN", token);
    }
    exit_output(
        cmd.spawn().expect("spawn the frontend"),
        "the frontend",
        Duration::from_secs(10),
    )
}

#[test]
fn frontend_refuses_to_start_without_auth_token() {
    require_root!();
    let out = frontend_without_token(None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains("AUTH_TOKEN is required"),
        "stderr: {stderr}"
    );
}

/// An empty token would make `Authorization: Bearer ` a valid credential.
#[test]
fn frontend_refuses_an_empty_auth_token() {
    require_root!();
    let out = frontend_without_token(Some(""));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains("AUTH_TOKEN is required"),
        "stderr: {stderr}"
    );
}

/// Flags alone configure the frontend, and win over the environment.
#[tokio::test]
async fn frontend_flags_mirror_the_environment() {
    require_root!();
    let executor = Executor::start(&[]);
    let token = "flag-token";
    let mut cmd = Frontend::command();
    cmd.env("AUTH_TOKEN", "env-token")
        .env("PORT", "1")
        .env("PYSANDBOX_EXECUTOR_SOCKET", "/nonexistent/executor.sock")
        .env("MAX_BODY_BYTES", "100000")
        .args(["--auth-token", token, "--port", "0", "--host", "127.0.0.1"])
        .arg("--executor-socket")
        .arg(executor.socket())
        .args(["--max-body-bytes", "1000"]);
    let frontend = Frontend::launch(cmd, token, executor.socket());
    let svc = Service::new(frontend, executor);
    let out = svc.run_code("print('flags')").await;
    assert_eq!(out["stdout"], "flags\n", "{out}");
    let reply = svc
        .post_execute(&json!({ "code": format!("#{}", "x".repeat(1000)) }))
        .await;
    pysandbox_tests::assert_error(
        &reply,
        413,
        json!({ "error": "request body is larger than 1000 bytes" }),
    );
}

#[test]
fn executor_rejects_an_unknown_config_key() {
    require_root!();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("executor.toml");
    std::fs::write(
        &config,
        format!(
            "socket = \"{0}/executor.sock\"\nstate_dir = \"{0}/state\"\nbogus_key = 1\n",
            dir.path().display()
        ),
    )
    .expect("write the config");
    let child = Command::new(&binaries().executor)
        .arg("--config")
        .arg(&config)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the executor");
    let out = exit_output(
        child,
        "the executor with an unknown config key",
        Duration::from_secs(10),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains("bogus_key"),
        "the error does not name the key: {stderr}"
    );
}

/// Every flag the harness passes can come from the config file instead.
#[tokio::test]
async fn executor_reads_its_config_file() {
    require_root!();
    let executor = Executor::builder()
        .without_harness_flags()
        .config_toml(
            "socket = \"{dir}/executor.sock\"\n\
             state_dir = \"{dir}/state\"\n\
             allow_uids = [65533]\n\
             socket_group = 65533\n\
             max_jobs = 3\n",
        )
        .start();
    let frontend = Frontend::start(&executor, &[]);
    let svc = Service::new(frontend, executor);
    let out = svc.run_code("print('configured')").await;
    assert_eq!(out["stdout"], "configured\n", "{out}");
    assert_eq!(svc.health().await.json["maxJobs"], 3);
}

/// Flags win over the config file.
#[tokio::test]
async fn executor_flags_win_over_the_config_file() {
    require_root!();
    let executor = Executor::builder()
        .config_toml("max_jobs = 5\n")
        .args(["--max-jobs", "4"])
        .start();
    let frontend = Frontend::start(&executor, &[]);
    let svc = Service::new(frontend, executor);
    assert_eq!(svc.health().await.json["maxJobs"], 4);
}
