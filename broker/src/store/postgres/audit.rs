//! [`AuditStore`] on PostgreSQL: `audit` (append-only by triggers) and its
//! chain head `audit_head`, read `FOR UPDATE` and updated in the
//! transaction of each append, so appends through every replica form one
//! chain, serialized on that row.

use tokio_postgres::{GenericClient, Row};

use super::{backend, to_json, PgStore};
use crate::store::{
    audit_entry_hash, verify_chain, AuditChainError, AuditEntry, AuditEvent, AuditFilter, AuditId,
    AuditStore, StoreError,
};

const AUDIT_COLUMNS: &str = "SELECT id, at_unix, kind, verdict, volumes, reason_codes, \
     details_json, client_addr, prev_hash, hash FROM audit";

fn decode_audit(r: &Row) -> Result<AuditEntry, AuditChainError> {
    let id: i64 = r.get(0);
    let bad = |what: String| AuditChainError { at_id: id, what };
    let list = |i: usize, what: &str| -> Result<Vec<String>, AuditChainError> {
        serde_json::from_str(r.get::<_, &str>(i))
            .map_err(|e| bad(format!("{what} is not a JSON list of strings: {e}")))
    };
    let h32 = |i: usize, name: &str| -> Result<[u8; 32], AuditChainError> {
        r.get::<_, Vec<u8>>(i)
            .try_into()
            .map_err(|_| bad(format!("{name} is not 32 bytes")))
    };
    Ok(AuditEntry {
        id: AuditId(id),
        event: AuditEvent {
            at_unix: r.get(1),
            kind: r.get(2),
            verdict: r.get(3),
            volumes: list(4, "volumes")?,
            reason_codes: list(5, "reason_codes")?,
            details_json: r.get(6),
            client_addr: r.get(7),
        },
        prev_hash: h32(8, "prev_hash")?,
        hash: h32(9, "hash")?,
    })
}

/// Appends `event` (already validated) after the chain head, on `c`: must
/// run inside a transaction (which may also do other work); the head's row
/// lock serializes appends from every replica until it commits.
pub(super) async fn append(
    c: &impl GenericClient,
    event: &AuditEvent,
) -> Result<AuditId, StoreError> {
    let head = c
        .query_one(
            "SELECT last_id, last_hash FROM audit_head WHERE singleton = 1 FOR UPDATE",
            &[],
        )
        .await
        .map_err(backend)?;
    let last_id: i64 = head.get(0);
    let prev: [u8; 32] = head
        .get::<_, Vec<u8>>(1)
        .try_into()
        .map_err(|_| StoreError::Corrupt("audit chain head hash is not 32 bytes".into()))?;
    let id = last_id + 1;
    let hash = audit_entry_hash(&prev, id, event);
    c.execute(
        "INSERT INTO audit (id, at_unix, kind, verdict, volumes, reason_codes, details_json, \
         client_addr, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        &[
            &id,
            &event.at_unix,
            &event.kind,
            &event.verdict,
            &to_json(&event.volumes),
            &to_json(&event.reason_codes),
            &event.details_json,
            &event.client_addr,
            &&prev[..],
            &&hash[..],
        ],
    )
    .await
    .map_err(backend)?;
    c.execute(
        "UPDATE audit_head SET last_id = $1, last_hash = $2 WHERE singleton = 1",
        &[&id, &&hash[..]],
    )
    .await
    .map_err(backend)?;
    Ok(AuditId(id))
}

impl AuditStore for PgStore {
    fn append_audit(&self, event: &AuditEvent) -> Result<AuditId, StoreError> {
        event.validate()?;
        let event = event.clone();
        self.run(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await.map_err(backend)?;
                let id = append(&tx, &event).await?;
                tx.commit().await.map_err(backend)?;
                Ok(id)
            })
        })
    }

    fn audit_entries(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>, StoreError> {
        let f = filter.clone();
        self.run(move |c| {
            Box::pin(async move {
                let order = if f.newest_first { "DESC" } else { "ASC" };
                let sql = format!(
                    "{AUDIT_COLUMNS} WHERE ($1::text IS NULL OR volumes::jsonb ? $1::text) \
                     AND ($2::bigint IS NULL OR at_unix >= $2) \
                     AND ($3::bigint IS NULL OR at_unix < $3) \
                     AND ($4::text IS NULL OR verdict = $4) AND ($5::text IS NULL OR kind = $5) \
                     AND ($6::bigint IS NULL OR id > $6) AND ($8::bigint IS NULL OR id < $8) \
                     ORDER BY id {order} LIMIT $7"
                );
                let limit: Option<i64> = f.limit.map(i64::from);
                let rows = c
                    .query(
                        &sql,
                        &[
                            &f.volume,
                            &f.since_unix,
                            &f.until_unix,
                            &f.verdict,
                            &f.kind,
                            &f.after_id,
                            &limit,
                            &f.before_id,
                        ],
                    )
                    .await
                    .map_err(backend)?;
                rows.iter()
                    .map(|r| decode_audit(r).map_err(|e| StoreError::Corrupt(e.to_string())))
                    .collect()
            })
        })
    }

    fn verify_audit_chain(&self) -> Result<u64, StoreError> {
        self.run(|c| {
            Box::pin(async move {
                // One repeatable-read snapshot: appends by other replicas
                // cannot make the head and the rows disagree mid-check.
                let tx = c
                    .build_transaction()
                    .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                    .read_only(true)
                    .start()
                    .await
                    .map_err(backend)?;
                let head = tx
                    .query_one(
                        "SELECT last_id, last_hash FROM audit_head WHERE singleton = 1",
                        &[],
                    )
                    .await
                    .map_err(backend)?;
                let head_hash: [u8; 32] = head.get::<_, Vec<u8>>(1).try_into().map_err(|_| {
                    StoreError::Corrupt("audit chain head hash is not 32 bytes".into())
                })?;
                let rows = tx
                    .query(&format!("{AUDIT_COLUMNS} ORDER BY id"), &[])
                    .await
                    .map_err(backend)?;
                tx.commit().await.map_err(backend)?;
                verify_chain(rows.iter().map(decode_audit), (head.get(0), head_hash))
                    .map_err(StoreError::from)
            })
        })
    }
}
