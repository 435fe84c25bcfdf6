//! Rich outputs: figures shown with `plt.show()` (or left open) come back as PNGs in
//! `displays`, and the value of a final expression as `result`, without changing
//! what the job prints, its tracebacks or its exit status.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use pysandbox_tests::{require_root, Service};
use serde_json::{json, Value};

/// The PNGs of a result's `displays`, decoded, with their width and height.
fn pngs(out: &Value) -> Vec<(Vec<u8>, u32, u32)> {
    out["displays"]
        .as_array()
        .unwrap_or_else(|| panic!("no displays array: {out}"))
        .iter()
        .map(|display| {
            assert_eq!(display["contentType"], "image/png", "{display}");
            let png = BASE64
                .decode(display["contentBase64"].as_str().expect("base64"))
                .expect("valid base64");
            assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
            assert_eq!(&png[12..16], b"IHDR", "no IHDR chunk first");
            let width = u32::from_be_bytes(png[16..20].try_into().expect("4 bytes"));
            let height = u32::from_be_bytes(png[20..24].try_into().expect("4 bytes"));
            (png, width, height)
        })
        .collect()
}

#[tokio::test]
async fn two_shows_give_two_distinct_pngs_and_nothing_else_changes() {
    require_root!();
    let svc = Service::start();
    let code = "import matplotlib.pyplot as plt\n\
                plt.plot([1, 2, 3], [1, 4, 9])\n\
                plt.show()\n\
                print('between')\n\
                plt.figure(figsize=(2, 2))\n\
                plt.bar(['a', 'b'], [3, 1])\n\
                plt.show()\n\
                print('after')\n";
    let out = svc.run(json!({"code": code, "returnFiles": true})).await;
    assert_eq!(out["stdout"], "between\nafter\n", "{out}");
    assert_eq!(out["stderr"], "", "{out}");
    assert_eq!(out["exitCode"], 0);
    assert_eq!(out["result"], Value::Null);
    let shown = pngs(&out);
    assert_eq!(shown.len(), 2, "{out}");
    assert_ne!(shown[0].0, shown[1].0);
    assert!(
        shown[0].1 > shown[1].1,
        "the second figure is the smaller one"
    );
    // Displays are not files: nothing of them in the work dir.
    assert_eq!(out["files"], json!([]), "{out}");
}

#[tokio::test]
async fn a_figure_left_open_is_returned_once() {
    require_root!();
    let svc = Service::start();
    let code = "import matplotlib.pyplot as plt\n\
                fig = plt.figure()\n\
                plt.plot([3, 2, 1])\n\
                fig.savefig('chart.png')\n";
    let out = svc.run(json!({"code": code, "returnFiles": true})).await;
    assert_eq!(pngs(&out).len(), 1, "{out}");
    let files: Vec<&str> = out["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(files, ["chart.png"], "only the saved file is a file");
}

#[tokio::test]
async fn the_last_expression_is_the_result() {
    require_root!();
    let svc = Service::start();
    let cases = [
        ("x = 21\nx * 2", json!("42")),
        ("x = 21\nx * 2\n# a comment\n", json!("42")),
        ("'text'", json!("'text'")),
        ("print('hi')", Value::Null),
        ("x = 1", Value::Null),
        ("None", Value::Null),
        ("def f():\n    return 5\nf()", json!("5")),
        ("if True:\n    7", Value::Null),
    ];
    for (code, result) in cases {
        let out = svc.run_code(code).await;
        assert_eq!(out["result"], result, "{code:?}: {out}");
        assert_eq!(out["exitCode"], 0, "{code:?}: {out}");
    }
    let out = svc.run_code("print('hi')\n3").await;
    assert_eq!(out["stdout"], "hi\n", "the value is never printed: {out}");
}

#[tokio::test]
async fn a_dataframe_as_the_last_line_gives_its_table() {
    require_root!();
    let svc = Service::start();
    let code = "import pandas as pd\n\
                df = pd.DataFrame({'a': [1, 2], 'b': [3.5, 4.5]})\n\
                df\n";
    let out = svc.run_code(code).await;
    assert_eq!(out["stdout"], "", "{out}");
    assert_eq!(out["result"], "   a    b\n0  1  3.5\n1  2  4.5", "{out}");
}

/// Evaluating the last expression on its own changes neither tracebacks nor the
/// exit status.
#[tokio::test]
async fn tracebacks_and_exit_status_do_not_change() {
    require_root!();
    let svc = Service::start();
    let out = svc.run_code("x = 1\n1 / 0").await;
    assert_eq!(out["exitCode"], 1);
    assert_eq!(out["result"], Value::Null);
    assert_eq!(
        out["stderr"],
        "Traceback (most recent call last):\n  File \"/sandbox/main.py\", line 2, in <module>\n    1 / 0\n    ~~^~~\nZeroDivisionError: division by zero\n",
        "{out}"
    );
    let out = svc.run_code("import sys\nsys.exit(3)").await;
    assert_eq!(
        (&out["exitCode"], &out["result"]),
        (&json!(3), &Value::Null)
    );
    let out = svc.run_code("x = (\n1 +").await;
    assert_eq!(out["exitCode"], 1);
    assert!(
        out["stderr"].as_str().unwrap().contains("SyntaxError"),
        "{out}"
    );
}

/// The channel is the job's own: whatever it writes there is checked like output.
/// Garbage ends it with a note, a forged oversized display is dropped, a forged
/// result is just its result.
#[tokio::test]
async fn what_a_job_forges_on_the_display_channel_is_contained() {
    require_root!();
    let svc = Service::builder()
        .executor_config_toml("max_display_bytes = 1000\nmax_displays_bytes = 2000")
        .start();
    let code = "import os\n\
                fd = os.open('/tmp/.pysandbox-display', os.O_WRONLY)\n\
                big = b'\\x89PNG\\r\\n\\x1a\\n' + b'x' * 5000\n\
                os.write(fd, b'D' + len(big).to_bytes(4, 'big') + big)\n\
                os.write(fd, b'R' + (3).to_bytes(4, 'big') + b'abc')\n\
                os.write(fd, b'Zjunk')\n\
                print('done')\n";
    let out = svc.run_code(code).await;
    assert_eq!(out["stdout"], "done\n");
    assert_eq!(out["displays"], json!([]), "{out}");
    assert_eq!(out["result"], "abc");
    let stderr = out["stderr"].as_str().unwrap();
    assert!(
        stderr.contains("[sandbox] displays: 1 not returned (over the display caps)\n"),
        "{stderr}"
    );
    assert!(
        stderr.contains("[sandbox] displays: the display channel carried something else"),
        "{stderr}"
    );
    assert_eq!(out["limitExceeded"], Value::Null, "{out}");
}

/// A display cap is reported when hit, and what fits still comes back.
#[tokio::test]
async fn displays_past_the_count_cap_are_counted() {
    require_root!();
    let svc = Service::builder()
        .executor_config_toml("max_displays = 1")
        .start();
    let code = "import matplotlib.pyplot as plt\n\
                for i in range(3):\n\
                \x20   plt.plot([i, i + 1])\n\
                \x20   plt.show()\n";
    let out = svc.run_code(code).await;
    assert_eq!(pngs(&out).len(), 1, "{out}");
    assert!(
        out["stderr"]
            .as_str()
            .unwrap()
            .ends_with("[sandbox] displays: 2 not returned (over the display caps)\n"),
        "{out}"
    );
}
