//! The embedded SQLite store: one connection behind a mutex, WAL journal,
//! `synchronous=FULL` (a commit is on disk before the call returns: a
//! release's nonce burn and audit entry survive a power loss, not only a
//! broker crash, before its key leaves), a busy timeout for other processes (the admin CLI)
//! sharing the file, cached prepared statements, and numbered schema
//! migrations recorded in `schema_version` ([`schema`]).
//!
//! One module per part of the [`Store`] trait, each implementing its part
//! for [`SqliteStore`]. Statements that a combined transaction may need
//! (burning a nonce, appending an audit entry, recording a rotation
//! session) are functions over a `&Connection`, so several of them can run
//! in one transaction; the trait methods take the lock and the transaction.
//!
//! Single use of nonces does not rest on the mutex: the conditional UPDATE
//! is atomic in SQLite itself, so several processes opening the same file
//! also see exactly one `Fresh` (tested).

mod audit;
mod backup;
mod keycheck;
mod nonce;
mod policy;
mod reseal;
mod rotation;
mod schema;
#[cfg(test)]
mod tests;
mod volume;

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior};

use super::{
    AttestCommit, AttestCommitted, NonceBurn, NonceStore, RotationSessionStore, Store, StoreError,
};

/// SQLite implementation of [`Store`].
pub struct SqliteStore {
    conn: Mutex<Connection>,
    /// A second connection for WAL checkpoints, so their fsync never holds
    /// the request connection's lock. `None` for in-memory databases.
    checkpointer: Option<Mutex<Connection>>,
    /// The unsealed audit chain key, once installed.
    keying: super::audit::KeyingSlot,
}

pub(super) fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

pub(super) fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

pub(super) fn to_json(list: &[String]) -> String {
    serde_json::Value::from(list.to_vec()).to_string()
}

/// A column that should hold a JSON list of strings does not.
#[derive(Debug, thiserror::Error)]
#[error("{what} is not a JSON list of strings: {error}")]
pub(super) struct NotAList {
    what: &'static str,
    error: serde_json::Error,
}

pub(super) fn from_json(text: &str, what: &'static str) -> Result<Vec<String>, NotAList> {
    serde_json::from_str(text).map_err(|error| NotAList { what, error })
}

pub(super) fn not_found(what: &'static str, name: &str) -> StoreError {
    StoreError::NotFound {
        what,
        name: name.to_owned(),
    }
}

impl SqliteStore {
    /// Opens (creating if needed, mode 0600) the database at `path` and
    /// brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if !path.exists() {
            // Create the file ourselves so its mode is 0600 from the start;
            // SQLite gives the -wal and -shm files the same mode.
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
            {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(StoreError::Backend(format!(
                        "cannot create {}: {e}",
                        path.display()
                    )))
                }
            }
        }
        let conn = Connection::open(path).map_err(backend)?;
        let mut store = Self::init(conn, true)?;
        let ck = Connection::open(path).map_err(backend)?;
        ck.busy_timeout(Duration::from_secs(5)).map_err(backend)?;
        store.checkpointer = Some(Mutex::new(ck));
        Ok(store)
    }

    /// A private in-memory database (tests).
    pub fn open_in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory().map_err(backend)?, false)
    }

    fn init(mut conn: Connection, file: bool) -> Result<Self, StoreError> {
        conn.busy_timeout(Duration::from_secs(5)).map_err(backend)?;
        if file {
            let mode: String = conn
                .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
                .map_err(backend)?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(StoreError::Backend(format!(
                    "cannot enable the WAL journal (got {mode})"
                )));
            }
        }
        // FULL, not NORMAL: NORMAL in WAL mode leaves the last commits
        // without an fsync until a checkpoint, so a power loss could undo a
        // release that already left (its audit entry, its nonce burn). It
        // costs about 12% more CPU per release (docs/performance.md).
        conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")
            .map_err(backend)?;
        conn.set_prepared_statement_cache_capacity(64);
        schema::migrate(&mut conn)?;
        schema::restore_audit_triggers(&conn)?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
            checkpointer: None,
            keying: Default::default(),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent
        // (transactions roll back on drop), so a poisoned lock is usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The schema version of the open database.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        self.conn()
            .query_row("SELECT MAX(version) FROM schema_version", [], |r| r.get(0))
            .map_err(backend)
    }
}

impl Store for SqliteStore {
    fn commit_attest(&self, commit: &AttestCommit<'_>) -> Result<AttestCommitted, StoreError> {
        commit.audit.validate()?;
        let keying = self.keying.get();
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        if nonce::burn(&tx, &commit.nonce, commit.nonce_expires_at)? == NonceBurn::AlreadyUsed {
            // Dropping the transaction rolls it back: nothing written.
            return Ok(AttestCommitted::NonceAlreadyUsed);
        }
        let id = audit::append(&tx, keying.as_deref(), commit.audit)?;
        for s in commit.sessions {
            rotation::record(&tx, s)?;
        }
        tx.commit().map_err(backend)?;
        Ok(AttestCommitted::Committed(id))
    }

    fn maintain(&self, now_unix: i64) -> Result<u64, StoreError> {
        let purged = self.purge_used_nonces(now_unix)?;
        self.purge_rotation_sessions(now_unix)?;
        if let Some(ck) = &self.checkpointer {
            let ck = ck.lock().unwrap_or_else(|p| p.into_inner());
            // PASSIVE: copies what it can without waiting for, or blocking, writers.
            ck.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                .map_err(backend)?;
        }
        Ok(purged)
    }

    fn sync_durable(&self) -> Result<(), StoreError> {
        // Commits are already synced to the WAL (synchronous=FULL); a FULL
        // checkpoint also copies them into the database file and syncs it,
        // so the file alone holds everything (before a migration renames it).
        let conn = self.conn();
        conn.query_row("PRAGMA wal_checkpoint(FULL)", [], |_| Ok(()))
            .map_err(backend)
    }
}
