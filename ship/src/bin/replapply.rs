//! replapply: applies the group's staged journals to the replica on the
//! backup node until SIGINT/SIGTERM, checkpointing as it goes (a SIGKILL is
//! safe: a restart replays staging from the last checkpoint).

fn main() -> std::process::ExitCode {
    ship::main_with(
        "replapply",
        "Apply what the receiver staged to the replica named in the configuration's [apply] section",
        |config, stop| ship::apply::run(config, stop, &apply::RunStatus::default()),
    )
}
