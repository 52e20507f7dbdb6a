//! [`AuditStore`] on PostgreSQL: `audit` (append-only by triggers) and its
//! chain head `audit_head`, read `FOR UPDATE` and updated in the
//! transaction of each append, so appends through every replica form one
//! chain, serialized on that row; and the sealed chain key `audit_key`.

use std::sync::Arc;

use tokio_postgres::{GenericClient, Row};

use super::{backend, now_unix, to_json, PgStore};
use crate::store::audit::{key_record_from, prune_anchor_from, tail_start};
use crate::store::audit_hash::key_not_loaded;
use crate::store::{
    chain_hash, prune_event, AuditChainError, AuditEntry, AuditEvent, AuditFilter, AuditId,
    AuditKeyInsert, AuditKeyRecord, AuditStore, ChainKeying, ChainWalk, PruneAnchor, PruneOutcome,
    StoreError, VERIFY_PAGE,
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

async fn head(c: &impl GenericClient, lock: bool) -> Result<(i64, [u8; 32]), StoreError> {
    let sql = if lock {
        "SELECT last_id, last_hash FROM audit_head WHERE singleton = 1 FOR UPDATE"
    } else {
        "SELECT last_id, last_hash FROM audit_head WHERE singleton = 1"
    };
    let row = c.query_one(sql, &[]).await.map_err(backend)?;
    let h: [u8; 32] = row
        .get::<_, Vec<u8>>(1)
        .try_into()
        .map_err(|_| StoreError::Corrupt("audit chain head hash is not 32 bytes".into()))?;
    Ok((row.get(0), h))
}

async fn key_record(c: &impl GenericClient) -> Result<Option<AuditKeyRecord>, StoreError> {
    let row = c
        .query_opt(
            "SELECT keyed_from, boundary, master_key_id, nonce, ciphertext FROM audit_key \
             WHERE singleton = 1",
            &[],
        )
        .await
        .map_err(backend)?;
    row.map(|r| key_record_from(r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .transpose()
}

async fn prune_anchor(c: &impl GenericClient) -> Result<Option<PruneAnchor>, StoreError> {
    let row = c
        .query_opt(
            "SELECT first_id, prev_hash, mac FROM audit_pruned WHERE singleton = 1",
            &[],
        )
        .await
        .map_err(backend)?;
    row.map(|r| prune_anchor_from(r.get(0), r.get(1), r.get(2)))
        .transpose()
}

/// Appends `event` (already validated) after the chain head, on `c`: must
/// run inside a transaction (which may also do other work); the head's row
/// lock serializes appends from every replica until it commits. `keying`
/// is the installed chain key; without one, a database that has a chain
/// key is refused.
pub(super) async fn append(
    c: &impl GenericClient,
    keying: Option<&ChainKeying>,
    event: &AuditEvent,
) -> Result<AuditId, StoreError> {
    let (last_id, prev) = head(c, true).await?;
    if keying.is_none() {
        if let Some(r) = key_record(c).await? {
            return Err(key_not_loaded(r.keyed_from));
        }
    }
    let id = last_id + 1;
    let hash = chain_hash(keying, &prev, id, event);
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
        let keying = self.keying.get();
        self.run(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await.map_err(backend)?;
                let id = append(&tx, keying.as_deref(), &event).await?;
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

    fn verify_audit_from(&self, from_id: i64) -> Result<u64, StoreError> {
        let keying = self.keying.get();
        // A long log takes a while: the long timeout, as backups have.
        self.run_long(move |c| {
            Box::pin(async move {
                // One repeatable-read snapshot: appends by other replicas
                // cannot make the head and the rows disagree mid-check.
                // Read in pages, so memory stays bounded.
                let tx = c
                    .build_transaction()
                    .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                    .read_only(true)
                    .start()
                    .await
                    .map_err(backend)?;
                let head = head(&tx, false).await?;
                let stored = key_record(&tx).await?.map(|r| (r.keyed_from, r.boundary));
                let mut walk = ChainWalk::new(keying.as_deref(), stored)?;
                let mut start = 1;
                if let Some(a) = prune_anchor(&tx).await? {
                    walk = walk.from_prune_anchor(&a)?;
                    start = a.first_id;
                }
                if from_id > start {
                    let prev = tx
                        .query_opt("SELECT prev_hash FROM audit WHERE id = $1", &[&from_id])
                        .await
                        .map_err(backend)?
                        .map(|r| r.get::<_, Vec<u8>>(0));
                    walk = walk.starting_at(from_id, tail_start(from_id, prev)?);
                }
                let page = tx
                    .prepare(&format!(
                        "{AUDIT_COLUMNS} WHERE id > $1 ORDER BY id LIMIT $2"
                    ))
                    .await
                    .map_err(backend)?;
                loop {
                    let rows = tx
                        .query(&page, &[&walk.after_id(), &i64::from(VERIFY_PAGE)])
                        .await
                        .map_err(backend)?;
                    for r in &rows {
                        walk.push(decode_audit(r))?;
                    }
                    if rows.len() < VERIFY_PAGE as usize {
                        break;
                    }
                }
                tx.commit().await.map_err(backend)?;
                walk.finish(head).map_err(StoreError::from)
            })
        })
    }

    fn audit_head(&self) -> Result<(i64, [u8; 32]), StoreError> {
        self.run(|c| Box::pin(async move { head(&*c, false).await }))
    }

    fn audit_key_record(&self) -> Result<Option<AuditKeyRecord>, StoreError> {
        self.run(|c| Box::pin(async move { key_record(&*c).await }))
    }

    fn insert_audit_key(&self, record: &AuditKeyRecord) -> Result<AuditKeyInsert, StoreError> {
        let record = record.clone();
        self.run(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await.map_err(backend)?;
                // The head's row lock: appends from every replica wait,
                // and so does another replica making the key at once.
                let head = head(&tx, true).await?;
                if let Some(r) = key_record(&tx).await? {
                    return Ok(AuditKeyInsert::Exists(r));
                }
                if head != (record.keyed_from - 1, record.boundary) {
                    return Ok(AuditKeyInsert::HeadMoved);
                }
                let n = tx
                    .execute(
                        "INSERT INTO audit_key (singleton, keyed_from, boundary, master_key_id, \
                         nonce, ciphertext, created_at) VALUES (1, $1, $2, $3, $4, $5, $6) \
                         ON CONFLICT (singleton) DO NOTHING",
                        &[
                            &record.keyed_from,
                            &&record.boundary[..],
                            &&record.sealed.master_key_id.as_bytes()[..],
                            &&record.sealed.nonce[..],
                            &record.sealed.ciphertext,
                            &now_unix(),
                        ],
                    )
                    .await
                    .map_err(backend)?;
                if n == 0 {
                    // Made by another replica after our read: use theirs.
                    let theirs = key_record(&tx).await?.ok_or_else(|| {
                        StoreError::Corrupt("the audit chain key record vanished".into())
                    })?;
                    return Ok(AuditKeyInsert::Exists(theirs));
                }
                tx.commit().await.map_err(backend)?;
                Ok(AuditKeyInsert::Created)
            })
        })
    }

    fn audit_prune_anchor(&self) -> Result<Option<PruneAnchor>, StoreError> {
        self.run(|c| Box::pin(async move { prune_anchor(&*c).await }))
    }

    fn prune_audit(
        &self,
        before_unix: i64,
        at_unix: i64,
        client: Option<String>,
    ) -> Result<PruneOutcome, StoreError> {
        let keying = self.keying.get();
        self.run_long(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await.map_err(backend)?;
                // The head's row lock: no append (from any replica) until
                // the prune and its entry commit.
                let (last_id, _) = head(&tx, true).await?;
                let Some(keying) = keying else {
                    return Err(key_not_loaded(
                        key_record(&tx).await?.map_or(1, |r| r.keyed_from),
                    ));
                };
                let start = prune_anchor(&tx).await?.map_or(1, |a| a.first_id);
                let first_at: Option<i64> = tx
                    .query_one(
                        "SELECT MIN(id) FROM audit WHERE at_unix >= $1 AND id >= $2",
                        &[&before_unix, &start],
                    )
                    .await
                    .map_err(backend)?
                    .get(0);
                // Always keep the newest entry.
                let first_kept = first_at.unwrap_or(last_id).min(last_id);
                if first_kept <= start {
                    return Ok(PruneOutcome {
                        removed: 0,
                        first_kept: start,
                        entry: None,
                    });
                }
                let prev = tx
                    .query_opt("SELECT prev_hash FROM audit WHERE id = $1", &[&first_kept])
                    .await
                    .map_err(backend)?
                    .map(|r| r.get::<_, Vec<u8>>(0));
                let prev = tail_start(first_kept, prev)?;
                // The anchor first: the trigger lets through only the
                // removal of entries before it.
                tx.execute(
                    "INSERT INTO audit_pruned (singleton, first_id, prev_hash, mac, pruned_at) \
                     VALUES (1, $1, $2, $3, $4) ON CONFLICT (singleton) DO UPDATE SET \
                     first_id = EXCLUDED.first_id, prev_hash = EXCLUDED.prev_hash, \
                     mac = EXCLUDED.mac, pruned_at = EXCLUDED.pruned_at",
                    &[
                        &first_kept,
                        &&prev[..],
                        &&keying.anchor_mac(first_kept, &prev)[..],
                        &at_unix,
                    ],
                )
                .await
                .map_err(backend)?;
                let removed = tx
                    .execute("DELETE FROM audit WHERE id < $1", &[&first_kept])
                    .await
                    .map_err(backend)?;
                let event = prune_event(at_unix, client, removed, before_unix, first_kept);
                let id = append(&tx, Some(&keying), &event).await?;
                tx.commit().await.map_err(backend)?;
                Ok(PruneOutcome {
                    removed,
                    first_kept,
                    entry: Some(id),
                })
            })
        })
    }

    fn install_audit_key(&self, keying: Arc<ChainKeying>) {
        self.keying.set(keying);
    }

    fn installed_audit_key(&self) -> Option<Arc<ChainKeying>> {
        self.keying.get()
    }
}
