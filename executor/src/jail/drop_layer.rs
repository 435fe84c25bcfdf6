//! Test builds only: run every jail with some isolation layers left out, so the
//! black-box tests (`tests/tests/layers.rs`) can show that each remaining layer
//! holds on its own, and that each probe they use needs the layer it claims to test.
//!
//! The whole module is compiled only with `debug_assertions`, a property of the
//! build profile: a release build (`cargo build --release`, which `scripts/run-local`,
//! README and the image use) contains neither this code nor the variable's name, and
//! no config key, flag or request can turn it on there. A debug build reads
//! `PYSANDBOX_TEST_DROP_LAYER` from the executor's own environment at start (jobs
//! cannot set it) and logs a warning naming what it leaves out.
//!
//! The value is a comma-separated list of:
//! - `landlock`: jail-init skips `landlock_restrict_self`;
//! - `seccomp`: bwrap gets no `--seccomp` descriptor;
//! - `netns`: bwrap gets no `--unshare-net`, so the jail shares the host's network;
//! - `uid`: jails (bwrap and their work dirs) get the first allowed peer uid — the
//!   frontend's — instead of the sandbox uid. Inside the user namespace the job
//!   still is the sandbox uid, but on the host its processes are the frontend's: a
//!   process that left its namespaces could talk to the executor's socket as the
//!   frontend. That is the mistake the layer exists to prevent (a daemon's uid
//!   reused for jobs; config refuses it, this switch bypasses config), and the one a
//!   check of `/proc/<pid>/status` from the host must catch. Not root: the executor
//!   holds no `CAP_SETFCAP`, so bwrap as root cannot even write its uid map.

use std::ffi::OsString;

/// The executor's environment variable that selects the layers to leave out.
pub const VARIABLE: &str = "PYSANDBOX_TEST_DROP_LAYER";
/// jail-init's flag that makes it skip landlock.
pub const NO_LANDLOCK_FLAG: &str = "--test-no-landlock";

/// The layers a test build leaves out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    pub landlock: bool,
    pub seccomp: bool,
    pub netns: bool,
    pub uid: bool,
}

impl Dropped {
    /// Reads [`VARIABLE`]; unset or empty means every layer is in place. An unknown
    /// layer name is an error, so a typo in a test cannot silently test nothing.
    pub fn from_env() -> Result<Dropped, String> {
        match std::env::var(VARIABLE) {
            Ok(value) => parse(&value),
            Err(std::env::VarError::NotPresent) => Ok(Dropped::default()),
            Err(e) => Err(format!("{VARIABLE}: {e}")),
        }
    }

    /// Whether any layer is left out.
    pub fn any(self) -> bool {
        self != Dropped::default()
    }

    /// Removes from bwrap's fixed argv the options of the layers left out.
    pub fn edit_bwrap_args(self, args: &mut Vec<OsString>) {
        if self.netns {
            args.retain(|a| a != "--unshare-net");
        }
        if self.seccomp {
            if let Some(at) = args.iter().position(|a| a == "--seccomp") {
                args.drain(at..at + 2);
            }
        }
    }

    /// Adds jail-init's flag to a jail command (`jail-init ARGS...`) when landlock
    /// is left out.
    pub fn edit_command(self, command: &mut Vec<OsString>) {
        if self.landlock {
            command.insert(1, NO_LANDLOCK_FLAG.into());
        }
    }

    /// The host ids jails get instead of the sandbox user's when the uid layer is
    /// left out: the first allowed peer uid and the socket's group (else the same
    /// number).
    pub fn stand_in_ids(
        self,
        allow_uids: &[u32],
        socket_group: Option<u32>,
    ) -> Result<Option<(u32, u32)>, String> {
        if !self.uid {
            return Ok(None);
        }
        let uid = allow_uids.first().ok_or(format!(
            "{VARIABLE}=uid needs an allowed peer uid to run jails as"
        ))?;
        Ok(Some((*uid, socket_group.unwrap_or(*uid))))
    }
}

fn parse(value: &str) -> Result<Dropped, String> {
    let mut dropped = Dropped::default();
    for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let layer = match name {
            "landlock" => &mut dropped.landlock,
            "seccomp" => &mut dropped.seccomp,
            "netns" => &mut dropped.netns,
            "uid" => &mut dropped.uid,
            other => {
                return Err(format!(
                    "{VARIABLE}: unknown layer {other:?} (landlock, seccomp, netns, uid)"
                ))
            }
        };
        *layer = true;
    }
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_list_and_refuses_unknown_layers() {
        assert_eq!(parse(""), Ok(Dropped::default()));
        assert_eq!(
            parse("landlock, netns"),
            Ok(Dropped {
                landlock: true,
                netns: true,
                ..Dropped::default()
            })
        );
        assert_eq!(
            parse("seccomp,uid"),
            Ok(Dropped {
                seccomp: true,
                uid: true,
                ..Dropped::default()
            })
        );
        assert!(parse("landlock,namespaces").is_err());
        assert!(!Dropped::default().any());
        assert!(parse("uid").unwrap().any());
    }

    #[test]
    fn edits_only_the_options_of_the_dropped_layers() {
        let args = || -> Vec<OsString> {
            [
                "--unshare-user",
                "--unshare-net",
                "--seccomp",
                "5",
                "--uid",
                "9",
            ]
            .map(OsString::from)
            .to_vec()
        };
        let mut kept = args();
        Dropped::default().edit_bwrap_args(&mut kept);
        assert_eq!(kept, args());
        let mut edited = args();
        parse("netns,seccomp").unwrap().edit_bwrap_args(&mut edited);
        assert_eq!(edited, ["--unshare-user", "--uid", "9"]);

        let mut command = vec![OsString::from("jail-init"), "--".into()];
        parse("landlock").unwrap().edit_command(&mut command);
        assert_eq!(command, ["jail-init", NO_LANDLOCK_FLAG, "--"]);
        let uid = parse("uid").unwrap();
        assert_eq!(uid.stand_in_ids(&[7, 9], Some(8)), Ok(Some((7, 8))));
        assert_eq!(uid.stand_in_ids(&[7], None), Ok(Some((7, 7))));
        assert!(uid.stand_in_ids(&[], Some(8)).is_err());
        assert_eq!(
            parse("landlock").unwrap().stand_in_ids(&[7], None),
            Ok(None)
        );
    }
}
