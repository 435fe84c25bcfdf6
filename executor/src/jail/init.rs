//! `jail-init`: the first program run inside a finished jail, as the job's user.
//!
//! It tells the executor the jail was set up (bwrap reports a failed setup and a
//! Python exiting 1 alike), closes every descriptor but stdio, and becomes Python.
//! This is the place for hardening that must be applied from inside the jail.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::Command;

use super::bwrap::READY_FD;

/// The executor's argv[1] that selects this mode.
pub const SUBCOMMAND: &str = "jail-init";

/// Runs jail-init with the arguments after the subcommand: the interpreter, then its
/// arguments. Returns only on failure, with the process exit code.
pub fn main(mut args: impl Iterator<Item = OsString>) -> i32 {
    let Some(program) = args.next() else {
        eprintln!("jail-init: usage: jail-init PROGRAM [ARG...]");
        return 127;
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
