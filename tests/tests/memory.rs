//! Neither daemon's memory may grow with what jobs return: output and files travel
//! from the jail to the HTTP client in bounded chunks (the review's L7: eight small
//! requests once pushed the root executor to 1.18 GB and the frontend to 769 MB).

use pysandbox_tests::{peak_rss, require_root, Service};
use serde_json::json;

const MIB: u64 = 1 << 20;

/// The target: four jobs at once, each returning two 30 MiB files inline
/// and 4 MiB of invalid UTF-8 on both stdout and stderr: the executor stays within
/// 128 MiB, the frontend within 512 MiB.
#[tokio::test(flavor = "multi_thread")]
async fn what_jobs_return_does_not_grow_either_daemon() {
    require_root!();
    let svc = Service::builder()
        .executor_args(["--max-jobs", "4"])
        .frontend_env("MAX_BODY_BYTES", "4096")
        .start();
    let code = "import sys\n\
                for name in ('a.bin', 'b.bin'):\n\
                \x20   with open(name, 'wb') as f:\n\
                \x20       f.truncate(30 << 20)\n\
                junk = b'\\xff' * (4 << 20)\n\
                sys.stdout.buffer.write(junk)\n\
                sys.stderr.buffer.write(junk)\n";
    let body = json!({"code": code, "returnFiles": true, "limits": {"outputBytes": 4 << 20}});
    let jobs = (0..4).map(|_| svc.run(body.clone()));
    for out in futures::future::join_all(jobs).await {
        assert_eq!(out["exitCode"], 0, "{}", out["stderr"]);
        let files = out["files"].as_array().expect("files");
        let sizes: Vec<_> = files.iter().map(|f| f["size"].as_u64()).collect();
        assert_eq!(sizes, [Some(30 * MIB), Some(30 * MIB)]);
        for file in files {
            assert_eq!(
                file["contentBase64"].as_str().map(str::len),
                Some(40 * MIB as usize)
            );
        }
        for stream in ["stdout", "stderr"] {
            let text = out[stream].as_str().expect("text");
            assert_eq!(text.chars().count(), 4 << 20, "{stream}");
            assert!(text.chars().all(|c| c == '\u{fffd}'), "{stream}");
        }
    }
    let executor = peak_rss(svc.executor.pid().expect("the executor runs"));
    let frontend = peak_rss(svc.frontend.pid().expect("the frontend runs"));
    eprintln!(
        "peak RSS: executor {} MiB, frontend {} MiB",
        executor / MIB,
        frontend / MIB
    );
    assert!(executor <= 128 * MIB, "executor peak RSS {executor} bytes");
    assert!(frontend <= 512 * MIB, "frontend peak RSS {frontend} bytes");
}
