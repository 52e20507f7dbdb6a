//! Stateless Challenge nonces: a nonce carries its own proof of issue, so
//! a Challenge writes nothing anywhere.
//!
//! Layout of the 32 bytes (big-endian):
//!
//! | bytes | field |
//! | --- | --- |
//! | 0..8 | expiry, Unix seconds (u64) |
//! | 8..16 | 64 random bits |
//! | 16..32 | HMAC-SHA256 tag, truncated to 128 bits |
//!
//! The tag is made under a key derived from the master key
//! ([`Purpose::NonceMac`]) over a label, bytes 0..16 and the requested
//! volume ids (count, then each length-prefixed, in order). So a nonce is
//! valid only for the volumes its Challenge named, only until its expiry,
//! and only on brokers holding the same master key (replicas sharing a
//! store do). Forging one takes 2^128 online guesses.
//!
//! Single use is the store's job: an Attest whose evidence verified burns
//! the nonce in the same transaction as its audit entry
//! ([`Store::commit_attest`](crate::store::Store::commit_attest)); the
//! used-nonce record is kept until the nonce's expiry and then pruned,
//! after which the expiry alone refuses it.

use std::sync::{Arc, RwLock};

use aws_lc_rs::hmac;
use keybroker_proto::{Nonce, VolumeIds};

use crate::error::NonceRejected;
use crate::keys::derived::{hmac_key, Purpose};
use crate::keys::{KeyError, Keyring, MasterKeyId};

const LABEL: &[u8] = b"keybroker/challenge-nonce/v1";
const TAG_LEN: usize = 16;

/// Issues and checks Challenge nonces under the keyring's keys.
pub struct NonceMinter {
    keyring: Arc<Keyring>,
    /// Derived MAC keys by master key id (HKDF once per master key).
    keys: RwLock<Vec<(MasterKeyId, hmac::Key)>>,
}

impl NonceMinter {
    /// A minter over `keyring`: issues under its current key, accepts
    /// nonces made under any key it holds.
    pub fn new(keyring: Arc<Keyring>) -> Self {
        NonceMinter {
            keyring,
            keys: RwLock::new(Vec::new()),
        }
    }

    fn mac_key(&self, id: MasterKeyId) -> Result<hmac::Key, KeyError> {
        if let Some((_, k)) = self
            .keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(i, _)| *i == id)
        {
            return Ok(k.clone());
        }
        let master = self
            .keyring
            .key(id)
            .ok_or(KeyError::Crypto("master key vanished from the keyring"))?;
        let k = hmac_key(&master, Purpose::NonceMac)?;
        let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
        keys.retain(|(i, _)| *i != id);
        keys.push((id, k.clone()));
        Ok(k)
    }

    /// A fresh nonce for `volumes`, valid until `expires_at_unix`.
    pub fn issue(&self, volumes: &VolumeIds, expires_at_unix: i64) -> Result<Nonce, KeyError> {
        let mut b = [0u8; 32];
        b[..8].copy_from_slice(&(expires_at_unix.max(0) as u64).to_be_bytes());
        aws_lc_rs::rand::fill(&mut b[8..16])
            .map_err(|_| KeyError::Crypto("the OS random number generator failed"))?;
        let key = self.mac_key(self.keyring.current_id())?;
        let tag = tag(&key, &b[..16], volumes);
        b[16..].copy_from_slice(&tag.as_ref()[..TAG_LEN]);
        Ok(Nonce::from_bytes(b))
    }

    /// Checks that `nonce` was issued by a broker holding one of this
    /// keyring's keys, for exactly `volumes`, and is unexpired at
    /// `now_unix`. Returns its expiry. Says nothing about single use.
    pub fn check(
        &self,
        nonce: &Nonce,
        volumes: &VolumeIds,
        now_unix: i64,
    ) -> Result<i64, NonceRejected> {
        let b = nonce.as_bytes();
        let authentic = self.keyring.all_keys().iter().any(|k| {
            self.mac_key(k.id()).is_ok_and(|key| {
                let t = tag(&key, &b[..16], volumes);
                // Constant-time comparison of the truncated tag.
                subtle::ConstantTimeEq::ct_eq(&t.as_ref()[..TAG_LEN], &b[16..]).into()
            })
        });
        if !authentic {
            return Err(NonceRejected::Unknown);
        }
        let mut e = [0u8; 8];
        e.copy_from_slice(&b[..8]);
        let expires_at = i64::try_from(u64::from_be_bytes(e)).unwrap_or(i64::MAX);
        if now_unix >= expires_at {
            return Err(NonceRejected::Expired);
        }
        Ok(expires_at)
    }
}

fn tag(key: &hmac::Key, head: &[u8], volumes: &VolumeIds) -> hmac::Tag {
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(LABEL);
    ctx.update(head);
    let n = u32::try_from(volumes.len()).unwrap_or(u32::MAX);
    ctx.update(&n.to_be_bytes());
    for v in volumes.iter() {
        let id = v.as_str().as_bytes();
        ctx.update(&u32::try_from(id.len()).unwrap_or(u32::MAX).to_be_bytes());
        ctx.update(id);
    }
    ctx.sign()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::MasterKey;

    fn vols(names: &[&str]) -> VolumeIds {
        VolumeIds::parse(names.iter().copied()).unwrap()
    }

    fn minter() -> NonceMinter {
        NonceMinter::new(Arc::new(Keyring::from_key(MasterKey::generate().unwrap())))
    }

    #[test]
    fn a_nonce_checks_for_its_volumes_until_its_expiry() {
        let m = minter();
        let v = vols(&["root", "data"]);
        let n = m.issue(&v, 1_000).unwrap();
        assert_eq!(m.check(&n, &v, 999), Ok(1_000));
        assert_eq!(m.check(&n, &v, 1_000), Err(NonceRejected::Expired));
        // Other volumes, other order, fewer volumes: not this nonce.
        for other in [
            vols(&["data", "root"]),
            vols(&["root"]),
            vols(&["root", "datb"]),
        ] {
            assert_eq!(m.check(&n, &other, 0), Err(NonceRejected::Unknown));
        }
        assert_ne!(m.issue(&v, 1_000).unwrap(), n, "random part differs");
    }

    #[test]
    fn any_changed_bit_or_another_key_is_refused() {
        let m = minter();
        let v = vols(&["root"]);
        let n = m.issue(&v, 5_000).unwrap();
        for i in 0..256 {
            let mut b = *n.as_bytes();
            b[i / 8] ^= 1 << (i % 8);
            assert_eq!(
                m.check(&Nonce::from_bytes(b), &v, 0),
                Err(NonceRejected::Unknown),
                "bit {i}"
            );
        }
        assert_eq!(minter().check(&n, &v, 0), Err(NonceRejected::Unknown));
        assert_eq!(
            m.check(&Nonce::from_bytes([0; 32]), &v, 0),
            Err(NonceRejected::Unknown)
        );
    }
}
