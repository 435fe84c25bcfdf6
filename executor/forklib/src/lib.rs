//! `libpysandbox_fork.so`: loaded by the fork-server template with `ctypes` and
//! called in each freshly forked child, which becomes a spare. The whole way into
//! a job's jail is `pysandbox_executor::fork::{spare, take_order}`; this is only
//! their C face.

use std::ffi::c_int;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};

/// Makes the calling process a spare for orders on the descriptor `control`,
/// which tells the template on `spares` what became of it. Returns only in the
/// job's process, before any order, with the descriptor to pass to
/// [`pysandbox_take_order`]; every other process exits in it.
#[no_mangle]
pub extern "C" fn pysandbox_spare(control: c_int, spares: c_int) -> c_int {
    pysandbox_executor::fork::spare(control, spares).into_raw_fd()
}

/// Waits for an order and builds the job's jail around the calling process (the
/// one [`pysandbox_spare`] returned in, `peer` what it returned). Returns only
/// once every restriction is in force; a job whose jail could not be built exits
/// in it.
#[no_mangle]
pub extern "C" fn pysandbox_take_order(control: c_int, spares: c_int, peer: c_int) {
    // SAFETY: `peer` is the descriptor pysandbox_spare returned to this process,
    // and the caller gives it up.
    let peer = unsafe { OwnedFd::from_raw_fd(peer) };
    pysandbox_executor::fork::take_order(control, spares, peer);
}
