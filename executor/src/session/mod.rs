//! Sessions (README "Sessions"): one interpreter that keeps its variables, imports
//! and files between calls, as a notebook's kernel does.
//!
//! A session is a job that lives longer: the same jail (forked from a template, or
//! cold), the same cgroup and tmpfs, for its whole life. Its launcher serves cells
//! (`serve_session` in `launcher.py`): for each call the executor writes the code
//! and stdin into the session's read-only `/sandbox`, sends a line on the
//! interpreter's stdin pipe, passes the output on as it comes, and ends the call at
//! the cell's `E` record on the display channel. Each session is served by a task
//! of its own, which owns its processes and takes one command at a time: a call, or
//! the order to close. The task also notices the interpreter's death and the idle
//! timeout while no call runs.
//!
//! A call's time and CPU limits interrupt the cell (SIGINT, through a pidfd so
//! that it never reaches another process); a cell that does not stop within
//! [`INTERRUPT_GRACE`] ends the session. So do `sys.exit`, a memory-limit kill and
//! anything else that ends the interpreter: the session's id then answers "ended"
//! for a while, and "not found" after.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pysandbox_shared::{FilesEnd, JobError, JobSpec, SessionSpec, SessionState};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::info;

use crate::cgroup::read_number;
use crate::config::{Limits, SessionSettings};
use crate::error::Error;
use crate::job::{Frames, Resolved, Runner};
use crate::proxy::policy::Policy;

mod live;

pub use live::Live;

/// Ended sessions remembered at most (to answer "ended" rather than "not found").
const MAX_ENDED: usize = 1024;

/// The open sessions of this executor, and those that ended lately.
#[derive(Debug)]
pub struct Sessions {
    settings: SessionSettings,
    entries: Mutex<HashMap<String, Entry>>,
}

/// One id's place in the registry.
#[derive(Debug)]
enum Entry {
    /// Its jail is being set up: it counts against the caps, and is nobody's yet.
    Starting { memory_mb: u32 },
    /// Its task runs it.
    Open {
        shared: Arc<Shared>,
        commands: mpsc::Sender<Command>,
    },
    /// Its interpreter ended; `shared.ended` says why, and when.
    Ended { shared: Arc<Shared> },
}

impl Entry {
    /// The memory limit it holds against `session_memory_mb`, unless it ended.
    fn held_mb(&self) -> Option<u32> {
        match self {
            Entry::Starting { memory_mb } => Some(*memory_mb),
            Entry::Open { shared, .. } => Some(shared.limits.memory_mb),
            Entry::Ended { .. } => None,
        }
    }
}

/// What both the session's task and its callers see of it.
#[derive(Debug)]
struct Shared {
    id: String,
    created: SystemTime,
    idle_timeout: Duration,
    limits: Limits,
    /// Its cgroup's memory figure; unreadable once the cgroup is gone.
    memory_file: Option<PathBuf>,
    busy: AtomicBool,
    calls: AtomicU64,
    /// When the last call ended (or the session began), on both clocks.
    last_used: Mutex<(SystemTime, Instant)>,
    /// Why it ended, and when, once it did.
    ended: Mutex<Option<(String, Instant)>>,
    /// Cancelled when it is being closed: the call running then is interrupted.
    closing: CancellationToken,
}

/// What a session's task is asked to do.
enum Command {
    Call(Box<Call>),
    /// End the session; answered once everything of it is gone.
    Close(oneshot::Sender<()>),
}

/// One call, from the connection that asked for it.
struct Call {
    spec: JobSpec,
    resolved: Resolved,
    frames: Frames,
    /// Cancelled when the caller is gone: the cell is interrupted.
    gone: CancellationToken,
    done: oneshot::Sender<Result<FilesEnd, Error>>,
    /// Marks the session busy until the call is over.
    _busy: Busy,
}

/// Holds a session's busy flag for one call.
struct Busy(Arc<Shared>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.store(false, Ordering::Release);
    }
}

/// A call let in: its command is sent and its caller awaits the answer.
pub struct Admitted {
    commands: mpsc::Sender<Command>,
    call: Call,
    done: oneshot::Receiver<Result<FilesEnd, Error>>,
    _gone: DropGuard,
}

impl Admitted {
    /// The call's wall-clock limit in milliseconds.
    pub fn timeout_ms(&self) -> u32 {
        self.call.resolved.timeout_ms
    }

    /// Runs the call in its session, which sends its frames; the answer is what
    /// collection left out. Dropping the future interrupts the call.
    pub async fn run(self) -> Result<FilesEnd, JobError> {
        let Admitted {
            commands,
            call,
            done,
            _gone,
        } = self;
        let shared = Arc::clone(&call._busy.0);
        if commands.send(Command::Call(Box::new(call))).await.is_err() {
            return Err(ended_error(&shared));
        }
        match done.await {
            Ok(Ok(files)) => Ok(files),
            Ok(Err(Error::InputsDoNotFit)) => Err(JobError::Rejected {
                field: "files".into(),
                reason: format!(
                    "do not fit in the session's disk limit of {} MiB (limits.diskMb)",
                    shared.limits.disk_mb
                ),
            }),
            Ok(Err(e)) => Err(JobError::JailSetup {
                reason: crate::error::chain(&e),
            }),
            Err(_) => Err(ended_error(&shared)),
        }
    }
}

fn ended_error(shared: &Shared) -> JobError {
    match &*shared.ended.lock().expect("not poisoned") {
        Some((reason, _)) => JobError::SessionEnded {
            reason: reason.clone(),
        },
        None => JobError::SessionNotFound,
    }
}

impl Sessions {
    pub fn new(settings: SessionSettings) -> Sessions {
        Sessions {
            settings,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Sessions open now.
    pub fn open_count(&self) -> u32 {
        let entries = self.entries.lock().expect("not poisoned");
        entries.values().filter_map(Entry::held_mb).count() as u32
    }

    /// The session's limits, idle timeout and network policy, or why the request
    /// asks for more than is allowed: a job's rules. The ask callback does not
    /// apply: between calls there is nobody to ask on behalf of.
    pub fn resolve(
        &self,
        runner: &Runner,
        spec: &SessionSpec,
    ) -> Result<(Limits, Duration, Option<Policy>), JobError> {
        let as_job = JobSpec {
            request_id: spec.request_id.clone(),
            code: String::new(),
            stdin: None,
            timeout_ms: None,
            limits: spec.limits,
            files: Vec::new(),
            collect_files: false,
            network: spec.network.clone(),
        };
        let resolved = runner.resolve(&as_job)?;
        let (min, max) = (1000, self.settings.max_idle_timeout_ms);
        let idle = match spec.idle_timeout_ms {
            None => self.settings.idle_timeout_ms,
            Some(ms) if (min..=max).contains(&ms) => ms,
            Some(_) => {
                return Err(JobError::Rejected {
                    field: "idleTimeoutMs".into(),
                    reason: format!("must be from {min} to {max}"),
                })
            }
        };
        let idle = Duration::from_millis(idle.into());
        Ok((resolved.limits, idle, resolved.network))
    }

    /// Holds room for one more session of `memory_mb`, or says which cap is reached.
    pub fn reserve(self: &Arc<Self>, memory_mb: u32) -> Result<Reservation, JobError> {
        let mut entries = self.entries.lock().expect("not poisoned");
        self.prune(&mut entries);
        let held = entries.values().filter_map(Entry::held_mb);
        let (count, held_mb) = held.fold((0u32, 0u64), |(n, sum), mb| (n + 1, sum + u64::from(mb)));
        let full = |reason: String| JobError::SessionsFull {
            reason,
            retry_after_secs: 5,
        };
        if count >= self.settings.max {
            return Err(full(format!("{count} are open, the most allowed")));
        }
        if held_mb + u64::from(memory_mb) > self.settings.memory_mb {
            return Err(full(format!(
                "open sessions hold {held_mb} MiB of the {} MiB allowed to all together",
                self.settings.memory_mb
            )));
        }
        let id = self.new_id();
        entries.insert(id.clone(), Entry::Starting { memory_mb });
        Ok(Reservation {
            sessions: Arc::clone(self),
            id: Some(id),
        })
    }

    /// A fresh id: the routing key, a dot, 128 random bits in hex.
    fn new_id(&self) -> String {
        let mut bytes = [0u8; 16];
        crate::sys::random_bytes(&mut bytes);
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        format!("{}.{hex}", self.settings.route)
    }

    /// Forgets sessions that ended longer ago than they are remembered, and the
    /// oldest past [`MAX_ENDED`].
    fn prune(&self, entries: &mut HashMap<String, Entry>) {
        let keep = Duration::from_millis(self.settings.ended_keep_ms.into());
        let ended_at = |e: &Entry| match e {
            Entry::Ended { shared } => shared
                .ended
                .lock()
                .expect("not poisoned")
                .as_ref()
                .map(|(_, at)| *at),
            _ => None,
        };
        entries.retain(|_, e| ended_at(e).is_none_or(|at| at.elapsed() < keep));
        let mut ended: Vec<(Instant, String)> = entries
            .iter()
            .filter_map(|(id, e)| Some((ended_at(e)?, id.clone())))
            .collect();
        if ended.len() > MAX_ENDED {
            ended.sort();
            for (_, id) in &ended[..ended.len() - MAX_ENDED] {
                entries.remove(id);
            }
        }
    }

    fn lookup(&self, id: &str) -> Result<(Arc<Shared>, mpsc::Sender<Command>), JobError> {
        let mut entries = self.entries.lock().expect("not poisoned");
        self.prune(&mut entries);
        match entries.get(id) {
            Some(Entry::Open { shared, commands })
                if shared.ended.lock().expect("not poisoned").is_none() =>
            {
                Ok((Arc::clone(shared), commands.clone()))
            }
            Some(Entry::Open { shared, .. } | Entry::Ended { shared }) => Err(ended_error(shared)),
            Some(Entry::Starting { .. }) | None => Err(JobError::SessionNotFound),
        }
    }

    /// What the session is and holds now.
    pub fn describe(&self, id: &str) -> Result<SessionState, JobError> {
        let (shared, _) = self.lookup(id)?;
        Ok(shared.state())
    }

    /// Lets one call into the session, unless another one runs there.
    pub fn admit(
        &self,
        runner: &Runner,
        id: &str,
        spec: JobSpec,
        frames: Frames,
    ) -> Result<Admitted, JobError> {
        let (shared, commands) = self.lookup(id)?;
        let resolved = resolve_call(runner, &spec, &shared.limits)?;
        if shared.busy.swap(true, Ordering::AcqRel) {
            return Err(JobError::SessionBusy);
        }
        let busy = Busy(shared);
        let gone = CancellationToken::new();
        let (done, answer) = oneshot::channel();
        Ok(Admitted {
            commands,
            call: Call {
                spec,
                resolved,
                frames,
                gone: gone.clone(),
                done,
                _busy: busy,
            },
            done: answer,
            _gone: gone.drop_guard(),
        })
    }

    /// Ends the session; returns once everything of it is gone.
    pub async fn close(&self, id: &str) -> Result<(), JobError> {
        let commands = match self.entries.lock().expect("not poisoned").get(id) {
            Some(Entry::Open { shared, commands }) => {
                // A call running now is interrupted, so that the close comes next.
                shared.closing.cancel();
                Some(commands.clone())
            }
            Some(Entry::Ended { .. }) => None,
            Some(Entry::Starting { .. }) | None => return Err(JobError::SessionNotFound),
        };
        if let Some(commands) = commands {
            let (closed, wait) = oneshot::channel();
            if commands.send(Command::Close(closed)).await.is_ok() {
                let _ = wait.await;
            }
        }
        // Gone from the map whether it was open or had ended: closed means forgotten.
        self.entries.lock().expect("not poisoned").remove(id);
        Ok(())
    }

    /// The session's task ended; `reason`, unless it was closed or expired.
    fn ended(&self, shared: &Arc<Shared>, reason: Option<String>) {
        let mut entries = self.entries.lock().expect("not poisoned");
        match reason {
            Some(reason) => {
                shared.end(reason);
                if let Some(entry) = entries.get_mut(&shared.id) {
                    *entry = Entry::Ended {
                        shared: Arc::clone(shared),
                    };
                }
            }
            None => {
                entries.remove(&shared.id);
            }
        }
    }
}

/// Room held for a session whose jail is being set up; given back if it does not
/// start.
#[derive(Debug)]
pub struct Reservation {
    sessions: Arc<Sessions>,
    id: Option<String>,
}

impl Reservation {
    /// Starts the session's task on `live` and returns its state.
    pub fn open(
        mut self,
        runner: Arc<Runner>,
        live: Live,
        limits: Limits,
        idle_timeout: Duration,
    ) -> SessionState {
        let id = self.id.take().expect("a reservation opens once");
        let shared = Arc::new(Shared {
            id: id.clone(),
            created: SystemTime::now(),
            idle_timeout,
            limits,
            memory_file: live.memory_file(),
            busy: AtomicBool::new(false),
            calls: AtomicU64::new(0),
            last_used: Mutex::new((SystemTime::now(), Instant::now())),
            ended: Mutex::new(None),
            closing: CancellationToken::new(),
        });
        let (commands, received) = mpsc::channel(1);
        self.sessions.entries.lock().expect("not poisoned").insert(
            id,
            Entry::Open {
                shared: Arc::clone(&shared),
                commands,
            },
        );
        let state = shared.state();
        let sessions = Arc::clone(&self.sessions);
        tokio::spawn(serve(sessions, runner, live, shared, received));
        state
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.sessions
                .entries
                .lock()
                .expect("not poisoned")
                .remove(&id);
        }
    }
}

impl Shared {
    fn state(&self) -> SessionState {
        let (last_used, _) = *self.last_used.lock().expect("not poisoned");
        let ms = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64)
        };
        SessionState {
            session_id: self.id.clone(),
            created_ms: ms(self.created),
            last_used_ms: ms(last_used),
            expires_ms: ms(last_used + self.idle_timeout),
            idle_timeout_ms: self.idle_timeout.as_millis() as u32,
            calls: self.calls.load(Ordering::Relaxed),
            busy: self.busy.load(Ordering::Acquire),
            memory_bytes: self.memory_file.as_deref().and_then(read_number),
            memory_mb: self.limits.memory_mb,
            max_processes: self.limits.max_processes,
            disk_mb: self.limits.disk_mb,
        }
    }

    fn idle_deadline(&self) -> Instant {
        let (_, at) = *self.last_used.lock().expect("not poisoned");
        at + self.idle_timeout
    }

    fn used(&self) {
        *self.last_used.lock().expect("not poisoned") = (SystemTime::now(), Instant::now());
        self.calls.fetch_add(1, Ordering::Relaxed);
    }

    fn end(&self, reason: String) {
        *self.ended.lock().expect("not poisoned") = Some((reason, Instant::now()));
    }
}

/// A call's limits: its own time, CPU and output (the session's when it names
/// none); the session's memory, processes and disk, which a call may not ask for.
fn resolve_call(runner: &Runner, spec: &JobSpec, session: &Limits) -> Result<Resolved, JobError> {
    let theirs = [
        ("limits.memoryMb", spec.limits.memory_mb.is_some()),
        ("limits.maxProcesses", spec.limits.max_processes.is_some()),
        ("limits.diskMb", spec.limits.disk_mb.is_some()),
        ("network", spec.network.is_some()),
    ];
    if let Some((field, _)) = theirs.iter().find(|(_, asked)| *asked) {
        return Err(JobError::Rejected {
            field: (*field).into(),
            reason: "is the session's: set it when the session is created".into(),
        });
    }
    let mut resolved = runner.resolve(spec)?;
    let asked = spec.limits;
    resolved.limits = Limits {
        memory_mb: session.memory_mb,
        max_processes: session.max_processes,
        disk_mb: session.disk_mb,
        cpu_ms: asked
            .cpu_ms
            .map_or(session.cpu_ms, |_| resolved.limits.cpu_ms),
        output_bytes: asked
            .output_bytes
            .map_or(session.output_bytes, |_| resolved.limits.output_bytes),
    };
    resolved.network = None;
    Ok(resolved)
}

/// A session's task: runs its calls one at a time, and ends it when it is closed,
/// its interpreter dies, or it sits idle past its timeout.
async fn serve(
    sessions: Arc<Sessions>,
    runner: Arc<Runner>,
    mut live: Live,
    shared: Arc<Shared>,
    mut commands: mpsc::Receiver<Command>,
) {
    info!(session = %shared.id, "session opened");
    let reason = loop {
        let idle = tokio::time::Instant::from_std(shared.idle_deadline());
        tokio::select! {
            command = commands.recv() => match command {
                Some(Command::Call(call)) => {
                    let mut ended = None;
                    let answer = live.call(&runner, &call, &shared.closing, &mut ended).await;
                    shared.used();
                    if let Some(reason) = &ended {
                        // Before the answer: the caller's next request sees it.
                        shared.end(reason.clone());
                    }
                    let _ = call.done.send(answer);
                    if ended.is_some() {
                        break ended;
                    }
                }
                Some(Command::Close(closed)) => {
                    drop(live);
                    sessions.ended(&shared, None);
                    info!(session = %shared.id, "session closed");
                    let _ = closed.send(());
                    return;
                }
                // The executor is shutting down.
                None => break None,
            },
            reason = live.died() => break Some(reason),
            () = tokio::time::sleep_until(idle) => {
                info!(session = %shared.id, "session expired");
                break None;
            }
        }
    };
    drop(live);
    if let Some(reason) = &reason {
        info!(session = %shared.id, reason, "session ended");
    }
    sessions.ended(&shared, reason);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions(max: u32, memory_mb: u64) -> Arc<Sessions> {
        Arc::new(Sessions::new(SessionSettings {
            max,
            memory_mb,
            idle_timeout_ms: 1000,
            max_idle_timeout_ms: 2000,
            ended_keep_ms: 60_000,
            route: "pod-1".into(),
        }))
    }

    #[test]
    fn reservations_hold_the_caps_and_give_room_back_when_dropped() {
        let sessions = sessions(2, 1000);
        let first = sessions.reserve(400).unwrap();
        let id = first.id.clone().unwrap();
        assert!(
            id.starts_with("pod-1.") && id.len() == "pod-1.".len() + 32,
            "{id}"
        );
        assert!(pysandbox_shared::is_session_id(&id));
        // A session whose jail still starts is nobody's to describe or close.
        assert_eq!(sessions.describe(&id), Err(JobError::SessionNotFound));
        let full = sessions.reserve(700).unwrap_err();
        assert!(matches!(full, JobError::SessionsFull { .. }), "{full:?}");
        let second = sessions.reserve(600).unwrap();
        assert_ne!(second.id, first.id);
        let full = sessions.reserve(1).unwrap_err();
        assert!(
            matches!(&full, JobError::SessionsFull { reason, .. } if reason.contains("2 are open")),
            "{full:?}"
        );
        drop(first);
        assert!(sessions.reserve(400).is_ok());
        assert_eq!(sessions.open_count(), 1);
    }

    #[test]
    fn an_ended_session_answers_ended_until_it_is_forgotten() {
        let sessions = sessions(4, 1000);
        let shared = Arc::new(Shared {
            id: "pod-1.00".into(),
            created: SystemTime::now(),
            idle_timeout: Duration::from_secs(1),
            limits: crate::config::MIN_LIMITS,
            memory_file: None,
            busy: AtomicBool::new(false),
            calls: AtomicU64::new(0),
            last_used: Mutex::new((SystemTime::now(), Instant::now())),
            ended: Mutex::new(None),
            closing: CancellationToken::new(),
        });
        let (commands, _received) = mpsc::channel(1);
        sessions.entries.lock().unwrap().insert(
            shared.id.clone(),
            Entry::Open {
                shared: Arc::clone(&shared),
                commands,
            },
        );
        assert_eq!(sessions.describe("pod-1.00").unwrap().calls, 0);
        sessions.ended(&shared, Some("the interpreter exited with code 3".into()));
        let ended = JobError::SessionEnded {
            reason: "the interpreter exited with code 3".into(),
        };
        assert_eq!(sessions.describe("pod-1.00"), Err(ended));
        assert_eq!(sessions.open_count(), 0);
        // Past the keep time, it is forgotten.
        *shared.ended.lock().unwrap() =
            Some(("x".into(), Instant::now() - Duration::from_secs(61)));
        assert_eq!(
            sessions.describe("pod-1.00"),
            Err(JobError::SessionNotFound)
        );
        assert_eq!(
            sessions.describe("pod-1.nope"),
            Err(JobError::SessionNotFound)
        );
    }
}
