//! Evidence of every kind a guest may send, and the proofs that it was
//! verified and bound to a request.
//!
//! - [`Evidence::SnpReport`]: a bare SEV-SNP report whose REPORT_DATA is
//!   the transcript hash. Verified by [`Verifier::verify`], bound by
//!   [`VerifiedReport::bind`].
//! - [`Evidence::AzureVtpm`]: an Azure confidential VM's paravisor report
//!   (the HCL report, with the SNP report inside) and a TPM 2.0 quote of
//!   its vTPM. [`Verifier::verify_evidence`] frames the HCL report and
//!   verifies the SNP report inside exactly as a bare one (chain, VEK
//!   binding, signature); [`VerifiedEvidence::bind`] then runs
//!   [`keybroker_vtpm::verify_quote`] with the verified REPORT_DATA: the
//!   variable data's hash, the attestation key, the quote's signature, type,
//!   extraData (= the transcript hash), PCR digest, and `user-data` (= the
//!   transcript hash too).
//!
//! Key release takes a [`BoundEvidence`], of either kind; only
//! [`VerifiedEvidence::bind`] makes one, so a key is never wrapped on
//! evidence whose binding to the request was not checked. The Azure proof,
//! [`BoundVtpmReport`], carries the verified SNP claims (the paravisor's)
//! and the PCR values the quote vouches for, which the policy's `[vtpm]`
//! section judges.

use std::collections::BTreeMap;
use std::path::Path;

use keybroker_vtpm::tpm::attest::QuoteAttest;
use keybroker_vtpm::tpm::signature::QuoteSignature;
use keybroker_vtpm::{Expected, HclReport, QuoteEvidence, VerifiedVtpmQuote, VtpmRejected};
use time::OffsetDateTime;

use super::{BoundReport, EvidenceRejected, ReportClaims, VerifiedReport, Verifier};

/// Largest HCL report accepted from a guest (Azure's NV index holds 2600
/// bytes).
pub const MAX_HCL_REPORT_LEN: usize = 8192;
/// Largest quote (`TPMS_ATTEST`) and `TPMT_SIGNATURE` accepted from a guest.
pub const MAX_QUOTE_PART_LEN: usize = 1024;
/// Most PCR values accepted with a quote.
pub const MAX_PCR_VALUES: usize = keybroker_vtpm::evidence_file::MAX_PCR_VALUES;

/// Which kind of evidence, for messages, audit entries and JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvidenceKind {
    /// A bare SEV-SNP report.
    SnpReport,
    /// An Azure confidential VM's HCL report and vTPM quote.
    AzureVtpm,
}

impl EvidenceKind {
    /// `snp-report` or `azure-vtpm`.
    pub fn as_str(self) -> &'static str {
        match self {
            EvidenceKind::SnpReport => "snp-report",
            EvidenceKind::AzureVtpm => "azure-vtpm",
        }
    }
}

impl std::fmt::Display for EvidenceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a guest sent as evidence, checked for size only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Evidence {
    /// A bare SEV-SNP report and its certificate table (possibly empty).
    SnpReport {
        /// The raw report.
        report: Vec<u8>,
        /// The extended report's certificate table.
        cert_table: Vec<u8>,
    },
    /// Azure vTPM evidence.
    AzureVtpm(AzureVtpmEvidence),
}

/// An Azure confidential VM's evidence, as read from its vTPM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AzureVtpmEvidence {
    /// NV index 0x01400001 (the HCL report), padding allowed.
    pub hcl_report: Vec<u8>,
    /// The quote's `TPMS_ATTEST`, as the TPM returned it.
    pub quote: Vec<u8>,
    /// The quote's `TPMT_SIGNATURE`, as the TPM returned it.
    pub signature: Vec<u8>,
    /// The quoted SHA-256 PCR values, in selection order.
    pub pcr_values: Vec<[u8; 32]>,
    /// Certificate table for the SNP report's signer (possibly empty).
    pub cert_table: Vec<u8>,
}

impl AzureVtpmEvidence {
    /// The evidence of a file in the layouts of
    /// `tests/fixtures/azure-snp-vtpm/` (its VCEK goes into a certificate
    /// table).
    pub fn from_file(file: &keybroker_vtpm::EvidenceFile) -> Self {
        AzureVtpmEvidence {
            hcl_report: file.hcl_report.clone(),
            quote: file.quote_message.clone(),
            signature: file.quote_signature.to_tpmt(),
            pcr_values: file.pcr_values.clone(),
            cert_table: super::build_cert_table(&[(super::GUID_VCEK, &file.vcek_der)]),
        }
    }
}

impl Evidence {
    /// Its kind.
    pub fn kind(&self) -> EvidenceKind {
        match self {
            Evidence::SnpReport { .. } => EvidenceKind::SnpReport,
            Evidence::AzureVtpm(_) => EvidenceKind::AzureVtpm,
        }
    }

    /// The raw SNP report, where it can be found without verifying
    /// anything (inside a well-framed HCL report for Azure).
    pub fn snp_report(&self) -> Option<Vec<u8>> {
        match self {
            Evidence::SnpReport { report, .. } => Some(report.clone()),
            Evidence::AzureVtpm(a) => HclReport::parse(&a.hcl_report)
                .ok()
                .map(|h| h.snp_report().to_vec()),
        }
    }
}

/// Evidence whose SNP report verified (chain, VEK binding, signature), not
/// yet bound to a request. Only [`Verifier::verify_evidence`] makes one.
#[derive(Debug, Clone)]
pub enum VerifiedEvidence {
    /// A bare SNP report.
    SnpReport(Box<VerifiedReport>),
    /// Azure: the SNP report inside the HCL report verified; the quote
    /// above it is checked by [`VerifiedEvidence::bind`].
    AzureVtpm(Box<VerifiedHcl>),
}

/// An HCL report whose SNP report verified, with the quote that came with
/// it (still unverified).
#[derive(Debug, Clone)]
pub struct VerifiedHcl {
    report: VerifiedReport,
    hcl: HclReport,
    quote: Vec<u8>,
    signature: Vec<u8>,
    pcr_values: Vec<[u8; 32]>,
}

impl VerifiedHcl {
    /// The verified SNP report (the paravisor's).
    pub fn report(&self) -> &VerifiedReport {
        &self.report
    }

    /// The HCL report (its variable data is worth nothing until the quote
    /// is checked against REPORT_DATA).
    pub fn hcl(&self) -> &HclReport {
        &self.hcl
    }

    /// Checks everything above the SNP report against its verified
    /// REPORT_DATA, with `extra_data` expected as the quote's extraData and,
    /// if given, `user_data` as the HCL user data.
    fn check_quote(
        &self,
        extra_data: &[u8],
        user_data: Option<&[u8]>,
    ) -> Result<VerifiedVtpmQuote, VtpmRejected> {
        let signature = QuoteSignature::parse_tpmt(&self.signature).map_err(|e| {
            VtpmRejected::SignatureMalformed {
                detail: e.to_string(),
            }
        })?;
        keybroker_vtpm::verify_quote(
            &self.hcl,
            QuoteEvidence {
                message: &self.quote,
                signature: &signature,
                pcr_values: &self.pcr_values,
            },
            Expected {
                report_data: &self.report.decoded().report_data,
                extra_data,
                user_data,
            },
        )
    }

    /// For offline inspection (`broker report verify`, `broker explain`):
    /// every check above the SNP report, with `extra_data` as the expected
    /// qualifying data (`None`: whatever the quote carries, so its binding
    /// goes unchecked) and `user_data` as the expected HCL user data (`None`:
    /// not checked). The result is no [`BoundEvidence`]: nothing can be
    /// released on it.
    pub fn inspect_quote(
        &self,
        extra_data: Option<&[u8]>,
        user_data: Option<&[u8]>,
    ) -> Result<VerifiedVtpmQuote, VtpmRejected> {
        match extra_data {
            Some(x) => self.check_quote(x, user_data),
            None => {
                // The quote's own extraData; if it does not parse,
                // check_quote reports why, in its order.
                let own = QuoteAttest::parse(&self.quote)
                    .map(|a| a.extra_data)
                    .unwrap_or_default();
                self.check_quote(&own, user_data)
            }
        }
    }
}

impl VerifiedEvidence {
    /// The verified SNP report's claims (the paravisor's, on Azure).
    pub fn claims(&self) -> &ReportClaims {
        self.report().claims()
    }

    /// The verified SNP report.
    pub fn report(&self) -> &VerifiedReport {
        match self {
            VerifiedEvidence::SnpReport(r) => r,
            VerifiedEvidence::AzureVtpm(a) => &a.report,
        }
    }

    /// Its kind.
    pub fn kind(&self) -> EvidenceKind {
        match self {
            VerifiedEvidence::SnpReport(_) => EvidenceKind::SnpReport,
            VerifiedEvidence::AzureVtpm(_) => EvidenceKind::AzureVtpm,
        }
    }

    /// Binds the evidence to a request whose transcript hash is `expected`:
    /// REPORT_DATA for a bare report; for Azure, every check above the SNP
    /// report, with `expected` as the quote's extraData and as the HCL
    /// `user-data`. Returns the proof key release takes.
    pub fn bind(self, expected: &[u8; 64]) -> Result<BoundEvidence, EvidenceRejected> {
        match self {
            VerifiedEvidence::SnpReport(r) => {
                Ok(BoundEvidence::SnpReport(Box::new(r.bind(expected)?)))
            }
            VerifiedEvidence::AzureVtpm(a) => {
                let quote = a.check_quote(expected, Some(expected))?;
                Ok(BoundEvidence::AzureVtpm(Box::new(BoundVtpmReport {
                    hcl_version: a.hcl.version(),
                    report: a.report,
                    quote,
                    _proof: (),
                })))
            }
        }
    }
}

/// Evidence verified and bound to a request: what key release takes. Only
/// [`VerifiedEvidence::bind`] makes one.
#[derive(Debug, Clone)]
pub enum BoundEvidence {
    /// A bare SNP report whose REPORT_DATA is the transcript hash.
    SnpReport(Box<BoundReport>),
    /// Azure vTPM evidence whose quote and HCL user data carry the
    /// transcript hash.
    AzureVtpm(Box<BoundVtpmReport>),
}

impl BoundEvidence {
    /// The verified SNP report's claims (the paravisor's, on Azure).
    pub fn claims(&self) -> &ReportClaims {
        match self {
            BoundEvidence::SnpReport(b) => b.claims(),
            BoundEvidence::AzureVtpm(b) => b.claims(),
        }
    }

    /// Its kind.
    pub fn kind(&self) -> EvidenceKind {
        match self {
            BoundEvidence::SnpReport(_) => EvidenceKind::SnpReport,
            BoundEvidence::AzureVtpm(_) => EvidenceKind::AzureVtpm,
        }
    }

    /// True when the SNP report's chain ends in a configured simulated root.
    pub fn is_simulated(&self) -> bool {
        match self {
            BoundEvidence::SnpReport(b) => b.is_simulated(),
            BoundEvidence::AzureVtpm(b) => b.report.is_simulated(),
        }
    }
}

/// Azure vTPM evidence verified from AMD's root to the PCR values and
/// bound to a request. Only [`VerifiedEvidence::bind`] makes one.
#[derive(Debug, Clone)]
pub struct BoundVtpmReport {
    report: VerifiedReport,
    quote: VerifiedVtpmQuote,
    hcl_version: u32,
    _proof: (),
}

impl BoundVtpmReport {
    /// The SNP report's claims: the paravisor's measurement, the platform's
    /// TCB, policy bits and chip.
    pub fn claims(&self) -> &ReportClaims {
        self.report.claims()
    }

    /// The verified SHA-256 PCR values, by index: every PCR the quote
    /// selected, and only those.
    pub fn pcrs(&self) -> &BTreeMap<u8, [u8; 32]> {
        self.quote.pcrs()
    }

    /// The verified quote (attestation key, clock, VM configuration).
    pub fn quote(&self) -> &VerifiedVtpmQuote {
        &self.quote
    }

    /// The HCL header's version (1 or 2; unsigned, for information only).
    pub fn hcl_version(&self) -> u32 {
        self.hcl_version
    }

    /// The verified SNP report.
    pub fn report(&self) -> &VerifiedReport {
        &self.report
    }
}

impl Verifier {
    /// Verifies evidence of any kind up to its binding: a bare report as
    /// [`Verifier::verify`] does; for Azure, the HCL report's framing, then
    /// the SNP report inside it as a bare one (its REPORT_DATA binds the
    /// HCL variable data, checked by [`VerifiedEvidence::bind`]).
    pub fn verify_evidence(
        &self,
        evidence: &Evidence,
        certs_dir_override: Option<&Path>,
        now: OffsetDateTime,
    ) -> Result<VerifiedEvidence, EvidenceRejected> {
        match evidence {
            Evidence::SnpReport { report, cert_table } => Ok(VerifiedEvidence::SnpReport(
                Box::new(self.verify(report, cert_table, certs_dir_override, now)?),
            )),
            Evidence::AzureVtpm(a) => {
                let hcl = HclReport::parse(&a.hcl_report)?;
                let report =
                    self.verify(hcl.snp_report(), &a.cert_table, certs_dir_override, now)?;
                Ok(VerifiedEvidence::AzureVtpm(Box::new(VerifiedHcl {
                    report,
                    hcl,
                    quote: a.quote.clone(),
                    signature: a.signature.clone(),
                    pcr_values: a.pcr_values.clone(),
                })))
            }
        }
    }
}
