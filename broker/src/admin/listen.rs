//! The admin listeners: a Unix socket (mode 0600 in a 0700 directory,
//! every request checked against the peer's credentials) and an optional
//! TCP listener with mutual TLS (TLS 1.3, client certificates chained to
//! the configured CA). Neither is ever the guest port.

use std::future::Future;
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use keybroker_proto::admin_pb::admin_server::AdminServer;
use rustls::pki_types::CertificateDer;
use tokio::net::{TcpListener, UnixListener};
use tokio_rustls::TlsAcceptor;

use super::service::{AdminService, Auth};
use super::Admin;
use crate::config::AdminTcp;
use crate::grpc::ServeError;
use crate::tls::TlsError;

/// Why an admin listener cannot be set up, or stopped serving. Each
/// message names the path or setting at fault and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListenError {
    /// The socket's directory cannot be created.
    #[error(
        "cannot create the admin socket directory {}; create it (mode 0700) or set [admin] \
         socket to a path the broker may write",
        path.display()
    )]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Another process answers on the socket.
    #[error(
        "another process is serving the admin socket {}; stop the other broker or set a \
         different [admin] socket",
        path.display()
    )]
    InUse {
        /// The socket.
        path: PathBuf,
    },
    /// A socket exists at the path and cannot be probed.
    #[error(
        "the admin socket {} exists and cannot be checked ({error}); remove it if no broker uses \
         it, or set a different [admin] socket",
        path.display()
    )]
    Unprobeable {
        /// The socket.
        path: PathBuf,
        /// What connecting to it said.
        error: std::io::Error,
    },
    /// Something that is not a socket is at the path.
    #[error(
        "{} exists and is not a socket; remove it or set a different [admin] socket",
        path.display()
    )]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// A file system step on the socket failed.
    #[error("{what} {}", path.display())]
    Socket {
        /// "cannot bind the admin socket", ...
        what: &'static str,
        /// The socket.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A certificate file of `[admin]` cannot be read.
    #[error("cannot read {what} {}", path.display())]
    ReadCertificates {
        /// "admin client CA".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A certificate file of `[admin]` is not PEM.
    #[error("{what} {} is not PEM", path.display())]
    CertificatesNotPem {
        /// "admin client CA".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A certificate file of `[admin]` holds no certificate.
    #[error("{what} {} holds no certificate", path.display())]
    NoCertificate {
        /// "admin client CA".
        what: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// `[admin] client_ca` holds a certificate that is no usable CA.
    #[error("invalid admin client CA {}", path.display())]
    InvalidClientCa {
        /// The file.
        path: PathBuf,
        /// Why.
        source: rustls::Error,
    },
    /// The admin TLS identity cannot be loaded.
    #[error(transparent)]
    Identity(#[from] TlsError),
    /// The client-certificate verifier cannot be built from `[admin] client_ca`.
    #[error("building the admin client-certificate verifier")]
    ClientVerifier(#[source] rustls::server::VerifierBuilderError),
    /// The TLS configuration cannot be built, the server failed, or
    /// another I/O error on the listener (as for the guest port).
    #[error(transparent)]
    Serve(#[from] ServeError),
}

impl From<std::io::Error> for ListenError {
    fn from(e: std::io::Error) -> Self {
        ListenError::Serve(e.into())
    }
}

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
pub fn bind_socket(path: &Path) -> Result<std::os::unix::net::UnixListener, ListenError> {
    let socket_step = |what| {
        move |source| ListenError::Socket {
            what,
            path: path.to_owned(),
            source,
        }
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(|source| ListenError::CreateDir {
                    path: parent.to_owned(),
                    source,
                })?;
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            // Only a socket that nobody answers on is stale; one we may not
            // even try (EACCES) belongs to someone else and is left alone.
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => {
                    return Err(ListenError::InUse {
                        path: path.to_owned(),
                    })
                }
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                    std::fs::remove_file(path)
                        .map_err(socket_step("cannot remove the stale socket"))?;
                }
                Err(error) => {
                    return Err(ListenError::Unprobeable {
                        path: path.to_owned(),
                        error,
                    })
                }
            }
        }
        Ok(_) => {
            return Err(ListenError::NotASocket {
                path: path.to_owned(),
            })
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(socket_step("cannot inspect")(e)),
    }
    let listener = std::os::unix::net::UnixListener::bind(path)
        .map_err(socket_step("cannot bind the admin socket"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(socket_step("cannot set mode 0600 on"))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

fn read_certs(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, ListenError> {
    let pem = std::fs::read(path).map_err(|source| ListenError::ReadCertificates {
        what,
        path: path.to_owned(),
        source,
    })?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| ListenError::CertificatesNotPem {
            what,
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(ListenError::NoCertificate {
            what,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The rustls config of the TCP admin listener: TLS 1.3, a client
/// certificate required and verified against `client_ca`.
pub fn tls_server_config(tcp: &AdminTcp) -> Result<rustls::ServerConfig, ListenError> {
    let tls = |what| move |source| ServeError::Tls { what, source };
    let (certs, key) = crate::tls::load(&tcp.tls_cert, &tcp.tls_key)?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in read_certs(&tcp.client_ca, "admin client CA")? {
        roots
            .add(ca)
            .map_err(|source| ListenError::InvalidClientCa {
                path: tcp.client_ca.clone(),
                source,
            })?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(ListenError::ClientVerifier)?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls("TLS 1.3 with the aws-lc-rs provider"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(tls(
            "the admin tls_cert and tls_key do not form a usable pair",
        ))?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

/// Serves `keybroker.admin.v1` on a bound Unix socket until `shutdown`.
pub async fn serve_unix(
    listener: std::os::unix::net::UnixListener,
    admin: Arc<Admin>,
    allowed_uids: Vec<u32>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ListenError> {
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
        .map_err(|source| {
            ServeError::Server {
                what: "admin socket server failed",
                source,
            }
            .into()
        })
}

/// Serves `keybroker.admin.v1` over mutual TLS on `listener` until `shutdown`.
pub async fn serve_tls(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    admin: Arc<Admin>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ListenError> {
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
        .map_err(|source| {
            ServeError::Server {
                what: "admin TLS server failed",
                source,
            }
            .into()
        });
    accept_loop.abort();
    r
}
