//! The `kilovolt-db` server: parses the configuration, starts a node,
//! re-reads its certificates and auth file on SIGHUP, and shuts it down
//! gracefully on SIGINT or SIGTERM.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use kilovolt::config::{Config, LogFormat};
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;

/// The server's allocator. Every request allocates and frees a few dozen
/// small blocks across the stack (HTTP/2 frames and headers, protobuf
/// messages, the value stored and the value answered); mimalloc serves them
/// from thread-local free lists in a fraction of glibc malloc's
/// instructions, and its size classes hold a 16-byte key in 16 bytes where
/// glibc takes 32. Measured in docs/performance.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let config = Config::parse();
    if let Err(e) = config.validate() {
        // The same exit code clap gives any other usage error.
        eprintln!("kilovolt-db: {e}");
        return ExitCode::from(2);
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = config.worker_threads {
        runtime.worker_threads(n);
    }
    match runtime.enable_all().build() {
        Ok(runtime) => runtime.block_on(serve(config)),
        Err(e) => {
            eprintln!("kilovolt-db: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the node until a signal stops it.
async fn serve(config: Config) -> ExitCode {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(config.log_level.as_directive()));
    match config.log_format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::stdout().is_terminal())
            .init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_current_span(false)
            .init(),
    }

    let seeds = config.cluster.join(",");
    let node = match kilovolt::node::start(config).await {
        Ok(node) => node,
        Err(e) => {
            eprintln!("kilovolt-db: {e}");
            return ExitCode::FAILURE;
        }
    };
    info!(
        listen = %node.local_addr(),
        peer_listen = %node.peer_addr(),
        advertise = %node.info().address,
        peer_advertise = %node.info().peer_address,
        node_id = %node.info().id,
        seeds = %seeds,
        metrics = %node.metrics_addr().map_or("off".into(), |a| a.to_string()),
        "kilovolt-db listening"
    );

    if let Err(e) = serve_signals(&node).await {
        error!(error = %e, "cannot wait for signals; shutting down");
    }
    match node.shutdown().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %e, "shutdown failed");
            ExitCode::FAILURE
        }
    }
}

/// Reloads the node's certificates and auth file on every SIGHUP; resolves
/// on the first SIGINT or SIGTERM.
async fn serve_signals(node: &kilovolt::node::RunningNode) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            r = tokio::signal::ctrl_c() => return Ok(r?),
            _ = term.recv() => return Ok(()),
            _ = hup.recv() => {
                let failed = node.reload();
                for failure in &failed {
                    warn!(error = %failure, "reload failed; the previous settings stay in force");
                }
                info!(failures = failed.len(), "reloaded on SIGHUP");
            }
        }
    }
}
