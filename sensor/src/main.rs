//! The `sensor` binary: everything is in the library, from the command line down.

fn main() -> std::process::ExitCode {
    #[cfg(target_env = "musl")]
    alloc::tune();
    sensor::cli::main()
}

/// The static (musl) build, which the image ships, allocates with mimalloc: musl's own
/// malloc cost up to twice the CPU per printed event (`cargo xtask bench`, docs/benchmarks.md).
#[cfg(target_env = "musl")]
mod alloc {
    #[global_allocator]
    static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

    // `mi_option_t` values of the mimalloc that libmimalloc-sys 0.1.49 builds (v3,
    // include/mimalloc.h); its Rust bindings do not name these two.
    const ARENA_EAGER_COMMIT: libc::c_int = 4;
    const PURGE_DELAY: libc::c_int = 15;

    unsafe extern "C" {
        fn mi_option_set(option: libc::c_int, value: libc::c_long);
    }

    /// Commit arena memory on demand and give freed pages back at once: with its defaults
    /// mimalloc kept about 68 MiB resident at idle, against 23 MiB with these.
    pub fn tune() {
        // SAFETY: plain option setters, called before any thread is started.
        unsafe {
            mi_option_set(ARENA_EAGER_COMMIT, 0);
            mi_option_set(PURGE_DELAY, 0);
        }
    }
}
