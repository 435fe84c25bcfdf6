//! `pysandbox-frontend`: parses the configuration, sets up logging and runs the service.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use pysandbox_frontend::config::LogFormat;
use pysandbox_frontend::Config;
use tracing_subscriber::EnvFilter;

/// Exit status for a configuration the service refuses to start with (as clap uses).
const EXIT_USAGE: u8 = 2;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    let Some(token) = config.token() else {
        eprintln!(
            "AUTH_TOKEN is required (set the AUTH_TOKEN environment variable or pass \
             --auth-token); refusing to start without it"
        );
        return ExitCode::from(EXIT_USAGE);
    };
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in journald or test logs.
        .with_ansi(std::io::stderr().is_terminal())
        // The MCP SDK logs three info lines per request (session start, end of
        // input, end of serving); the request's own line says what matters.
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,rmcp=warn")),
        );
    match config.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    if let Err(e) = pysandbox_frontend::privileges::shed(config.allow_root) {
        eprintln!("pysandbox-frontend: {e}");
        return ExitCode::from(EXIT_USAGE);
    }
    // On a worker thread, not the main one: connections it spawns then start on
    // that worker at once, instead of waking another thread for each.
    let served = tokio::spawn(pysandbox_frontend::run(config, token)).await;
    match served.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
