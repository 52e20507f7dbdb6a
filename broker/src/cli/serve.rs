//! `broker serve`: the guest-facing service and, beside it on its own
//! listeners, the admin API (`broker::admin`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use super::{ConfigArg, Outcome};
use broker::config::Config;
use broker::grpc::{self, ServeOptions};

/// Loads everything, then serves until SIGTERM or Ctrl-C.
pub fn run(args: ConfigArg, log_format: crate::logging::LogFormat) -> anyhow::Result<Outcome> {
    crate::logging::init(log_format);
    let hardening = broker::hardening::harden();
    if !hardening.no_core_dumps {
        tracing::warn!("could not disable core dumps");
    }
    if !hardening.memory_locked {
        tracing::info!("memory not locked (needs root or an unlimited RLIMIT_MEMLOCK); keys may reach swap unless swap is encrypted or off");
    }
    let config = Config::load(&args.config)?;
    // As many descriptors as allowed; guest connections get what is left
    // after a reserve for the admin socket, metrics, the database and logs,
    // so those keep working while the guest port is full.
    let fd_budget = broker::hardening::raise_nofile().map(|limit| {
        let budget = limit.saturating_sub(broker::hardening::RESERVED_FDS);
        if budget < config.limits.max_connections {
            tracing::warn!(
                nofile = limit,
                max_connections = budget,
                "RLIMIT_NOFILE allows fewer guest connections than [limits] max_connections; serving at most {budget} at once"
            );
        }
        budget
    });
    let broker = Arc::new(broker::wiring::broker(&config)?);
    let (certs, key) = broker::tls::load(&config.tls_cert, &config.tls_key)?;
    let pin = broker::tls::spki_pin(&certs[0])?;
    let tls = grpc::tls_server_config(certs, key)?;
    let shards = config.threads;
    // The admin plane: its own listeners, never the guest port.
    let admin = Arc::new(
        broker::admin::Admin::new(broker.store().clone(), broker.keyring().clone())
            .with_settings(broker::admin::AdminSettings::from_config(&config)),
    );
    let admin_socket = broker::admin::listen::bind_socket(&config.admin.socket)?;
    let allowed_uids = config
        .admin
        .allowed_uids
        .clone()
        .unwrap_or_else(broker::admin::listen::default_allowed_uids);
    let admin_tcp = match &config.admin.tcp {
        Some(tcp) => {
            let tls = broker::admin::listen::tls_server_config(tcp)?;
            let l = std::net::TcpListener::bind(tcp.listen)
                .with_context(|| format!("cannot listen on [admin] tcp_listen {}", tcp.listen))?;
            l.set_nonblocking(true)?;
            tracing::info!(addr = %l.local_addr()?, "admin API over mutual TLS");
            println!("admin tls on {}", l.local_addr()?);
            Some((l, tls))
        }
        None => None,
    };
    tracing::info!(socket = %config.admin.socket.display(), ?allowed_uids, "admin API on the Unix socket");
    let metrics = match config.metrics_listen {
        Some(addr) => {
            let l = std::net::TcpListener::bind(addr)
                .with_context(|| format!("cannot listen on [metrics] listen {addr}"))?;
            l.set_nonblocking(true)?;
            tracing::info!(addr = %l.local_addr()?, "Prometheus metrics on GET /metrics");
            println!("metrics on {}", l.local_addr()?);
            admin.set_listener("metrics", l.local_addr()?.to_string());
            Some(l)
        }
        None => None,
    };
    let listeners = grpc::bind_shards(config.listen, shards)?;
    let addr = listeners[0].local_addr()?;
    admin.set_listener("guest", addr.to_string());
    tracing::info!(addr = %addr, shards, spki_pin = %pin, "serving keybroker.v1 over TLS");
    // A line on stdout that scripts and tests can wait for.
    println!("listening on {addr}");
    // Under systemd (Type=notify): ready now, with the store open and every
    // listener bound (connections queue until their tasks accept them).
    if let Err(e) = broker::sd_notify::notify("READY=1") {
        tracing::warn!("could not tell systemd that the broker is ready (NOTIFY_SOCKET): {e}");
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // The main thread waits for SIGTERM/Ctrl-C and runs store upkeep.
    let control = std::thread::Builder::new()
        .name("control".into())
        .spawn({
            let broker = broker.clone();
            let socket_path = config.admin.socket.clone();
            move || -> anyhow::Result<()> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("starting the control runtime")?;
                rt.block_on(async move {
                    let reload =
                        broker::release::spawn_key_reload_on_sighup(broker.keyring().clone());
                    let upkeep = broker::release::spawn_maintenance(broker, Duration::from_secs(1));
                    let metrics =
                        metrics.and_then(|l| match tokio::net::TcpListener::from_std(l) {
                            Ok(l) => Some(tokio::spawn(broker::metrics::serve(l))),
                            Err(e) => {
                                tracing::error!("metrics listener: {e}");
                                None
                            }
                        });
                    let (admin_stop, admin_rx) = tokio::sync::watch::channel(false);
                    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
                        let _ = rx.wait_for(|s| *s).await;
                    };
                    let mut admin_tasks = vec![tokio::spawn(broker::admin::listen::serve_unix(
                        admin_socket,
                        admin.clone(),
                        allowed_uids,
                        stopped(admin_rx.clone()),
                    ))];
                    if let Some((l, tls)) = admin_tcp {
                        match tokio::net::TcpListener::from_std(l) {
                            Ok(l) => admin_tasks.push(tokio::spawn(
                                broker::admin::listen::serve_tls(l, tls, admin, stopped(admin_rx)),
                            )),
                            Err(e) => tracing::error!("admin TLS listener: {e}"),
                        }
                    }
                    grpc::shutdown_signal().await;
                    tracing::info!("shutdown requested");
                    let _ = broker::sd_notify::notify("STOPPING=1");
                    upkeep.abort();
                    reload.abort();
                    if let Some(m) = metrics {
                        m.abort();
                    }
                    let _ = admin_stop.send(true);
                    let _ = stop_tx.send(true);
                    // Admin connections get a short drain; an idle client
                    // cannot hold the shutdown.
                    for t in admin_tasks {
                        match tokio::time::timeout(Duration::from_secs(5), t).await {
                            Ok(Ok(Err(e))) => tracing::warn!("{:#}", anyhow::Error::from(e)),
                            Err(_) => tracing::warn!("admin listener did not drain in 5 s"),
                            _ => {}
                        }
                    }
                    let _ = std::fs::remove_file(&socket_path);
                });
                Ok(())
            }
        })
        .context("starting the control thread")?;
    let served = grpc::run_shards(
        listeners,
        tls,
        broker,
        ServeOptions::from_config(&config, fd_budget),
        stop_rx,
    );
    let _ = control.join();
    served?;
    tracing::info!("stopped");
    Ok(Outcome::Success)
}
