//! A tonic channel over rustls, with the TCP connection and the TLS
//! handshake done here: tonic sees a plain `http` endpoint and never tries
//! TLS itself, so the caller's [`rustls::ClientConfig`] alone decides whom
//! to trust (a pinned key for guests, a CA for the admin client). Requests
//! carry the real `https` origin.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tonic::transport::{Channel, Endpoint};

/// Why no channel could be opened.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The host can be neither a TLS server name nor an IP address.
    #[error("{host:?} is neither a DNS name nor an IP address")]
    BadHost {
        /// The host.
        host: String,
    },
    /// The host and port make no URI.
    #[error("invalid address {authority}: {source}")]
    BadAddress {
        /// `host:port`.
        authority: String,
        /// The cause.
        #[source]
        source: http::uri::InvalidUri,
    },
    /// TCP connect, TLS handshake or HTTP/2 setup failed or timed out
    /// (the causes are in the source chain: [`crate::error_chain`]).
    #[error(transparent)]
    Connect(#[from] tonic::transport::Error),
}

/// `host:port`, with brackets around an IPv6 address.
pub fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Connects to `host:port`: TCP (no Nagle), then TLS with `tls` (which
/// should offer ALPN `h2`), then HTTP/2. `connect_timeout` bounds the TCP
/// connect plus the TLS handshake.
pub async fn connect(
    host: &str,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
    connect_timeout: Duration,
) -> Result<Channel, ChannelError> {
    let authority = authority(host, port);
    let bad_address = |source| ChannelError::BadAddress {
        authority: authority.clone(),
        source,
    };
    let endpoint = Endpoint::from_shared(format!("http://{authority}"))
        .map_err(|_| ChannelError::BadHost {
            host: host.to_owned(),
        })?
        .origin(
            format!("https://{authority}")
                .parse()
                .map_err(bad_address)?,
        )
        .connect_timeout(connect_timeout);
    let server_name = ServerName::try_from(host.to_owned())
        .map_err(|_| ChannelError::BadHost {
            host: host.to_owned(),
        })?
        .to_owned();
    let host = host.to_owned();
    let connector = tower::service_fn(move |_uri: http::Uri| {
        let tls = tokio_rustls::TlsConnector::from(tls.clone());
        let (host, server_name) = (host.clone(), server_name.clone());
        async move {
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let stream = tls.connect(server_name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    Ok(endpoint.connect_with_connector(connector).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_config() -> Arc<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        )
    }

    #[test]
    fn authorities() {
        assert_eq!(authority("kb.example", 8443), "kb.example:8443");
        assert_eq!(authority("10.0.0.1", 1), "10.0.0.1:1");
        assert_eq!(authority("::1", 443), "[::1]:443");
    }

    #[tokio::test]
    async fn bad_hosts_and_closed_ports_are_errors() {
        let e = connect("bad host", 1, client_config(), Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(e, ChannelError::BadHost { .. }), "{e}");
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let e = connect("127.0.0.1", port, client_config(), Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(matches!(e, ChannelError::Connect(_)), "{e}");
        assert!(!crate::error_chain(&e).is_empty());
    }
}
