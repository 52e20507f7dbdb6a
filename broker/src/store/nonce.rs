//! Single-use nonces: issued by Challenge, burnt by Attest.

use super::StoreError;

/// What consuming a nonce found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NonceOutcome {
    /// Known, unexpired, unused: now burnt. The volumes it was issued for.
    Fresh {
        /// Volumes named in the Challenge.
        volumes: Vec<String>,
    },
    /// Never issued (or purged after expiry).
    Unknown,
    /// Issued but past its expiry.
    Expired,
    /// Consumed before.
    AlreadyUsed,
}

/// The nonces part of a [`Store`](super::Store).
pub trait NonceStore {
    /// Records a fresh nonce issued for `volumes`, valid while
    /// `now < expires_at_unix`. A duplicate nonce is `AlreadyExists`.
    fn insert_nonce(
        &self,
        nonce: &[u8; 32],
        volumes: &[String],
        expires_at_unix: i64,
    ) -> Result<(), StoreError>;

    /// Burns a nonce: exactly one caller ever gets `Fresh` for a nonce, even
    /// across processes sharing the database.
    fn consume_nonce(&self, nonce: &[u8; 32], now_unix: i64) -> Result<NonceOutcome, StoreError>;

    /// Deletes nonces expired at `now_unix`; returns how many.
    fn purge_nonces(&self, now_unix: i64) -> Result<u64, StoreError>;
}
