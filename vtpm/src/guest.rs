//! The guest's side: fetching Azure vTPM evidence through a [`Tpm`].
//!
//! 1. [`write_user_data`]: the 64-byte binding value goes to NV index
//!    0x01400002 (defined first if absent, as Microsoft's guest tools do).
//!    The paravisor notices the write, asks the AMD secure processor for a
//!    new SNP report and rewrites NV index 0x01400001.
//! 2. [`read_hcl_report`]: NV index 0x01400001, read in chunks.
//! 3. [`quote`]: TPM2_Quote by the attestation key at 0x81000003 over
//!    SHA-256 PCRs 0–23 with the binding value as qualifying data, then
//!    TPM2_PCR_Read of the same PCRs; if a PCR changed in between (the
//!    values do not hash to the quote's pcrDigest), both are taken again.

use crate::tpm::attest::QuoteAttest;
use crate::tpm::pcr::{pcr_digest_sha256, PcrSelection};
use crate::tpm::public::NvPublic;
use crate::tpm::signature::QuoteSignature;
use crate::tpm::{
    Tpm, TpmError, AZURE_AK_HANDLE, AZURE_HCL_REPORT_NV_INDEX, AZURE_USER_DATA_LEN,
    AZURE_USER_DATA_NV_INDEX,
};
use std::io::{Read, Write};

/// How often [`quote`] tries when PCRs keep changing under it.
const QUOTE_ATTEMPTS: usize = 3;

/// A quote with the PCR values it covers, as the guest sends them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestQuote {
    /// The `TPMS_ATTEST` bytes, as the TPM returned them.
    pub message: Vec<u8>,
    /// The signature over them.
    pub signature: QuoteSignature,
    /// The PCR values in selection order.
    pub pcr_values: Vec<[u8; 32]>,
}

/// Write `data` to Azure's user data index 0x01400002, defining it (64
/// bytes, owner read/write) if it does not exist. An index of another size
/// is left alone and reported.
pub fn write_user_data<T: Read + Write>(
    tpm: &mut Tpm<T>,
    data: &[u8; AZURE_USER_DATA_LEN],
) -> Result<(), TpmError> {
    let size = u16::try_from(AZURE_USER_DATA_LEN).expect("64");
    match tpm.nv_read_public(AZURE_USER_DATA_NV_INDEX)? {
        None => tpm.nv_define_space(&NvPublic::owner_read_write(AZURE_USER_DATA_NV_INDEX, size))?,
        Some(p) if p.data_size == size => {}
        Some(p) => {
            return Err(TpmError::Unexpected(format!(
                "NV index 0x01400002 is defined with {} bytes, not {AZURE_USER_DATA_LEN}; \
                 undefine it (tpm2_nvundefine -C o 0x01400002) and try again",
                p.data_size
            )))
        }
    }
    tpm.nv_write_all(AZURE_USER_DATA_NV_INDEX, data)
}

/// The HCL report (NV index 0x01400001), whole, with its padding.
pub fn read_hcl_report<T: Read + Write>(tpm: &mut Tpm<T>) -> Result<Vec<u8>, TpmError> {
    tpm.nv_read_all(AZURE_HCL_REPORT_NV_INDEX)
}

/// A quote by the AK at 0x81000003 over SHA-256 PCRs 0–23 with
/// `qualifying_data`, and those PCRs' values.
pub fn quote<T: Read + Write>(
    tpm: &mut Tpm<T>,
    qualifying_data: &[u8],
) -> Result<GuestQuote, TpmError> {
    quote_with(
        tpm,
        AZURE_AK_HANDLE,
        qualifying_data,
        &PcrSelection::sha256_all(),
    )
}

/// [`quote`] with another key and selection (SHA-256 bank only).
pub fn quote_with<T: Read + Write>(
    tpm: &mut Tpm<T>,
    key: u32,
    qualifying_data: &[u8],
    selection: &PcrSelection,
) -> Result<GuestQuote, TpmError> {
    for _ in 0..QUOTE_ATTEMPTS {
        let q = tpm.quote(key, qualifying_data, None, selection)?;
        let attest = QuoteAttest::parse(&q.attest)
            .map_err(|e| TpmError::Unexpected(format!("the TPM's quote does not parse: {e}")))?;
        let values = tpm.pcr_read_sha256(&attest.pcr_select)?;
        if attest.pcr_digest == pcr_digest_sha256(&values) {
            return Ok(GuestQuote {
                message: q.attest,
                signature: q.signature,
                pcr_values: values,
            });
        }
    }
    Err(TpmError::Unexpected(format!(
        "PCRs kept changing between TPM2_Quote and TPM2_PCR_Read ({QUOTE_ATTEMPTS} tries)"
    )))
}
