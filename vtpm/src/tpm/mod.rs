//! TPM 2.0 structures and commands, written and parsed by hand.
//!
//! The TCG "TPM 2.0 Library" specification, Part 2 (Structures) and Part 3
//! (Commands), defines everything here; section numbers in the doc
//! comments refer to revision 1.59. All integers are big-endian.
//!
//! - [`attest`]: `TPMS_ATTEST` of a quote (`TPM_ST_ATTEST_QUOTE`), as the
//!   TPM signs it;
//! - [`pcr`]: `TPML_PCR_SELECTION` and the quote's PCR digest;
//! - [`signature`]: `TPMT_SIGNATURE` (RSASSA and RSAPSS with SHA-256) and
//!   its verification with an RSA public key;
//! - [`public`]: `TPMT_PUBLIC` of an RSA key and `TPMS_NV_PUBLIC`;
//! - [`commands`]: command buffers and response parsers for the commands a
//!   guest needs (NV_ReadPublic, NV_Read, NV_Write, NV_DefineSpace, Quote,
//!   PCR_Read, GetCapability) and those that provision a simulated vTPM
//!   (CreatePrimary, EvictControl, ReadPublic, FlushContext);
//! - [`device`]: [`Tpm`], which sends them over any `Read + Write`
//!   transport (`/dev/tpmrm0`, a swtpm socket); [`transport::open`] opens
//!   either by path.
//!
//! Parsers check every length against the largest value the structure
//! allows and refuse trailing bytes; they never decide policy.

pub mod attest;
pub mod commands;
pub mod device;
pub mod pcr;
pub mod public;
pub mod signature;
pub mod transport;
mod wire;

pub use device::{Tpm, TpmError};
pub use wire::WireError;

/// `TPM_ST_NO_SESSIONS`: a command or response without an authorization area.
pub const TPM_ST_NO_SESSIONS: u16 = 0x8001;
/// `TPM_ST_SESSIONS`: a command or response with an authorization area.
pub const TPM_ST_SESSIONS: u16 = 0x8002;
/// `TPM_ST_ATTEST_QUOTE`: the type of a `TPMS_ATTEST` made by TPM2_Quote.
pub const TPM_ST_ATTEST_QUOTE: u16 = 0x8018;
/// `TPM_GENERATED_VALUE`: the magic that starts every `TPMS_ATTEST` the TPM
/// signs ("\xffTCG"), so that a restricted key never signs outside data
/// that looks like attestation.
pub const TPM_GENERATED_VALUE: u32 = 0xff54_4347;

/// `TPM_ALG_RSA`.
pub const TPM_ALG_RSA: u16 = 0x0001;
/// `TPM_ALG_SHA1`.
pub const TPM_ALG_SHA1: u16 = 0x0004;
/// `TPM_ALG_AES`.
pub const TPM_ALG_AES: u16 = 0x0006;
/// `TPM_ALG_SHA256`.
pub const TPM_ALG_SHA256: u16 = 0x000b;
/// `TPM_ALG_SHA384`.
pub const TPM_ALG_SHA384: u16 = 0x000c;
/// `TPM_ALG_SHA512`.
pub const TPM_ALG_SHA512: u16 = 0x000d;
/// `TPM_ALG_NULL`.
pub const TPM_ALG_NULL: u16 = 0x0010;
/// `TPM_ALG_RSASSA` (RSASSA-PKCS1-v1_5).
pub const TPM_ALG_RSASSA: u16 = 0x0014;
/// `TPM_ALG_RSAES` (RSAES-PKCS1-v1_5).
pub const TPM_ALG_RSAES: u16 = 0x0015;
/// `TPM_ALG_RSAPSS` (RSASSA-PSS).
pub const TPM_ALG_RSAPSS: u16 = 0x0016;
/// `TPM_ALG_OAEP` (RSAES-OAEP).
pub const TPM_ALG_OAEP: u16 = 0x0017;
/// `TPM_ALG_CFB`.
pub const TPM_ALG_CFB: u16 = 0x0043;

/// `TPM_RH_OWNER`: the owner (storage) hierarchy.
pub const TPM_RH_OWNER: u32 = 0x4000_0001;
/// `TPM_RS_PW`: the password authorization session.
pub const TPM_RS_PW: u32 = 0x4000_0009;

/// Azure's vTPM NV index that holds the HCL report (paravisor report with
/// the SNP report inside), refreshed when [`AZURE_USER_DATA_NV_INDEX`] is
/// written.
pub const AZURE_HCL_REPORT_NV_INDEX: u32 = 0x0140_0001;
/// Azure's vTPM NV index the guest writes its 64 bytes of user data to; the
/// paravisor then fetches a new SNP report and puts the data, hex encoded,
/// into the `user-data` field of the variable data.
pub const AZURE_USER_DATA_NV_INDEX: u32 = 0x0140_0002;
/// Size of the user data index, as Microsoft's guest tools define it.
pub const AZURE_USER_DATA_LEN: usize = 64;
/// Persistent handle of Azure's vTPM attestation key (the `HCLAkPub` of the
/// variable data).
pub const AZURE_AK_HANDLE: u32 = 0x8100_0003;

/// Name of a `TPM_ALG_ID`, for messages.
pub fn alg_name(alg: u16) -> &'static str {
    match alg {
        TPM_ALG_RSA => "RSA",
        TPM_ALG_SHA1 => "SHA-1",
        TPM_ALG_AES => "AES",
        TPM_ALG_SHA256 => "SHA-256",
        TPM_ALG_SHA384 => "SHA-384",
        TPM_ALG_SHA512 => "SHA-512",
        TPM_ALG_NULL => "NULL",
        TPM_ALG_RSASSA => "RSASSA",
        TPM_ALG_RSAES => "RSAES",
        TPM_ALG_RSAPSS => "RSAPSS",
        TPM_ALG_OAEP => "OAEP",
        TPM_ALG_CFB => "CFB",
        0x0018 => "ECDSA",
        0x0023 => "ECC",
        _ => "unknown",
    }
}

/// Digest size of a hash algorithm, `None` for an unknown one.
pub fn digest_len(alg: u16) -> Option<usize> {
    match alg {
        TPM_ALG_SHA1 => Some(20),
        TPM_ALG_SHA256 => Some(32),
        TPM_ALG_SHA384 => Some(48),
        TPM_ALG_SHA512 => Some(64),
        _ => None,
    }
}

/// Largest digest (`sizeof(TPMU_HA)`): SHA-512.
pub(crate) const MAX_DIGEST: usize = 64;
/// `sizeof(TPMT_HA)`: the bound of `TPM2B_DATA` and `TPM2B_NAME`.
pub(crate) const MAX_TPMT_HA: usize = 2 + MAX_DIGEST;
/// `MAX_RSA_KEY_BYTES` for 4096-bit keys, the largest a TPM holds.
pub(crate) const MAX_RSA_KEY_BYTES: usize = 512;
