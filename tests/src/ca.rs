//! A throwaway certificate authority for the tests' TLS peers (the admin
//! API's client certificates, a PostgreSQL server's certificate).

/// A CA, and certificates it issues.
pub struct TestCa {
    key: rcgen::KeyPair,
    params: rcgen::CertificateParams,
    cert: rcgen::Certificate,
}

impl TestCa {
    /// A new self-signed CA named `name`.
    pub fn new(name: &str) -> TestCa {
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        let cert = p.self_signed(&key).expect("CA certificate");
        TestCa {
            key,
            params: p,
            cert,
        }
    }

    /// The CA's own certificate, PEM.
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// (certificate PEM, key PEM) for `cn` with subject alternative names
    /// `sans` (host names or IP addresses), for a TLS client or server.
    pub fn issue(&self, cn: &str, sans: &[&str], client: bool) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut p =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("params");
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.extended_key_usages = vec![if client {
            rcgen::ExtendedKeyUsagePurpose::ClientAuth
        } else {
            rcgen::ExtendedKeyUsagePurpose::ServerAuth
        }];
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        let cert = p.signed_by(&key, &issuer).expect("certificate");
        (cert.pem(), key.serialize_pem())
    }
}
