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
    ship::main_with(&args.config, |config, stop| {
        ship::sender::run(config, stop, &ship::sender::SenderStatus::default())
    })
}
