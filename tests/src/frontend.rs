//! The HTTP frontend, started as the unprivileged uid on a free loopback port.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::executor::{log_filter, PATH};
use crate::{binaries, random_hex, Executor, Log, FRONTEND_GID, FRONTEND_UID};

/// How long the frontend may take to log its `listening on` line.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running `pysandbox-frontend` as uid/gid 65533. Killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct Frontend {
    child: Option<Child>,
    addr: SocketAddr,
    token: String,
    socket: PathBuf,
    log: Log,
}

impl Frontend {
    /// Starts a frontend talking to `executor`, with `PORT=0`, `HOST=127.0.0.1`, a
    /// random `AUTH_TOKEN` and the executor's socket; `env` adds or overrides
    /// variables (an `AUTH_TOKEN` given there becomes [`Frontend::token`]).
    pub fn start(executor: &Executor, env: &[(&str, &str)]) -> Frontend {
        Frontend::start_on_socket(executor.socket(), env)
    }

    /// [`Frontend::start`] for a socket path that may have no executor behind it.
    pub fn start_on_socket(socket: &Path, env: &[(&str, &str)]) -> Frontend {
        let token = env
            .iter()
            .find(|(k, _)| *k == "AUTH_TOKEN")
            .map_or_else(|| random_hex(16), |(_, v)| (*v).to_owned());
        let mut cmd = Frontend::command();
        cmd.env("AUTH_TOKEN", &token)
            .env("PORT", "0")
            .env("HOST", "127.0.0.1")
            .env("PYSANDBOX_EXECUTOR_SOCKET", socket)
            .envs(env.iter().copied());
        Frontend::launch(cmd, &token, socket)
    }

    /// Spawns `cmd` (best made from [`Frontend::command`]) and waits for its
    /// `listening on <ip>:<port>` line; `token` and `socket` are what it was given.
    pub fn launch(mut cmd: Command, token: &str, socket: &Path) -> Frontend {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("cannot start the frontend");
        let log = Log::default();
        if let Some(out) = child.stdout.take() {
            log.drain(out, "[stdout] ", |_| {});
        }
        let (tx, rx) = mpsc::channel();
        if let Some(err) = child.stderr.take() {
            let mut tx = Some(tx);
            log.drain(err, "", move |line| {
                if let Some(addr) = listening_addr(line) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr);
                    }
                }
            });
        }
        let mut frontend = Frontend {
            child: Some(child),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            token: token.to_owned(),
            socket: socket.to_owned(),
            log,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        frontend.addr = loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(addr) => break addr,
                Err(mpsc::RecvTimeoutError::Disconnected) if frontend.exited().is_none() => {
                    // stderr closed but the process lives on: wait for it to go.
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(_) => {}
            }
            if let Some(status) = frontend.exited() {
                panic!(
                    "the frontend exited ({status}) before listening; its log:\n{}",
                    frontend.log.text()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "the frontend logged no `listening on <ip>:<port>` line within {START_TIMEOUT:?}; its log:\n{}",
                    frontend.log.text()
                );
            }
        };
        frontend
    }

    /// A command for the frontend binary as uid/gid 65533, cwd `/`, with an
    /// environment of only `PATH`, `RUST_LOG` and `NO_COLOR`, stdin closed. For tests
    /// of its command line; [`Frontend::start`] uses it too.
    pub fn command() -> Command {
        let mut cmd = Command::new(&binaries().frontend);
        // std calls setgroups(0) before setuid when the parent is root, so no
        // supplementary group of root's survives.
        cmd.uid(FRONTEND_UID)
            .gid(FRONTEND_GID)
            .current_dir("/")
            .env_clear()
            .env("PATH", PATH)
            .env("RUST_LOG", log_filter())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        cmd
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Its `AUTH_TOKEN`.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The executor socket it was given.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// What it logged so far.
    pub fn log(&self) -> &Log {
        &self.log
    }

    /// Its pid while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still alive.
    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.exited().is_none()
    }

    /// SIGTERM, then SIGKILL if it is still alive after `grace`; returns how it ended.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        crate::procs::terminate(self.child.take()?, grace)
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }
}

impl Drop for Frontend {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "===== frontend log =====\n{}\n===== end of frontend log =====",
                self.log.text()
            );
        }
    }
}

/// The address in a `listening on <ip>:<port>` log line.
fn listening_addr(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("listening on ")? + "listening on ".len()..];
    let rest = rest.strip_prefix("http://").unwrap_or(rest);
    let token: String = rest
        .chars()
        .take_while(|c| c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']'))
        .collect();
    token.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::listening_addr;

    #[test]
    fn parses_the_listening_line() {
        let line = "2025-01-01T00:00:00Z  INFO pysandbox_frontend: listening on 127.0.0.1:41234";
        assert_eq!(
            listening_addr(line),
            Some("127.0.0.1:41234".parse().unwrap())
        );
        assert_eq!(
            listening_addr("INFO listening on 127.0.0.1:80, pid 3"),
            Some("127.0.0.1:80".parse().unwrap())
        );
        assert_eq!(listening_addr("listening on /run/x.sock"), None);
    }
}
