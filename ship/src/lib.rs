//! Shipping a journal to a backup: the sender (primary node) scrapes the
//! journal and streams frames; the receiver (backup node) checks them,
//! stages them durably and acknowledges. See docs/protocol.md.

pub mod apply;
pub mod check_report;
pub mod config;
pub mod link;
pub mod receiver;
pub mod sender;

/// Logs to stderr, `RUST_LOG`-filtered (default info), for the binaries.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// The command line of `replsend`, `replrecv` and `replapply`.
#[derive(clap::Parser, Debug)]
#[command(version)]
struct ConfigArgs {
    /// The replication pair's TOML configuration.
    #[arg(long, short)]
    config: std::path::PathBuf,
}

/// The body of `replsend`, `replrecv` and `replapply`: the command line
/// (`name --config <file>`, described by `about`), logging, the configuration (exit
/// status 2 with CSI0001E/CSI0002E when it is wrong), signals, then `run`
/// until SIGINT/SIGTERM (status 1 if it fails).
pub fn main_with(
    name: &'static str,
    about: &'static str,
    run: impl FnOnce(&config::Config, &std::sync::atomic::AtomicBool) -> anyhow::Result<()>,
) -> std::process::ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    let matches = ConfigArgs::command().name(name).about(about).get_matches();
    let args = ConfigArgs::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    init_logging();
    let config = match config::Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::from(2);
        }
    };
    match run(&config, stop_on_signals()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{}", engine::report::describe(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// Sets `flag` on SIGINT or SIGTERM, so the binaries stop cleanly (a
/// SIGKILL is safe too: that is what the crash tests do).
pub fn stop_on_signals() -> &'static std::sync::atomic::AtomicBool {
    static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    extern "C" fn on_signal(_: libc::c_int) {
        STOP.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: installs an async-signal-safe handler (one atomic store).
        unsafe { libc::signal(signal, on_signal as *const () as libc::sighandler_t) };
    }
    &STOP
}
