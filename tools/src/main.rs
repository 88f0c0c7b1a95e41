//! `sluice`, the admin CLI.

use clap::Parser;

/// Sluice admin CLI.
#[derive(Parser)]
#[command(name = "sluice", version, about)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    Ok(())
}
