//! Attestation policy: typed, declarative, versioned, written in TOML.
//!
//! A [`Policy`] says which attested guests may receive a volume's key. It is
//! parsed from TOML by [`Policy::from_toml`] (format version 1, unknown fields
//! refused, every error located by line, column and field) and evaluated
//! against the decoded claims of a *verified* report by [`Policy::evaluate`]
//! (or, for an Azure vTPM guest, its verified PCRs too, by
//! [`Policy::evaluate_vtpm`]; [`Policy::evaluate_evidence`] picks), which
//! runs every check and returns a [`Verdict`] listing each failing one with
//! a stable reason code and the expected versus actual value.
//!
//! The module never decides whether a report is authentic: that is
//! `verify`'s job. It only reads [`ReportClaims`].
//!
//! # Format (version 1)
//!
//! ```toml
//! version = 1                                   # required, must be 1
//! measurements = ["<96 hex chars>", ...]        # required, at least one (unless [vtpm] accept = true)
//!
//! allow_debug = false            # default false: refuse guests whose policy DEBUG bit is set
//! allow_migration_agent = false  # default false: refuse guests whose policy MIGRATE_MA bit is set
//! allow_smt = true               # default true: false refuses hosts with SMT enabled (platform_info SMT_EN)
//! max_vmpl = 0                   # default 0 (the required VMPL): report VMPL must be <= this, 0..=3
//! min_guest_svn = 0              # default 0: report guest SVN must be >= this
//! accept_vlek = false            # default false: refuse reports signed by a VLEK
//! min_firmware = "1.55"          # optional: current SNP firmware major.minor must be >= this
//!
//! # Optional allowlists: absent or empty means "not checked".
//! id_key_digests = []            # 96 hex chars each (SHA-384 of the ID key)
//! author_key_digests = []        # 96 hex chars each (SHA-384 of the author key)
//! family_ids = []                # 32 hex chars each
//! image_ids = []                 # 32 hex chars each
//! host_data = []                 # 64 hex chars each
//! chip_ids = []                  # 128 hex chars (64-byte chip id) or 16 hex chars (Turin, 8 bytes)
//! blocked_chip_ids = []          # same format; a denylist, checked whatever chip_ids says
//!
//! # One table per generation the guest may run on; a generation without a
//! # table is refused. The TCB compared is the report's reported_tcb (the
//! # one the VCEK/VLEK was derived for and whose binding verify checked).
//! [min_tcb.milan]
//! bootloader = 3
//! tee = 0
//! snp = 8
//! microcode = 115
//!
//! [min_tcb.turin]                # fmc is required on Turin and refused elsewhere
//! fmc = 1
//! bootloader = 1
//! tee = 1
//! snp = 1
//! microcode = 1
//!
//! # Azure confidential VMs (evidence through the vTPM); see the `vtpm`
//! # module for what applies to them.
//! [vtpm]
//! accept = false                 # default false: refuse Azure vTPM evidence
//! paravisor_measurements = []    # 96 hex chars each; at least one when accept = true
//!
//! [[vtpm.pcr_sets]]              # at least one when accept = true
//! name = "image-v1"              # optional
//! pcrs = { 0 = "<64 hex chars>", 7 = "<64 hex chars>" }
//! ```
//!
//! Hex is accepted in either case; [`Policy::to_toml`] writes a canonical form
//! (every field explicit, lower-case hex, lists sorted and de-duplicated).
//!
//! **API Boundary:** this format is read by operators and stored in the
//! broker's database; a change that is not backward compatible needs a new
//! `version`.

mod parse;
#[cfg(test)]
mod tests;
mod vtpm;

use std::fmt;

use serde::Serialize;

use std::collections::BTreeMap;

use crate::verify::{BoundEvidence, Generation, ReportClaims, SignerKind};

pub use parse::{parse_measurement_hex, PolicyError, PolicyErrorKind};
pub use vtpm::{
    PcrSet, VtpmPolicy, MAX_PCR_INDEX, POLICY_EVIDENCE_KIND_NOT_ACCEPTED,
    POLICY_PARAVISOR_NOT_ALLOWED, POLICY_PCRS_NOT_ALLOWED,
};

/// The only policy format version this broker understands.
pub const POLICY_VERSION: i64 = 1;

/// A 48-byte launch measurement (SHA-384 launch digest).
pub type Measurement = [u8; 48];

/// Launch measurement not in the policy's `measurements`.
pub const POLICY_MEASUREMENT_NOT_ALLOWED: &str = "POLICY_MEASUREMENT_NOT_ALLOWED";
/// Guest policy allows debugging but the policy does not.
pub const POLICY_DEBUG_ALLOWED: &str = "POLICY_DEBUG_ALLOWED";
/// Guest policy allows a migration agent but the policy does not.
pub const POLICY_MIGRATION_AGENT_ALLOWED: &str = "POLICY_MIGRATION_AGENT_ALLOWED";
/// Host runs with SMT enabled but the policy refuses SMT.
pub const POLICY_SMT_NOT_ALLOWED: &str = "POLICY_SMT_NOT_ALLOWED";
/// Report VMPL is above the policy's `max_vmpl`.
pub const POLICY_VMPL_TOO_HIGH: &str = "POLICY_VMPL_TOO_HIGH";
/// A reported TCB component is below the policy's minimum.
pub const POLICY_TCB_BELOW_MINIMUM: &str = "POLICY_TCB_BELOW_MINIMUM";
/// The report's generation has no `min_tcb` table in the policy.
pub const POLICY_GENERATION_NOT_ALLOWED: &str = "POLICY_GENERATION_NOT_ALLOWED";
/// ID key digest not in the allowlist.
pub const POLICY_ID_KEY_NOT_ALLOWED: &str = "POLICY_ID_KEY_NOT_ALLOWED";
/// Author key digest not in the allowlist.
pub const POLICY_AUTHOR_KEY_NOT_ALLOWED: &str = "POLICY_AUTHOR_KEY_NOT_ALLOWED";
/// Family id not in the allowlist.
pub const POLICY_FAMILY_ID_NOT_ALLOWED: &str = "POLICY_FAMILY_ID_NOT_ALLOWED";
/// Image id not in the allowlist.
pub const POLICY_IMAGE_ID_NOT_ALLOWED: &str = "POLICY_IMAGE_ID_NOT_ALLOWED";
/// Host data not in the allowlist.
pub const POLICY_HOST_DATA_NOT_ALLOWED: &str = "POLICY_HOST_DATA_NOT_ALLOWED";
/// Guest SVN below the minimum.
pub const POLICY_GUEST_SVN_BELOW_MINIMUM: &str = "POLICY_GUEST_SVN_BELOW_MINIMUM";
/// Chip id not in the allowlist (or masked while an allowlist is set).
pub const POLICY_CHIP_NOT_ALLOWED: &str = "POLICY_CHIP_NOT_ALLOWED";
/// Chip id on the policy's denylist.
pub const POLICY_CHIP_BLOCKED: &str = "POLICY_CHIP_BLOCKED";
/// Report signed by a VLEK but the policy accepts VCEK only.
pub const POLICY_VLEK_NOT_ACCEPTED: &str = "POLICY_VLEK_NOT_ACCEPTED";
/// Current SNP firmware older than `min_firmware`.
pub const POLICY_FIRMWARE_BELOW_MINIMUM: &str = "POLICY_FIRMWARE_BELOW_MINIMUM";

/// Every reason code [`Policy::evaluate`] can produce. Stable: codes are only
/// ever added, never renamed or reused.
pub const ALL_REASON_CODES: &[&str] = &[
    POLICY_MEASUREMENT_NOT_ALLOWED,
    POLICY_DEBUG_ALLOWED,
    POLICY_MIGRATION_AGENT_ALLOWED,
    POLICY_SMT_NOT_ALLOWED,
    POLICY_VMPL_TOO_HIGH,
    POLICY_TCB_BELOW_MINIMUM,
    POLICY_GENERATION_NOT_ALLOWED,
    POLICY_ID_KEY_NOT_ALLOWED,
    POLICY_AUTHOR_KEY_NOT_ALLOWED,
    POLICY_FAMILY_ID_NOT_ALLOWED,
    POLICY_IMAGE_ID_NOT_ALLOWED,
    POLICY_HOST_DATA_NOT_ALLOWED,
    POLICY_GUEST_SVN_BELOW_MINIMUM,
    POLICY_CHIP_NOT_ALLOWED,
    POLICY_CHIP_BLOCKED,
    POLICY_VLEK_NOT_ACCEPTED,
    POLICY_FIRMWARE_BELOW_MINIMUM,
    POLICY_EVIDENCE_KIND_NOT_ACCEPTED,
    POLICY_PARAVISOR_NOT_ALLOWED,
    POLICY_PCRS_NOT_ALLOWED,
];

/// Minimum TCB for one generation. Compared component by component with the
/// report's `reported_tcb`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MinTcb {
    /// FMC SVN: `Some` on Turin only (the parser enforces it).
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

/// Minimum TCB per generation; `None` means the generation is not allowed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MinTcbByGeneration {
    /// 3rd gen EPYC.
    pub milan: Option<MinTcb>,
    /// 4th gen EPYC.
    pub genoa: Option<MinTcb>,
    /// 5th gen EPYC.
    pub turin: Option<MinTcb>,
}

impl MinTcbByGeneration {
    /// The minimum for `generation`, if that generation is allowed.
    pub fn get(&self, generation: Generation) -> Option<&MinTcb> {
        match generation {
            Generation::Milan => self.milan.as_ref(),
            Generation::Genoa => self.genoa.as_ref(),
            Generation::Turin => self.turin.as_ref(),
        }
    }

    /// Names of the allowed generations, in a fixed order.
    pub fn allowed(&self) -> Vec<&'static str> {
        [
            (Generation::Milan, self.milan.is_some()),
            (Generation::Genoa, self.genoa.is_some()),
            (Generation::Turin, self.turin.is_some()),
        ]
        .into_iter()
        .filter(|(_, on)| *on)
        .map(|(g, _)| g.as_str())
        .collect()
    }
}

/// SNP firmware version floor (`major.minor`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct MinFirmware {
    /// Major version.
    pub major: u8,
    /// Minor version.
    pub minor: u8,
}

impl fmt::Display for MinFirmware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// A chip id as written in a policy: the full 64 bytes (Milan/Genoa, or a
/// Turin id zero-padded as reports carry it) or the 8 significant bytes of a
/// Turin chip id.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ChipId(Vec<u8>);

impl ChipId {
    /// Bytes as written in the policy (8 or 64).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Whether this entry names the chip of a report of `generation`.
    /// Turin reports carry 8 significant bytes, so only those are compared.
    pub fn matches(&self, generation: Generation, chip_id: &[u8]) -> bool {
        match generation {
            Generation::Turin => {
                chip_id.len() >= 8 && self.0.len() >= 8 && self.0[..8] == chip_id[..8]
            }
            Generation::Milan | Generation::Genoa => self.0.len() == 64 && self.0 == chip_id,
        }
    }
}

/// A parsed, validated policy (format version 1). See the module docs for the
/// TOML format and the meaning of each field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Allowed launch measurements (sorted, unique; at least one unless
    /// `vtpm.accept`).
    pub measurements: Vec<Measurement>,
    /// Minimum reported TCB per allowed generation.
    pub min_tcb: MinTcbByGeneration,
    /// Accept guests launched with the DEBUG policy bit.
    pub allow_debug: bool,
    /// Accept guests launched with the MIGRATE_MA policy bit.
    pub allow_migration_agent: bool,
    /// Accept hosts running with SMT enabled.
    pub allow_smt: bool,
    /// The required VMPL: the report's VMPL must be at most this (0..=3).
    pub max_vmpl: u8,
    /// Minimum guest SVN.
    pub min_guest_svn: u32,
    /// Accept VLEK-signed reports.
    pub accept_vlek: bool,
    /// Minimum current SNP firmware version.
    pub min_firmware: Option<MinFirmware>,
    /// Allowed ID key digests (empty: not checked).
    pub id_key_digests: Vec<[u8; 48]>,
    /// Allowed author key digests (empty: not checked).
    pub author_key_digests: Vec<[u8; 48]>,
    /// Allowed family ids (empty: not checked).
    pub family_ids: Vec<[u8; 16]>,
    /// Allowed image ids (empty: not checked).
    pub image_ids: Vec<[u8; 16]>,
    /// Allowed host data values (empty: not checked).
    pub host_data: Vec<[u8; 32]>,
    /// Allowed chips (empty: not checked).
    pub chip_ids: Vec<ChipId>,
    /// Refused chips, whatever `chip_ids` says.
    pub blocked_chip_ids: Vec<ChipId>,
    /// Azure confidential VMs (the `[vtpm]` section).
    pub vtpm: VtpmPolicy,
}

/// One failing check of a policy evaluation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PolicyFailure {
    /// Stable reason code, one of [`ALL_REASON_CODES`].
    pub code: &'static str,
    /// The policy field that failed (`min_tcb.bootloader`, `measurements`, ...).
    pub check: &'static str,
    /// What the policy requires.
    pub expected: String,
    /// What the report says.
    pub actual: String,
}

/// The outcome of [`Policy::evaluate`]: every failing check, in a fixed order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// Failing checks; empty means the report satisfies the policy.
    pub failures: Vec<PolicyFailure>,
}

impl Verdict {
    /// True when no check failed.
    pub fn is_allowed(&self) -> bool {
        self.failures.is_empty()
    }

    /// The reason codes of the failing checks, in order (duplicates kept:
    /// one per failing TCB component).
    pub fn reason_codes(&self) -> Vec<&'static str> {
        self.failures.iter().map(|f| f.code).collect()
    }

    /// Whether a failure with `code` is present.
    pub fn has(&self, code: &str) -> bool {
        self.failures.iter().any(|f| f.code == code)
    }
}

impl fmt::Display for Verdict {
    /// `allowed`, or `denied (N failing checks)` followed by one line per
    /// failure: code, check, expected, actual.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.failures.is_empty() {
            return f.write_str("allowed");
        }
        write!(f, "denied ({} failing check", self.failures.len())?;
        if self.failures.len() != 1 {
            f.write_str("s")?;
        }
        f.write_str(")")?;
        for x in &self.failures {
            write!(
                f,
                "\n  {}: {}: expected {}, actual {}",
                x.code, x.check, x.expected, x.actual
            )?;
        }
        Ok(())
    }
}

/// Records a failing check in `out`: code, check, expected, actual.
fn failer(
    out: &mut Vec<PolicyFailure>,
) -> impl FnMut(&'static str, &'static str, String, String) + '_ {
    |code, check, expected, actual| {
        out.push(PolicyFailure {
            code,
            check,
            expected,
            actual,
        })
    }
}

/// An allowlist check: code, check name, allowed values, actual value.
type AllowList<'a> = (&'static str, &'static str, Vec<&'a [u8]>, &'a [u8]);

/// Formats an allowlist for the `expected` side of a failure.
pub(crate) fn one_of<'a>(items: impl ExactSizeIterator<Item = &'a [u8]>) -> String {
    const SHOWN: usize = 3;
    let n = items.len();
    let mut shown: Vec<String> = items.take(SHOWN).map(hex::encode).collect();
    if n > SHOWN {
        shown.push(format!("... ({} more)", n - SHOWN));
    }
    format!("one of [{}]", shown.join(", "))
}

impl Policy {
    /// Parses and validates a policy from TOML. See the module docs for the
    /// format. Errors carry line, column and field, and say what to change.
    pub fn from_toml(text: &str) -> Result<Policy, PolicyError> {
        parse::from_toml(text)
    }

    /// The canonical TOML form of this policy: every field explicit, hex in
    /// lower case, lists sorted and de-duplicated. `from_toml(to_toml(p)) == p`.
    pub fn to_toml(&self) -> String {
        parse::to_toml(self)
    }

    /// Adds an allowed measurement; returns false if it was already allowed.
    pub fn allow_measurement(&mut self, m: Measurement) -> bool {
        match self.measurements.binary_search(&m) {
            Ok(_) => false,
            Err(i) => {
                self.measurements.insert(i, m);
                true
            }
        }
    }

    /// Removes an allowed measurement. Returns false if it was not allowed;
    /// refuses to remove the last one (a policy allows at least one).
    pub fn revoke_measurement(&mut self, m: &Measurement) -> Result<bool, PolicyError> {
        match self.measurements.iter().position(|x| x == m) {
            None => Ok(false),
            Some(_) if self.measurements.len() == 1 => Err(PolicyError::value(
                "measurements",
                "cannot revoke the only allowed measurement; allow the replacement first, \
                 or disable the volume",
            )),
            Some(i) => {
                self.measurements.remove(i);
                Ok(true)
            }
        }
    }

    /// A one-line human summary, for listings.
    pub fn summary(&self) -> String {
        let mut parts = vec![format!(
            "{} measurement{}",
            self.measurements.len(),
            if self.measurements.len() == 1 {
                ""
            } else {
                "s"
            }
        )];
        let gens: Vec<String> = [
            (Generation::Milan, self.min_tcb.milan),
            (Generation::Genoa, self.min_tcb.genoa),
            (Generation::Turin, self.min_tcb.turin),
        ]
        .into_iter()
        .filter_map(|(g, t)| {
            t.map(|t| {
                let fmc = t.fmc.map(|v| format!("fmc {v} ")).unwrap_or_default();
                format!(
                    "{g}(min {fmc}bl {} tee {} snp {} ucode {})",
                    t.bootloader, t.tee, t.snp, t.microcode
                )
            })
        })
        .collect();
        parts.push(gens.join(" "));
        let yes_no = |b: bool| if b { "allowed" } else { "refused" };
        parts.push(format!("debug {}", yes_no(self.allow_debug)));
        parts.push(format!(
            "migration agent {}",
            yes_no(self.allow_migration_agent)
        ));
        parts.push(format!("smt {}", yes_no(self.allow_smt)));
        parts.push(format!("vlek {}", yes_no(self.accept_vlek)));
        parts.push(format!("vmpl <= {}", self.max_vmpl));
        if self.min_guest_svn > 0 {
            parts.push(format!("guest svn >= {}", self.min_guest_svn));
        }
        if let Some(fw) = self.min_firmware {
            parts.push(format!("firmware >= {fw}"));
        }
        if let Some(v) = self.vtpm.summary() {
            parts.push(v);
        }
        for (name, n) in [
            ("id keys", self.id_key_digests.len()),
            ("author keys", self.author_key_digests.len()),
            ("family ids", self.family_ids.len()),
            ("image ids", self.image_ids.len()),
            ("host data", self.host_data.len()),
            ("chips", self.chip_ids.len()),
            ("blocked chips", self.blocked_chip_ids.len()),
        ] {
            if n > 0 {
                parts.push(format!("{n} {name}"));
            }
        }
        parts.join("; ")
    }

    /// Evaluates every check against the claims of a verified bare SNP
    /// report and returns every failure (none means allowed). The order of
    /// failures is fixed: the order of [`ALL_REASON_CODES`], TCB components
    /// in the order fmc, bootloader, tee, snp, microcode.
    pub fn evaluate(&self, claims: &ReportClaims) -> Verdict {
        let mut out = Vec::new();
        self.check_measurement(claims, &mut out);
        self.check_guest_and_tcb(claims, &mut out);
        self.check_image_identity(claims, &mut out);
        self.check_chip_signer_firmware(claims, &mut out);
        Verdict { failures: out }
    }

    /// Evaluates the checks that apply to an Azure confidential VM: the
    /// `[vtpm]` section (accepted at all, the paravisor's measurement, the
    /// PCR sets against the verified `pcrs`), then the platform and guest
    /// policy checks of a bare report; not the image identity checks
    /// (`measurements`, ID keys, family and image ids, host data, guest
    /// SVN), which on Azure describe the paravisor. Every failure, in that
    /// order.
    pub fn evaluate_vtpm(&self, claims: &ReportClaims, pcrs: &BTreeMap<u8, [u8; 32]>) -> Verdict {
        let mut out = Vec::new();
        self.vtpm.evaluate(claims, pcrs, &mut out);
        self.check_guest_and_tcb(claims, &mut out);
        self.check_chip_signer_firmware(claims, &mut out);
        Verdict { failures: out }
    }

    /// Evaluates bound evidence of either kind: [`Policy::evaluate`] for a
    /// bare report, [`Policy::evaluate_vtpm`] for Azure vTPM evidence.
    pub fn evaluate_evidence(&self, evidence: &BoundEvidence) -> Verdict {
        match evidence {
            BoundEvidence::SnpReport(b) => self.evaluate(b.claims()),
            BoundEvidence::AzureVtpm(b) => self.evaluate_vtpm(b.claims(), b.pcrs()),
        }
    }

    /// The launch measurement (bare reports).
    fn check_measurement(&self, claims: &ReportClaims, out: &mut Vec<PolicyFailure>) {
        let mut fail = failer(out);
        if !self
            .measurements
            .iter()
            .any(|m| m[..] == claims.measurement[..])
        {
            fail(
                POLICY_MEASUREMENT_NOT_ALLOWED,
                "measurements",
                if self.measurements.is_empty() {
                    "none: this policy admits Azure vTPM guests only".into()
                } else {
                    one_of(self.measurements.iter().map(|m| &m[..]))
                },
                hex::encode(&claims.measurement),
            );
        }
    }

    /// Guest policy bits, host SMT, VMPL and the TCB minimum of the generation.
    fn check_guest_and_tcb(&self, claims: &ReportClaims, out: &mut Vec<PolicyFailure>) {
        let mut fail = failer(out);
        if claims.policy.debug && !self.allow_debug {
            fail(
                POLICY_DEBUG_ALLOWED,
                "allow_debug",
                "guest policy DEBUG bit 0 (allow_debug = false)".into(),
                "DEBUG bit 1: the hypervisor may debug the guest".into(),
            );
        }
        if claims.policy.migrate_ma && !self.allow_migration_agent {
            fail(
                POLICY_MIGRATION_AGENT_ALLOWED,
                "allow_migration_agent",
                "guest policy MIGRATE_MA bit 0 (allow_migration_agent = false)".into(),
                "MIGRATE_MA bit 1: a migration agent may be bound to the guest".into(),
            );
        }
        if claims.smt_enabled && !self.allow_smt {
            fail(
                POLICY_SMT_NOT_ALLOWED,
                "allow_smt",
                "host SMT disabled (allow_smt = false)".into(),
                "platform_info SMT_EN = 1".into(),
            );
        }
        if claims.vmpl > u32::from(self.max_vmpl) {
            fail(
                POLICY_VMPL_TOO_HIGH,
                "max_vmpl",
                format!("<= {}", self.max_vmpl),
                claims.vmpl.to_string(),
            );
        }
        match self.min_tcb.get(claims.generation) {
            None => fail(
                POLICY_GENERATION_NOT_ALLOWED,
                "min_tcb",
                format!("one of [{}]", self.min_tcb.allowed().join(", ")),
                claims.generation.to_string(),
            ),
            Some(min) => {
                let got = &claims.reported_tcb;
                if let Some(min_fmc) = min.fmc {
                    match got.fmc {
                        Some(v) if v >= min_fmc => {}
                        other => fail(
                            POLICY_TCB_BELOW_MINIMUM,
                            "min_tcb.fmc",
                            format!(">= {min_fmc}"),
                            other.map_or_else(|| "absent".into(), |v| v.to_string()),
                        ),
                    }
                }
                for (check, want, have) in [
                    ("min_tcb.bootloader", min.bootloader, got.bootloader),
                    ("min_tcb.tee", min.tee, got.tee),
                    ("min_tcb.snp", min.snp, got.snp),
                    ("min_tcb.microcode", min.microcode, got.microcode),
                ] {
                    if have < want {
                        fail(
                            POLICY_TCB_BELOW_MINIMUM,
                            check,
                            format!(">= {want}"),
                            have.to_string(),
                        );
                    }
                }
            }
        }
    }

    /// The ID block's keys and ids, host data and guest SVN (bare reports).
    fn check_image_identity(&self, claims: &ReportClaims, out: &mut Vec<PolicyFailure>) {
        let mut fail = failer(out);
        let lists: [AllowList<'_>; 5] = [
            (
                POLICY_ID_KEY_NOT_ALLOWED,
                "id_key_digests",
                self.id_key_digests.iter().map(|x| &x[..]).collect(),
                &claims.id_key_digest,
            ),
            (
                POLICY_AUTHOR_KEY_NOT_ALLOWED,
                "author_key_digests",
                self.author_key_digests.iter().map(|x| &x[..]).collect(),
                &claims.author_key_digest,
            ),
            (
                POLICY_FAMILY_ID_NOT_ALLOWED,
                "family_ids",
                self.family_ids.iter().map(|x| &x[..]).collect(),
                &claims.family_id,
            ),
            (
                POLICY_IMAGE_ID_NOT_ALLOWED,
                "image_ids",
                self.image_ids.iter().map(|x| &x[..]).collect(),
                &claims.image_id,
            ),
            (
                POLICY_HOST_DATA_NOT_ALLOWED,
                "host_data",
                self.host_data.iter().map(|x| &x[..]).collect(),
                &claims.host_data,
            ),
        ];
        for (code, check, allowed, actual) in lists {
            if !allowed.is_empty() && !allowed.contains(&actual) {
                fail(
                    code,
                    check,
                    one_of(allowed.iter().copied()),
                    hex::encode(actual),
                );
            }
        }
        if claims.guest_svn < self.min_guest_svn {
            fail(
                POLICY_GUEST_SVN_BELOW_MINIMUM,
                "min_guest_svn",
                format!(">= {}", self.min_guest_svn),
                claims.guest_svn.to_string(),
            );
        }
    }

    /// The chip allow- and denylists, the signing key kind and the firmware.
    fn check_chip_signer_firmware(&self, claims: &ReportClaims, out: &mut Vec<PolicyFailure>) {
        let mut fail = failer(out);
        let significant: &[u8] = match claims.generation {
            Generation::Turin => &claims.chip_id[..claims.chip_id.len().min(8)],
            _ => &claims.chip_id,
        };
        let masked = significant.iter().all(|b| *b == 0);
        if !self.chip_ids.is_empty()
            && (masked
                || !self
                    .chip_ids
                    .iter()
                    .any(|c| c.matches(claims.generation, &claims.chip_id)))
        {
            fail(
                POLICY_CHIP_NOT_ALLOWED,
                "chip_ids",
                one_of(self.chip_ids.iter().map(|c| c.as_bytes())),
                if masked {
                    "masked chip id (all zero)".into()
                } else {
                    hex::encode(significant)
                },
            );
        }
        if self
            .blocked_chip_ids
            .iter()
            .any(|c| c.matches(claims.generation, &claims.chip_id))
        {
            fail(
                POLICY_CHIP_BLOCKED,
                "blocked_chip_ids",
                "a chip not in blocked_chip_ids".into(),
                hex::encode(significant),
            );
        }
        if claims.signer == SignerKind::Vlek && !self.accept_vlek {
            fail(
                POLICY_VLEK_NOT_ACCEPTED,
                "accept_vlek",
                "a VCEK-signed report (accept_vlek = false)".into(),
                "VLEK-signed report".into(),
            );
        }
        if let Some(min) = self.min_firmware {
            let fw = claims.current_firmware;
            if (fw.major, fw.minor) < (min.major, min.minor) {
                fail(
                    POLICY_FIRMWARE_BELOW_MINIMUM,
                    "min_firmware",
                    format!(">= {min}"),
                    fw.to_string(),
                );
            }
        }
    }
}
