//! The `sim` provider (test builds only, cargo feature `sim`): reports signed by a
//! simulated platform directory ([`keybroker_sim`]), as the guest described by the
//! directory's optional `guest.toml`.

use std::path::Path;

use keybroker_sim::{SimEvidence, SimGuest, SimPlatform};

use super::{Evidence, EvidenceError, EvidenceProvider, SnpEvidence};

/// Reports from a simulated platform. Proves nothing about the machine it runs on.
#[derive(Debug)]
pub struct SimProvider(SimEvidence);

impl SimProvider {
    /// Loads the platform in `dir` and, if present, `dir/guest.toml`.
    pub fn open(dir: &Path) -> Result<Self, EvidenceError> {
        let sim = SimEvidence::open(dir)?;
        tracing::warn!(
            dir = %dir.display(),
            "using a SIMULATED SEV-SNP platform: its reports prove nothing about this machine"
        );
        Ok(Self(sim))
    }

    /// Uses an already loaded platform and guest description.
    pub fn new(platform: SimPlatform, guest: SimGuest) -> Self {
        Self(SimEvidence::new(platform, guest))
    }

    /// The simulated guest this provider reports as.
    pub fn guest(&self) -> &SimGuest {
        self.0.guest()
    }
}

impl EvidenceProvider for SimProvider {
    fn name(&self) -> &'static str {
        "sim"
    }

    fn get_evidence(&self, report_data: &[u8; 64]) -> Result<Evidence, EvidenceError> {
        let (report, cert_table) = self.0.evidence(report_data)?;
        Ok(SnpEvidence { report, cert_table }.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::{open_provider, ProviderConfig};
    use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P384_SHA384_FIXED};
    use keybroker_sim::{SimError, SimParams, GUEST_FILE};
    use keybroker_snp::cert_table::{self, CertKind};
    use keybroker_snp::report::{self as layout, offset, signature, SIGNED_RANGE};

    #[test]
    fn evidence_verifies_and_uses_guest_toml() {
        let dir = tempfile::tempdir().unwrap();
        let p = SimPlatform::generate(dir.path(), &SimParams::default()).unwrap();
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
        let ev = provider.get_evidence(&data).unwrap().snp().unwrap().clone();
        let table = cert_table::decode(&ev.cert_table).unwrap();
        let vcek = table
            .iter()
            .find(|e| e.kind() == Some(CertKind::Vcek))
            .unwrap();
        assert_eq!(vcek.data, p.vcek_der());
        let sig = signature::to_fixed(&ev.report).unwrap();
        UnparsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, p.vcek_public_key())
            .verify(&ev.report[SIGNED_RANGE], &sig)
            .expect("report signature verifies under the platform's VCEK");
        assert_eq!(layout::u32_at(&ev.report, offset::VERSION), Some(3));
        assert_eq!(layout::u32_at(&ev.report, offset::VMPL), Some(1));
        assert_eq!(
            layout::bytes_at(&ev.report, offset::MEASUREMENT),
            Some([0xab; 48])
        );
        assert_eq!(layout::report_data(&ev.report), Some(&data[..]));
    }

    #[test]
    fn a_missing_platform_is_an_error_not_a_fallback() {
        let tmp = tempfile::tempdir().unwrap();
        let err = open_provider(&ProviderConfig::Sim {
            dir: tmp.path().join("missing"),
        })
        .err()
        .unwrap();
        assert!(
            matches!(err, EvidenceError::Sim(SimError::Missing { .. })),
            "{err}"
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
