//! The REPORT_DATA transcript: what the guest binds into its attestation report.
//!
//! Layout (all integers u32 big-endian; see `docs/protocol.md`):
//!
//! ```text
//! len(label) || label                    label = "keybroker/v1/snp-report-data"
//! PROTOCOL_MAJOR || TRANSCRIPT_REVISION
//! len(nonce) || nonce                    32 bytes
//! len(guest_public_key) || key           32 bytes
//! volume_count
//! for each volume id, in request order: len(id) || id
//! ```
//!
//! REPORT_DATA = SHA-512(transcript), exactly the 64 bytes of the field.

use crate::ids::{GuestPublicKey, Nonce, ReportData, VolumeIds};
use crate::version::PROTOCOL_MAJOR;

/// Domain-separation label at the start of the transcript.
pub const REPORT_DATA_LABEL: &[u8] = b"keybroker/v1/snp-report-data";

/// Revision of the transcript layout within a major version, bound after the
/// major. It is *not* the protocol minor: minor releases keep the transcript
/// unchanged so that peers with different minors compute the same value. A
/// new layout needs a new major.
pub const TRANSCRIPT_REVISION: u32 = 0;

fn put_u32(out: &mut Vec<u8>, n: u32) {
    out.extend_from_slice(&n.to_be_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    // Lengths here are bounded (ids <= 128 bytes, fixed-size keys), so the
    // conversion cannot fail.
    let len = u32::try_from(b.len()).unwrap_or(u32::MAX);
    put_u32(out, len);
    out.extend_from_slice(b);
}

/// The transcript bytes before hashing (exposed to the tests and the docs).
pub(crate) fn transcript(nonce: &Nonce, key: &GuestPublicKey, volumes: &VolumeIds) -> Vec<u8> {
    let mut t = Vec::with_capacity(128 + volumes.len() * 16);
    put_bytes(&mut t, REPORT_DATA_LABEL);
    put_u32(&mut t, PROTOCOL_MAJOR);
    put_u32(&mut t, TRANSCRIPT_REVISION);
    put_bytes(&mut t, nonce.as_bytes());
    put_bytes(&mut t, key.as_bytes());
    // At most MAX_VOLUMES (64).
    put_u32(&mut t, u32::try_from(volumes.len()).unwrap_or(u32::MAX));
    for v in volumes {
        put_bytes(&mut t, v.as_bytes());
    }
    t
}

/// SHA-512 of the transcript of `nonce`, the guest's public key and the
/// requested volumes (in order). The guest requests its report with this as
/// `REPORT_DATA`; the broker recomputes it and compares.
pub fn report_data(nonce: &Nonce, key: &GuestPublicKey, volumes: &VolumeIds) -> ReportData {
    let t = transcript(nonce, key, volumes);
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA512, &t);
    let mut out = [0u8; 64];
    out.copy_from_slice(d.as_ref());
    ReportData::from_bytes(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transcript_starts_with_label_and_versions() {
        let vols = VolumeIds::parse(["root"]).unwrap();
        let t = transcript(
            &Nonce::from_bytes([1; 32]),
            &GuestPublicKey::from_bytes([2; 32]),
            &vols,
        );
        assert_eq!(&t[..4], &28u32.to_be_bytes());
        assert_eq!(&t[4..32], REPORT_DATA_LABEL);
        assert_eq!(&t[32..36], &1u32.to_be_bytes());
        assert_eq!(&t[36..40], &0u32.to_be_bytes());
        assert_eq!(t.len(), 32 + 8 + 36 + 36 + 4 + 4 + 4);
    }
}
