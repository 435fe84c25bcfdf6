//! Each isolation layer of README's "Layers of isolation", proven on its own.
//!
//! In a normal jail one refusal usually comes from several layers at once (a write to
//! `/usr` fails on the read-only mount before landlock is asked; a connect fails at
//! landlock before the network namespace matters), so a passing probe proves only
//! that *something* refused. Here a test build of the executor leaves layers out
//! (`PYSANDBOX_TEST_DROP_LAYER`, see `executor/src/jail/drop_layer.rs`; debug builds
//! only): each test shows a layer holding with the others that could answer for it
//! left out, and a control shows the probe succeeds once that layer is left out too,
//! so the refusal really is that layer's.

use std::collections::BTreeMap;
use std::fs;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener};
use std::time::Duration;

use pysandbox_tests::{
    py_concat, random_hex, require_root, sleep_needle, stdout_json, wait_until_async, Service,
    PY_OUTCOME, SANDBOX_USER,
};
use serde_json::{json, Value};

/// The executor variable of the test-build switch.
const DROP_LAYER: &str = "PYSANDBOX_TEST_DROP_LAYER";

/// A service whose jails leave out `dropped` (a comma-separated list of layers, or
/// empty for none); checks that the executor says so loudly.
/// A service whose jobs run in jails of their own (bwrap's), with `dropped` left
/// out of them. The fork server stays off: with layers dropped it would be off
/// anyway, and the control runs must take the same path as the runs they control
/// (`fork.rs` proves the layers of forked jobs).
fn service(dropped: &str) -> Service {
    let svc = Service::builder()
        .executor_env(DROP_LAYER, dropped)
        .executor_args(["--fork-server", "false"])
        .start();
    assert_eq!(
        svc.executor.log().contains("TEST BUILD SWITCH"),
        !dropped.is_empty(),
        "the executor must warn exactly when layers are left out:\n{}",
        svc.executor.log().text()
    );
    svc
}

/// Python the probes share, after [`PY_OUTCOME`]: raw syscalls (`check`) and
/// `in_child(f)`, `outcome(f)` in a forked child.
const HELPERS: &str = r#"
import ctypes, errno, json, os, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

def check(ret):
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret

def in_child(f):
    """outcome(f) in a forked child, so that what f changes (namespaces) stays there."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            result = f()
        except BaseException as e:
            result = "exception %r" % (e,)
        os.write(w, json.dumps(result).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 4096):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return json.loads(data) if data else "no answer"
"#;

/// Runs `PY_OUTCOME`, `HELPERS` then `code` (which prints one JSON document) and
/// returns it.
async fn probe(svc: &Service, code: &str) -> Value {
    let out = svc
        .run_code(&format!("{PY_OUTCOME}\n{HELPERS}\n{code}"))
        .await;
    assert_eq!(
        (&out["exitCode"], &out["stderr"]),
        (&json!(0), &json!("")),
        "the probe failed: {out:#}"
    );
    stdout_json(&out)
}

// ---------------------------------------------------------------------------
// landlock
// ---------------------------------------------------------------------------

/// Writes the mounts allow and only landlock refuses: `/proc` is a fresh, writable
/// procfs, and the job owns its own `/proc/self/comm` (what the host's `ps` shows as
/// its name: a job could pass itself off as `sshd`) and `/proc/self/oom_score_adj`.
/// Landlock grants `/proc` read access only, so both fail with EACCES; with
/// seccomp and the network namespace left out too, nothing else stands in the way.
const LANDLOCK_WRITES: &str = r#"
def write(path, data):
    def f():
        with open(path, "w") as file:
            file.write(data)
    return f
print(json.dumps({
    "/proc/self/comm": outcome(write("/proc/self/comm", "sshd")),
    "/proc/self/oom_score_adj": outcome(write("/proc/self/oom_score_adj", "1000")),
    "/work/x (control)": outcome(write("/work/x", "x")),
}))
"#;

#[tokio::test]
async fn landlock_alone_stops_writes_the_mounts_allow() {
    require_root!();
    let svc = service("seccomp,netns");
    assert_eq!(
        probe(&svc, LANDLOCK_WRITES).await,
        json!({
            "/proc/self/comm": "EACCES",
            "/proc/self/oom_score_adj": "EACCES",
            "/work/x (control)": "ok",
        })
    );
    // Control: without landlock the same writes go through.
    let svc = service("landlock");
    assert_eq!(
        probe(&svc, LANDLOCK_WRITES).await,
        json!({
            "/proc/self/comm": "ok",
            "/proc/self/oom_score_adj": "ok",
            "/work/x (control)": "ok",
        })
    );
}

// ---------------------------------------------------------------------------
// the network namespace, and landlock's network rules
// ---------------------------------------------------------------------------

/// A TCP listener on the host's loopback and an abstract Unix socket in the host's
/// network namespace, both held by the test for as long as it runs.
struct HostServices {
    tcp: std::net::TcpListener,
    abstract_name: String,
    _abstract: UnixListener,
}

impl HostServices {
    fn start() -> HostServices {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let abstract_name = format!("pysandbox-layers-{}", random_hex(8));
        let addr = SocketAddr::from_abstract_name(&abstract_name).expect("abstract address");
        let listener = UnixListener::bind_addr(&addr).expect("bind abstract socket");
        HostServices {
            tcp,
            abstract_name,
            _abstract: listener,
        }
    }

    /// Python printing the outcome of connecting to each.
    fn connect_code(&self) -> String {
        let port = self.tcp.local_addr().expect("local address").port();
        format!(
            r#"
def connect(family, addr):
    def f():
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(10)
        try:
            s.connect(addr)
        finally:
            s.close()
    return f
print(json.dumps({{
    "host loopback TCP": outcome(connect(socket.AF_INET, ("127.0.0.1", {port}))),
    "host abstract socket": outcome(connect(socket.AF_UNIX, "\0" + {name:?})),
}}))
"#,
            name = self.abstract_name
        )
    }
}

/// With landlock left out, the job's own network namespace still hides the host's
/// loopback and abstract sockets: nothing listens there, ECONNREFUSED.
#[tokio::test]
async fn the_network_namespace_alone_stops_the_connect() {
    require_root!();
    let host = HostServices::start();
    let svc = service("landlock");
    assert_eq!(
        probe(&svc, &host.connect_code()).await,
        json!({
            "host loopback TCP": "ECONNREFUSED",
            "host abstract socket": "ECONNREFUSED",
        })
    );
    // Control: without the namespace too, both host services answer. (Safe on CI:
    // the services are the test's own.)
    let svc = service("landlock,netns");
    assert_eq!(
        probe(&svc, &host.connect_code()).await,
        json!({
            "host loopback TCP": "ok",
            "host abstract socket": "ok",
        })
    );
}

/// With the network namespace left out, landlock alone refuses the TCP connect
/// (EACCES, no connect right for any port) and the abstract socket outside its
/// scope (EPERM, ABI 6 scoping).
#[tokio::test]
async fn landlock_alone_stops_the_connect() {
    require_root!();
    let host = HostServices::start();
    let svc = service("netns,seccomp");
    assert_eq!(
        probe(&svc, &host.connect_code()).await,
        json!({
            "host loopback TCP": "EACCES",
            "host abstract socket": "EPERM",
        })
    );
}

// ---------------------------------------------------------------------------
// seccomp
// ---------------------------------------------------------------------------

/// unshare and clone with namespace flags, and a mount in the namespace that
/// unshare would have made. Landlock would refuse the mount on its own, so it is
/// left out to leave seccomp alone.
const NAMESPACE_CALLS: &str = r#"
CLONE_NEWNS, CLONE_NEWUSER, SIGCHLD = 0x20000, 0x10000000, 17
def unshare_and_mount():
    check(libc.syscall(272, CLONE_NEWUSER | CLONE_NEWNS))
    check(libc.mount(b"none", b"/tmp", b"tmpfs", 0, None))
def clone_newuser():
    pid = check(libc.syscall(56, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0))
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
print(json.dumps({
    "unshare(CLONE_NEWUSER)": in_child(lambda: outcome(lambda: check(libc.syscall(272, CLONE_NEWUSER)))),
    "unshare(CLONE_NEWUSER|CLONE_NEWNS) + mount(tmpfs)": in_child(lambda: outcome(unshare_and_mount)),
    "clone(CLONE_NEWUSER)": in_child(lambda: outcome(clone_newuser)),
}))
"#;

#[tokio::test]
async fn seccomp_alone_stops_the_namespace_calls() {
    require_root!();
    let svc = service("landlock");
    assert_eq!(
        probe(&svc, NAMESPACE_CALLS).await,
        json!({
            "unshare(CLONE_NEWUSER)": "EPERM",
            "unshare(CLONE_NEWUSER|CLONE_NEWNS) + mount(tmpfs)": "EPERM",
            "clone(CLONE_NEWUSER)": "EPERM",
        })
    );
    // Control: without the filter an unprivileged job makes a user namespace and
    // mounts in it. (Safe on CI: unprivileged user namespaces are an ordinary
    // kernel feature; the mount stays in the job's own namespace.)
    let svc = service("landlock,seccomp");
    assert_eq!(
        probe(&svc, NAMESPACE_CALLS).await,
        json!({
            "unshare(CLONE_NEWUSER)": "ok",
            "unshare(CLONE_NEWUSER|CLONE_NEWNS) + mount(tmpfs)": "ok",
            "clone(CLONE_NEWUSER)": "ok",
        })
    );
}

// ---------------------------------------------------------------------------
// the host uid
// ---------------------------------------------------------------------------

/// `Uid:`, `Gid:` and the capability sets of a host process, as the host sees them,
/// and its user namespace (`userns`).
fn host_identity(pid: u32) -> Option<BTreeMap<String, String>> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let userns = fs::read_link(format!("/proc/{pid}/ns/user")).ok()?;
    let mut identity: BTreeMap<String, String> = status
        .lines()
        .filter_map(|line| line.split_once(':'))
        .filter(|(key, _)| {
            matches!(
                *key,
                "Uid" | "Gid" | "CapInh" | "CapPrm" | "CapEff" | "CapBnd" | "CapAmb"
            )
        })
        .map(|(key, value)| {
            let words: Vec<&str> = value.split_whitespace().collect();
            (key.to_owned(), words.join(" "))
        })
        .collect();
    identity.insert("userns".into(), userns.to_string_lossy().into_owned());
    Some(identity)
}

/// How many user namespaces the processes of `identities` live in.
fn user_namespaces(identities: &BTreeMap<u32, BTreeMap<String, String>>) -> usize {
    let namespaces: std::collections::BTreeSet<&String> =
        identities.values().map(|id| &id["userns"]).collect();
    namespaces.len()
}

/// Every process of the running jobs: the executor's bwrap processes and all their
/// descendants.
fn jail_process_tree(svc: &Service) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let ppid = status.lines().find_map(|l| l.strip_prefix("PPid:"))?;
            Some((pid, ppid.trim().parse().ok()?))
        })
        .collect();
    let mut tree = svc.executor.jail_processes();
    let mut at = 0;
    while at < tree.len() {
        let parent = tree[at];
        tree.extend(
            parents
                .iter()
                .filter(|(_, p)| *p == parent)
                .map(|(c, _)| *c),
        );
        at += 1;
    }
    tree
}

/// The sandbox user's uid and gid on this host.
fn sandbox_ids() -> (u32, u32) {
    let user = nix::unistd::User::from_name(SANDBOX_USER)
        .expect("look up the sandbox user")
        .expect("the harness creates the sandbox user");
    (user.uid.as_raw(), user.gid.as_raw())
}

/// A job that keeps a `sleep` running (in a child that made a user namespace of
/// its own when the filter allows it: what a job that got out of bwrap's namespaces
/// would look like to the host) and the host's view of every process of its jail,
/// by pid, taken while it runs.
async fn identities_while_running(svc: &Service) -> (BTreeMap<u32, BTreeMap<String, String>>, u32) {
    let needle = sleep_needle("876.5");
    let code = format!(
        r#"
import ctypes, os, subprocess
libc = ctypes.CDLL(None, use_errno=True)
pid = os.fork()
if pid == 0:
    libc.unshare(0x10000000)  # CLONE_NEWUSER; refused under the filter, and that is fine
    os.execvp("sleep", ["sleep", {needle}])
os.waitpid(pid, 0)
"#,
        needle = py_concat(&needle)
    );
    let run = svc.run(json!({ "code": code, "timeoutMs": 60000 }));
    let watch = async {
        let seen = wait_until_async(Duration::from_secs(30), || {
            !pysandbox_tests::host_processes_matching(&needle).is_empty()
        })
        .await;
        assert!(seen, "the job's sleep never showed on the host");
        let identities = jail_process_tree(svc)
            .into_iter()
            .filter_map(|pid| Some((pid, host_identity(pid)?)))
            .collect();
        let sleeps = pysandbox_tests::host_processes_matching(&needle);
        for &pid in &sleeps {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        (identities, sleeps[0])
    };
    let (out, seen) = tokio::join!(run, watch);
    assert_eq!(out["signal"], json!(null), "{out:#}");
    seen
}

/// The capability sets of `/proc/<pid>/status`.
const EVERY_SET: [&str; 5] = ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"];

/// Processes in `identities` whose uid or gid (real, effective, saved, filesystem)
/// on the host is not `(uid, gid)`, or that hold a capability in one of `sets`.
fn offenders(
    identities: &BTreeMap<u32, BTreeMap<String, String>>,
    (uid, gid): (u32, u32),
    sets: &[&str],
) -> Vec<String> {
    let ids = |id: u32| [id; 4].map(|i| i.to_string()).join(" ");
    let zero = "0000000000000000";
    identities
        .iter()
        .filter(|(_, id)| {
            id["Uid"] != ids(uid)
                || id["Gid"] != ids(gid)
                || sets.iter().any(|set| id[*set] != zero)
        })
        .map(|(pid, id)| format!("{pid}: {id:?}"))
        .collect()
}

/// From the host, every process of a running jail — bwrap, its pid 1, Python, and
/// what Python starts — is the sandbox uid in all four ids and holds no capability.
/// With seccomp and landlock left out, the job's child makes a user namespace of its
/// own (a step out of bwrap's); on the host it still is the sandbox uid with no
/// capability, and that is all an escapee would be.
#[tokio::test]
async fn the_host_uid_alone_holds_what_leaves_the_namespaces() {
    require_root!();
    let sandbox = sandbox_ids();
    let svc = service("");
    let (seen, _) = identities_while_running(&svc).await;
    assert!(seen.len() >= 4, "too few jail processes found: {seen:?}");
    assert_eq!(
        offenders(&seen, sandbox, &EVERY_SET),
        Vec::<String>::new(),
        "{seen:#?}"
    );
    // bwrap in the host's user namespace, the jail in bwrap's: the sleep's unshare
    // was refused.
    assert_eq!(user_namespaces(&seen), 2, "{seen:#?}");

    let svc = service("seccomp,landlock");
    let (mut seen, sleep) = identities_while_running(&svc).await;
    assert_eq!(
        user_namespaces(&seen),
        3,
        "the sleep made its own: {seen:#?}"
    );
    // A new user namespace starts with a full bounding set, which counts only there.
    let escapee = BTreeMap::from([(sleep, seen.remove(&sleep).expect("the sleep"))]);
    let no_bounding: Vec<&str> = EVERY_SET.into_iter().filter(|s| *s != "CapBnd").collect();
    assert_eq!(
        offenders(&escapee, sandbox, &no_bounding),
        Vec::<String>::new()
    );
    assert_eq!(
        offenders(&seen, sandbox, &EVERY_SET),
        Vec::<String>::new(),
        "{seen:#?}"
    );

    // Control: with the uid layer left out (jails run as the frontend's uid), the
    // same check catches every process.
    let svc = service("uid");
    let (seen, _) = identities_while_running(&svc).await;
    assert_eq!(
        offenders(&seen, sandbox, &EVERY_SET).len(),
        seen.len(),
        "every jail process runs as the frontend's uid, and the check must say so: {seen:#?}"
    );
}
