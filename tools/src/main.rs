//! `sluice`, the admin CLI. Everything lives in the library (`sluice_tools`), so
//! tests can run the same code.

fn main() -> std::process::ExitCode {
    sluice_tools::run()
}
