//! The raw calls of a forked job's setup that neither std nor nix wraps safely.
//! They run in a child of the single-threaded template, so unlike `crate::sys`
//! they may allocate: no other thread can hold a lock across the fork.

use std::ffi::CStr;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};

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
    let filter = sock_filter(program);
    let prog = sock_fprog(&filter)?;
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

fn sock_filter(program: &[Insn]) -> Vec<libc::sock_filter> {
    program
        .iter()
        .map(|i| libc::sock_filter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect()
}

/// The program header the kernel takes, pointing into `filter`.
fn sock_fprog(filter: &[libc::sock_filter]) -> io::Result<libc::sock_fprog> {
    Ok(libc::sock_fprog {
        len: u16::try_from(filter.len()).map_err(|_| io::ErrorKind::InvalidInput)?,
        filter: filter.as_ptr().cast_mut(),
    })
}

/// A stack for a child that shares this process's memory, never freed (the child
/// runs on it until it dies): its top, 16-byte aligned as the ABI wants.
fn leaked_stack_top(size: usize) -> *mut libc::c_void {
    let stack: &'static mut [u8] = Vec::leak(vec![0u8; size]);
    let top = stack.as_mut_ptr_range().end;
    top.wrapping_sub(top as usize % 16).cast()
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

/// Size of pid 1's stack: it calls three libc functions in a loop.
const REAPER_STACK: usize = 64 << 10;

/// Starts the job's pid 1 (the caller must have unshared its pid namespace): a
/// process sharing the caller's memory (`CLONE_VM`) that only reaps orphans, on a
/// stack of its own, until it is killed. Sharing the memory saves copying the
/// template's page tables once more per job.
pub fn spawn_reaper() -> io::Result<libc::pid_t> {
    let top = leaked_stack_top(REAPER_STACK);
    // SAFETY: the child runs `reap` on a stack nothing else uses. It shares the
    // caller's memory and TLS but touches neither: no allocation, no Rust state,
    // only raw syscalls. Those may write the shared `errno`; the caller checks
    // return values, not errno, to tell failure from success, so at worst an error
    // of its own is reported with pid 1's errno (ECHILD).
    let pid = unsafe {
        libc::clone(
            reap,
            top,
            libc::CLONE_VM | libc::SIGCHLD,
            std::ptr::null_mut(),
        )
    };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(pid)
}

/// Pid 1's loop: reap whatever has exited, then sleep until the next SIGCHLD
/// (blocked, so it stays pending between the two and none is lost).
extern "C" fn reap(_: *mut libc::c_void) -> libc::c_int {
    // SAFETY: only async-signal-safe libc calls on locals of this stack.
    unsafe {
        // It needs no descriptor, and must hold none: a copy of the job's stdout or
        // status pipe here would keep them open after the job ended.
        libc::syscall(libc::SYS_close_range, 0, libc::c_uint::MAX, 0);
        // Nor any capability, in any set: the job's user namespace gave it all.
        drop_own_capabilities();
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        loop {
            while libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) > 0 {}
            libc::sigwaitinfo(&set, std::ptr::null_mut());
        }
    }
}

/// Size of the holder's stack: a few raw syscalls, then one that never returns.
const HOLDER_STACK: usize = 16 << 10;

/// What the holder needs from its parent, on the parent's stack until the holder
/// says it is ready.
struct HolderArgs {
    filter: *const libc::sock_fprog,
    ready: RawFd,
}

/// Starts the *holder*: a process that shares the caller's memory (`CLONE_VM`)
/// and holds it, doing nothing, until it is killed. When the caller exits, its
/// memory is then not the last user's to unmap: tearing down a copy of the
/// template's address space (most of a forked job's exit) happens when the holder
/// dies, after the job was reported. `program` is the holder's seccomp filter
/// (read and write only); the holder is ready once it is in force, with no
/// capability, every signal blocked, and no descriptor but a pipe of its own and
/// the write end of the one it says it is ready on.
///
/// It is not the caller's child to wait for: it sends no signal when it ends, so
/// `wait` without `__WALL` never sees it.
pub fn spawn_holder(program: &[Insn]) -> io::Result<()> {
    let filter = sock_filter(program);
    let prog = sock_fprog(&filter)?;
    let (ready_r, ready_w) = nix::unistd::pipe()?;
    let args = HolderArgs {
        filter: &prog,
        ready: ready_w.as_raw_fd(),
    };
    let top = leaked_stack_top(HOLDER_STACK);
    // SAFETY: the holder runs `hold` on a stack nothing else uses and reads `args`
    // (and the filter it points to) only before it writes the ready byte, which
    // this function waits for while they are alive. Its raw syscalls may write the
    // shared `errno` while this thread is blocked in `read`, which does not look
    // at errno when it succeeds; once ready, it makes one call that never returns.
    let pid = unsafe {
        libc::clone(
            hold,
            top,
            libc::CLONE_VM,
            (&args as *const HolderArgs).cast_mut().cast(),
        )
    };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    drop(ready_w);
    let mut byte = [0u8; 1];
    // EOF: the holder could not confine itself and exited.
    match nix::unistd::read(ready_r.as_raw_fd(), &mut byte)? {
        1 => Ok(()),
        _ => Err(io::Error::other("the holder could not confine itself")),
    }
}

/// The holder: confines itself, says it is ready, then blocks for good.
extern "C" fn hold(args: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `args` points to a live HolderArgs until the ready byte is written
    // (see spawn_holder); only raw syscalls on locals of this stack follow.
    unsafe {
        let HolderArgs { filter, ready } = *(args as *const HolderArgs);
        // Nothing of the job's descriptors: only the ready pipe, then a pipe of its
        // own, whose read never returns since this process holds its write end.
        if ready > 0 {
            libc::syscall(libc::SYS_close_range, 0, ready as libc::c_uint - 1, 0);
        }
        libc::syscall(
            libc::SYS_close_range,
            ready as libc::c_uint + 1,
            libc::c_uint::MAX,
            0,
        );
        let mut own = [0 as libc::c_int; 2];
        // Every signal the kernel lets it block (libc's sigprocmask would leave its
        // own two out), so that none can end its last call.
        let all: u64 = !0;
        let sigset_size = std::mem::size_of_val(&all);
        if libc::pipe(own.as_mut_ptr()) < 0
            || libc::syscall(
                libc::SYS_rt_sigprocmask,
                libc::SIG_BLOCK,
                &all,
                0,
                sigset_size,
            ) < 0
        {
            libc::_exit(1);
        }
        drop_own_capabilities();
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0
            || libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, filter) < 0
        {
            libc::_exit(1);
        }
        let mut byte = 0u8;
        libc::write(ready, (&raw const byte).cast(), 1);
        loop {
            libc::read(own[0], (&raw mut byte).cast(), 1);
        }
    }
}

/// Empties every capability set of the calling thread with raw syscalls only
/// (pid 1 of a job calls it on a stack of its own, sharing memory with its parent).
/// What cannot be dropped stays: the caller has no way to report it, and the job
/// checks its own sets before it runs.
///
/// # Safety
/// Only async-signal-safe syscalls on locals.
unsafe fn drop_own_capabilities() {
    /// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
    const VERSION_3: u32 = 0x2008_0522;
    // SAFETY: prctl and capset read only the locals passed, during the call.
    unsafe {
        for cap in 0..64 {
            libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
        }
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
        let header: [u32; 2] = [VERSION_3, 0];
        let data: [u32; 6] = [0; 6];
        libc::syscall(libc::SYS_capset, header.as_ptr(), data.as_ptr());
    }
}

/// Descriptors an order may carry, at most; more are cut off by the kernel (and
/// the order refused).
const MAX_ORDER_FDS: usize = order_fds();

const fn order_fds() -> usize {
    super::order::Slot::FirstCgroup as usize + crate::sys::MAX_CGROUPS
}

/// A connected pair of `SOCK_SEQPACKET` sockets.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?)
}

/// Waits for one order on `control`: its length in `buf` and its descriptors.
/// `None`: the executor closed the socket. A message cut short is an error.
pub fn receive_order(control: RawFd, buf: &mut [u8]) -> io::Result<Option<(usize, Vec<RawFd>)>> {
    let mut space = nix::cmsg_space!([RawFd; MAX_ORDER_FDS]);
    let (len, fds, flags) = loop {
        let mut iov = [IoSliceMut::new(buf)];
        match recvmsg::<()>(control, &mut iov, Some(&mut space), MsgFlags::empty()) {
            Ok(message) => {
                let mut fds = Vec::new();
                for cmsg in message.cmsgs()? {
                    if let ControlMessageOwned::ScmRights(passed) = cmsg {
                        fds.extend(passed);
                    }
                }
                break (message.bytes, fds, message.flags);
            }
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    if len == 0 && fds.is_empty() {
        return Ok(None);
    }
    if flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC) {
        return Err(io::Error::other("an order was cut short"));
    }
    Ok(Some((len, fds)))
}

/// Sends `fd` over `socket`.
pub fn send_fd(socket: &OwnedFd, fd: RawFd) -> io::Result<()> {
    let fds = [fd];
    sendmsg::<()>(
        socket.as_raw_fd(),
        &[IoSlice::new(b"s")],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    Ok(())
}

/// The one descriptor sent on `socket` by [`send_fd`]; `None` once the peer is gone
/// without sending one.
pub fn receive_fd(socket: &OwnedFd) -> Option<RawFd> {
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let mut byte = [0u8; 1];
    loop {
        let mut iov = [IoSliceMut::new(&mut byte)];
        match recvmsg::<()>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::empty(),
        ) {
            Ok(message) => {
                return message.cmsgs().ok()?.find_map(|cmsg| match cmsg {
                    ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
                    _ => None,
                });
            }
            Err(nix::Error::EINTR) => continue,
            Err(_) => return None,
        }
    }
}
