//! The `sluice` CLI, built inside this crate so integration tests can locate it.
fn main() -> std::process::ExitCode {
    sluice_tools::run()
}
