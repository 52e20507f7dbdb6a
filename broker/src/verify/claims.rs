//! The decoded, policy-relevant content of an attestation report.
//!
//! `ReportClaims` is plain data: the verifier fills it from the raw report
//! bytes, the policy engine reads it. Nothing here says whether the report
//! was verified; only [`super::VerifiedReport`] says that.

use serde::Serialize;

/// AMD EPYC product generation, which selects the pinned ARK and the TCB layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Generation {
    /// 3rd gen EPYC (Zen 3).
    Milan,
    /// 4th gen EPYC (Zen 4).
    Genoa,
    /// 5th gen EPYC (Zen 5); TCB has an FMC field, chip id is 8 bytes.
    Turin,
}

impl Generation {
    /// Lower-case name as used in policies, certificates directories and output.
    pub fn as_str(self) -> &'static str {
        match self {
            Generation::Milan => "milan",
            Generation::Genoa => "genoa",
            Generation::Turin => "turin",
        }
    }
}

impl std::fmt::Display for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which AMD key signed the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SignerKind {
    /// Versioned Chip Endorsement Key (per chip and TCB), chains to the ASK.
    Vcek,
    /// Versioned Loaded Endorsement Key (loaded by a cloud provider), chains to the ASVK.
    Vlek,
}

/// A TCB version decoded with the generation's layout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Tcb {
    /// Firmware Mask ROM / FMC SVN: present on Turin only.
    pub fmc: Option<u8>,
    /// Bootloader SVN.
    pub bootloader: u8,
    /// PSP OS (TEE) SVN.
    pub tee: u8,
    /// SNP firmware SVN.
    pub snp: u8,
    /// Microcode patch level.
    pub microcode: u8,
}

/// Guest policy bits from the report (the policy the guest was launched with).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GuestPolicyBits {
    /// Raw 64-bit policy value.
    pub raw: u64,
    /// Minimum ABI major.
    pub abi_major: u8,
    /// Minimum ABI minor.
    pub abi_minor: u8,
    /// SMT allowed (bit 16).
    pub smt_allowed: bool,
    /// Migration agent allowed (bit 18).
    pub migrate_ma: bool,
    /// Debugging allowed (bit 19): the hypervisor can read guest memory.
    pub debug: bool,
    /// Single socket only (bit 20).
    pub single_socket: bool,
}

impl GuestPolicyBits {
    /// Decodes the AMD SNP guest policy word.
    pub fn from_raw(raw: u64) -> Self {
        Self {
            raw,
            abi_minor: (raw & 0xff) as u8,
            abi_major: ((raw >> 8) & 0xff) as u8,
            smt_allowed: raw & (1 << 16) != 0,
            migrate_ma: raw & (1 << 18) != 0,
            debug: raw & (1 << 19) != 0,
            single_socket: raw & (1 << 20) != 0,
        }
    }
}

/// SNP firmware version (major.minor, build).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct FirmwareVersion {
    /// Major.
    pub major: u8,
    /// Minor.
    pub minor: u8,
    /// Build.
    pub build: u8,
}

impl std::fmt::Display for FirmwareVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.build)
    }
}

/// Every field of a report that output, audit or policy needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReportClaims {
    /// Report format version (2, 3 or 5).
    pub version: u32,
    /// Generation the report was attributed to.
    pub generation: Generation,
    /// VCEK or VLEK.
    pub signer: SignerKind,
    /// Guest SVN.
    pub guest_svn: u32,
    /// Guest policy.
    pub policy: GuestPolicyBits,
    /// Requesting VMPL (0 is the most privileged).
    pub vmpl: u32,
    /// Platform info word (SMT_EN bit 0, TSME_EN bit 1, ...).
    pub platform_info: u64,
    /// SMT enabled on the host (platform_info bit 0).
    pub smt_enabled: bool,
    /// Launch measurement (48 bytes).
    #[serde(with = "hex_bytes")]
    pub measurement: Vec<u8>,
    /// Host data (32 bytes).
    #[serde(with = "hex_bytes")]
    pub host_data: Vec<u8>,
    /// Family id (16 bytes).
    #[serde(with = "hex_bytes")]
    pub family_id: Vec<u8>,
    /// Image id (16 bytes).
    #[serde(with = "hex_bytes")]
    pub image_id: Vec<u8>,
    /// SHA-384 of the ID key (48 bytes).
    #[serde(with = "hex_bytes")]
    pub id_key_digest: Vec<u8>,
    /// SHA-384 of the author key (48 bytes).
    #[serde(with = "hex_bytes")]
    pub author_key_digest: Vec<u8>,
    /// REPORT_DATA (64 bytes).
    #[serde(with = "hex_bytes")]
    pub report_data: Vec<u8>,
    /// Report id (32 bytes).
    #[serde(with = "hex_bytes")]
    pub report_id: Vec<u8>,
    /// Chip id: 64 bytes on Milan/Genoa, first 8 significant on Turin, all zero when masked.
    #[serde(with = "hex_bytes")]
    pub chip_id: Vec<u8>,
    /// TCB the signing key was derived for.
    pub reported_tcb: Tcb,
    /// Current TCB.
    pub current_tcb: Tcb,
    /// Committed TCB.
    pub committed_tcb: Tcb,
    /// TCB at launch.
    pub launch_tcb: Tcb,
    /// Current SNP firmware version.
    pub current_firmware: FirmwareVersion,
    /// Committed SNP firmware version.
    pub committed_firmware: FirmwareVersion,
}

mod hex_bytes {
    pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }
}
