//! The guest-facing TLS identity: generation by `broker init`, loading by
//! `broker serve`, and the SPKI pin guests use instead of a CA.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use keybroker_proto::SpkiPin;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use zeroize::Zeroizing;

/// Why a TLS identity cannot be made or loaded. Names the file at fault;
/// never holds key bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// Key or certificate generation failed.
    #[error("{what}")]
    Generate {
        /// "generating the TLS key", ...
        what: &'static str,
        /// Why.
        source: rcgen::Error,
    },
    /// A certificate's DER does not parse.
    #[error("cannot parse the TLS certificate: {0}")]
    Certificate(String),
    /// A file cannot be read.
    #[error("cannot read {what} {}", path.display())]
    Read {
        /// "TLS key" or "TLS certificate".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The private key file is readable by others.
    #[error("TLS key {path} is readable by group or others; run `chmod 600 {path}`", path = path.display())]
    KeyReadable {
        /// The key file.
        path: PathBuf,
    },
    /// A file is not the PEM it should be.
    #[error("{} is not a PEM {what}", path.display())]
    NotPem {
        /// "certificate" or "private key".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A PEM file holds no block of the kind it should.
    #[error("{} holds no {what}", path.display())]
    Empty {
        /// "certificate" or "private key".
        what: &'static str,
        /// The file.
        path: PathBuf,
    },
}

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
pub fn self_signed(sans: &[String]) -> Result<Generated, TlsError> {
    let generate = |what| move |source| TlsError::Generate { what, source };
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(generate("generating the TLS key"))?;
    let mut params = rcgen::CertificateParams::new(sans.to_vec()).map_err(generate(
        "invalid --san value; use DNS names or IP addresses",
    ))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "keybroker");
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(3650);
    let cert = params
        .self_signed(&key)
        .map_err(generate("signing the TLS certificate"))?;
    Ok(Generated {
        cert_pem: cert.pem(),
        key_pem: Zeroizing::new(key.serialize_pem()),
        spki_pin: spki_pin(cert.der())?,
    })
}

/// The pin of a DER certificate's key, which guests pin.
pub fn spki_pin(cert_der: &[u8]) -> Result<SpkiPin, TlsError> {
    SpkiPin::of_certificate(cert_der).map_err(|e| TlsError::Certificate(e.to_string()))
}

/// Loads a PEM certificate chain (the broker's first).
pub fn load_certs(cert_path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let cert_pem = std::fs::read(cert_path).map_err(|source| TlsError::Read {
        what: "TLS certificate",
        path: cert_path.to_owned(),
        source,
    })?;
    let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::NotPem {
            what: "certificate",
            path: cert_path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what: "certificate",
            path: cert_path.to_owned(),
        });
    }
    Ok(certs)
}

/// The pin guests record for the certificate (chain) in a PEM file: its
/// first certificate's key. Reads no private key, so it needs no root.
pub fn pin_of_file(cert_path: &Path) -> Result<SpkiPin, TlsError> {
    spki_pin(&load_certs(cert_path)?[0])
}

/// Loads the certificate chain and private key; refuses a key file that
/// others can read.
pub fn load(
    cert_path: &Path,
    key_path: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let read = |what, path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            what,
            path: path.to_owned(),
            source,
        })
    };
    let not_pem = |what, path: &Path| {
        let path = path.to_owned();
        move |source| TlsError::NotPem { what, path, source }
    };
    let meta = std::fs::metadata(key_path).map_err(|source| TlsError::Read {
        what: "TLS key",
        path: key_path.to_owned(),
        source,
    })?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(TlsError::KeyReadable {
            path: key_path.to_owned(),
        });
    }
    let certs = load_certs(cert_path)?;
    let key_pem = Zeroizing::new(read("TLS key", key_path)?);
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(not_pem("private key", key_path))?
        .ok_or_else(|| TlsError::Empty {
            what: "private key",
            path: key_path.to_owned(),
        })?;
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
