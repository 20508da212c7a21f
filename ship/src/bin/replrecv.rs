//! replrecv: the receiver on the backup node. Stages what the primary sends
//! until SIGINT/SIGTERM.

use std::sync::Arc;

fn main() -> std::process::ExitCode {
    ship::main_with(
        "replrecv",
        "Receive a journal from the primary into the staging store",
        |config, stop| {
            let status = Arc::new(ship::receiver::ReceiverStatus::default());
            ship::receiver::run(config, stop, &status)
        },
    )
}
