//! The `sim` provider: reports signed by a simulated platform directory (see [`crate::sim`]),
//! as the guest described by the directory's optional `guest.toml`.

use std::path::Path;

use crate::sim::{SimGuest, SimPlatform, GUEST_FILE};

use super::{Evidence, EvidenceError, EvidenceProvider};

/// Reports from a simulated platform. Proves nothing about the machine it runs on.
#[derive(Debug)]
pub struct SimProvider {
    platform: SimPlatform,
    guest: SimGuest,
}

impl SimProvider {
    /// Loads the platform in `dir` and, if present, `dir/guest.toml`.
    pub fn open(dir: &Path) -> Result<Self, EvidenceError> {
        let platform = SimPlatform::load(dir)?;
        let guest_path = dir.join(GUEST_FILE);
        let guest = if guest_path.exists() {
            SimGuest::load(&guest_path)?
        } else {
            SimGuest::default()
        };
        tracing::warn!(
            dir = %dir.display(),
            "using a SIMULATED SEV-SNP platform: its reports prove nothing about this machine"
        );
        Ok(Self::new(platform, guest))
    }

    /// Uses an already loaded platform and guest description.
    pub fn new(platform: SimPlatform, guest: SimGuest) -> Self {
        Self { platform, guest }
    }

    /// The simulated guest this provider reports as.
    pub fn guest(&self) -> &SimGuest {
        &self.guest
    }
}

impl EvidenceProvider for SimProvider {
    fn name(&self) -> &'static str {
        "sim"
    }

    fn get_evidence(&self, report_data: &[u8; 64]) -> Result<Evidence, EvidenceError> {
        Ok(Evidence {
            report: self.platform.report(report_data, &self.guest)?,
            cert_table: self.platform.cert_table(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::{open_provider, ProviderConfig};
    use crate::sim::{SimError, SimParams};
    use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P384_SHA384_FIXED};
    use keybroker_snp::cert_table::{self, CertKind};
    use keybroker_snp::report::{offset, signature, SIGNED_RANGE};

    fn verify(report: &[u8], vcek_der: &[u8]) {
        let cert = crate::sim::der::parse_cert(vcek_der).unwrap();
        let sig = signature::to_fixed(report).unwrap();
        UnparsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, cert.public_key)
            .verify(&report[SIGNED_RANGE], &sig)
            .expect("report signature verifies under the VCEK from the certificate table");
    }

    #[test]
    fn evidence_verifies_and_uses_guest_toml() {
        let dir = tempfile::tempdir().unwrap();
        SimPlatform::generate(dir.path(), &SimParams::default()).unwrap();
        std::fs::write(
            dir.path().join(GUEST_FILE),
            format!(
                "version = 3\nvmpl = 1\nmeasurement = \"{}\"\npolicy = 0x30000\n",
                "ab".repeat(48)
            ),
        )
        .unwrap();
        let provider = open_provider(&ProviderConfig::Sim {
            dir: dir.path().into(),
        })
        .unwrap();
        assert_eq!(provider.name(), "sim");
        let data = [0x42; 64];
        let ev = provider.get_evidence(&data).unwrap();
        let table = cert_table::decode(&ev.cert_table).unwrap();
        let vcek = table
            .iter()
            .find(|e| e.kind() == Some(CertKind::Vcek))
            .unwrap();
        verify(&ev.report, &vcek.data);
        assert_eq!(u32::from_le_bytes(ev.report[0..4].try_into().unwrap()), 3);
        assert_eq!(
            keybroker_snp::report::u32_at(&ev.report, offset::VMPL),
            Some(1)
        );
        assert_eq!(
            keybroker_snp::report::bytes_at(&ev.report, offset::MEASUREMENT),
            Some([0xab; 48])
        );
        assert_eq!(
            keybroker_snp::report::report_data(&ev.report),
            Some(&data[..])
        );
    }

    #[test]
    fn malformed_guest_toml_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        SimPlatform::generate(dir.path(), &SimParams::default()).unwrap();
        for bad in [
            "measurement = \"abcd\"",         // wrong length
            "measurement = \"zz\"",           // not hex
            "vmpl = -1",                      // negative
            "debug = true",                   // unknown key
            "version = \"five\"",             // wrong type
            "[reported_tcb]\nbootloader = 1", // incomplete table
            "policy = 0x30000\npolicy = 1",   // duplicate key
        ] {
            std::fs::write(dir.path().join(GUEST_FILE), bad).unwrap();
            let err = SimProvider::open(dir.path()).unwrap_err();
            assert!(
                matches!(err, EvidenceError::Sim(SimError::InvalidGuest(ref m)) if m.contains("guest.toml")),
                "{bad}: {err}"
            );
        }
    }
}
