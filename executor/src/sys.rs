//! Every `unsafe` block of the executor: the code that runs between `fork` and `exec`
//! of a jail, a raw descriptor sweep, and opening names in a job's work dir without
//! following links. The fork-to-exec code allocates nothing and takes no lock,
//! because a forked child of a multi-threaded process may only make
//! async-signal-safe calls (signal-safety(7)).

use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;

use tokio::process::Command;

/// Descriptors a jail inherits: `(source, target)` pairs, at most this many.
pub const MAX_PASSED_FDS: usize = 3;
/// cgroup hierarchies a jail joins, at most (v1: memory, pids, cpu, cpuacct).
pub const MAX_CGROUPS: usize = 4;
/// Resource limits set on a jail's first process, at most.
pub const MAX_RLIMITS: usize = 8;

/// A resource limit: `RLIMIT_*` and the value for both soft and hard limit.
pub type Rlimit = (libc::__rlimit_resource_t, u64);

/// Everything a jail's first process does to itself before it becomes bwrap,
/// precomputed so that the child only makes syscalls.
#[derive(Debug, Clone, Copy)]
pub struct SpawnPlan {
    pub uid: u32,
    pub gid: u32,
    /// The executor's pid, to notice that it died before the death signal was armed.
    pub parent: libc::pid_t,
    /// Descriptors to place at fixed numbers for bwrap and jail-init.
    pub fds: [(RawFd, RawFd); MAX_PASSED_FDS],
    /// The job's cgroups' join files, open (`JobCgroup::join_fds`); -1 marks an unused slot.
    pub cgroup_joins: [RawFd; MAX_CGROUPS],
    /// Limits inherited by every process of the jail.
    pub rlimits: [Option<Rlimit>; MAX_RLIMITS],
}

/// Arranges for `cmd`'s child to join the job's cgroups, take its rlimits, drop to
/// the sandbox credentials, die with the executor and inherit exactly stdio plus
/// `plan.fds`.
pub fn harden_spawn(cmd: &mut Command, plan: SpawnPlan) {
    // SAFETY: the closure only makes raw syscalls through libc on values it owns by
    // copy; it allocates nothing and takes no lock, so it is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || child_steps(&plan).map_err(|()| std::io::Error::last_os_error()));
    }
}

/// The child's steps between fork and exec, in the only order that works.
fn child_steps(plan: &SpawnPlan) -> Result<(), ()> {
    let check = |rc: libc::c_int| if rc < 0 { Err(()) } else { Ok(()) };
    // SAFETY: (the whole block) plain syscalls on integers and on pointers to locals;
    // see each step for why it is there.
    unsafe {
        // 1. Join the job's cgroups while still root (v1 checks the writer's
        //    credentials), before any other process exists: everything the jail
        //    forks is born inside, so no process escapes the limits or the kill.
        //    A child of fork has one thread, which is all a v1 `tasks` file moves.
        for fd in plan.cgroup_joins.into_iter().filter(|&fd| fd >= 0) {
            if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(());
            }
        }
        // 2. Park the passed descriptors above any target number first, so that
        //    placing one cannot clobber another still waiting to be placed.
        let mut parked = [-1; MAX_PASSED_FDS];
        for (slot, (src, _)) in parked.iter_mut().zip(plan.fds) {
            *slot = libc::fcntl(src, libc::F_DUPFD_CLOEXEC, 100);
            check(*slot)?;
        }
        // 3. dup2 clears close-on-exec on the copy: these, and stdio, are all bwrap gets.
        for (fd, (_, target)) in parked.into_iter().zip(plan.fds) {
            check(libc::dup2(fd, target))?;
        }
        // 4. Everything above the passed range closes at exec, whoever opened it and
        //    however (CLOSE_RANGE_CLOEXEC, Linux 5.11; older kernels rely on O_CLOEXEC,
        //    which std and tokio set on every descriptor they create).
        let first_free = plan.fds.iter().map(|&(_, t)| t).max().unwrap_or(2) + 1;
        libc::syscall(
            libc::SYS_close_range,
            first_free as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
        // 5. Limits every process of the jail inherits. Only now that the descriptors
        //    are placed: RLIMIT_NOFILE caps the numbers F_DUPFD may hand out, and the
        //    executor may hold hundreds of descriptors (idle connections), so the
        //    job's 256 set earlier left step 2 no free number (EMFILE). Lowering it
        //    below descriptors already open is allowed; those close at exec. Set
        //    while still privileged, so a hard limit above the executor's own can
        //    still be set.
        for (resource, value) in plan.rlimits.into_iter().flatten() {
            let limit = libc::rlimit {
                rlim_cur: value,
                rlim_max: value,
            };
            check(libc::setrlimit(resource, &limit))?;
        }
        // 6. Drop root for good: bwrap then builds the namespaces as an ordinary user,
        //    so even a full escape from them lands as the sandbox uid, not as root.
        //    Groups first, while we still may.
        check(libc::setgroups(0, std::ptr::null()))?;
        check(libc::setresgid(plan.gid, plan.gid, plan.gid))?;
        check(libc::setresuid(plan.uid, plan.uid, plan.uid))?;
        // 7. Die with the executor. Armed after setresuid because a credential change
        //    clears the parent-death signal (prctl(2)). It fires when the *thread* that
        //    forked exits; tokio spawns from runtime worker threads, which live as long
        //    as the executor.
        check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0))?;
        // 8. If the executor died before step 7, nobody would ever kill this jail.
        if libc::getppid() != plan.parent {
            return Err(());
        }
    }
    Ok(())
}

/// Closes every descriptor from `first` up, in a process about to exec the job.
pub fn close_fds_from(first: RawFd) {
    // SAFETY: close_range only closes descriptors; jail-init holds no Rust object
    // that owns one of them at this point (it is about to exec).
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            0,
        );
    }
}

/// Marks every descriptor from `first` up close-on-exec, in jail-init before it
/// starts a helper that must not inherit them.
pub fn cloexec_fds_from(first: RawFd) {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC (Linux 5.11) only sets a flag on
    // descriptors; it closes nothing, so no Rust object's descriptor goes stale.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
    }
}

/// Writes the one-byte "jail is set up" signal to `fd`, which the executor placed
/// there; false when it cannot (the executor is gone, or `fd` is not open).
pub fn write_ready_byte(fd: RawFd) -> bool {
    // SAFETY: write(2) on a plain integer descriptor from a valid one-byte buffer;
    // a closed or foreign descriptor makes it fail, not misbehave.
    unsafe { libc::write(fd, b"R".as_ptr().cast(), 1) == 1 }
}

/// The landlock ABI version the kernel offers, or `None` without landlock
/// (landlock_create_ruleset(2) with LANDLOCK_CREATE_RULESET_VERSION).
pub fn landlock_abi() -> Option<i64> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with this flag the syscall reads no memory (null attr, size 0) and only
    // returns a number or an error.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    (abi > 0).then_some(abi)
}

/// The first descriptor systemd passes with socket activation (sd_listen_fds(3)).
const LISTEN_FDS_START: RawFd = 3;

/// Takes the listening socket systemd passed (`LISTEN_FDS=1`, `LISTEN_PID` = us), so
/// that connections wait in its backlog while the executor restarts. `None` when
/// not socket-activated; an error when what was passed is not a listening Unix
/// stream socket.
pub fn activated_listener() -> std::io::Result<Option<std::os::unix::net::UnixListener>> {
    let ours = std::env::var("LISTEN_PID").ok() == Some(std::process::id().to_string());
    if !ours || std::env::var("LISTEN_FDS").ok().as_deref() != Some("1") {
        return Ok(None);
    }
    // SAFETY: systemd's protocol hands us descriptor 3 (checked for us just above);
    // nothing in this process has opened or claimed it, and we take ownership once.
    let fd = unsafe { OwnedFd::from_raw_fd(LISTEN_FDS_START) };
    let listening: bool = nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::AcceptConn)?;
    let local: nix::sys::socket::UnixAddr = nix::sys::socket::getsockname(fd.as_raw_fd())?;
    if !listening || local.path().is_none() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "LISTEN_FDS passed a descriptor that is not a listening Unix socket",
        ));
    }
    nix::fcntl::fcntl(
        fd.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )?;
    Ok(Some(fd.into()))
}

/// Opens `name`, one path component, in the directory `dir` without ever following
/// a symlink, crossing a mount or leaving `dir`: `openat2(2)` with
/// `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV`,
/// and `O_NOFOLLOW | O_CLOEXEC` added to `flags`. Symlinks planted by a sandbox are
/// how Judge0's host was made to read and write outside its jail
/// (CVE-2024-28185, CVE-2024-28189).
///
/// Kernels before 5.6 (or seccomp profiles that hide openat2) answer ENOSYS; then
/// plain `openat` with `O_NOFOLLOW` gives the same guarantee, because a single
/// component can only resolve to an entry of `dir` itself. A `name` with a `/` is
/// refused (EINVAL) so that the fallback never resolves more than one component.
pub fn open_beneath(dir: RawFd, name: &CStr, flags: OFlag, mode: Mode) -> nix::Result<OwnedFd> {
    if name.to_bytes().contains(&b'/') {
        return Err(Errno::EINVAL);
    }
    let flags = flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let how = OpenHow::new().flags(flags).mode(mode).resolve(
        ResolveFlag::RESOLVE_BENEATH
            | ResolveFlag::RESOLVE_NO_SYMLINKS
            | ResolveFlag::RESOLVE_NO_MAGICLINKS
            | ResolveFlag::RESOLVE_NO_XDEV,
    );
    let fd = match openat2(dir, name, how) {
        Err(Errno::ENOSYS) => openat(Some(dir), name, flags, mode)?,
        opened => opened?,
    };
    // SAFETY: the kernel just returned `fd` as a new descriptor of this process,
    // which nothing else owns, so the OwnedFd is its only owner and closes it once.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Lets `fd` survive exec again after [`cloexec_fds_from`] marked it; jail-init
/// hands the launcher its two pipes this way.
pub fn keep_across_exec(fd: RawFd) {
    // A descriptor that is not open just fails here, and the launcher reports it.
    let _ = nix::fcntl::fcntl(
        fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    );
}

/// `SO_PASSRIGHTS` as the kernel's `include/uapi/asm-generic/socket.h` defines it
/// (commit "af_unix: Introduce SO_PASSRIGHTS.", Linux 6.16), for the architectures
/// that use the generic numbers (x86, arm, riscv, …); libc 0.2.191 lacks it.
const SO_PASSRIGHTS: libc::c_int = 83;

/// Makes the kernel refuse descriptors sent to the Unix socket `socket`: a sender's
/// `SCM_RIGHTS` then fails with `EPERM` and nothing is queued. Before Linux 6.16
/// this fails with `ENOPROTOOPT`.
pub fn refuse_passed_fds(socket: BorrowedFd<'_>) -> std::io::Result<()> {
    let off: libc::c_int = 0;
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a live local, on a
    // descriptor the borrow keeps open.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PASSRIGHTS,
            std::ptr::from_ref(&off).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A detached clone of the mount at `path` (`open_tree(2)` with `OPEN_TREE_CLONE`),
/// read-only when asked: a forked job's child mounts it where the job expects its
/// directory. The clone shares the mount's superblock, so the job writes into the
/// same tmpfs, under the same size limit, that the executor collects from.
pub fn clone_mount(path: &CStr, read_only: bool) -> std::io::Result<OwnedFd> {
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    const MOUNT_ATTR_RDONLY: u64 = 1;
    // SAFETY: a NUL-terminated path that outlives the call; no pointer is kept.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            path.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: open_tree returned a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    if read_only {
        // struct mount_attr: attr_set, attr_clr, propagation, userns_fd.
        let attr: [u64; 4] = [MOUNT_ATTR_RDONLY, 0, 0, 0];
        // SAFETY: mount_setattr reads `attr` (32 bytes) during the call only.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                fd.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_EMPTY_PATH,
                attr.as_ptr(),
                std::mem::size_of_val(&attr),
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(fd)
}

/// Fills `buf` from the kernel's random generator (`getrandom(2)`, which blocks
/// only until the pool is first seeded, early at boot).
pub fn random_bytes(buf: &mut [u8]) {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: getrandom writes at most `rest.len()` bytes into `rest`.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n > 0 {
            filled += n as usize;
        }
    }
}

/// A descriptor of the process `pid` (`pidfd_open(2)`): signals sent through it reach
/// that process or nobody, never a later one that got its number.
pub fn pidfd_open(pid: libc::pid_t) -> std::io::Result<OwnedFd> {
    // SAFETY: no pointer is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pidfd_open returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Sends `signal` to the process behind `pidfd`.
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: libc::c_int) -> std::io::Result<()> {
    // SAFETY: a null siginfo is allowed (the kernel fills in a kill()'s); no other
    // pointer is passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An executor holding more descriptors than a job may (idle connections, say)
    /// must still start jails: the job's RLIMIT_NOFILE is set only after the passed
    /// descriptors are placed. Needs root for setgroups; CI runs as root.
    #[tokio::test]
    async fn a_jail_starts_while_the_executor_holds_more_descriptors_than_the_job_may() {
        if !nix::unistd::geteuid().is_root() {
            assert!(std::env::var_os("CI").is_none(), "CI must run as root");
            return eprintln!("skipped: needs root");
        }
        const JOB_FILES: u64 = 256;
        // Take every free number up to past the job's limit, as the executor's
        // open connections would.
        let null = std::fs::File::open("/dev/null").unwrap();
        let mut held = Vec::new();
        while held.last().map_or(0, |fd: &OwnedFd| fd.as_raw_fd()) <= JOB_FILES as RawFd + 40 {
            let fd = nix::fcntl::fcntl(null.as_raw_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(0))
                .unwrap();
            // SAFETY: the kernel just returned `fd` as a new descriptor nothing else owns.
            held.push(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let passed = |i: usize| held[held.len() - 1 - i].as_raw_fd();
        let mut rlimits = [None; MAX_RLIMITS];
        rlimits[0] = Some((libc::RLIMIT_NOFILE, JOB_FILES));
        let mut cmd = Command::new("/bin/sh");
        // The child sees the three descriptors at their targets and the job's limit.
        cmd.args([
            "-c",
            "test -e /proc/self/fd/5 && test \"$(ulimit -n)\" = 256",
        ]);
        harden_spawn(
            &mut cmd,
            SpawnPlan {
                uid: nix::unistd::getuid().as_raw(),
                gid: nix::unistd::getgid().as_raw(),
                parent: std::process::id() as libc::pid_t,
                fds: [(passed(0), 3), (passed(1), 4), (passed(2), 5)],
                cgroup_joins: [-1; MAX_CGROUPS],
                rlimits,
            },
        );
        let status = cmd.spawn().expect("spawn with fds past the job's limit");
        let status = status.wait_with_output().await.unwrap().status;
        assert!(status.success(), "{status:?}");
    }
}
