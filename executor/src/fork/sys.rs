//! The raw calls of a forked job's setup that neither std nor nix wraps safely.
//! They run in a child of the single-threaded template, so unlike `crate::sys`
//! they may allocate: no other thread can hold a lock across the fork.

use std::ffi::CStr;
use std::io;
use std::os::fd::{BorrowedFd, RawFd};

use crate::jail::seccomp::Insn;

/// `fork(2)`: `Some(pid)` in the parent, `None` in the child.
pub fn fork() -> io::Result<Option<libc::pid_t>> {
    // SAFETY: the caller is a child of the single-threaded template (or its own
    // child), so no lock or allocator state is held by another thread.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(None),
        pid => Ok(Some(pid)),
    }
}

/// Ends the process at once: no Python `atexit`, no buffered output of the
/// template flushed twice.
pub fn exit(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no process state that could be torn.
    unsafe { libc::_exit(code) }
}

/// Attaches the detached mount `fd` (from the executor's `open_tree`) at `target`.
pub fn move_mount(fd: RawFd, target: &CStr) -> io::Result<()> {
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
    // SAFETY: both strings are NUL-terminated and live across the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            fd,
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets soft and hard limit of `resource` to `value`.
pub fn setrlimit(resource: libc::__rlimit_resource_t, value: u64) -> io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: a pointer to a local rlimit, read by the kernel only.
    if unsafe { libc::setrlimit(resource, &limit) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Loads `program` as this process's newest seccomp filter (stacked on those it
/// has). Needs `no_new_privs` or `CAP_SYS_ADMIN`.
pub fn load_seccomp(program: &[Insn]) -> io::Result<()> {
    let filter: Vec<libc::sock_filter> = program
        .iter()
        .map(|i| libc::sock_filter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect();
    let len = u16::try_from(filter.len()).map_err(|_| io::ErrorKind::InvalidInput)?;
    let prog = libc::sock_fprog {
        len,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: prog points to `filter`, alive across the call; the kernel copies it.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &prog as *const libc::sock_fprog,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Names `fd`, a descriptor of the order that stays open as long as this process
/// runs, for one call.
pub fn borrow(fd: RawFd) -> BorrowedFd<'static> {
    // SAFETY: the order's descriptors are never closed before the process execs
    // or exits, except by close_range in the job, after the last use.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// Restores the default disposition of `signal`.
pub fn default_signal(signal: libc::c_int) -> io::Result<()> {
    // SAFETY: SIG_DFL installs no handler, so no code of ours can run in a signal
    // context.
    if unsafe { libc::signal(signal, libc::SIG_DFL) } == libc::SIG_ERR {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
