fn main() -> std::process::ExitCode {
    sluice_broker::cli::main()
}
