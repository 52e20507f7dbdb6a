//! Used nonces: the one record a Challenge nonce ever leaves.
//!
//! Challenges are stateless (`crate::nonce`: the nonce is a MAC over its
//! expiry, randomness and volume ids), so nothing is written when one is
//! issued. An Attest whose evidence verified burns its nonce by inserting
//! it here once; a second insert of the same nonce is a replay. A record is
//! `(nonce, expires_at)` and nothing else, kept until the nonce's own
//! expiry and pruned off the request path, after which the expiry in the
//! nonce refuses it. This is the only state broker replicas must share for
//! single use; a backend makes it hold with a primary key.

use super::StoreError;

/// What burning a nonce found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NonceBurn {
    /// Not used before: now recorded as used.
    Burnt,
    /// Used before (a replay); nothing changed.
    AlreadyUsed,
}

/// The used-nonces part of a [`Store`](super::Store).
pub trait NonceStore {
    /// Records `nonce` as used until `expires_at_unix`. Exactly one caller
    /// ever gets [`NonceBurn::Burnt`] for a nonce, even across processes
    /// sharing the database. (An Attest burns its nonce through
    /// [`Store::commit_attest`](super::Store::commit_attest), in the same
    /// transaction as its audit entry.)
    fn burn_nonce(&self, nonce: &[u8; 32], expires_at_unix: i64) -> Result<NonceBurn, StoreError>;

    /// Deletes used-nonce records whose nonce expired at `now_unix`
    /// (`expires_at <= now_unix`); returns how many.
    fn purge_used_nonces(&self, now_unix: i64) -> Result<u64, StoreError>;

    /// How many used-nonce records are held (upkeep and tests).
    fn used_nonce_count(&self) -> Result<u64, StoreError>;
}
