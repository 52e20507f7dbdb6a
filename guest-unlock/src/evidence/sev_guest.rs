//! The `sev-guest` provider: `SNP_GET_EXT_REPORT` on `/dev/sev-guest` through the `sev`
//! crate's safe API, with the returned certificates re-encoded as a certificate table.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sev::firmware::guest::Firmware;
use sev::firmware::host::CertTableEntry;
use sev::parser::ByteParser;

use keybroker_snp::cert_table::{self, CertEntry, Guid};
use keybroker_snp::report::REPORT_LEN;

use super::{Evidence, EvidenceError, EvidenceProvider, SnpEvidence, DEFAULT_SEV_GUEST_DEVICE};

/// Reports from `/dev/sev-guest`.
#[derive(Debug)]
pub struct SevGuestProvider {
    device: PathBuf,
    firmware: Mutex<Firmware>,
    vmpl: u32,
}

impl SevGuestProvider {
    /// Opens `device` (only `/dev/sev-guest`: the `sev` crate opens that fixed path) to
    /// request reports at `vmpl` (0..=3).
    pub fn open(device: &Path, vmpl: u32) -> Result<Self, EvidenceError> {
        if device != Path::new(DEFAULT_SEV_GUEST_DEVICE) {
            return Err(EvidenceError::UnsupportedDevicePath {
                device: device.to_path_buf(),
            });
        }
        if vmpl > 3 {
            return Err(EvidenceError::InvalidConfig {
                input: vmpl.to_string(),
                reason: "VMPL must be 0, 1, 2 or 3".into(),
            });
        }
        let firmware = Firmware::open().map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                EvidenceError::DeviceMissing {
                    device: device.to_path_buf(),
                }
            } else {
                EvidenceError::DeviceAccess {
                    device: device.to_path_buf(),
                    source,
                }
            }
        })?;
        Ok(Self {
            device: device.to_path_buf(),
            firmware: Mutex::new(firmware),
            vmpl,
        })
    }

    /// The device in use.
    pub fn device(&self) -> &Path {
        &self.device
    }
}

/// Re-encodes the `sev` crate's certificate entries as a certificate table, keeping the
/// crate's GUID byte order.
pub(crate) fn table_from_sev_entries(entries: &[CertTableEntry]) -> Result<Vec<u8>, EvidenceError> {
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let guid = e.cert_type.to_bytes().map_err(|err| {
            EvidenceError::Firmware(format!(
                "unencodable certificate GUID {}: {err}",
                e.guid_string()
            ))
        })?;
        out.push(CertEntry {
            guid: Guid(guid),
            data: e.data.clone(),
        });
    }
    Ok(cert_table::encode(&out)?)
}

impl EvidenceProvider for SevGuestProvider {
    fn name(&self) -> &'static str {
        "sev-guest"
    }

    fn get_evidence(&self, report_data: &[u8; 64]) -> Result<Evidence, EvidenceError> {
        let mut fw = self.firmware.lock().unwrap_or_else(|p| p.into_inner());
        let (report, certs) = fw
            .get_ext_report(None, Some(*report_data), Some(self.vmpl))
            .map_err(|e| EvidenceError::Firmware(e.to_string()))?;
        drop(fw);
        if report.len() != REPORT_LEN {
            return Err(EvidenceError::BadReportLength { len: report.len() });
        }
        let cert_table = match certs {
            Some(entries) if !entries.is_empty() => table_from_sev_entries(&entries)?,
            _ => Vec::new(),
        };
        Ok(SnpEvidence { report, cert_table }.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keybroker_snp::cert_table::CertKind;
    use sev::firmware::host::CertType;

    #[test]
    fn table_matches_the_sev_crate_kernel_layout() {
        let entries = vec![
            CertTableEntry::new(CertType::VCEK, vec![0x30, 1, 2, 3]),
            CertTableEntry::new(CertType::ASK, vec![0x30; 17]),
            CertTableEntry::new(CertType::ARK, vec![0x31; 5]),
        ];
        let ours = table_from_sev_entries(&entries).unwrap();
        // The sev crate's own encoder of the layout the kernel hands to the PSP.
        let theirs = CertTableEntry::cert_table_to_vec_bytes(&entries).unwrap();
        assert_eq!(ours, theirs);
        let parsed = cert_table::decode(&ours).unwrap();
        assert_eq!(parsed.len(), 3);
        assert_eq!(parsed[1].kind(), Some(CertKind::Ask));
        assert_eq!(parsed[1].data, vec![0x30; 17]);
    }

    #[test]
    fn open_refuses_other_paths_and_vmpls() {
        let err = SevGuestProvider::open(Path::new("/dev/other"), 0).unwrap_err();
        assert!(
            matches!(err, EvidenceError::UnsupportedDevicePath { .. }),
            "{err}"
        );
        let err = SevGuestProvider::open(Path::new(DEFAULT_SEV_GUEST_DEVICE), 4).unwrap_err();
        assert!(matches!(err, EvidenceError::InvalidConfig { .. }), "{err}");
    }

    #[test]
    fn missing_device_says_what_to_do() {
        if Path::new(DEFAULT_SEV_GUEST_DEVICE).exists() {
            eprintln!("skipped: this machine has {DEFAULT_SEV_GUEST_DEVICE}");
            return;
        }
        let err = SevGuestProvider::open(Path::new(DEFAULT_SEV_GUEST_DEVICE), 0).unwrap_err();
        assert!(matches!(err, EvidenceError::DeviceMissing { .. }), "{err}");
        assert!(err.to_string().contains("modprobe sev-guest"));
    }
}
