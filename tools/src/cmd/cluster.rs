//! `sluice cluster info`: the brokers and which one is the controller.

use std::io::Write;

use clap::Subcommand;
use sluice_client::Admin;

use crate::{GlobalArgs, Io, output};

/// `sluice cluster ...`
#[derive(Debug, Clone, Subcommand)]
pub enum ClusterCommand {
    /// Show the brokers and the controller.
    Info,
}

pub async fn run(cmd: ClusterCommand, global: &GlobalArgs, io: &mut Io) -> anyhow::Result<()> {
    let admin = Admin::new(global.connect().await?);
    match cmd {
        ClusterCommand::Info => {
            let info = admin.cluster_info().await?;
            io.stdout
                .write_all(output::cluster_info(&info, global.output).as_bytes())?;
        }
    }
    Ok(())
}
