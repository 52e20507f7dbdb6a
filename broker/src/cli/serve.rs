//! `broker serve`: the guest-facing service.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use super::{ConfigArg, Outcome};
use crate::config::Config;
use crate::grpc::{self, ServeOptions};

/// Loads everything, then serves until SIGTERM or Ctrl-C.
pub fn run(args: ConfigArg) -> anyhow::Result<Outcome> {
    crate::logging::init();
    let hardening = crate::hardening::harden();
    if !hardening.no_core_dumps {
        tracing::warn!("could not disable core dumps");
    }
    if !hardening.memory_locked {
        tracing::info!("memory not locked (needs root or an unlimited RLIMIT_MEMLOCK); keys may reach swap unless swap is encrypted or off");
    }
    let config = Config::load(&args.config)?;
    let broker = Arc::new(crate::assemble::broker(&config)?);
    let (certs, key) = crate::tls::load(&config.tls_cert, &config.tls_key)?;
    let pin = crate::tls::spki_pin(&certs[0])?;
    let tls = grpc::tls_server_config(certs, key)?;
    let shards = config.threads;
    let listeners = grpc::bind_shards(config.listen, shards)?;
    let addr = listeners[0].local_addr()?;
    tracing::info!(addr = %addr, shards, spki_pin = %pin, "serving keybroker.v1 over TLS");
    // A line on stdout that scripts and tests can wait for.
    println!("listening on {addr}");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // The main thread waits for SIGTERM/Ctrl-C and runs store upkeep.
    let control = std::thread::Builder::new()
        .name("control".into())
        .spawn({
            let broker = broker.clone();
            move || -> anyhow::Result<()> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("starting the control runtime")?;
                rt.block_on(async move {
                    let upkeep = crate::release::spawn_maintenance(broker, Duration::from_secs(1));
                    grpc::shutdown_signal().await;
                    tracing::info!("shutdown requested");
                    upkeep.abort();
                    let _ = stop_tx.send(true);
                });
                Ok(())
            }
        })
        .context("starting the control thread")?;
    let served = grpc::run_shards(
        listeners,
        tls,
        broker,
        ServeOptions {
            max_message_bytes: config.max_message_bytes,
            request_timeout: config.request_timeout,
            handshake_timeout: config.handshake_timeout,
            drain_timeout: Duration::from_secs(10),
        },
        stop_rx,
    );
    let _ = control.join();
    served?;
    tracing::info!("stopped");
    Ok(Outcome::Success)
}
