//! SEV detection, what `guest-unlock status` shows: is memory encryption
//! really on in this guest?
//!
//! Checks that need neither root nor dmesg: the CPU flags the kernel
//! exposes in `/proc/cpuinfo` (`sev`, `sev_es`, `sev_snp`: in a guest the
//! kernel sets them only when it runs encrypted), the `sev-guest` device
//! (created only in an SEV-SNP guest) and the configfs-tsm report
//! directory. With `--report`, it asks the configured evidence provider for
//! a report and decodes its guest policy, TCB and launch measurement.
//!
//! SEV-SNP counts as active when the `sev_snp` flag is set or
//! `/dev/sev-guest` exists, or when this is an Azure confidential VM (its
//! vTPM holds the paravisor's HCL report, [`crate::azure_detect`]); and,
//! with `--report`, the report was obtained.

use std::path::Path;

use serde::{Serialize, Serializer};

use crate::azure_detect::AzureStatus;
use crate::config::ConfigError;
use crate::evidence::{Evidence, EvidenceError, EvidenceProvider};

/// The observations, as plain data.
#[derive(Debug, Default, Serialize)]
pub struct Status {
    /// `sev` in the CPU flags.
    pub sev: bool,
    /// `sev_es` in the CPU flags.
    pub sev_es: bool,
    /// `sev_snp` in the CPU flags.
    pub sev_snp: bool,
    /// `/dev/sev-guest` exists.
    pub sev_guest_device: bool,
    /// The configfs-tsm report directory exists.
    pub configfs_tsm: bool,
    /// What is found of an Azure confidential VM.
    pub azure: AzureStatus,
    /// A test report, when asked for (in JSON: `{"Ok": {...}}` or
    /// `{"Err": "why"}`).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "result_json"
    )]
    pub report: Option<Result<ReportSummary, ReportError>>,
}

/// Why no test report could be had.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The configuration names no usable provider.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The provider failed.
    #[error(transparent)]
    Evidence(#[from] EvidenceError),
    /// What it returned is not a report.
    #[error(transparent)]
    Parse(#[from] ReportParseError),
}

/// An optional result as JSON: `{"Ok": value}`, `{"Err": "why"}` or `null`.
pub(crate) fn result_json<S: Serializer, T: Serialize, E: std::fmt::Display>(
    r: &Option<Result<T, E>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    enum Shown<'a, T> {
        Ok(&'a T),
        Err(String),
    }
    match r {
        Some(Ok(v)) => Shown::Ok(v).serialize(s),
        Some(Err(e)) => Shown::<T>::Err(e.to_string()).serialize(s),
        None => s.serialize_none(),
    }
}

/// The REPORT_DATA of the reports `status` asks for: fixed, since they
/// are shown or saved, never sent to a broker.
pub fn status_report_data() -> [u8; 64] {
    let mut rd = [0u8; 64];
    rd[..16].copy_from_slice(b"guest-unlock sta");
    rd
}

/// Asks `provider` for evidence with [`status_report_data`].
pub fn sample_evidence(provider: &dyn EvidenceProvider) -> Result<Evidence, ReportError> {
    Ok(provider.get_evidence(&status_report_data())?)
}

/// Decodes what `status` shows of evidence's SNP report.
pub fn summarize_evidence(ev: &Evidence) -> Result<ReportSummary, ReportError> {
    let report = ev.snp_report().ok_or_else(|| {
        ReportParseError(
            "the provider's HCL report does not frame, so it holds no SNP report".into(),
        )
    })?;
    Ok(summarize_report(&report)?)
}

/// Asks `provider` for a report (with a fixed REPORT_DATA: it is shown,
/// never sent anywhere) and decodes what `status` shows of it.
pub fn sample_report(provider: &dyn EvidenceProvider) -> Result<ReportSummary, ReportError> {
    summarize_evidence(&sample_evidence(provider)?)
}

impl Status {
    /// Whether SEV-SNP is active (see the module docs).
    pub fn snp_active(&self) -> bool {
        let base = self.sev_snp || self.sev_guest_device || self.azure.detected();
        match &self.report {
            Some(Err(_)) => false,
            _ => base,
        }
    }

    /// Human-readable lines.
    pub fn lines(&self) -> Vec<String> {
        let yn = |b: bool| if b { "yes" } else { "no" };
        let mut v = vec![
            format!("SEV:      {}", yn(self.sev)),
            format!("SEV-ES:   {}", yn(self.sev_es)),
            format!("SEV-SNP:  {}", yn(self.sev_snp)),
            format!("/dev/sev-guest: {}", yn(self.sev_guest_device)),
            format!("configfs-tsm:   {}", yn(self.configfs_tsm)),
        ];
        v.extend(self.azure.lines());
        match &self.report {
            None => {}
            Some(Err(e)) => v.push(format!("report: unavailable: {e}")),
            Some(Ok(r)) => {
                v.push(format!("report version: {}", r.version));
                v.push(format!(
                    "policy: {:#x} (debug {}, migration agent {}, SMT {}, single socket {}, ABI >= {}.{})",
                    r.policy,
                    if r.debug_allowed { "ALLOWED" } else { "no" },
                    if r.migrate_ma_allowed { "ALLOWED" } else { "no" },
                    if r.smt_allowed { "allowed" } else { "no" },
                    yn(r.single_socket),
                    r.abi_major,
                    r.abi_minor
                ));
                v.push(format!("vmpl: {}", r.vmpl));
                v.push(format!(
                    "reported TCB: {:#018x} (bootloader {}, tee {}, snp {}, microcode {}{})",
                    r.reported_tcb.raw,
                    r.reported_tcb.bootloader,
                    r.reported_tcb.tee,
                    r.reported_tcb.snp,
                    r.reported_tcb.microcode,
                    r.reported_tcb
                        .fmc
                        .map(|f| format!(", fmc {f}"))
                        .unwrap_or_default()
                ));
                v.push(format!("measurement: {}", r.measurement));
            }
        }
        v.push(format!(
            "SEV-SNP active: {}",
            if self.snp_active() { "yes" } else { "NO" }
        ));
        v
    }
}

/// The CPU flags of the first `flags` line of `/proc/cpuinfo` text.
pub fn cpu_flags(cpuinfo: &str) -> (bool, bool, bool) {
    let Some(line) = cpuinfo
        .lines()
        .find(|l| l.split(':').next().is_some_and(|k| k.trim() == "flags"))
    else {
        return (false, false, false);
    };
    let flags: Vec<&str> = line
        .split_once(':')
        .map(|(_, f)| f.split_whitespace().collect())
        .unwrap_or_default();
    (
        flags.contains(&"sev"),
        flags.contains(&"sev_es"),
        flags.contains(&"sev_snp"),
    )
}

/// Gathers the observations under `root` (`/` normally; a directory tree
/// in tests).
pub fn observe(root: &Path) -> Status {
    let cpuinfo = std::fs::read_to_string(root.join("proc/cpuinfo")).unwrap_or_default();
    let (sev, sev_es, sev_snp) = cpu_flags(&cpuinfo);
    Status {
        sev,
        sev_es,
        sev_snp,
        sev_guest_device: root.join("dev/sev-guest").exists(),
        configfs_tsm: root.join("sys/kernel/config/tsm/report").is_dir(),
        azure: crate::azure_detect::observe(root),
        report: None,
    }
}

/// A TCB version, decoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tcb {
    /// The raw 64-bit value.
    pub raw: u64,
    /// Boot loader SVN.
    pub bootloader: u8,
    /// TEE (PSP OS) SVN.
    pub tee: u8,
    /// SNP firmware SVN.
    pub snp: u8,
    /// Microcode SVN.
    pub microcode: u8,
    /// FMC SVN (Turin only).
    pub fmc: Option<u8>,
}

/// What `status --report` shows of a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReportSummary {
    /// Report format version.
    pub version: u32,
    /// The guest policy, raw.
    pub policy: u64,
    /// Policy bit 19.
    pub debug_allowed: bool,
    /// Policy bit 18.
    pub migrate_ma_allowed: bool,
    /// Policy bit 16.
    pub smt_allowed: bool,
    /// Policy bit 20.
    pub single_socket: bool,
    /// Minimum ABI major.
    pub abi_major: u8,
    /// Minimum ABI minor.
    pub abi_minor: u8,
    /// VMPL of the report.
    pub vmpl: u32,
    /// The reported TCB.
    pub reported_tcb: Tcb,
    /// Launch measurement, hex.
    pub measurement: String,
}

/// Why report bytes could not be summarised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an SEV-SNP attestation report: {0}")]
pub struct ReportParseError(pub String);

/// Decodes the fields `status` shows ([`keybroker_snp::report`] layout;
/// report versions 2 to 5).
pub fn summarize_report(b: &[u8]) -> Result<ReportSummary, ReportParseError> {
    use keybroker_snp::report::{self as layout, offset, policy, TcbLayout, REPORT_LEN};
    if b.len() != REPORT_LEN {
        return Err(ReportParseError(format!(
            "{} bytes, expected {REPORT_LEN}",
            b.len()
        )));
    }
    // The length is checked: every field below is inside the report.
    let u32_at = |off| layout::u32_at(b, off).unwrap_or_default();
    let u64_at = |off| layout::u64_at(b, off).unwrap_or_default();
    let version = u32_at(offset::VERSION);
    if !matches!(version, 2..=5) {
        return Err(ReportParseError(format!(
            "unknown report version {version}"
        )));
    }
    let policy = u64_at(offset::POLICY);
    let raw = u64_at(offset::REPORTED_TCB);
    // The CPUID family (reports v3+) tells Turin's TCB layout apart.
    let tcb_layout = if version >= 3 {
        TcbLayout::for_cpuid_family(b[offset::CPUID_FAMILY])
    } else {
        TcbLayout::MilanGenoa
    };
    let t = layout::decode_tcb(raw.to_le_bytes(), tcb_layout);
    let (abi_major, abi_minor) = policy::abi(policy);
    Ok(ReportSummary {
        version,
        policy,
        debug_allowed: policy & policy::DEBUG != 0,
        migrate_ma_allowed: policy & policy::MIGRATE_MA != 0,
        smt_allowed: policy & policy::SMT != 0,
        single_socket: policy & policy::SINGLE_SOCKET != 0,
        abi_major,
        abi_minor,
        vmpl: u32_at(offset::VMPL),
        reported_tcb: Tcb {
            raw,
            bootloader: t.bootloader,
            tee: t.tee,
            snp: t.snp,
            microcode: t.microcode,
            fmc: t.fmc,
        },
        measurement: hex::encode(
            layout::bytes_at::<{ layout::MEASUREMENT_LEN }>(b, offset::MEASUREMENT)
                .unwrap_or([0; layout::MEASUREMENT_LEN]),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_from_cpuinfo() {
        let text =
            "processor\t: 0\nflags\t\t: fpu sev sev_es sev_snp vme\nprocessor: 1\nflags: fpu\n";
        assert_eq!(cpu_flags(text), (true, true, true));
        assert_eq!(cpu_flags("flags : fpu sev_esx\n"), (false, false, false));
        assert_eq!(cpu_flags(""), (false, false, false));
        assert_eq!(cpu_flags("flags : sev\n"), (true, false, false));
    }

    #[test]
    fn observe_a_fake_root() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("proc")).unwrap();
        std::fs::write(d.path().join("proc/cpuinfo"), "flags : sev sev_es\n").unwrap();
        let s = observe(d.path());
        assert!(s.sev && s.sev_es && !s.sev_snp && !s.snp_active());
        std::fs::create_dir_all(d.path().join("dev")).unwrap();
        std::fs::write(d.path().join("dev/sev-guest"), "").unwrap();
        let mut s = observe(d.path());
        assert!(s.snp_active());
        s.report = Some(Err(ReportError::Parse(ReportParseError(
            "no provider".into(),
        ))));
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(
            json["report"]["Err"],
            "not an SEV-SNP attestation report: no provider"
        );
        assert!(!s.snp_active());
        assert!(s.lines().last().unwrap().ends_with("NO"));
    }

    #[test]
    fn report_fields() {
        let p = keybroker_sim::SimPlatform::generate(
            &tempfile::tempdir().unwrap().path().join("p"),
            &keybroker_sim::SimParams::default(),
        )
        .unwrap();
        let guest = keybroker_sim::SimGuest::default();
        let bytes = p.report(&[7u8; 64], &guest).unwrap();
        let r = summarize_report(&bytes).unwrap();
        assert_eq!(r.measurement, hex::encode(guest.measurement));
        assert_eq!(r.policy, guest.policy | 1 << 17);
        assert!(!r.debug_allowed);
        assert!(summarize_report(&bytes[..100]).is_err());
        let mut bad = bytes.clone();
        bad[0] = 9;
        assert!(summarize_report(&bad).is_err());
    }
}
