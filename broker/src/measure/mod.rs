//! Expected launch measurements of SEV, SEV-ES and SEV-SNP guests, computed
//! offline from the guest's firmware and boot inputs: what `broker measure`
//! prints and a policy's `measurements` list holds.
//!
//! The model follows virtee/sev-snp-measure 0.0.13 (the public vectors in
//! `tests/fixtures/snp-measure/VECTORS.md`). The `sev` crate's measurement
//! module is not used for the digest: its EC2 VMSA predates the live 2026
//! measurement (rdx 0x600), it has no GCE VMM type, SEV/SEV-ES digests need
//! its OpenSSL feature, and its OVMF parser indexes slices unchecked, so a
//! truncated image panics instead of failing. `docs/measure.md` has the
//! details.
//!
//! Parsing never decides anything: [`Firmware::parse`] and
//! [`parse_setup_header`] only read; [`measure`] applies the model.

mod error;
mod gctx;
mod hashes;
mod kernel;
mod ovmf;
mod vmsa;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub use error::{KernelHeaderError, MeasureError, OvmfError, UnknownName};
pub use gctx::LD_LEN;
pub use hashes::BootHashes;
pub use kernel::{parse_setup_header, SetupHeader};
pub use ovmf::{Firmware, Section, SectionType};

use gctx::{Gctx, PageType, PAGE};

const FOUR_GIB: u64 = 0x1_0000_0000;

/// Which kind of guest to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// SEV: SHA-256 over firmware (and hashes table).
    Sev,
    /// SEV-ES: SEV plus the vCPUs' VMSAs.
    SevEs,
    /// SEV-SNP: the SHA-384 launch digest of every page added.
    Snp,
    /// Only the SNP digest after the firmware pages, for `--snp-ovmf-hash`.
    SnpOvmfHash,
    /// SEV-SNP with a Coconut-SVSM image below the firmware.
    SnpSvsm,
}

impl Mode {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Sev => "sev",
            Mode::SevEs => "seves",
            Mode::Snp => "snp",
            Mode::SnpOvmfHash => "snp:ovmf-hash",
            Mode::SnpSvsm => "snp:svsm",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Mode {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, UnknownName> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "sev" => Mode::Sev,
            "seves" | "sev-es" => Mode::SevEs,
            "snp" | "sev-snp" => Mode::Snp,
            "snp:ovmf-hash" => Mode::SnpOvmfHash,
            "snp:svsm" | "sev-snp:svsm" => Mode::SnpSvsm,
            _ => {
                return Err(UnknownName {
                    what: "mode",
                    name: s.to_owned(),
                    choices: "snp, seves, sev, snp:ovmf-hash or snp:svsm".to_owned(),
                })
            }
        })
    }
}

/// The hypervisor that launches the guest: it decides initial registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmmType {
    /// QEMU/KVM.
    Qemu,
    /// Amazon EC2.
    Ec2,
    /// Google Compute Engine.
    Gce,
}

impl VmmType {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            VmmType::Qemu => "QEMU",
            VmmType::Ec2 => "ec2",
            VmmType::Gce => "gce",
        }
    }
}

impl FromStr for VmmType {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, UnknownName> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "qemu" => VmmType::Qemu,
            "ec2" => VmmType::Ec2,
            "gce" => VmmType::Gce,
            _ => {
                return Err(UnknownName {
                    what: "VMM type",
                    name: s.to_owned(),
                    choices: "QEMU, ec2 or gce".to_owned(),
                })
            }
        })
    }
}

/// The CPUID Fn0000_0001_EAX signature of a family/model/stepping (AMD
/// CPUID specification #25481).
pub fn cpu_sig(family: u32, model: u32, stepping: u32) -> u32 {
    let (family_low, family_high) = if family > 0xf {
        (0xf, (family - 0xf) & 0xff)
    } else {
        (family, 0)
    };
    (family_high << 20)
        | (((model >> 4) & 0xf) << 16)
        | (family_low << 8)
        | ((model & 0xf) << 4)
        | (stepping & 0xf)
}

/// QEMU's EPYC CPU models and their (family, model, stepping).
pub const VCPU_TYPES: &[(&str, (u32, u32, u32))] = &[
    ("EPYC", (23, 1, 2)),
    ("EPYC-v1", (23, 1, 2)),
    ("EPYC-v2", (23, 1, 2)),
    ("EPYC-IBPB", (23, 1, 2)),
    ("EPYC-v3", (23, 1, 2)),
    ("EPYC-v4", (23, 1, 2)),
    ("EPYC-Rome", (23, 49, 0)),
    ("EPYC-Rome-v1", (23, 49, 0)),
    ("EPYC-Rome-v2", (23, 49, 0)),
    ("EPYC-Rome-v3", (23, 49, 0)),
    ("EPYC-Rome-v4", (23, 49, 0)),
    ("EPYC-Milan", (25, 1, 1)),
    ("EPYC-Milan-v1", (25, 1, 1)),
    ("EPYC-Milan-v2", (25, 1, 1)),
    ("EPYC-Genoa", (25, 17, 0)),
    ("EPYC-Genoa-v1", (25, 17, 0)),
    ("EPYC-Turin", (26, 0, 0)),
    ("EPYC-Turin-v1", (26, 0, 0)),
];

/// The CPUID signature of a QEMU CPU model name (case-insensitive).
pub fn vcpu_type_sig(name: &str) -> Result<u32, UnknownName> {
    VCPU_TYPES
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, (f, m, s))| cpu_sig(*f, *m, *s))
        .ok_or_else(|| {
            let names: Vec<&str> = VCPU_TYPES.iter().map(|(n, _)| *n).collect();
            UnknownName {
                what: "vCPU type",
                name: name.to_owned(),
                choices: format!(
                    "one of {}, or give --vcpu-sig or --vcpu-family/--vcpu-model/--vcpu-stepping",
                    names.join(", ")
                ),
            }
        })
}

/// Everything a measurement depends on. Paths are read by [`measure`].
#[derive(Debug, Clone)]
pub struct Request {
    /// Guest mode.
    pub mode: Mode,
    /// Number of vCPUs (needed except for SEV).
    pub vcpus: Option<u32>,
    /// CPUID signature of the guest vCPU (needed for QEMU SEV-ES/SNP).
    pub vcpu_sig: Option<u32>,
    /// The VMM.
    pub vmm: VmmType,
    /// SEV_FEATURES of the SNP VMSAs (0x1 = SNPActive).
    pub guest_features: u64,
    /// The firmware image (OVMF.fd).
    pub ovmf: PathBuf,
    /// Kernel for measured direct boot.
    pub kernel: Option<PathBuf>,
    /// Initrd (with a kernel).
    pub initrd: Option<PathBuf>,
    /// Kernel command line (with a kernel).
    pub append: Option<String>,
    /// Digest of the firmware pages computed earlier (SNP only): the
    /// firmware file's contents are then not hashed.
    pub snp_ovmf_hash: Option<[u8; LD_LEN]>,
    /// Coconut-SVSM image (snp:svsm).
    pub svsm: Option<PathBuf>,
    /// Size of the OVMF_VARS image mapped between SVSM and firmware (snp:svsm).
    pub ovmf_vars_size: Option<u64>,
}

impl Request {
    /// A request with the defaults of sev-snp-measure: QEMU, guest
    /// features 0x1, no kernel.
    pub fn new(mode: Mode, ovmf: impl Into<PathBuf>) -> Self {
        Self {
            mode,
            vcpus: None,
            vcpu_sig: None,
            vmm: VmmType::Qemu,
            guest_features: 0x1,
            ovmf: ovmf.into(),
            kernel: None,
            initrd: None,
            append: None,
            snp_ovmf_hash: None,
            svsm: None,
            ovmf_vars_size: None,
        }
    }
}

/// A computed measurement and what went into it.
#[derive(Debug, Clone)]
pub struct Measurement {
    /// The mode measured.
    pub mode: Mode,
    /// The launch digest: 48 bytes for SNP, 32 for SEV and SEV-ES.
    pub digest: Vec<u8>,
    /// SHA-256 of the firmware file.
    pub ovmf_sha256: [u8; 32],
    /// The SNP digest after the firmware pages (what `--snp-ovmf-hash` takes).
    pub snp_ovmf_hash: Option<[u8; LD_LEN]>,
    /// Hashes of kernel, initrd and command line, with a kernel.
    pub boot: Option<BootHashes>,
    /// The kernel's setup header, or why it is not a bzImage.
    pub kernel_header: Option<Result<SetupHeader, KernelHeaderError>>,
    /// The vCPU signature placed in rdx (QEMU).
    pub vcpu_sig: Option<u32>,
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, MeasureError> {
    std::fs::read(path).map_err(|source| MeasureError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn parse_fw(what: &'static str, path: &Path, data: Vec<u8>) -> Result<Firmware, MeasureError> {
    Firmware::parse(data).map_err(|source| MeasureError::Firmware {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Checks the request's flags before any file is read.
fn check(req: &Request) -> Result<(), MeasureError> {
    if req.kernel.is_none() {
        if req.initrd.is_some() {
            return Err(MeasureError::NeedsKernel { flag: "--initrd" });
        }
        if req.append.is_some() {
            return Err(MeasureError::NeedsKernel { flag: "--append" });
        }
    }
    if req.snp_ovmf_hash.is_some() && req.mode != Mode::Snp {
        return Err(MeasureError::OvmfHashNeedsSnp);
    }
    let mode = req.mode.name();
    if matches!(req.mode, Mode::Snp | Mode::SevEs | Mode::SnpSvsm) {
        if req.vcpus.unwrap_or(0) == 0 {
            return Err(MeasureError::MissingVcpus { mode });
        }
        if req.vmm == VmmType::Qemu && req.vcpu_sig.is_none() {
            return Err(MeasureError::MissingVcpuType { mode });
        }
    }
    if req.mode == Mode::SnpSvsm {
        if req.vmm != VmmType::Qemu {
            return Err(MeasureError::Svsm(
                "snp:svsm mode is implemented for QEMU only; drop --vmm-type",
            ));
        }
        if req.svsm.is_none() || req.ovmf_vars_size.is_none() {
            return Err(MeasureError::Svsm(
                "snp:svsm mode needs --svsm FILE and --vars-size N (or --vars-file FILE)",
            ));
        }
        if req.kernel.is_some() {
            return Err(MeasureError::Svsm(
                "snp:svsm mode does not measure a kernel; drop --kernel",
            ));
        }
    }
    Ok(())
}

/// Computes the launch digest of `req`, reading its files.
pub fn measure(req: &Request) -> Result<Measurement, MeasureError> {
    check(req)?;
    let ovmf_bytes = read("firmware", &req.ovmf)?;
    let ovmf_sha256 = gctx::sha256(&ovmf_bytes);
    let fw = parse_fw("firmware", &req.ovmf, ovmf_bytes)?;
    let (boot, kernel_header) = match &req.kernel {
        Some(k) => {
            let kernel = read("kernel", k)?;
            let initrd = req
                .initrd
                .as_deref()
                .map(|p| read("initrd", p))
                .transpose()?;
            let header = parse_setup_header(&kernel);
            let hashes = BootHashes::new(&kernel, initrd.as_deref(), req.append.as_deref());
            (Some(hashes), Some(header))
        }
        None => (None, None),
    };
    let vcpus = req.vcpus.unwrap_or(0);
    let sig = req.vcpu_sig.unwrap_or(0);
    let mut out = Measurement {
        mode: req.mode,
        digest: Vec::new(),
        ovmf_sha256,
        snp_ovmf_hash: None,
        boot,
        kernel_header,
        vcpu_sig: req.vcpu_sig,
    };
    match req.mode {
        Mode::Sev | Mode::SevEs => {
            let mut data = fw.data().to_vec();
            if let Some(b) = &out.boot {
                if fw
                    .sev_hashes_table_gpa()
                    .map_err(|e| fw_err(req, e))?
                    .is_none()
                {
                    return Err(MeasureError::NoSevHashTable);
                }
                data.extend_from_slice(&b.table());
            }
            if req.mode == Mode::SevEs {
                for page in ovmf_vmsas(&fw, req, vcpus, 0, sig)? {
                    data.extend_from_slice(&page);
                }
            }
            out.digest = gctx::sha256(&data).to_vec();
        }
        Mode::SnpOvmfHash => {
            let mut g = Gctx::new();
            g.normal_pages(firmware_gpa("firmware", fw.data())?, fw.data())?;
            out.digest = g.ld().to_vec();
        }
        Mode::Snp => {
            if fw.sections().is_empty() {
                return Err(MeasureError::NoMetadata);
            }
            if out.boot.is_some() && !fw.has_section(SectionType::SnpKernelHashes) {
                return Err(MeasureError::NoSnpKernelHashes);
            }
            let mut g = match req.snp_ovmf_hash {
                Some(seed) => Gctx::from_seed(seed),
                None => {
                    let mut g = Gctx::new();
                    g.normal_pages(firmware_gpa("firmware", fw.data())?, fw.data())?;
                    g
                }
            };
            out.snp_ovmf_hash = Some(g.ld());
            metadata_pages(&mut g, &fw, out.boot.as_ref(), req.vmm, req)?;
            for page in ovmf_vmsas(&fw, req, vcpus, req.guest_features, sig)? {
                g.vmsa_page(&page);
            }
            out.digest = g.ld().to_vec();
        }
        Mode::SnpSvsm => {
            let (Some(svsm_path), Some(vars)) = (&req.svsm, req.ovmf_vars_size) else {
                return Err(MeasureError::Svsm(
                    "snp:svsm mode needs --svsm and --vars-size",
                ));
            };
            let svsm_bytes = read("SVSM image", svsm_path)?;
            let svsm = parse_fw("SVSM image", svsm_path, svsm_bytes)?;
            let ovmf_gpa = firmware_gpa("firmware", fw.data())?;
            let svsm_len = svsm.data().len() as u64;
            let svsm_gpa = ovmf_gpa
                .checked_sub(vars)
                .and_then(|end| end.checked_sub(svsm_len))
                .ok_or(MeasureError::TooLarge {
                    what: "SVSM image with OVMF_VARS",
                    len: svsm_len.saturating_add(vars),
                })?;
            let entry = svsm
                .svsm_entry_offset()
                .map_err(|source| MeasureError::Firmware {
                    what: "SVSM image",
                    path: svsm_path.clone(),
                    source,
                })?
                .ok_or(MeasureError::NoSvsmEntry)?;
            let eip =
                u32::try_from(u64::from(entry) + svsm_gpa).map_err(|_| MeasureError::TooLarge {
                    what: "SVSM entry point",
                    len: u64::from(entry) + svsm_gpa,
                })?;
            if svsm.sections().is_empty() {
                return Err(MeasureError::NoMetadata);
            }
            let mut g = Gctx::new();
            g.normal_pages(ovmf_gpa, fw.data())?;
            g.normal_pages(svsm_gpa, svsm.data())?;
            metadata_pages(&mut g, &svsm, None, VmmType::Qemu, req)?;
            let page = vmsa::svsm_vmsa(eip, sig);
            for _ in 0..vcpus {
                g.vmsa_page(&page);
            }
            out.digest = g.ld().to_vec();
        }
    }
    Ok(out)
}

fn fw_err(req: &Request, source: OvmfError) -> MeasureError {
    MeasureError::Firmware {
        what: "firmware",
        path: req.ovmf.clone(),
        source,
    }
}

/// The GPA at which an image ending at 4 GiB starts.
fn firmware_gpa(what: &'static str, data: &[u8]) -> Result<u64, MeasureError> {
    FOUR_GIB
        .checked_sub(data.len() as u64)
        .ok_or(MeasureError::TooLarge {
            what,
            len: data.len() as u64,
        })
}

/// The VMSA pages of `vcpus` vCPUs: the BSP at the reset vector, the APs
/// at the firmware's SEV-ES reset block.
fn ovmf_vmsas(
    fw: &Firmware,
    req: &Request,
    vcpus: u32,
    features: u64,
    sig: u32,
) -> Result<Vec<[u8; PAGE]>, MeasureError> {
    let mut pages = vec![vmsa::ovmf_vmsa(vmsa::BSP_EIP, features, sig, req.vmm)];
    if vcpus > 1 {
        let ap_eip = fw
            .sev_es_reset_eip()
            .map_err(|e| fw_err(req, e))?
            .filter(|&e| e != 0)
            .ok_or(MeasureError::NoResetVector { vcpus })?;
        let ap = vmsa::ovmf_vmsa(ap_eip, features, sig, req.vmm);
        pages.extend(std::iter::repeat_n(ap, vcpus as usize - 1));
    }
    Ok(pages)
}

/// Adds the firmware's metadata sections, as the VMM does for `vmm`.
fn metadata_pages(
    g: &mut Gctx,
    fw: &Firmware,
    boot: Option<&BootHashes>,
    vmm: VmmType,
    req: &Request,
) -> Result<(), MeasureError> {
    for s in fw.sections() {
        let (gpa, size) = (u64::from(s.gpa), u64::from(s.size));
        match s.kind {
            SectionType::SnpSecMemory if vmm == VmmType::Gce => {
                g.empty_pages(PageType::Unmeasured, gpa, size)?
            }
            SectionType::SnpSecMemory | SectionType::SvsmCaa => {
                g.empty_pages(PageType::Zero, gpa, size)?
            }
            SectionType::SnpSecrets => g.special_page(PageType::Secrets, gpa),
            // EC2 adds the CPUID page last.
            SectionType::Cpuid if vmm == VmmType::Ec2 => {}
            SectionType::Cpuid => g.special_page(PageType::Cpuid, gpa),
            SectionType::SnpKernelHashes => match boot {
                Some(b) => {
                    let table_gpa = fw
                        .sev_hashes_table_gpa()
                        .map_err(|e| fw_err(req, e))?
                        .ok_or(MeasureError::NoSevHashTable)?;
                    let bad = MeasureError::BadHashesPage {
                        gpa: table_gpa,
                        size: s.size,
                    };
                    if size != PAGE as u64 {
                        return Err(bad);
                    }
                    let page = b.page(table_gpa as usize & (PAGE - 1)).ok_or(bad)?;
                    g.normal_pages(gpa, &page)?;
                }
                None => g.empty_pages(PageType::Zero, gpa, size)?,
            },
        }
    }
    if vmm == VmmType::Ec2 {
        for s in fw
            .sections()
            .iter()
            .filter(|s| s.kind == SectionType::Cpuid)
        {
            g.special_page(PageType::Cpuid, u64::from(s.gpa));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/snp-measure")
            .join(name)
    }

    #[test]
    fn cpu_signatures() {
        assert_eq!(vcpu_type_sig("EPYC-v4").unwrap(), 0x0080_0f12);
        assert_eq!(vcpu_type_sig("epyc-milan").unwrap(), 0x00a0_0f11);
        assert_eq!(vcpu_type_sig("EPYC-Genoa").unwrap(), 0x00a1_0f10);
        assert_eq!(cpu_sig(26, 0, 0), 0x00b0_0f00);
        assert!(vcpu_type_sig("EPYC-v9")
            .unwrap_err()
            .to_string()
            .contains("EPYC-Turin"));
    }

    #[test]
    fn names_parse_case_insensitively() {
        assert_eq!("GCE".parse::<VmmType>().unwrap(), VmmType::Gce);
        assert_eq!("qemu".parse::<VmmType>().unwrap(), VmmType::Qemu);
        assert!("xen".parse::<VmmType>().is_err());
        assert_eq!("SEV-ES".parse::<Mode>().unwrap(), Mode::SevEs);
        assert!("tdx".parse::<Mode>().is_err());
    }

    /// For QEMU guests the sev crate's model is right: it must agree.
    #[test]
    fn agrees_with_the_sev_crate_for_qemu() {
        use sev::measurement::snp::{snp_calc_launch_digest, SnpMeasurementArgs};
        use sev::measurement::vcpu_types::CpuType;
        use sev::measurement::vmsa::{GuestFeatures, VMMType};
        for (vcpus, features, kernel) in [(1u32, 0x1u64, false), (3, 0x21, true)] {
            let theirs = snp_calc_launch_digest(SnpMeasurementArgs {
                vcpus,
                vcpu_type: CpuType::EpycMilan,
                ovmf_file: fixture("ovmf_AmdSev_suffix.bin"),
                guest_features: GuestFeatures(features),
                kernel_file: kernel.then(|| fixture("gen_kernel.bin")),
                initrd_file: kernel.then(|| fixture("gen_initrd.bin")),
                append: kernel.then_some("quiet"),
                ovmf_hash_str: None,
                vmm_type: Some(VMMType::QEMU),
            })
            .unwrap();
            let mut req = Request::new(Mode::Snp, fixture("ovmf_AmdSev_suffix.bin"));
            req.vcpus = Some(vcpus);
            req.vcpu_sig = Some(vcpu_type_sig("EPYC-Milan").unwrap());
            req.guest_features = features;
            if kernel {
                req.kernel = Some(fixture("gen_kernel.bin"));
                req.initrd = Some(fixture("gen_initrd.bin"));
                req.append = Some("quiet".into());
            }
            let ours = measure(&req).unwrap();
            assert_eq!(hex::encode(&ours.digest), theirs.get_hex_ld());
        }
    }

    #[test]
    fn flag_checks_come_before_io() {
        let mut req = Request::new(Mode::Snp, "/nonexistent");
        req.vcpus = Some(1);
        assert!(matches!(
            measure(&req),
            Err(MeasureError::MissingVcpuType { .. })
        ));
        req.vcpu_sig = Some(1);
        req.initrd = Some("/x".into());
        assert!(matches!(
            measure(&req),
            Err(MeasureError::NeedsKernel { flag: "--initrd" })
        ));
        req.initrd = None;
        assert!(matches!(measure(&req), Err(MeasureError::Read { .. })));
        let mut req = Request::new(Mode::Sev, "/nonexistent");
        req.snp_ovmf_hash = Some([0; 48]);
        assert!(matches!(measure(&req), Err(MeasureError::OvmfHashNeedsSnp)));
    }
}
