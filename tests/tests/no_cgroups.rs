//! A host without cgroups: README's fallback. The executor runs in a mount
//! namespace of its own from which every cgroup mount is gone, so it detects none;
//! memory falls back to `RLIMIT_AS`, processes to `RLIMIT_NPROC`, and `/health`
//! says so.

use pysandbox_tests::{require_root, stdout_json, Executor, Frontend, Service};
use serde_json::json;

/// An executor that sees no cgroup hierarchy, and a frontend for it.
fn service_without_cgroups() -> Service {
    let executor = Executor::builder()
        .wrapper([
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            "umount --recursive --lazy /sys/fs/cgroup && exec \"$@\"",
            "sh",
        ])
        .start();
    let frontend = Frontend::start(&executor, &[]);
    let svc = Service::new(frontend, executor);
    svc.wait_for_warm_pool();
    svc
}

#[tokio::test]
async fn without_cgroups_memory_and_processes_fall_back_to_rlimits() {
    require_root!();
    let svc = service_without_cgroups();
    let health = svc.health().await;
    assert_eq!(
        (
            &health.json["limits"]["memory"],
            &health.json["limits"]["processes"]
        ),
        (
            &json!("RLIMIT_AS per process (fallback: no memory cgroup)"),
            &json!(
                "RLIMIT_NPROC, counted per uid across all jobs, not per job (fallback: no pids cgroup)"
            ),
        ),
        "{}",
        health.text
    );
    let code = r#"
import json, resource
limits = {n: list(resource.getrlimit(getattr(resource, n))) for n in ["RLIMIT_AS", "RLIMIT_NPROC"]}
try:
    block = bytearray(200 << 20)
    allocated = "200 MiB"
except MemoryError:
    allocated = "MemoryError"
print(json.dumps({"limits": limits, "allocated": allocated}))
"#;
    let mib = 1u64 << 20;
    for (limits, want, allocated) in [
        // The defaults: 512 MiB and 64 processes, so 200 MiB fit.
        (
            json!(null),
            json!({ "RLIMIT_AS": [512 * mib, 512 * mib], "RLIMIT_NPROC": [64, 64] }),
            "200 MiB",
        ),
        (
            json!({ "memoryMb": 100, "maxProcesses": 20 }),
            json!({ "RLIMIT_AS": [100 * mib, 100 * mib], "RLIMIT_NPROC": [20, 20] }),
            "MemoryError",
        ),
    ] {
        let mut body = json!({ "code": code });
        if !limits.is_null() {
            body["limits"] = limits;
        }
        let out = svc.run(body).await;
        assert_eq!(out["exitCode"], 0, "{out:#}");
        let seen = stdout_json(&out);
        assert_eq!(seen["limits"], want, "{out:#}");
        assert_eq!(seen["allocated"], allocated, "{out:#}");
    }
}
