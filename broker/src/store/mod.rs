//! Storage: one interface ([`Store`]) and two implementations, the embedded
//! [`SqliteStore`] (the default) and [`PgStore`] (PostgreSQL, for several
//! broker replicas sharing one database), chosen by a [`StoreUrl`]. Both
//! must pass the conformance suite of the test kit
//! (`tests/src/store_conformance/`).
//!
//! The store holds used nonces, policies (as text: validation is the
//! policy module's job), volumes with their sealed key versions, and the
//! append-only audit log, chained under a key sealed by the master key. It never holds key material in the
//! clear and never the master key: only [`SealedKey`](crate::keys::SealedKey)
//! records.
//!
//! [`Store`] is the union of one trait per part, each in its own module
//! with the records it reads and writes: [`NonceStore`] (used nonces),
//! [`PolicyStore`] (policies), [`VolumeStore`] (volumes and key versions),
//! [`RotationSessionStore`] (which Attest released which pending version),
//! [`ResealStore`] (master key re-sealing), [`AuditStore`] (the audit
//! log), [`KeyCheckStore`] (which master keys the database belongs to) and
//! [`BackupStore`] (whole-store snapshots). A backend implements each part,
//! in a module per part (see `sqlite/` and `postgres/`), and `Store` for
//! upkeep. An operation that must change several
//! parts in one transaction belongs in `Store` itself, implemented by the
//! backend over its per-part statements.
//!
//! **Architecture invariant:** every guarantee that must hold across broker
//! replicas is made by the database, not by a lock in this process. A
//! Challenge writes nothing (its nonce is a MAC, `crate::nonce`); a nonce is
//! burnt by one insert into `used_nonces`, whose primary key lets exactly
//! one of two replicas sharing a PostgreSQL database succeed; the audit
//! chain head is one row updated in the same transaction as each append
//! (`SELECT ... FOR UPDATE` on PostgreSQL), so appends serialize. An
//! Attest whose evidence verified writes once: [`Store::commit_attest`]
//! burns the nonce, appends the audit entry and records rotation sessions
//! in one transaction.
//!
//! The traits are synchronous and object-safe; the gRPC layer calls them
//! inline (SQLite operations take microseconds) or from `spawn_blocking`.

mod audit;
mod audit_hash;
mod backup;
mod keycheck;
mod nonce;
mod policy;
mod postgres;
mod release;
mod reseal;
mod rotation;
mod sqlite;
mod url;
mod volume;

pub use audit::{
    prune_event, AuditEntry, AuditEvent, AuditFilter, AuditId, AuditKeyInsert, AuditKeyRecord,
    AuditStore, PruneAnchor, PruneOutcome, AUDIT_VERDICTS,
};
pub use audit_hash::{
    audit_entry_hash, chain_hash, keyed_audit_entry_hash, ChainKeying, ChainWalk, GENESIS_HASH,
    VERIFY_PAGE,
};
pub use backup::{
    AuditKeyRow, AuditRow, BackupStore, KeyRow, PolicyRow, PruneAnchorRow, SessionRow, Snapshot,
    VolumeRow, SNAPSHOT_FORMAT,
};
pub use keycheck::{KeyCheck, KeyCheckStore};
pub use nonce::{NonceBurn, NonceStore};
pub use policy::{PolicyStore, StoredPolicy};
pub use postgres::{PgOptions, PgStore, PG_SCHEMA_VERSION};
pub use release::{AttestCommit, AttestCommitted};
pub use reseal::{MasterKeyUsage, ResealStore, ResealUpdate, SealedVersion};
pub use rotation::{RotationSessionLookup, RotationSessionRecord, RotationSessionStore};
pub use sqlite::SqliteStore;
pub use url::{redact_url, StoreUrl};
pub use volume::{
    KeyState, KeyVersionRecord, NewVolume, PurgedVersion, ReleaseView, VolumeRecord, VolumeStore,
};

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
    /// The database cannot be reached now, or did not answer in time (a
    /// PostgreSQL server down or restarting, a row lock held elsewhere):
    /// retrying later may succeed.
    #[error("store unavailable: {0}")]
    Unavailable(String),
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

/// The storage interface: the union of its parts, which every
/// implementation provides, plus upkeep. Implementations must pass the
/// conformance suite (`keybroker_tests::store_conformance::run_all`).
///
/// Code that needs one part only may take that part (`&dyn NonceStore`);
/// the broker holds an `Arc<dyn Store>`.
pub trait Store:
    NonceStore
    + PolicyStore
    + VolumeStore
    + RotationSessionStore
    + ResealStore
    + AuditStore
    + BackupStore
    + KeyCheckStore
    + Send
    + Sync
{
    /// The one write of an Attest whose evidence verified, in one
    /// transaction: burn `commit.nonce` (as [`NonceStore::burn_nonce`]),
    /// append `commit.audit` (as [`AuditStore::append_audit`]) and record
    /// each of `commit.sessions`. If the nonce was used before, nothing is
    /// written and the answer is [`AttestCommitted::NonceAlreadyUsed`]; on
    /// any error nothing is written either.
    fn commit_attest(&self, commit: &AttestCommit<'_>) -> Result<AttestCommitted, StoreError>;

    /// Periodic upkeep, called off the request path: deletes used-nonce
    /// records past their nonce's expiry and expired rotation sessions, and
    /// lets the backend compact (SQLite checkpoints its WAL here, so a
    /// request never waits for the fsync of a checkpoint). Returns how many
    /// used-nonce records were purged.
    fn maintain(&self, now_unix: i64) -> Result<u64, StoreError> {
        let n = self.purge_used_nonces(now_unix)?;
        self.purge_rotation_sessions(now_unix)?;
        Ok(n)
    }

    /// Makes every committed change durable on disk (SQLite: a full WAL
    /// checkpoint). Called before a master key file is retired.
    fn sync_durable(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
