//! The fork server's templates, seen from the executor (`docs/fork-server.md`):
//! long-lived, jailed Pythons — one that already imported the heavy modules, one
//! lean — that fork one child per job. This module starts them, keeps them ready,
//! replaces one when it dies or when asked ([`ForkServer::reload`]), and hands them
//! jobs. While none is ready, jobs take the cold path: a job never waits for a
//! template, and never runs anywhere but in a jail.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::socket::{
    sendmsg, socketpair, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Child;
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::cgroup::{Cgroups, Controller};
use crate::config::Config;
use crate::error::Error;
use crate::jail::{Current, Jail};

/// How long a template may take to start and import its modules.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// The wait before starting a template again after one failed, doubled up to the max.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How many lines of a template's stderr reach the log, per template.
const MAX_LOGGED_LINES: usize = 50;
/// How often a replaced template is checked for jobs still running.
const RETIRE_POLL: Duration = Duration::from_millis(200);

/// A template that said it is ready.
#[derive(Debug)]
pub struct Template {
    /// Our end of its control socket (SOCK_SEQPACKET): one message per job.
    control: OwnedFd,
    pub pid: u32,
    pub generation: u64,
}

impl Template {
    /// Hands the template one job: `order` (see `fork::order`) with its descriptors.
    /// Never blocks: a template that cannot take the message now is as good as gone.
    pub fn send(&self, order: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
        let sent = sendmsg::<()>(
            self.control.as_raw_fd(),
            &[IoSlice::new(order)],
            &[ControlMessage::ScmRights(fds)],
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
            None,
        )?;
        if sent != order.len() {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        Ok(())
    }
}

/// Starts the fork server when the configuration asks for it and the host has
/// what it needs: memory and pids cgroups (forked jobs are limited and killed
/// through them) and one sandbox uid (every forked job runs as the template's).
/// A SIGHUP replaces both templates.
pub fn start(
    config: &Config,
    cgroups: Option<&Cgroups>,
    jail: &Arc<Current>,
) -> Option<Arc<ForkServer>> {
    if !config.fork_server {
        return None;
    }
    let has = |c| cgroups.is_some_and(|g| g.has(c));
    if !has(Controller::Memory) || !has(Controller::Pids) {
        warn!("the fork server needs memory and pids cgroups: it is off, every job starts its own jail");
        return None;
    }
    if !config.fork_library.exists() {
        warn!(library = %config.fork_library.display(),
            "the fork server's library is missing (see README, Install as a service): it is off, every job starts its own jail");
        return None;
    }
    if jail.get().layers_dropped() {
        warn!("isolation layers are left out (a test build's switch): the fork server is off");
        return None;
    }
    if config.sandbox_ids != 1 {
        warn!("the fork server runs every job as one uid: it is off while sandbox_ids is not 1");
        return None;
    }
    let max_age = config.fork_template_max_age;
    let server = Arc::new(ForkServer {
        heavy: Arc::new(Templates::new(
            "template",
            config.fork_preload.clone(),
            max_age,
        )),
        lean: Arc::new(Templates::new("lean template", Vec::new(), max_age)),
    });
    let ids = jail
        .get()
        .host_ids((config.sandbox_uid, config.sandbox_gid));
    for templates in [&server.heavy, &server.lean] {
        tokio::spawn(Arc::clone(templates).supervise(Arc::clone(jail), ids));
    }
    let on_hangup = Arc::clone(&server);
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            return;
        };
        while hangups.recv().await.is_some() {
            on_hangup.reload();
        }
    });
    Some(server)
}

/// Two templates: one with the heavy modules imported, for the jobs that use
/// them, and a lean one without, for the rest — forking copies the page tables
/// of the whole template, which a `print(2+2)` should not pay for pandas.
#[derive(Debug)]
pub struct ForkServer {
    heavy: Arc<Templates>,
    lean: Arc<Templates>,
}

impl ForkServer {
    /// The ready template a job of `code` forks from: the heavy one when the code
    /// names one of its modules (or imports by name at run time), else the lean
    /// one; the other when that one is not ready. A wrong guess only costs time:
    /// the job imports what it needs either way.
    pub fn for_code(&self, code: &str) -> Option<Arc<Template>> {
        let (first, second) = match self.heavy.wanted_by(code) {
            true => (&self.heavy, &self.lean),
            false => (&self.lean, &self.heavy),
        };
        first.ready().or_else(|| second.ready())
    }

    /// The template a session forks from: the heavy one while it is ready, since a
    /// session's later cells may import anything.
    pub fn for_session(&self) -> Option<Arc<Template>> {
        self.heavy.ready().or_else(|| self.lean.ready())
    }

    /// Replaces both templates.
    pub fn reload(&self) {
        self.heavy.reload();
        self.lean.reload();
    }

    /// For `/health`: "ready: …" once both templates are, with their pids and
    /// generations.
    pub fn status(&self) -> String {
        let described = |t: &Templates| {
            t.ready()
                .map(|r| format!("{} pid {} (generation {})", t.name, r.pid, r.generation))
        };
        match (described(&self.heavy), described(&self.lean)) {
            (Some(heavy), Some(lean)) => format!(
                "ready: {heavy} with {}; {lean}; jobs without network fork from one",
                self.heavy.preload.join(", ")
            ),
            (heavy, lean) => format!(
                "not ready ({} of 2 templates): jobs run in cold jails until one is",
                usize::from(heavy.is_some()) + usize::from(lean.is_some())
            ),
        }
    }
}

/// The current template of one kind, if one is ready, and the supervisor that
/// keeps it so.
#[derive(Debug)]
pub struct Templates {
    /// For logs and `/health`.
    name: &'static str,
    /// The modules it imports.
    preload: Vec<String>,
    /// How long one serves before a fresh one replaces it.
    max_age: Duration,
    current: Mutex<Option<Arc<Template>>>,
    reload: Notify,
}

impl Templates {
    fn new(name: &'static str, preload: Vec<String>, max_age: Duration) -> Templates {
        Templates {
            name,
            preload,
            max_age,
            current: Mutex::new(None),
            reload: Notify::new(),
        }
    }

    /// Whether `code` names one of this template's modules (its top-level
    /// package), or imports by a name computed at run time.
    fn wanted_by(&self, code: &str) -> bool {
        code.contains("__import__")
            || code.contains("importlib")
            || self
                .preload
                .iter()
                .filter_map(|module| module.split('.').next())
                .any(|package| code.contains(package))
    }

    /// The ready template, if any.
    pub fn ready(&self) -> Option<Arc<Template>> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Asks for a fresh template (SIGHUP): the current one serves until its
    /// successor is ready, then retires; jobs it forked run to their end.
    pub fn reload(&self) {
        self.reload.notify_one();
    }

    fn set(&self, template: Option<Arc<Template>>) {
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = template;
    }

    /// Keeps a template ready for as long as the executor runs.
    pub async fn supervise(self: Arc<Self>, jail: Arc<Current>, ids: (u32, u32)) {
        let mut backoff = FIRST_BACKOFF;
        let mut generation = 0;
        // The template in service and its bwrap process (dropping it kills the
        // template, and with it every job it forked: see `retire`).
        let mut serving: Option<(Arc<Template>, Child)> = None;
        loop {
            generation += 1;
            match spawn(&jail.get(), ids, &self.preload, generation).await {
                Ok((template, child)) => {
                    info!(
                        pid = template.pid,
                        generation,
                        template = self.name,
                        "fork-server template ready"
                    );
                    let template = Arc::new(template);
                    self.set(Some(Arc::clone(&template)));
                    if let Some(old) = serving.replace((template, child)) {
                        tokio::spawn(retire(old));
                    }
                    backoff = FIRST_BACKOFF;
                }
                Err(e) => {
                    warn!(error = %crate::error::chain(&e), generation,
                        "fork-server template did not start; jobs run in cold jails meanwhile");
                }
            }
            // A template that still serves goes on serving after its successor failed.
            let Some((_, child)) = serving.as_mut() else {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            };
            tokio::select! {
                status = child.wait() => {
                    warn!(?status, generation, "fork-server template exited; starting another");
                    self.set(None);
                    serving = None;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                () = self.reload.notified() => {
                    info!(generation, "replacing the fork-server template");
                }
                // What every job of a template shares with the others (the hash
                // secret, the address layout, whatever a compromise of the template
                // would plant) lasts at most this long.
                () = tokio::time::sleep(self.max_age) => {
                    info!(generation, template = self.name,
                        "replacing the fork-server template: it served fork_template_max_age_ms");
                }
            }
        }
    }
}

/// Lets a replaced template's jobs end, then kills it. Its jobs live in namespaces
/// nested in its own, so killing it first would kill them; each job holds the
/// template's `Arc` until it ended.
async fn retire((template, mut child): (Arc<Template>, Child)) {
    while Arc::strong_count(&template) > 1 {
        tokio::select! {
            _ = child.wait() => return,
            () = tokio::time::sleep(RETIRE_POLL) => {}
        }
    }
    info!(
        generation = template.generation,
        "retired the old fork-server template"
    );
}

/// Starts a template and waits until it says it is ready.
async fn spawn(
    jail: &Jail,
    ids: (u32, u32),
    preload: &[String],
    generation: u64,
) -> Result<(Template, Child), Error> {
    let (control, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| Error::jail("create the template's control socket")(e.into()))?;
    let (mut child, mut ready) = jail.spawn_template(ids, theirs, preload)?;
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(log_stderr(stderr, generation));
    }
    let mut byte = [0u8; 1];
    let confirmed = tokio::time::timeout(READY_TIMEOUT, ready.read_exact(&mut byte)).await;
    match confirmed {
        Ok(Ok(_)) if byte == *b"W" => {}
        _ => return Err(Error::TemplateDidNotStart),
    }
    let pid = child.id().unwrap_or_default();
    Ok((
        Template {
            control,
            pid,
            generation,
        },
        child,
    ))
}

/// Passes what a template says on stderr (an import that failed, say) to the log.
async fn log_stderr(stderr: tokio::process::ChildStderr, generation: u64) {
    let mut lines = BufReader::new(stderr).lines();
    let mut logged = 0;
    while let Ok(Some(line)) = lines.next_line().await {
        if logged < MAX_LOGGED_LINES {
            warn!(generation, line = %pysandbox_shared::text::shown(&line, 500), "fork-server template said");
            logged += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_naming_a_heavy_module_want_the_heavy_template() {
        let heavy = Templates::new(
            "template",
            vec!["numpy".into(), "matplotlib.pyplot".into()],
            Duration::MAX,
        );
        for code in [
            "import numpy as np",
            "from matplotlib import pyplot",
            "import os, matplotlib",
            "m = __import__('nu' + 'mpy')",
            "import importlib\nimportlib.import_module(name)",
        ] {
            assert!(heavy.wanted_by(code), "{code}");
        }
        for code in ["print(2 + 2)", "import json, os\nprint(os.getcwd())", ""] {
            assert!(!heavy.wanted_by(code), "{code}");
        }
        let lean = Templates::new("lean template", Vec::new(), Duration::MAX);
        assert!(!lean.wanted_by("import numpy"));
    }
}
