//! replsend: the sender on the primary node. Streams the configured journal
//! to the backup until SIGINT/SIGTERM; reconnects by itself.

use std::path::PathBuf;

use clap::Parser;

/// Stream a journal to the backup node named in the configuration.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The replication pair's TOML configuration.
    #[arg(long, short)]
    config: PathBuf,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    ship::init_logging();
    let config = match ship::config::Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::from(2);
        }
    };
    let stop = ship::stop_on_signals();
    let status = ship::sender::SenderStatus::default();
    match ship::sender::run(&config, stop, &status) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
