//! Rotation sessions: which Attest released which pending key version, so
//! that a `ConfirmRotation` can be checked against that Attest's REPORT_DATA.

use super::StoreError;

/// The store's record of a rotation session: the Attest that released a
/// pending key version, which a `ConfirmRotation` naming this nonce and
/// volume is checked against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RotationSessionRecord {
    /// The Attest's nonce (names the session).
    pub nonce: [u8; 32],
    /// The volume.
    pub volume: String,
    /// The pending version that was released.
    pub version: u32,
    /// REPORT_DATA of that Attest (the proof is bound to it).
    pub report_data: [u8; 64],
    /// The session is usable while `now < expires_at` (Unix seconds).
    pub expires_at: i64,
}

/// What looking a rotation session up found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RotationSessionLookup {
    /// Known and unexpired.
    Live(RotationSessionRecord),
    /// Known but past its expiry.
    Expired,
    /// Never recorded for this nonce and volume (or purged).
    Unknown,
}

/// The rotation sessions part of a [`Store`](super::Store).
pub trait RotationSessionStore {
    /// Records the session of an Attest that released a pending version.
    /// A second record for the same nonce and volume is `AlreadyExists`.
    fn record_rotation_session(&self, session: &RotationSessionRecord) -> Result<(), StoreError>;

    /// The rotation session of `nonce` for `volume`, judged at `now_unix`.
    fn rotation_session(
        &self,
        nonce: &[u8; 32],
        volume: &str,
        now_unix: i64,
    ) -> Result<RotationSessionLookup, StoreError>;

    /// Deletes rotation sessions expired at `now_unix`; returns how many.
    fn purge_rotation_sessions(&self, now_unix: i64) -> Result<u64, StoreError>;
}
