//! `libpysandbox_fork.so`: loaded by the fork-server template with `ctypes` and
//! called in each freshly forked child. The whole way into the job's jail is
//! `pysandbox_executor::fork::enter`; this is only its C face.

use std::ffi::c_int;
use std::os::fd::RawFd;

/// Builds the job's jail around the calling process. Returns 0 in the job's
/// process once every restriction is in force; never returns in the two setup
/// processes in between; returns -1 after printing why to stderr when the job
/// must not run (the caller then exits at once).
///
/// # Safety
/// `order` must point to `order_len` readable bytes and `fds` to `nfds` descriptors.
#[no_mangle]
pub unsafe extern "C" fn pysandbox_job_enter(
    order: *const u8,
    order_len: usize,
    fds: *const c_int,
    nfds: usize,
) -> c_int {
    if order.is_null() || fds.is_null() {
        return -1;
    }
    // SAFETY: the caller guarantees both buffers and their lengths.
    let (order, fds): (&[u8], &[RawFd]) = unsafe {
        (
            std::slice::from_raw_parts(order, order_len),
            std::slice::from_raw_parts(fds, nfds),
        )
    };
    match pysandbox_executor::fork::enter(order, fds) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!(
                "pysandbox: cannot enter the job's jail: {}",
                pysandbox_executor::chain(&e)
            );
            -1
        }
    }
}
