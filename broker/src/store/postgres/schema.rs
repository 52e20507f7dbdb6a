//! The PostgreSQL schema: numbered migrations, applied at open in one
//! transaction while holding a session advisory lock, so that replicas
//! starting together migrate exactly once and a schema written by a newer
//! broker is refused, never downgraded.

use tokio_postgres::Client;

use super::{backend, now_unix};
use crate::store::StoreError;

/// The advisory lock key of migrations ("kbroker" in ASCII, as an i64).
const MIGRATION_LOCK: i64 = 0x006b_6272_6f6b_6572;

/// Migration 3 onwards: `audit_append_only()` as the triggers of `audit`
/// call it (also put back at every open, see [`restore_audit_guard`]).
macro_rules! audit_guard_function {
    () => {
        r#"
CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF OLD.id < COALESCE((SELECT first_id FROM audit_pruned WHERE singleton = 1), 1) THEN
            RETURN OLD;
        END IF;
    END IF;
    RAISE EXCEPTION 'audit entries are append-only';
END $$;
"#
    };
}

/// Schema migrations, applied in order; entry `i` brings the schema to
/// version `i + 1`. Never edit a released entry: append a new one.
pub(super) const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE policies (
    name        TEXT PRIMARY KEY,
    revision    BIGINT NOT NULL,
    text        TEXT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE TABLE policy_revisions (
    name        TEXT NOT NULL,
    revision    BIGINT NOT NULL,
    text        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (name, revision)
);
CREATE TABLE volumes (
    name            TEXT PRIMARY KEY,
    policy          TEXT NOT NULL REFERENCES policies(name),
    description     TEXT NOT NULL,
    enabled         BOOLEAN NOT NULL,
    created_at      BIGINT NOT NULL,
    highest_version BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE key_versions (
    volume           TEXT NOT NULL REFERENCES volumes(name) ON DELETE CASCADE,
    version          BIGINT NOT NULL CHECK (version >= 1),
    state            TEXT NOT NULL CHECK (state IN ('pending', 'current', 'retired')),
    master_key_id    BYTEA NOT NULL,
    nonce            BYTEA NOT NULL,
    ciphertext       BYTEA NOT NULL,
    created_at       BIGINT NOT NULL,
    state_changed_at BIGINT NOT NULL,
    retired_at       BIGINT,
    PRIMARY KEY (volume, version)
);
CREATE UNIQUE INDEX key_versions_one_current ON key_versions(volume) WHERE state = 'current';
CREATE UNIQUE INDEX key_versions_one_pending ON key_versions(volume) WHERE state = 'pending';
CREATE INDEX key_versions_master ON key_versions(master_key_id);
CREATE INDEX key_versions_retired ON key_versions(retired_at) WHERE state = 'retired';
CREATE TABLE used_nonces (
    nonce      BYTEA PRIMARY KEY,
    expires_at BIGINT NOT NULL
);
CREATE INDEX used_nonces_expiry ON used_nonces(expires_at);
CREATE TABLE key_checks (
    master_key_id BYTEA PRIMARY KEY,
    kcv           BYTEA NOT NULL,
    created_at    BIGINT NOT NULL
);
CREATE TABLE rotation_sessions (
    nonce       BYTEA NOT NULL,
    volume      TEXT NOT NULL,
    version     BIGINT NOT NULL,
    report_data BYTEA NOT NULL,
    expires_at  BIGINT NOT NULL,
    PRIMARY KEY (nonce, volume)
);
CREATE INDEX rotation_sessions_expiry ON rotation_sessions(expires_at);
CREATE TABLE audit (
    id           BIGINT PRIMARY KEY,
    at_unix      BIGINT NOT NULL,
    kind         TEXT NOT NULL,
    verdict      TEXT NOT NULL,
    volumes      TEXT NOT NULL,
    reason_codes TEXT NOT NULL,
    details_json TEXT NOT NULL,
    client_addr  TEXT,
    prev_hash    BYTEA NOT NULL,
    hash         BYTEA NOT NULL
);
CREATE TABLE audit_head (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    last_id   BIGINT NOT NULL,
    last_hash BYTEA NOT NULL
);
INSERT INTO audit_head (singleton, last_id, last_hash) VALUES (1, 0, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea);
CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit entries are append-only';
END $$;
CREATE TRIGGER audit_no_update BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
"#,
    // 2: the keyed audit chain (issue #9): the chain key, sealed under the
    // master key, and the first entry it MACs. Made by the first process
    // that opens the store with the master key (`crate::audit_key`).
    r#"
CREATE TABLE audit_key (
    singleton     INTEGER PRIMARY KEY CHECK (singleton = 1),
    keyed_from    BIGINT NOT NULL CHECK (keyed_from >= 1),
    boundary      BYTEA NOT NULL,
    master_key_id BYTEA NOT NULL,
    nonce         BYTEA NOT NULL,
    ciphertext    BYTEA NOT NULL,
    created_at    BIGINT NOT NULL
);
"#,
    // 3: retention (`broker audit prune`): where the pruned chain starts,
    // MAC'd under the chain key; the trigger lets through only the removal
    // of entries before it (never an update, never a TRUNCATE).
    concat!(
        r#"
CREATE TABLE audit_pruned (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    first_id  BIGINT NOT NULL CHECK (first_id >= 1),
    prev_hash BYTEA NOT NULL,
    mac       BYTEA NOT NULL,
    pruned_at BIGINT NOT NULL
);
"#,
        audit_guard_function!()
    ),
];

/// The schema version this code writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

pub(super) async fn migrate(c: &mut Client) -> Result<(), StoreError> {
    c.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(backend)?;
    let result = migrate_locked(c).await;
    // The lock is the session's: released here, or when the connection
    // closes if this fails.
    let unlock = c
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(backend);
    result.and(unlock.map(|_| ()))
}

async fn migrate_locked(c: &mut Client) -> Result<(), StoreError> {
    let tx = c.transaction().await.map_err(backend)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_version (
             version    BIGINT PRIMARY KEY,
             applied_at BIGINT NOT NULL
         )",
    )
    .await
    .map_err(backend)?;
    let current: i64 = tx
        .query_one("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[])
        .await
        .map_err(backend)?
        .get(0);
    if current > SCHEMA_VERSION {
        return Err(StoreError::Corrupt(format!(
            "database schema version {current} is newer than this broker's ({SCHEMA_VERSION}); \
             upgrade the broker"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        tx.batch_execute(sql).await.map_err(backend)?;
        tx.execute(
            "INSERT INTO schema_version (version, applied_at) VALUES ($1, $2)",
            &[&(i as i64 + 1), &now_unix()],
        )
        .await
        .map_err(backend)?;
        tracing::info!(version = i + 1, "PostgreSQL schema migrated");
    }
    restore_audit_guard(&tx).await?;
    tx.commit().await.map_err(backend)
}

/// The trigger names that keep `audit` append-only.
const AUDIT_TRIGGERS: &str = "
DROP TRIGGER IF EXISTS audit_no_update ON audit;
DROP TRIGGER IF EXISTS audit_no_truncate ON audit;
CREATE TRIGGER audit_no_update BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
";

/// Puts back what keeps `audit` append-only if the table's owner (or a
/// superuser) dropped or disabled a trigger, or replaced the function they
/// call, with a warning that names what to do. Run at every open, under
/// the migration lock. Returns whether anything had to be put back.
pub(super) async fn restore_audit_guard(
    tx: &tokio_postgres::Transaction<'_>,
) -> Result<bool, StoreError> {
    let function_src = "SELECT prosrc FROM pg_proc WHERE proname = 'audit_append_only' \
                        AND pronamespace = current_schema()::regnamespace";
    let before: Option<String> = tx
        .query_opt(function_src, &[])
        .await
        .map_err(backend)?
        .map(|r| r.get(0));
    tx.batch_execute(audit_guard_function!())
        .await
        .map_err(backend)?;
    let after: Option<String> = tx
        .query_opt(function_src, &[])
        .await
        .map_err(backend)?
        .map(|r| r.get(0));
    let enabled: i64 = tx
        .query_one(
            "SELECT COUNT(*) FROM pg_trigger WHERE tgrelid = 'audit'::regclass \
             AND tgname IN ('audit_no_update', 'audit_no_truncate') AND tgenabled <> 'D'",
            &[],
        )
        .await
        .map_err(backend)?
        .get(0);
    let triggers_ok = enabled == 2;
    if !triggers_ok {
        tx.batch_execute(AUDIT_TRIGGERS).await.map_err(backend)?;
    }
    if triggers_ok && before == after {
        return Ok(false);
    }
    tracing::warn!(
        "the audit log's append-only triggers had been dropped, disabled or changed (by someone with the audit table owner's or a superuser's rights); they are restored. Run `broker audit verify` and find out who changed the database"
    );
    Ok(true)
}
