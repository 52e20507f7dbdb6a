//! The simulated SEV-SNP platform: a test ARK → ASK → VCEK chain with AMD's VCEK extensions,
//! and a report signer producing byte-exact version 2, 3 and 5 attestation reports.
//!
//! It exists for tests, the demo and VM end-to-end runs without AMD hardware. It proves
//! nothing about a machine: the broker trusts it only when its configuration names this
//! platform's ARK explicitly, and `guest-unlock` uses it only when built with its `sim`
//! feature (test builds) and told to (`sim:DIR`); the shipped `guest-unlock` does not
//! contain it.
//!
//! A platform lives in a directory:
//! - `ark.pem`: self-signed root, subject `CN=ARK-Sim-<Generation>, O=keybroker simulated platform`;
//! - `ask.pem`: `CN=SEV-<Generation>` (as AMD names its ASKs), issued by the ARK;
//! - `vcek.der`: `CN=SEV-VCEK`, issued by the ASK, with AMD's extensions (see [`certs`]);
//! - `vcek.key`: the VCEK private key, PKCS#8 DER, mode 0600;
//! - `platform.toml`: generation, chip id, reported TCB, firmware version, platform info;
//! - optionally `guest.toml`: the [`SimGuest`] the `sim` evidence provider reports as.
//!
//! All three keys are ECDSA P-384. Real AMD ARKs and ASKs are RSA-4096 (RSA-PSS signatures);
//! the broker verifies both.
//!
//! [`azure`] simulates an Azure confidential VM on top: a paravisor that provisions a
//! software TPM as Azure's vTPM and refreshes its HCL report, signed by this platform's VCEK.

#![forbid(unsafe_code)]

pub mod azure;
pub mod certs;
pub(crate) mod der;
mod files;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use aws_lc_rs::digest;
use aws_lc_rs::rand::{self, SystemRandom};
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair};
use serde::{Deserialize, Serialize};
use sev::firmware::guest::{AttestationReport, GuestPolicy, KeyInfo, PlatformInfo, Version};
use sev::firmware::host::TcbVersion;
use sev::parser::ByteParser;
use time::{Duration, OffsetDateTime};

use keybroker_snp::cert_table::{self, CertEntry, CertKind};
use keybroker_snp::report::{signature, REPORT_LEN, SIGNED_RANGE};

pub use files::{ARK_FILE, ASK_FILE, GUEST_FILE, KEY_FILE, PLATFORM_FILE, VCEK_FILE};

/// Default guest policy: SMT allowed (bit 16), reserved bit 17 set; debug and migration
/// agent not allowed, ABI 0.0.
pub const DEFAULT_POLICY: u64 = 0x30000;

/// An AMD EPYC generation the simulator can imitate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Generation {
    /// 3rd generation EPYC (family 0x19, model 0x01).
    Milan,
    /// 4th generation EPYC (family 0x19, model 0x11).
    Genoa,
    /// 5th generation EPYC (family 0x1A, model 0x02); 8-byte chip ids, FMC in the TCB.
    Turin,
}

impl Generation {
    /// The name AMD uses (`Milan`, `Genoa`, `Turin`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Milan => "Milan",
            Self::Genoa => "Genoa",
            Self::Turin => "Turin",
        }
    }

    /// The VCEK productName1 extension value, as AMD writes it.
    pub fn product_name(self) -> &'static str {
        match self {
            Self::Milan => "Milan-B0",
            Self::Genoa => "Genoa",
            Self::Turin => "Turin",
        }
    }

    /// CPUID (family, model, stepping) written into version 3+ reports.
    pub fn cpuid(self) -> (u8, u8, u8) {
        match self {
            Self::Milan => (0x19, 0x01, 0x01),
            Self::Genoa => (0x19, 0x11, 0x01),
            Self::Turin => (0x1A, 0x02, 0x01),
        }
    }

    /// A plausible reported TCB for this generation (taken from real machines).
    pub fn default_tcb(self) -> Tcb {
        match self {
            Self::Milan => Tcb {
                bootloader: 3,
                tee: 0,
                snp: 8,
                microcode: 115,
                fmc: None,
            },
            Self::Genoa => Tcb {
                bootloader: 10,
                tee: 0,
                snp: 25,
                microcode: 84,
                fmc: None,
            },
            Self::Turin => Tcb {
                bootloader: 1,
                tee: 0,
                snp: 2,
                microcode: 71,
                fmc: Some(0),
            },
        }
    }

    /// A plausible firmware version for this generation.
    pub fn default_firmware(self) -> FirmwareVersion {
        match self {
            Self::Milan => FirmwareVersion {
                major: 1,
                minor: 55,
                build: 29,
            },
            Self::Genoa => FirmwareVersion {
                major: 1,
                minor: 55,
                build: 43,
            },
            Self::Turin => FirmwareVersion {
                major: 1,
                minor: 55,
                build: 61,
            },
        }
    }

    /// Number of significant chip id bytes (the VCEK hwID length).
    pub fn chip_id_len(self) -> usize {
        match self {
            Self::Turin => 8,
            _ => 64,
        }
    }
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Generation {
    type Err = SimError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "milan" => Ok(Self::Milan),
            "genoa" => Ok(Self::Genoa),
            "turin" => Ok(Self::Turin),
            _ => Err(SimError::InvalidParams(format!(
                "unknown generation {s:?}: expected milan, genoa or turin"
            ))),
        }
    }
}

/// A TCB version (security patch levels). `fmc` exists on Turin only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tcb {
    /// PSP bootloader SPL.
    pub bootloader: u8,
    /// PSP OS (TEE) SPL.
    pub tee: u8,
    /// SNP firmware SPL.
    pub snp: u8,
    /// Microcode SPL.
    pub microcode: u8,
    /// FMC SPL (Turin only; `None` on Milan and Genoa).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fmc: Option<u8>,
}

impl Tcb {
    fn to_sev(self, generation: Generation) -> TcbVersion {
        let fmc = match generation {
            Generation::Turin => Some(self.fmc.unwrap_or(0)),
            _ => None,
        };
        TcbVersion::new(fmc, self.bootloader, self.tee, self.snp, self.microcode)
    }

    fn check(&self, generation: Generation) -> Result<(), String> {
        if generation != Generation::Turin && self.fmc.is_some() {
            return Err(format!(
                "the TCB has an fmc field, which exists on Turin only, not {generation}"
            ));
        }
        Ok(())
    }
}

/// An SNP firmware version (`major.minor.build`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirmwareVersion {
    /// Major version.
    pub major: u8,
    /// Minor version.
    pub minor: u8,
    /// Build number.
    pub build: u8,
}

impl fmt::Display for FirmwareVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.build)
    }
}

/// Parameters of [`SimPlatform::generate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimParams {
    /// Generation to imitate.
    pub generation: Generation,
    /// Chip id; `None` draws a random one from the OS RNG (8 significant bytes on Turin).
    /// Must not be all zero; on Turin bytes 8.. must be zero, on Milan and Genoa they must not
    /// all be (the `sev` crate tells version 2 reports apart by that).
    pub chip_id: Option<[u8; 64]>,
    /// Reported TCB; `None` uses [`Generation::default_tcb`].
    pub reported_tcb: Option<Tcb>,
    /// Firmware version; `None` uses [`Generation::default_firmware`].
    pub firmware: Option<FirmwareVersion>,
    /// PLATFORM_INFO field of reports (default 0x25: SMT, ECC, alias check complete).
    pub platform_info: u64,
    /// Start of the certificates' validity (default: now - 1 day).
    pub not_before: OffsetDateTime,
    /// End of the certificates' validity (default: now + 7 years).
    pub not_after: OffsetDateTime,
}

impl SimParams {
    /// Defaults for `generation`.
    pub fn new(generation: Generation) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            generation,
            chip_id: None,
            reported_tcb: None,
            firmware: None,
            platform_info: 0x25,
            not_before: now - Duration::days(1),
            not_after: now + Duration::days(7 * 365 + 2),
        }
    }
}

impl Default for SimParams {
    fn default() -> Self {
        Self::new(Generation::Milan)
    }
}

/// What a simulated guest reports about itself. Tests change fields to make bad reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimGuest {
    /// Report version: 2 gives the version 2 layout, 3 and 4 the version 3 layout, anything
    /// else the version 5 layout (so tests can produce, say, a version 1 report).
    pub version: u32,
    /// Launch measurement.
    pub measurement: [u8; 48],
    /// Guest policy. Bit 17 is always set, as the firmware does.
    pub policy: u64,
    /// VMPL the report was requested at.
    pub vmpl: u32,
    /// Guest SVN.
    pub guest_svn: u32,
    /// HOST_DATA supplied at launch.
    pub host_data: [u8; 32],
    /// Family id of the ID block.
    pub family_id: [u8; 16],
    /// Image id of the ID block.
    pub image_id: [u8; 16],
    /// SHA-384 of the ID key.
    pub id_key_digest: [u8; 48],
    /// SHA-384 of the author key.
    pub author_key_digest: [u8; 48],
    /// KEY_INFO field (default 0: signed by the VCEK). Claiming another key is a test of the
    /// verifier: the report is still signed with the VCEK.
    pub key_info: u32,
    /// Overrides the REPORTED_TCB field of this report only (to test a TCB mismatch with the
    /// VCEK's extensions); current, committed and launch TCB stay the platform's.
    pub reported_tcb: Option<Tcb>,
}

/// Label whose SHA-384 is the default simulated launch measurement.
pub const DEFAULT_MEASUREMENT_LABEL: &[u8] = b"keybroker simulated guest";

impl Default for SimGuest {
    fn default() -> Self {
        let mut measurement = [0u8; 48];
        measurement
            .copy_from_slice(digest::digest(&digest::SHA384, DEFAULT_MEASUREMENT_LABEL).as_ref());
        Self {
            version: 5,
            measurement,
            policy: DEFAULT_POLICY,
            vmpl: 0,
            guest_svn: 0,
            host_data: [0; 32],
            family_id: [0; 16],
            image_id: [0; 16],
            id_key_digest: [0; 48],
            author_key_digest: [0; 48],
            key_info: 0,
            reported_tcb: None,
        }
    }
}

/// Errors of the simulated platform. Messages say what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A platform file is missing.
    #[error(
        "{path} is missing: the directory holds no simulated platform; generate one there first"
    )]
    Missing {
        /// The missing file.
        path: PathBuf,
    },
    /// `generate` found an existing platform.
    #[error("{path} already exists: refusing to overwrite a simulated platform; choose an empty directory")]
    AlreadyExists {
        /// The existing file.
        path: PathBuf,
    },
    /// A platform file is malformed or inconsistent with the others.
    #[error("{path} is invalid: {reason}; regenerate the simulated platform")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The VCEK private key is accessible to group or others.
    #[error("{path} is accessible to group or others (mode {mode:03o}); run `chmod 600 {path}`")]
    KeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Invalid [`SimParams`].
    #[error("invalid simulated platform parameters: {0}")]
    InvalidParams(String),
    /// An invalid guest description (`guest.toml`).
    #[error("invalid simulated guest: {0}")]
    InvalidGuest(String),
    /// Certificate generation failed.
    #[error("generating the simulated certificates failed: {0}")]
    CertGen(String),
    /// A cryptographic primitive failed.
    #[error("{0}")]
    Crypto(&'static str),
    /// The `sev` crate could not encode the report.
    #[error("encoding the simulated report failed: {0}")]
    Encode(std::io::Error),
    /// A TPM command of the simulated Azure paravisor failed.
    #[error("simulated vTPM: {0}")]
    Tpm(String),
}

/// A loaded simulated platform, able to sign reports with its VCEK.
///
/// The VCEK private key lives only inside aws-lc's `EcdsaKeyPair`, whose memory aws-lc
/// clears when freed; it is never printed (`Debug` shows public data only).
pub struct SimPlatform {
    dir: PathBuf,
    generation: Generation,
    chip_id: [u8; 64],
    reported_tcb: Tcb,
    firmware: FirmwareVersion,
    platform_info: u64,
    ark_der: Vec<u8>,
    ask_der: Vec<u8>,
    vcek_der: Vec<u8>,
    cert_table: Vec<u8>,
    vcek_key: EcdsaKeyPair,
}

impl fmt::Debug for SimPlatform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimPlatform")
            .field("dir", &self.dir)
            .field("generation", &self.generation)
            .field(
                "chip_id",
                &hex::encode(&self.chip_id[..self.generation.chip_id_len()]),
            )
            .field("reported_tcb", &self.reported_tcb)
            .field("firmware", &self.firmware)
            .finish_non_exhaustive()
    }
}

impl SimPlatform {
    /// Generates a new platform (fresh keys and certificates) into `dir`, creating it if
    /// needed, and loads it. Refuses to overwrite an existing platform.
    pub fn generate(dir: &Path, params: &SimParams) -> Result<SimPlatform, SimError> {
        files::generate(dir, params)?;
        Self::load(dir)
    }

    /// Loads the platform in `dir`, checking that its files are complete and consistent:
    /// the key is private to its owner and belongs to the VCEK, the VCEK's extensions match
    /// `platform.toml`, and the chain ARK → ASK → VCEK is signed.
    pub fn load(dir: &Path) -> Result<SimPlatform, SimError> {
        files::load(dir)
    }

    /// The directory the platform was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The imitated generation.
    pub fn generation(&self) -> Generation {
        self.generation
    }

    /// The chip id written into reports.
    pub fn chip_id(&self) -> &[u8; 64] {
        &self.chip_id
    }

    /// The platform's reported TCB (also in the VCEK's extensions).
    pub fn reported_tcb(&self) -> Tcb {
        self.reported_tcb
    }

    /// The firmware version written into reports.
    pub fn firmware(&self) -> FirmwareVersion {
        self.firmware
    }

    /// The ARK certificate (DER). A broker trusts this platform only if configured with it.
    pub fn ark_der(&self) -> &[u8] {
        &self.ark_der
    }

    /// The ASK certificate (DER).
    pub fn ask_der(&self) -> &[u8] {
        &self.ask_der
    }

    /// The VCEK certificate (DER).
    pub fn vcek_der(&self) -> &[u8] {
        &self.vcek_der
    }

    /// The extended-report certificate table holding VCEK, ASK and ARK, in that order
    /// (layout and GUID byte order: [`keybroker_snp::cert_table`]).
    pub fn cert_table(&self) -> Vec<u8> {
        self.cert_table.clone()
    }

    /// Builds and signs a report for `guest` binding `report_data`.
    ///
    /// The fields are encoded by the `sev` crate's `AttestationReport` encoder; the raw bytes
    /// `0..0x2A0` are then signed with ECDSA P-384/SHA-384 and R and S written little-endian
    /// into their 72-byte fields at 0x2A0 and 0x2E8, as the AMD firmware does.
    pub fn report(&self, report_data: &[u8; 64], guest: &SimGuest) -> Result<Vec<u8>, SimError> {
        let generation = self.generation;
        let tcb = self.reported_tcb.to_sev(generation);
        let reported = match guest.reported_tcb {
            Some(t) => t.to_sev(generation),
            None => tcb,
        };
        let mut report_id = [0u8; 32];
        rand::fill(&mut report_id)
            .map_err(|_| SimError::Crypto("OS random number generator failed"))?;
        let (family, model, stepping) = generation.cpuid();
        let has_cpuid = guest.version != 2;
        let has_mit = !matches!(guest.version, 2..=4);
        let fw = Version::new(
            self.firmware.major,
            self.firmware.minor,
            self.firmware.build,
        );

        let report = AttestationReport {
            version: guest.version,
            guest_svn: guest.guest_svn,
            policy: GuestPolicy::from(guest.policy),
            family_id: guest.family_id,
            image_id: guest.image_id,
            vmpl: guest.vmpl,
            sig_algo: 1,
            current_tcb: tcb,
            plat_info: PlatformInfo::from(self.platform_info),
            key_info: KeyInfo::from(guest.key_info),
            report_data: *report_data,
            measurement: guest.measurement,
            host_data: guest.host_data,
            id_key_digest: guest.id_key_digest,
            author_key_digest: guest.author_key_digest,
            report_id,
            report_id_ma: [0xff; 32],
            reported_tcb: reported,
            cpuid_fam_id: has_cpuid.then_some(family),
            cpuid_mod_id: has_cpuid.then_some(model),
            cpuid_step: has_cpuid.then_some(stepping),
            chip_id: self.chip_id,
            committed_tcb: tcb,
            current: fw,
            committed: fw,
            launch_tcb: tcb,
            launch_mit_vector: has_mit.then_some(0),
            current_mit_vector: has_mit.then_some(0),
            signature: Default::default(),
        };
        let mut bytes = report.to_bytes().map_err(SimError::Encode)?.to_vec();
        self.sign_in_place(&mut bytes)?;
        Ok(bytes)
    }

    /// Signs the signed range and writes the signature fields
    /// ([`keybroker_snp::report::signature`]).
    fn sign_in_place(&self, report: &mut [u8]) -> Result<(), SimError> {
        if report.len() != REPORT_LEN {
            return Err(SimError::Crypto("unexpected report size"));
        }
        let sig = self
            .vcek_key
            .sign(&SystemRandom::new(), &report[SIGNED_RANGE])
            .map_err(|_| SimError::Crypto("ECDSA P-384 signing failed"))?;
        let sig: &[u8; 96] = sig
            .as_ref()
            .try_into()
            .map_err(|_| SimError::Crypto("unexpected signature size"))?;
        signature::write_fixed(report, sig).map_err(|_| SimError::Crypto("unexpected report size"))
    }

    fn from_parts(parts: files::Parts) -> Result<Self, SimError> {
        let cert_table = cert_table::encode(&[
            CertEntry::new(CertKind::Vcek, parts.vcek_der.clone()),
            CertEntry::new(CertKind::Ask, parts.ask_der.clone()),
            CertEntry::new(CertKind::Ark, parts.ark_der.clone()),
        ])
        .map_err(|e| SimError::Malformed {
            path: parts.dir.clone(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            dir: parts.dir,
            generation: parts.generation,
            chip_id: parts.chip_id,
            reported_tcb: parts.reported_tcb,
            firmware: parts.firmware,
            platform_info: parts.platform_info,
            ark_der: parts.ark_der,
            ask_der: parts.ask_der,
            vcek_der: parts.vcek_der,
            cert_table,
            vcek_key: parts.vcek_key,
        })
    }

    /// The VCEK public key (SEC1 uncompressed point).
    pub fn vcek_public_key(&self) -> &[u8] {
        self.vcek_key.public_key().as_ref()
    }
}

impl SimGuest {
    /// Parses a `guest.toml` description. Every key is optional and defaults to
    /// [`SimGuest::default`]; byte fields are hex strings of exact length; unknown keys are
    /// refused.
    pub fn from_toml(text: &str) -> Result<SimGuest, SimError> {
        files::guest_from_toml(text)
    }

    /// Renders this guest as `guest.toml` text that [`SimGuest::from_toml`] reads back.
    pub fn to_toml(&self) -> String {
        files::guest_to_toml(self)
    }

    /// Reads `path` (a `guest.toml`).
    pub fn load(path: &Path) -> Result<SimGuest, SimError> {
        let text = std::fs::read_to_string(path).map_err(|source| SimError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text).map_err(|e| match e {
            SimError::InvalidGuest(reason) => {
                SimError::InvalidGuest(format!("{}: {reason}", path.display()))
            }
            other => other,
        })
    }
}

/// A platform and the guest it reports as: what the `sim` evidence provider of
/// `guest-unlock` serves.
#[derive(Debug)]
pub struct SimEvidence {
    platform: SimPlatform,
    guest: SimGuest,
}

impl SimEvidence {
    /// Loads the platform in `dir` and, if present, `dir/guest.toml` (else the
    /// [`SimGuest::default`]).
    pub fn open(dir: &Path) -> Result<Self, SimError> {
        let platform = SimPlatform::load(dir)?;
        let guest_path = dir.join(GUEST_FILE);
        let guest = if guest_path.exists() {
            SimGuest::load(&guest_path)?
        } else {
            SimGuest::default()
        };
        Ok(Self::new(platform, guest))
    }

    /// An already loaded platform and guest description.
    pub fn new(platform: SimPlatform, guest: SimGuest) -> Self {
        Self { platform, guest }
    }

    /// The platform.
    pub fn platform(&self) -> &SimPlatform {
        &self.platform
    }

    /// The guest it reports as.
    pub fn guest(&self) -> &SimGuest {
        &self.guest
    }

    /// A signed report binding `report_data`, and the certificate table
    /// (VCEK, ASK, ARK).
    pub fn evidence(&self, report_data: &[u8; 64]) -> Result<(Vec<u8>, Vec<u8>), SimError> {
        Ok((
            self.platform.report(report_data, &self.guest)?,
            self.platform.cert_table(),
        ))
    }
}
