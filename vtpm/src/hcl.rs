//! The HCL report: what Azure's paravisor (the "HCL", host compatibility
//! layer, running at VMPL0 under the guest) puts into vTPM NV index
//! 0x01400001.
//!
//! # Layout (all integers little-endian)
//!
//! | offset | size | field | value accepted |
//! |---|---|---|---|
//! | 0 | 4 | signature | `"HCLA"` |
//! | 4 | 4 | version | 1 or 2 (Milan captures: 1, Genoa: 2) |
//! | 8 | 4 | report_size | 1236 + variable_data_size: the bytes used |
//! | 12 | 4 | request_type | 2 (`AkCertRequest`) |
//! | 16 | 4 | status | 0 |
//! | 20 | 12 | reserved | zero |
//! | 32 | 1184 | hw_report | the SEV-SNP attestation report, raw |
//! | 1216 | 4 | data_size | 20 + variable_data_size |
//! | 1220 | 4 | version | 1 |
//! | 1224 | 4 | report_type | 2 (SNP; 4 would be TDX) |
//! | 1228 | 4 | report_data_hash_type | 1 (SHA-256) |
//! | 1232 | 4 | variable_data_size | |
//! | 1236 | n | variable_data | a JSON document |
//! | 1236 + n | | padding | zero, up to the NV index size (2600 on Azure) |
//!
//! # The binding
//!
//! The paravisor asks the AMD secure processor for the SNP report with
//! `REPORT_DATA = SHA-256(variable_data) ‖ 0^32` ([`report_data_for`]). The
//! SNP report's signature therefore covers the variable data, and with it
//! the vTPM's attestation key, `HCLAkPub`, a JWK RSA key that signs the TPM
//! quotes, and `user-data`, the 64 bytes the guest last wrote to NV index
//! 0x01400002, in hex. Nothing else in the HCL report is signed: the header
//! and the fixed fields of the request data are checked to hold the one
//! value each can have, so a changed byte is refused, but they prove
//! nothing (version 1 and 2 are both accepted and indistinguishable).
//!
//! ```json
//! {"keys":[{"kid":"HCLAkPub","key_ops":["sign"],"kty":"RSA","e":"AQAB","n":"…"},
//!          {"kid":"HCLEkPub","key_ops":["encrypt"],"kty":"RSA","e":"AQAB","n":"…"}],
//!  "vm-configuration":{"console-enabled":true,"secure-boot":true,"tpm-enabled":true,
//!                      "vmUniqueId":"…"},
//!  "user-data":"0000…00"}
//! ```

use crate::error::VtpmRejected;
use crate::tpm::signature::RsaPublicKey;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};

/// Size of the HCL header.
pub const HEADER_LEN: usize = 32;
/// Size of the SEV-SNP attestation report inside.
pub const SNP_REPORT_LEN: usize = 1184;
/// Size of the fixed part of the IGVM request data.
pub const REQUEST_DATA_LEN: usize = 20;
/// Offset of the variable data.
pub const VARIABLE_DATA_OFFSET: usize = HEADER_LEN + SNP_REPORT_LEN + REQUEST_DATA_LEN;
/// Largest HCL report accepted: an NV index holds at most 64 KiB.
pub const MAX_LEN: usize = u16::MAX as usize;
/// `kid` of the attestation key in the variable data.
pub const AK_KID: &str = "HCLAkPub";

const SIGNATURE: &[u8; 4] = b"HCLA";
const VERSIONS: [u32; 2] = [1, 2];
const REQUEST_TYPE_AK_CERT: u32 = 2;
const REQUEST_DATA_VERSION: u32 = 1;
const REPORT_TYPE_SNP: u32 = 2;
const HASH_TYPE_SHA256: u32 = 1;

/// A parsed HCL report. Parsing checks its framing only; what it claims is
/// worth nothing until [`crate::verify::verify_quote`] has tied it to a
/// verified SNP report.
#[derive(Clone, PartialEq, Eq)]
pub struct HclReport {
    version: u32,
    snp_report: Box<[u8; SNP_REPORT_LEN]>,
    variable_data: Vec<u8>,
}

impl std::fmt::Debug for HclReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HclReport")
            .field("version", &self.version)
            .field(
                "variable_data",
                &String::from_utf8_lossy(&self.variable_data),
            )
            .finish_non_exhaustive()
    }
}

fn le32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

impl HclReport {
    /// Parse the contents of NV index 0x01400001 (with or without its zero
    /// padding).
    pub fn parse(bytes: &[u8]) -> Result<Self, VtpmRejected> {
        if bytes.len() < VARIABLE_DATA_OFFSET {
            return Err(VtpmRejected::hcl_malformed(format!(
                "{} bytes, shorter than the {VARIABLE_DATA_OFFSET} of header, SNP report and request data",
                bytes.len()
            )));
        }
        if bytes.len() > MAX_LEN {
            return Err(VtpmRejected::hcl_malformed(format!(
                "{} bytes, more than an NV index holds ({MAX_LEN})",
                bytes.len()
            )));
        }
        if &bytes[0..4] != SIGNATURE {
            return Err(VtpmRejected::hcl_malformed(format!(
                "signature is {}, not \"HCLA\"",
                hex::encode(&bytes[0..4])
            )));
        }
        let version = le32(bytes, 4);
        if !VERSIONS.contains(&version) {
            return Err(VtpmRejected::hcl_malformed(format!(
                "header version {version}; versions 1 and 2 are known"
            )));
        }
        let expect = |at: usize, name: &str, want: u32| -> Result<(), VtpmRejected> {
            let got = le32(bytes, at);
            if got == want {
                Ok(())
            } else {
                Err(VtpmRejected::hcl_malformed(format!(
                    "{name} is {got}, expected {want}"
                )))
            }
        };
        expect(12, "request_type", REQUEST_TYPE_AK_CERT)?;
        expect(16, "status", 0)?;
        if bytes[20..32].iter().any(|&b| b != 0) {
            return Err(VtpmRejected::hcl_malformed(
                "reserved header bytes 20..32 are not zero",
            ));
        }
        let rd = HEADER_LEN + SNP_REPORT_LEN;
        expect(rd + 4, "request data version", REQUEST_DATA_VERSION)?;
        let report_type = le32(bytes, rd + 8);
        if report_type != REPORT_TYPE_SNP {
            return Err(VtpmRejected::HclNotSnp {
                report_type,
                name: match report_type {
                    1 => "VBS",
                    3 => "TVM",
                    4 => "TDX",
                    _ => "unknown",
                },
            });
        }
        let hash_type = le32(bytes, rd + 12);
        if hash_type != HASH_TYPE_SHA256 {
            return Err(VtpmRejected::HclHashType {
                hash_type,
                name: match hash_type {
                    2 => "SHA-384",
                    3 => "SHA-512",
                    _ => "unknown",
                },
            });
        }
        // Sizes: variable_data_size must fit, and the two sizes derived
        // from it must agree with it.
        let var_size = le32(bytes, rd + 16) as usize;
        let end = VARIABLE_DATA_OFFSET
            .checked_add(var_size)
            .filter(|&end| end <= bytes.len())
            .ok_or_else(|| {
                VtpmRejected::hcl_malformed(format!(
                    "variable_data_size {var_size} runs past the end of the {} bytes",
                    bytes.len()
                ))
            })?;
        expect(
            8,
            "report_size",
            u32::try_from(end).expect("at most MAX_LEN"),
        )?;
        expect(
            rd,
            "request data_size",
            u32::try_from(REQUEST_DATA_LEN + var_size).expect("at most MAX_LEN"),
        )?;
        if let Some(at) = bytes[end..].iter().position(|&b| b != 0) {
            return Err(VtpmRejected::hcl_malformed(format!(
                "byte {} of the padding after the report's {end} bytes is not zero",
                end + at
            )));
        }
        let mut snp_report = Box::new([0u8; SNP_REPORT_LEN]);
        snp_report.copy_from_slice(&bytes[HEADER_LEN..rd]);
        Ok(HclReport {
            version,
            snp_report,
            variable_data: bytes[VARIABLE_DATA_OFFSET..end].to_vec(),
        })
    }

    /// An HCL report as the paravisor writes it (without padding): the
    /// inverse of [`HclReport::parse`], for a simulated platform and tests.
    ///
    /// # Panics
    /// If `version` is not 1 or 2 or the result would exceed [`MAX_LEN`].
    pub fn build(version: u32, snp_report: &[u8; SNP_REPORT_LEN], variable_data: &[u8]) -> Vec<u8> {
        assert!(VERSIONS.contains(&version), "HCL version {version}");
        let end = VARIABLE_DATA_OFFSET + variable_data.len();
        assert!(end <= MAX_LEN, "HCL report of {end} bytes");
        let le = |v: usize| u32::try_from(v).expect("below MAX_LEN").to_le_bytes();
        let mut out = Vec::with_capacity(end);
        out.extend_from_slice(SIGNATURE);
        out.extend_from_slice(&version.to_le_bytes());
        out.extend_from_slice(&le(end));
        out.extend_from_slice(&REQUEST_TYPE_AK_CERT.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&[0u8; 12]);
        out.extend_from_slice(snp_report);
        out.extend_from_slice(&le(REQUEST_DATA_LEN + variable_data.len()));
        out.extend_from_slice(&REQUEST_DATA_VERSION.to_le_bytes());
        out.extend_from_slice(&REPORT_TYPE_SNP.to_le_bytes());
        out.extend_from_slice(&HASH_TYPE_SHA256.to_le_bytes());
        out.extend_from_slice(&le(variable_data.len()));
        out.extend_from_slice(variable_data);
        out
    }

    /// The header version (1 or 2).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The raw SEV-SNP attestation report, for the SNP verifier. Its
    /// REPORT_DATA must be checked with [`crate::verify::verify_quote`].
    pub fn snp_report(&self) -> &[u8; SNP_REPORT_LEN] {
        &self.snp_report
    }

    /// The variable data (the JSON document), as signed through REPORT_DATA.
    pub fn variable_data(&self) -> &[u8] {
        &self.variable_data
    }

    /// SHA-256 of the variable data: what REPORT_DATA[0..32] must hold.
    pub fn variable_data_sha256(&self) -> [u8; 32] {
        sha256(&self.variable_data)
    }
}

/// The REPORT_DATA the paravisor requests for `variable_data`:
/// SHA-256(variable_data) followed by 32 zero bytes.
pub fn report_data_for(variable_data: &[u8]) -> [u8; 64] {
    let mut out = [0u8; 64];
    out[..32].copy_from_slice(&sha256(variable_data));
    out
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data).as_ref());
    out
}

/// `vm-configuration` of the variable data: how the VM was deployed.
/// Absent fields are `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmConfiguration {
    /// Whether the serial console is enabled.
    #[serde(rename = "console-enabled", skip_serializing_if = "Option::is_none")]
    pub console_enabled: Option<bool>,
    /// Whether UEFI secure boot is on.
    #[serde(rename = "secure-boot", skip_serializing_if = "Option::is_none")]
    pub secure_boot: Option<bool>,
    /// Whether the vTPM is enabled.
    #[serde(rename = "tpm-enabled", skip_serializing_if = "Option::is_none")]
    pub tpm_enabled: Option<bool>,
    /// Whether the vTPM state persists across boots.
    #[serde(rename = "tpm-persisted", skip_serializing_if = "Option::is_none")]
    pub tpm_persisted: Option<bool>,
    /// Azure's id of the VM.
    #[serde(rename = "vmUniqueId", skip_serializing_if = "Option::is_none")]
    pub vm_unique_id: Option<String>,
}

#[derive(Deserialize, Serialize)]
struct Jwk {
    kid: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_ops: Option<Vec<String>>,
    kty: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    e: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    n: Option<String>,
}

#[derive(Deserialize, Serialize)]
struct VariableData {
    keys: Vec<Jwk>,
    #[serde(
        rename = "vm-configuration",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    vm_configuration: Option<VmConfiguration>,
    #[serde(rename = "user-data")]
    user_data: String,
}

/// What the variable data says: the attestation key, the user data and
/// the VM configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeClaims {
    /// `HCLAkPub`: the vTPM attestation key that signs quotes.
    pub attestation_key: RsaPublicKey,
    /// `user-data`, decoded from hex: the 64 bytes the guest wrote to NV
    /// index 0x01400002 (zeros if it wrote none).
    pub user_data: Vec<u8>,
    /// `vm-configuration`, if present.
    pub vm_configuration: Option<VmConfiguration>,
}

impl RuntimeClaims {
    /// Parse the variable data. Unknown fields are ignored; the fields
    /// above must be present (`vm-configuration` may not be) and well
    /// typed, and exactly one key must be `HCLAkPub`.
    pub fn parse(variable_data: &[u8]) -> Result<Self, VtpmRejected> {
        let malformed = |detail: String| VtpmRejected::HclVarDataMalformed { detail };
        let doc: VariableData =
            serde_json::from_slice(variable_data).map_err(|e| malformed(e.to_string()))?;
        let user_data = hex::decode(&doc.user_data)
            .map_err(|e| malformed(format!("user-data is not hex: {e}")))?;
        let ak_invalid = |detail: String| VtpmRejected::HclAkInvalid { detail };
        let mut aks = doc.keys.iter().filter(|k| k.kid == AK_KID);
        let jwk = aks
            .next()
            .ok_or_else(|| ak_invalid(format!("no key with kid {AK_KID}")))?;
        if aks.next().is_some() {
            return Err(ak_invalid(format!("more than one key with kid {AK_KID}")));
        }
        if jwk.kty != "RSA" {
            return Err(ak_invalid(format!("kty is {:?}, not \"RSA\"", jwk.kty)));
        }
        let field = |name: &str, v: &Option<String>| -> Result<Vec<u8>, VtpmRejected> {
            let text = v
                .as_deref()
                .ok_or_else(|| ak_invalid(format!("no \"{name}\"")))?;
            let bytes = URL_SAFE_NO_PAD
                .decode(text)
                .map_err(|e| ak_invalid(format!("\"{name}\" is not unpadded base64url: {e}")))?;
            // RFC 7518 §2 (Base64urlUInt): the fewest octets, no leading zero.
            if bytes.first() == Some(&0) {
                return Err(ak_invalid(format!("\"{name}\" has a leading zero octet")));
            }
            Ok(bytes)
        };
        let (n, e) = (field("n", &jwk.n)?, field("e", &jwk.e)?);
        let attestation_key =
            RsaPublicKey::new(&n, &e).map_err(|err| ak_invalid(err.to_string()))?;
        Ok(RuntimeClaims {
            attestation_key,
            user_data,
            vm_configuration: doc.vm_configuration,
        })
    }

    /// The variable data the paravisor would write for these claims (the
    /// attestation key only; no `HCLEkPub`), user data in upper-case hex.
    /// For a simulated platform and tests.
    pub fn to_json(&self) -> Vec<u8> {
        let doc = VariableData {
            keys: vec![Jwk {
                kid: AK_KID.into(),
                key_ops: Some(vec!["sign".into()]),
                kty: "RSA".into(),
                e: Some(URL_SAFE_NO_PAD.encode(self.attestation_key.exponent())),
                n: Some(URL_SAFE_NO_PAD.encode(self.attestation_key.modulus())),
            }],
            vm_configuration: self.vm_configuration.clone(),
            user_data: hex::encode_upper(&self.user_data),
        };
        serde_json::to_vec(&doc).expect("plain structs serialize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims_json(body: &str) -> Vec<u8> {
        body.as_bytes().to_vec()
    }

    const N: &str = "mHSRbgAAhfrYaq4f0zFsxuZkkrvoJIbmndQGo6pP1X-oXc8SHHrT014FpJXAARcoNL9N5NSpbSfIZ0YFLH4qH-9jfSjeMS2ZCfGPyBnL8Jr-bAH7ExG0kzz_cXHR31pjRdr5Qt511JYAvwhroyeL1F84q5cM6cVR4sRjyrPi2pU1pWoM-5GIL1SPcxU5H4RPq1KZhXJ67dtquJUZtQhWZT6DcZrGtee-c9TAYamBW0ufyqFs38HduibveXPmEa063WtXu56tXY8EpuO3PN_6Z_tf6bNj1KqwQ316TD_lbVX_vcXmpWg35_DfsVaUcrMi8bungbhXir2nQZaRcgbfIQ";

    fn doc(keys: &str, user_data: &str) -> Vec<u8> {
        claims_json(&format!(r#"{{"keys":[{keys}],"user-data":"{user_data}"}}"#))
    }

    fn ak(n: &str, e: &str) -> String {
        format!(r#"{{"kid":"HCLAkPub","kty":"RSA","e":"{e}","n":"{n}"}}"#)
    }

    #[test]
    fn claims_parse_and_round_trip() {
        let c = RuntimeClaims::parse(&doc(&ak(N, "AQAB"), "00ff")).unwrap();
        assert_eq!(c.attestation_key.bits(), 2048);
        assert_eq!(c.user_data, [0x00, 0xff]);
        assert_eq!(c.vm_configuration, None);
        assert_eq!(RuntimeClaims::parse(&c.to_json()).unwrap(), c);
    }

    #[test]
    fn claims_refusals_name_their_cause() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"not json".to_vec(), "EVIDENCE_HCL_VAR_DATA_MALFORMED"),
            (doc(&ak(N, "AQAB"), "0g"), "EVIDENCE_HCL_VAR_DATA_MALFORMED"),
            (
                claims_json(&format!(r#"{{"keys":[{}]}}"#, ak(N, "AQAB"))),
                "EVIDENCE_HCL_VAR_DATA_MALFORMED",
            ),
            (
                claims_json(&format!(
                    r#"{{"keys":[{}],"user-data":"00","user-data":"00"}}"#,
                    ak(N, "AQAB")
                )),
                "EVIDENCE_HCL_VAR_DATA_MALFORMED",
            ),
            (doc("", "00"), "EVIDENCE_HCL_AK_INVALID"),
            (
                doc(&format!("{},{}", ak(N, "AQAB"), ak(N, "AQAB")), "00"),
                "EVIDENCE_HCL_AK_INVALID",
            ),
            (
                doc(&ak(N, "AQAB").replace("\"RSA\"", "\"EC\""), "00"),
                "EVIDENCE_HCL_AK_INVALID",
            ),
            (
                doc(&ak(&format!("AA{N}"), "AQAB"), "00"),
                "EVIDENCE_HCL_AK_INVALID",
            ),
            (doc(&ak(&N[4..], "AQAB"), "00"), "EVIDENCE_HCL_AK_INVALID"),
            (doc(&ak(N, "AQAB="), "00"), "EVIDENCE_HCL_AK_INVALID"),
            (doc(&ak(N, "AAEAAQ"), "00"), "EVIDENCE_HCL_AK_INVALID"),
            (doc(&ak(N, "AQA"), "00"), "EVIDENCE_HCL_AK_INVALID"),
            (
                doc(&ak(N, "AQAB").replace(r#","e":"AQAB""#, ""), "00"),
                "EVIDENCE_HCL_AK_INVALID",
            ),
        ];
        for (bytes, code) in cases {
            let err = RuntimeClaims::parse(&bytes).unwrap_err();
            assert_eq!(
                err.reason_code(),
                code,
                "{}: {err}",
                String::from_utf8_lossy(&bytes)
            );
        }
    }

    #[test]
    fn build_then_parse_is_identity_and_padding_is_allowed() {
        let snp = [7u8; SNP_REPORT_LEN];
        let var = doc(&ak(N, "AQAB"), "00");
        let bytes = HclReport::build(2, &snp, &var);
        let r = HclReport::parse(&bytes).unwrap();
        assert_eq!(r.version(), 2);
        assert_eq!(r.snp_report(), &snp);
        assert_eq!(r.variable_data(), &var[..]);
        let mut padded = bytes.clone();
        padded.resize(2600, 0);
        assert_eq!(HclReport::parse(&padded).unwrap(), r);
        assert_eq!(report_data_for(&var)[..32], r.variable_data_sha256());
        assert_eq!(report_data_for(&var)[32..], [0u8; 32]);
    }

    #[test]
    fn every_truncation_is_refused() {
        let bytes = HclReport::build(1, &[0; SNP_REPORT_LEN], &doc(&ak(N, "AQAB"), "00"));
        for len in 0..bytes.len() {
            let err = HclReport::parse(&bytes[..len]).unwrap_err();
            assert_eq!(err.reason_code(), "EVIDENCE_HCL_MALFORMED", "length {len}");
        }
        let mut big = bytes.clone();
        big.resize(MAX_LEN + 1, 0);
        assert_eq!(
            HclReport::parse(&big).unwrap_err().reason_code(),
            "EVIDENCE_HCL_MALFORMED"
        );
    }

    #[test]
    fn report_type_hash_type_and_sizes_are_checked() {
        let base = HclReport::build(1, &[0; SNP_REPORT_LEN], &doc(&ak(N, "AQAB"), "00"));
        let rd = HEADER_LEN + SNP_REPORT_LEN;
        let with = |at: usize, v: u32| {
            let mut b = base.clone();
            b[at..at + 4].copy_from_slice(&v.to_le_bytes());
            HclReport::parse(&b).unwrap_err()
        };
        assert!(matches!(
            with(rd + 8, 4),
            VtpmRejected::HclNotSnp { name: "TDX", .. }
        ));
        assert!(matches!(
            with(rd + 12, 2),
            VtpmRejected::HclHashType {
                name: "SHA-384",
                ..
            }
        ));
        for (at, v) in [
            (4, 3),
            (8, 0),
            (12, 1),
            (16, 1),
            (rd, 0),
            (rd + 4, 2),
            (rd + 16, u32::MAX),
            (rd + 16, 1),
        ] {
            assert_eq!(
                with(at, v).reason_code(),
                "EVIDENCE_HCL_MALFORMED",
                "{at}={v}"
            );
        }
        let mut pad = base.clone();
        pad.extend_from_slice(&[0, 0, 1]);
        assert!(HclReport::parse(&pad)
            .unwrap_err()
            .to_string()
            .contains("padding"));
    }
}
