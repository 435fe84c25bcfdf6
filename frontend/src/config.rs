//! Command line and environment. Every option has a flag and an environment
//! variable; the flag wins. Names and defaults are fixed by the HTTP contract.

use std::net::SocketAddr;
use std::num::{NonZeroU64, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::auth::AuthToken;
use crate::server::ServerLimits;
use crate::upload::UploadConfig;
use crate::upload_policy::AllowedHosts;

/// Settings of `pysandbox-frontend`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "pysandbox-frontend",
    version,
    about = "HTTP front of pysandbox"
)]
pub struct Config {
    /// Bearer token clients must send (required; never logged).
    #[arg(long, env = "AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<AuthToken>,

    /// Bearer token `GET /metrics` wants; unset, `/metrics` needs none. The job
    /// token (`AUTH_TOKEN`) never opens it.
    #[arg(long, env = "METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<AuthToken>,

    /// Address (`ip:port`) on which to serve `GET /metrics` instead of on the main
    /// port, e.g. an interface only the Prometheus scraper reaches; port 0 picks a
    /// free one. Unset: `/metrics` is served on the main port.
    #[arg(long, env = "METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    /// TCP port to listen on; 0 picks a free one.
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,

    /// Address (or host name) to listen on.
    #[arg(long, env = "HOST", default_value = "0.0.0.0")]
    pub host: String,

    /// Unix socket of pysandbox-executor.
    #[arg(
        long,
        env = "PYSANDBOX_EXECUTOR_SOCKET",
        default_value = "/run/pysandbox/executor.sock"
    )]
    pub executor_socket: PathBuf,

    /// Largest request body accepted, in bytes.
    #[arg(long, env = "MAX_BODY_BYTES", default_value = "1048576")]
    pub max_body_bytes: NonZeroU64,

    /// Bytes of request bodies being read at once, all requests together; past it
    /// a request is answered 503 with Retry-After.
    #[arg(long, env = "BODY_BUFFER_BYTES", default_value = "67108864")]
    pub body_buffer_bytes: NonZeroU64,

    /// Jobs at the executor at once.
    #[arg(long, env = "MAX_INFLIGHT", default_value = "8")]
    pub max_inflight: NonZeroUsize,

    /// Requests that may wait for a job slot; beyond that the answer is 429.
    #[arg(long, env = "MAX_QUEUE", default_value_t = 32)]
    pub max_queue: usize,

    /// Open client connections at once; more wait in the listen backlog.
    #[arg(long, env = "MAX_CONNECTIONS", default_value = "1024")]
    pub max_connections: NonZeroUsize,

    /// Open connections of one client address (an IPv6 /64); more are closed at
    /// once. Behind a reverse proxy every connection has its address: raise it.
    #[arg(long, env = "MAX_CONNECTIONS_PER_IP", default_value = "128")]
    pub max_connections_per_ip: NonZeroUsize,

    /// Time a client has to send a request's headers, and the time an idle
    /// keep-alive connection stays open, in milliseconds.
    #[arg(long, env = "HEADER_TIMEOUT_MS", default_value = "5000")]
    pub header_timeout_ms: NonZeroU64,

    /// Time a client has to send a request's body, in milliseconds.
    #[arg(long, env = "BODY_TIMEOUT_MS", default_value = "30000")]
    pub body_timeout_ms: NonZeroU64,

    /// On SIGTERM/SIGINT, how long requests in flight may still run, in milliseconds.
    #[arg(long, env = "SHUTDOWN_GRACE_MS", default_value_t = 130_000)]
    pub shutdown_grace_ms: u64,

    /// Time one upload of a produced file may take, in milliseconds.
    #[arg(long, env = "UPLOAD_TIMEOUT_MS", default_value = "30000")]
    pub upload_timeout_ms: NonZeroU64,

    /// Uploads of one job's files at once.
    #[arg(long, env = "UPLOAD_CONCURRENCY", default_value = "4")]
    pub upload_concurrency: NonZeroUsize,

    /// Time all uploads of one job's files may take together, in milliseconds.
    #[arg(long, env = "UPLOAD_BUDGET_MS", default_value = "120000")]
    pub upload_budget_ms: NonZeroU64,

    /// Hosts uploads may go to: comma-separated names, IP addresses and CIDR
    /// blocks. Empty: any host whose addresses are public and not this host's own.
    /// Listed hosts are used whatever their addresses, and no other host is.
    #[arg(long, env = "UPLOAD_ALLOWED_HOSTS", default_value = "")]
    pub upload_allowed_hosts: AllowedHosts,

    /// How long a streamed job (`Accept: text/event-stream`) may be silent before
    /// a keep-alive comment is sent, in milliseconds: proxies close idle streams.
    #[arg(long, env = "SSE_KEEPALIVE_MS", default_value = "15000")]
    pub sse_keepalive_ms: NonZeroU64,

    /// Log lines as plain text or as JSON objects (one per line).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Run even as root (not recommended: the frontend needs no privilege at all).
    #[arg(long, env = "ALLOW_ROOT")]
    pub allow_root: bool,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

impl Config {
    /// The configured token, unless it is missing or empty (the service must not
    /// start then).
    pub fn token(&self) -> Option<AuthToken> {
        self.auth_token.clone().filter(|t| !t.is_empty())
    }

    /// The `/metrics` token, when one is set and not empty.
    pub fn metrics_token(&self) -> Option<AuthToken> {
        self.metrics_token.clone().filter(|t| !t.is_empty())
    }

    /// The connection-level limits.
    pub fn server_limits(&self) -> ServerLimits {
        ServerLimits {
            max_connections: self.max_connections.get(),
            max_connections_per_ip: self.max_connections_per_ip.get(),
            header_timeout: self.header_timeout(),
            shutdown_grace: self.shutdown_grace(),
        }
    }

    /// `HEADER_TIMEOUT_MS` as a duration.
    pub fn header_timeout(&self) -> Duration {
        Duration::from_millis(self.header_timeout_ms.get())
    }

    /// `BODY_TIMEOUT_MS` as a duration.
    pub fn body_timeout(&self) -> Duration {
        Duration::from_millis(self.body_timeout_ms.get())
    }

    /// `SSE_KEEPALIVE_MS` as a duration.
    pub fn sse_keepalive(&self) -> Duration {
        Duration::from_millis(self.sse_keepalive_ms.get())
    }

    /// `SHUTDOWN_GRACE_MS` as a duration.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }

    /// How produced files are uploaded.
    pub fn upload(&self) -> UploadConfig {
        UploadConfig {
            timeout: Duration::from_millis(self.upload_timeout_ms.get()),
            concurrency: self.upload_concurrency.get(),
            budget: Duration::from_millis(self.upload_budget_ms.get()),
            allowed: self.upload_allowed_hosts.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_is_well_formed() {
        Config::command().debug_assert();
    }

    /// Checks names and defaults on the command definition itself, so the test does
    /// not depend on (or change) the environment it runs in.
    #[test]
    fn env_names_flags_and_defaults_match_the_contract() {
        let expected = [
            ("auth_token", "AUTH_TOKEN", None),
            ("metrics_token", "METRICS_TOKEN", None),
            ("metrics_addr", "METRICS_ADDR", None),
            ("port", "PORT", Some("8080")),
            ("host", "HOST", Some("0.0.0.0")),
            (
                "executor_socket",
                "PYSANDBOX_EXECUTOR_SOCKET",
                Some("/run/pysandbox/executor.sock"),
            ),
            ("max_body_bytes", "MAX_BODY_BYTES", Some("1048576")),
            ("body_buffer_bytes", "BODY_BUFFER_BYTES", Some("67108864")),
            ("max_inflight", "MAX_INFLIGHT", Some("8")),
            ("max_queue", "MAX_QUEUE", Some("32")),
            ("max_connections", "MAX_CONNECTIONS", Some("1024")),
            (
                "max_connections_per_ip",
                "MAX_CONNECTIONS_PER_IP",
                Some("128"),
            ),
            ("header_timeout_ms", "HEADER_TIMEOUT_MS", Some("5000")),
            ("body_timeout_ms", "BODY_TIMEOUT_MS", Some("30000")),
            ("shutdown_grace_ms", "SHUTDOWN_GRACE_MS", Some("130000")),
            ("upload_timeout_ms", "UPLOAD_TIMEOUT_MS", Some("30000")),
            ("upload_concurrency", "UPLOAD_CONCURRENCY", Some("4")),
            ("upload_budget_ms", "UPLOAD_BUDGET_MS", Some("120000")),
            ("upload_allowed_hosts", "UPLOAD_ALLOWED_HOSTS", Some("")),
            ("sse_keepalive_ms", "SSE_KEEPALIVE_MS", Some("15000")),
            ("log_format", "LOG_FORMAT", Some("text")),
            ("allow_root", "ALLOW_ROOT", None),
        ];
        let command = Config::command();
        assert_eq!(command.get_arguments().count(), expected.len());
        for (id, env, default) in expected {
            let arg = command
                .get_arguments()
                .find(|a| a.get_id() == id)
                .unwrap_or_else(|| panic!("no option {id}"));
            assert_eq!(arg.get_env().and_then(|e| e.to_str()), Some(env), "{id}");
            let flag = id.replace('_', "-");
            assert_eq!(arg.get_long(), Some(flag.as_str()), "{id}");
            let defaults: Vec<_> = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect();
            assert_eq!(defaults, default.into_iter().collect::<Vec<_>>(), "{id}");
        }
    }

    #[test]
    fn flags_parse_into_typed_values() {
        let config = Config::try_parse_from([
            "pysandbox-frontend",
            "--auth-token",
            "t",
            "--port",
            "0",
            "--host",
            "127.0.0.1",
            "--executor-socket",
            "/tmp/x.sock",
            "--max-body-bytes",
            "10",
            "--max-inflight",
            "2",
            "--max-queue",
            "0",
            "--max-connections",
            "3",
            "--header-timeout-ms",
            "4",
            "--body-timeout-ms",
            "5",
            "--shutdown-grace-ms",
            "0",
            "--upload-timeout-ms",
            "6",
            "--upload-concurrency",
            "7",
            "--upload-budget-ms",
            "8",
            "--upload-allowed-hosts",
            "files.example, 127.0.0.1",
        ])
        .unwrap();
        assert!(config.token().is_some());
        assert_eq!(config.metrics_addr, None);
        assert_eq!(config.port, 0);
        assert_eq!(config.host, "127.0.0.1");
        assert_eq!(config.executor_socket, PathBuf::from("/tmp/x.sock"));
        assert_eq!(config.max_body_bytes.get(), 10);
        assert_eq!(config.max_inflight.get(), 2);
        assert_eq!(config.max_queue, 0);
        assert_eq!(config.max_connections.get(), 3);
        assert_eq!(config.header_timeout(), Duration::from_millis(4));
        assert_eq!(config.body_timeout(), Duration::from_millis(5));
        assert_eq!(config.shutdown_grace(), Duration::ZERO);
        let upload = config.upload();
        assert_eq!(upload.timeout, Duration::from_millis(6));
        assert_eq!(upload.concurrency, 7);
        assert_eq!(upload.budget, Duration::from_millis(8));
        assert_eq!(upload.allowed, "files.example,127.0.0.1".parse().unwrap());
        assert!(Config::try_parse_from(["pysandbox-frontend"])
            .unwrap()
            .upload()
            .allowed
            .is_empty());
    }

    #[test]
    fn out_of_range_values_are_refused() {
        for (flag, value) in [
            ("--max-inflight", "0"),
            ("--max-connections", "0"),
            ("--max-body-bytes", "0"),
            ("--body-timeout-ms", "0"),
            ("--port", "65536"),
            ("--upload-concurrency", "0"),
            ("--upload-timeout-ms", "0"),
            ("--upload-allowed-hosts", "not a host"),
            ("--metrics-addr", "localhost:9100"),
            ("--metrics-addr", "9100"),
        ] {
            let parsed = Config::try_parse_from(["pysandbox-frontend", flag, value]);
            assert!(parsed.is_err(), "{flag} {value}");
        }
    }

    #[test]
    fn the_metrics_address_is_an_ip_and_port() {
        let config =
            Config::try_parse_from(["pysandbox-frontend", "--metrics-addr", "[::1]:9100"]).unwrap();
        assert_eq!(config.metrics_addr, Some("[::1]:9100".parse().unwrap()));
    }

    #[test]
    fn an_empty_token_counts_as_missing() {
        let config = Config::try_parse_from(["pysandbox-frontend", "--auth-token", ""]).unwrap();
        assert!(config.token().is_none());
    }
}
