//! `jail-init`: the first program run inside a finished jail, as the job's user,
//! already under bwrap's seccomp filter.
//!
//! Its steps, in order: start the network relay when the job may use the network
//! (socat, outside the landlock domain below, so the job can neither signal nor
//! trace it); confine itself with landlock (inherited by Python and all it starts);
//! tell the executor the jail was set up (bwrap reports a failed setup and a Python
//! exiting 1 alike); close every descriptor but stdio and the launcher's two;
//! become Python.
//!
//! Usage: `jail-init [--ro PATH]... [--connect PORT]... [--egress-relay SOCAT] --
//! PROGRAM [ARG]...`

use std::ffi::{OsStr, OsString};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::bwrap::{HANDOFF_FD, PROXY_PORT, PROXY_SOCKET, READY_FD};
use super::landlock::{self, Rules};

/// The executor's argv[1] that selects this mode.
pub const SUBCOMMAND: &str = "jail-init";
/// `--egress-relay SOCAT` starts socat before the program.
pub const RELAY_FLAG: &str = "--egress-relay";
/// How long socat gets to start listening.
const RELAY_START: Duration = Duration::from_secs(5);

/// Runs jail-init with the arguments after the subcommand. Returns only on failure,
/// with the process exit code; the executor then sees no ready byte and reports a
/// jail setup failure.
pub fn main(args: impl Iterator<Item = OsString>) -> i32 {
    let Parsed {
        rules,
        landlock,
        relay,
        program,
        args,
    } = match parse(args) {
        Ok(parsed) => parsed,
        Err(usage) => {
            eprintln!("jail-init: {usage}");
            return 127;
        }
    };
    if let Some(socat) = relay {
        // socat outlives the exec below: it must hold neither the readiness pipe
        // (the executor would not see it close if the job failed to start) nor the
        // hand-off pipe. The launcher needs both back afterwards.
        crate::sys::cloexec_fds_from(HANDOFF_FD);
        let started = start_relay(&socat);
        crate::sys::keep_across_exec(HANDOFF_FD);
        crate::sys::keep_across_exec(READY_FD);
        if let Err(why) = started {
            eprintln!("jail-init: cannot start the network relay: {why}");
            return 127;
        }
    }
    if landlock {
        if let Err(e) = landlock::apply(&rules) {
            eprintln!("jail-init: cannot apply landlock rules: {e}");
            return 127;
        }
    }
    if !crate::sys::write_ready_byte(READY_FD) {
        eprintln!("jail-init: the executor is gone");
        return 127;
    }
    crate::sys::close_fds_from(READY_FD + 1);
    let err = Command::new(&program).args(args).exec();
    eprintln!("jail-init: cannot run {}: {err}", program.to_string_lossy());
    127
}

/// The argv a jail runs `program` with; the inverse of [`parse`].
pub fn argv(
    read: &[PathBuf],
    connect: &[u16],
    relay: Option<&Path>,
    program: &Path,
) -> Vec<OsString> {
    let mut argv = vec![OsString::from(SUBCOMMAND)];
    for path in read {
        argv.extend([OsString::from("--ro"), path.into()]);
    }
    for port in connect {
        argv.extend([OsString::from("--connect"), port.to_string().into()]);
    }
    if let Some(socat) = relay {
        argv.extend([OsString::from(RELAY_FLAG), socat.into()]);
    }
    argv.extend([OsString::from("--"), program.into()]);
    argv
}

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
struct Parsed {
    rules: Rules,
    /// Always true but in a test build told to leave landlock out.
    landlock: bool,
    relay: Option<OsString>,
    program: OsString,
    args: Vec<OsString>,
}

fn parse(mut args: impl Iterator<Item = OsString>) -> Result<Parsed, String> {
    let (mut read, mut connect, mut relay) = (Vec::new(), Vec::new(), None);
    #[allow(unused_mut, reason = "only a test build's switch clears it")]
    let mut landlock = true;
    loop {
        let arg = args.next().ok_or(
            "usage: jail-init [--ro PATH]... [--connect PORT]... [--egress-relay SOCAT] -- PROGRAM [ARG]...",
        )?;
        match arg.to_str() {
            Some("--") => break,
            Some("--ro") => read.push(PathBuf::from(args.next().ok_or("--ro needs a path")?)),
            Some("--connect") => {
                let port = args.next().ok_or("--connect needs a port")?;
                let port = port
                    .to_str()
                    .and_then(|p| p.parse().ok())
                    .ok_or("--connect needs a port number")?;
                connect.push(port);
            }
            #[cfg(debug_assertions)]
            Some(super::drop_layer::NO_LANDLOCK_FLAG) => landlock = false,
            Some(RELAY_FLAG) => {
                relay = Some(args.next().ok_or("--egress-relay needs socat's path")?)
            }
            _ => return Err(format!("unexpected argument {arg:?}")),
        }
    }
    let program = args.next().ok_or("no program to run")?;
    Ok(Parsed {
        rules: Rules::for_jail(read, connect),
        landlock,
        relay,
        program,
        args: args.collect(),
    })
}

/// Starts socat relaying 127.0.0.1:3128 to the proxy's socket, and waits until it
/// listens, so the job's first request cannot find the port closed.
///
/// socat is a child of this process, and so of Python after the exec, inside the
/// jail's pid namespace: when the job's process ends, bwrap's pid 1 exits and the
/// kernel kills socat with the rest of the namespace.
fn start_relay(socat: &OsStr) -> Result<(), String> {
    let mut child = Command::new(socat)
        .arg(format!(
            "TCP-LISTEN:{PROXY_PORT},bind=127.0.0.1,fork,reuseaddr"
        ))
        .arg(format!("UNIX-CONNECT:{PROXY_SOCKET}"))
        // Its complaints (a client that hung up early) are not the job's output.
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{}: {e}", socat.to_string_lossy()))?;
    let deadline = Instant::now() + RELAY_START;
    loop {
        if std::fs::read_to_string("/proc/net/tcp").is_ok_and(|t| listens(&t, PROXY_PORT)) {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("socat exited ({status})"));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err(format!("socat did not listen within {RELAY_START:?}"));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Whether `/proc/net/tcp` text shows a socket listening on 127.0.0.1:`port`.
/// Reading the table, rather than connecting, leaves the proxy a connection short
/// of noise (proc(5): addresses are the network-order bytes printed as a
/// native-endian hex number; state 0A is LISTEN).
fn listens(table: &str, port: u16) -> bool {
    let local = format!("{:08X}:{port:04X}", u32::from_ne_bytes([127, 0, 0, 1]));
    table.lines().skip(1).any(|line| {
        let mut fields = line.split_whitespace();
        fields.nth(1) == Some(local.as_str()) && fields.nth(1) == Some("0A")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_round_trips_through_parse() {
        let argv = argv(
            &[PathBuf::from("/opt/venv")],
            &[3128],
            Some(Path::new("/usr/bin/socat")),
            Path::new("/usr/bin/python3"),
        );
        let mut rest = argv.into_iter().skip(1).collect::<Vec<_>>();
        rest.push("/sandbox/main.py".into());
        let parsed = parse(rest.into_iter()).unwrap();
        assert_eq!(
            parsed,
            Parsed {
                rules: Rules::for_jail([PathBuf::from("/opt/venv")], vec![3128]),
                landlock: true,
                relay: Some("/usr/bin/socat".into()),
                program: "/usr/bin/python3".into(),
                args: vec!["/sandbox/main.py".into()],
            }
        );
    }

    #[test]
    fn malformed_arguments_are_refused() {
        let parse_strs = |args: &[&str]| parse(args.iter().map(OsString::from));
        assert!(parse_strs(&["--ro"]).is_err());
        assert!(parse_strs(&["--connect", "http", "--", "p"]).is_err());
        assert!(parse_strs(&["--egress-relay"]).is_err());
        assert!(parse_strs(&["--bogus", "--", "p"]).is_err());
        assert!(parse_strs(&["--"]).is_err());
    }

    #[test]
    fn finds_the_listening_relay_in_proc_net_tcp() {
        let lo = format!("{:08X}", u32::from_ne_bytes([127, 0, 0, 1]));
        let table = format!(
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
             0: {lo}:0C38 00000000:0000 0A 00000000:00000000 00:00000000 00000000 65534        0 1 1 0 100 0 0 10 0\n"
        );
        assert!(listens(&table, 3128));
        assert!(!listens(&table, 3129));
        let connected = table.replace(" 0A ", " 01 ");
        assert!(!listens(&connected, 3128));
        assert!(!listens("header only\n", 3128));
    }
}
