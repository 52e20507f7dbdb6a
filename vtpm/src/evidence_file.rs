//! Evidence files: one Azure guest's whole evidence in JSON, in the
//! layouts Azure's tooling (az-snp-vtpm) and the confidential-containers
//! verifier use, and in which the captures of
//! `tests/fixtures/azure-snp-vtpm/` are kept. `broker report verify FILE
//! --report-data HEX` reads them.
//!
//! Layout 0 (no `version`): byte arrays.
//!
//! ```json
//! {"quote": {"signature": [..256 bytes..], "message": [..TPMS_ATTEST..],
//!            "pcrs": [[..32 bytes..], ..24 of them..]},
//!  "report": [..the HCL report, NV index 0x01400001..],
//!  "vcek": "-----BEGIN CERTIFICATE-----\n…"}
//! ```
//!
//! Layouts 1 and 2 (`version`): the HCL report and the VCEK (DER) in
//! base64url (padding optional), the quote in hex. Version 2 is version 1
//! with the challenge also in the HCL `user-data`.
//!
//! ```json
//! {"version": 1,
//!  "tpm_quote": {"signature": "39425d…", "message": "ff5443…", "pcrs": ["e15c44…", …]},
//!  "hcl_report": "SENMQQEAAAA…",
//!  "vcek": "MIIFQzCCAv…"}
//! ```
//!
//! In every layout `quote.signature` is the raw RSASSA-PKCS1-v1_5/SHA-256
//! signature (not a `TPMT_SIGNATURE`) and `pcrs` are the SHA-256 values of
//! the quoted PCRs in selection order (PCR 0 to 23 in the captures).
//! Unknown fields are refused, so a misspelt field is an error, not a
//! silently missing value.

use crate::tpm::signature::QuoteSignature;
use crate::verify::QuoteEvidence;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use serde::Deserialize;

/// Largest number of PCR values accepted in a file.
pub const MAX_PCR_VALUES: usize = 32;

const URL_SAFE_ANY_PADDING: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Which layout a file used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Byte arrays, no `version`.
    V0,
    /// `version: 1`: base64url and hex.
    V1,
    /// `version: 2`: as 1, the challenge also in the HCL `user-data`.
    V2,
}

/// One guest's evidence, decoded but not verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvidenceFile {
    /// The layout the file used.
    pub layout: Layout,
    /// The HCL report (contents of NV index 0x01400001).
    pub hcl_report: Vec<u8>,
    /// The quote's `TPMS_ATTEST`.
    pub quote_message: Vec<u8>,
    /// The quote's signature.
    pub quote_signature: QuoteSignature,
    /// The quoted PCR values, in selection order.
    pub pcr_values: Vec<[u8; 32]>,
    /// The VCEK certificate, DER.
    pub vcek_der: Vec<u8>,
}

/// An evidence file could not be read. Nothing is verified yet: these are
/// input errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EvidenceFileError {
    /// Not JSON, or not one of the layouts.
    #[error("not an Azure vTPM evidence file: {0}; expected the layout of tests/fixtures/azure-snp-vtpm/ (quote/report/vcek, or version/tpm_quote/hcl_report/vcek)")]
    Layout(String),
    /// `version` is not 1 or 2.
    #[error("evidence file version {0} is not supported (0, 1 and 2 are)")]
    Version(u64),
    /// A field does not decode.
    #[error("evidence file field {field}: {detail}")]
    Field {
        /// The field, e.g. `tpm_quote.pcrs[3]`.
        field: String,
        /// What is wrong.
        detail: String,
    },
}

fn field_err(field: impl Into<String>, detail: impl ToString) -> EvidenceFileError {
    EvidenceFileError::Field {
        field: field.into(),
        detail: detail.to_string(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QuoteV0 {
    signature: Vec<u8>,
    message: Vec<u8>,
    pcrs: Vec<Vec<u8>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileV0 {
    quote: QuoteV0,
    report: Vec<u8>,
    vcek: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QuoteV1 {
    signature: String,
    message: String,
    pcrs: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileV1 {
    version: u64,
    tpm_quote: QuoteV1,
    hcl_report: String,
    vcek: String,
}

impl EvidenceFile {
    /// Decode a file.
    pub fn parse(json: &[u8]) -> Result<Self, EvidenceFileError> {
        let value: serde_json::Value =
            serde_json::from_slice(json).map_err(|e| EvidenceFileError::Layout(e.to_string()))?;
        // serde would also take a struct from an array of its fields.
        let versioned = value.get("version").is_some();
        let quote = if versioned { "tpm_quote" } else { "quote" };
        if !value.is_object() || value.get(quote).is_some_and(|q| !q.is_object()) {
            return Err(EvidenceFileError::Layout(format!(
                "not a JSON object with an object \"{quote}\""
            )));
        }
        if !versioned {
            let f: FileV0 = serde_json::from_value(value)
                .map_err(|e| EvidenceFileError::Layout(e.to_string()))?;
            return Ok(EvidenceFile {
                layout: Layout::V0,
                quote_signature: signature(&f.quote.signature, "quote.signature")?,
                pcr_values: pcrs(
                    f.quote.pcrs.iter().map(|p| Ok::<_, String>(p.clone())),
                    "quote.pcrs",
                )?,
                quote_message: f.quote.message,
                hcl_report: f.report,
                vcek_der: pem_certificate(&f.vcek)?,
            });
        }
        let f: FileV1 =
            serde_json::from_value(value).map_err(|e| EvidenceFileError::Layout(e.to_string()))?;
        let layout = match f.version {
            1 => Layout::V1,
            2 => Layout::V2,
            v => return Err(EvidenceFileError::Version(v)),
        };
        let q = &f.tpm_quote;
        let unhex = |s: &str, field: &str| hex::decode(s).map_err(|e| field_err(field, e));
        Ok(EvidenceFile {
            layout,
            quote_signature: signature(
                &unhex(&q.signature, "tpm_quote.signature")?,
                "tpm_quote.signature",
            )?,
            quote_message: unhex(&q.message, "tpm_quote.message")?,
            pcr_values: pcrs(q.pcrs.iter().map(hex::decode), "tpm_quote.pcrs")?,
            hcl_report: URL_SAFE_ANY_PADDING
                .decode(&f.hcl_report)
                .map_err(|e| field_err("hcl_report", format!("not base64url: {e}")))?,
            vcek_der: URL_SAFE_ANY_PADDING
                .decode(&f.vcek)
                .map_err(|e| field_err("vcek", format!("not base64url: {e}")))?,
        })
    }

    /// The quote, for [`crate::verify::verify_quote`].
    pub fn quote(&self) -> QuoteEvidence<'_> {
        QuoteEvidence {
            message: &self.quote_message,
            signature: &self.quote_signature,
            pcr_values: &self.pcr_values,
        }
    }
}

fn signature(bytes: &[u8], field: &str) -> Result<QuoteSignature, EvidenceFileError> {
    QuoteSignature::rsassa_sha256(bytes).map_err(|e| field_err(field, e))
}

fn pcrs<E: ToString>(
    values: impl ExactSizeIterator<Item = Result<Vec<u8>, E>>,
    field: &str,
) -> Result<Vec<[u8; 32]>, EvidenceFileError> {
    if values.len() > MAX_PCR_VALUES {
        return Err(field_err(
            field,
            format!("{} values; at most {MAX_PCR_VALUES}", values.len()),
        ));
    }
    values
        .enumerate()
        .map(|(i, v)| {
            let v = v.map_err(|e| field_err(format!("{field}[{i}]"), e))?;
            <[u8; 32]>::try_from(v.as_slice()).map_err(|_| {
                field_err(
                    format!("{field}[{i}]"),
                    format!("{} bytes; a SHA-256 PCR has 32", v.len()),
                )
            })
        })
        .collect()
}

/// The DER of the one certificate in `pem`.
fn pem_certificate(pem: &str) -> Result<Vec<u8>, EvidenceFileError> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let body = pem
        .trim()
        .strip_prefix(BEGIN)
        .and_then(|rest| rest.strip_suffix(END))
        .ok_or_else(|| field_err("vcek", "not one PEM CERTIFICATE block"))?;
    let b64: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let der = STANDARD
        .decode(b64)
        .map_err(|e| field_err("vcek", format!("PEM body is not base64: {e}")))?;
    if der.is_empty() {
        return Err(field_err("vcek", "empty certificate"));
    }
    Ok(der)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v1(version: &str, extra: &str) -> String {
        format!(
            r#"{{"version":{version},"tpm_quote":{{"signature":"{sig}","message":"ff54","pcrs":["{pcr}"]}},"hcl_report":"SENMQQ==","vcek":"MIIF"{extra}}}"#,
            sig = "ab".repeat(256),
            pcr = "00".repeat(32)
        )
    }

    #[test]
    fn versioned_layouts() {
        let f = EvidenceFile::parse(v1("1", "").as_bytes()).unwrap();
        assert_eq!(f.layout, Layout::V1);
        assert_eq!(f.hcl_report, b"HCLA");
        assert_eq!(f.quote_message, [0xff, 0x54]);
        assert_eq!(f.pcr_values, vec![[0u8; 32]]);
        assert_eq!(f.vcek_der, [0x30, 0x82, 0x05]);
        assert_eq!(
            EvidenceFile::parse(v1("2", "").as_bytes()).unwrap().layout,
            Layout::V2
        );
        // Padding is optional.
        let unpadded = v1("1", "").replace("SENMQQ==", "SENMQQ");
        assert_eq!(
            EvidenceFile::parse(unpadded.as_bytes()).unwrap().hcl_report,
            b"HCLA"
        );
    }

    #[test]
    fn refusals_name_the_field() {
        for (json, want) in [
            (v1("3", ""), "version 3"),
            (v1("1", r#","extra":1"#), "unknown field"),
            (v1("1", "").replace("ff54", "ff5"), "tpm_quote.message"),
            (v1("1", "").replace("SENMQQ==", "SEN*QQ=="), "hcl_report"),
            (v1("1", "").replace(&"00".repeat(32), &"00".repeat(31)), "tpm_quote.pcrs[0]"),
            (v1("1", "").replace(&"ab".repeat(256), ""), "tpm_quote.signature"),
            (v1("1", "").replace(",\"vcek\":\"MIIF\"", ""), "missing field"),
            ("[]".to_string(), "not a JSON object"),
            (
                r#"{"quote":[[1],[],[]],"report":[],"vcek":""}"#.to_string(),
                "object \"quote\"",
            ),
            ("{".to_string(), "EOF"),
            (
                r#"{"quote":{"signature":[1],"message":[],"pcrs":[[256]]},"report":[],"vcek":""}"#
                    .to_string(),
                "invalid value",
            ),
            (
                r#"{"quote":{"signature":[1],"message":[],"pcrs":[]},"report":[],"vcek":"x"}"#
                    .to_string(),
                "PEM",
            ),
            (
                r#"{"quote":{"signature":[1],"message":[],"pcrs":[]},"report":[],"vcek":"-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----"}"#
                    .to_string(),
                "not base64",
            ),
        ] {
            let err = EvidenceFile::parse(json.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(want), "{json}: {err}");
        }
        let many = v1("1", "").replace(
            &format!("[\"{}\"]", "00".repeat(32)),
            &format!(
                "[{}]",
                vec![format!("\"{}\"", "00".repeat(32)); 33].join(",")
            ),
        );
        assert!(EvidenceFile::parse(many.as_bytes())
            .unwrap_err()
            .to_string()
            .contains("at most 32"));
    }
}
