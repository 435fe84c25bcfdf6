//! The jail's seccomp filter, generated here as classic BPF and handed to bwrap
//! (`--seccomp FD`), which loads it just before it runs jail-init.
//!
//! It is a deny list over the kernel surface Python never needs and attackers love.
//! Denied calls fail with EPERM, so Python raises a readable `PermissionError`
//! instead of dying; `clone3` fails with ENOSYS instead, because its flags live in
//! memory the filter cannot read: libc then falls back to `clone`, whose flags it can
//! (CVE-2021-41133 class). Arguments are compared on their low 32 bits only, as the
//! kernel does for `int` parameters, so junk in the upper half cannot slip a value
//! past the filter (CVE-2019-10063 class).

/// What the filter answers for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Errno(u16),
}

impl Action {
    fn ret(self) -> u32 {
        match self {
            Action::Allow => SECCOMP_RET_ALLOW,
            Action::Errno(errno) => SECCOMP_RET_ERRNO | u32::from(errno),
        }
    }
}

/// When a rule's action applies; otherwise the call is allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum When {
    Always,
    /// The argument has any of these bits set.
    AnyBit {
        arg: u8,
        mask: u32,
    },
    /// The argument is one of these values.
    OneOf {
        arg: u8,
        values: &'static [u32],
    },
    /// The argument is none of these values.
    NoneOf {
        arg: u8,
        values: &'static [u32],
    },
}

/// One line of policy: a syscall, when it is refused, how, and why.
#[derive(Debug, Clone, Copy)]
struct Rule {
    nr: libc::c_long,
    #[allow(
        dead_code,
        reason = "read by the test that pins the table to README, not by the compiler"
    )]
    name: &'static str,
    when: When,
    action: Action,
    #[allow(
        dead_code,
        reason = "read by people and by the rule-table test, not by the compiler"
    )]
    why: &'static str,
}

const EPERM: Action = Action::Errno(libc::EPERM as u16);
const ENOSYS: Action = Action::Errno(libc::ENOSYS as u16);

/// Every namespace flag of clone(2): creating a namespace is how most container
/// escapes start.
const CLONE_NEW_ANY: u32 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u32
    | 0x80; // CLONE_NEWTIME, not in libc for every target

/// The socket families a job may open: local sockets and IP (the proxy, loopback).
const SOCKET_FAMILIES: &[u32] = &[
    libc::AF_UNIX as u32,
    libc::AF_INET as u32,
    libc::AF_INET6 as u32,
];

macro_rules! rule {
    ($nr:ident, $why:literal) => {
        rule!($nr, When::Always, EPERM, $why)
    };
    ($nr:ident, $when:expr, $action:expr, $why:literal) => {
        Rule {
            nr: libc::$nr,
            name: stringify!($nr),
            when: $when,
            action: $action,
            why: $why,
        }
    };
}

/// The policy. One rule per syscall.
const RULES: &[Rule] = &[
    rule!(
        SYS_ptrace,
        "reading or steering another process (bwrap's pid 1, socat)"
    ),
    rule!(SYS_process_vm_readv, "reading another process's memory"),
    rule!(SYS_process_vm_writev, "writing another process's memory"),
    rule!(
        SYS_pidfd_getfd,
        "stealing a descriptor from another process"
    ),
    rule!(SYS_mount, "changing the jail's mounts"),
    rule!(SYS_umount2, "uncovering what the jail's mounts hide"),
    rule!(SYS_pivot_root, "changing the jail's root"),
    rule!(SYS_move_mount, "new mount API"),
    rule!(SYS_open_tree, "new mount API: cloning a mount"),
    rule!(SYS_fsopen, "new mount API"),
    rule!(SYS_fsconfig, "new mount API"),
    rule!(SYS_fsmount, "new mount API"),
    rule!(SYS_fspick, "new mount API"),
    rule!(
        SYS_mount_setattr,
        "new mount API: making read-only mounts writable"
    ),
    rule!(
        SYS_unshare,
        "new namespaces: a nested user namespace regains capabilities"
    ),
    rule!(SYS_setns, "entering other namespaces"),
    rule!(
        SYS_clone,
        When::AnyBit {
            arg: 0,
            mask: CLONE_NEW_ANY
        },
        EPERM,
        "new namespaces through clone; threads and plain forks stay allowed"
    ),
    rule!(
        SYS_clone3,
        When::Always,
        ENOSYS,
        "its flags are behind a pointer the filter cannot read; ENOSYS makes libc use clone"
    ),
    rule!(SYS_bpf, "eBPF: a large kernel attack surface"),
    rule!(
        SYS_perf_event_open,
        "perf: kernel attack surface and side channels"
    ),
    rule!(SYS_keyctl, "the kernel keyring is not namespaced"),
    rule!(SYS_add_key, "the kernel keyring is not namespaced"),
    rule!(SYS_request_key, "the kernel keyring is not namespaced"),
    rule!(
        SYS_io_uring_setup,
        "io_uring: frequent kernel bugs, and it bypasses seccomp"
    ),
    rule!(SYS_io_uring_enter, "io_uring"),
    rule!(SYS_io_uring_register, "io_uring"),
    rule!(
        SYS_userfaultfd,
        "stalls kernel code at will: a race-exploit primitive"
    ),
    rule!(SYS_kexec_load, "replacing the kernel"),
    rule!(SYS_kexec_file_load, "replacing the kernel"),
    rule!(SYS_init_module, "loading kernel code"),
    rule!(SYS_finit_module, "loading kernel code"),
    rule!(SYS_delete_module, "unloading kernel code"),
    rule!(SYS_reboot, "rebooting the host"),
    rule!(SYS_swapon, "host swap configuration"),
    rule!(SYS_swapoff, "host swap configuration"),
    rule!(SYS_acct, "host process accounting"),
    rule!(SYS_quotactl, "host disk quotas"),
    rule!(SYS_quotactl_fd, "host disk quotas"),
    rule!(
        SYS_open_by_handle_at,
        "opening files by handle, around the mount table (Shocker)"
    ),
    rule!(
        SYS_ioctl,
        When::OneOf {
            arg: 1,
            values: &[libc::TIOCSTI as u32, libc::TIOCLINUX as u32],
        },
        EPERM,
        "TIOCSTI/TIOCLINUX push input into a terminal outside the jail"
    ),
    rule!(
        SYS_socket,
        When::NoneOf {
            arg: 0,
            values: SOCKET_FAMILIES
        },
        EPERM,
        "netlink, packet, vsock and other families: kernel surface Python does not need"
    ),
];

/// How many syscalls the policy restricts.
pub const RULE_COUNT: usize = RULES.len();

const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;
/// x86_64 also accepts the x32 ABI: the same syscalls with this bit set in the number.
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: Option<u32> = Some(0x4000_0000);
#[cfg(not(target_arch = "x86_64"))]
const X32_SYSCALL_BIT: Option<u32> = None;

/// Offsets in `struct seccomp_data`.
const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;
/// The low 32 bits of argument `i` (little-endian).
fn offset_arg(arg: u8) -> u32 {
    16 + 8 * u32::from(arg)
}

const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JEQ_K: u16 = 0x15;
const BPF_JGE_K: u16 = 0x35;
const BPF_JSET_K: u16 = 0x45;
const BPF_RET_K: u16 = 0x06;

/// One classic BPF instruction (`struct sock_filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

fn ld(offset: u32) -> Insn {
    Insn {
        code: BPF_LD_W_ABS,
        jt: 0,
        jf: 0,
        k: offset,
    }
}

fn jeq(k: u32, jt: u8, jf: u8) -> Insn {
    Insn {
        code: BPF_JEQ_K,
        jt,
        jf,
        k,
    }
}

fn ret(action: Action) -> Insn {
    Insn {
        code: BPF_RET_K,
        jt: 0,
        jf: 0,
        k: action.ret(),
    }
}

/// Compiles the policy: calls from another ABI (i386 via `int 0x80`, x32) are refused
/// outright, since rules keyed on x86_64 numbers would not match them; then one block
/// per rule; everything else is allowed.
pub fn program() -> Vec<Insn> {
    compile(RULES.iter())
}

/// The calls a fork-server template's child makes to build a job's jail (its own
/// namespaces, the job's mounts, a fresh `/proc`): the only rules a template's
/// filter leaves out. Each job then stacks the whole [`program`] on it.
const TEMPLATE_NEEDS: &[libc::c_long] = &[libc::SYS_unshare, libc::SYS_mount, libc::SYS_move_mount];

/// The template's filter: every rule but those in [`TEMPLATE_NEEDS`].
pub fn template_program() -> Vec<Insn> {
    compile(RULES.iter().filter(|r| !TEMPLATE_NEEDS.contains(&r.nr)))
}

/// A filter that allows `calls` and refuses every other call, and every other ABI,
/// with EPERM: for a process of ours that must never do anything else.
pub fn only(calls: &[libc::c_long]) -> Vec<Insn> {
    let mut prog = this_abi_only();
    for &nr in calls {
        prog.extend([jeq(nr as u32, 0, 1), ret(Action::Allow)]);
    }
    prog.push(ret(EPERM));
    prog
}

fn compile<'a>(rules: impl Iterator<Item = &'a Rule>) -> Vec<Insn> {
    let mut prog = this_abi_only();
    for rule in rules {
        let block = block(rule);
        let skip = u8::try_from(block.len()).expect("a rule's block is short");
        prog.push(jeq(rule.nr as u32, 0, skip));
        prog.extend(block);
    }
    prog.push(ret(Action::Allow));
    prog
}

/// A program's start: a call from another ABI is refused, since rules keyed on
/// this ABI's numbers would not match it; the accumulator then holds the number.
fn this_abi_only() -> Vec<Insn> {
    let mut prog = vec![
        ld(OFFSET_ARCH),
        jeq(AUDIT_ARCH, 1, 0),
        ret(EPERM),
        ld(OFFSET_NR),
    ];
    if let Some(bit) = X32_SYSCALL_BIT {
        prog.extend([
            Insn {
                code: BPF_JGE_K,
                jt: 0,
                jf: 1,
                k: bit,
            },
            ret(EPERM),
        ]);
    }
    prog
}

/// The instructions run once the syscall number matched. They may clobber the
/// accumulator: every path ends in a return.
fn block(rule: &Rule) -> Vec<Insn> {
    let deny = ret(rule.action);
    let allow = ret(Action::Allow);
    match rule.when {
        When::Always => vec![deny],
        When::AnyBit { arg, mask } => vec![
            ld(offset_arg(arg)),
            Insn {
                code: BPF_JSET_K,
                jt: 0,
                jf: 1,
                k: mask,
            },
            deny,
            allow,
        ],
        When::OneOf { arg, values } => membership(arg, values, deny, allow),
        When::NoneOf { arg, values } => membership(arg, values, allow, deny),
    }
}

/// Loads argument `arg` and compares it with each of `values`: a match jumps over
/// the remaining comparisons and `otherwise` to `matched`; no match falls through to
/// `otherwise`.
fn membership(arg: u8, values: &[u32], matched: Insn, otherwise: Insn) -> Vec<Insn> {
    let n = values.len() as u8;
    let mut block = vec![ld(offset_arg(arg))];
    block.extend(
        values
            .iter()
            .enumerate()
            .map(|(i, &v)| jeq(v, n - i as u8, 0)),
    );
    block.extend([otherwise, matched]);
    block
}

/// The program as the bytes of a `struct sock_filter` array, which is what bwrap
/// reads from its `--seccomp` descriptor.
pub fn bytes() -> Vec<u8> {
    as_bytes(&program())
}

/// [`template_program`] as bytes for bwrap.
pub fn template_bytes() -> Vec<u8> {
    as_bytes(&template_program())
}

fn as_bytes(program: &[Insn]) -> Vec<u8> {
    program
        .iter()
        .flat_map(|insn| {
            let mut raw = [0u8; 8];
            raw[..2].copy_from_slice(&insn.code.to_ne_bytes());
            raw[2] = insn.jt;
            raw[3] = insn.jf;
            raw[4..].copy_from_slice(&insn.k.to_ne_bytes());
            raw
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// A classic-BPF interpreter for the few instructions the compiler emits.
    fn run(prog: &[Insn], nr: u64, arch: u32, args: [u64; 6]) -> Action {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&(nr as u32).to_le_bytes());
        data[4..8].copy_from_slice(&arch.to_le_bytes());
        for (i, arg) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&arg.to_le_bytes());
        }
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let insn = prog[pc];
            let jump = |taken: bool| 1 + usize::from(if taken { insn.jt } else { insn.jf });
            pc += match insn.code {
                BPF_LD_W_ABS => {
                    let at = insn.k as usize;
                    acc = u32::from_le_bytes(data[at..at + 4].try_into().unwrap());
                    1
                }
                BPF_JEQ_K => jump(acc == insn.k),
                BPF_JGE_K => jump(acc >= insn.k),
                BPF_JSET_K => jump(acc & insn.k != 0),
                BPF_RET_K => {
                    return match insn.k {
                        SECCOMP_RET_ALLOW => Action::Allow,
                        k if k & 0xffff_0000 == SECCOMP_RET_ERRNO => Action::Errno(k as u16),
                        k => panic!("unexpected return {k:#x}"),
                    }
                }
                code => panic!("unexpected instruction {code:#x}"),
            };
        }
    }

    fn call(nr: libc::c_long, args: [u64; 6]) -> Action {
        run(&program(), nr as u64, AUDIT_ARCH, args)
    }

    #[test]
    fn a_template_may_only_build_jails_beyond_what_a_job_may_do() {
        let template = template_program();
        let in_template = |nr: libc::c_long| run(&template, nr as u64, AUDIT_ARCH, [0; 6]);
        for nr in TEMPLATE_NEEDS {
            assert_eq!(call(*nr, [0; 6]), EPERM);
            assert_eq!(in_template(*nr), Action::Allow);
        }
        for rule in RULES.iter().filter(|r| !TEMPLATE_NEEDS.contains(&r.nr)) {
            let args = [u64::MAX; 6];
            assert_eq!(
                run(&template, rule.nr as u64, AUDIT_ARCH, args),
                run(&program(), rule.nr as u64, AUDIT_ARCH, args),
                "{}",
                rule.name
            );
        }
        assert_eq!(in_template(libc::SYS_ptrace), EPERM);
        assert_eq!(in_template(libc::SYS_setns), EPERM);
        assert_eq!(
            run(&template, libc::SYS_getpid as u64, 0x4000_0003, [0; 6]),
            EPERM,
            "another ABI"
        );
    }

    #[test]
    fn unconditional_rules_deny_with_eperm_and_clone3_with_enosys() {
        for rule in RULES.iter().filter(|r| r.when == When::Always) {
            assert_eq!(call(rule.nr, [0; 6]), rule.action, "{}", rule.why);
        }
        assert_eq!(call(libc::SYS_ptrace, [0; 6]), EPERM);
        assert_eq!(call(libc::SYS_clone3, [0; 6]), ENOSYS);
    }

    #[test]
    fn only_allows_the_listed_calls_of_this_abi() {
        let holder = only(&[libc::SYS_read, libc::SYS_write]);
        let call = |nr: libc::c_long, arch| run(&holder, nr as u64, arch, [0; 6]);
        assert_eq!(call(libc::SYS_read, AUDIT_ARCH), Action::Allow);
        assert_eq!(call(libc::SYS_write, AUDIT_ARCH), Action::Allow);
        for nr in [
            libc::SYS_openat,
            libc::SYS_kill,
            libc::SYS_mmap,
            libc::SYS_exit,
        ] {
            assert_eq!(call(nr, AUDIT_ARCH), EPERM, "{nr}");
        }
        assert_eq!(call(libc::SYS_read, 0x4000_0003), EPERM);
        #[cfg(target_arch = "x86_64")]
        assert_eq!(call(libc::SYS_read | 0x4000_0000, AUDIT_ARCH), EPERM);
    }

    #[test]
    fn ordinary_calls_are_allowed() {
        for nr in [
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_openat,
            libc::SYS_execve,
            libc::SYS_mmap,
        ] {
            assert_eq!(call(nr, [0; 6]), Action::Allow);
        }
    }

    #[test]
    fn clone_is_refused_only_with_namespace_flags() {
        let thread = (libc::CLONE_VM
            | libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD) as u64;
        assert_eq!(
            call(libc::SYS_clone, [thread, 0, 0, 0, 0, 0]),
            Action::Allow
        );
        assert_eq!(
            call(libc::SYS_clone, [libc::SIGCHLD as u64, 0, 0, 0, 0, 0]),
            Action::Allow
        );
        for flag in [
            libc::CLONE_NEWUSER,
            libc::CLONE_NEWNS,
            libc::CLONE_NEWNET,
            libc::CLONE_NEWPID,
        ] {
            let flags = libc::SIGCHLD as u64 | flag as u64;
            assert_eq!(call(libc::SYS_clone, [flags, 0, 0, 0, 0, 0]), EPERM);
        }
        assert_eq!(
            call(libc::SYS_clone, [0x80, 0, 0, 0, 0, 0]),
            EPERM,
            "CLONE_NEWTIME"
        );
    }

    #[test]
    fn arguments_are_compared_on_their_low_32_bits() {
        let tiocsti = u64::from(libc::TIOCSTI as u32);
        assert_eq!(call(libc::SYS_ioctl, [0, tiocsti, 0, 0, 0, 0]), EPERM);
        assert_eq!(
            call(
                libc::SYS_ioctl,
                [0, tiocsti | 0xffff_ffff_0000_0000, 0, 0, 0, 0]
            ),
            EPERM
        );
        assert_eq!(
            call(
                libc::SYS_ioctl,
                [0, u64::from(libc::TIOCLINUX as u32), 0, 0, 0, 0]
            ),
            EPERM
        );
        assert_eq!(
            call(
                libc::SYS_ioctl,
                [0, u64::from(libc::TIOCGWINSZ as u32), 0, 0, 0, 0]
            ),
            Action::Allow
        );
        let newuser = (libc::CLONE_NEWUSER as u64) | (1 << 40);
        assert_eq!(call(libc::SYS_clone, [newuser, 0, 0, 0, 0, 0]), EPERM);
    }

    #[test]
    fn only_local_and_ip_sockets() {
        for family in [libc::AF_UNIX, libc::AF_INET, libc::AF_INET6] {
            assert_eq!(
                call(libc::SYS_socket, [family as u64, 1, 0, 0, 0, 0]),
                Action::Allow
            );
        }
        for family in [
            libc::AF_NETLINK,
            libc::AF_PACKET,
            libc::AF_VSOCK,
            libc::AF_BLUETOOTH,
        ] {
            assert_eq!(
                call(libc::SYS_socket, [family as u64, 1, 0, 0, 0, 0]),
                EPERM
            );
        }
        let inet_with_junk = libc::AF_INET as u64 | 0xdead_0000_0000;
        assert_eq!(
            call(libc::SYS_socket, [inet_with_junk, 1, 0, 0, 0, 0]),
            Action::Allow
        );
    }

    #[test]
    fn other_abis_are_refused() {
        let prog = program();
        assert_eq!(
            run(&prog, libc::SYS_read as u64, 0x4000_0003, [0; 6]),
            EPERM,
            "i386"
        );
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            run(
                &prog,
                0x4000_0000 | libc::SYS_read as u64,
                AUDIT_ARCH,
                [0; 6]
            ),
            EPERM,
            "x32"
        );
    }

    #[test]
    fn every_rule_says_why_and_no_syscall_has_two_rules() {
        let mut seen = std::collections::HashSet::new();
        for rule in RULES {
            assert!(rule.why.len() > 5, "rule {} needs a reason", rule.nr);
            assert!(seen.insert(rule.nr), "syscall {} has two rules", rule.nr);
        }
        assert_eq!(bytes().len(), program().len() * 8);
    }

    /// bwrap reads a `struct sock_filter` array (`u16 code, u8 jt, u8 jf, u32 k`, in
    /// native byte order): what a job's jail and a template's jail load are their
    /// programs, instruction for instruction.
    #[test]
    fn bwrap_gets_each_program_as_sock_filter_bytes() {
        let decode = |bytes: &[u8]| -> Vec<Insn> {
            assert_eq!(bytes.len() % 8, 0, "whole instructions only");
            bytes
                .chunks_exact(8)
                .map(|raw| Insn {
                    code: u16::from_ne_bytes([raw[0], raw[1]]),
                    jt: raw[2],
                    jf: raw[3],
                    k: u32::from_ne_bytes([raw[4], raw[5], raw[6], raw[7]]),
                })
                .collect()
        };
        assert_eq!(decode(&bytes()), program());
        assert_eq!(decode(&template_bytes()), template_program());
        // The first instruction loads the architecture (offset 4 in seccomp_data).
        let mut first = BPF_LD_W_ABS.to_ne_bytes().to_vec();
        first.extend([0, 0]);
        first.extend(OFFSET_ARCH.to_ne_bytes());
        assert_eq!(template_bytes()[..8], first[..]);
        assert_eq!(bytes()[..8], first[..]);
    }

    /// README's "Layers of isolation", item 3: the promise the table keeps.
    const README: &str = include_str!("../../../README.md");

    /// The syscall names README's seccomp item lists after `before` and up to `after`:
    /// `a_b/c` stands for `a_b` and `a_c`, `io_uring_*` for every `io_uring_` rule,
    /// upper-case words (ioctl requests, socket families) are returned apart.
    fn readme_list(before: &str, after: &str) -> (BTreeSet<String>, BTreeSet<String>) {
        const PROSE: &[&str] = &[
            "and", "the", "new", "API", "with", "any", "flag", "ioctls", "sockets", "other", "than",
        ];
        let item = README
            .split_once("3. **seccomp**")
            .and_then(|(_, rest)| rest.split_once("4. **landlock**"))
            .expect("README's layers list has a seccomp item 3 before landlock")
            .0;
        let list = item
            .split_once(before)
            .and_then(|(_, rest)| rest.split_once(after))
            .unwrap_or_else(|| panic!("README's seccomp item has {before:?} … {after:?}"))
            .0;
        let (mut lower, mut upper) = (BTreeSet::new(), BTreeSet::new());
        let words = list.split(|c: char| !(c.is_ascii_alphanumeric() || "_*/".contains(c)));
        for word in words.filter(|w| !w.is_empty()) {
            let mut parts = word.split('/');
            let first = parts.next().unwrap_or_default().to_owned();
            let prefix = first.rfind('_').map_or("", |at| &first[..=at]).to_owned();
            let names = std::iter::once(first.clone()).chain(parts.map(|part| {
                if part.contains('_') || prefix.is_empty() || part.chars().any(|c| c.is_uppercase())
                {
                    part.to_owned()
                } else {
                    format!("{prefix}{part}")
                }
            }));
            for name in names {
                if PROSE.contains(&name.as_str()) {
                    continue;
                }
                if name.chars().any(|c| c.is_ascii_uppercase()) {
                    upper.insert(name);
                } else {
                    lower.insert(name);
                }
            }
        }
        (lower, upper)
    }

    /// Neither the table nor README's list can change alone: every rule is named in
    /// README with its errno, and every name README gives has its rule, with the
    /// ioctl requests, socket families and clone flags it names.
    #[test]
    fn the_rule_table_is_the_list_readme_promises() {
        let rule = |name: &str| {
            RULES
                .iter()
                .find(|r| r.name == name)
                .unwrap_or_else(|| panic!("README names {name}, which has no rule"))
        };
        let (eperm, upper) = readme_list("`EPERM` for", "; `ENOSYS` for");
        let mut promised = BTreeSet::new();
        for name in &eperm {
            match name.strip_suffix('*') {
                Some(prefix) => {
                    let family: Vec<_> = RULES
                        .iter()
                        .filter(|r| r.name.starts_with(&format!("SYS_{prefix}")))
                        .map(|r| r.name.to_owned())
                        .collect();
                    assert!(!family.is_empty(), "README's {name} matches no rule");
                    promised.extend(family);
                }
                None => {
                    promised.insert(format!("SYS_{name}"));
                }
            }
        }
        assert_eq!(
            upper,
            [
                "AF_INET",
                "AF_INET6",
                "AF_UNIX",
                "CLONE_NEW*",
                "TIOCLINUX",
                "TIOCSTI"
            ]
            .map(String::from)
            .into()
        );
        promised.extend(["SYS_ioctl", "SYS_socket"].map(String::from));
        let denied: BTreeSet<String> = RULES
            .iter()
            .filter(|r| r.action == EPERM)
            .map(|r| r.name.to_owned())
            .collect();
        assert_eq!(denied, promised, "rules with EPERM vs README's list");
        for name in &promised {
            let rule = rule(name);
            let expected = match rule.name {
                "SYS_clone" => When::AnyBit {
                    arg: 0,
                    mask: CLONE_NEW_ANY,
                },
                "SYS_ioctl" => When::OneOf {
                    arg: 1,
                    values: &[libc::TIOCSTI as u32, libc::TIOCLINUX as u32],
                },
                "SYS_socket" => When::NoneOf {
                    arg: 0,
                    values: &[
                        libc::AF_UNIX as u32,
                        libc::AF_INET as u32,
                        libc::AF_INET6 as u32,
                    ],
                },
                _ => When::Always,
            };
            assert_eq!(rule.when, expected, "{name}");
            // And the compiled program does what the rule says.
            if rule.when == When::Always {
                assert_eq!(call(rule.nr, [0; 6]), EPERM, "{name}");
            }
        }
        assert_eq!(
            CLONE_NEW_ANY, 0x7e02_0080,
            "every CLONE_NEW* flag, CLONE_NEWTIME too"
        );

        let (enosys, none) = readme_list("`ENOSYS` for", " (libc");
        assert_eq!(
            (enosys, none),
            (["clone3".to_owned()].into(), BTreeSet::new())
        );
        let clone3 = rule("SYS_clone3");
        assert_eq!((clone3.when, clone3.action), (When::Always, ENOSYS));
        assert_eq!(call(libc::SYS_clone3, [0; 6]), ENOSYS);
        assert_eq!(
            RULES.len(),
            promised.len() + 1,
            "no rule README does not name"
        );
    }
}
