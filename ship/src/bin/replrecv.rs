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
    ship::main_with(&args.config, |config, stop| {
        let status = Arc::new(ship::receiver::ReceiverStatus::default());
        ship::receiver::run(config, stop, &status)
    })
}
