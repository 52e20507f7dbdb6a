//! The embedded SQLite store: one connection behind a mutex, WAL journal,
//! `synchronous=NORMAL`, a busy timeout for other processes (the admin CLI)
//! sharing the file, cached prepared statements, and numbered schema
//! migrations recorded in `schema_version`.
//!
//! Single use of nonces does not rest on the mutex: the conditional UPDATE
//! is atomic in SQLite itself, so several processes opening the same file
//! also see exactly one `Fresh` (tested).

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::{
    audit_entry_hash, validate_name, verify_chain, AuditChainError, AuditEntry, AuditEvent,
    AuditFilter, AuditId, KeyState, KeyVersionRecord, MasterKeyUsage, NewVolume, NonceOutcome,
    PurgedVersion, ReleaseView, ResealUpdate, RotationSession, SealedVersion, SessionLookup, Store,
    StoreError, StoredPolicy, VolumeRecord,
};
use crate::keys::{MasterKeyId, SealedKey};

/// Schema migrations, applied in order; entry `i` brings the schema to
/// version `i + 1`. Never edit a released entry: append a new one.
pub(super) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE policies (
    name        TEXT PRIMARY KEY,
    revision    INTEGER NOT NULL,
    text        TEXT NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE TABLE policy_revisions (
    name        TEXT NOT NULL,
    revision    INTEGER NOT NULL,
    text        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (name, revision)
);
CREATE TABLE volumes (
    name        TEXT PRIMARY KEY,
    policy      TEXT NOT NULL REFERENCES policies(name),
    description TEXT NOT NULL,
    enabled     INTEGER NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE TABLE key_versions (
    volume           TEXT NOT NULL REFERENCES volumes(name) ON DELETE CASCADE,
    version          INTEGER NOT NULL CHECK (version >= 1),
    state            TEXT NOT NULL CHECK (state IN ('pending', 'current', 'retired')),
    master_key_id    BLOB NOT NULL,
    nonce            BLOB NOT NULL,
    ciphertext       BLOB NOT NULL,
    created_at       INTEGER NOT NULL,
    state_changed_at INTEGER NOT NULL,
    PRIMARY KEY (volume, version)
);
CREATE UNIQUE INDEX key_versions_one_current ON key_versions(volume) WHERE state = 'current';
CREATE UNIQUE INDEX key_versions_one_pending ON key_versions(volume) WHERE state = 'pending';
CREATE INDEX key_versions_master ON key_versions(master_key_id);
CREATE TABLE nonces (
    nonce      BLOB PRIMARY KEY,
    volumes    TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    used       INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE audit (
    id           INTEGER PRIMARY KEY,
    at_unix      INTEGER NOT NULL,
    kind         TEXT NOT NULL,
    verdict      TEXT NOT NULL,
    volumes      TEXT NOT NULL,
    reason_codes TEXT NOT NULL,
    details_json TEXT NOT NULL,
    client_addr  TEXT,
    prev_hash    BLOB NOT NULL,
    hash         BLOB NOT NULL
);
CREATE TABLE audit_head (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    last_id   INTEGER NOT NULL,
    last_hash BLOB NOT NULL
);
INSERT INTO audit_head (singleton, last_id, last_hash) VALUES (1, 0, zeroblob(32));
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'audit entries are append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'audit entries are append-only'); END;
"#,
    // 2: key lifecycle (issue #5). When a version was retired (purge works
    // from it), the highest version ever handed out per volume (a cancelled
    // pending version's number is not reused), and the sessions in which a
    // pending version was released (ConfirmRotation checks proofs against them).
    r#"
ALTER TABLE key_versions ADD COLUMN retired_at INTEGER;
UPDATE key_versions SET retired_at = state_changed_at WHERE state = 'retired';
CREATE INDEX key_versions_retired ON key_versions(retired_at) WHERE state = 'retired';
ALTER TABLE volumes ADD COLUMN highest_version INTEGER NOT NULL DEFAULT 0;
CREATE TABLE rotation_sessions (
    nonce       BLOB NOT NULL,
    volume      TEXT NOT NULL,
    version     INTEGER NOT NULL,
    report_data BLOB NOT NULL,
    expires_at  INTEGER NOT NULL,
    PRIMARY KEY (nonce, volume)
) WITHOUT ROWID;
CREATE INDEX rotation_sessions_expiry ON rotation_sessions(expires_at);
"#,
];

/// The schema version this code writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// SQLite implementation of [`Store`].
pub struct SqliteStore {
    conn: Mutex<Connection>,
    /// A second connection for WAL checkpoints, so their fsync never holds
    /// the request connection's lock. `None` for in-memory databases.
    checkpointer: Option<Mutex<Connection>>,
}

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn to_json(list: &[String]) -> String {
    serde_json::Value::from(list.to_vec()).to_string()
}

fn from_json(text: &str, what: &str) -> Result<Vec<String>, String> {
    serde_json::from_str(text).map_err(|e| format!("{what} is not a JSON list of strings: {e}"))
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
        conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")
            .map_err(backend)?;
        conn.set_prepared_statement_cache_capacity(64);
        migrate(&mut conn)?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
            checkpointer: None,
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent
        // (transactions roll back on drop), so a poisoned lock is usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Deletes retired versions retired before `cutoff_unix`, of one
    /// volume (`NotFound` if it does not exist) or of all.
    fn purge_retired_where(
        &self,
        volume: Option<&str>,
        cutoff_unix: i64,
    ) -> Result<Vec<PurgedVersion>, StoreError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        if let Some(name) = volume {
            if !volume_exists(&tx, name)? {
                return Err(not_found("volume", name));
            }
        }
        let mut out = Vec::new();
        {
            let mut s = tx
                .prepare(
                    "DELETE FROM key_versions WHERE state = 'retired' AND retired_at < ?1 \
                     AND (?2 IS NULL OR volume = ?2) RETURNING volume, version, retired_at",
                )
                .map_err(backend)?;
            let rows = s
                .query_map(params![cutoff_unix, volume], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })
                .map_err(backend)?;
            for row in rows {
                let (volume, version, retired_at) = row.map_err(backend)?;
                let version = u32::try_from(version).map_err(|_| {
                    StoreError::Corrupt(format!("volume {volume:?}: version {version}"))
                })?;
                out.push(PurgedVersion {
                    volume,
                    version,
                    retired_at,
                });
            }
        }
        tx.commit().map_err(backend)?;
        out.sort_by(|a, b| (&a.volume, a.version).cmp(&(&b.volume, b.version)));
        Ok(out)
    }

    /// The schema version of the open database.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        self.conn()
            .query_row("SELECT MAX(version) FROM schema_version", [], |r| r.get(0))
            .map_err(backend)
    }
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(backend)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_version (
             version    INTEGER PRIMARY KEY,
             applied_at INTEGER NOT NULL
         )",
    )
    .map_err(backend)?;
    let current: i64 = tx
        .query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_version",
            [],
            |r| r.get(0),
        )
        .map_err(backend)?;
    if current > SCHEMA_VERSION {
        return Err(StoreError::Corrupt(format!(
            "database schema version {current} is newer than this broker's ({SCHEMA_VERSION}); \
             upgrade the broker"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        tx.execute_batch(sql).map_err(backend)?;
        tx.execute(
            "INSERT INTO schema_version (version, applied_at) VALUES (?1, ?2)",
            params![i as i64 + 1, now_unix()],
        )
        .map_err(backend)?;
    }
    tx.commit().map_err(backend)
}

fn sealed_from_row(
    volume: &str,
    version: u32,
    id: Vec<u8>,
    nonce: Vec<u8>,
    ciphertext: Vec<u8>,
) -> Result<SealedKey, StoreError> {
    let corrupt = |what: &str| {
        StoreError::Corrupt(format!(
            "key version {version} of volume {volume:?}: {what}"
        ))
    };
    Ok(SealedKey {
        master_key_id: MasterKeyId::from_slice(&id)
            .ok_or_else(|| corrupt("master key id is not 16 bytes"))?,
        nonce: nonce
            .try_into()
            .map_err(|_| corrupt("nonce is not 12 bytes"))?,
        ciphertext,
    })
}

/// Every key version of a volume, by version.
const SQL_KEY_VERSIONS: &str = "SELECT version, state, master_key_id, nonce, ciphertext, \
     created_at, retired_at FROM key_versions WHERE volume = ?1 ORDER BY version";

fn read_keys(
    conn: &Connection,
    sql: &str,
    volume: &str,
) -> Result<Vec<KeyVersionRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(sql).map_err(backend)?;
    let rows = stmt
        .query_map([volume], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Vec<u8>>(2)?,
                r.get::<_, Vec<u8>>(3)?,
                r.get::<_, Vec<u8>>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, Option<i64>>(6)?,
            ))
        })
        .map_err(backend)?;
    let mut out = Vec::new();
    for row in rows {
        let (version, state, id, nonce, ct, created_at, retired_at) = row.map_err(backend)?;
        let version = u32::try_from(version).map_err(|_| {
            StoreError::Corrupt(format!(
                "volume {volume:?}: key version {version} out of range"
            ))
        })?;
        let state = KeyState::parse(&state).ok_or_else(|| {
            StoreError::Corrupt(format!("volume {volume:?}: unknown key state {state:?}"))
        })?;
        out.push(KeyVersionRecord {
            version,
            state,
            sealed: sealed_from_row(volume, version, id, nonce, ct)?,
            created_at,
            retired_at,
        });
    }
    Ok(out)
}

fn volume_exists(conn: &Connection, name: &str) -> Result<bool, StoreError> {
    conn.prepare_cached("SELECT 1 FROM volumes WHERE name = ?1")
        .and_then(|mut s| s.exists([name]))
        .map_err(backend)
}

fn policy_exists(conn: &Connection, name: &str) -> Result<bool, StoreError> {
    conn.prepare_cached("SELECT 1 FROM policies WHERE name = ?1")
        .and_then(|mut s| s.exists([name]))
        .map_err(backend)
}

fn not_found(what: &'static str, name: &str) -> StoreError {
    StoreError::NotFound {
        what,
        name: name.to_owned(),
    }
}

fn read_volume(r: &rusqlite::Row<'_>) -> rusqlite::Result<VolumeRecord> {
    Ok(VolumeRecord {
        name: r.get(0)?,
        policy: r.get(1)?,
        description: r.get(2)?,
        enabled: r.get::<_, i64>(3)? != 0,
        created_at: r.get(4)?,
    })
}

fn read_policy(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredPolicy> {
    Ok(StoredPolicy {
        name: r.get(0)?,
        revision: r.get(1)?,
        text: r.get(2)?,
        updated_at: r.get(3)?,
    })
}

type RawAudit = (
    i64,
    i64,
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    Vec<u8>,
    Vec<u8>,
);

fn read_audit_raw(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawAudit> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
    ))
}

fn decode_audit(raw: RawAudit) -> Result<AuditEntry, AuditChainError> {
    let (id, at_unix, kind, verdict, volumes, reasons, details_json, client_addr, prev, hash) = raw;
    let bad = |what: String| AuditChainError { at_id: id, what };
    let h32 = |v: Vec<u8>, name: &str| -> Result<[u8; 32], AuditChainError> {
        v.try_into()
            .map_err(|_| bad(format!("{name} is not 32 bytes")))
    };
    Ok(AuditEntry {
        id: AuditId(id),
        event: AuditEvent {
            at_unix,
            kind,
            verdict,
            volumes: from_json(&volumes, "volumes").map_err(bad)?,
            reason_codes: from_json(&reasons, "reason_codes").map_err(bad)?,
            details_json,
            client_addr,
        },
        prev_hash: h32(prev, "prev_hash")?,
        hash: h32(hash, "hash")?,
    })
}

const AUDIT_COLUMNS: &str = "SELECT id, at_unix, kind, verdict, volumes, reason_codes, \
     details_json, client_addr, prev_hash, hash FROM audit";

impl Store for SqliteStore {
    fn insert_nonce(
        &self,
        nonce: &[u8; 32],
        volumes: &[String],
        expires_at_unix: i64,
    ) -> Result<(), StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "INSERT INTO nonces (nonce, volumes, expires_at, used) VALUES (?1, ?2, ?3, 0) \
                 ON CONFLICT (nonce) DO NOTHING",
            )
            .map_err(backend)?;
        let n = stmt
            .execute(params![&nonce[..], to_json(volumes), expires_at_unix])
            .map_err(backend)?;
        if n == 0 {
            return Err(StoreError::AlreadyExists {
                what: "nonce",
                name: hex::encode(nonce),
            });
        }
        Ok(())
    }

    fn consume_nonce(&self, nonce: &[u8; 32], now_unix: i64) -> Result<NonceOutcome, StoreError> {
        let conn = self.conn();
        // The only guard that matters: one atomic conditional update.
        let burnt: Option<String> = conn
            .prepare_cached(
                "UPDATE nonces SET used = 1 WHERE nonce = ?1 AND used = 0 AND expires_at > ?2 \
                 RETURNING volumes",
            )
            .and_then(|mut s| {
                s.query_row(params![&nonce[..], now_unix], |r| r.get(0))
                    .optional()
            })
            .map_err(backend)?;
        if let Some(v) = burnt {
            let volumes = from_json(&v, "nonce volumes").map_err(StoreError::Corrupt)?;
            return Ok(NonceOutcome::Fresh { volumes });
        }
        let state: Option<(i64, i64)> = conn
            .prepare_cached("SELECT used, expires_at FROM nonces WHERE nonce = ?1")
            .and_then(|mut s| {
                s.query_row([&nonce[..]], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            })
            .map_err(backend)?;
        Ok(match state {
            None => NonceOutcome::Unknown,
            Some((used, _)) if used != 0 => NonceOutcome::AlreadyUsed,
            Some(_) => NonceOutcome::Expired,
        })
    }

    fn maintain(&self, now_unix: i64) -> Result<u64, StoreError> {
        let purged = self.purge_nonces(now_unix)?;
        self.purge_rotation_sessions(now_unix)?;
        if let Some(ck) = &self.checkpointer {
            let ck = ck.lock().unwrap_or_else(|p| p.into_inner());
            // PASSIVE: copies what it can without waiting for, or blocking, writers.
            ck.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                .map_err(backend)?;
        }
        Ok(purged)
    }

    fn release_view(&self, name: &str) -> Result<Option<ReleaseView>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        let Some(volume) = tx
            .prepare_cached(
                "SELECT name, policy, description, enabled, created_at FROM volumes WHERE name = ?1",
            )
            .and_then(|mut s| s.query_row([name], read_volume).optional())
            .map_err(backend)?
        else {
            return Ok(None);
        };
        let policy = tx
            .prepare_cached("SELECT name, revision, text, updated_at FROM policies WHERE name = ?1")
            .and_then(|mut s| s.query_row([&volume.policy], read_policy).optional())
            .map_err(backend)?;
        let mut keys = read_keys(&tx, SQL_KEY_VERSIONS, name)?;
        keys.retain(|k| k.state != KeyState::Retired);
        tx.commit().map_err(backend)?;
        Ok(Some(ReleaseView {
            volume,
            policy,
            keys,
        }))
    }

    fn purge_nonces(&self, now_unix: i64) -> Result<u64, StoreError> {
        let conn = self.conn();
        let n = conn
            .prepare_cached("DELETE FROM nonces WHERE expires_at <= ?1")
            .and_then(|mut s| s.execute([now_unix]))
            .map_err(backend)?;
        Ok(n as u64)
    }

    fn put_policy(&self, name: &str, text: &str) -> Result<i64, StoreError> {
        validate_name("policy name", name)?;
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        let now = now_unix();
        let rev: i64 = tx
            .query_row(
                "SELECT COALESCE((SELECT revision FROM policies WHERE name = ?1), 0) + 1",
                [name],
                |r| r.get(0),
            )
            .map_err(backend)?;
        tx.execute(
            "INSERT INTO policies (name, revision, text, updated_at) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (name) DO UPDATE SET revision = excluded.revision, \
             text = excluded.text, updated_at = excluded.updated_at",
            params![name, rev, text, now],
        )
        .map_err(backend)?;
        tx.execute(
            "INSERT INTO policy_revisions (name, revision, text, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![name, rev, text, now],
        )
        .map_err(backend)?;
        tx.commit().map_err(backend)?;
        Ok(rev)
    }

    fn get_policy(&self, name: &str) -> Result<Option<StoredPolicy>, StoreError> {
        let conn = self.conn();
        conn.prepare_cached("SELECT name, revision, text, updated_at FROM policies WHERE name = ?1")
            .and_then(|mut s| s.query_row([name], read_policy).optional())
            .map_err(backend)
    }

    fn get_policy_revision(
        &self,
        name: &str,
        revision: i64,
    ) -> Result<Option<StoredPolicy>, StoreError> {
        let conn = self.conn();
        conn.prepare_cached(
            "SELECT name, revision, text, created_at FROM policy_revisions \
             WHERE name = ?1 AND revision = ?2",
        )
        .and_then(|mut s| s.query_row(params![name, revision], read_policy).optional())
        .map_err(backend)
    }

    fn list_policies(&self) -> Result<Vec<StoredPolicy>, StoreError> {
        let conn = self.conn();
        let mut s = conn
            .prepare_cached("SELECT name, revision, text, updated_at FROM policies ORDER BY name")
            .map_err(backend)?;
        let rows = s.query_map([], read_policy).map_err(backend)?;
        rows.collect::<Result<_, _>>().map_err(backend)
    }

    fn delete_policy(&self, name: &str) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        if !policy_exists(&tx, name)? {
            return Err(not_found("policy", name));
        }
        let users: Vec<String> = {
            let mut s = tx
                .prepare_cached("SELECT name FROM volumes WHERE policy = ?1 ORDER BY name")
                .map_err(backend)?;
            let rows = s.query_map([name], |r| r.get(0)).map_err(backend)?;
            rows.collect::<Result<_, _>>().map_err(backend)?
        };
        if !users.is_empty() {
            return Err(StoreError::Conflict(format!(
                "policy {name:?} is used by volume(s) {}; point them at another policy first",
                users.join(", ")
            )));
        }
        tx.execute("DELETE FROM policies WHERE name = ?1", [name])
            .map_err(backend)?;
        tx.execute("DELETE FROM policy_revisions WHERE name = ?1", [name])
            .map_err(backend)?;
        tx.commit().map_err(backend)
    }

    fn create_volume(&self, volume: &NewVolume, first_key: &SealedKey) -> Result<(), StoreError> {
        validate_name("volume name", &volume.name)?;
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        if !policy_exists(&tx, &volume.policy)? {
            return Err(not_found("policy", &volume.policy));
        }
        if volume_exists(&tx, &volume.name)? {
            return Err(StoreError::AlreadyExists {
                what: "volume",
                name: volume.name.clone(),
            });
        }
        let now = now_unix();
        tx.execute(
            "INSERT INTO volumes (name, policy, description, enabled, created_at) \
             VALUES (?1, ?2, ?3, 1, ?4)",
            params![volume.name, volume.policy, volume.description, now],
        )
        .map_err(backend)?;
        tx.execute(
            "INSERT INTO key_versions (volume, version, state, master_key_id, nonce, ciphertext, \
             created_at, state_changed_at) VALUES (?1, 1, 'current', ?2, ?3, ?4, ?5, ?5)",
            params![
                volume.name,
                &first_key.master_key_id.as_bytes()[..],
                &first_key.nonce[..],
                first_key.ciphertext,
                now
            ],
        )
        .map_err(backend)?;
        tx.commit().map_err(backend)
    }

    fn get_volume(&self, name: &str) -> Result<Option<VolumeRecord>, StoreError> {
        let conn = self.conn();
        conn.prepare_cached(
            "SELECT name, policy, description, enabled, created_at FROM volumes WHERE name = ?1",
        )
        .and_then(|mut s| s.query_row([name], read_volume).optional())
        .map_err(backend)
    }

    fn list_volumes(&self) -> Result<Vec<VolumeRecord>, StoreError> {
        let conn = self.conn();
        let mut s = conn
            .prepare_cached(
                "SELECT name, policy, description, enabled, created_at FROM volumes ORDER BY name",
            )
            .map_err(backend)?;
        let rows = s.query_map([], read_volume).map_err(backend)?;
        rows.collect::<Result<_, _>>().map_err(backend)
    }

    fn set_volume_enabled(&self, name: &str, enabled: bool) -> Result<(), StoreError> {
        let conn = self.conn();
        let n = conn
            .prepare_cached("UPDATE volumes SET enabled = ?2 WHERE name = ?1")
            .and_then(|mut s| s.execute(params![name, i64::from(enabled)]))
            .map_err(backend)?;
        if n == 0 {
            return Err(not_found("volume", name));
        }
        Ok(())
    }

    fn set_volume_policy(&self, name: &str, policy: &str) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        if !policy_exists(&tx, policy)? {
            return Err(not_found("policy", policy));
        }
        let n = tx
            .execute(
                "UPDATE volumes SET policy = ?2 WHERE name = ?1",
                params![name, policy],
            )
            .map_err(backend)?;
        if n == 0 {
            return Err(not_found("volume", name));
        }
        tx.commit().map_err(backend)
    }

    fn delete_volume(&self, name: &str) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        let enabled: Option<i64> = tx
            .query_row("SELECT enabled FROM volumes WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()
            .map_err(backend)?;
        match enabled {
            None => return Err(not_found("volume", name)),
            Some(e) if e != 0 => {
                return Err(StoreError::Conflict(format!(
                    "volume {name:?} is enabled; disable it first"
                )))
            }
            Some(_) => {}
        }
        tx.execute("DELETE FROM key_versions WHERE volume = ?1", [name])
            .map_err(backend)?;
        tx.execute("DELETE FROM rotation_sessions WHERE volume = ?1", [name])
            .map_err(backend)?;
        tx.execute("DELETE FROM volumes WHERE name = ?1", [name])
            .map_err(backend)?;
        tx.commit().map_err(backend)
    }

    fn key_versions(&self, name: &str) -> Result<Vec<KeyVersionRecord>, StoreError> {
        let conn = self.conn();
        let out = read_keys(&conn, SQL_KEY_VERSIONS, name)?;
        if out.is_empty() && !volume_exists(&conn, name)? {
            return Err(not_found("volume", name));
        }
        Ok(out)
    }

    fn releasable_keys(&self, name: &str) -> Result<Vec<KeyVersionRecord>, StoreError> {
        let conn = self.conn();
        // One statement shared with `key_versions`, filtered here. A pending
        // version is always newer than the current one (max + 1), so the
        // version order puts current first.
        let mut out = read_keys(&conn, SQL_KEY_VERSIONS, name)?;
        if out.is_empty() && !volume_exists(&conn, name)? {
            return Err(not_found("volume", name));
        }
        out.retain(|k| k.state != KeyState::Retired);
        Ok(out)
    }

    fn add_pending_version(
        &self,
        name: &str,
        version: u32,
        sealed: &SealedKey,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        let (max, pending): (Option<i64>, Option<i64>) = tx
            .query_row(
                "SELECT MAX(COALESCE((SELECT MAX(version) FROM key_versions WHERE volume = ?1), 0), \
                        highest_version), \
                        (SELECT version FROM key_versions WHERE volume = ?1 AND state = 'pending') \
                 FROM volumes WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(backend)?
            .unwrap_or((None, None));
        let Some(max) = max else {
            return Err(not_found("volume", name));
        };
        if let Some(p) = pending {
            return Err(StoreError::Conflict(format!(
                "volume {name:?} already has pending key version {p} awaiting the guest's proof; \
                 let the guest confirm it, or cancel that rotation first"
            )));
        }
        if i64::from(version) != max + 1 {
            return Err(StoreError::Conflict(format!(
                "volume {name:?}: the next key version is {}, not {version}",
                max + 1
            )));
        }
        tx.execute(
            "INSERT INTO key_versions (volume, version, state, master_key_id, nonce, ciphertext, \
             created_at, state_changed_at) VALUES (?1, ?2, 'pending', ?3, ?4, ?5, ?6, ?6)",
            params![
                name,
                i64::from(version),
                &sealed.master_key_id.as_bytes()[..],
                &sealed.nonce[..],
                sealed.ciphertext,
                now_unix()
            ],
        )
        .map_err(backend)?;
        tx.commit().map_err(backend)
    }

    fn promote_pending(&self, name: &str, version: u32) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        let state: Option<String> = tx
            .query_row(
                "SELECT state FROM key_versions WHERE volume = ?1 AND version = ?2",
                params![name, i64::from(version)],
                |r| r.get(0),
            )
            .optional()
            .map_err(backend)?;
        match state.as_deref() {
            Some("pending") => {}
            Some(other) => {
                return Err(StoreError::Conflict(format!(
                    "key version {version} of volume {name:?} is {other}, not pending"
                )))
            }
            None => {
                return Err(StoreError::NotFound {
                    what: "key version",
                    name: format!("{name}#{version}"),
                })
            }
        }
        let now = now_unix();
        // Retire first: the partial unique index allows one current per volume.
        tx.execute(
            "UPDATE key_versions SET state = 'retired', state_changed_at = ?2, retired_at = ?2 \
             WHERE volume = ?1 AND state = 'current'",
            params![name, now],
        )
        .map_err(backend)?;
        tx.execute(
            "UPDATE key_versions SET state = 'current', state_changed_at = ?3 \
             WHERE volume = ?1 AND version = ?2",
            params![name, i64::from(version), now],
        )
        .map_err(backend)?;
        tx.commit().map_err(backend)
    }

    fn next_key_version(&self, name: &str) -> Result<u32, StoreError> {
        let conn = self.conn();
        let max: Option<i64> = conn
            .prepare_cached(
                "SELECT MAX(COALESCE((SELECT MAX(version) FROM key_versions WHERE volume = ?1), 0), \
                        highest_version) FROM volumes WHERE name = ?1",
            )
            .and_then(|mut s| s.query_row([name], |r| r.get(0)).optional())
            .map_err(backend)?;
        let max = max.ok_or_else(|| not_found("volume", name))?;
        u32::try_from(max + 1).map_err(|_| {
            StoreError::Conflict(format!("volume {name:?} has used every key version number"))
        })
    }

    fn cancel_pending(&self, name: &str) -> Result<u32, StoreError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        if !volume_exists(&tx, name)? {
            return Err(not_found("volume", name));
        }
        let pending: Option<i64> = tx
            .query_row(
                "DELETE FROM key_versions WHERE volume = ?1 AND state = 'pending' \
                 RETURNING version",
                [name],
                |r| r.get(0),
            )
            .optional()
            .map_err(backend)?;
        let Some(version) = pending else {
            return Err(StoreError::Conflict(format!(
                "volume {name:?} has no pending key version; there is no rotation to cancel"
            )));
        };
        tx.execute(
            "UPDATE volumes SET highest_version = MAX(highest_version, ?2) WHERE name = ?1",
            params![name, version],
        )
        .map_err(backend)?;
        tx.execute(
            "DELETE FROM rotation_sessions WHERE volume = ?1 AND version = ?2",
            params![name, version],
        )
        .map_err(backend)?;
        tx.commit().map_err(backend)?;
        u32::try_from(version)
            .map_err(|_| StoreError::Corrupt(format!("volume {name:?}: version {version}")))
    }

    fn purge_retired(&self, cutoff_unix: i64) -> Result<Vec<PurgedVersion>, StoreError> {
        self.purge_retired_where(None, cutoff_unix)
    }

    fn purge_retired_volume(
        &self,
        name: &str,
        cutoff_unix: i64,
    ) -> Result<Vec<PurgedVersion>, StoreError> {
        self.purge_retired_where(Some(name), cutoff_unix)
    }

    fn record_rotation_session(&self, session: &RotationSession) -> Result<(), StoreError> {
        let conn = self.conn();
        let n = conn
            .prepare_cached(
                "INSERT INTO rotation_sessions (nonce, volume, version, report_data, expires_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (nonce, volume) DO NOTHING",
            )
            .and_then(|mut s| {
                s.execute(params![
                    &session.nonce[..],
                    session.volume,
                    i64::from(session.version),
                    &session.report_data[..],
                    session.expires_at
                ])
            })
            .map_err(backend)?;
        if n == 0 {
            return Err(StoreError::AlreadyExists {
                what: "rotation session",
                name: format!("{}/{}", hex::encode(session.nonce), session.volume),
            });
        }
        Ok(())
    }

    fn rotation_session(
        &self,
        nonce: &[u8; 32],
        volume: &str,
        now_unix: i64,
    ) -> Result<SessionLookup, StoreError> {
        let conn = self.conn();
        let row: Option<(i64, Vec<u8>, i64)> = conn
            .prepare_cached(
                "SELECT version, report_data, expires_at FROM rotation_sessions \
                 WHERE nonce = ?1 AND volume = ?2",
            )
            .and_then(|mut s| {
                s.query_row(params![&nonce[..], volume], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .optional()
            })
            .map_err(backend)?;
        let Some((version, rd, expires_at)) = row else {
            return Ok(SessionLookup::Unknown);
        };
        if now_unix >= expires_at {
            return Ok(SessionLookup::Expired);
        }
        let corrupt = |what: &str| {
            StoreError::Corrupt(format!("rotation session of volume {volume:?}: {what}"))
        };
        Ok(SessionLookup::Live(RotationSession {
            nonce: *nonce,
            volume: volume.to_owned(),
            version: u32::try_from(version).map_err(|_| corrupt("version out of range"))?,
            report_data: rd
                .try_into()
                .map_err(|_| corrupt("report data is not 64 bytes"))?,
            expires_at,
        }))
    }

    fn purge_rotation_sessions(&self, now_unix: i64) -> Result<u64, StoreError> {
        let conn = self.conn();
        let n = conn
            .prepare_cached("DELETE FROM rotation_sessions WHERE expires_at <= ?1")
            .and_then(|mut s| s.execute([now_unix]))
            .map_err(backend)?;
        Ok(n as u64)
    }

    fn keys_not_under(
        &self,
        master: MasterKeyId,
        limit: u32,
    ) -> Result<Vec<SealedVersion>, StoreError> {
        let conn = self.conn();
        let mut s = conn
            .prepare_cached(
                "SELECT volume, version, master_key_id, nonce, ciphertext FROM key_versions \
                 WHERE master_key_id != ?1 ORDER BY volume, version LIMIT ?2",
            )
            .map_err(backend)?;
        let rows = s
            .query_map(params![&master.as_bytes()[..], i64::from(limit)], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                    r.get::<_, Vec<u8>>(4)?,
                ))
            })
            .map_err(backend)?;
        let mut out = Vec::new();
        for row in rows {
            let (volume, version, id, nonce, ct) = row.map_err(backend)?;
            let version = u32::try_from(version).map_err(|_| {
                StoreError::Corrupt(format!("volume {volume:?}: version {version}"))
            })?;
            let sealed = sealed_from_row(&volume, version, id, nonce, ct)?;
            out.push(SealedVersion {
                volume,
                version,
                sealed,
            });
        }
        Ok(out)
    }

    fn reseal_batch(&self, updates: &[ResealUpdate]) -> Result<u64, StoreError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        let mut n = 0u64;
        {
            let mut s = tx
                .prepare_cached(
                    "UPDATE key_versions SET master_key_id = ?4, nonce = ?5, ciphertext = ?6 \
                     WHERE volume = ?1 AND version = ?2 AND master_key_id = ?3",
                )
                .map_err(backend)?;
            for u in updates {
                n += s
                    .execute(params![
                        u.volume,
                        i64::from(u.version),
                        &u.from.as_bytes()[..],
                        &u.sealed.master_key_id.as_bytes()[..],
                        &u.sealed.nonce[..],
                        u.sealed.ciphertext
                    ])
                    .map_err(backend)? as u64;
            }
        }
        tx.commit().map_err(backend)?;
        Ok(n)
    }

    fn master_key_usage(&self) -> Result<Vec<MasterKeyUsage>, StoreError> {
        let conn = self.conn();
        let mut s = conn
            .prepare_cached(
                "SELECT master_key_id, COUNT(*), COALESCE(SUM(state = 'retired'), 0), \
                 MIN(created_at) FROM key_versions GROUP BY master_key_id ORDER BY master_key_id",
            )
            .map_err(backend)?;
        let rows = s
            .query_map([], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })
            .map_err(backend)?;
        let mut out = Vec::new();
        for row in rows {
            let (id, records, retired, oldest) = row.map_err(backend)?;
            out.push(MasterKeyUsage {
                id: MasterKeyId::from_slice(&id).ok_or_else(|| {
                    StoreError::Corrupt("a key version's master key id is not 16 bytes".into())
                })?,
                records: records as u64,
                retired: retired as u64,
                oldest_created_at: oldest,
            });
        }
        Ok(out)
    }

    fn sync_durable(&self) -> Result<(), StoreError> {
        // In WAL mode with synchronous=NORMAL a commit may sit in the WAL
        // without an fsync; a FULL checkpoint syncs the WAL and the database.
        let conn = self.conn();
        conn.query_row("PRAGMA wal_checkpoint(FULL)", [], |_| Ok(()))
            .map_err(backend)
    }

    fn append_audit(&self, event: &AuditEvent) -> Result<AuditId, StoreError> {
        event.validate()?;
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        let (last_id, last_hash): (i64, Vec<u8>) = tx
            .prepare_cached("SELECT last_id, last_hash FROM audit_head WHERE singleton = 1")
            .and_then(|mut s| s.query_row([], |r| Ok((r.get(0)?, r.get(1)?))))
            .map_err(backend)?;
        let prev: [u8; 32] = last_hash
            .try_into()
            .map_err(|_| StoreError::Corrupt("audit chain head hash is not 32 bytes".into()))?;
        let id = last_id + 1;
        let hash = audit_entry_hash(&prev, id, event);
        tx.prepare_cached(
            "INSERT INTO audit (id, at_unix, kind, verdict, volumes, reason_codes, details_json, \
             client_addr, prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )
        .and_then(|mut s| {
            s.execute(params![
                id,
                event.at_unix,
                event.kind,
                event.verdict,
                to_json(&event.volumes),
                to_json(&event.reason_codes),
                event.details_json,
                event.client_addr,
                &prev[..],
                &hash[..]
            ])
        })
        .map_err(backend)?;
        tx.prepare_cached("UPDATE audit_head SET last_id = ?1, last_hash = ?2 WHERE singleton = 1")
            .and_then(|mut s| s.execute(params![id, &hash[..]]))
            .map_err(backend)?;
        tx.commit().map_err(backend)?;
        Ok(AuditId(id))
    }

    fn audit_entries(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError> {
        let conn = self.conn();
        let sql = format!(
            "{AUDIT_COLUMNS} WHERE (?1 IS NULL OR EXISTS \
               (SELECT 1 FROM json_each(audit.volumes) WHERE json_each.value = ?1)) \
             AND (?2 IS NULL OR at_unix >= ?2) AND (?3 IS NULL OR at_unix < ?3) \
             AND (?4 IS NULL OR verdict = ?4) AND (?5 IS NULL OR kind = ?5) \
             AND (?6 IS NULL OR id > ?6) ORDER BY id LIMIT ?7"
        );
        let mut s = conn.prepare_cached(&sql).map_err(backend)?;
        let limit = filter.limit.map_or(-1, i64::from);
        let rows = s
            .query_map(
                params![
                    filter.volume,
                    filter.since_unix,
                    filter.until_unix,
                    filter.verdict,
                    filter.kind,
                    filter.after_id,
                    limit
                ],
                read_audit_raw,
            )
            .map_err(backend)?;
        let mut out = Vec::new();
        for r in rows {
            let raw = r.map_err(backend)?;
            out.push(decode_audit(raw).map_err(|e| StoreError::Corrupt(e.to_string()))?);
        }
        Ok(out)
    }

    fn verify_audit_chain(&self) -> Result<u64, StoreError> {
        let conn = self.conn();
        // One read transaction, so appends by other processes cannot make
        // the head and the rows disagree mid-check.
        conn.execute_batch("BEGIN").map_err(backend)?;
        let result = (|| {
            let (last_id, last_hash): (i64, Vec<u8>) = conn
                .query_row(
                    "SELECT last_id, last_hash FROM audit_head WHERE singleton = 1",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(backend)?;
            let head_hash: [u8; 32] = last_hash
                .try_into()
                .map_err(|_| StoreError::Corrupt("audit chain head hash is not 32 bytes".into()))?;
            let mut s = conn
                .prepare(&format!("{AUDIT_COLUMNS} ORDER BY id"))
                .map_err(backend)?;
            let rows = s.query_map([], read_audit_raw).map_err(backend)?;
            let mut entries = Vec::new();
            for r in rows {
                entries.push(decode_audit(r.map_err(backend)?));
            }
            verify_chain(entries, (last_id, head_hash)).map_err(StoreError::from)
        })();
        let _ = conn.execute_batch("COMMIT");
        result
    }
}
