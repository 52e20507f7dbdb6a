//! Azure confidential VM detection and the vTPM's PCRs, for `guest-unlock
//! status`.
//!
//! An Azure confidential VM's paravisor owns the SEV-SNP interface: the
//! guest sees no `/dev/sev-guest` (and often no `sev_snp` CPU flag), but its
//! vTPM holds the paravisor's HCL report, with an SNP report inside, in NV
//! index 0x01400001. That is what counts here: the HCL report is read and
//! framed, and its SNP report decoded (nothing is verified; the broker
//! does that). Hyper-V's DMI vendor is shown beside it.
//!
//! [`read_pcrs`] reads the SHA-256 PCRs an owner pins in the broker's
//! policy (`[[vtpm.pcr_sets]]`), on a reference VM.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use keybroker_vtpm::tpm::pcr::{PcrSelection, PC_CLIENT_PCRS};
use keybroker_vtpm::tpm::transport;
use keybroker_vtpm::tpm::AZURE_HCL_REPORT_NV_INDEX;
use keybroker_vtpm::HclReport;
use serde::Serialize;

use crate::sev_detect::{summarize_report, ReportSummary};

/// What `status` finds of an Azure confidential VM.
#[derive(Debug, Default, Serialize)]
pub struct AzureStatus {
    /// The DMI system vendor is Microsoft (Hyper-V, Azure).
    pub hyperv: bool,
    /// The TPM device exists.
    pub tpm_device: bool,
    /// The HCL report: `None` without a TPM; `Err` when it cannot be read
    /// (no such NV index: not an Azure CVM; permission: not root) or does
    /// not frame.
    #[serde(serialize_with = "crate::sev_detect::result_json")]
    pub hcl: Option<Result<HclSummary, String>>,
}

/// The HCL report, decoded (unverified).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HclSummary {
    /// The HCL header's version.
    pub version: u32,
    /// The SNP report inside it (the paravisor's).
    pub snp: ReportSummary,
}

impl AzureStatus {
    /// Whether this is an Azure confidential VM: its vTPM holds an HCL
    /// report with an SNP report inside.
    pub fn detected(&self) -> bool {
        matches!(self.hcl, Some(Ok(_)))
    }

    /// Human-readable lines.
    pub fn lines(&self) -> Vec<String> {
        let yn = |b: bool| if b { "yes" } else { "no" };
        let mut v = vec![
            format!("Hyper-V:  {}", yn(self.hyperv)),
            format!("TPM:      {}", yn(self.tpm_device)),
        ];
        v.push(match &self.hcl {
            None => "Azure confidential VM: no (no TPM)".to_owned(),
            Some(Err(e)) => format!("Azure confidential VM: no ({e})"),
            Some(Ok(h)) => format!(
                "Azure confidential VM: yes (the vTPM holds the paravisor's HCL report, version \
                 {}, with an SNP report v{} at VMPL {}, paravisor measurement {}); configure \
                 evidence = \"azure-vtpm\"",
                h.version, h.snp.version, h.snp.vmpl, h.snp.measurement
            ),
        });
        v
    }
}

/// Looks for an Azure confidential VM under `root` (`/` normally): DMI,
/// the TPM at `root/dev/tpmrm0` (a device, or a socket in tests) and the
/// HCL report in it.
pub fn observe(root: &Path) -> AzureStatus {
    let vendor =
        std::fs::read_to_string(root.join("sys/class/dmi/id/sys_vendor")).unwrap_or_default();
    let device = root.join("dev/tpmrm0");
    let tpm_device = device.exists();
    AzureStatus {
        hyperv: vendor.trim() == "Microsoft Corporation",
        tpm_device,
        hcl: tpm_device.then(|| hcl_summary(&device)),
    }
}

fn hcl_summary(device: &Path) -> Result<HclSummary, String> {
    let mut tpm =
        transport::open(device).map_err(|e| format!("cannot open {}: {e}", device.display()))?;
    if tpm
        .nv_read_public(AZURE_HCL_REPORT_NV_INDEX)
        .map_err(|e| e.to_string())?
        .is_none()
    {
        return Err("the TPM has no NV index 0x01400001 (no HCL report)".into());
    }
    let bytes = tpm
        .nv_read_all(AZURE_HCL_REPORT_NV_INDEX)
        .map_err(|e| e.to_string())?;
    let hcl = HclReport::parse(&bytes).map_err(|e| e.to_string())?;
    let snp = summarize_report(hcl.snp_report()).map_err(|e| e.to_string())?;
    Ok(HclSummary {
        version: hcl.version(),
        snp,
    })
}

/// A list of PCR indexes, written `0-9` or `0,2,4-7` (0 to 23).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrList(Vec<u8>);

impl PcrList {
    /// The indexes, ascending, without repeats.
    pub fn indexes(&self) -> &[u8] {
        &self.0
    }
}

impl FromStr for PcrList {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |part: &str| {
            format!(
                "{part:?} in {s:?}: give PCR indexes 0 to {} as a list like 0-9 or 0,2,4-7",
                PC_CLIENT_PCRS - 1
            )
        };
        let index = |t: &str, part: &str| -> Result<u8, String> {
            t.parse::<u8>()
                .ok()
                .filter(|i| *i < PC_CLIENT_PCRS)
                .ok_or_else(|| bad(part))
        };
        let mut out = Vec::new();
        for part in s.split(',') {
            let part = part.trim();
            match part.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (index(a, part)?, index(b, part)?);
                    if a > b {
                        return Err(bad(part));
                    }
                    out.extend(a..=b);
                }
                None => out.push(index(part, part)?),
            }
        }
        out.sort_unstable();
        out.dedup();
        Ok(PcrList(out))
    }
}

impl fmt::Display for PcrList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list: Vec<String> = self.0.iter().map(u8::to_string).collect();
        f.write_str(&list.join(","))
    }
}

/// Reads the SHA-256 PCRs `list` of the TPM at `device`.
pub fn read_pcrs(device: &Path, list: &PcrList) -> Result<BTreeMap<u8, [u8; 32]>, String> {
    let mut tpm = transport::open(device).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!(
            "{} does not exist: this VM has no TPM, or its driver (tpm_crb, tpm_tis) is not \
             loaded",
            device.display()
        ),
        std::io::ErrorKind::PermissionDenied => {
            format!("cannot open {}: {e}; run as root", device.display())
        }
        _ => format!("cannot open {}: {e}", device.display()),
    })?;
    let selection = PcrSelection::sha256(list.indexes().iter().copied());
    let values = tpm
        .pcr_read_sha256(&selection)
        .map_err(|e| format!("{}: {e}", device.display()))?;
    Ok(list.indexes().iter().copied().zip(values).collect())
}

/// The `[[vtpm.pcr_sets]]` entry of a broker policy that admits these PCR
/// values (its PCRs as a sub-table, one per line).
pub fn policy_snippet(pcrs: &BTreeMap<u8, [u8; 32]>) -> String {
    let mut out = String::from("[[vtpm.pcr_sets]]\nname = \"reference\"\n[vtpm.pcr_sets.pcrs]\n");
    for (i, v) in pcrs {
        out.push_str(&format!("{i} = \"{}\"\n", hex::encode(v)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcr_lists_parse_and_refuse() {
        let l: PcrList = "0-3,7,2".parse().unwrap();
        assert_eq!(l.indexes(), &[0, 1, 2, 3, 7]);
        assert_eq!(l.to_string(), "0,1,2,3,7");
        assert_eq!("0-23".parse::<PcrList>().unwrap().indexes().len(), 24);
        for bad in ["", "24", "9-3", "a", "1,,2", "-1", "0-", "1 2"] {
            let e = bad.parse::<PcrList>().unwrap_err();
            assert!(e.contains("0 to 23"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_snippet_is_a_policy_pcr_set() {
        let pcrs: BTreeMap<u8, [u8; 32]> = [(0, [0xab; 32]), (7, [1; 32])].into();
        let s = policy_snippet(&pcrs);
        let v: toml::Value = toml::from_str(&s).unwrap();
        let set = &v["vtpm"]["pcr_sets"][0];
        assert_eq!(set["pcrs"]["0"].as_str().unwrap(), "ab".repeat(32));
        assert_eq!(set["pcrs"]["7"].as_str().unwrap(), "01".repeat(32));
        assert_eq!(set["name"].as_str(), Some("reference"));
    }

    #[test]
    fn no_tpm_no_azure() {
        let d = tempfile::tempdir().unwrap();
        let s = observe(d.path());
        assert!(!s.detected() && !s.tpm_device && !s.hyperv);
        assert!(s.lines()[2].contains("no (no TPM)"), "{:?}", s.lines());
        std::fs::create_dir_all(d.path().join("sys/class/dmi/id")).unwrap();
        std::fs::write(
            d.path().join("sys/class/dmi/id/sys_vendor"),
            "Microsoft Corporation\n",
        )
        .unwrap();
        std::fs::create_dir_all(d.path().join("dev")).unwrap();
        std::fs::write(d.path().join("dev/tpmrm0"), "").unwrap();
        let s = observe(d.path());
        assert!(s.hyperv && s.tpm_device && !s.detected());
        assert!(matches!(s.hcl, Some(Err(_))));
    }
}
