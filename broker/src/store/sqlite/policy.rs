//! [`PolicyStore`] on SQLite: the latest text in `policies`, every
//! revision in `policy_revisions`.

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::{backend, not_found, now_unix, SqliteStore};
use crate::store::{validate_name, PolicyStore, StoreError, StoredPolicy};

pub(super) fn policy_exists(conn: &Connection, name: &str) -> Result<bool, StoreError> {
    conn.prepare_cached("SELECT 1 FROM policies WHERE name = ?1")
        .and_then(|mut s| s.exists([name]))
        .map_err(backend)
}

pub(super) fn read_policy(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredPolicy> {
    Ok(StoredPolicy {
        name: r.get(0)?,
        revision: r.get(1)?,
        text: r.get(2)?,
        updated_at: r.get(3)?,
    })
}

impl SqliteStore {
    fn put_policy_inner(
        &self,
        name: &str,
        text: &str,
        base: Option<i64>,
    ) -> Result<i64, StoreError> {
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
        if let Some(base) = base {
            if rev - 1 != base {
                return Err(crate::store::policy::stale_revision(name, base, rev - 1));
            }
        }
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
}

impl PolicyStore for SqliteStore {
    fn put_policy(&self, name: &str, text: &str) -> Result<i64, StoreError> {
        self.put_policy_inner(name, text, None)
    }

    fn put_policy_at(&self, name: &str, text: &str, base_revision: i64) -> Result<i64, StoreError> {
        self.put_policy_inner(name, text, Some(base_revision))
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
}
