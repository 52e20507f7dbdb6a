//! Key-check values: which master keys this database belongs to, so that
//! a broker started with another master key is refused at start rather
//! than failing every Attest (`crate::startup`).

use super::StoreError;
use crate::keys::MasterKeyId;

/// The key-check value of one master key: an HMAC under a key derived from
/// it (`keys::derived::key_check_value`), safe to store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyCheck {
    /// The master key's public id.
    pub master_key_id: MasterKeyId,
    /// Its key-check value.
    pub kcv: [u8; 32],
}

/// The key-check part of a [`Store`](super::Store).
pub trait KeyCheckStore {
    /// Every key-check value recorded, by id.
    fn key_checks(&self) -> Result<Vec<KeyCheck>, StoreError>;

    /// Records a key-check value. Recording the same one again is a no-op;
    /// another value for a recorded id is `Conflict`.
    fn put_key_check(&self, check: &KeyCheck) -> Result<(), StoreError>;
}
