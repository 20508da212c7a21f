//! replsend: the sender on the primary node. Streams the configured journal
//! to the backup until SIGINT/SIGTERM; reconnects by itself.

fn main() -> std::process::ExitCode {
    ship::main_with(
        "replsend",
        "Stream a journal to the backup node named in the configuration",
        |config, stop| ship::sender::run(config, stop, &ship::sender::SenderStatus::default()),
    )
}
