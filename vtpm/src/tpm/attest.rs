//! `TPMS_ATTEST` of a quote (Part 2 §10.12.12), the message a TPM signs in
//! TPM2_Quote:
//!
//! | field | type | note |
//! |---|---|---|
//! | magic | u32 | `TPM_GENERATED_VALUE` 0xff544347 |
//! | type | u16 | `TPM_ST_ATTEST_QUOTE` 0x8018 |
//! | qualifiedSigner | `TPM2B_NAME` | name of the signing key's hierarchy path |
//! | extraData | `TPM2B_DATA` | the caller's qualifying data |
//! | clockInfo | `TPMS_CLOCK_INFO` | clock u64, resetCount u32, restartCount u32, safe u8 |
//! | firmwareVersion | u64 | vendor-defined |
//! | attested.quote | `TPMS_QUOTE_INFO` | `TPML_PCR_SELECTION` pcrSelect, `TPM2B_DIGEST` pcrDigest |
//!
//! Nothing may follow the structure. A TPM signs the marshalled bytes, so
//! the signature is checked over the bytes as received, never over a
//! re-encoding.

use super::pcr::PcrSelection;
use super::wire::{Reader, WireError};
use super::{MAX_DIGEST, MAX_TPMT_HA, TPM_GENERATED_VALUE, TPM_ST_ATTEST_QUOTE};

/// `TPMS_CLOCK_INFO`: the TPM's time when it quoted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockInfo {
    /// Milliseconds the TPM has been powered since its clock was last set.
    pub clock: u64,
    /// TPM resets (reboots without an orderly shutdown state kept) so far.
    pub reset_count: u32,
    /// TPM restarts (resumes) since the last reset.
    pub restart_count: u32,
    /// Whether `clock` has not gone back since it was last reported.
    pub safe: bool,
}

/// A parsed quote: every field of its `TPMS_ATTEST`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuoteAttest {
    /// `qualifiedSigner`: `nameAlg ‖ H(…)` of the signing key's qualified name.
    pub qualified_signer: Vec<u8>,
    /// `extraData`: the qualifying data the caller passed to TPM2_Quote.
    pub extra_data: Vec<u8>,
    /// `clockInfo`.
    pub clock_info: ClockInfo,
    /// `firmwareVersion`.
    pub firmware_version: u64,
    /// `attested.quote.pcrSelect`.
    pub pcr_select: PcrSelection,
    /// `attested.quote.pcrDigest`.
    pub pcr_digest: Vec<u8>,
}

/// Why bytes are not a quote.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AttestError {
    /// `magic` is not `TPM_GENERATED_VALUE`: the TPM did not make this
    /// structure.
    #[error("magic is {0:#010x}, not TPM_GENERATED_VALUE (0xff544347)")]
    NotGenerated(u32),
    /// `type` is not `TPM_ST_ATTEST_QUOTE`: the TPM attested something
    /// else (a certification, a session audit, …).
    #[error("type is {0:#06x}, not TPM_ST_ATTEST_QUOTE (0x8018)")]
    NotQuote(u16),
    /// The structure is truncated, oversized or has trailing bytes.
    #[error(transparent)]
    Wire(#[from] WireError),
}

impl QuoteAttest {
    /// Parse a `TPMS_ATTEST` that must be a quote. Checks the magic, then
    /// the type, then the rest; refuses trailing bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, AttestError> {
        let mut r = Reader::new(bytes);
        let magic = r.u32("TPMS_ATTEST.magic")?;
        if magic != TPM_GENERATED_VALUE {
            return Err(AttestError::NotGenerated(magic));
        }
        let kind = r.u16("TPMS_ATTEST.type")?;
        if kind != TPM_ST_ATTEST_QUOTE {
            return Err(AttestError::NotQuote(kind));
        }
        let qualified_signer = r
            .tpm2b("TPMS_ATTEST.qualifiedSigner", MAX_TPMT_HA)?
            .to_vec();
        let extra_data = r.tpm2b("TPMS_ATTEST.extraData", MAX_TPMT_HA)?.to_vec();
        let clock = r.u64("TPMS_CLOCK_INFO.clock")?;
        let reset_count = r.u32("TPMS_CLOCK_INFO.resetCount")?;
        let restart_count = r.u32("TPMS_CLOCK_INFO.restartCount")?;
        let safe = match r.u8("TPMS_CLOCK_INFO.safe")? {
            0 => false,
            1 => true,
            other => {
                return Err(WireError::invalid(
                    "TPMS_CLOCK_INFO.safe",
                    format!("{other} is not a TPMI_YES_NO (0 or 1)"),
                )
                .into())
            }
        };
        let firmware_version = r.u64("TPMS_ATTEST.firmwareVersion")?;
        let pcr_select = PcrSelection::parse(&mut r)?;
        let pcr_digest = r.tpm2b("TPMS_QUOTE_INFO.pcrDigest", MAX_DIGEST)?.to_vec();
        r.finish("TPMS_ATTEST")?;
        Ok(QuoteAttest {
            qualified_signer,
            extra_data,
            clock_info: ClockInfo {
                clock,
                reset_count,
                restart_count,
                safe,
            },
            firmware_version,
            pcr_select,
            pcr_digest,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The quote of the Milan capture (evidence-v0.json), 122 bytes.
    const MILAN_QUOTE: &str = "ff54434780180022000bbf15d1053b33c81c80e3f9892b1f359474102661abfabf2889dbbca9ab2b445900096368616c6c656e676500000000001b6f9c000000020000000001202003120012000300000001000b03ffffff0020cfa3a9112493e8c8741c1d895ced6d05a9ea19a24a02a44a8b02eaf22a1b143f";

    #[test]
    fn parses_the_milan_capture() {
        let q = QuoteAttest::parse(&hex::decode(MILAN_QUOTE).unwrap()).unwrap();
        assert_eq!(q.extra_data, b"challenge");
        assert_eq!(q.qualified_signer.len(), 34);
        assert_eq!(&q.qualified_signer[..2], &[0x00, 0x0b]);
        assert_eq!(
            q.clock_info,
            ClockInfo {
                clock: 0x001b_6f9c,
                reset_count: 2,
                restart_count: 0,
                safe: true
            }
        );
        assert_eq!(q.firmware_version, 0x2020_0312_0012_0003);
        assert_eq!(q.pcr_select, PcrSelection::sha256_all());
        assert_eq!(
            hex::encode(&q.pcr_digest),
            "cfa3a9112493e8c8741c1d895ced6d05a9ea19a24a02a44a8b02eaf22a1b143f"
        );
    }

    #[test]
    fn every_truncation_is_refused_without_panic() {
        let full = hex::decode(MILAN_QUOTE).unwrap();
        for len in 0..full.len() {
            let err = QuoteAttest::parse(&full[..len]).unwrap_err();
            assert!(
                matches!(err, AttestError::Wire(WireError::Truncated { .. })),
                "length {len}: {err:?}"
            );
        }
    }

    #[test]
    fn trailing_bytes_magic_type_and_safe_are_checked() {
        let full = hex::decode(MILAN_QUOTE).unwrap();
        let mut long = full.clone();
        long.push(0);
        assert!(matches!(
            QuoteAttest::parse(&long),
            Err(AttestError::Wire(WireError::Trailing { extra: 1, .. }))
        ));
        let mut m = full.clone();
        m[0] = 0xfe;
        assert_eq!(
            QuoteAttest::parse(&m),
            Err(AttestError::NotGenerated(0xfe54_4347))
        );
        let mut t = full.clone();
        t[5] = 0x17; // TPM_ST_ATTEST_CERTIFY
        assert_eq!(QuoteAttest::parse(&t), Err(AttestError::NotQuote(0x8017)));
        let mut s = full.clone();
        s[2 + 4 + 2 + 34 + 2 + 9 + 16] = 2; // clockInfo.safe
        assert!(matches!(
            QuoteAttest::parse(&s),
            Err(AttestError::Wire(WireError::Invalid { .. }))
        ));
    }

    #[test]
    fn oversized_sizes_are_refused() {
        let mut m = hex::decode(MILAN_QUOTE).unwrap();
        // qualifiedSigner size 0xffff
        m[6] = 0xff;
        m[7] = 0xff;
        assert!(matches!(
            QuoteAttest::parse(&m),
            Err(AttestError::Wire(WireError::TooLarge { .. }))
        ));
    }
}
