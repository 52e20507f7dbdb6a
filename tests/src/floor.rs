//! The floor of a key release: what a server must spend at the least to
//! answer one guest, measured beside the broker by `loadgen`.
//!
//! A guest connection to the floor server is a TCP connection and a TLS 1.3
//! handshake with the broker's own server configuration
//! ([`broker::grpc::tls_server_config`]: the same certificate, cipher suite
//! and key-exchange preferences), one SNP report sent by the client, ONE
//! P-384 ECDSA verification of its signature with aws-lc-rs, and one byte
//! back (1: the signature verified, 0: it did not). No HTTP/2, no gRPC, no
//! store, no policy, no key wrapping: everything the broker does beyond
//! this is its overhead over the floor.
//!
//! The server is the `floor-server` binary (a process of its own, so that
//! its CPU time can be read from `/proc` as the broker's is); [`connect_once`]
//! is the client side.

use std::sync::Arc;

use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P384_SHA384_FIXED};
use keybroker_snp::report::{signature, REPORT_LEN, SIGNED_RANGE};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The answer byte for a report whose signature verified.
pub const VERIFIED: u8 = 1;
/// The answer byte for a report whose signature did not verify.
pub const REFUSED: u8 = 0;

/// Whether `report`'s signature verifies under `vcek` (a SEC1 P-384 point):
/// the broker's report-signature check, alone.
pub fn verify_report(vcek: &UnparsedPublicKey<Vec<u8>>, report: &[u8]) -> bool {
    let Ok(sig) = signature::to_fixed(report) else {
        return false;
    };
    report.len() == REPORT_LEN && vcek.verify(&report[SIGNED_RANGE], &sig).is_ok()
}

/// The VCEK key of a DER certificate, for [`verify_report`].
pub fn vcek_key(vcek_der: &[u8]) -> anyhow::Result<UnparsedPublicKey<Vec<u8>>> {
    let (_, cert) = x509_parser::parse_x509_certificate(vcek_der)
        .map_err(|e| anyhow::anyhow!("the VCEK is not a DER certificate: {e}"))?;
    Ok(UnparsedPublicKey::new(
        &ECDSA_P384_SHA384_FIXED,
        cert.public_key().subject_public_key.data.to_vec(),
    ))
}

/// Serves one accepted connection: TLS handshake, one report in, one
/// verification, one byte out, close_notify.
pub async fn serve_connection(
    tcp: tokio::net::TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    vcek: Arc<UnparsedPublicKey<Vec<u8>>>,
) -> std::io::Result<()> {
    tcp.set_nodelay(true)?;
    let mut tls = acceptor.accept(tcp).await?;
    let mut report = [0u8; REPORT_LEN];
    tls.read_exact(&mut report).await?;
    let answer = if verify_report(&vcek, &report) {
        VERIFIED
    } else {
        REFUSED
    };
    tls.write_all(&[answer]).await?;
    tls.shutdown().await
}

/// One floor "release" as a guest makes it: TCP connect (no Nagle), TLS
/// handshake with the guest's own client configuration, the report, the
/// answer byte. Fails unless the server answered [`VERIFIED`].
pub async fn connect_once(
    addr: std::net::SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    report: &[u8],
) -> anyhow::Result<()> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::IpAddress(addr.ip().into());
    let mut stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await?;
    stream.write_all(report).await?;
    let mut answer = [0u8; 1];
    stream.read_exact(&mut answer).await?;
    anyhow::ensure!(answer[0] == VERIFIED, "the floor server refused the report");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{default_guest, SimParams, SimPlatform};

    #[test]
    fn only_an_intact_report_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let sim = SimPlatform::generate(dir.path(), &SimParams::default()).unwrap();
        let key = vcek_key(sim.vcek_der()).unwrap();
        let report = sim.report(&[3; 64], &default_guest()).unwrap();
        assert!(verify_report(&key, &report));
        for at in [0, 0x50, SIGNED_RANGE.end - 1, 0x2A0] {
            let mut bad = report.clone();
            bad[at] ^= 1;
            assert!(!verify_report(&key, &bad), "byte {at:#x} changed");
        }
        assert!(!verify_report(&key, &report[..REPORT_LEN - 1]));
        assert!(!verify_report(&key, &[]));
        assert!(vcek_key(b"not a certificate").is_err());
    }

    #[tokio::test]
    async fn the_server_answers_one_byte_per_connection() {
        let dir = crate::BrokerDir::create(&crate::BrokerOptions::default()).unwrap();
        let root = dir.dir.path();
        let (certs, key) =
            broker::tls::load(&root.join("tls/cert.pem"), &root.join("tls/key.pem")).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(
            broker::grpc::tls_server_config(certs, key).unwrap(),
        ));
        let vcek = Arc::new(vcek_key(dir.sim.vcek_der()).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                tokio::spawn(serve_connection(tcp, acceptor.clone(), vcek.clone()));
            }
        });
        let tls = guest_unlock::client::tls_config(&[dir.pin.parse().unwrap()]).unwrap();
        let report = dir.sim.report(&[9; 64], &default_guest()).unwrap();
        connect_once(addr, tls.clone(), &report).await.unwrap();
        let mut bad = report.clone();
        bad[0x90] ^= 0x80;
        let err = connect_once(addr, tls, &bad).await.unwrap_err();
        assert!(err.to_string().contains("refused"), "{err}");
    }
}
