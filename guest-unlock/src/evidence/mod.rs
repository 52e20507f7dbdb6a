//! Evidence providers: where the guest obtains its attestation evidence: an SNP
//! report and the certificate table of the extended report, or on an Azure
//! confidential VM the paravisor's HCL report and a quote of the vTPM.
//!
//! Three providers exist, and one is chosen only by explicit configuration
//! ([`ProviderConfig`]): `sev-guest` (the `/dev/sev-guest` ioctl through the `sev` crate),
//! `configfs-tsm` (Linux's `/sys/kernel/config/tsm/report`) and `azure-vtpm` (Azure's
//! vTPM, `/dev/tpmrm0`, with raw TPM 2.0 commands of `keybroker-vtpm`). Test builds
//! (cargo feature `sim`) add a fourth, `sim` (a simulated platform directory,
//! `keybroker-sim`); a build without it refuses `sim:DIR` with a message that says so.
//! [`open_provider`] never falls back to another provider, least of all to `sim`, when
//! hardware is absent: it fails with an error that says what is missing and what to do.

mod azure_vtpm;
mod configfs_tsm;
mod sev_guest;
#[cfg(feature = "sim")]
mod sim_provider;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

pub use azure_vtpm::AzureVtpmProvider;
pub use configfs_tsm::ConfigfsTsmProvider;
pub use sev_guest::SevGuestProvider;
#[cfg(feature = "sim")]
pub use sim_provider::SimProvider;

use keybroker_snp::cert_table::CertTableError;
use keybroker_snp::report::REPORT_LEN;

/// Default device of the `sev-guest` provider.
pub const DEFAULT_SEV_GUEST_DEVICE: &str = "/dev/sev-guest";
/// Default root of the `configfs-tsm` provider.
pub const DEFAULT_CONFIGFS_TSM_ROOT: &str = "/sys/kernel/config/tsm/report";
/// Default TPM of the `azure-vtpm` provider (the kernel's resource manager).
pub const DEFAULT_TPM_DEVICE: &str = "/dev/tpmrm0";
/// Whether this build has the simulated platform (cargo feature `sim`, tests only).
pub const SIM_BUILT_IN: bool = cfg!(feature = "sim");
/// The provider forms this build accepts, for messages.
pub const PROVIDER_FORMS: &str = if SIM_BUILT_IN {
    "sev-guest[:DEVICE], configfs-tsm[:ROOT], azure-vtpm[:DEVICE] or sim:DIR"
} else {
    "sev-guest[:DEVICE], configfs-tsm[:ROOT] or azure-vtpm[:DEVICE]"
};
/// Why a build without the simulated platform refuses `sim:DIR`.
pub const NO_SIM: &str = "this guest-unlock was built without the simulated platform (cargo \
    feature `sim`), which exists only for tests; use sev-guest, configfs-tsm or azure-vtpm";

/// A bare SNP report and the raw certificate table (empty when the platform offers no
/// certificates; the broker then uses its own copies).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnpEvidence {
    /// The attestation report, exactly as the platform produced it.
    pub report: Vec<u8>,
    /// The extended report's certificate table ([`keybroker_snp::cert_table`] layout),
    /// possibly empty.
    pub cert_table: Vec<u8>,
}

/// An Azure confidential VM's evidence, as its vTPM gave it (docs/protocol.md, "Azure
/// vTPM evidence").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzureVtpmEvidence {
    /// NV index 0x01400001: the HCL report, with the SNP report inside.
    pub hcl_report: Vec<u8>,
    /// The quote's `TPMS_ATTEST`.
    pub quote: Vec<u8>,
    /// The quote's `TPMT_SIGNATURE`.
    pub signature: Vec<u8>,
    /// The quoted SHA-256 PCR values, in selection order.
    pub pcr_values: Vec<[u8; 32]>,
}

/// What a provider returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Evidence {
    /// A bare SNP report, REPORT_DATA = the binding value.
    Snp(SnpEvidence),
    /// Azure vTPM evidence: the binding value is the quote's qualifying data and the HCL
    /// report's user data.
    AzureVtpm(AzureVtpmEvidence),
}

impl From<SnpEvidence> for Evidence {
    fn from(e: SnpEvidence) -> Self {
        Evidence::Snp(e)
    }
}

impl Evidence {
    /// The bare SNP evidence, if it is that.
    pub fn snp(&self) -> Option<&SnpEvidence> {
        match self {
            Evidence::Snp(e) => Some(e),
            Evidence::AzureVtpm(_) => None,
        }
    }

    /// The SNP report: the bare one, or the one inside a well-framed HCL report.
    pub fn snp_report(&self) -> Option<Vec<u8>> {
        match self {
            Evidence::Snp(e) => Some(e.report.clone()),
            Evidence::AzureVtpm(a) => keybroker_vtpm::HclReport::parse(&a.hcl_report)
                .ok()
                .map(|h| h.snp_report().to_vec()),
        }
    }

    /// Whether it carries `report_data` wherever the protocol binds it: REPORT_DATA of a
    /// bare report; the quote's qualifying data and the HCL user data on Azure. A local
    /// sanity check (the broker verifies): a provider that does not bind the request is
    /// broken.
    pub fn binds(&self, report_data: &[u8; 64]) -> bool {
        match self {
            Evidence::Snp(e) => {
                keybroker_snp::report::report_data(&e.report) == Some(&report_data[..])
            }
            Evidence::AzureVtpm(a) => {
                let quoted = keybroker_vtpm::tpm::attest::QuoteAttest::parse(&a.quote)
                    .is_ok_and(|q| q.extra_data == report_data);
                quoted && azure_vtpm::carries(&a.hcl_report, report_data)
            }
        }
    }
}

/// A source of attestation evidence.
pub trait EvidenceProvider: Send + Sync {
    /// Short name of the provider (`sev-guest`, `configfs-tsm`, `azure-vtpm`, `sim`).
    fn name(&self) -> &'static str;

    /// Requests evidence that binds `report_data` (see [`Evidence::binds`]).
    fn get_evidence(&self, report_data: &[u8; 64]) -> Result<Evidence, EvidenceError>;

    /// The lowest protocol minor a broker must speak to accept this provider's evidence
    /// (0: any).
    fn min_protocol_minor(&self) -> u32 {
        0
    }
}

/// Which evidence provider to use. Parsed from `sev-guest[:DEVICE]`, `configfs-tsm[:ROOT]`
/// or, in test builds, `sim:DIR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderConfig {
    /// The SEV guest device, through the `sev` crate.
    SevGuest {
        /// Device path (only [`DEFAULT_SEV_GUEST_DEVICE`] is supported by the `sev` crate).
        device: PathBuf,
    },
    /// Linux configfs-tsm reports.
    ConfigfsTsm {
        /// The `tsm/report` directory.
        root: PathBuf,
    },
    /// Azure's vTPM (an Azure confidential VM).
    AzureVtpm {
        /// The TPM: a character device (`/dev/tpmrm0`) or, for tests, a Unix socket
        /// speaking the same raw TPM 2.0 commands (swtpm).
        device: PathBuf,
    },
    /// A simulated platform directory (see [`keybroker_sim`]; test builds only).
    #[cfg(feature = "sim")]
    Sim {
        /// The platform directory.
        dir: PathBuf,
    },
}

impl FromStr for ProviderConfig {
    type Err = EvidenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s, SIM_BUILT_IN)
    }
}

impl ProviderConfig {
    /// Parses a provider, `sim:DIR` only when `sim` (a build with the
    /// simulated platform).
    fn parse(s: &str, sim: bool) -> Result<Self, EvidenceError> {
        let invalid = |reason: &str| EvidenceError::InvalidConfig {
            input: s.to_string(),
            reason: reason.to_string(),
        };
        let (kind, path) = match s.split_once(':') {
            Some((k, p)) => (k, Some(p)),
            None => (s, None),
        };
        if path.is_some_and(str::is_empty) {
            return Err(invalid("the path after ':' is empty"));
        }
        match (kind, path) {
            ("sev-guest", p) => Ok(Self::SevGuest {
                device: PathBuf::from(p.unwrap_or(DEFAULT_SEV_GUEST_DEVICE)),
            }),
            ("configfs-tsm", p) => Ok(Self::ConfigfsTsm {
                root: PathBuf::from(p.unwrap_or(DEFAULT_CONFIGFS_TSM_ROOT)),
            }),
            ("azure-vtpm", p) => Ok(Self::AzureVtpm {
                device: PathBuf::from(p.unwrap_or(DEFAULT_TPM_DEVICE)),
            }),
            ("sim", _) if !sim => Err(invalid(NO_SIM)),
            #[cfg(feature = "sim")]
            ("sim", Some(p)) => Ok(Self::Sim {
                dir: PathBuf::from(p),
            }),
            ("sim", None) => Err(invalid(
                "the simulated platform needs its directory: sim:DIR",
            )),
            _ => Err(invalid(&format!("expected {PROVIDER_FORMS}"))),
        }
    }
}

impl fmt::Display for ProviderConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SevGuest { device } => write!(f, "sev-guest:{}", device.display()),
            Self::ConfigfsTsm { root } => write!(f, "configfs-tsm:{}", root.display()),
            Self::AzureVtpm { device } => write!(f, "azure-vtpm:{}", device.display()),
            #[cfg(feature = "sim")]
            Self::Sim { dir } => write!(f, "sim:{}", dir.display()),
        }
    }
}

/// Opens the configured provider, requesting reports at VMPL 0.
pub fn open_provider(config: &ProviderConfig) -> Result<Box<dyn EvidenceProvider>, EvidenceError> {
    open_provider_at_vmpl(config, 0)
}

/// Opens the configured provider, requesting reports at `vmpl` (0..=3; ignored by `sim`,
/// whose guest description names its VMPL, and by `azure-vtpm`, whose paravisor requests
/// its reports at VMPL0). Never substitutes another provider.
pub fn open_provider_at_vmpl(
    config: &ProviderConfig,
    vmpl: u32,
) -> Result<Box<dyn EvidenceProvider>, EvidenceError> {
    if vmpl > 3 {
        return Err(EvidenceError::InvalidConfig {
            input: vmpl.to_string(),
            reason: "VMPL must be 0, 1, 2 or 3".into(),
        });
    }
    Ok(match config {
        ProviderConfig::SevGuest { device } => Box::new(SevGuestProvider::open(device, vmpl)?),
        ProviderConfig::ConfigfsTsm { root } => Box::new(ConfigfsTsmProvider::open(
            root,
            (vmpl != 0).then_some(vmpl),
        )?),
        ProviderConfig::AzureVtpm { device } => Box::new(AzureVtpmProvider::open(device)?),
        #[cfg(feature = "sim")]
        ProviderConfig::Sim { dir } => Box::new(SimProvider::open(dir)?),
    })
}

/// Why evidence could not be obtained. Messages say what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EvidenceError {
    /// A provider specification could not be parsed.
    #[error("invalid evidence provider {input:?}: {reason}")]
    InvalidConfig {
        /// The input.
        input: String,
        /// What is wrong.
        reason: String,
    },
    /// The SEV guest device does not exist.
    #[error("{device} does not exist: load the sev-guest kernel module (`modprobe sev-guest`) and check that this VM runs under AMD SEV-SNP (`dmesg | grep -i sev`)")]
    DeviceMissing {
        /// The device path.
        device: PathBuf,
    },
    /// The SEV guest device could not be opened.
    #[error("cannot open {device}: {source}; run guest-unlock as root")]
    DeviceAccess {
        /// The device path.
        device: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A device path other than `/dev/sev-guest` was configured.
    #[error("{device}: the sev-guest provider can open only /dev/sev-guest; configure `sev-guest` without a path, or use `configfs-tsm`")]
    UnsupportedDevicePath {
        /// The configured path.
        device: PathBuf,
    },
    /// The kernel or the AMD secure processor refused the request.
    #[error("the SEV-SNP report request failed: {0}; check `dmesg` for sev-guest errors")]
    Firmware(String),
    /// The configfs-tsm root does not exist.
    #[error("{root} does not exist: mount configfs (`mount -t configfs none /sys/kernel/config`) and use a kernel with CONFIG_TSM_REPORTS and the sev-guest module loaded")]
    ConfigfsMissing {
        /// The configured root.
        root: PathBuf,
    },
    /// A configfs-tsm operation failed.
    #[error("{path}: {source}")]
    ConfigfsIo {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The directory created under the root lacks the report attributes.
    #[error("{path} has no `{attribute}` attribute: the configured root is not a configfs-tsm report directory (expected /sys/kernel/config/tsm/report)")]
    NotTsmReportDir {
        /// The created directory.
        path: PathBuf,
        /// The missing attribute.
        attribute: &'static str,
    },
    /// configfs-tsm is served by another TEE.
    #[error("configfs-tsm provider is {found:?}, not \"sev_guest\": this VM is not an SEV-SNP guest; configure the provider of its TEE")]
    WrongTsmProvider {
        /// The provider the kernel reported.
        found: String,
    },
    /// The report entry kept changing while being read.
    #[error("the configfs-tsm report at {path} changed while being read, {attempts} times: another process writes to it; retry")]
    GenerationChanged {
        /// The report directory.
        path: PathBuf,
        /// Attempts made.
        attempts: u32,
    },
    /// The kernel produced no report.
    #[error("{path} is missing or empty: the kernel produced no report; check `dmesg` for sev-guest errors")]
    MissingOutblob {
        /// The outblob path.
        path: PathBuf,
    },
    /// The report has the wrong size.
    #[error("the platform returned a {len}-byte report, expected {REPORT_LEN}")]
    BadReportLength {
        /// Its length.
        len: usize,
    },
    /// The platform's certificate table could not be converted.
    #[error("the platform's certificate table is malformed: {0}")]
    CertTable(#[from] CertTableError),
    /// The TPM device does not exist.
    #[error("{device} does not exist: this VM has no TPM, or its driver is not loaded (`modprobe tpm_crb` or `tpm_tis`); the azure-vtpm provider is for Azure confidential VMs (check with `guest-unlock status`)")]
    TpmMissing {
        /// The configured device.
        device: PathBuf,
    },
    /// The TPM could not be opened.
    #[error("cannot open {device}: {source}; run guest-unlock as root")]
    TpmAccess {
        /// The device.
        device: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A TPM command failed.
    #[error("{device}: {source}; is this an Azure confidential VM? (`guest-unlock status` says; its vTPM holds the HCL report in NV index 0x01400001 and the attestation key at 0x81000003)")]
    Tpm {
        /// The device.
        device: PathBuf,
        /// The cause.
        #[source]
        source: keybroker_vtpm::TpmError,
    },
    /// The simulated platform failed (test builds only).
    #[cfg(feature = "sim")]
    #[error("simulated platform: {0}")]
    Sim(#[from] keybroker_sim::SimError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_config_parses_and_prints() {
        let mut cases = vec![
            (
                "sev-guest",
                ProviderConfig::SevGuest {
                    device: DEFAULT_SEV_GUEST_DEVICE.into(),
                },
            ),
            (
                "sev-guest:/dev/x",
                ProviderConfig::SevGuest {
                    device: "/dev/x".into(),
                },
            ),
            (
                "configfs-tsm",
                ProviderConfig::ConfigfsTsm {
                    root: DEFAULT_CONFIGFS_TSM_ROOT.into(),
                },
            ),
            (
                "configfs-tsm:/tmp/r",
                ProviderConfig::ConfigfsTsm {
                    root: "/tmp/r".into(),
                },
            ),
            (
                "azure-vtpm",
                ProviderConfig::AzureVtpm {
                    device: DEFAULT_TPM_DEVICE.into(),
                },
            ),
            (
                "azure-vtpm:/run/tpm.sock",
                ProviderConfig::AzureVtpm {
                    device: "/run/tpm.sock".into(),
                },
            ),
        ];
        #[cfg(feature = "sim")]
        cases.push((
            "sim:/tmp/p",
            ProviderConfig::Sim {
                dir: "/tmp/p".into(),
            },
        ));
        for (text, want) in cases {
            let got: ProviderConfig = text.parse().unwrap();
            assert_eq!(got, want, "{text}");
            assert_eq!(got.to_string().parse::<ProviderConfig>().unwrap(), want);
        }
    }

    #[test]
    fn provider_config_refuses_bad_input() {
        for bad in [
            "",
            "sim",
            "sim:",
            "sev-guest:",
            "tdx",
            "SEV-GUEST",
            "configfs",
            "auto",
            "azure-vtpm:",
            "azure",
        ] {
            let err = bad.parse::<ProviderConfig>().unwrap_err();
            assert!(
                matches!(err, EvidenceError::InvalidConfig { .. }),
                "{bad}: {err}"
            );
        }
        let msg = ProviderConfig::parse("sim", true).unwrap_err().to_string();
        assert!(msg.contains("sim:DIR"), "{msg}");
    }

    /// What the shipped build (no `sim` feature) says to `sim:DIR`.
    #[test]
    fn a_build_without_the_simulator_refuses_sim_and_says_why() {
        for text in ["sim:/tmp/p", "sim"] {
            let err = ProviderConfig::parse(text, false).unwrap_err();
            assert!(
                matches!(err, EvidenceError::InvalidConfig { .. }),
                "{text}: {err}"
            );
            let msg = err.to_string();
            assert!(
                msg.contains("built without the simulated platform")
                    && msg.contains("cargo feature `sim`")
                    && msg.contains("use sev-guest, configfs-tsm or azure-vtpm"),
                "{msg}"
            );
        }
        assert!(ProviderConfig::parse("sev-guest", false).is_ok());
    }

    #[test]
    fn azure_evidence_binds_only_where_quote_and_user_data_both_carry_the_value() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/azure-snp-vtpm/evidence-v0.json"
        );
        let file = keybroker_vtpm::EvidenceFile::parse(&std::fs::read(path).unwrap()).unwrap();
        let real = Evidence::AzureVtpm(AzureVtpmEvidence {
            hcl_report: file.hcl_report.clone(),
            quote: file.quote_message.clone(),
            signature: file.quote_signature.to_tpmt(),
            pcr_values: file.pcr_values.clone(),
        });
        // The capture's user data is zero, its quote's extraData "challenge":
        // no 64-byte value is carried by both.
        assert!(!real.binds(&[0; 64]));
        let mut challenge = [0u8; 64];
        challenge[..9].copy_from_slice(b"challenge");
        assert!(!real.binds(&challenge));
        assert_eq!(real.snp_report().unwrap().len(), REPORT_LEN);
        assert!(real.snp().is_none());
        let Evidence::AzureVtpm(mut broken) = real else {
            unreachable!()
        };
        broken.hcl_report.truncate(100);
        let broken = Evidence::AzureVtpm(broken);
        assert!(broken.snp_report().is_none() && !broken.binds(&[0; 64]));
    }

    #[test]
    fn no_fallback_to_sim_when_hardware_is_absent() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("no-such-root");
        let err = open_provider(&ProviderConfig::ConfigfsTsm {
            root: missing.clone(),
        })
        .err()
        .unwrap();
        assert!(
            matches!(err, EvidenceError::ConfigfsMissing { ref root } if *root == missing),
            "{err}"
        );
        assert!(err.to_string().contains("mount -t configfs"));
        let err = open_provider_at_vmpl(
            &ProviderConfig::ConfigfsTsm {
                root: tmp.path().into(),
            },
            4,
        )
        .err()
        .unwrap();
        assert!(matches!(err, EvidenceError::InvalidConfig { .. }));
    }
}
