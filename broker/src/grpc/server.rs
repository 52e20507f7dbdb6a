//! The guest-facing listener: a free connection slot before each accept,
//! TCP with TCP_NODELAY, a per-address cap, a TLS handshake under a
//! deadline, an idle timeout after it (`limits.rs`), then tonic's HTTP/2
//! server with message-size, stream-count and request-time limits, and one
//! shutdown future for SIGTERM and Ctrl-C with bounded draining.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use keybroker_proto::pb::key_broker_server::KeyBrokerServer;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::limits::{ConnLimits, Guarded, RateLimiter};
use super::KeyBrokerService;
use crate::release::Broker;

/// Why the guest-facing service cannot start or stopped serving.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The rustls configuration cannot be built.
    #[error("{what}")]
    Tls {
        /// What was being set up, and what to do.
        what: &'static str,
        /// Why.
        source: rustls::Error,
    },
    /// A listening socket cannot be set up.
    #[error("{what}")]
    Socket {
        /// The step: "creating a listening socket", "SO_REUSEPORT", ...
        what: String,
        /// Why.
        source: std::io::Error,
    },
    /// A serving thread or its runtime cannot be started.
    #[error("{what}")]
    Start {
        /// "starting a shard thread", ...
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// A serving thread panicked.
    #[error("a serving thread panicked")]
    ThreadPanicked,
    /// The gRPC server failed.
    #[error("{what}")]
    Server {
        /// "gRPC server failed", ...
        what: &'static str,
        /// Why.
        source: tonic::transport::Error,
    },
    /// Another I/O error on a listener.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Listener settings.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Largest accepted request message.
    pub max_message_bytes: usize,
    /// Deadline of one request.
    pub request_timeout: Duration,
    /// Deadline of a TLS handshake.
    pub handshake_timeout: Duration,
    /// How long in-flight requests may drain after shutdown is asked for.
    pub drain_timeout: Duration,
    /// Connection caps and idle timeout, shared by every shard.
    pub conns: Arc<ConnLimits>,
    /// Challenge and Attest requests per second per address (`None`: off).
    pub rate_limit: Option<Arc<RateLimiter>>,
}

impl ServeOptions {
    /// The options of `config`, with at most `fd_budget` connections when
    /// the descriptor limit allows no more.
    pub fn from_config(config: &crate::config::Config, fd_budget: Option<usize>) -> Self {
        let l = &config.limits;
        ServeOptions {
            max_message_bytes: config.max_message_bytes,
            request_timeout: config.request_timeout,
            handshake_timeout: config.handshake_timeout,
            drain_timeout: Duration::from_secs(10),
            conns: ConnLimits::new(l, fd_budget),
            rate_limit: RateLimiter::new(
                l.requests_per_sec_per_address,
                l.request_burst_per_address,
            )
            .map(Arc::new),
        }
    }
}

/// A rustls server config for the guest port: TLS 1.3 only, ALPN h2,
/// the aws-lc-rs provider.
pub fn tls_server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<rustls::ServerConfig, ServeError> {
    let tls = |what| move |source| ServeError::Tls { what, source };
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    // Prefer AES-128-GCM/SHA-256: its key schedule runs on the SHA
    // extensions of current x86 CPUs, where SHA-384 has none. The volume key
    // itself travels inside the HPKE (AES-256-GCM) wrapping either way.
    provider
        .cipher_suites
        .sort_by_key(|s| (s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256) as u8);
    let provider = Arc::new(provider);
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls("TLS 1.3 with the aws-lc-rs provider"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(tls("the TLS certificate and key do not form a usable pair; re-run `broker init` or fix tls_cert/tls_key"))?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    cfg.ignore_client_order = true;
    // A guest connects once per boot: resumption tickets would cost every
    // handshake a ticket encryption and an extra flight, and never be used.
    cfg.send_tls13_tickets = 0;
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(cfg)
}

/// Serves `keybroker.v1` on `listener` until `shutdown` completes, then
/// drains for at most `opts.drain_timeout`.
pub async fn serve(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    broker: Arc<Broker>,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let failed = |what| move |source| ServeError::Server { what, source };
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    let handshake_timeout = opts.handshake_timeout;
    let conns = opts.conns.clone();
    let accept_loop = tokio::spawn(async move {
        loop {
            // Backpressure: no slot, no accept; the kernel queues the rest.
            let slot = conns.slot().await;
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(guard) = conns.admit(peer.ip(), slot) else {
                tracing::debug!(peer = %peer, "connection refused: this address has limits.max_connections_per_address open");
                drop(tcp);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let stream = Guarded::new(stream, guard);
                        let _ = tx.send(Ok::<_, std::io::Error>(stream)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(peer = %peer, "TLS handshake failed: {e}"),
                    Err(_) => tracing::debug!(peer = %peer, "TLS handshake timed out"),
                }
            });
        }
    });
    let incoming = tokio_stream::wrappers::ReceiverStream::new(rx);
    let svc = KeyBrokerServer::new(
        KeyBrokerService::new(broker).with_rate_limit(opts.rate_limit.clone()),
    )
    .max_decoding_message_size(opts.max_message_bytes)
    .max_encoding_message_size(opts.max_message_bytes);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let drain = opts.drain_timeout;
    let server = tonic::transport::Server::builder()
        .timeout(opts.request_timeout)
        .max_concurrent_streams(opts.conns.max_streams)
        .add_service(svc)
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = stop_rx.await;
        });
    tokio::pin!(server);
    tokio::select! {
        r = &mut server => {
            accept_loop.abort();
            return r.map_err(failed("gRPC server failed"));
        }
        () = shutdown => {}
    }
    tracing::info!("shutting down: draining for at most {:?}", drain);
    accept_loop.abort();
    let _ = stop_tx.send(());
    match tokio::time::timeout(drain, server).await {
        Ok(r) => r.map_err(failed("gRPC server failed while draining")),
        Err(_) => {
            tracing::warn!("drain deadline passed; closing remaining connections");
            Ok(())
        }
    }
}

/// Resolves when SIGTERM or SIGINT (Ctrl-C) arrives.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { () = ctrl_c => {}, () = term => {} }
}
