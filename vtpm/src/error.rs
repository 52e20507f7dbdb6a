//! Why vTPM evidence was refused.
//!
//! [`VtpmRejected`] lists the causes in the order the checks run (see
//! [`crate::verify`]): the HCL report's framing, the binding of its
//! variable data to the SNP report's REPORT_DATA, the attestation key in
//! that variable data, the quote's signature, the quote's type, its
//! extraData, and its PCR digest. Every variant has a stable reason code
//! (`EVIDENCE_HCL_*`, `EVIDENCE_TPM_*`, listed in [`ALL_REASON_CODES`]) in
//! the style of the broker's SNP codes (`EVIDENCE_REPORT_*`), and a
//! `Display` text for operators that says what failed and what to do.
//!
//! Nothing here is secret: HCL reports, quotes and PCR values are public
//! evidence, so messages may quote them.

use crate::tpm::WireError;

/// vTPM evidence could not be fully verified; nothing may be released on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VtpmRejected {
    /// The HCL report's binary framing is wrong: size fields disagree, a
    /// fixed field has another value, it is truncated or padded with
    /// non-zero bytes.
    #[error(
        "HCL report malformed: {detail}; send the contents of TPM NV index 0x01400001 unmodified"
    )]
    HclMalformed {
        /// What is wrong.
        detail: String,
    },
    /// The HCL report wraps another kind of hardware report than SEV-SNP.
    #[error("HCL report holds a hardware report of type {report_type} ({name}), not SEV-SNP (2); this verifier handles Azure SEV-SNP confidential VMs only")]
    HclNotSnp {
        /// The IGVM report type found.
        report_type: u32,
        /// Its name, where known.
        name: &'static str,
    },
    /// The HCL binds its variable data with a hash other than SHA-256.
    #[error("HCL report binds its variable data with hash type {hash_type} ({name}); only SHA-256 (1) is supported")]
    HclHashType {
        /// The IGVM hash type found.
        hash_type: u32,
        /// Its name, where known.
        name: &'static str,
    },
    /// SHA-256 of the HCL variable data is not REPORT_DATA[0..32] of the
    /// SNP report: the variable data (and the attestation key in it) is not
    /// the one the hardware signed.
    #[error("SHA-256 of the HCL variable data is {actual} but the SNP report's REPORT_DATA[0..32] is {expected}; the HCL report was altered or belongs to another SNP report: read both from the same NV index 0x01400001")]
    HclVarDataMismatch {
        /// REPORT_DATA[0..32], hex.
        expected: String,
        /// SHA-256 of the variable data, hex.
        actual: String,
    },
    /// The variable data is not the JSON document the HCL writes.
    #[error("HCL variable data is not the expected JSON document: {detail}")]
    HclVarDataMalformed {
        /// What is wrong.
        detail: String,
    },
    /// The attestation key (`HCLAkPub`) in the variable data is missing or
    /// not a usable RSA public key.
    #[error("HCL attestation key (HCLAkPub) unusable: {detail}")]
    HclAkInvalid {
        /// What is wrong.
        detail: String,
    },
    /// The TPMT_SIGNATURE is malformed or uses a scheme this verifier does
    /// not accept.
    #[error("TPM quote signature malformed: {detail}; send the TPMT_SIGNATURE exactly as TPM2_Quote returned it")]
    SignatureMalformed {
        /// What is wrong.
        detail: String,
    },
    /// The quote's signature does not verify with the attestation key from
    /// the HCL report.
    #[error("TPM quote signature does not verify with the HCL attestation key ({scheme}); the quote was altered or signed by another key than the vTPM's AK at 0x81000003")]
    QuoteSignature {
        /// The signature scheme tried.
        scheme: String,
    },
    /// The signed message is not a TPM-generated quote (wrong magic or type).
    #[error("signed TPM message is not a TPM2_Quote: {detail}")]
    QuoteNotQuote {
        /// Magic and type found.
        detail: String,
    },
    /// The signed TPMS_ATTEST does not parse.
    #[error("TPM quote (TPMS_ATTEST) malformed: {0}")]
    QuoteMalformed(WireError),
    /// The quote's extraData (qualifying data) is not the expected binding
    /// value.
    #[error("TPM quote extraData is {actual} but {expected} was expected; the quote was made for another challenge: request a new one and quote again")]
    QuoteExtraData {
        /// The expected binding value, hex.
        expected: String,
        /// The quote's extraData, hex.
        actual: String,
    },
    /// The PCR values sent do not match the quote's PCR selection (a
    /// missing or extra value, a bank other than SHA-256, a repeated bank,
    /// or an empty selection).
    #[error("PCR values do not match the quote's PCR selection: {detail}")]
    PcrValues {
        /// What is wrong.
        detail: String,
    },
    /// The digest of the PCR values sent is not the quote's pcrDigest.
    #[error("digest of the PCR values sent is {actual} but the quote's pcrDigest is {expected}; a PCR changed between TPM2_Quote and TPM2_PCR_Read, or a value was altered: quote again")]
    PcrDigest {
        /// The quote's pcrDigest, hex.
        expected: String,
        /// SHA-256 over the PCR values sent, hex.
        actual: String,
    },
    /// The HCL `user-data` is not the expected binding value.
    #[error("HCL user-data is {actual} but {expected} was expected; the HCL report was made for another challenge: write the new binding value to NV index 0x01400002 and read the report again")]
    HclUserDataMismatch {
        /// The expected value, hex.
        expected: String,
        /// The value in the variable data, hex.
        actual: String,
    },
}

/// Every reason code [`VtpmRejected::reason_code`] can return, in the order
/// the checks run.
pub const ALL_REASON_CODES: &[&str] = &[
    "EVIDENCE_HCL_MALFORMED",
    "EVIDENCE_HCL_NOT_SNP",
    "EVIDENCE_HCL_HASH_TYPE",
    "EVIDENCE_HCL_VAR_DATA_MISMATCH",
    "EVIDENCE_HCL_VAR_DATA_MALFORMED",
    "EVIDENCE_HCL_AK_INVALID",
    "EVIDENCE_TPM_SIGNATURE_MALFORMED",
    "EVIDENCE_TPM_QUOTE_SIGNATURE",
    "EVIDENCE_TPM_QUOTE_NOT_QUOTE",
    "EVIDENCE_TPM_QUOTE_MALFORMED",
    "EVIDENCE_TPM_QUOTE_EXTRA_DATA",
    "EVIDENCE_TPM_PCR_VALUES",
    "EVIDENCE_TPM_PCR_DIGEST",
    "EVIDENCE_HCL_USER_DATA_MISMATCH",
];

impl VtpmRejected {
    /// The stable reason code (one of [`ALL_REASON_CODES`]).
    pub fn reason_code(&self) -> &'static str {
        match self {
            VtpmRejected::HclMalformed { .. } => "EVIDENCE_HCL_MALFORMED",
            VtpmRejected::HclNotSnp { .. } => "EVIDENCE_HCL_NOT_SNP",
            VtpmRejected::HclHashType { .. } => "EVIDENCE_HCL_HASH_TYPE",
            VtpmRejected::HclVarDataMismatch { .. } => "EVIDENCE_HCL_VAR_DATA_MISMATCH",
            VtpmRejected::HclVarDataMalformed { .. } => "EVIDENCE_HCL_VAR_DATA_MALFORMED",
            VtpmRejected::HclAkInvalid { .. } => "EVIDENCE_HCL_AK_INVALID",
            VtpmRejected::SignatureMalformed { .. } => "EVIDENCE_TPM_SIGNATURE_MALFORMED",
            VtpmRejected::QuoteSignature { .. } => "EVIDENCE_TPM_QUOTE_SIGNATURE",
            VtpmRejected::QuoteNotQuote { .. } => "EVIDENCE_TPM_QUOTE_NOT_QUOTE",
            VtpmRejected::QuoteMalformed(_) => "EVIDENCE_TPM_QUOTE_MALFORMED",
            VtpmRejected::QuoteExtraData { .. } => "EVIDENCE_TPM_QUOTE_EXTRA_DATA",
            VtpmRejected::PcrValues { .. } => "EVIDENCE_TPM_PCR_VALUES",
            VtpmRejected::PcrDigest { .. } => "EVIDENCE_TPM_PCR_DIGEST",
            VtpmRejected::HclUserDataMismatch { .. } => "EVIDENCE_HCL_USER_DATA_MISMATCH",
        }
    }

    pub(crate) fn hcl_malformed(detail: impl Into<String>) -> Self {
        VtpmRejected::HclMalformed {
            detail: detail.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_of_each() -> Vec<VtpmRejected> {
        let s = String::new;
        vec![
            VtpmRejected::HclMalformed { detail: s() },
            VtpmRejected::HclNotSnp {
                report_type: 4,
                name: "TDX",
            },
            VtpmRejected::HclHashType {
                hash_type: 2,
                name: "SHA-384",
            },
            VtpmRejected::HclVarDataMismatch {
                expected: s(),
                actual: s(),
            },
            VtpmRejected::HclVarDataMalformed { detail: s() },
            VtpmRejected::HclAkInvalid { detail: s() },
            VtpmRejected::SignatureMalformed { detail: s() },
            VtpmRejected::QuoteSignature { scheme: s() },
            VtpmRejected::QuoteNotQuote { detail: s() },
            VtpmRejected::QuoteMalformed(WireError::Trailing {
                structure: "TPMS_ATTEST",
                extra: 1,
            }),
            VtpmRejected::QuoteExtraData {
                expected: s(),
                actual: s(),
            },
            VtpmRejected::PcrValues { detail: s() },
            VtpmRejected::PcrDigest {
                expected: s(),
                actual: s(),
            },
            VtpmRejected::HclUserDataMismatch {
                expected: s(),
                actual: s(),
            },
        ]
    }

    #[test]
    fn every_variant_has_a_distinct_listed_code() {
        let codes: Vec<&str> = one_of_each().iter().map(|e| e.reason_code()).collect();
        let mut dedup = codes.clone();
        dedup.sort_unstable();
        dedup.dedup();
        assert_eq!(dedup.len(), codes.len(), "duplicate reason codes");
        assert_eq!(codes, ALL_REASON_CODES, "ALL_REASON_CODES out of sync");
        for c in codes {
            assert!(
                c.starts_with("EVIDENCE_HCL_") || c.starts_with("EVIDENCE_TPM_"),
                "{c}"
            );
            assert!(c.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'));
        }
    }

    #[test]
    fn messages_carry_expected_and_actual() {
        let m = VtpmRejected::QuoteExtraData {
            expected: "6368616c6c656e6765".into(),
            actual: "00".into(),
        }
        .to_string();
        assert!(
            m.contains("6368616c6c656e6765") && m.contains(" 00 "),
            "{m}"
        );
        let m = VtpmRejected::PcrDigest {
            expected: "aa".into(),
            actual: "bb".into(),
        }
        .to_string();
        assert!(
            m.contains("aa") && m.contains("bb") && m.contains("quote again"),
            "{m}"
        );
    }
}
