//! The evidence of an `AttestRequest`, by kind (protocol 1.2): a bare
//! SEV-SNP report, or Azure vTPM evidence. Checks that the fields match
//! the kind and stay within the limits of docs/protocol.md; verifying them
//! is `verify`'s.

use keybroker_proto::pb;

use crate::error::{Error, InvalidRequest};
use crate::verify::{
    AzureVtpmEvidence, Evidence, MAX_HCL_REPORT_LEN, MAX_PCR_VALUES, MAX_QUOTE_PART_LEN,
};

fn invalid(field: &'static str, message: impl Into<String>) -> Error {
    InvalidRequest::Field {
        field,
        message: message.into(),
    }
    .into()
}

fn sized(field: &'static str, bytes: Vec<u8>, max: usize) -> Result<Vec<u8>, Error> {
    if bytes.is_empty() || bytes.len() > max {
        return Err(invalid(
            field,
            format!("{} bytes; 1 to {max} are accepted", bytes.len()),
        ));
    }
    Ok(bytes)
}

/// Takes the evidence out of `req` (its `report`, `cert_table`,
/// `evidence_kind` and `azure_vtpm`).
pub(super) fn evidence(req: &mut pb::AttestRequest) -> Result<Evidence, Error> {
    let report = std::mem::take(&mut req.report);
    let cert_table = std::mem::take(&mut req.cert_table);
    let azure = req.azure_vtpm.take();
    match pb::EvidenceKind::try_from(req.evidence_kind) {
        Ok(pb::EvidenceKind::SnpReport) => match azure {
            Some(_) => Err(invalid(
                "azure_vtpm",
                "set, but evidence_kind is EVIDENCE_KIND_SNP_REPORT; send \
                 evidence_kind = EVIDENCE_KIND_AZURE_VTPM with Azure evidence",
            )),
            None => Ok(Evidence::SnpReport { report, cert_table }),
        },
        Ok(pb::EvidenceKind::AzureVtpm) => {
            if !report.is_empty() {
                return Err(invalid(
                    "report",
                    "must be empty with Azure vTPM evidence: the SNP report travels inside \
                     azure_vtpm.hcl_report",
                ));
            }
            let a = azure.ok_or_else(|| {
                invalid(
                    "azure_vtpm",
                    "missing, but evidence_kind is EVIDENCE_KIND_AZURE_VTPM",
                )
            })?;
            if a.pcr_values.is_empty() || a.pcr_values.len() > MAX_PCR_VALUES {
                return Err(invalid(
                    "azure_vtpm.pcr_values",
                    format!(
                        "{} values; 1 to {MAX_PCR_VALUES} are accepted",
                        a.pcr_values.len()
                    ),
                ));
            }
            let pcr_values = a
                .pcr_values
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    <[u8; 32]>::try_from(v.as_slice()).map_err(|_| {
                        invalid(
                            "azure_vtpm.pcr_values",
                            format!("value {i} has {} bytes; a SHA-256 PCR has 32", v.len()),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Evidence::AzureVtpm(AzureVtpmEvidence {
                hcl_report: sized("azure_vtpm.hcl_report", a.hcl_report, MAX_HCL_REPORT_LEN)?,
                quote: sized("azure_vtpm.quote", a.quote, MAX_QUOTE_PART_LEN)?,
                signature: sized("azure_vtpm.signature", a.signature, MAX_QUOTE_PART_LEN)?,
                pcr_values,
                cert_table,
            }))
        }
        Err(_) => Err(invalid(
            "evidence_kind",
            format!(
                "unknown evidence kind {}; this broker accepts EVIDENCE_KIND_SNP_REPORT (0) and \
                 EVIDENCE_KIND_AZURE_VTPM (1)",
                req.evidence_kind
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn azure() -> pb::AzureVtpmEvidence {
        pb::AzureVtpmEvidence {
            hcl_report: vec![1; 2600],
            quote: vec![2; 145],
            signature: vec![3; 262],
            pcr_values: vec![vec![4; 32]; 24],
        }
    }

    fn req(
        kind: pb::EvidenceKind,
        report: usize,
        a: Option<pb::AzureVtpmEvidence>,
    ) -> pb::AttestRequest {
        pb::AttestRequest {
            report: vec![0; report],
            cert_table: vec![9],
            evidence_kind: kind as i32,
            azure_vtpm: a,
            ..Default::default()
        }
    }

    fn field_of(r: Result<Evidence, Error>) -> &'static str {
        match r {
            Err(Error::InvalidRequest(InvalidRequest::Field { field, .. })) => field,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn each_kind_takes_its_fields() {
        let e = evidence(&mut req(pb::EvidenceKind::SnpReport, 1184, None)).unwrap();
        assert_eq!(
            e,
            Evidence::SnpReport {
                report: vec![0; 1184],
                cert_table: vec![9]
            }
        );
        let e = evidence(&mut req(pb::EvidenceKind::AzureVtpm, 0, Some(azure()))).unwrap();
        let Evidence::AzureVtpm(a) = e else { panic!() };
        assert_eq!(
            (a.hcl_report.len(), a.pcr_values.len(), a.cert_table),
            (2600, 24, vec![9])
        );
        // A 1.1 guest sends no kind: a bare report.
        let mut old = req(pb::EvidenceKind::SnpReport, 1184, None);
        old.evidence_kind = 0;
        assert!(matches!(evidence(&mut old), Ok(Evidence::SnpReport { .. })));
    }

    #[test]
    fn fields_that_do_not_match_the_kind_or_the_limits_are_refused() {
        let with = |f: fn(&mut pb::AzureVtpmEvidence)| {
            let mut a = azure();
            f(&mut a);
            req(pb::EvidenceKind::AzureVtpm, 0, Some(a))
        };
        let mut unknown = req(pb::EvidenceKind::SnpReport, 1184, None);
        unknown.evidence_kind = 7;
        for (mut r, field) in [
            (
                req(pb::EvidenceKind::SnpReport, 1184, Some(azure())),
                "azure_vtpm",
            ),
            (
                req(pb::EvidenceKind::AzureVtpm, 1184, Some(azure())),
                "report",
            ),
            (req(pb::EvidenceKind::AzureVtpm, 0, None), "azure_vtpm"),
            (unknown, "evidence_kind"),
            (with(|a| a.hcl_report.clear()), "azure_vtpm.hcl_report"),
            (
                with(|a| a.hcl_report = vec![1; MAX_HCL_REPORT_LEN + 1]),
                "azure_vtpm.hcl_report",
            ),
            (
                with(|a| a.quote = vec![1; MAX_QUOTE_PART_LEN + 1]),
                "azure_vtpm.quote",
            ),
            (with(|a| a.signature.clear()), "azure_vtpm.signature"),
            (with(|a| a.pcr_values.clear()), "azure_vtpm.pcr_values"),
            (
                with(|a| a.pcr_values = vec![vec![0; 32]; 33]),
                "azure_vtpm.pcr_values",
            ),
            (with(|a| a.pcr_values[23].push(0)), "azure_vtpm.pcr_values"),
        ] {
            assert_eq!(field_of(evidence(&mut r)), field);
        }
    }
}
