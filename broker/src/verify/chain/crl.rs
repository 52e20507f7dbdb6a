//! Certificate revocation lists: parsing, their signatures, the check made
//! before one is imported or fetched, and applying the held ones to a
//! chain.

use ::time::OffsetDateTime;
use x509_parser::prelude::*;

use super::signature::verify_raw;
use crate::verify::certs::parse_cert;
use crate::verify::error::{malformed, CertRole, ChainRejected, EvidenceRejected};

/// Parses one DER CRL; trailing bytes are refused.
pub fn parse_crl(der: &[u8]) -> Result<CertificateRevocationList<'_>, EvidenceRejected> {
    match CertificateRevocationList::from_der(der) {
        Ok(([], crl)) => Ok(crl),
        Ok(_) => Err(malformed(CertRole::Crl, "trailing bytes after the CRL")),
        Err(e) => Err(malformed(
            CertRole::Crl,
            format!("not a DER X.509 CRL: {e}"),
        )),
    }
}

/// Verifies a CRL's signature with `issuer`'s key (the names must chain).
pub(super) fn verify_crl_signature(
    crl: &CertificateRevocationList<'_>,
    issuer: &X509Certificate<'_>,
) -> Result<(), EvidenceRejected> {
    if crl.issuer().as_raw() != issuer.subject().as_raw() {
        return Err(ChainRejected::CrlInvalid {
            detail: format!(
                "its issuer is \"{}\" but the certificate is \"{}\"",
                crl.issuer(),
                issuer.subject()
            ),
        }
        .into());
    }
    if crl.signature_algorithm != crl.tbs_cert_list.signature {
        return Err(ChainRejected::CrlInvalid {
            detail: "outer and inner signature algorithms differ".into(),
        }
        .into());
    }
    verify_raw(
        crl.tbs_cert_list.as_ref(),
        &crl.signature_algorithm,
        &crl.signature_value.data,
        issuer.public_key(),
    )
    .map_err(|detail| ChainRejected::CrlInvalid { detail }.into())
}

/// What a CRL that verified under its issuer says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrlInfo {
    /// thisUpdate.
    pub this_update: OffsetDateTime,
    /// nextUpdate, when the CRL names one.
    pub next_update: Option<OffsetDateTime>,
    /// Number of revoked serials.
    pub revoked: usize,
}

/// Checks a CRL for import or after a fetch: it must parse, verify under
/// `issuer_der` (the ARK or an ASK/ASVK), be issued no later than `now` and
/// not be past its nextUpdate.
pub fn check_crl_for_import(
    crl_der: &[u8],
    issuer_der: &[u8],
    issuer_role: CertRole,
    now: OffsetDateTime,
) -> Result<CrlInfo, EvidenceRejected> {
    let crl = parse_crl(crl_der)?;
    let issuer = parse_cert(issuer_der, issuer_role)?;
    verify_crl_signature(&crl, &issuer)?;
    let this_update = crl.last_update().to_datetime();
    let next_update = crl.next_update().map(|t| t.to_datetime());
    let fmt = |t: OffsetDateTime| {
        t.format(&::time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| t.to_string())
    };
    if this_update > now {
        return Err(ChainRejected::CrlInvalid {
            detail: format!(
                "thisUpdate {} is after the verification time {}; check the clock",
                fmt(this_update),
                fmt(now)
            ),
        }
        .into());
    }
    if let Some(next) = next_update.filter(|n| *n < now) {
        return Err(ChainRejected::CrlInvalid {
            detail: format!(
                "it is stale: nextUpdate {} is before the verification time {}",
                fmt(next),
                fmt(now)
            ),
        }
        .into());
    }
    Ok(CrlInfo {
        this_update,
        next_update,
        revoked: crl.iter_revoked_certificates().count(),
    })
}

/// Applies every held CRL that speaks for this chain: one issued by the ARK
/// must verify under it and must not list the intermediate (ASK/ASVK); one
/// issued by the intermediate must verify under it and must not list the
/// VEK. CRLs issued by anything else do not apply and are ignored. A CRL
/// past its nextUpdate is still applied (a revocation is never forgotten)
/// and logged; `broker certs import` and the KDS source refuse stale CRLs.
/// (AMD's VCEKs all have serial 0, so an intermediate's CRL naming 0 would
/// revoke every VCEK it issued: X.509 semantics, applied as written.)
pub(super) fn check_crls(
    crls: &[Vec<u8>],
    ark: &X509Certificate<'_>,
    inter: &X509Certificate<'_>,
    inter_role: CertRole,
    vek: &X509Certificate<'_>,
    vek_role: CertRole,
    now: OffsetDateTime,
) -> Result<(), EvidenceRejected> {
    for der in crls {
        let crl = parse_crl(der)?;
        let (issuer, subject, subject_role) = if crl.issuer().as_raw() == ark.subject().as_raw() {
            (ark, inter, inter_role)
        } else if crl.issuer().as_raw() == inter.subject().as_raw() {
            (inter, vek, vek_role)
        } else {
            continue;
        };
        verify_crl_signature(&crl, issuer)?;
        let serial = subject.raw_serial();
        if crl
            .iter_revoked_certificates()
            .any(|r| r.raw_serial() == serial)
        {
            return Err(ChainRejected::Revoked {
                role: subject_role,
                serial: hex::encode(serial),
            }
            .into());
        }
        if let Some(next) = crl.next_update().map(|t| t.to_datetime()) {
            if next < now {
                tracing::warn!(
                    issuer = %crl.issuer(),
                    next_update = %next,
                    "a held CRL is past its nextUpdate; it is still applied: import or fetch a current one"
                );
            }
        }
    }
    Ok(())
}
