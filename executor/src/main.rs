use clap::Parser;
use pysandbox_executor::{
    capability_mask, chain, check_host, drop_capabilities, jail_init, serve, Cli, Command, Config,
    JAIL_INIT,
};

fn main() -> std::process::ExitCode {
    let mut args = std::env::args_os().skip(1);
    // Inside a jail: become the job as fast as possible, before any setup of ours.
    if args.next().is_some_and(|a| a == JAIL_INIT) {
        return std::process::ExitCode::from(jail_init(args) as u8);
    }
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    // LOG_FORMAT=json: one JSON object per line, as the frontend's LOG_FORMAT does.
    if std::env::var("LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        logs.json().init();
    } else {
        logs.init();
    }
    let cli = Cli::parse();
    let command = cli.command;
    let config = match Config::load(cli) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("pysandbox-executor: {}", chain(&e));
            return std::process::ExitCode::from(2);
        }
    };
    if nix::unistd::geteuid().is_root() {
        match drop_capabilities() {
            Ok(kept) => tracing::info!(
                capabilities = ?kept,
                mask = format_args!("{:#x}", capability_mask(&kept)),
                "dropped every other capability"
            ),
            Err(e) => {
                eprintln!("pysandbox-executor: cannot drop capabilities: {e}");
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    // Everything the executor creates is private unless it opens it up on purpose.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("pysandbox-executor: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    if command == Some(Command::Check) {
        return match runtime.block_on(check_host(&config)) {
            true => std::process::ExitCode::SUCCESS,
            false => std::process::ExitCode::FAILURE,
        };
    }
    // On a worker thread, not the main one: connections it spawns then start on
    // that worker at once, instead of waking another thread for each.
    let served = runtime.block_on(async { tokio::spawn(serve(config, shutdown_signal())).await });
    match served.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %chain(&e), "executor failed");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
