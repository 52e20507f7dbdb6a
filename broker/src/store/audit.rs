//! The append-only audit log, chained under a key only the master key
//! unseals (`audit_hash.rs`).

use std::fmt;
use std::sync::{Arc, RwLock};

use super::{ChainKeying, StoreError};
use crate::keys::SealedKey;

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

/// The audit chain key as the database keeps it: sealed under the master
/// key, with where the keyed chain starts (bound into the seal).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditKeyRecord {
    /// The first entry id MAC'd under the key.
    pub keyed_from: i64,
    /// The hash of entry `keyed_from - 1` (all zero when it is 1).
    pub boundary: [u8; 32],
    /// The key, sealed (`keys::seal_audit_chain_key`).
    pub sealed: SealedKey,
}

/// What [`AuditStore::insert_audit_key`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuditKeyInsert {
    /// The record was stored.
    Created,
    /// The database already holds a chain key (another process made it
    /// first): this one, to be used instead.
    Exists(AuditKeyRecord),
    /// An entry was appended since the record's boundary was read: make it
    /// again from the new head.
    HeadMoved,
}

/// Where a pruned chain starts: its first kept entry and that entry's
/// link to the (removed) entry before it, MAC'd under the chain key
/// ([`ChainKeying::anchor_mac`]), so that verification starts there and
/// neither removing more entries from the front nor moving the anchor
/// goes unnoticed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PruneAnchor {
    /// The first entry kept.
    pub first_id: i64,
    /// Its `prev_hash`.
    pub prev_hash: [u8; 32],
    /// HMAC-SHA256 under the chain key of the two.
    pub mac: [u8; 32],
}

/// What [`AuditStore::prune_audit`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PruneOutcome {
    /// Entries removed (0: nothing was older, nothing changed).
    pub removed: u64,
    /// The first entry kept (the chain's start afterwards).
    pub first_kept: i64,
    /// The `prune` entry recording it, when something was removed.
    pub entry: Option<AuditId>,
}

/// The audit entry of a prune: kind `prune`, what was removed.
pub fn prune_event(
    at_unix: i64,
    client: Option<String>,
    removed: u64,
    before_unix: i64,
    first_kept: i64,
) -> AuditEvent {
    AuditEvent {
        at_unix,
        kind: "prune".into(),
        verdict: "allow".into(),
        volumes: Vec::new(),
        reason_codes: Vec::new(),
        details_json: serde_json::json!({
            "action": "audit.prune",
            "removed": removed,
            "before_unix": before_unix,
            "first_kept_id": first_kept,
        })
        .to_string(),
        client_addr: client,
    }
}

/// The unsealed chain key a store appends and verifies with, once a
/// process holding the master key has installed it.
#[derive(Debug, Default)]
pub(super) struct KeyingSlot(RwLock<Option<Arc<ChainKeying>>>);

impl KeyingSlot {
    pub(super) fn get(&self) -> Option<Arc<ChainKeying>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(super) fn set(&self, k: Arc<ChainKeying>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Some(k);
    }
}

/// The audit log part of a [`Store`](super::Store).
pub trait AuditStore {
    /// Appends an audit entry, chained to the previous one: MAC'd under the
    /// installed chain key. Refused (`Conflict`) when the database has a
    /// chain key and this store has not been given it.
    fn append_audit(&self, event: &AuditEvent) -> Result<AuditId, StoreError>;

    /// Audit entries matching `filter`, by id.
    fn audit_entries(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError>;

    /// Recomputes the whole chain, one page at a time, in one consistent
    /// read; returns the number of entries, or `StoreError::AuditChain`
    /// saying where it breaks. Needs the installed chain key when the
    /// database has one (`Conflict` otherwise).
    fn verify_audit_chain(&self) -> Result<u64, StoreError> {
        self.verify_audit_from(1)
    }

    /// [`AuditStore::verify_audit_chain`] from entry `from_id` to the head
    /// (its link to the entry before it taken as given): the check of the
    /// chain's tail at start. Returns the number of entries checked.
    fn verify_audit_from(&self, from_id: i64) -> Result<u64, StoreError>;

    /// The chain head: the last entry's id and hash (0 and all zero when
    /// the log is empty).
    fn audit_head(&self) -> Result<(i64, [u8; 32]), StoreError>;

    /// The chain key record, if the database has one.
    fn audit_key_record(&self) -> Result<Option<AuditKeyRecord>, StoreError>;

    /// Stores the chain key record, under the lock appends take (so no
    /// entry is appended in between), if the database has none yet and
    /// the head is still entry `record.keyed_from - 1` with hash
    /// `record.boundary`. Of two processes doing this at once, exactly one
    /// creates it; the other gets [`AuditKeyInsert::Exists`].
    fn insert_audit_key(&self, record: &AuditKeyRecord) -> Result<AuditKeyInsert, StoreError>;

    /// Gives the store the unsealed chain key to append and verify with
    /// (`crate::audit_key::load`).
    fn install_audit_key(&self, keying: Arc<ChainKeying>);

    /// The chain key installed, if any.
    fn installed_audit_key(&self) -> Option<Arc<ChainKeying>>;

    /// Where the chain starts after a prune, if it was pruned.
    fn audit_prune_anchor(&self) -> Result<Option<PruneAnchor>, StoreError>;

    /// Retention: in one transaction, under the lock appends take, removes
    /// the oldest entries up to (not including) the first one at or after
    /// `before_unix`, always keeping the newest; records the new start as
    /// a [`PruneAnchor`] MAC'd under the installed chain key (the only
    /// delete the append-only triggers let through is of entries before
    /// it); and appends a `prune` entry ([`prune_event`], naming
    /// `client`). Nothing older: nothing changes. Needs the chain key.
    fn prune_audit(
        &self,
        before_unix: i64,
        at_unix: i64,
        client: Option<String>,
    ) -> Result<PruneOutcome, StoreError>;
}

/// An [`AuditKeyRecord`] from its columns, checking their lengths.
pub(super) fn key_record_from(
    keyed_from: i64,
    boundary: Vec<u8>,
    master_key_id: Vec<u8>,
    nonce: Vec<u8>,
    ciphertext: Vec<u8>,
) -> Result<AuditKeyRecord, StoreError> {
    let bad = |what: &str| StoreError::Corrupt(format!("the audit chain key record's {what}"));
    Ok(AuditKeyRecord {
        keyed_from,
        boundary: boundary
            .try_into()
            .map_err(|_| bad("boundary hash is not 32 bytes"))?,
        sealed: SealedKey {
            master_key_id: crate::keys::MasterKeyId::from_slice(&master_key_id)
                .ok_or_else(|| bad("master key id is not 16 bytes"))?,
            nonce: nonce.try_into().map_err(|_| bad("nonce is not 12 bytes"))?,
            ciphertext,
        },
    })
}

/// The link a tail check starts from: the stored `prev_hash` of entry
/// `from_id`, which must exist.
pub(super) fn tail_start(from_id: i64, prev: Option<Vec<u8>>) -> Result<[u8; 32], StoreError> {
    let missing = || super::AuditChainError {
        at_id: from_id,
        what: "the entry is missing (removed)".into(),
    };
    let prev = prev.ok_or_else(missing)?;
    prev.try_into().map_err(|_| {
        super::AuditChainError {
            at_id: from_id,
            what: "prev_hash is not 32 bytes".into(),
        }
        .into()
    })
}

/// A [`PruneAnchor`] from its columns, checking their lengths.
pub(super) fn prune_anchor_from(
    first_id: i64,
    prev_hash: Vec<u8>,
    mac: Vec<u8>,
) -> Result<PruneAnchor, StoreError> {
    let bad = |what: &str| StoreError::Corrupt(format!("the audit prune anchor's {what}"));
    Ok(PruneAnchor {
        first_id,
        prev_hash: prev_hash
            .try_into()
            .map_err(|_| bad("prev_hash is not 32 bytes"))?,
        mac: mac.try_into().map_err(|_| bad("MAC is not 32 bytes"))?,
    })
}
