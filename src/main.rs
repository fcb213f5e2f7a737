//! The `poziserver` binary.

/// mimalloc: markedly cheaper than the system allocator for a server's many small, short-lived
/// allocations (measured in `bench/static-vs-nginx`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's option numbers, as its version 3 header (`mi_option_e`) has them; the crate is
/// built without the `v2` feature, so version 3 is the one compiled in.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Memory freed after a burst of requests goes back to the system at once instead of being
/// kept for reuse: with the defaults (a 10 ms delay, arenas committed eagerly) a server that
/// had served a burst of queries kept about 70 MB more than it needed once idle; with these,
/// 20 MB (`bench/ogr2ogr-compat` prints it). Costs a few more page faults under load.
fn release_freed_memory_promptly() {
    #[allow(
        unsafe_code,
        reason = "mi_option_set is a plain C call; it is not thread safe, and runs here before \
                  any other thread exists"
    )]
    // SAFETY: called first thing in main, on the only thread; the options are plain integers.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0);
    }
}

fn main() -> std::process::ExitCode {
    release_freed_memory_promptly();
    poziserver::cli::main()
}
