//! The `poziserver` binary.

/// mimalloc: markedly cheaper than the system allocator for a server's many small, short-lived
/// allocations (measured in `bench/static-vs-nginx`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    poziserver::cli::main()
}
