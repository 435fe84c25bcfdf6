//! `pysandbox-executor check`: whether this host can run jails as configured, one
//! line per requirement, each failure with a fix. The last check runs a real job
//! through the same code path as the server, in a state dir of its own.

use std::path::Path;
use std::sync::Arc;

use pysandbox_shared::{JobLimits, JobSpec, Response, Stream};

use crate::cgroup::{self, Cgroups, Controller, Version};
use crate::config::Config;
use crate::error::chain;
use crate::jail::{Current, Jail};
use crate::job::{Resolved, Runner};
use crate::workdir;

/// One requirement's outcome.
struct Line {
    name: &'static str,
    required: bool,
    outcome: Result<String, String>,
}

/// Prints the report; true when every required check passed.
pub async fn run(config: &Config) -> bool {
    let mut lines = vec![
        Line {
            name: "root",
            required: true,
            outcome: if nix::unistd::geteuid().is_root() {
                Ok("running as root".into())
            } else {
                Err("the executor must run as root (it switches jobs to the sandbox uid, mounts their tmpfs and creates their cgroups)".into())
            },
        },
        file_line("bwrap", true, &config.bwrap, "apt-get install bubblewrap"),
        file_line("python", true, &config.python, "install python3, or set `python` to an interpreter under /usr or ro_binds"),
        file_line(
            "fork library",
            false,
            &config.fork_library,
            "install libpysandbox_fork.so (README, Install as a service), or set fork_server = false; without it every job starts a jail of its own",
        ),
        file_line(
            "socat",
            config.network.policy.allows_anything(),
            &config.network.socat,
            "apt-get install socat (jobs that may use the network relay through it)",
        ),
        Line {
            name: "user namespaces",
            required: true,
            outcome: match std::fs::read_to_string("/proc/sys/user/max_user_namespaces") {
                Ok(n) if n.trim() != "0" => Ok(format!("max_user_namespaces = {}", n.trim())),
                _ => Err("enable them: sysctl user.max_user_namespaces=15000 (and kernel.unprivileged_userns_clone=1 on older Debian kernels)".into()),
            },
        },
        Line {
            name: "seccomp",
            required: false,
            outcome: match std::fs::read_to_string("/proc/sys/kernel/seccomp/actions_avail") {
                Ok(actions) => Ok(format!("available ({})", actions.trim())),
                Err(_) => Err("the kernel lacks seccomp filters (CONFIG_SECCOMP_FILTER)".into()),
            },
        },
        Line {
            name: "landlock",
            required: false,
            outcome: match crate::sys::landlock_abi() {
                Some(abi) => Ok(format!("ABI {abi}")),
                None => Err("not available: boot with lsm=...,landlock (kernel 5.13+); jobs stay confined by namespaces".into()),
            },
        },
    ];
    // A state dir of its own, so the check never touches a running executor's jobs;
    // its parent must be traversable by the sandbox uid, as the executor makes it.
    let scratch = config.state_dir.join("check");
    let _ = std::fs::create_dir_all(&config.state_dir);
    let _ = std::fs::set_permissions(
        &config.state_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o711),
    );
    let cgroups = Cgroups::detect(&cgroup::instance_name(&scratch));
    lines.push(Line {
        name: "cgroups",
        required: false,
        outcome: match &cgroups {
            Some(c) => Ok(describe(c)),
            None => Err("no memory and pids controllers: limits fall back to RLIMIT_AS and a per-uid RLIMIT_NPROC; use cgroup v2 with Delegate=yes, or mount the v1 memory and pids controllers".into()),
        },
    });
    lines.push(Line {
        name: "jail",
        required: true,
        outcome: run_job(config, &scratch, cgroups).await,
    });
    let _ = std::fs::remove_dir_all(&scratch);

    let mut ok = true;
    for line in &lines {
        let (mark, text) = match &line.outcome {
            Ok(text) => ("ok  ", text.as_str()),
            Err(fix) if line.required => {
                ok = false;
                ("FAIL", fix.as_str())
            }
            Err(fix) => ("warn", fix.as_str()),
        };
        println!("{mark} {:<16} {text}", line.name);
    }
    ok
}

fn file_line(name: &'static str, required: bool, path: &Path, fix: &str) -> Line {
    let outcome = match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => Ok(path.display().to_string()),
        _ => Err(format!("{} not found: {fix}", path.display())),
    };
    Line {
        name,
        required,
        outcome,
    }
}

fn describe(cgroups: &Cgroups) -> String {
    let version = match cgroups.version() {
        Version::V1 => "v1",
        Version::V2 => "v2",
    };
    let names: Vec<_> = [
        (Controller::Memory, "memory"),
        (Controller::Pids, "pids"),
        (Controller::Cpu, "cpu"),
        (Controller::CpuAcct, "cpuacct"),
    ]
    .into_iter()
    .filter(|(c, _)| cgroups.has(*c))
    .map(|(_, name)| name)
    .collect();
    format!("{version}: {}", names.join(", "))
}

/// Runs `print(2 + 2)` in a real jail.
async fn run_job(
    config: &Config,
    scratch: &Path,
    cgroups: Option<Cgroups>,
) -> Result<String, String> {
    let mut config = config.clone();
    config.state_dir = scratch.to_owned();
    workdir::prepare(&config.state_dir).map_err(|e| chain(&e))?;
    let jail = Jail::new(&config).map_err(|e| chain(&e))?;
    let runner = Runner::new(
        &config,
        Arc::new(Current::new(jail)),
        None,
        cgroups,
        Default::default(),
    );
    let spec = JobSpec {
        request_id: "check".into(),
        code: "print(2 + 2)".into(),
        stdin: None,
        timeout_ms: Some(10_000),
        limits: JobLimits::default(),
        files: Vec::new(),
        collect_files: false,
        network: None,
    };
    let resolved: Resolved = runner.resolve(&spec).map_err(|e| e.to_string())?;
    let (frames, mut received) = tokio::sync::mpsc::channel(16);
    let run = async {
        let ran = runner.run(&spec, resolved, None, &frames).await;
        drop(frames);
        ran
    };
    let gather = async {
        let (mut stdout, mut stderr, mut end) = (Vec::new(), Vec::new(), None);
        while let Some(frame) = received.recv().await {
            match frame {
                Response::Output(chunk) if chunk.stream == Stream::Stdout => {
                    stdout.extend(chunk.data)
                }
                Response::Output(chunk) => stderr.extend(chunk.data),
                Response::Ended(ended) => end = Some(ended),
                _ => {}
            }
        }
        (stdout, stderr, end)
    };
    let (ran, (stdout, stderr, end)) = tokio::join!(run, gather);
    let exit_code = end.as_ref().and_then(|end| end.exit_code);
    match ran {
        Ok(_) if stdout == b"4\n" && exit_code == Some(0) => Ok(format!(
            "print(2 + 2) ran as uid {} in {} ms",
            config.sandbox_uid,
            end.map_or(0, |end| end.usage.wall_ms)
        )),
        Ok(_) => Err(format!(
            "the job ran but printed {:?} / {:?} (exit {exit_code:?})",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr),
        )),
        Err(e) => Err(format!(
            "{} — check the lines above; bwrap must be able to create user namespaces as uid {}",
            chain(&e),
            config.sandbox_uid
        )),
    }
}
