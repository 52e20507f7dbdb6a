//! [`AuditStore`] on SQLite: `audit` (append-only by triggers), its chain
//! head `audit_head`, updated in the same transaction as each append, and
//! the sealed chain key `audit_key`.

use std::sync::Arc;

use rusqlite::{params, Connection, OptionalExtension as _, TransactionBehavior};

use super::{backend, from_json, now_unix, to_json, SqliteStore};
use crate::store::audit::{key_record_from, prune_anchor_from, tail_start};
use crate::store::audit_hash::key_not_loaded;
use crate::store::{
    chain_hash, prune_event, AuditChainError, AuditEntry, AuditEvent, AuditFilter, AuditId,
    AuditKeyInsert, AuditKeyRecord, AuditStore, ChainKeying, ChainWalk, PruneAnchor, PruneOutcome,
    StoreError, VERIFY_PAGE,
};

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
            volumes: from_json(&volumes, "volumes").map_err(|e| bad(e.to_string()))?,
            reason_codes: from_json(&reasons, "reason_codes").map_err(|e| bad(e.to_string()))?,
            details_json,
            client_addr,
        },
        prev_hash: h32(prev, "prev_hash")?,
        hash: h32(hash, "hash")?,
    })
}

const AUDIT_COLUMNS: &str = "SELECT id, at_unix, kind, verdict, volumes, reason_codes, \
     details_json, client_addr, prev_hash, hash FROM audit";

fn head(conn: &Connection) -> Result<(i64, [u8; 32]), StoreError> {
    let (last_id, last_hash): (i64, Vec<u8>) = conn
        .prepare_cached("SELECT last_id, last_hash FROM audit_head WHERE singleton = 1")
        .and_then(|mut s| s.query_row([], |r| Ok((r.get(0)?, r.get(1)?))))
        .map_err(backend)?;
    let h: [u8; 32] = last_hash
        .try_into()
        .map_err(|_| StoreError::Corrupt("audit chain head hash is not 32 bytes".into()))?;
    Ok((last_id, h))
}

fn key_record(conn: &Connection) -> Result<Option<AuditKeyRecord>, StoreError> {
    let row = conn
        .prepare_cached(
            "SELECT keyed_from, boundary, master_key_id, nonce, ciphertext FROM audit_key \
             WHERE singleton = 1",
        )
        .and_then(|mut s| {
            s.query_row([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                    r.get::<_, Vec<u8>>(4)?,
                ))
            })
            .optional()
        })
        .map_err(backend)?;
    row.map(|(keyed_from, boundary, id, nonce, ciphertext)| {
        key_record_from(keyed_from, boundary, id, nonce, ciphertext)
    })
    .transpose()
}

fn prune_anchor(conn: &Connection) -> Result<Option<PruneAnchor>, StoreError> {
    let row = conn
        .prepare_cached("SELECT first_id, prev_hash, mac FROM audit_pruned WHERE singleton = 1")
        .and_then(|mut s| {
            s.query_row([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                ))
            })
            .optional()
        })
        .map_err(backend)?;
    row.map(|(id, prev, mac)| prune_anchor_from(id, prev, mac))
        .transpose()
}

/// The stored `prev_hash` of entry `id`, if it exists (where a verification
/// or a prune starts inside the log).
fn prev_hash_of(conn: &Connection, id: i64) -> Result<Option<Vec<u8>>, StoreError> {
    conn.query_row("SELECT prev_hash FROM audit WHERE id = ?1", [id], |r| {
        r.get(0)
    })
    .optional()
    .map_err(backend)
}

/// The prune anchor, on `conn` (backups read it in their transaction).
pub(super) fn prune_anchor_of(conn: &Connection) -> Result<Option<PruneAnchor>, StoreError> {
    prune_anchor(conn)
}

/// The chain key record, on `conn` (backups read it in their transaction).
pub(super) fn key_record_of(conn: &Connection) -> Result<Option<AuditKeyRecord>, StoreError> {
    key_record(conn)
}

/// Appends `event` (already validated) after the chain head, on `conn`:
/// must run inside a write transaction (`BEGIN IMMEDIATE`), which may also
/// do other work, so that the head read and the head update serialize.
/// `keying` is the installed chain key; without one, a database that has a
/// chain key is refused.
pub(super) fn append(
    conn: &Connection,
    keying: Option<&ChainKeying>,
    event: &AuditEvent,
) -> Result<AuditId, StoreError> {
    if keying.is_none() {
        if let Some(r) = key_record(conn)? {
            return Err(key_not_loaded(r.keyed_from));
        }
    }
    let (last_id, prev) = head(conn)?;
    let id = last_id + 1;
    let hash = chain_hash(keying, &prev, id, event);
    conn.prepare_cached(
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
    conn.prepare_cached("UPDATE audit_head SET last_id = ?1, last_hash = ?2 WHERE singleton = 1")
        .and_then(|mut s| s.execute(params![id, &hash[..]]))
        .map_err(backend)?;
    Ok(AuditId(id))
}

impl AuditStore for SqliteStore {
    fn append_audit(&self, event: &AuditEvent) -> Result<AuditId, StoreError> {
        event.validate()?;
        let keying = self.keying.get();
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        let id = append(&tx, keying.as_deref(), event)?;
        tx.commit().map_err(backend)?;
        Ok(id)
    }

    fn audit_entries(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError> {
        let conn = self.conn();
        let order = if filter.newest_first { "DESC" } else { "ASC" };
        let sql = format!(
            "{AUDIT_COLUMNS} WHERE (?1 IS NULL OR EXISTS \
               (SELECT 1 FROM json_each(audit.volumes) WHERE json_each.value = ?1)) \
             AND (?2 IS NULL OR at_unix >= ?2) AND (?3 IS NULL OR at_unix < ?3) \
             AND (?4 IS NULL OR verdict = ?4) AND (?5 IS NULL OR kind = ?5) \
             AND (?6 IS NULL OR id > ?6) AND (?8 IS NULL OR id < ?8) \
             ORDER BY id {order} LIMIT ?7"
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
                    limit,
                    filter.before_id
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

    fn verify_audit_from(&self, from_id: i64) -> Result<u64, StoreError> {
        let keying = self.keying.get();
        let conn = self.conn();
        // One read transaction, so appends by other processes cannot make
        // the head and the rows disagree mid-check; read in pages, so
        // memory stays bounded however long the log is.
        conn.execute_batch("BEGIN").map_err(backend)?;
        let result = (|| {
            let head = head(&conn)?;
            let stored = key_record(&conn)?.map(|r| (r.keyed_from, r.boundary));
            let mut walk = ChainWalk::new(keying.as_deref(), stored)?;
            let mut start = 1;
            if let Some(a) = prune_anchor(&conn)? {
                walk = walk.from_prune_anchor(&a)?;
                start = a.first_id;
            }
            if from_id > start {
                let prev = prev_hash_of(&conn, from_id)?;
                walk = walk.starting_at(from_id, tail_start(from_id, prev)?);
            }
            let mut s = conn
                .prepare_cached(&format!(
                    "{AUDIT_COLUMNS} WHERE id > ?1 ORDER BY id LIMIT ?2"
                ))
                .map_err(backend)?;
            loop {
                let mut n = 0u32;
                let rows = s
                    .query_map(params![walk.after_id(), VERIFY_PAGE], read_audit_raw)
                    .map_err(backend)?;
                for r in rows {
                    walk.push(decode_audit(r.map_err(backend)?))?;
                    n += 1;
                }
                if n < VERIFY_PAGE {
                    break;
                }
            }
            walk.finish(head).map_err(StoreError::from)
        })();
        let _ = conn.execute_batch("COMMIT");
        result
    }

    fn audit_head(&self) -> Result<(i64, [u8; 32]), StoreError> {
        head(&self.conn())
    }

    fn audit_key_record(&self) -> Result<Option<AuditKeyRecord>, StoreError> {
        key_record(&self.conn())
    }

    fn insert_audit_key(&self, record: &AuditKeyRecord) -> Result<AuditKeyInsert, StoreError> {
        let mut conn = self.conn();
        // BEGIN IMMEDIATE: the write lock appends take, so the head cannot
        // move between the check and the insert.
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        if let Some(r) = key_record(&tx)? {
            return Ok(AuditKeyInsert::Exists(r));
        }
        if head(&tx)? != (record.keyed_from - 1, record.boundary) {
            return Ok(AuditKeyInsert::HeadMoved);
        }
        tx.execute(
            "INSERT INTO audit_key (singleton, keyed_from, boundary, master_key_id, nonce, \
             ciphertext, created_at) VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                record.keyed_from,
                &record.boundary[..],
                &record.sealed.master_key_id.as_bytes()[..],
                &record.sealed.nonce[..],
                record.sealed.ciphertext,
                now_unix()
            ],
        )
        .map_err(backend)?;
        tx.commit().map_err(backend)?;
        Ok(AuditKeyInsert::Created)
    }

    fn audit_prune_anchor(&self) -> Result<Option<PruneAnchor>, StoreError> {
        prune_anchor(&self.conn())
    }

    fn prune_audit(
        &self,
        before_unix: i64,
        at_unix: i64,
        client: Option<String>,
    ) -> Result<PruneOutcome, StoreError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        let Some(keying) = self.keying.get() else {
            return Err(key_not_loaded(key_record(&tx)?.map_or(1, |r| r.keyed_from)));
        };
        let (last_id, _) = head(&tx)?;
        let start = prune_anchor(&tx)?.map_or(1, |a| a.first_id);
        let first_at: Option<i64> = tx
            .query_row(
                "SELECT MIN(id) FROM audit WHERE at_unix >= ?1 AND id >= ?2",
                params![before_unix, start],
                |r| r.get(0),
            )
            .map_err(backend)?;
        // Always keep the newest entry.
        let first_kept = first_at.unwrap_or(last_id).min(last_id);
        if first_kept <= start {
            return Ok(PruneOutcome {
                removed: 0,
                first_kept: start,
                entry: None,
            });
        }
        let prev = tail_start(first_kept, prev_hash_of(&tx, first_kept)?)?;
        // The anchor first: the delete trigger lets through only entries
        // before it.
        tx.execute(
            "INSERT OR REPLACE INTO audit_pruned (singleton, first_id, prev_hash, mac, pruned_at) \
             VALUES (1, ?1, ?2, ?3, ?4)",
            params![
                first_kept,
                &prev[..],
                &keying.anchor_mac(first_kept, &prev)[..],
                at_unix
            ],
        )
        .map_err(backend)?;
        let removed = tx
            .execute("DELETE FROM audit WHERE id < ?1", [first_kept])
            .map_err(backend)? as u64;
        let event = prune_event(at_unix, client, removed, before_unix, first_kept);
        let id = append(&tx, Some(&keying), &event)?;
        tx.commit().map_err(backend)?;
        Ok(PruneOutcome {
            removed,
            first_kept,
            entry: Some(id),
        })
    }

    fn install_audit_key(&self, keying: Arc<ChainKeying>) {
        self.keying.set(keying);
    }

    fn installed_audit_key(&self) -> Option<Arc<ChainKeying>> {
        self.keying.get()
    }
}
