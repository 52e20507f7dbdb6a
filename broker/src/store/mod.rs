//! Storage: one interface ([`Store`]), one embedded implementation
//! ([`SqliteStore`]), one conformance suite ([`conformance`]) that every
//! implementation must pass.
//!
//! The store holds single-use nonces, policies (as text: validation is the
//! policy module's job), volumes with their sealed key versions, and the
//! append-only, hash-chained audit log. It never holds key material in the
//! clear and never the master key: only [`SealedKey`] records.
//!
//! **Architecture invariant:** every guarantee that must hold across broker
//! replicas is made by the database, not by a lock in this process. A nonce
//! is burnt by one conditional `UPDATE ... WHERE used = 0 ... RETURNING`, so
//! two replicas sharing a PostgreSQL database cannot both accept it; the
//! audit chain head is one row updated in the same transaction as each
//! append (`SELECT ... FOR UPDATE` on PostgreSQL), so appends serialize.
//!
//! The trait is synchronous and object-safe; the gRPC layer calls it inline
//! (SQLite operations take microseconds) or from `spawn_blocking`.

mod audit_hash;
pub mod conformance;
mod sqlite;
#[cfg(test)]
mod tests;

use std::fmt;

use crate::keys::{MasterKeyId, SealedKey};

pub use audit_hash::{audit_entry_hash, verify_chain, GENESIS_HASH};
pub use sqlite::SqliteStore;

/// Longest volume or policy name, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// Errors of a store. Carries names and what went wrong, never key bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The named object does not exist.
    #[error("{what} {name:?} does not exist")]
    NotFound {
        /// "volume", "policy", "key version".
        what: &'static str,
        /// Its name.
        name: String,
    },
    /// The named object exists already.
    #[error("{what} {name:?} already exists")]
    AlreadyExists {
        /// "volume", ...
        what: &'static str,
        /// Its name.
        name: String,
    },
    /// The operation does not apply to the object's current state (e.g.
    /// deleting an enabled volume, promoting a version that is not pending).
    #[error("{0}")]
    Conflict(String),
    /// An argument is not acceptable (name syntax, verdict, ...).
    #[error("invalid {what}: {reason}")]
    InvalidInput {
        /// Which argument.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The database failed (I/O, locking, SQL). The text is the backend's.
    #[error("store backend error: {0}")]
    Backend(String),
    /// The database holds something this code cannot have written.
    #[error("store is corrupt: {0}")]
    Corrupt(String),
    /// The audit chain does not verify.
    #[error(transparent)]
    AuditChain(#[from] AuditChainError),
}

/// Where and how the audit chain is broken.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("audit chain broken at entry {at_id}: {what}")]
pub struct AuditChainError {
    /// The first entry id at which verification failed.
    pub at_id: i64,
    /// What is wrong there.
    pub what: String,
}

/// Checks a volume or policy name: 1 to 128 bytes of `[A-Za-z0-9._-]`
/// (the same rule as the protocol's volume ids).
pub fn validate_name(what: &'static str, name: &str) -> Result<(), StoreError> {
    let bad = |reason: &str| {
        Err(StoreError::InvalidInput {
            what,
            reason: format!("{name:?}: {reason}"),
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("longer than 128 bytes");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return bad("only letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

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

/// A stored policy: its text and revision (1 for the first `put_policy`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredPolicy {
    /// Name.
    pub name: String,
    /// Revision, incremented by each `put_policy`.
    pub revision: i64,
    /// The TOML text as given.
    pub text: String,
    /// When this revision was stored (Unix seconds).
    pub updated_at: i64,
}

/// A volume to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewVolume {
    /// Name (what guests ask for).
    pub name: String,
    /// Name of its policy (must exist).
    pub policy: String,
    /// Free text.
    pub description: String,
}

/// A stored volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeRecord {
    /// Name.
    pub name: String,
    /// Policy name.
    pub policy: String,
    /// Free text.
    pub description: String,
    /// Disabled volumes release no key.
    pub enabled: bool,
    /// Creation time (Unix seconds).
    pub created_at: i64,
}

/// State of a key version. Rotation goes pending → current, current →
/// retired, so that at every moment one of two keys opens the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyState {
    /// Created by a rotation, released beside the current key, not yet
    /// proven to be enrolled in the guest's LUKS header.
    Pending,
    /// The key that opens the volume.
    Current,
    /// Replaced; kept for old snapshots until purged.
    Retired,
}

impl KeyState {
    /// `pending`, `current` or `retired`.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Pending => "pending",
            KeyState::Current => "current",
            KeyState::Retired => "retired",
        }
    }

    /// Parses [`KeyState::as_str`]'s output.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(KeyState::Pending),
            "current" => Some(KeyState::Current),
            "retired" => Some(KeyState::Retired),
            _ => None,
        }
    }
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One key version of a volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyVersionRecord {
    /// Version, from 1.
    pub version: u32,
    /// State.
    pub state: KeyState,
    /// The sealed key.
    pub sealed: SealedKey,
    /// Creation time (Unix seconds).
    pub created_at: i64,
    /// When it was retired (Unix seconds); `None` unless retired.
    pub retired_at: Option<i64>,
}

/// The session of an Attest that released a pending key version: what a
/// `ConfirmRotation` naming this nonce and volume is checked against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RotationSession {
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
pub enum SessionLookup {
    /// Known and unexpired.
    Live(RotationSession),
    /// Known but past its expiry.
    Expired,
    /// Never recorded for this nonce and volume (or purged).
    Unknown,
}

/// One key version and its sealed record, as master rotation reads them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedVersion {
    /// Volume.
    pub volume: String,
    /// Version.
    pub version: u32,
    /// The record.
    pub sealed: SealedKey,
}

/// A re-sealed record to write, if the row is still under `from`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResealUpdate {
    /// Volume.
    pub volume: String,
    /// Version.
    pub version: u32,
    /// The master key id the row must still have for the update to apply.
    pub from: MasterKeyId,
    /// The record under the new master key.
    pub sealed: SealedKey,
}

/// A retired key version destroyed by [`Store::purge_retired`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PurgedVersion {
    /// Volume.
    pub volume: String,
    /// Version.
    pub version: u32,
    /// When it had been retired (Unix seconds).
    pub retired_at: i64,
}

/// How many key records are sealed under one master key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MasterKeyUsage {
    /// The master key id.
    pub id: MasterKeyId,
    /// Records (key versions of any state) sealed under it.
    pub records: u64,
    /// Of which retired.
    pub retired: u64,
    /// Earliest creation time of those records (Unix seconds).
    pub oldest_created_at: i64,
}

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
    /// Hash of the previous entry ([`GENESIS_HASH`] for the first).
    pub prev_hash: [u8; 32],
    /// [`audit_entry_hash`] of this entry.
    pub hash: [u8; 32],
}

/// Selects audit entries; every set field must match. Ordered by id.
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
    /// Ids strictly greater than this (paging).
    pub after_id: Option<i64>,
    /// At most this many.
    pub limit: Option<u32>,
}

/// Everything key release reads about one volume, from one consistent
/// snapshot (one read transaction instead of three).
#[derive(Clone, Debug)]
pub struct ReleaseView {
    /// The volume.
    pub volume: VolumeRecord,
    /// Its policy's latest revision; `None` if the policy is missing.
    pub policy: Option<StoredPolicy>,
    /// Its current and pending key versions (retired ones excluded).
    pub keys: Vec<KeyVersionRecord>,
}

/// The storage interface. Implementations must pass [`conformance::run_all`].
pub trait Store: Send + Sync {
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

    /// Periodic upkeep, called off the request path: deletes expired nonces
    /// and lets the backend compact (SQLite checkpoints its WAL here, so a
    /// request never waits for the fsync of a checkpoint). Returns how many
    /// nonces were purged.
    fn maintain(&self, now_unix: i64) -> Result<u64, StoreError> {
        let n = self.purge_nonces(now_unix)?;
        self.purge_rotation_sessions(now_unix)?;
        Ok(n)
    }

    /// The volume, its policy and its releasable keys in one snapshot;
    /// `None` if the volume does not exist.
    fn release_view(&self, name: &str) -> Result<Option<ReleaseView>, StoreError>;

    /// Creates or replaces a policy's text; returns the new revision.
    fn put_policy(&self, name: &str, text: &str) -> Result<i64, StoreError>;

    /// The latest revision of a policy.
    fn get_policy(&self, name: &str) -> Result<Option<StoredPolicy>, StoreError>;

    /// One past revision of a policy.
    fn get_policy_revision(
        &self,
        name: &str,
        revision: i64,
    ) -> Result<Option<StoredPolicy>, StoreError>;

    /// Every policy (latest revisions), by name.
    fn list_policies(&self) -> Result<Vec<StoredPolicy>, StoreError>;

    /// Deletes a policy and its history; refused (`Conflict`) while a volume
    /// uses it.
    fn delete_policy(&self, name: &str) -> Result<(), StoreError>;

    /// Creates an enabled volume with key version 1 (current). The policy
    /// must exist; an existing volume is `AlreadyExists`.
    fn create_volume(&self, volume: &NewVolume, first_key: &SealedKey) -> Result<(), StoreError>;

    /// A volume by name.
    fn get_volume(&self, name: &str) -> Result<Option<VolumeRecord>, StoreError>;

    /// Every volume, by name.
    fn list_volumes(&self) -> Result<Vec<VolumeRecord>, StoreError>;

    /// Enables or disables a volume (takes effect on the next attestation).
    fn set_volume_enabled(&self, name: &str, enabled: bool) -> Result<(), StoreError>;

    /// Points a volume at another (existing) policy.
    fn set_volume_policy(&self, name: &str, policy: &str) -> Result<(), StoreError>;

    /// Deletes a volume and all its key versions; refused (`Conflict`) while
    /// the volume is enabled.
    fn delete_volume(&self, name: &str) -> Result<(), StoreError>;

    /// Every key version of a volume, by version.
    fn key_versions(&self, name: &str) -> Result<Vec<KeyVersionRecord>, StoreError>;

    /// The versions a guest receives: current, then pending if any.
    fn releasable_keys(&self, name: &str) -> Result<Vec<KeyVersionRecord>, StoreError>;

    /// Adds a pending version beside the current one. `version` must be one
    /// more than the highest existing version and no version may be pending
    /// (`Conflict` otherwise), so two concurrent rotations cannot both win.
    fn add_pending_version(
        &self,
        name: &str,
        version: u32,
        sealed: &SealedKey,
    ) -> Result<(), StoreError>;

    /// Makes pending `version` current and the current one retired (with
    /// `retired_at`), in one transaction. `Conflict` if `version` is not
    /// the pending one, so of two concurrent promotions one fails.
    fn promote_pending(&self, name: &str, version: u32) -> Result<(), StoreError>;

    /// The number the next pending version of a volume must have: one more
    /// than the highest version it ever had (a cancelled one included).
    fn next_key_version(&self, name: &str) -> Result<u32, StoreError>;

    /// Deletes the pending version of a volume (a rotation abandoned before
    /// the guest proved it) and returns its number. Its number is never
    /// handed out again for this volume. `Conflict` if none is pending.
    fn cancel_pending(&self, name: &str) -> Result<u32, StoreError>;

    /// Destroys retired key versions retired strictly before `cutoff_unix`;
    /// never touches pending or current ones. Returns what was destroyed.
    fn purge_retired(&self, cutoff_unix: i64) -> Result<Vec<PurgedVersion>, StoreError>;

    /// [`Store::purge_retired`] for one volume only. `NotFound` if the
    /// volume does not exist.
    fn purge_retired_volume(
        &self,
        name: &str,
        cutoff_unix: i64,
    ) -> Result<Vec<PurgedVersion>, StoreError>;

    /// Records the session of an Attest that released a pending version.
    /// A second record for the same nonce and volume is `AlreadyExists`.
    fn record_rotation_session(&self, session: &RotationSession) -> Result<(), StoreError>;

    /// The rotation session of `nonce` for `volume`, judged at `now_unix`.
    fn rotation_session(
        &self,
        nonce: &[u8; 32],
        volume: &str,
        now_unix: i64,
    ) -> Result<SessionLookup, StoreError>;

    /// Deletes rotation sessions expired at `now_unix`; returns how many.
    fn purge_rotation_sessions(&self, now_unix: i64) -> Result<u64, StoreError>;

    /// Up to `limit` key versions (any state) whose record is not sealed
    /// under `master`, ordered by volume and version.
    fn keys_not_under(
        &self,
        master: MasterKeyId,
        limit: u32,
    ) -> Result<Vec<SealedVersion>, StoreError>;

    /// Writes re-sealed records in one transaction. Each row is updated only
    /// if its master key id is still `update.from` (compare-and-set), so a
    /// concurrent or repeated run never applies an update twice or over a
    /// newer record. Returns how many rows were updated.
    fn reseal_batch(&self, updates: &[ResealUpdate]) -> Result<u64, StoreError>;

    /// Records per master key id, by id.
    fn master_key_usage(&self) -> Result<Vec<MasterKeyUsage>, StoreError>;

    /// Makes every committed change durable on disk (SQLite: a full WAL
    /// checkpoint). Called before a master key file is retired.
    fn sync_durable(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Appends an audit entry, chained to the previous one.
    fn append_audit(&self, event: &AuditEvent) -> Result<AuditId, StoreError>;

    /// Audit entries matching `filter`, by id.
    fn audit_entries(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError>;

    /// Recomputes the whole chain; returns the number of entries, or
    /// `StoreError::AuditChain` saying where it breaks.
    fn verify_audit_chain(&self) -> Result<u64, StoreError>;
}
