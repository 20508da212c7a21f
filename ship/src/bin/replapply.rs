//! replapply: applies the group's staged journals to the replica on the
//! backup node until SIGINT/SIGTERM, checkpointing as it goes (a SIGKILL is
//! safe: a restart replays staging from the last checkpoint).

use std::path::PathBuf;

use clap::Parser;

/// Apply what the receiver staged to the replica named in the configuration.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The replication pair's TOML configuration (its [apply] section).
    #[arg(long, short)]
    config: PathBuf,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    ship::main_with(&args.config, |config, stop| {
        ship::apply::run(config, stop, &apply::RunStatus::default())
    })
}
