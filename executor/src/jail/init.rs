//! `jail-init`: the first program run inside a finished jail, as the job's user,
//! already under bwrap's seccomp filter.
//!
//! Its steps, in order: confine itself with landlock (inherited by Python and all it
//! starts); tell the executor the jail was set up (bwrap reports a failed setup and a
//! Python exiting 1 alike); close every descriptor but stdio and the launcher's two;
//! become Python.
//!
//! Usage: `jail-init [--ro PATH]... [--connect PORT]... -- PROGRAM [ARG]...`

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

use super::bwrap::READY_FD;
use super::landlock::{self, Rules};

/// The executor's argv[1] that selects this mode.
pub const SUBCOMMAND: &str = "jail-init";

/// Runs jail-init with the arguments after the subcommand. Returns only on failure,
/// with the process exit code; the executor then sees no ready byte and reports a
/// jail setup failure.
pub fn main(args: impl Iterator<Item = OsString>) -> i32 {
    let (rules, program, args) = match parse(args) {
        Ok(parsed) => parsed,
        Err(usage) => {
            eprintln!("jail-init: {usage}");
            return 127;
        }
    };
    if let Err(e) = landlock::apply(&rules) {
        eprintln!("jail-init: cannot apply landlock rules: {e}");
        return 127;
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
pub fn argv(read: &[PathBuf], connect: &[u16], program: &std::path::Path) -> Vec<OsString> {
    let mut argv = vec![OsString::from(SUBCOMMAND)];
    for path in read {
        argv.extend([OsString::from("--ro"), path.into()]);
    }
    for port in connect {
        argv.extend([OsString::from("--connect"), port.to_string().into()]);
    }
    argv.extend([OsString::from("--"), program.into()]);
    argv
}

type Parsed = (Rules, OsString, Vec<OsString>);

fn parse(mut args: impl Iterator<Item = OsString>) -> Result<Parsed, String> {
    let (mut read, mut connect) = (Vec::new(), Vec::new());
    loop {
        let arg = args
            .next()
            .ok_or("usage: jail-init [--ro PATH]... [--connect PORT]... -- PROGRAM [ARG]...")?;
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
            _ => return Err(format!("unexpected argument {arg:?}")),
        }
    }
    let program = args.next().ok_or("no program to run")?;
    Ok((Rules::for_jail(read, connect), program, args.collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_round_trips_through_parse() {
        let argv = argv(
            &[PathBuf::from("/opt/venv")],
            &[3128],
            std::path::Path::new("/usr/bin/python3"),
        );
        let mut rest = argv.into_iter().skip(1).collect::<Vec<_>>();
        rest.push("/sandbox/main.py".into());
        let (rules, program, args) = parse(rest.into_iter()).unwrap();
        assert_eq!(
            rules,
            Rules::for_jail([PathBuf::from("/opt/venv")], vec![3128])
        );
        assert_eq!(
            (program, args),
            ("/usr/bin/python3".into(), vec!["/sandbox/main.py".into()])
        );
    }

    #[test]
    fn malformed_arguments_are_refused() {
        let parse_strs = |args: &[&str]| parse(args.iter().map(OsString::from));
        assert!(parse_strs(&["--ro"]).is_err());
        assert!(parse_strs(&["--connect", "http", "--", "p"]).is_err());
        assert!(parse_strs(&["--bogus", "--", "p"]).is_err());
        assert!(parse_strs(&["--"]).is_err());
    }
}
