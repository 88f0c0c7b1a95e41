//! The `sluice` CLI, built inside this crate so integration tests can locate it.

/// The allocator the real binary has, so tests run what users run.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    sluice_tools::run()
}
