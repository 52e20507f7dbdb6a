//! The schema: numbered migrations, applied in one transaction at open.

use rusqlite::{params, Connection, TransactionBehavior};

use super::{backend, now_unix};
use crate::store::StoreError;

/// Schema migrations, applied in order; entry `i` brings the schema to
/// version `i + 1`. Never edit a released entry: append a new one.
pub(in crate::store) const MIGRATIONS: &[&str] = &[
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
    // 3: stateless challenges (issue #9). A Challenge writes nothing; an
    // Attest whose evidence verified records its nonce as used, until the
    // nonce's expiry. Nonces issued before the upgrade are refused
    // (another format): a guest asks for a new one.
    r#"
DROP TABLE nonces;
CREATE TABLE used_nonces (
    nonce      BLOB PRIMARY KEY,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX used_nonces_expiry ON used_nonces(expires_at);
"#,
    // 4: key-check values (issue #9): the master keys this database belongs
    // to, so a broker started with another key is refused at start.
    r#"
CREATE TABLE key_checks (
    master_key_id BLOB PRIMARY KEY,
    kcv           BLOB NOT NULL,
    created_at    INTEGER NOT NULL
) WITHOUT ROWID;
"#,
    // 5: the keyed audit chain (issue #9): the chain key, sealed under the
    // master key, and the first entry it MACs. Made by the first process
    // that opens the store with the master key (`crate::audit_key`).
    r#"
CREATE TABLE audit_key (
    singleton     INTEGER PRIMARY KEY CHECK (singleton = 1),
    keyed_from    INTEGER NOT NULL CHECK (keyed_from >= 1),
    boundary      BLOB NOT NULL,
    master_key_id BLOB NOT NULL,
    nonce         BLOB NOT NULL,
    ciphertext    BLOB NOT NULL,
    created_at    INTEGER NOT NULL
);
"#,
    // 6: retention (`broker audit prune`): where the pruned chain starts,
    // MAC'd under the chain key; the delete trigger lets through only the
    // removal of entries before it.
    r#"
CREATE TABLE audit_pruned (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    first_id  INTEGER NOT NULL CHECK (first_id >= 1),
    prev_hash BLOB NOT NULL,
    mac       BLOB NOT NULL,
    pruned_at INTEGER NOT NULL
);
DROP TRIGGER IF EXISTS audit_no_delete;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
    WHEN OLD.id >= COALESCE((SELECT first_id FROM audit_pruned WHERE singleton = 1), 1)
    BEGIN SELECT RAISE(ABORT, 'audit entries are append-only'); END;
"#,
];

/// The schema version this code writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The triggers that keep `audit` append-only: no update, and no delete
/// but of entries before the prune anchor (`broker audit prune`).
const AUDIT_TRIGGERS: &str = "
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'audit entries are append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
    WHEN OLD.id >= COALESCE((SELECT first_id FROM audit_pruned WHERE singleton = 1), 1)
    BEGIN SELECT RAISE(ABORT, 'audit entries are append-only'); END;
";

/// Puts back the append-only triggers of `audit` if someone dropped them
/// (only a writer of the file can), with a warning that names what to do.
/// Returns whether any was missing.
pub(super) fn restore_audit_triggers(conn: &Connection) -> Result<bool, StoreError> {
    let present: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'trigger' \
             AND name IN ('audit_no_update', 'audit_no_delete')",
            [],
            |r| r.get(0),
        )
        .map_err(backend)?;
    if present == 2 {
        return Ok(false);
    }
    conn.execute_batch(AUDIT_TRIGGERS).map_err(backend)?;
    tracing::warn!(
        "the audit log's append-only triggers had been dropped (by someone writing the database file directly); they are restored. Run `broker audit verify` and find out who changed the database"
    );
    Ok(true)
}

pub(super) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
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
