//! Offline inspection of an evidence file, shared by `broker report verify`
//! and `broker explain`: a raw SEV-SNP report, or an Azure vTPM evidence
//! file (JSON, the layouts of `tests/fixtures/azure-snp-vtpm/`), verified
//! as a release would verify it, with the binding value given on the
//! command line (if any) in place of the transcript hash.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;
use serde_json::{json, Value};
use time::OffsetDateTime;

use broker::policy::{Policy, Verdict};
use broker::verify::{
    AzureVtpmEvidence, Evidence, EvidenceKind, EvidenceRejected, ReportClaims, VerifiedEvidence,
    Verifier,
};
use keybroker_vtpm::evidence_file::Layout;
use keybroker_vtpm::tpm::attest::QuoteAttest;
use keybroker_vtpm::{EvidenceFile, HclReport, RuntimeClaims, VerifiedVtpmQuote};

/// An evidence file as read.
pub enum EvidenceInput {
    /// A raw SNP report.
    Snp(Vec<u8>),
    /// An Azure vTPM evidence file.
    Azure(Box<EvidenceFile>),
}

impl EvidenceInput {
    /// Reads `path`: JSON (an object) is an Azure vTPM evidence file,
    /// anything else a raw report.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read report {}", path.display()))?;
        if bytes.trim_ascii_start().first() == Some(&b'{') {
            let file = EvidenceFile::parse(&bytes)
                .with_context(|| format!("{} is JSON but no evidence file", path.display()))?;
            return Ok(EvidenceInput::Azure(Box::new(file)));
        }
        Ok(EvidenceInput::Snp(bytes))
    }

    /// The evidence to verify; `cert_table` replaces the file's VCEK.
    fn evidence(&self, cert_table: Option<Vec<u8>>) -> Evidence {
        match self {
            EvidenceInput::Snp(report) => Evidence::SnpReport {
                report: report.clone(),
                cert_table: cert_table.unwrap_or_default(),
            },
            EvidenceInput::Azure(file) => {
                let mut a = AzureVtpmEvidence::from_file(file);
                if let Some(t) = cert_table {
                    a.cert_table = t;
                }
                Evidence::AzureVtpm(a)
            }
        }
    }
}

/// Whether the binding value was checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binding {
    /// No `--report-data` given.
    NotChecked,
    /// Given and equal.
    Ok,
    /// Given and checked, and the evidence was refused before or at it.
    Refused,
}

/// What inspection found.
pub struct Inspection {
    /// The evidence kind.
    pub kind: EvidenceKind,
    /// The SNP report's claims: verified when `error` is `None`, else what
    /// an unverified report claims (if it decodes).
    pub claims: Option<ReportClaims>,
    /// The first failing check, if any.
    pub error: Option<EvidenceRejected>,
    /// The SNP report's chain ends in a configured simulated root.
    pub simulated: bool,
    /// Azure: the verified quote (absent when a check failed).
    pub quote: Option<VerifiedVtpmQuote>,
    /// Azure: the HCL report, if it frames.
    pub hcl: Option<HclReport>,
    /// Azure: the PCR values by index, verified when `quote` is present.
    pub pcrs: BTreeMap<u8, [u8; 32]>,
    /// The binding value.
    pub binding: Binding,
}

/// Verifies `input` as a release would, with `report_data` (if given) as
/// the binding value: REPORT_DATA of a bare report (64 bytes); the quote's
/// extraData of Azure evidence, and its HCL `user-data` too in layout 2.
pub fn inspect(
    verifier: &Verifier,
    input: &EvidenceInput,
    cert_table: Option<Vec<u8>>,
    certs_dir: Option<&Path>,
    now: OffsetDateTime,
    report_data: Option<&[u8]>,
) -> Inspection {
    let evidence = input.evidence(cert_table);
    let mut out = Inspection {
        kind: evidence.kind(),
        claims: None,
        error: None,
        simulated: false,
        quote: None,
        hcl: None,
        pcrs: BTreeMap::new(),
        binding: if report_data.is_some() {
            Binding::Refused
        } else {
            Binding::NotChecked
        },
    };
    if let (Evidence::AzureVtpm(a), EvidenceInput::Azure(file)) = (&evidence, input) {
        out.hcl = HclReport::parse(&a.hcl_report).ok();
        out.pcrs = unverified_pcrs(&file.quote_message, &file.pcr_values);
    }
    let verified = match verifier.verify_evidence(&evidence, certs_dir, now) {
        Ok(v) => v,
        Err(e) => {
            out.claims = evidence
                .snp_report()
                .and_then(|r| super::unverified_claims(&r));
            out.error = Some(e);
            return out;
        }
    };
    out.claims = Some(verified.claims().clone());
    out.simulated = verified.report().is_simulated();
    let result = match (&verified, input) {
        (VerifiedEvidence::SnpReport(r), _) => match report_data {
            None => Ok(()),
            Some(rd) => match <&[u8; 64]>::try_from(rd) {
                Ok(rd) => r.clone().bind(rd).map(drop),
                Err(_) => Err(EvidenceRejected::ReportDataMismatch {
                    expected: format!("{} (not the 64 bytes of REPORT_DATA)", hex::encode(rd)),
                    actual: hex::encode(&r.claims().report_data),
                }),
            },
        },
        (VerifiedEvidence::AzureVtpm(h), EvidenceInput::Azure(file)) => {
            let user_data = report_data.filter(|_| file.layout == Layout::V2);
            h.inspect_quote(report_data, user_data)
                .map(|q| {
                    out.pcrs = q.pcrs().clone();
                    out.quote = Some(q);
                })
                .map_err(EvidenceRejected::from)
        }
        (VerifiedEvidence::AzureVtpm(_), EvidenceInput::Snp(_)) => {
            unreachable!("a raw report is never Azure evidence")
        }
    };
    match result {
        Ok(()) if report_data.is_some() => out.binding = Binding::Ok,
        Ok(()) => {}
        Err(e) => out.error = Some(e),
    }
    out
}

/// The PCR values of a file paired with the indexes its (unverified) quote
/// selects, when that parses and the counts agree; else none.
fn unverified_pcrs(quote: &[u8], values: &[[u8; 32]]) -> BTreeMap<u8, [u8; 32]> {
    let Ok(attest) = QuoteAttest::parse(quote) else {
        return BTreeMap::new();
    };
    let indexes = attest.pcr_select.in_digest_order();
    if indexes.len() != values.len() {
        return BTreeMap::new();
    }
    indexes
        .into_iter()
        .map(|(_, i)| i)
        .zip(values.iter().copied())
        .collect()
}

impl Inspection {
    /// Every check passed (the binding too, when one was given).
    pub fn authentic(&self) -> bool {
        self.error.is_none()
    }

    /// The policy's verdict on these claims (and PCRs, for Azure), whether
    /// or not they verified; `None` when the report does not decode.
    pub fn verdict(&self, policy: &Policy) -> Option<Verdict> {
        let claims = self.claims.as_ref()?;
        Some(match self.kind {
            EvidenceKind::SnpReport => policy.evaluate(claims),
            EvidenceKind::AzureVtpm => policy.evaluate_vtpm(claims, &self.pcrs),
        })
    }

    /// The Azure layers as JSON (HCL report, quote, PCRs), `null` for a
    /// bare report.
    pub fn vtpm_json(&self) -> Value {
        if self.kind != EvidenceKind::AzureVtpm {
            return Value::Null;
        }
        let claims = self
            .hcl
            .as_ref()
            .and_then(|h| RuntimeClaims::parse(h.variable_data()).ok());
        json!({
            "pcrs_verified": self.quote.is_some(),
            "pcrs": self.pcrs.iter().map(|(i, v)| (i.to_string(), Value::from(hex::encode(v)))).collect::<serde_json::Map<_, _>>(),
            "hcl": self.hcl.as_ref().map(|h| json!({
                "version": h.version(),
                "variable_data_len": h.variable_data().len(),
                "attestation_key_bits": claims.as_ref().map(|c| c.attestation_key.bits()),
                "user_data": claims.as_ref().map(|c| hex::encode(&c.user_data)),
                "vm_configuration": claims.as_ref().and_then(|c| c.vm_configuration.clone()),
            })),
            "quote": self.quote.as_ref().map(|q| json!({
                "extra_data": hex::encode(q.extra_data()),
                "clock": q.clock_info().clock,
                "reset_count": q.clock_info().reset_count,
                "firmware_version": format!("{:#018x}", q.firmware_version()),
            })),
        })
    }

    /// The Azure layers as lines of `label: value`, for a person. The
    /// values are unverified unless the quote verified (said on the first
    /// line).
    pub fn vtpm_lines(&self) -> Vec<String> {
        if self.kind != EvidenceKind::AzureVtpm {
            return Vec::new();
        }
        let mut v = Vec::new();
        match &self.hcl {
            None => v.push("hcl:           does not frame".to_owned()),
            Some(h) => {
                v.push(format!(
                    "hcl:           version {} (unsigned), variable data {} bytes",
                    h.version(),
                    h.variable_data().len()
                ));
                if let Ok(c) = RuntimeClaims::parse(h.variable_data()) {
                    v.push(format!(
                        "hcl_ak:        RSA-{} (HCLAkPub)",
                        c.attestation_key.bits()
                    ));
                    v.push(format!("hcl_user_data: {}", hex::encode(&c.user_data)));
                    if let Some(vm) = &c.vm_configuration {
                        v.push(format!(
                            "vm_config:     secure-boot={} tpm-enabled={} console-enabled={}",
                            opt(vm.secure_boot),
                            opt(vm.tpm_enabled),
                            opt(vm.console_enabled)
                        ));
                    }
                }
            }
        }
        if let Some(q) = &self.quote {
            v.push(format!("quote_extra:   {}", hex::encode(q.extra_data())));
        }
        v.push(format!(
            "pcrs:          {} SHA-256 values{}",
            self.pcrs.len(),
            if self.quote.is_some() {
                ", verified by the quote"
            } else {
                " (UNVERIFIED: the quote did not verify)"
            }
        ));
        for (i, value) in &self.pcrs {
            v.push(format!("  pcr{i:02}:       {}", hex::encode(value)));
        }
        v
    }
}

fn opt(b: Option<bool>) -> String {
    b.map_or_else(|| "-".to_owned(), |b| b.to_string())
}
