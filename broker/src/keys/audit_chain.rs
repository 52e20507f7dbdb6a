//! The audit chain key: 32 random bytes, made once per database, kept in
//! the database only sealed under the master key (AES-256-GCM, like a
//! volume key), never derived from the master key: after a master rotation
//! and the retired key file's removal, the old entries still verify under
//! the same chain key, re-sealed under the new master key.
//!
//! The sealed record binds, as associated data, where the keyed chain
//! starts (`keyed_from`, the first entry id MAC'd under the key) and the
//! hash of the entry before it (the last plain SHA-256 entry of an
//! upgraded database, or all zero), so neither the boundary nor the legacy
//! prefix can be moved or rewritten without the master key.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::hkdf;
use zeroize::{Zeroize, Zeroizing};

use super::{check_sealed, fill_random, KeyError, MasterKey, SealedKey, TAG_LEN};

/// Length of the audit chain key.
pub const AUDIT_CHAIN_KEY_LEN: usize = 32;

const KEK_SALT: &[u8] = b"keybroker/kek-salt/v1";
const KEK_INFO: &[u8] = b"keybroker/audit-chain-kek/v1";
const AAD_LABEL: &[u8] = b"keybroker/sealed-audit-chain-key/v1";

/// The audit chain key. No `Clone`, `Debug` or `Serialize`; zeroized on
/// drop; read only through `expose_secret()`.
pub struct AuditChainKey {
    bytes: Box<[u8; AUDIT_CHAIN_KEY_LEN]>,
}

impl Drop for AuditChainKey {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

impl AuditChainKey {
    /// A fresh random key.
    pub fn generate() -> Result<Self, KeyError> {
        let mut bytes = Box::new([0u8; AUDIT_CHAIN_KEY_LEN]);
        fill_random(&mut bytes[..])?;
        Ok(AuditChainKey { bytes })
    }

    /// The key bytes, for the chain's HMAC; never log or store them.
    pub fn expose_secret(&self) -> &[u8; AUDIT_CHAIN_KEY_LEN] {
        &self.bytes
    }
}

fn kek(master: &MasterKey) -> Result<LessSafeKey, KeyError> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, KEK_SALT).extract(master.expose_secret());
    let okm = prk
        .expand(&[KEK_INFO], &AES_256_GCM)
        .map_err(|_| KeyError::Crypto("HKDF expand"))?;
    Ok(LessSafeKey::new(UnboundKey::from(okm)))
}

fn aad(keyed_from: i64, boundary: &[u8; 32], master: &MasterKey) -> Vec<u8> {
    let mut a = Vec::with_capacity(AAD_LABEL.len() + 8 + 32 + 16);
    a.extend_from_slice(AAD_LABEL);
    a.extend_from_slice(&keyed_from.to_be_bytes());
    a.extend_from_slice(boundary);
    a.extend_from_slice(master.id().as_bytes());
    a
}

/// Seals `key` under `master`, bound to `keyed_from` and `boundary` (the
/// hash of entry `keyed_from - 1`).
pub fn seal_audit_chain_key(
    master: &MasterKey,
    key: &AuditChainKey,
    keyed_from: i64,
    boundary: &[u8; 32],
) -> Result<SealedKey, KeyError> {
    let mut nonce = [0u8; NONCE_LEN];
    fill_random(&mut nonce)?;
    let mut buf = Vec::with_capacity(AUDIT_CHAIN_KEY_LEN + TAG_LEN);
    buf.extend_from_slice(key.expose_secret());
    kek(master)?
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(keyed_from, boundary, master)),
            &mut buf,
        )
        .map_err(|_| KeyError::Crypto("AES-GCM seal"))?;
    Ok(SealedKey {
        master_key_id: master.id(),
        nonce,
        ciphertext: buf,
    })
}

/// Opens the sealed audit chain key. Refuses a record sealed under another
/// master key, changed, or read with another `keyed_from` or `boundary`
/// than it was sealed with.
pub fn unseal_audit_chain_key(
    master: &MasterKey,
    keyed_from: i64,
    boundary: &[u8; 32],
    sealed: &SealedKey,
) -> Result<AuditChainKey, KeyError> {
    check_sealed(
        master,
        sealed,
        AUDIT_CHAIN_KEY_LEN,
        "the sealed audit chain key",
    )?;
    let mut buf = Zeroizing::new(sealed.ciphertext.clone());
    let plain = kek(master)?
        .open_in_place(
            Nonce::assume_unique_for_key(sealed.nonce),
            Aad::from(aad(keyed_from, boundary, master)),
            &mut buf,
        )
        .map_err(|_| KeyError::Malformed {
            what: "the sealed audit chain key does not authenticate: it, or where the keyed \
                   chain starts, was changed"
                .into(),
        })?;
    let mut bytes = Box::new([0u8; AUDIT_CHAIN_KEY_LEN]);
    bytes.copy_from_slice(plain);
    Ok(AuditChainKey { bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seal_binds_the_boundary_and_the_master_key() {
        let m = MasterKey::generate().unwrap();
        let k = AuditChainKey::generate().unwrap();
        let b = [7u8; 32];
        let s = seal_audit_chain_key(&m, &k, 5, &b).unwrap();
        let back = unseal_audit_chain_key(&m, 5, &b, &s).unwrap();
        assert_eq!(back.expose_secret(), k.expose_secret());
        assert!(
            unseal_audit_chain_key(&m, 6, &b, &s).is_err(),
            "keyed_from moved"
        );
        assert!(
            unseal_audit_chain_key(&m, 5, &[8u8; 32], &s).is_err(),
            "boundary changed"
        );
        let other = MasterKey::generate().unwrap();
        assert!(matches!(
            unseal_audit_chain_key(&other, 5, &b, &s),
            Err(KeyError::WrongMasterKey { .. })
        ));
        let mut bad = s.clone();
        bad.ciphertext[3] ^= 1;
        assert!(unseal_audit_chain_key(&m, 5, &b, &bad).is_err());
        bad.ciphertext.pop();
        assert!(matches!(
            unseal_audit_chain_key(&m, 5, &b, &bad),
            Err(KeyError::Malformed { .. })
        ));
    }
}
