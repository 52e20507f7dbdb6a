//! [`AuditStore`] on SQLite: `audit` (append-only by triggers) and its
//! chain head `audit_head`, updated in the same transaction as each append.

use rusqlite::{params, Connection, TransactionBehavior};

use super::{backend, from_json, to_json, SqliteStore};
use crate::store::{
    audit_entry_hash, verify_chain, AuditChainError, AuditEntry, AuditEvent, AuditFilter, AuditId,
    AuditStore, StoreError,
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

/// Appends `event` (already validated) after the chain head, on `conn`:
/// must run inside a write transaction (`BEGIN IMMEDIATE`), which may also
/// do other work, so that the head read and the head update serialize.
pub(super) fn append(conn: &Connection, event: &AuditEvent) -> Result<AuditId, StoreError> {
    let (last_id, last_hash): (i64, Vec<u8>) = conn
        .prepare_cached("SELECT last_id, last_hash FROM audit_head WHERE singleton = 1")
        .and_then(|mut s| s.query_row([], |r| Ok((r.get(0)?, r.get(1)?))))
        .map_err(backend)?;
    let prev: [u8; 32] = last_hash
        .try_into()
        .map_err(|_| StoreError::Corrupt("audit chain head hash is not 32 bytes".into()))?;
    let id = last_id + 1;
    let hash = audit_entry_hash(&prev, id, event);
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
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        let id = append(&tx, event)?;
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
