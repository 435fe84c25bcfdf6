//! The fork server (issue 13, `docs/fork-server.md`): jobs forked from a template
//! that already imported numpy, pandas and matplotlib, each in fresh namespaces of
//! its own. What must hold for every forked job is a test here; the whole suite
//! also runs with every job forked (`PYSANDBOX_TEST_FORK_SERVER=1`, in CI).

use pysandbox_tests::{require_root, stdout_json, Service};
use serde_json::json;

fn forking() -> Service {
    Service::builder()
        .executor_args(["--fork-server", "true"])
        .start()
}

#[tokio::test]
async fn a_job_is_forked_from_the_template_and_runs_as_a_script_would() {
    require_root!();
    let svc = forking();
    let out = svc.run_code("import sys\nprint(2 + 2)\nprint('pandas' in sys.modules, file=sys.stderr)\nsys.exit(3)").await;
    assert_eq!(out["stdout"], "4\n", "{out:#}");
    assert_eq!(out["stderr"], "True\n", "{out:#}");
    assert_eq!(out["exitCode"], 3, "{out:#}");
    assert_eq!(svc.executor.jails_started(), ["forked"]);
}
