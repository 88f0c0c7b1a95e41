/// mimalloc rather than glibc's malloc: records are allocated on one thread and freed
/// on another, and glibc's per-arena locks then showed up as futex contention in the
/// produce path's profile.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    sluice_broker::cli::main()
}
