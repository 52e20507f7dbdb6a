//! Keys the broker derives from the master key for purposes other than
//! sealing volume keys, each with its own HKDF `info` label so that no two
//! purposes ever share a key:
//!
//! | purpose | used for |
//! | --- | --- |
//! | [`Purpose::NonceMac`] | the MAC that makes a Challenge nonce its own proof of issue (`crate::nonce`) |
//! | [`Purpose::AuditChain`] | the MAC of the audit checkpoint file beside the master key (`crate::audit_anchor`); the chain itself is keyed by a random key sealed in the database (`crate::audit_key`), so old entries outlive a master rotation |
//! | [`Purpose::KeyCheck`] | the key-check value stored in the database, so a wrong master key is refused at start |
//!
//! The derived key lives only inside aws-lc's HMAC context, like a
//! [`Kek`](super::Kek).

use aws_lc_rs::{hkdf, hmac};

use super::{KeyError, MasterKey};

const DERIVE_SALT: &[u8] = b"keybroker/derived-salt/v1";

/// What a derived key is for (its HKDF `info`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// Challenge nonces.
    NonceMac,
    /// The audit checkpoint file.
    AuditChain,
    /// The key-check value.
    KeyCheck,
}

impl Purpose {
    fn info(self) -> &'static [u8] {
        match self {
            Purpose::NonceMac => b"keybroker/nonce-mac/v1",
            Purpose::AuditChain => b"keybroker/audit-chain/v1",
            Purpose::KeyCheck => b"keybroker/key-check/v1",
        }
    }
}

/// HKDF-SHA256(salt = label, ikm = master key, info = purpose) as an
/// HMAC-SHA256 key.
pub fn hmac_key(master: &MasterKey, purpose: Purpose) -> Result<hmac::Key, KeyError> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, DERIVE_SALT).extract(master.expose_secret());
    let info = [purpose.info()];
    let okm = prk
        .expand(&info, hmac::HMAC_SHA256)
        .map_err(|_| KeyError::Crypto("HKDF expand"))?;
    Ok(hmac::Key::from(okm))
}

/// The key-check value of `master`: HMAC-SHA256 under its
/// [`Purpose::KeyCheck`] key of a fixed label. Reveals nothing about the
/// key; equal values mean equal keys.
pub fn key_check_value(master: &MasterKey) -> Result<[u8; 32], KeyError> {
    let tag = hmac::sign(
        &hmac_key(master, Purpose::KeyCheck)?,
        b"keybroker/key-check-value/v1",
    );
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purposes_get_different_keys_and_keys_depend_on_the_master() {
        let m = MasterKey::generate().unwrap();
        let other = MasterKey::generate().unwrap();
        let tag = |k: &hmac::Key| hmac::sign(k, b"x").as_ref().to_vec();
        let n = tag(&hmac_key(&m, Purpose::NonceMac).unwrap());
        let a = tag(&hmac_key(&m, Purpose::AuditChain).unwrap());
        let c = tag(&hmac_key(&m, Purpose::KeyCheck).unwrap());
        assert_ne!(n, a);
        assert_ne!(a, c);
        assert_ne!(n, c);
        assert_eq!(n, tag(&hmac_key(&m, Purpose::NonceMac).unwrap()));
        assert_ne!(n, tag(&hmac_key(&other, Purpose::NonceMac).unwrap()));
    }
}
