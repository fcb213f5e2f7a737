//! The `poziserver` binary.

fn main() -> std::process::ExitCode {
    poziserver::cli::main()
}
