//! The guest-facing TLS identity: generation by `broker init`, loading by
//! `broker serve`, and the SPKI pin guests use instead of a CA.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use anyhow::{bail, Context as _};
use keybroker_proto::SpkiPin;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use zeroize::Zeroizing;

/// A freshly generated self-signed identity.
pub struct Generated {
    /// Certificate, PEM.
    pub cert_pem: String,
    /// Private key, PEM (secret).
    pub key_pem: Zeroizing<String>,
    /// The pin of the certificate's key (`sha256:<hex>` of its SubjectPublicKeyInfo).
    pub spki_pin: SpkiPin,
}

/// Generates an ECDSA P-256 key and a self-signed certificate for `sans`.
pub fn self_signed(sans: &[String]) -> anyhow::Result<Generated> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .context("generating the TLS key")?;
    let mut params = rcgen::CertificateParams::new(sans.to_vec())
        .context("invalid --san value; use DNS names or IP addresses")?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "keybroker");
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(3650);
    let cert = params
        .self_signed(&key)
        .context("signing the TLS certificate")?;
    Ok(Generated {
        cert_pem: cert.pem(),
        key_pem: Zeroizing::new(key.serialize_pem()),
        spki_pin: spki_pin(cert.der())?,
    })
}

/// The pin of a DER certificate's key, which guests pin.
pub fn spki_pin(cert_der: &[u8]) -> anyhow::Result<SpkiPin> {
    SpkiPin::of_certificate(cert_der).context("cannot parse the TLS certificate")
}

/// Loads the certificate chain and private key; refuses a key file that
/// others can read.
pub fn load(
    cert_path: &Path,
    key_path: &Path,
) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let meta = std::fs::metadata(key_path)
        .with_context(|| format!("cannot read TLS key {}", key_path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        bail!(
            "TLS key {} is readable by group or others; run `chmod 600 {}`",
            key_path.display(),
            key_path.display()
        );
    }
    let cert_pem = std::fs::read(cert_path)
        .with_context(|| format!("cannot read TLS certificate {}", cert_path.display()))?;
    let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} is not a PEM certificate", cert_path.display()))?;
    if certs.is_empty() {
        bail!("{} holds no certificate", cert_path.display());
    }
    let key_pem = Zeroizing::new(
        std::fs::read(key_path)
            .with_context(|| format!("cannot read TLS key {}", key_path.display()))?,
    );
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .with_context(|| format!("{} is not a PEM private key", key_path.display()))?
        .with_context(|| format!("{} holds no private key", key_path.display()))?;
    Ok((certs, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_is_sha256_of_spki_and_stable() {
        let g = self_signed(&["localhost".into()]).unwrap();
        let der = rustls_pemfile::certs(&mut g.cert_pem.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(spki_pin(&der).unwrap(), g.spki_pin);
        let text = g.spki_pin.to_string();
        assert!(text.starts_with("sha256:") && text.len() == 7 + 64);
        assert_eq!(text.parse::<SpkiPin>().unwrap(), g.spki_pin);
        let other = self_signed(&["localhost".into()]).unwrap();
        assert_ne!(other.spki_pin, g.spki_pin);
    }

    #[test]
    fn garbage_certificate_is_refused() {
        assert!(spki_pin(b"not a certificate").is_err());
    }

    #[test]
    fn world_readable_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let g = self_signed(&["localhost".into()]).unwrap();
        let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&c, &g.cert_pem).unwrap();
        std::fs::write(&k, g.key_pem.as_bytes()).unwrap();
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load(&c, &k).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(load(&c, &k).is_ok());
        std::fs::write(&c, "junk").unwrap();
        assert!(load(&c, &k).is_err());
    }
}
