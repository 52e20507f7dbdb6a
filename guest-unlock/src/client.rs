//! gRPC client of the broker over TLS pinned to the broker's key.
//!
//! Trust is clevis/tang-style: no CA, no host name check. The guest accepts a
//! broker iff the SHA-256 of its certificate's SubjectPublicKeyInfo is one of
//! the configured pins ([`PinnedServerVerifier`]); the TLS handshake
//! signature is still verified with that key, so only the holder of the
//! pinned private key can complete the handshake. TLS 1.3 only, ALPN `h2`,
//! rustls with the aws-lc-rs provider.
//!
//! The channel comes from [`keybroker_rt::channel`], which does its own TCP
//! connect and TLS handshake, so tonic's own TLS support (and its CA
//! handling) is not involved.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use keybroker_proto::pb;
use keybroker_proto::pb::key_broker_client::KeyBrokerClient;
use keybroker_rt::error_chain;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use tonic::transport::Channel;

use keybroker_proto::SpkiPin;

use crate::config::BrokerUrl;

/// Accepts a server certificate iff the SHA-256 of its SubjectPublicKeyInfo
/// equals one of the pins. Expiry, issuer and names are not consulted (the
/// pin is the trust anchor); handshake signatures are verified with the
/// provider's algorithms.
pub struct PinnedServerVerifier {
    pins: Vec<SpkiPin>,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for PinnedServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedServerVerifier")
            .field("pins", &self.pins)
            .finish_non_exhaustive()
    }
}

/// The certificate's key is not pinned (carried in the rustls error, so the
/// operator sees which key the server has).
#[derive(thiserror::Error)]
#[error("the broker's TLS key {found} matches none of the configured pins; if the broker's key was replaced, pin the new key")]
pub struct PinMismatch {
    /// The pin of the key the server presented.
    pub found: SpkiPin,
}

// rustls prints the inner error of `CertificateError::Other` with `Debug`:
// make that the readable message.
impl fmt::Debug for PinMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The certificate could not be parsed to find its key.
#[derive(thiserror::Error)]
#[error("the broker's TLS certificate cannot be parsed: {0}")]
struct BadCertificate(String);

impl fmt::Debug for BadCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl PinnedServerVerifier {
    /// A verifier for `pins` using `provider`'s signature algorithms.
    pub fn new(pins: Vec<SpkiPin>, provider: Arc<CryptoProvider>) -> Self {
        Self { pins, provider }
    }
}

fn other(e: impl std::error::Error + Send + Sync + 'static) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(e))))
}

impl ServerCertVerifier for PinnedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let found = SpkiPin::of_certificate(end_entity)
            .map_err(|e| other(BadCertificate(e.to_string())))?;
        if self.pins.contains(&found) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(other(PinMismatch { found }))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// TLS could not be set up (a programming or library problem, not the network).
#[derive(Debug, thiserror::Error)]
#[error("cannot set up TLS: {0}")]
pub struct TlsSetupError(String);

/// The rustls client configuration: aws-lc-rs, TLS 1.3, ALPN `h2`, pinned
/// verifier, no client certificate.
pub fn tls_config(pins: &[SpkiPin]) -> Result<Arc<rustls::ClientConfig>, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = Arc::new(PinnedServerVerifier::new(pins.to_vec(), provider.clone()));
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsSetupError(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// Why a broker could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// TCP connect, TLS handshake or HTTP/2 setup failed or timed out.
    #[error("{0}")]
    Transport(String),
    /// The broker's TLS key matches none of the pins (the message is the
    /// whole error chain, naming the key found).
    #[error("{message}")]
    PinMismatch {
        /// The pin of the key the broker presented.
        found: SpkiPin,
        /// The error chain, in one line.
        message: String,
    },
}

impl ConnectError {
    /// Whether the broker presented a TLS key that no pin matches.
    pub fn is_pin_mismatch(&self) -> bool {
        matches!(self, Self::PinMismatch { .. })
    }

    fn from_transport(e: &(dyn std::error::Error + 'static)) -> Self {
        let message = error_chain(e);
        match pin_mismatch_in(e) {
            Some(found) => Self::PinMismatch { found, message },
            None => Self::Transport(message),
        }
    }
}

/// The [`PinMismatch`] somewhere in an error's source chain (tonic wraps
/// the connector's `io::Error`, which wraps the rustls error, which carries
/// the verifier's error).
fn pin_mismatch_in(e: &(dyn std::error::Error + 'static)) -> Option<SpkiPin> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if let Some(found) = pin_mismatch_in(inner) {
                return Some(found);
            }
        }
        if let Some(rustls::Error::InvalidCertificate(CertificateError::Other(o))) =
            err.downcast_ref::<rustls::Error>()
        {
            let inner: &(dyn std::error::Error + 'static) = &*o.0;
            if let Some(pm) = inner.downcast_ref::<PinMismatch>() {
                return Some(pm.found);
            }
        }
        cur = err.source();
    }
    None
}

/// Connects to one broker: TCP (no Nagle), TLS with `tls`, then HTTP/2
/// ([`keybroker_rt::channel::connect`]). `connect_timeout` bounds the TCP
/// connect plus TLS handshake.
pub async fn connect(
    url: &BrokerUrl,
    tls: Arc<rustls::ClientConfig>,
    connect_timeout: Duration,
) -> Result<KeyBrokerClient<Channel>, ConnectError> {
    let channel = keybroker_rt::channel::connect(url.host(), url.port(), tls, connect_timeout)
        .await
        .map_err(|e| ConnectError::from_transport(&e))?;
    Ok(KeyBrokerClient::new(channel))
}

/// The calls of the protocol, so the unlock flow can run against a real
/// broker or an in-process fake. `timeout` is sent as the gRPC deadline.
pub trait BrokerRpc: Send {
    /// `KeyBroker.Challenge`.
    fn challenge(
        &mut self,
        req: pb::ChallengeRequest,
        timeout: Duration,
    ) -> impl Future<Output = Result<pb::ChallengeResponse, tonic::Status>> + Send;

    /// `KeyBroker.Attest`.
    fn attest(
        &mut self,
        req: pb::AttestRequest,
        timeout: Duration,
    ) -> impl Future<Output = Result<pb::AttestResponse, tonic::Status>> + Send;

    /// `KeyBroker.ConfirmRotation` (protocol 1.1). The default answers
    /// `UNIMPLEMENTED`, as a 1.0 broker does.
    fn confirm_rotation(
        &mut self,
        req: pb::ConfirmRotationRequest,
        timeout: Duration,
    ) -> impl Future<Output = Result<pb::ConfirmRotationResponse, tonic::Status>> + Send {
        let _ = (req, timeout);
        async { Err(tonic::Status::unimplemented("ConfirmRotation")) }
    }
}

impl BrokerRpc for KeyBrokerClient<Channel> {
    async fn challenge(
        &mut self,
        req: pb::ChallengeRequest,
        timeout: Duration,
    ) -> Result<pb::ChallengeResponse, tonic::Status> {
        let mut r = tonic::Request::new(req);
        r.set_timeout(timeout);
        KeyBrokerClient::challenge(self, r)
            .await
            .map(tonic::Response::into_inner)
    }

    async fn attest(
        &mut self,
        req: pb::AttestRequest,
        timeout: Duration,
    ) -> Result<pb::AttestResponse, tonic::Status> {
        let mut r = tonic::Request::new(req);
        r.set_timeout(timeout);
        KeyBrokerClient::attest(self, r)
            .await
            .map(tonic::Response::into_inner)
    }

    async fn confirm_rotation(
        &mut self,
        req: pb::ConfirmRotationRequest,
        timeout: Duration,
    ) -> Result<pb::ConfirmRotationResponse, tonic::Status> {
        let mut r = tonic::Request::new(req);
        r.set_timeout(timeout);
        KeyBrokerClient::confirm_rotation(self, r)
            .await
            .map(tonic::Response::into_inner)
    }
}

/// Exponential backoff with "equal jitter": the n-th wait is uniformly
/// random in `[d/2, d]` with `d = min(initial * 2^n, max)`.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// Starts at `initial`, doubling up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self { next: initial, max }
    }

    /// The next wait.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next.min(self.max);
        self.next = (self.next * 2).min(self.max);
        let mut b = [0u8; 2];
        // Without randomness, wait the full delay.
        let r = match aws_lc_rs::rand::fill(&mut b) {
            Ok(()) => u32::from(u16::from_le_bytes(b)),
            Err(_) => 0xffff,
        };
        d / 2 + (d / 2) * r / 0xffff
    }
}

impl Default for Backoff {
    /// 500 ms doubling to 8 s.
    fn default() -> Self {
        Self::new(Duration::from_millis(500), Duration::from_secs(8))
    }
}

/// Test helpers: self-signed broker certificates and an in-process TLS gRPC server.
#[cfg(test)]
pub(crate) mod test_support {
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use keybroker_proto::pb::key_broker_server::{KeyBroker, KeyBrokerServer};
    use rcgen::PublicKeyData;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
    use tonic::transport::server::Connected;

    use crate::config::BrokerUrl;
    use keybroker_proto::SpkiPin;

    /// A self-signed certificate, its PKCS#8 key and the pin of its key.
    pub(crate) struct TestCert {
        pub cert: CertificateDer<'static>,
        pub key_pkcs8: Vec<u8>,
        pub pin: SpkiPin,
    }

    pub(crate) fn test_cert() -> TestCert {
        let ck = rcgen::generate_simple_self_signed(vec!["broker.test".to_owned()]).unwrap();
        TestCert {
            cert: ck.cert.der().clone(),
            key_pkcs8: ck.signing_key.serialize_der(),
            // Computed from the key, independently of the certificate parser.
            pin: SpkiPin::of_spki(&ck.signing_key.subject_public_key_info()),
        }
    }

    pub(crate) fn key_der(c: &TestCert) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(c.key_pkcs8.clone()))
    }

    pub(crate) fn server_config(c: &TestCert) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![c.cert.clone()], key_der(c))
            .unwrap();
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(cfg)
    }

    /// A server-side TLS stream tonic can serve on.
    pub(crate) struct TlsIo(tokio_rustls::server::TlsStream<tokio::net::TcpStream>);

    impl Connected for TlsIo {
        type ConnectInfo = ();
        fn connect_info(&self) {}
    }

    impl AsyncRead for TlsIo {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for TlsIo {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Pin::new(&mut self.0).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }
        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }

    /// Serves `svc` over TLS on a loopback port; returns its URL. The server
    /// runs until the test's runtime ends.
    pub(crate) async fn serve<S: KeyBroker>(svc: S, tls: Arc<rustls::ServerConfig>) -> BrokerUrl {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<TlsIo, std::io::Error>>(16);
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    if let Ok(s) = acceptor.accept(tcp).await {
                        let _ = tx.send(Ok(TlsIo(s))).await;
                    }
                });
            }
        });
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(KeyBrokerServer::new(svc))
                .serve_with_incoming(tokio_stream::wrappers::ReceiverStream::new(rx)),
        );
        format!("https://127.0.0.1:{port}").parse().unwrap()
    }

    /// A loopback URL on which nothing listens.
    pub(crate) async fn closed_port_url() -> BrokerUrl {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        format!("https://127.0.0.1:{port}").parse().unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::test_support::*;
    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A TLS handshake over an in-memory pipe; returns the client's result
    /// (as a one-line error chain) after exchanging a few bytes.
    async fn handshake(server: Arc<rustls::ServerConfig>, pins: &[SpkiPin]) -> Result<(), String> {
        let (c, s) = tokio::io::duplex(64 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(server);
        let server_task = tokio::spawn(async move {
            let mut tls = acceptor.accept(s).await.ok()?;
            let mut b = [0u8; 4];
            tls.read_exact(&mut b).await.ok()?;
            tls.write_all(b"pong").await.ok()?;
            tls.flush().await.ok()?;
            Some(())
        });
        let connector = tokio_rustls::TlsConnector::from(tls_config(pins).unwrap());
        let name = ServerName::try_from("broker.test").unwrap();
        let result = async {
            let mut tls = connector
                .connect(name, c)
                .await
                .map_err(|e| error_chain(&e))?;
            assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
            tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
            let mut b = [0u8; 4];
            tls.read_exact(&mut b).await.map_err(|e| e.to_string())?;
            assert_eq!(&b, b"pong");
            Ok(())
        }
        .await;
        let _ = server_task.await;
        result
    }

    #[tokio::test]
    async fn verifier_accepts_a_matching_pin() {
        let c = test_cert();
        let other = test_cert();
        // Among several pins.
        handshake(server_config(&c), &[other.pin, c.pin])
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn verifier_refuses_a_non_matching_pin() {
        let c = test_cert();
        let other = test_cert();
        let e = handshake(server_config(&c), &[other.pin])
            .await
            .unwrap_err();
        assert!(e.contains("matches none of the configured pins"), "{e}");
        assert!(
            e.contains(&c.pin.to_string()),
            "the error names the key found: {e}"
        );
    }

    #[tokio::test]
    async fn pinned_certificate_without_its_private_key_is_refused() {
        // The server presents the pinned certificate but signs the handshake
        // with another key: the signature check must fail.
        #[derive(Debug)]
        struct Fixed(Arc<rustls::sign::CertifiedKey>);
        impl rustls::server::ResolvesServerCert for Fixed {
            fn resolve(
                &self,
                _hello: rustls::server::ClientHello<'_>,
            ) -> Option<Arc<rustls::sign::CertifiedKey>> {
                Some(self.0.clone())
            }
        }
        let pinned = test_cert();
        let impostor = test_cert();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let wrong_key = provider
            .key_provider
            .load_private_key(key_der(&impostor))
            .unwrap();
        let ck = rustls::sign::CertifiedKey::new(vec![pinned.cert.clone()], wrong_key);
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Fixed(Arc::new(ck))));
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        let e = handshake(Arc::new(cfg), &[pinned.pin]).await.unwrap_err();
        assert!(e.to_lowercase().contains("signature"), "{e}");
    }

    #[tokio::test]
    async fn connect_reports_an_unreachable_broker() {
        let url = closed_port_url().await;
        let tls = tls_config(&[test_cert().pin]).unwrap();
        let e = connect(&url, tls, Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(!e.to_string().is_empty());
    }

    #[test]
    fn backoff_grows_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let waits: Vec<_> = (0..6).map(|_| b.next_delay()).collect();
        let caps = [100, 200, 400, 800, 800, 800];
        for (w, cap) in waits.iter().zip(caps) {
            let cap = Duration::from_millis(cap);
            assert!(
                *w >= cap / 2 && *w <= cap,
                "{w:?} not in [{:?}, {cap:?}]",
                cap / 2
            );
        }
    }
}
