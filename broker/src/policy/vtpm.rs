//! The `[vtpm]` section: what a policy admits of Azure confidential VMs,
//! whose evidence is the paravisor's SNP report and a quote of the vTPM's
//! PCRs.
//!
//! ```toml
//! [vtpm]
//! accept = true                  # default false: Azure vTPM evidence is refused
//! paravisor_measurements = ["<96 hex chars>"]   # the SNP launch measurement = the paravisor
//!
//! [[vtpm.pcr_sets]]              # one or more; a guest must match one set entirely
//! name = "debian-12-2025-06"     # optional, shown in refusals
//! pcrs = { 0 = "<64 hex>", 4 = "<64 hex>", 7 = "<64 hex>" }   # SHA-256 bank, PCRs 0..=23
//! ```
//!
//! On Azure the SNP launch measurement covers the paravisor (Microsoft's
//! HCL), not the guest's image: the image is identified by the PCRs.
//! Several sets let an image update roll out (old and new image both
//! admitted until the old is gone). Of the policy's other checks, those
//! about the platform and the guest policy bits apply as to a bare SNP
//! guest (debug, migration agent, SMT, VMPL, `min_tcb`, chips, VLEK,
//! firmware); those about the launched image (`measurements`, ID and
//! author keys, family and image ids, host data, guest SVN) describe a bare
//! guest's image and are not applied to vTPM evidence.

use std::collections::BTreeMap;

use super::{one_of, Measurement, PolicyFailure};
use crate::verify::ReportClaims;

/// Azure vTPM evidence while `vtpm.accept` is false (the default).
pub const POLICY_EVIDENCE_KIND_NOT_ACCEPTED: &str = "POLICY_EVIDENCE_KIND_NOT_ACCEPTED";
/// The paravisor's launch measurement is not in `vtpm.paravisor_measurements`.
pub const POLICY_PARAVISOR_NOT_ALLOWED: &str = "POLICY_PARAVISOR_NOT_ALLOWED";
/// The verified PCR values match none of `vtpm.pcr_sets`.
pub const POLICY_PCRS_NOT_ALLOWED: &str = "POLICY_PCRS_NOT_ALLOWED";

/// A PCR of a set whose verified value differs: index, expected, actual
/// (`None`: not quoted).
type PcrDiff<'a> = (u8, &'a [u8; 32], Option<&'a [u8; 32]>);

/// Highest PCR index a set may name (the 24 PCRs of a PC-client TPM, as
/// Azure's vTPM and the guest quote).
pub const MAX_PCR_INDEX: u8 = 23;

/// The `[vtpm]` section.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VtpmPolicy {
    /// Admit Azure vTPM evidence at all.
    pub accept: bool,
    /// Allowed paravisor launch measurements (sorted, unique; at least one
    /// when `accept`).
    pub paravisor_measurements: Vec<Measurement>,
    /// Allowed PCR sets (at least one when `accept`); a guest must match
    /// one of them in every PCR it names.
    pub pcr_sets: Vec<PcrSet>,
}

/// One allowed set of PCR values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PcrSet {
    /// A label for refusals and listings.
    pub name: Option<String>,
    /// SHA-256 PCR values by index (0..=23), at least one.
    pub pcrs: BTreeMap<u8, [u8; 32]>,
}

impl PcrSet {
    /// The PCRs of this set whose verified value differs (or is absent):
    /// (index, expected, actual).
    fn mismatches<'a>(&'a self, pcrs: &'a BTreeMap<u8, [u8; 32]>) -> Vec<PcrDiff<'a>> {
        self.pcrs
            .iter()
            .filter_map(|(i, want)| match pcrs.get(i) {
                Some(have) if have == want => None,
                have => Some((*i, want, have)),
            })
            .collect()
    }

    fn label(&self, position: usize) -> String {
        match &self.name {
            Some(n) => format!("{n:?}"),
            None => format!("#{}", position + 1),
        }
    }
}

impl VtpmPolicy {
    /// The `[vtpm]` checks, in order: accepted at all, the paravisor's
    /// measurement, the PCR sets. Each failure is pushed to `out`. The
    /// measurement and PCR checks run only when configured (they are
    /// required when `accept` is true).
    pub(super) fn evaluate(
        &self,
        claims: &ReportClaims,
        pcrs: &BTreeMap<u8, [u8; 32]>,
        out: &mut Vec<PolicyFailure>,
    ) {
        if !self.accept {
            out.push(PolicyFailure {
                code: POLICY_EVIDENCE_KIND_NOT_ACCEPTED,
                check: "vtpm.accept",
                expected: "bare SEV-SNP evidence, or vtpm.accept = true to admit Azure vTPM \
                           guests"
                    .into(),
                actual: "Azure vTPM evidence".into(),
            });
        }
        if !self.paravisor_measurements.is_empty()
            && !self
                .paravisor_measurements
                .iter()
                .any(|m| m[..] == claims.measurement[..])
        {
            out.push(PolicyFailure {
                code: POLICY_PARAVISOR_NOT_ALLOWED,
                check: "vtpm.paravisor_measurements",
                expected: one_of(self.paravisor_measurements.iter().map(|m| &m[..])),
                actual: hex::encode(&claims.measurement),
            });
        }
        if !self.pcr_sets.is_empty() && !self.pcr_sets.iter().any(|s| s.mismatches(pcrs).is_empty())
        {
            out.push(self.pcr_failure(pcrs));
        }
    }

    /// The refusal of PCR values no set matches, explained against the
    /// closest set (fewest differing PCRs; the first on a tie): its
    /// differing PCRs, expected and actual.
    fn pcr_failure(&self, pcrs: &BTreeMap<u8, [u8; 32]>) -> PolicyFailure {
        let (position, set, diff) = self
            .pcr_sets
            .iter()
            .enumerate()
            .map(|(i, s)| (i, s, s.mismatches(pcrs)))
            .min_by_key(|(i, _, d)| (d.len(), *i))
            .expect("called with at least one set");
        let list =
            |f: &dyn Fn(&PcrDiff<'_>) -> String| diff.iter().map(f).collect::<Vec<_>>().join(", ");
        let others = self.pcr_sets.len() - 1;
        PolicyFailure {
            code: POLICY_PCRS_NOT_ALLOWED,
            check: "vtpm.pcr_sets",
            expected: format!(
                "PCR set {}{}: {}",
                set.label(position),
                if others > 0 {
                    format!(" (the closest; {others} other set(s) differ more)")
                } else {
                    String::new()
                },
                list(&|(i, want, _)| format!("pcr{i} = {}", hex::encode(want)))
            ),
            actual: list(&|(i, _, have)| match have {
                Some(v) => format!("pcr{i} = {}", hex::encode(v)),
                None => format!("pcr{i} not quoted"),
            }),
        }
    }

    /// A one-line summary for listings, or `None` when vTPM evidence is
    /// refused.
    pub(super) fn summary(&self) -> Option<String> {
        self.accept.then(|| {
            format!(
                "azure vtpm: {} paravisor measurement(s), {} PCR set(s)",
                self.paravisor_measurements.len(),
                self.pcr_sets.len()
            )
        })
    }
}
