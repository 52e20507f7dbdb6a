//! The rotation proof: how a guest shows the broker, in the session of the
//! Attest that released a pending key, that it holds that key and has
//! enrolled it (phase 2 of volume key rotation, `docs/protocol.md`).
//!
//! ```text
//! proof_key = HKDF-SHA256(salt = ROTATION_PROOF_SALT, ikm = pending volume key,
//!                         info = len(volume) || volume || version)       32 bytes
//! message   = len(label) || label || report_data (64) || len(volume) || volume || version
//! proof     = HMAC-SHA256(proof_key, message)                              32 bytes
//! ```
//!
//! All integers are u32 big-endian. `report_data` is the REPORT_DATA of the
//! Attest that released the key, so a proof made in one session is worthless
//! in another, and `version` is bound so that a proof for one version cannot
//! promote another. Only the attested guest can compute it: the key reached
//! it wrapped to the key its signed report binds.

use aws_lc_rs::{hkdf, hmac};

use crate::ids::{ReportData, VolumeId};

/// Domain-separation label of the proof message.
pub const ROTATION_PROOF_LABEL: &[u8] = b"keybroker/v1/rotation-proof";
/// HKDF salt of the proof key.
pub const ROTATION_PROOF_SALT: &[u8] = b"keybroker/v1/rotation-proof-key";
/// Length of a proof in bytes.
pub const ROTATION_PROOF_LEN: usize = 32;

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    // Volume ids are at most 128 bytes and labels are constants.
    out.extend_from_slice(&u32::try_from(b.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(b);
}

fn proof_key(volume_key: &[u8], volume: &VolumeId, version: u32) -> hmac::Key {
    let mut info = Vec::with_capacity(8 + volume.as_bytes().len());
    put_bytes(&mut info, volume.as_bytes());
    info.extend_from_slice(&version.to_be_bytes());
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, ROTATION_PROOF_SALT).extract(volume_key);
    let info_parts = [info.as_slice()];
    // expand() fails only for an output longer than 255 hash lengths; 32 is fine.
    let okm = prk
        .expand(&info_parts, hmac::HMAC_SHA256)
        .expect("HKDF-SHA256 expand to one HMAC key length");
    hmac::Key::from(okm)
}

fn message(report_data: &ReportData, volume: &VolumeId, version: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(200);
    put_bytes(&mut m, ROTATION_PROOF_LABEL);
    m.extend_from_slice(report_data.as_bytes());
    put_bytes(&mut m, volume.as_bytes());
    m.extend_from_slice(&version.to_be_bytes());
    m
}

/// The proof a guest sends in `ConfirmRotation` for the pending `version` of
/// `volume`, whose key it received in the session with `report_data`.
pub fn rotation_proof(
    volume_key: &[u8],
    report_data: &ReportData,
    volume: &VolumeId,
    version: u32,
) -> [u8; ROTATION_PROOF_LEN] {
    let tag = hmac::sign(
        &proof_key(volume_key, volume, version),
        &message(report_data, volume, version),
    );
    let mut out = [0u8; ROTATION_PROOF_LEN];
    out.copy_from_slice(tag.as_ref());
    out
}

/// Checks a proof in constant time (the broker's side).
pub fn verify_rotation_proof(
    volume_key: &[u8],
    report_data: &ReportData,
    volume: &VolumeId,
    version: u32,
    proof: &[u8],
) -> bool {
    hmac::verify(
        &proof_key(volume_key, volume, version),
        &message(report_data, volume, version),
        proof,
    )
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vid(s: &str) -> VolumeId {
        VolumeId::new(s).unwrap()
    }

    #[test]
    fn proof_verifies_only_for_its_key_session_volume_and_version() {
        let key = [7u8; 64];
        let rd = ReportData::from_bytes([1u8; 64]);
        let p = rotation_proof(&key, &rd, &vid("root"), 2);
        assert!(verify_rotation_proof(&key, &rd, &vid("root"), 2, &p));
        let other_key = [8u8; 64];
        assert!(!verify_rotation_proof(&other_key, &rd, &vid("root"), 2, &p));
        let other_rd = ReportData::from_bytes([2u8; 64]);
        assert!(!verify_rotation_proof(&key, &other_rd, &vid("root"), 2, &p));
        assert!(!verify_rotation_proof(&key, &rd, &vid("data"), 2, &p));
        assert!(!verify_rotation_proof(&key, &rd, &vid("root"), 3, &p));
        assert!(!verify_rotation_proof(&key, &rd, &vid("root"), 2, &p[..31]));
        assert!(!verify_rotation_proof(&key, &rd, &vid("root"), 2, &[]));
        let mut flipped = p;
        flipped[0] ^= 1;
        assert!(!verify_rotation_proof(&key, &rd, &vid("root"), 2, &flipped));
    }

    #[test]
    fn proof_matches_an_independent_computation() {
        // HKDF and HMAC recomputed step by step with the digest primitives,
        // so a change of layout cannot go unnoticed.
        use aws_lc_rs::digest::{digest, SHA256};
        fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
            let mut k = [0u8; 64];
            k[..key.len()].copy_from_slice(key);
            let mut inner = k.iter().map(|b| b ^ 0x36).collect::<Vec<_>>();
            inner.extend_from_slice(msg);
            let ih = digest(&SHA256, &inner);
            let mut outer = k.iter().map(|b| b ^ 0x5c).collect::<Vec<_>>();
            outer.extend_from_slice(ih.as_ref());
            let mut out = [0u8; 32];
            out.copy_from_slice(digest(&SHA256, &outer).as_ref());
            out
        }
        let key = [0x42u8; 64];
        let rd = ReportData::from_bytes([0x99u8; 64]);
        let prk = hmac_sha256(ROTATION_PROOF_SALT, &key);
        let mut info = Vec::new();
        info.extend_from_slice(&4u32.to_be_bytes());
        info.extend_from_slice(b"root");
        info.extend_from_slice(&5u32.to_be_bytes());
        info.push(1);
        let okm = hmac_sha256(&prk, &info);
        let mut msg = Vec::new();
        msg.extend_from_slice(&(ROTATION_PROOF_LABEL.len() as u32).to_be_bytes());
        msg.extend_from_slice(ROTATION_PROOF_LABEL);
        msg.extend_from_slice(&[0x99u8; 64]);
        msg.extend_from_slice(&4u32.to_be_bytes());
        msg.extend_from_slice(b"root");
        msg.extend_from_slice(&5u32.to_be_bytes());
        assert_eq!(
            rotation_proof(&key, &rd, &vid("root"), 5),
            hmac_sha256(&okm, &msg)
        );
    }
}
