//! `jail-init`: the first program run inside a finished jail, as the job's user.
//!
//! It starts the network relay when the job may use the network, tells the
//! executor the jail was set up (bwrap reports a failed setup and a Python exiting 1
//! alike), closes every descriptor but stdio, and becomes Python. This is the place
//! for hardening that must be applied from inside the jail.

use std::ffi::{OsStr, OsString};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::bwrap::{PROXY_PORT, PROXY_SOCKET, READY_FD};

/// The executor's argv[1] that selects this mode.
pub const SUBCOMMAND: &str = "jail-init";
/// Before the program: `--egress-relay SOCAT` starts socat first.
pub const RELAY_FLAG: &str = "--egress-relay";
/// How long socat gets to start listening.
const RELAY_START: Duration = Duration::from_secs(5);

/// Runs jail-init with the arguments after the subcommand: optionally
/// `--egress-relay SOCAT`, then the interpreter and its arguments. Returns only on
/// failure, with the process exit code.
pub fn main(mut args: impl Iterator<Item = OsString>) -> i32 {
    let mut program = args.next();
    if program.as_deref() == Some(OsStr::new(RELAY_FLAG)) {
        let Some(socat) = args.next() else {
            return usage();
        };
        // socat outlives the exec below: it must not hold the readiness pipe, or
        // the executor would not see it close if the job failed to start.
        crate::sys::cloexec_fds_from(3);
        if let Err(why) = start_relay(&socat) {
            eprintln!("jail-init: cannot start the network relay: {why}");
            return 127;
        }
        program = args.next();
    }
    let Some(program) = program else {
        return usage();
    };
    if !crate::sys::write_ready_byte(READY_FD) {
        eprintln!("jail-init: the executor is gone");
        return 127;
    }
    crate::sys::close_fds_from(3);
    let err = Command::new(&program).args(args).exec();
    eprintln!("jail-init: cannot run {}: {err}", program.to_string_lossy());
    127
}

fn usage() -> i32 {
    eprintln!("jail-init: usage: jail-init [{RELAY_FLAG} SOCAT] PROGRAM [ARG...]");
    127
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
