//! The `azure-vtpm` provider: an Azure confidential VM's evidence, read from
//! its vTPM with raw TPM 2.0 commands (`keybroker_vtpm::guest`), no TSS
//! library.
//!
//! For each request: write the binding value to NV index 0x01400002 (the
//! paravisor then refreshes the HCL report with it as `user-data`), read
//! the HCL report from NV index 0x01400001 (again, a few times, should the
//! refresh lag behind the write), and quote SHA-256 PCRs 0–23 with the
//! attestation key at 0x81000003 and the binding value as qualifying data.
//! The device is opened per request, so the kernel's resource manager
//! flushes whatever a failed request leaves behind.

use std::path::{Path, PathBuf};
use std::time::Duration;

use keybroker_vtpm::guest;
use keybroker_vtpm::tpm::transport::{self, TpmStream};
use keybroker_vtpm::{Tpm, TpmError};

use super::{AzureVtpmEvidence, Evidence, EvidenceError, EvidenceProvider};

/// Reads of the HCL report before one carries the user data just written
/// (Azure's paravisor refreshes it within the write; this is a margin).
const HCL_READS: u32 = 5;
/// Pause between two reads of the HCL report.
const HCL_READ_PAUSE: Duration = Duration::from_millis(100);

/// Whether `hcl` is a framed HCL report whose user data is `user_data`.
pub(super) fn carries(hcl: &[u8], user_data: &[u8]) -> bool {
    keybroker_vtpm::HclReport::parse(hcl)
        .ok()
        .and_then(|h| keybroker_vtpm::RuntimeClaims::parse(h.variable_data()).ok())
        .is_some_and(|c| c.user_data == user_data)
}

/// Reads evidence from an Azure vTPM.
#[derive(Debug)]
pub struct AzureVtpmProvider {
    device: PathBuf,
}

impl AzureVtpmProvider {
    /// A provider on `device` (`/dev/tpmrm0`, or a socket in tests), which
    /// must exist.
    pub fn open(device: &Path) -> Result<Self, EvidenceError> {
        if !device.exists() {
            return Err(EvidenceError::TpmMissing {
                device: device.to_path_buf(),
            });
        }
        Ok(Self {
            device: device.to_path_buf(),
        })
    }

    fn connect(&self) -> Result<Tpm<TpmStream>, EvidenceError> {
        transport::open(&self.device).map_err(|source| EvidenceError::TpmAccess {
            device: self.device.clone(),
            source,
        })
    }

    fn tpm_error(&self, source: TpmError) -> EvidenceError {
        EvidenceError::Tpm {
            device: self.device.clone(),
            source,
        }
    }
}

impl EvidenceProvider for AzureVtpmProvider {
    fn name(&self) -> &'static str {
        "azure-vtpm"
    }

    fn get_evidence(&self, report_data: &[u8; 64]) -> Result<Evidence, EvidenceError> {
        let mut tpm = self.connect()?;
        guest::write_user_data(&mut tpm, report_data).map_err(|e| self.tpm_error(e))?;
        let mut hcl_report = guest::read_hcl_report(&mut tpm).map_err(|e| self.tpm_error(e))?;
        for _ in 1..HCL_READS {
            if carries(&hcl_report, report_data) {
                break;
            }
            std::thread::sleep(HCL_READ_PAUSE);
            hcl_report = guest::read_hcl_report(&mut tpm).map_err(|e| self.tpm_error(e))?;
        }
        let q = guest::quote(&mut tpm, report_data).map_err(|e| self.tpm_error(e))?;
        Ok(Evidence::AzureVtpm(AzureVtpmEvidence {
            hcl_report,
            quote: q.message,
            signature: q.signature.to_tpmt(),
            pcr_values: q.pcr_values,
        }))
    }

    fn min_protocol_minor(&self) -> u32 {
        keybroker_proto::MINOR_AZURE_VTPM
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_device_says_what_to_check() {
        let dir = tempfile::tempdir().unwrap();
        let err = AzureVtpmProvider::open(&dir.path().join("tpmrm0")).unwrap_err();
        assert!(matches!(err, EvidenceError::TpmMissing { .. }));
        assert!(err.to_string().contains("tpm_crb"), "{err}");
    }

    #[test]
    fn a_device_that_is_no_tpm_fails_with_the_device_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-tpm");
        std::fs::write(&file, b"").unwrap();
        let p = AzureVtpmProvider::open(&file).unwrap();
        assert_eq!(p.name(), "azure-vtpm");
        let err = p.get_evidence(&[0; 64]).unwrap_err();
        assert!(matches!(err, EvidenceError::Tpm { .. }), "{err}");
        assert!(err.to_string().contains("not-a-tpm"), "{err}");
    }
}
