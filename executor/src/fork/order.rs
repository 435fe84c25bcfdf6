//! The executor's order for one forked job, as the template passes it through: a
//! few lines of text the executor writes and the job's child parses, bounded and
//! strict, so that the template (Python) never interprets it. The descriptors that
//! travel with it have fixed places, see [`Slot`].
//!
//! ```text
//! shm 67108864
//! rlimit 7 256          (RLIMIT_NOFILE 256)
//! read /opt/venv        (extra read-only paths landlock grants)
//! ```

use std::path::PathBuf;

use crate::sys::{Rlimit, MAX_CGROUPS, MAX_RLIMITS};

/// Longer orders are refused before they are parsed.
pub const MAX_ORDER_BYTES: usize = 4096;
/// Extra read-only paths, at most.
const MAX_READ_PATHS: usize = 32;

/// The limits an order may set: those the executor gives every jail.
const JAIL_RLIMITS: &[libc::__rlimit_resource_t] = &[
    libc::RLIMIT_AS,
    libc::RLIMIT_CORE,
    libc::RLIMIT_CPU,
    libc::RLIMIT_FSIZE,
    libc::RLIMIT_NOFILE,
    libc::RLIMIT_NPROC,
    libc::RLIMIT_STACK,
];

/// The place of each descriptor passed with an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Stdin = 0,
    Stdout = 1,
    Stderr = 2,
    /// Write end of the pipe on which pid 1 of the job reports the job's wait status.
    Status = 3,
    /// Detached mount clones (`open_tree`) of the job's work dir, `/tmp` and
    /// (read-only) `/sandbox`.
    Work = 4,
    Tmp = 5,
    Sandbox = 6,
    /// The join file (`tasks` on v1, `cgroup.procs` on v2) of each of the job's
    /// cgroups follows, opened by the executor.
    FirstCgroup = 7,
}

/// What one job's child does to itself, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub shm_bytes: u64,
    pub rlimits: Vec<Rlimit>,
    pub read: Vec<PathBuf>,
}

/// Why an order was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadOrder {
    #[error("the order is longer than {MAX_ORDER_BYTES} bytes")]
    TooLong,
    #[error("the order is not UTF-8")]
    NotText,
    #[error("line {0}: malformed")]
    Line(usize),
    #[error("no shm size")]
    NoShm,
    #[error("too many rlimits or read paths")]
    TooMany,
    #[error("{0} descriptors passed; an order needs {min} to {max}", min = Slot::FirstCgroup as usize, max = Slot::FirstCgroup as usize + MAX_CGROUPS)]
    Descriptors(usize),
}

impl Order {
    /// The text the executor sends.
    pub fn encode(&self) -> String {
        let mut text = format!("shm {}\n", self.shm_bytes);
        for (resource, value) in &self.rlimits {
            text.push_str(&format!("rlimit {resource} {value}\n"));
        }
        for path in &self.read {
            text.push_str(&format!("read {}\n", path.display()));
        }
        text
    }

    /// Parses an order that arrived with `fds` descriptors.
    pub fn parse(bytes: &[u8], fds: usize) -> Result<Order, BadOrder> {
        let min = Slot::FirstCgroup as usize;
        if !(min..=min + MAX_CGROUPS).contains(&fds) {
            return Err(BadOrder::Descriptors(fds));
        }
        if bytes.len() > MAX_ORDER_BYTES {
            return Err(BadOrder::TooLong);
        }
        let text = std::str::from_utf8(bytes).map_err(|_| BadOrder::NotText)?;
        let (mut shm_bytes, mut rlimits, mut read) = (None, Vec::new(), Vec::new());
        for (n, line) in text.lines().enumerate() {
            let bad = || BadOrder::Line(n + 1);
            let mut words = line.splitn(3, ' ');
            match (words.next(), words.next(), words.next()) {
                (Some("shm"), Some(size), None) => {
                    shm_bytes = Some(size.parse().map_err(|_| bad())?);
                }
                (Some("rlimit"), Some(resource), Some(value)) => {
                    let resource = resource.parse().map_err(|_| bad())?;
                    // Only the limits a jail sets; anything else is not ours to pass.
                    if !JAIL_RLIMITS.contains(&resource) {
                        return Err(bad());
                    }
                    rlimits.push((resource, value.parse().map_err(|_| bad())?));
                }
                (Some("read"), Some(first), rest) => {
                    let path = match rest {
                        Some(rest) => format!("{first} {rest}"),
                        None => first.to_owned(),
                    };
                    if !path.starts_with('/') {
                        return Err(bad());
                    }
                    read.push(PathBuf::from(path));
                }
                _ => return Err(bad()),
            }
        }
        if rlimits.len() > MAX_RLIMITS || read.len() > MAX_READ_PATHS {
            return Err(BadOrder::TooMany);
        }
        Ok(Order {
            shm_bytes: shm_bytes.ok_or(BadOrder::NoShm)?,
            rlimits,
            read,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FDS: usize = Slot::FirstCgroup as usize + 2;

    #[test]
    fn an_order_round_trips() {
        let order = Order {
            shm_bytes: 1 << 20,
            rlimits: vec![(libc::RLIMIT_NOFILE, 256), (libc::RLIMIT_CPU, 10)],
            read: vec!["/opt/my venv".into()],
        };
        assert_eq!(Order::parse(order.encode().as_bytes(), FDS), Ok(order));
    }

    #[test]
    fn hostile_orders_are_refused() {
        let parse = |text: &str| Order::parse(text.as_bytes(), FDS);
        assert_eq!(parse("rlimit 7 1\n"), Err(BadOrder::NoShm));
        assert_eq!(parse("shm -1\n"), Err(BadOrder::Line(1)));
        assert_eq!(parse("shm 1\nrlimit 99 1\n"), Err(BadOrder::Line(2)));
        assert_eq!(parse("shm 1\nrlimit 7\n"), Err(BadOrder::Line(2)));
        assert_eq!(parse("shm 1\nread relative\n"), Err(BadOrder::Line(2)));
        assert_eq!(parse("shm 1\nexec /bin/sh\n"), Err(BadOrder::Line(2)));
        assert_eq!(parse(&"shm 1\n".repeat(1000)), Err(BadOrder::TooLong));
        let many = format!("shm 1\n{}", "rlimit 7 1\n".repeat(MAX_RLIMITS + 1));
        assert_eq!(parse(&many), Err(BadOrder::TooMany));
        assert_eq!(Order::parse(&[0xff, 0xfe], FDS), Err(BadOrder::NotText));
    }

    /// Every bound holds at its value and one past it: the text's length, the
    /// rlimits and the read paths.
    #[test]
    fn an_order_is_bounded_exactly() {
        let parse = |text: &str| Order::parse(text.as_bytes(), FDS);
        let head = "shm 1\nread /";
        let longest = format!("{head}{}\n", "a".repeat(MAX_ORDER_BYTES - head.len() - 1));
        assert_eq!(longest.len(), MAX_ORDER_BYTES);
        assert_eq!(
            parse(&longest).map(|o| o.read[0].as_os_str().len()),
            Ok(MAX_ORDER_BYTES - "shm 1\nread \n".len())
        );
        assert_eq!(parse(&format!("{longest} ")), Err(BadOrder::TooLong));

        let rlimits = |n: usize| format!("shm 1\n{}", "rlimit 7 1\n".repeat(n));
        assert_eq!(
            parse(&rlimits(MAX_RLIMITS)).map(|o| o.rlimits.len()),
            Ok(MAX_RLIMITS)
        );
        assert_eq!(parse(&rlimits(MAX_RLIMITS + 1)), Err(BadOrder::TooMany));

        let reads = |n: usize| format!("shm 1\n{}", "read /opt/venv\n".repeat(n));
        assert_eq!(
            parse(&reads(MAX_READ_PATHS)).map(|o| o.read.len()),
            Ok(MAX_READ_PATHS)
        );
        assert_eq!(parse(&reads(MAX_READ_PATHS + 1)), Err(BadOrder::TooMany));
        assert_eq!(parse(&reads(MAX_READ_PATHS + 2)), Err(BadOrder::TooMany));
    }

    #[test]
    fn the_descriptor_count_is_checked() {
        let min = Slot::FirstCgroup as usize;
        assert_eq!(
            Order::parse(b"shm 1", min - 1),
            Err(BadOrder::Descriptors(min - 1))
        );
        let max = min + MAX_CGROUPS;
        assert_eq!(
            Order::parse(b"shm 1", max + 1),
            Err(BadOrder::Descriptors(max + 1))
        );
        assert!(Order::parse(b"shm 1", min).is_ok());
    }
}
