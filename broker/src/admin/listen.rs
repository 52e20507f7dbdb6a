//! The admin listeners: a Unix socket (mode 0600 in a 0700 directory,
//! every request checked against the peer's credentials) and an optional
//! TCP listener with mutual TLS (TLS 1.3, client certificates chained to
//! the configured CA). Neither is ever the guest port.

use std::future::Future;
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, PermissionsExt as _};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use keybroker_proto::admin_pb::admin_server::AdminServer;
use rustls::pki_types::CertificateDer;
use tokio::net::{TcpListener, UnixListener};
use tokio_rustls::TlsAcceptor;

use super::service::{AdminService, Auth};
use super::Admin;
use crate::config::AdminTcp;

/// Root and the broker's own effective uid: who may administer by default.
pub fn default_allowed_uids() -> Vec<u32> {
    let me = rustix::process::geteuid().as_raw();
    if me == 0 {
        vec![0]
    } else {
        vec![0, me]
    }
}

/// Binds the admin socket at `path`: creates a missing parent directory
/// (0700), replaces a stale socket only when nothing answers on it, and
/// sets the socket's mode to 0600.
pub fn bind_socket(path: &Path) -> anyhow::Result<std::os::unix::net::UnixListener> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .with_context(|| {
                    format!(
                        "cannot create the admin socket directory {}; create it (mode 0700) or \
                         set [admin] socket to a path the broker may write",
                        parent.display()
                    )
                })?;
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            // Only a socket that nobody answers on is stale; one we may not
            // even try (EACCES) belongs to someone else and is left alone.
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => bail!(
                    "another process is serving the admin socket {}; stop the other broker or \
                     set a different [admin] socket",
                    path.display()
                ),
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                    std::fs::remove_file(path).with_context(|| {
                        format!("cannot remove the stale socket {}", path.display())
                    })?;
                }
                Err(e) => bail!(
                    "the admin socket {} exists and cannot be checked ({e}); remove it if no \
                     broker uses it, or set a different [admin] socket",
                    path.display()
                ),
            }
        }
        Ok(_) => bail!(
            "{} exists and is not a socket; remove it or set a different [admin] socket",
            path.display()
        ),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", path.display())),
    }
    let listener = std::os::unix::net::UnixListener::bind(path)
        .with_context(|| format!("cannot bind the admin socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot set mode 0600 on {}", path.display()))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

fn read_certs(path: &Path, what: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem =
        std::fs::read(path).with_context(|| format!("cannot read {what} {}", path.display()))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{what} {} is not PEM", path.display()))?;
    if certs.is_empty() {
        bail!("{what} {} holds no certificate", path.display());
    }
    Ok(certs)
}

/// The rustls config of the TCP admin listener: TLS 1.3, a client
/// certificate required and verified against `client_ca`.
pub fn tls_server_config(tcp: &AdminTcp) -> anyhow::Result<rustls::ServerConfig> {
    let (certs, key) = crate::tls::load(&tcp.tls_cert, &tcp.tls_key)?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in read_certs(&tcp.client_ca, "admin client CA")? {
        roots
            .add(ca)
            .with_context(|| format!("invalid admin client CA {}", tcp.client_ca.display()))?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .context("building the admin client-certificate verifier")?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 with the aws-lc-rs provider")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .context("the admin tls_cert and tls_key do not form a usable pair")?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

/// Serves `keybroker.admin.v1` on a bound Unix socket until `shutdown`.
pub async fn serve_unix(
    listener: std::os::unix::net::UnixListener,
    admin: Arc<Admin>,
    allowed_uids: Vec<u32>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    if let Some(path) = listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
    {
        admin.set_listener("admin-unix", path);
    }
    let listener = UnixListener::from_std(listener)?;
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let svc = AdminServer::new(AdminService::new(admin, Auth::UnixUids(allowed_uids)));
    tonic::transport::Server::builder()
        .timeout(Duration::from_secs(300))
        .add_service(svc)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .context("admin socket server failed")
}

/// Serves `keybroker.admin.v1` over mutual TLS on `listener` until `shutdown`.
pub async fn serve_tls(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    admin: Arc<Admin>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        admin.set_listener("admin-tls", addr.to_string());
    }
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let accept_loop = tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("admin accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok::<_, std::io::Error>(stream)).await;
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(peer = %peer, "admin TLS handshake refused: {e}");
                    }
                    Err(_) => tracing::debug!(peer = %peer, "admin TLS handshake timed out"),
                }
            });
        }
    });
    let incoming = tokio_stream::wrappers::ReceiverStream::new(rx);
    let svc = AdminServer::new(AdminService::new(admin, Auth::ClientCert));
    let r = tonic::transport::Server::builder()
        .timeout(Duration::from_secs(300))
        .add_service(svc)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .context("admin TLS server failed");
    accept_loop.abort();
    r
}
