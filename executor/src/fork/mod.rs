//! A forked job's way into its jail (issue 13, `docs/fork-server.md`).
//!
//! The template — a Python that already imported the heavy modules, itself inside a
//! bwrap jail — forks for each job and calls [`enter`] in the child (through the
//! `pysandbox-fork` cdylib) with the executor's order and descriptors. `enter`
//! builds the job's jail around the child and returns only in the process that is
//! to run the job, after the last restriction is in force. Three processes:
//!
//! - **C**, the template's child: joins the job's cgroups, enters fresh namespaces,
//!   mounts the job's directories, starts G and forks J, waits for J, kills G (and
//!   with it whatever the job left running) and reports J's wait status;
//! - **G**, pid 1 of the job's pid namespace: only reaps orphans. It shares C's
//!   memory (`CLONE_VM`), so a job costs one copy of the template's page tables,
//!   not two. It never runs job code: pid 1 ignores signals it has no handler for;
//! - **J**, the job, pid 2: mounts `/proc`, takes its stdio and rlimits, closes
//!   everything else, drops every capability, then landlock, then seccomp — last,
//!   because the filter forbids the calls the steps before it make.

pub mod order;
#[allow(unsafe_code)]
mod sys;

use std::io;
use std::os::fd::RawFd;

use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::wait::{waitpid, WaitStatus};

use crate::jail::landlock::{self, Rules};
use crate::jail::seccomp;
use order::{BadOrder, Order, Slot};

/// What the executor passes a forked job's child for its directories (also used
/// by the library's own tests).
pub use crate::sys::clone_mount;

/// What went wrong on the way into a forked job's jail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bad order from the executor")]
    Order(#[source] BadOrder),
    #[error("cannot {step}")]
    Step {
        step: &'static str,
        #[source]
        source: io::Error,
    },
}

fn step(step: &'static str) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Step { step, source }
}

fn errno(step_name: &'static str) -> impl FnOnce(nix::Error) -> Error {
    move |e| step(step_name)(e.into())
}

/// C's report on the status descriptor: this byte, then J's wait status (4 bytes,
/// big-endian).
pub const STATUS_EXITED: u8 = b'S';
/// A setup failure: this byte, then the error's text.
pub const STATUS_FAILED: u8 = b'F';

/// Builds the job's jail around the calling process (a fresh child of the
/// template) and returns in the job's process, ready to run the job. In the two
/// processes in between it never returns. An error is returned only in the job's
/// process; the caller must then exit without running anything.
pub fn enter(order: &[u8], fds: &[RawFd]) -> Result<(), Error> {
    let order = Order::parse(order, fds.len()).map_err(Error::Order)?;
    let status_fd = fds[Slot::Status as usize];
    // Both return only in the job's process; a failure is reported to the executor
    // (in the job, before its descriptors close) and ends the process.
    let entered = in_child(&order, fds).and_then(|()| in_job(&order, fds));
    if let Err(e) = &entered {
        report_failure(status_fd, e);
        sys::exit(127);
    }
    entered
}

/// C's part: cgroups, namespaces, mounts, pid 1 and the job; then it waits for the
/// job and reports. Returns only in the job.
fn in_child(order: &Order, fds: &[RawFd]) -> Result<(), Error> {
    // 0. The template ignores SIGCHLD so that the kernel reaps its children; this
    //    process and the job must wait for theirs.
    sys::default_signal(libc::SIGCHLD).map_err(step("restore SIGCHLD"))?;
    // 1. The job's cgroups first: pages written from here on are the job's, and
    //    the cgroup namespace below is rooted at the job's cgroup. The executor
    //    opened these files; the kernel checks its credentials (Linux >= 5.16).
    for &fd in &fds[Slot::FirstCgroup as usize..] {
        write_fd(fd, b"0").map_err(step("join the job's cgroup"))?;
    }
    // 2. Namespaces of its own, nested in the template's: nothing of the template
    //    or of another job can be named from inside.
    let (uid, gid) = (nix::unistd::getuid(), nix::unistd::getgid());
    unshare(
        CloneFlags::CLONE_NEWUSER
            | CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWPID
            | CloneFlags::CLONE_NEWNET
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWCGROUP,
    )
    .map_err(errno("unshare the job's namespaces"))?;
    // The same ids inside as outside; no supplementary groups (user_namespaces(7):
    // setgroups must be denied before an unprivileged gid_map is written).
    let map = "set up the job's user namespace";
    std::fs::write("/proc/self/setgroups", "deny").map_err(step(map))?;
    std::fs::write("/proc/self/uid_map", format!("{uid} {uid} 1")).map_err(step(map))?;
    std::fs::write("/proc/self/gid_map", format!("{gid} {gid} 1")).map_err(step(map))?;
    // 3. No mount event of the template reaches the job from now on.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(errno("make the job's mounts private"))?;
    // 4. The job's directories: clones of its tmpfs that the executor made, so the
    //    size limit is the tmpfs's and the executor collects from it afterwards.
    for (slot, target) in [
        (Slot::Work, c"/work"),
        (Slot::Tmp, c"/tmp"),
        (Slot::Sandbox, c"/sandbox"),
    ] {
        sys::move_mount(fds[slot as usize], target).map_err(step("mount the job's directories"))?;
    }
    mount(
        Some("tmpfs"),
        "/dev/shm",
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(format!("size={},mode=1777", order.shm_bytes).as_str()),
    )
    .map_err(errno("mount the job's /dev/shm"))?;
    // 5. Pid 1 of the new pid namespace: it shares this process's memory (no copy
    //    of the template's page tables) and only reaps, on a stack of its own.
    let pid1 = sys::spawn_reaper().map_err(step("start the job's pid 1"))?;
    // 6. The job: the next child, pid 2 of the namespace, a copy of the template.
    let Some(job) = sys::fork().map_err(step("fork the job"))? else {
        // Only a process inside the new pid namespace mounts a procfs of it.
        mount(
            Some("proc"),
            "/proc",
            Some("proc"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .map_err(errno("mount the job's /proc"))?;
        return Ok(());
    };
    // 7. C needs no capability from here on: it keeps none, as pid 1 keeps none.
    drop_capabilities()?;
    // 8. C waits for the job, then kills pid 1, which makes the kernel kill every
    //    process the job left in its namespace, and reports the job's status.
    let job = nix::unistd::Pid::from_raw(job);
    let status = loop {
        match waitpid(job, None) {
            Ok(WaitStatus::Exited(_, code)) => break code << 8,
            Ok(WaitStatus::Signaled(_, signal, core)) => {
                break signal as i32 | if core { 0x80 } else { 0 }
            }
            Ok(_) | Err(nix::Error::EINTR) => continue,
            Err(_) => break 127 << 8,
        }
    };
    let pid1 = nix::unistd::Pid::from_raw(pid1);
    let _ = nix::sys::signal::kill(pid1, nix::sys::signal::Signal::SIGKILL);
    let _ = waitpid(pid1, None);
    let mut report = [STATUS_EXITED, 0, 0, 0, 0];
    report[1..].copy_from_slice(&status.to_be_bytes());
    let _ = write_fd(fds[Slot::Status as usize], &report);
    sys::exit(0)
}

/// J's part, in the only order that works: each step needs a privilege that a
/// later one removes.
fn in_job(order: &Order, fds: &[RawFd]) -> Result<(), Error> {
    for (slot, target) in [(Slot::Stdin, 0), (Slot::Stdout, 1), (Slot::Stderr, 2)] {
        nix::unistd::dup2(fds[slot as usize], target).map_err(errno("take the job's stdio"))?;
    }
    std::env::set_current_dir("/work").map_err(step("enter /work"))?;
    for &(resource, value) in &order.rlimits {
        sys::setrlimit(resource, value).map_err(step("set the job's rlimits"))?;
    }
    // Nothing of the template or of the order reaches the job: not its control
    // socket, not the status pipe, not the mount clones or cgroup files.
    crate::sys::close_fds_from(3);
    drop_capabilities()?;
    nix::sys::prctl::set_no_new_privs().map_err(errno("set no_new_privs"))?;
    landlock::apply(&Rules::for_jail(order.read.iter().cloned(), Vec::new()))
        .map_err(|e| step("apply landlock")(io::Error::other(e)))?;
    // Last: the filter refuses unshare, mount and everything above that it needs.
    sys::load_seccomp(&seccomp::program()).map_err(step("load the seccomp filter"))
}

/// The job's user namespace gave this process every capability in it; it keeps
/// none, in any set, and cannot regain any through exec.
fn drop_capabilities() -> Result<(), Error> {
    for set in [
        caps::CapSet::Ambient,
        caps::CapSet::Inheritable,
        caps::CapSet::Bounding,
        caps::CapSet::Effective,
        caps::CapSet::Permitted,
    ] {
        caps::clear(None, set).map_err(|e| step("drop capabilities")(io::Error::other(e)))?;
    }
    Ok(())
}

fn write_fd(fd: RawFd, bytes: &[u8]) -> io::Result<()> {
    let written = nix::unistd::write(sys::borrow(fd), bytes)?;
    if written != bytes.len() {
        return Err(io::ErrorKind::WriteZero.into());
    }
    Ok(())
}

fn report_failure(status_fd: RawFd, error: &Error) {
    let mut text = vec![STATUS_FAILED];
    text.extend(crate::error::chain(error).into_bytes());
    let _ = write_fd(status_fd, &text);
}
