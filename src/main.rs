//! The `poziserver` binary.

/// mimalloc: markedly cheaper than the system allocator for a server's many small, short-lived
/// allocations (measured in `bench/static-vs-nginx`). It is built with its arenas committed as
/// they are used (`.cargo/config.toml`), and threads going idle return freed memory
/// (`poziserver::memory`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    poziserver::cli::main()
}
