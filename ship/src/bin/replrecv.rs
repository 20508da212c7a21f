//! replrecv: the receiver on the backup node. Stages what the primary sends
//! until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;

/// Receive a journal from the primary into the staging store.
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
    let status = Arc::new(ship::receiver::ReceiverStatus::default());
    match ship::receiver::run(&config, stop, &status) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
