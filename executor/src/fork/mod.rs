//! A forked job's way into its jail (issue 13, `docs/fork-server.md`).
//!
//! The template — a Python that already imported the heavy modules, itself inside a
//! bwrap jail — keeps a few *spares*: children that already built the part of a
//! job's jail that does not depend on the job, and wait for an order. It forks each
//! and calls [`spare`] in it (through the `pysandbox-fork` cdylib), which returns in
//! the process that is to run a job; the template warms that process up (runs its
//! own job steps once, on nothing) and calls [`take_order`], which returns once an
//! order came and the last restriction is in force. Three processes per spare:
//!
//! - **C**, the template's child: enters fresh namespaces, starts G and forks J,
//!   then waits — for the job's status pipe from J, then for J — reports J's wait
//!   status and kills G (and with it whatever the job left running, which the
//!   executor kills through the job's cgroups before it answers anyway);
//! - **G**, pid 1 of the job's pid namespace: only reaps orphans. It shares C's
//!   memory (`CLONE_VM`), so a job costs one copy of the template's page tables,
//!   not two. It never runs job code: pid 1 ignores signals it has no handler for;
//! - **J**, the job, pid 2: mounts `/proc`, starts the holder of its memory (pid
//!   3, `sys::spawn_holder`: J's exit then leaves unmapping its copy of the
//!   template to the holder's death, after the report), makes what no order
//!   decides (drops its bounding set, starts landlock's ruleset with every rule but
//!   those of the job's own directories, compiles the seccomp filter), then waits
//!   on the executor's control socket for an order. With it, J says it started,
//!   hands C the status pipe, joins the job's cgroups, mounts the job's
//!   directories, takes its stdio and rlimits, drops every capability, finishes
//!   and enforces landlock's rules, closes everything else, then seccomp — last,
//!   because the filter forbids the calls the steps before it make.
//!
//! The template learns on its `spares` pipe when a spare took an order (`1`: it
//! forks another), could not be made or ended without an order (`F`: it forks
//! another, and exits after a few in a row), or found the control socket closed
//! (`X`: the executor retired the template).

pub mod order;
#[allow(unsafe_code)]
mod sys;

use std::io;
use std::os::fd::{OwnedFd, RawFd};

use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::wait::{waitpid, WaitStatus};

use ::landlock::RulesetCreated;

use crate::jail::landlock::{self, Rules};
use crate::jail::seccomp;
use order::{BadOrder, Order, Slot, MAX_ORDER_BYTES};

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

/// J's first word on the status descriptor, as soon as it has the order: the job
/// started. A status pipe that ends without it was never taken by a spare, so no
/// code of the job ran and the executor may run it elsewhere.
pub const STATUS_STARTED: u8 = b'R';
/// C's report on the status descriptor: this byte, then J's wait status (4 bytes,
/// big-endian).
pub const STATUS_EXITED: u8 = b'S';
/// A setup failure: this byte, then the error's text.
pub const STATUS_FAILED: u8 = b'F';

/// What a spare says to the template on the `spares` pipe.
const SPARE_TAKEN: &[u8] = b"1";
const SPARE_FAILED: &[u8] = b"F";
const CONTROL_CLOSED: &[u8] = b"X";

/// Makes the calling process (a fresh child of the template) a spare: namespaces,
/// pid 1 and the job's process. Returns only in the job's process, with its socket
/// to C, before any order: the template may prepare it further (with nothing of a
/// job in it yet), then calls [`take_order`]. Every other process exits in here.
pub fn spare(control: RawFd, spares: RawFd) -> OwnedFd {
    match in_child(control, spares) {
        Ok(peer) => peer,
        // Before an order: no job is affected. The template hears of it.
        Err(e) => end_spare(spares, SPARE_FAILED, "cannot make a spare", &e),
    }
}

/// Ends a spare that has no job to report to: why on stderr (the template's, in
/// the executor's log), and `word` to the template.
fn end_spare(spares: RawFd, word: &[u8], why: &str, error: &Error) -> ! {
    eprintln!("pysandbox: {why}: {}", crate::error::chain(error));
    let _ = write_fd(spares, word);
    sys::exit(1)
}

/// In a spare's job process ([`spare`]): waits for an order on `control`, then
/// builds the rest of the job's jail. Returns only once every restriction is in
/// force; a job whose jail could not be built exits in here.
pub fn take_order(control: RawFd, spares: RawFd, peer: OwnedFd) {
    let ready = match Ready::new() {
        Ok(ready) => ready,
        // No order yet: C tells the template that this spare ended without one.
        Err(e) => {
            eprintln!(
                "pysandbox: cannot make a spare: {}",
                crate::error::chain(&e)
            );
            sys::exit(1)
        }
    };
    let (order, fds) = match await_order(control, spares, peer) {
        Ok(Some(taken)) => taken,
        Ok(None) => {
            let _ = write_fd(spares, CONTROL_CLOSED);
            sys::exit(0);
        }
        Err(e) => end_spare(spares, SPARE_TAKEN, "a spare lost its order", &e),
    };
    // Reported to the executor (in the job, before its descriptors close); the
    // process then ends.
    if let Err(e) = in_job(&order, &fds, ready) {
        report_failure(fds[Slot::Status as usize], &e);
        sys::exit(127);
    }
}

/// C's part: namespaces, mounts, pid 1 and the job; then it waits for the job's
/// status pipe and for the job, and reports. Returns only in the job, with its end
/// of the socket to C.
fn in_child(control: RawFd, spares: RawFd) -> Result<OwnedFd, Error> {
    // 0. The template ignores SIGCHLD so that the kernel reaps its children; this
    //    process and the job must wait for theirs.
    sys::default_signal(libc::SIGCHLD).map_err(step("restore SIGCHLD"))?;
    // 1. Namespaces of its own, nested in the template's: nothing of the template
    //    or of another job can be named from inside. The cgroup namespace comes
    //    later, in J, once it is in the job's cgroups.
    let (uid, gid) = (nix::unistd::getuid(), nix::unistd::getgid());
    unshare(
        CloneFlags::CLONE_NEWUSER
            | CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWPID
            | CloneFlags::CLONE_NEWNET
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWUTS,
    )
    .map_err(errno("unshare the job's namespaces"))?;
    // The same ids inside as outside; no supplementary groups (user_namespaces(7):
    // setgroups must be denied before an unprivileged gid_map is written).
    let map = "set up the job's user namespace";
    std::fs::write("/proc/self/setgroups", "deny").map_err(step(map))?;
    std::fs::write("/proc/self/uid_map", format!("{uid} {uid} 1")).map_err(step(map))?;
    std::fs::write("/proc/self/gid_map", format!("{gid} {gid} 1")).map_err(step(map))?;
    // 2. No mount event of the template reaches the job from now on.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(errno("make the job's mounts private"))?;
    // 3. The way J hands C the job's status pipe once it has an order.
    let (ours, theirs) = sys::seqpacket_pair().map_err(step("make the spare's socket"))?;
    // 4. Pid 1 of the new pid namespace: it shares this process's memory (no copy
    //    of the template's page tables) and only reaps, on a stack of its own.
    let pid1 = sys::spawn_reaper().map_err(step("start the job's pid 1"))?;
    let pid1 = nix::unistd::Pid::from_raw(pid1);
    let end = |code: i32| -> ! {
        let _ = nix::sys::signal::kill(pid1, nix::sys::signal::Signal::SIGKILL);
        let _ = waitpid(pid1, None);
        sys::exit(code)
    };
    // 5. The job: the next child, pid 2 of the namespace, a copy of the template.
    let job = match sys::fork() {
        Ok(Some(job)) => nix::unistd::Pid::from_raw(job),
        Ok(None) => {
            drop(ours);
            // Only a process inside the new pid namespace mounts a procfs of it.
            mount(
                Some("proc"),
                "/proc",
                Some("proc"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                None::<&str>,
            )
            .map_err(errno("mount the job's /proc"))?;
            let holder = seccomp::only(&[libc::SYS_read, libc::SYS_write]);
            sys::spawn_holder(&holder).map_err(step("start the job's memory holder"))?;
            return Ok(theirs);
        }
        Err(e) => {
            eprintln!("pysandbox: cannot fork a spare's job: {e}");
            let _ = write_fd(spares, SPARE_FAILED);
            end(1)
        }
    };
    // 6. C takes no order and needs no capability from here on.
    drop(theirs);
    let _ = nix::unistd::close(control);
    if clear_capabilities(&ALL_CAPABILITY_SETS).is_err() {
        end(1);
    }
    // 7. The job's status pipe, once J has its order; none: J ended without one.
    let Some(status_fd) = sys::receive_fd(&ours) else {
        // A spare that ended without an order (killed, or it failed): the template
        // makes another, and gives up when that keeps happening. When the executor
        // closed the socket, the template is leaving anyway.
        let _ = write_fd(spares, SPARE_FAILED);
        let _ = waitpid(job, None);
        end(0)
    };
    // 8. C waits for the job, reports its status, then kills pid 1, which makes
    //    the kernel kill every process left in the namespace, the holder of the
    //    job's memory included, which unmaps it. The executor does not wait for
    //    that: it kills and waits out the job's cgroup, where pid 1 and the holder
    //    are not, and neither runs code of the job.
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
    let mut report = [STATUS_EXITED, 0, 0, 0, 0];
    report[1..].copy_from_slice(&status.to_be_bytes());
    let _ = write_fd(status_fd, &report);
    end(0)
}

/// J, a spare: waits for an order on `control`, then says it started, tells the
/// template to make another spare, joins the job's cgroups, hands C the status
/// pipe (on `peer`) and mounts the job's directories. `None`: the executor closed
/// the socket.
fn await_order(
    control: RawFd,
    spares: RawFd,
    peer: OwnedFd,
) -> Result<Option<(Order, Vec<RawFd>)>, Error> {
    let mut bytes = [0u8; MAX_ORDER_BYTES + 1];
    let Some((len, fds)) =
        sys::receive_order(control, &mut bytes).map_err(step("receive an order"))?
    else {
        return Ok(None);
    };
    let order = Order::parse(&bytes[..len], fds.len());
    if let Some(&status_fd) = fds.get(Slot::Status as usize) {
        let _ = write_fd(status_fd, &[STATUS_STARTED]);
    }
    let order = match order {
        Ok(order) => order,
        Err(e) => {
            if let Some(&status_fd) = fds.get(Slot::Status as usize) {
                report_failure(status_fd, &Error::Order(e));
            }
            let _ = write_fd(spares, SPARE_TAKEN);
            sys::exit(127);
        }
    };
    let taken = |e: Error| -> ! {
        report_failure(fds[Slot::Status as usize], &e);
        let _ = write_fd(spares, SPARE_TAKEN);
        sys::exit(127)
    };
    // C learns it has a job before anything can kill this process: the executor
    // kills a job through its cgroups, which come next.
    if let Err(e) = sys::send_fd(&peer, fds[Slot::Status as usize]) {
        taken(step("hand the status pipe to the job's parent")(e));
    }
    drop(peer);
    // The job's cgroups: pages written from here on are the job's, and the cgroup
    // namespace below is rooted at the job's cgroup. The executor opened these
    // files; the kernel checks its credentials (Linux >= 5.16).
    for &fd in &fds[Slot::FirstCgroup as usize..] {
        if let Err(e) = write_fd(fd, b"0") {
            taken(step("join the job's cgroup")(e));
        }
    }
    if let Err(e) = enter_job_dirs(&order, &fds) {
        taken(e);
    }
    // Only now: the template's next fork would slow the moves between cgroups.
    let _ = write_fd(spares, SPARE_TAKEN);
    Ok(Some((order, fds)))
}

/// The job's own cgroup namespace, `/dev/shm` and directories: clones of its tmpfs
/// that the executor made, so the size limit is the tmpfs's and the executor
/// collects from it afterwards.
fn enter_job_dirs(order: &Order, fds: &[RawFd]) -> Result<(), Error> {
    unshare(CloneFlags::CLONE_NEWCGROUP).map_err(errno("unshare the job's cgroup namespace"))?;
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
    .map_err(errno("mount the job's /dev/shm"))
}

/// What a spare's job process makes of its jail before an order comes, since no
/// order decides it: the time it takes is not the job's.
struct Ready {
    /// Landlock's rules for what every job may touch but its own directories,
    /// which it has not mounted yet.
    landlock: RulesetCreated,
    seccomp: Vec<seccomp::Insn>,
}

impl Ready {
    fn new() -> Result<Ready, Error> {
        // On cgroup v1 the job's cgroups are joined through files that move the
        // writing thread only (`tasks`, see `cgroup::join_file`): this process must
        // have no other, which only the launcher's warm-up could have started. Until
        // the order comes it runs nothing but this library.
        let threads = std::fs::read_dir("/proc/self/task").map_err(step("count the threads"))?;
        if threads.count() != 1 {
            let more = io::Error::other("the spare's job process has more than one thread");
            return Err(step("check the spare's threads")(more));
        }
        // The bounding set only limits what an exec could gain: none of the steps
        // before the job needs it.
        clear_capabilities(&[caps::CapSet::Bounding])?;
        let landlock = landlock::start(&Rules::for_forked_job_before_mounts())
            .map_err(|e| step("start the landlock ruleset")(io::Error::other(e)))?;
        Ok(Ready {
            landlock,
            seccomp: seccomp::program(),
        })
    }
}

/// J's part, in the only order that works: each step needs a privilege that a
/// later one removes.
fn in_job(order: &Order, fds: &[RawFd], ready: Ready) -> Result<(), Error> {
    for (slot, target) in [(Slot::Stdin, 0), (Slot::Stdout, 1), (Slot::Stderr, 2)] {
        nix::unistd::dup2(fds[slot as usize], target).map_err(errno("take the job's stdio"))?;
    }
    std::env::set_current_dir("/work").map_err(step("enter /work"))?;
    for &(resource, value) in &order.rlimits {
        sys::setrlimit(resource, value).map_err(step("set the job's rlimits"))?;
    }
    // The job's user namespace gave this process every capability in it; it keeps
    // none, in any set (the bounding set went before the order), and cannot regain
    // any through exec.
    clear_capabilities(&[
        caps::CapSet::Ambient,
        caps::CapSet::Inheritable,
        caps::CapSet::Effective,
        caps::CapSet::Permitted,
    ])?;
    nix::sys::prctl::set_no_new_privs().map_err(errno("set no_new_privs"))?;
    let after_mounts = Rules::for_forked_job_after_mounts(order.read.iter().cloned());
    landlock::finish(ready.landlock, &after_mounts)
        .map_err(|e| step("apply landlock")(io::Error::other(e)))?;
    // Nothing of the template or of the order reaches the job: not its control
    // socket, not the status pipe, not the mount clones or cgroup files.
    crate::sys::close_fds_from(3);
    // Last: the filter refuses unshare, mount and everything above that it needs.
    sys::load_seccomp(&ready.seccomp).map_err(step("load the seccomp filter"))
}

const ALL_CAPABILITY_SETS: [caps::CapSet; 5] = [
    caps::CapSet::Ambient,
    caps::CapSet::Inheritable,
    caps::CapSet::Bounding,
    caps::CapSet::Effective,
    caps::CapSet::Permitted,
];

fn clear_capabilities(sets: &[caps::CapSet]) -> Result<(), Error> {
    for &set in sets {
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
