//! The `sensor` binary: everything is in the library, from the command line down.

fn main() -> std::process::ExitCode {
    sensor::cli::main()
}
