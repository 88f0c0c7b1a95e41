//! The `sluice-broker` program: settings, logging, runtime, signals.
//!
//! Kept in the library so the binary is one line and tests can start the same code.

use std::process::ExitCode;

use clap::Parser;

use crate::config::{BrokerArgs, BrokerConfig};
use crate::log::cache::TailCache;
use crate::node::Broker;

/// Runs a broker until SIGINT or SIGTERM.
pub fn main() -> ExitCode {
    let args = BrokerArgs::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = match BrokerConfig::from_args(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sluice-broker: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(bytes) = config.log_cache_bytes {
        // Nothing has opened a log yet, so this cannot be refused.
        TailCache::configure(bytes);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sluice-broker: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let broker = match Broker::start(config).await {
            Ok(b) => b,
            Err(e) => {
                eprintln!("sluice-broker: {e}");
                return ExitCode::FAILURE;
            }
        };
        // Tests and scripts wait for this line to know the port.
        println!("sluice-broker listening on {}", broker.addr);
        wait_for_signal().await;
        tracing::info!("shutting down");
        broker.shutdown().await;
        ExitCode::SUCCESS
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
