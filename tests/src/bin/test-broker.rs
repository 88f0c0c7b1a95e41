//! `sluice-broker`, built inside this crate so integration tests can locate it.
fn main() -> std::process::ExitCode {
    sluice_broker::cli::main()
}
