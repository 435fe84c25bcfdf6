//! Resource limits a job may ask for, which limit stopped it, and what it used.

use serde::{Deserialize, Serialize};

/// The most bytes of stdout, and of stderr, a result may keep (the largest
/// `output_bytes` the executor may be configured with).
pub const MAX_OUTPUT_BYTES: u32 = 4 << 20;

/// Per-request limits. Each one, when present, may only lower the executor's
/// configured maximum; absent ones take the executor's default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobLimits {
    /// Memory of all the job's processes together, in MiB.
    pub memory_mb: Option<u32>,
    /// CPU time of all the job's processes together, in milliseconds.
    pub cpu_ms: Option<u32>,
    /// Processes and threads alive at once.
    pub max_processes: Option<u32>,
    /// Size of the work dir and `/tmp` together, in MiB.
    pub disk_mb: Option<u32>,
    /// Bytes of stdout, and of stderr, kept.
    pub output_bytes: Option<u32>,
}

/// The limit that stopped or cut a job. The first one that fired wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LimitKind {
    /// Killed by the kernel's OOM killer at the memory limit.
    Memory,
    /// Killed at the wall-clock limit.
    Time,
    /// Killed at the CPU-time limit.
    Cpu,
    /// A fork or thread was refused at the process limit.
    Processes,
    /// The work dir or `/tmp` filled up (space or inodes).
    Disk,
    /// stdout or stderr went past its cap.
    Output,
}

impl LimitKind {
    /// The API's name for it, as in `limitExceeded`.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::Memory => "memory",
            LimitKind::Time => "time",
            LimitKind::Cpu => "cpu",
            LimitKind::Processes => "processes",
            LimitKind::Disk => "disk",
            LimitKind::Output => "output",
        }
    }
}

/// What a job used; a figure is `None` where this host cannot measure it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Wall-clock time from the start of the jail to the end of the job.
    pub wall_ms: u64,
    /// CPU time of all the job's processes.
    pub cpu_ms: Option<u64>,
    /// The highest memory use of the job's processes together.
    pub peak_memory_bytes: Option<u64>,
}
