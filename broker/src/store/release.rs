//! The one write of an Attest whose evidence verified: burn the nonce,
//! append the decision's audit entry, record the rotation sessions of any
//! pending key released, in one transaction ([`Store::commit_attest`]).
//! If the nonce was used before, nothing is written at all.
//!
//! [`Store::commit_attest`]: super::Store::commit_attest

use super::{AuditEvent, AuditId, RotationSessionRecord};

/// What an Attest writes once its evidence verified.
#[derive(Clone, Debug)]
pub struct AttestCommit<'a> {
    /// The Challenge nonce to burn.
    pub nonce: [u8; 32],
    /// Its expiry (the used-nonce record is kept until then).
    pub nonce_expires_at: i64,
    /// The decision's audit entry (allow, deny or error).
    pub audit: &'a AuditEvent,
    /// Rotation sessions of released pending keys (often none).
    pub sessions: &'a [RotationSessionRecord],
}

/// What committing an Attest did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttestCommitted {
    /// Everything written; the audit entry's id.
    Committed(AuditId),
    /// The nonce was used before (a replay): nothing was written.
    NonceAlreadyUsed,
}
