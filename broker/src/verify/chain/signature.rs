//! Certificate signatures as AMD makes them: RSA-PSS SHA-384 (MGF1-SHA-384,
//! 48-byte salt) by ARKs and ASKs, ECDSA P-384 SHA-384 by simulated roots;
//! and the CA checks of an issuer.

use aws_lc_rs::signature::{self, UnparsedPublicKey};
use x509_parser::prelude::*;
use x509_parser::signature_algorithm::SignatureAlgorithm;

use crate::verify::certs::parse_cert;
use crate::verify::error::{malformed, CertRole, ChainRejected, EvidenceRejected};

const OID_SHA384: &str = "2.16.840.1.101.3.4.2.2";
const OID_MGF1: &str = "1.2.840.113549.1.1.8";
const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_SECP384R1: &str = "1.3.132.0.34";
const OID_RSA_ENCRYPTION: &str = "1.2.840.113549.1.1.1";
const OID_ECDSA_SHA384: &str = "1.2.840.10045.4.3.3";

/// Checks that the certificate `subject_der` is signed by the key of
/// `issuer_der` (RSA-PSS SHA-384 with MGF1-SHA-384 and a 48-byte salt, or
/// ECDSA P-384 SHA-384) and that the names chain.
pub fn verify_signed_by(
    subject_der: &[u8],
    subject: CertRole,
    issuer_der: &[u8],
    issuer: CertRole,
) -> Result<(), EvidenceRejected> {
    let s = parse_cert(subject_der, subject)?;
    let i = parse_cert(issuer_der, issuer)?;
    let fail = |detail: String| -> EvidenceRejected {
        ChainRejected::Signature {
            subject,
            issuer,
            detail,
        }
        .into()
    };
    if s.issuer().as_raw() != i.subject().as_raw() {
        return Err(fail(format!(
            "its issuer is \"{}\" but the {issuer} is \"{}\"",
            s.issuer(),
            i.subject()
        )));
    }
    if s.signature_algorithm != s.tbs_certificate.signature {
        return Err(malformed(
            subject,
            "outer and inner signature algorithms differ",
        ));
    }
    verify_raw(
        s.tbs_certificate.as_ref(),
        &s.signature_algorithm,
        &s.signature_value.data,
        i.public_key(),
    )
    .map_err(fail)
}

/// Verifies `sig` over `msg` with `spki` under the algorithm `alg`.
pub(super) fn verify_raw(
    msg: &[u8],
    alg: &AlgorithmIdentifier<'_>,
    sig: &[u8],
    spki: &SubjectPublicKeyInfo<'_>,
) -> Result<(), String> {
    let key_alg = spki.algorithm.algorithm.to_id_string();
    let key = &spki.subject_public_key.data;
    match SignatureAlgorithm::try_from(alg) {
        Ok(SignatureAlgorithm::RSASSA_PSS(p)) => {
            if key_alg != OID_RSA_ENCRYPTION {
                return Err(format!("RSA-PSS signature but the issuer key is {key_alg}"));
            }
            let mgf = p
                .mask_gen_algorithm()
                .map_err(|e| format!("bad PSS parameters: {e}"))?;
            if p.hash_algorithm_oid().to_id_string() != OID_SHA384
                || mgf.mgf.to_id_string() != OID_MGF1
                || mgf.hash.to_id_string() != OID_SHA384
                || p.salt_length() != 48
                || p.trailer_field() != 1
            {
                return Err("RSA-PSS parameters are not SHA-384/MGF1-SHA-384/salt 48".into());
            }
            UnparsedPublicKey::new(&signature::RSA_PSS_2048_8192_SHA384, key)
                .verify(msg, sig)
                .map_err(|_| "RSA-PSS SHA-384 signature does not verify".to_string())
        }
        Ok(SignatureAlgorithm::ECDSA) if alg.algorithm.to_id_string() == OID_ECDSA_SHA384 => {
            if !is_p384(spki) {
                return Err("ECDSA-SHA384 signature but the issuer key is not P-384".into());
            }
            UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_ASN1, key)
                .verify(msg, sig)
                .map_err(|_| "ECDSA P-384 SHA-384 signature does not verify".to_string())
        }
        _ => Err(format!(
            "unsupported signature algorithm {} (expected RSA-PSS SHA-384 or ECDSA P-384 SHA-384)",
            alg.algorithm.to_id_string()
        )),
    }
}

/// Whether a SubjectPublicKeyInfo holds an ECDSA P-384 key.
pub(super) fn is_p384(spki: &SubjectPublicKeyInfo<'_>) -> bool {
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .map(|o| o.to_id_string());
    spki.algorithm.algorithm.to_id_string() == OID_EC_PUBLIC_KEY
        && curve.as_deref() == Some(OID_SECP384R1)
}

/// An issuer must be a CA and allowed to sign certificates, where it says.
pub(super) fn check_ca(cert: &X509Certificate<'_>, role: CertRole) -> Result<(), EvidenceRejected> {
    let usage = |detail: &str| -> EvidenceRejected {
        ChainRejected::KeyUsage {
            role,
            detail: detail.into(),
        }
        .into()
    };
    match cert.basic_constraints() {
        Ok(Some(bc)) if !bc.value.ca => return Err(usage("basicConstraints says it is not a CA")),
        Ok(_) => {}
        Err(e) => return Err(malformed(role, format!("basicConstraints: {e}"))),
    }
    match cert.key_usage() {
        Ok(Some(ku)) if !ku.value.key_cert_sign() => Err(usage("keyUsage lacks keyCertSign")),
        Ok(_) => Ok(()),
        Err(e) => Err(malformed(role, format!("keyUsage: {e}"))),
    }
}
