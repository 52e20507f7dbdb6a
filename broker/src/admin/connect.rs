//! Connecting to a broker's admin API: over its Unix socket, or over TCP
//! with mutual TLS (the server verified against a CA, a client certificate
//! presented). Used by the `broker` CLI (its connection flags are the
//! binary's `cli/admin_conn.rs`) and the test kit; the calls themselves are
//! the generated [`AdminClient`] methods.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use keybroker_proto::admin_pb::admin_client::AdminClient;
use keybroker_rt::error_chain;
use tonic::transport::{Channel, Endpoint};

/// Where the admin API is.
#[derive(Clone, Debug)]
pub enum Target {
    /// A Unix socket.
    Socket(PathBuf),
    /// `https://HOST:PORT` with mutual TLS.
    Tls {
        /// Host name or IP address (must be in the server certificate).
        host: String,
        /// Port.
        port: u16,
        /// PEM client certificate chain.
        cert: PathBuf,
        /// PEM client private key.
        key: PathBuf,
        /// PEM CA certificate(s) the server certificate must chain to.
        ca: PathBuf,
    },
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Socket(p) => write!(f, "{}", p.display()),
            Target::Tls { host, port, .. } => write!(f, "https://{host}:{port}"),
        }
    }
}

/// Why the admin API could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Nothing listens on the socket (missing, refused).
    #[error(
        "cannot connect to the admin socket {path}: {cause}; the broker is not running, or its \
         socket is elsewhere: start `broker serve`, or point --socket (or KEYBROKER_ADMIN_SOCKET, \
         or the [admin] socket of --config) at it"
    )]
    NoSocket {
        /// The socket path.
        path: String,
        /// What the system said.
        cause: String,
    },
    /// The socket exists but we may not open it.
    #[error(
        "cannot open the admin socket {path}: permission denied; run the command as root or as \
         the broker's user"
    )]
    SocketPermission {
        /// The socket path.
        path: String,
    },
    /// TLS setup or connection failed.
    #[error("cannot connect to the admin API at {target}: {cause}")]
    Tls {
        /// The URL.
        target: String,
        /// What failed.
        cause: String,
    },
}

/// An `--admin-url` that is not `https://HOST:PORT`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{url:?} {problem}; write it as https://HOST:PORT")]
pub struct AdminUrlError {
    /// The URL given.
    pub url: String,
    /// What is wrong with it ("has no port", ...).
    pub problem: &'static str,
}

/// Parses `https://HOST:PORT`.
pub fn parse_url(url: &str) -> Result<(String, u16), AdminUrlError> {
    let bad = |problem| AdminUrlError {
        url: url.to_owned(),
        problem,
    };
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| bad("is not an https URL"))?;
    let rest = rest.trim_end_matches('/');
    let (host, port) = rest.rsplit_once(':').ok_or_else(|| bad("has no port"))?;
    let port = port.parse().map_err(|_| bad("has an invalid port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad("has no host"));
    }
    Ok((host.to_owned(), port))
}

/// The client side of mutual TLS: the server verified against `ca`, the
/// client certificate `cert` with its key presented.
fn tls_client_config(
    target: &Target,
    cert: &Path,
    key: &Path,
    ca: &Path,
) -> Result<rustls::ClientConfig, ConnectError> {
    let err = |cause: String| ConnectError::Tls {
        target: target.to_string(),
        cause,
    };
    let read = |p: &Path, what: &str| {
        std::fs::read(p).map_err(|e| err(format!("cannot read {what} {}: {e}", p.display())))
    };
    let ca_pem = read(ca, "--admin-ca")?;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca_pem.as_slice()) {
        let c = c.map_err(|e| err(format!("{} is not PEM: {e}", ca.display())))?;
        roots
            .add(c)
            .map_err(|e| err(format!("invalid CA certificate in {}: {e}", ca.display())))?;
    }
    if roots.is_empty() {
        return Err(err(format!("{} holds no CA certificate", ca.display())));
    }
    let cert_pem = read(cert, "--admin-cert")?;
    let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("{} is not PEM: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(err(format!("{} holds no certificate", cert.display())));
    }
    let key_pem = zeroize::Zeroizing::new(read(key, "--admin-key")?);
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| err(format!("{} is not PEM: {e}", key.display())))?
        .ok_or_else(|| err(format!("{} holds no private key", key.display())))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| err(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|e| err(format!("the client certificate and key do not match: {e}")))?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

/// Connects to the admin API at `target`.
pub async fn connect(target: &Target) -> Result<AdminClient<Channel>, ConnectError> {
    match target {
        Target::Socket(path) => {
            let shown = path.display().to_string();
            // Checked first so that the error names the socket, not tonic's internals.
            if let Err(e) = tokio::net::UnixStream::connect(path).await {
                return Err(match e.kind() {
                    std::io::ErrorKind::PermissionDenied => {
                        ConnectError::SocketPermission { path: shown }
                    }
                    _ => ConnectError::NoSocket {
                        path: shown,
                        cause: e.to_string(),
                    },
                });
            }
            let path = path.clone();
            let connector = tower::service_fn(move |_uri: http::Uri| {
                let path = path.clone();
                async move {
                    let s = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(s))
                }
            });
            let channel = Endpoint::from_static("http://admin.socket")
                .connect_timeout(Duration::from_secs(5))
                .connect_with_connector(connector)
                .await
                .map_err(|e| ConnectError::NoSocket {
                    path: shown,
                    cause: error_chain(&e),
                })?;
            Ok(AdminClient::new(channel).max_decoding_message_size(64 * 1024 * 1024))
        }
        Target::Tls {
            host,
            port,
            cert,
            key,
            ca,
        } => {
            let err = |cause: String| ConnectError::Tls {
                target: target.to_string(),
                cause,
            };
            let cfg = Arc::new(tls_client_config(target, cert, key, ca)?);
            let channel = keybroker_rt::channel::connect(host, *port, cfg, Duration::from_secs(10))
                .await
                .map_err(|e| err(error_chain(&e)))?;
            Ok(AdminClient::new(channel).max_decoding_message_size(64 * 1024 * 1024))
        }
    }
}
