//! The `headwarden` binary: parse the command line, set up logging, run, map errors to exit codes.

fn main() -> std::process::ExitCode {
    headwarden::cli::main()
}
