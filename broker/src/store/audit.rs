//! The append-only, hash-chained audit log.

use std::fmt;

use super::StoreError;

/// Audit verdicts the store accepts.
pub const AUDIT_VERDICTS: &[&str] = &["allow", "deny", "error"];

/// One decision to record. Never key material.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEvent {
    /// When (Unix seconds).
    pub at_unix: i64,
    /// What was decided: "challenge", "attest" (lower-case word).
    pub kind: String,
    /// "allow", "deny" or "error".
    pub verdict: String,
    /// Volumes concerned.
    pub volumes: Vec<String>,
    /// Every reason code.
    pub reason_codes: Vec<String>,
    /// Details as a JSON object (claims, report id, ...).
    pub details_json: String,
    /// Peer address, if known.
    pub client_addr: Option<String>,
}

impl AuditEvent {
    /// Checks the fields the store relies on.
    pub fn validate(&self) -> Result<(), StoreError> {
        if self.kind.is_empty()
            || self.kind.len() > 32
            || !self
                .kind
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_' || b == b'-')
        {
            return Err(StoreError::InvalidInput {
                what: "audit kind",
                reason: format!("{:?}: a lower-case word is expected", self.kind),
            });
        }
        if !AUDIT_VERDICTS.contains(&self.verdict.as_str()) {
            return Err(StoreError::InvalidInput {
                what: "audit verdict",
                reason: format!("{:?}: one of allow, deny, error", self.verdict),
            });
        }
        Ok(())
    }
}

/// Id of an audit entry: 1, 2, 3, ... without gaps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AuditId(pub i64);

impl fmt::Display for AuditId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A stored audit entry with its chain hashes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    /// Id.
    pub id: AuditId,
    /// The event.
    pub event: AuditEvent,
    /// Hash of the previous entry ([`GENESIS_HASH`](super::GENESIS_HASH) for the first).
    pub prev_hash: [u8; 32],
    /// [`audit_entry_hash`](super::audit_entry_hash) of this entry.
    pub hash: [u8; 32],
}

/// Selects audit entries; every set field must match. Ordered by id
/// (ascending unless `newest_first`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Entries naming this volume.
    pub volume: Option<String>,
    /// At or after this time (Unix seconds).
    pub since_unix: Option<i64>,
    /// Before this time (Unix seconds).
    pub until_unix: Option<i64>,
    /// This verdict.
    pub verdict: Option<String>,
    /// This kind.
    pub kind: Option<String>,
    /// Ids strictly greater than this (paging forward).
    pub after_id: Option<i64>,
    /// Ids strictly less than this (paging backward).
    pub before_id: Option<i64>,
    /// Newest first (descending ids) instead of oldest first.
    pub newest_first: bool,
    /// At most this many.
    pub limit: Option<u32>,
}

/// The audit log part of a [`Store`](super::Store).
pub trait AuditStore {
    /// Appends an audit entry, chained to the previous one.
    fn append_audit(&self, event: &AuditEvent) -> Result<AuditId, StoreError>;

    /// Audit entries matching `filter`, by id.
    fn audit_entries(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError>;

    /// Recomputes the whole chain; returns the number of entries, or
    /// `StoreError::AuditChain` saying where it breaks.
    fn verify_audit_chain(&self) -> Result<u64, StoreError>;
}
