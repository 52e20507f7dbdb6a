//! Verification of vTPM evidence above a verified SEV-SNP report.
//!
//! On an Azure confidential VM the chain of trust is
//!
//! ```text
//! AMD ARK → ASK → VCEK → SNP report ─REPORT_DATA[0..32] = SHA-256(var data)─→ HCL variable data
//!   → HCLAkPub (RSA) ─signs─→ TPMS_ATTEST (TPM2_Quote) ─pcrDigest─→ PCR values
//!                                    └─ extraData = the verifier's binding value
//! ```
//!
//! The first links (chain, VEK binding, report signature) are the SNP
//! verifier's. [`verify_quote`] checks the rest, in this order, and stops
//! at the first failure:
//!
//! 1. SHA-256 of the HCL variable data equals REPORT_DATA[0..32] of the
//!    verified SNP report (`EVIDENCE_HCL_VAR_DATA_MISMATCH`);
//! 2. the variable data parses and names one RSA `HCLAkPub`
//!    (`EVIDENCE_HCL_VAR_DATA_MALFORMED`, `EVIDENCE_HCL_AK_INVALID`);
//! 3. that key verifies the quote's signature over the quote's bytes as
//!    received (`EVIDENCE_TPM_QUOTE_SIGNATURE`);
//! 4. the signed bytes are a TPM-generated quote: magic `0xff544347`, type
//!    `TPM_ST_ATTEST_QUOTE` (`EVIDENCE_TPM_QUOTE_NOT_QUOTE`), well framed
//!    (`EVIDENCE_TPM_QUOTE_MALFORMED`);
//! 5. its extraData equals the expected binding value
//!    (`EVIDENCE_TPM_QUOTE_EXTRA_DATA`);
//! 6. the PCR values sent are exactly the SHA-256 PCRs the quote selects
//!    (`EVIDENCE_TPM_PCR_VALUES`) and SHA-256 over them, in selection order,
//!    is the quote's pcrDigest (`EVIDENCE_TPM_PCR_DIGEST`);
//! 7. if the caller expects a `user-data` value, the variable data holds it
//!    (`EVIDENCE_HCL_USER_DATA_MISMATCH`).
//!
//! Only then is a [`VerifiedVtpmQuote`] made; it cannot be made elsewhere.
//!
//! What is *not* checked here: `qualifiedSigner` (it names the AK by its TPM
//! name, which the JWK does not give), the clock (carried for information),
//! and REPORT_DATA[32..64] (zero on Azure, signed by the SNP report).

use crate::error::VtpmRejected;
use crate::hcl::{HclReport, RuntimeClaims, VmConfiguration};
use crate::tpm::attest::{AttestError, ClockInfo, QuoteAttest};
use crate::tpm::pcr::pcr_digest_sha256;
use crate::tpm::signature::{QuoteSignature, RsaPublicKey};
use crate::tpm::{alg_name, TPM_ALG_SHA256};
use std::collections::BTreeMap;

/// What the evidence must be bound to.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// REPORT_DATA of the SNP report inside the HCL report, taken from the
    /// SNP verifier's result (never from unverified bytes).
    pub report_data: &'a [u8; 64],
    /// The binding value the quote's extraData must hold: on Azure, what
    /// REPORT_DATA holds on bare SNP (the transcript hash).
    pub extra_data: &'a [u8],
    /// The value the HCL `user-data` must hold, if the protocol binds one.
    pub user_data: Option<&'a [u8]>,
}

/// The quote and the PCR values the guest sent with it.
#[derive(Debug, Clone, Copy)]
pub struct QuoteEvidence<'a> {
    /// The `TPMS_ATTEST` bytes exactly as TPM2_Quote returned them.
    pub message: &'a [u8],
    /// The signature over `message`.
    pub signature: &'a QuoteSignature,
    /// The values of the quoted PCRs, in the quote's selection order
    /// (ascending index for the one SHA-256 bank), as TPM2_PCR_Read gave
    /// them.
    pub pcr_values: &'a [[u8; 32]],
}

/// vTPM evidence that verified against an SNP report's REPORT_DATA: the
/// PCR values a quote by the HCL attestation key vouches for.
///
/// Only [`verify_quote`] makes one. It says nothing on its own about the
/// SNP report; whoever holds it must also hold that report's verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedVtpmQuote {
    pcrs: BTreeMap<u8, [u8; 32]>,
    claims: RuntimeClaims,
    extra_data: Vec<u8>,
    clock_info: ClockInfo,
    firmware_version: u64,
    variable_data_sha256: [u8; 32],
}

impl VerifiedVtpmQuote {
    /// The verified SHA-256 PCR values, by index: every PCR the quote
    /// selected, and only those.
    pub fn pcrs(&self) -> &BTreeMap<u8, [u8; 32]> {
        &self.pcrs
    }

    /// The attestation key that signed the quote (`HCLAkPub`).
    pub fn attestation_key(&self) -> &RsaPublicKey {
        &self.claims.attestation_key
    }

    /// The HCL `user-data` (decoded).
    pub fn user_data(&self) -> &[u8] {
        &self.claims.user_data
    }

    /// The HCL `vm-configuration`, if present.
    pub fn vm_configuration(&self) -> Option<&VmConfiguration> {
        self.claims.vm_configuration.as_ref()
    }

    /// The quote's extraData (equal to the expected binding value).
    pub fn extra_data(&self) -> &[u8] {
        &self.extra_data
    }

    /// The TPM's clock when it quoted.
    pub fn clock_info(&self) -> ClockInfo {
        self.clock_info
    }

    /// The TPM's firmware version.
    pub fn firmware_version(&self) -> u64 {
        self.firmware_version
    }

    /// SHA-256 of the HCL variable data (= REPORT_DATA[0..32]).
    pub fn variable_data_sha256(&self) -> &[u8; 32] {
        &self.variable_data_sha256
    }
}

/// Verify a quote and its PCR values against an HCL report whose SNP
/// report has been verified and carries `expected.report_data`. See the
/// module documentation for the checks and their order.
pub fn verify_quote(
    hcl: &HclReport,
    quote: QuoteEvidence<'_>,
    expected: Expected<'_>,
) -> Result<VerifiedVtpmQuote, VtpmRejected> {
    // 1. The variable data is what the SNP report signed.
    let var_hash = hcl.variable_data_sha256();
    if var_hash[..] != expected.report_data[..32] {
        return Err(VtpmRejected::HclVarDataMismatch {
            expected: hex::encode(&expected.report_data[..32]),
            actual: hex::encode(var_hash),
        });
    }
    // 2. Its attestation key.
    let claims = RuntimeClaims::parse(hcl.variable_data())?;
    // 3. The key signed these exact bytes.
    if !quote
        .signature
        .verifies(&claims.attestation_key, quote.message)
    {
        return Err(VtpmRejected::QuoteSignature {
            scheme: quote.signature.describe().into(),
        });
    }
    // 4. They are a quote.
    let attest = QuoteAttest::parse(quote.message).map_err(|e| match e {
        AttestError::NotGenerated(_) | AttestError::NotQuote(_) => VtpmRejected::QuoteNotQuote {
            detail: e.to_string(),
        },
        AttestError::Wire(w) => VtpmRejected::QuoteMalformed(w),
    })?;
    // 5. Made for this challenge.
    if attest.extra_data != expected.extra_data {
        return Err(VtpmRejected::QuoteExtraData {
            expected: hex::encode(expected.extra_data),
            actual: hex::encode(&attest.extra_data),
        });
    }
    // 6. Over these PCR values.
    let pcrs = pcr_map(&attest, quote.pcr_values)?;
    let digest = pcr_digest_sha256(quote.pcr_values);
    if attest.pcr_digest != digest {
        return Err(VtpmRejected::PcrDigest {
            expected: hex::encode(&attest.pcr_digest),
            actual: hex::encode(digest),
        });
    }
    // 7. The HCL user data, when the protocol binds one.
    if let Some(want) = expected.user_data {
        if claims.user_data != want {
            return Err(VtpmRejected::HclUserDataMismatch {
                expected: hex::encode(want),
                actual: hex::encode(&claims.user_data),
            });
        }
    }
    Ok(VerifiedVtpmQuote {
        pcrs,
        claims,
        extra_data: attest.extra_data,
        clock_info: attest.clock_info,
        firmware_version: attest.firmware_version,
        variable_data_sha256: var_hash,
    })
}

/// Pair the values sent with the PCRs the quote selects: one SHA-256 bank,
/// at least one PCR, as many values as PCRs.
fn pcr_map(
    attest: &QuoteAttest,
    values: &[[u8; 32]],
) -> Result<BTreeMap<u8, [u8; 32]>, VtpmRejected> {
    let bad = |detail: String| VtpmRejected::PcrValues { detail };
    let banks = attest.pcr_select.banks();
    if let Some(b) = banks.iter().find(|b| b.hash() != TPM_ALG_SHA256) {
        return Err(bad(format!(
            "the quote selects the {} bank ({:#06x}); only SHA-256 PCRs are accepted",
            alg_name(b.hash()),
            b.hash()
        )));
    }
    if banks.len() > 1 {
        return Err(bad(format!(
            "the quote selects the SHA-256 bank {} times",
            banks.len()
        )));
    }
    let indexes: Vec<u8> = attest
        .pcr_select
        .in_digest_order()
        .into_iter()
        .map(|(_, i)| i)
        .collect();
    if indexes.is_empty() {
        return Err(bad("the quote selects no PCR".into()));
    }
    if indexes.len() != values.len() {
        return Err(bad(format!(
            "the quote covers {} PCRs ({}) but {} values were sent",
            indexes.len(),
            attest.pcr_select,
            values.len()
        )));
    }
    Ok(indexes.into_iter().zip(values.iter().copied()).collect())
}
