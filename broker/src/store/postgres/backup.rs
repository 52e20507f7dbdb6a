//! [`BackupStore`] on PostgreSQL: one repeatable-read snapshot out (a
//! consistent backup of a live database, replicas serving meanwhile), one
//! transaction in.

use super::{backend, PgStore};
use crate::store::audit::{key_record_from, prune_anchor_from};
use crate::store::backup::{check_format, not_empty, unhex};
use crate::store::{
    AuditKeyRow, AuditRow, BackupStore, KeyRow, PolicyRow, PruneAnchorRow, SessionRow, Snapshot,
    StoreError, VolumeRow, SNAPSHOT_FORMAT,
};

impl BackupStore for PgStore {
    fn export_snapshot(&self) -> Result<Snapshot, StoreError> {
        self.run_long(|c| {
            Box::pin(async move {
                let tx = c
                    .build_transaction()
                    .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                    .read_only(true)
                    .start()
                    .await
                    .map_err(backend)?;
                let q = |sql: &'static str| {
                    let tx = &tx;
                    async move { tx.query(sql, &[]).await.map_err(backend) }
                };
                let policies = q("SELECT name, revision, text, created_at FROM policy_revisions ORDER BY name, revision")
                    .await?
                    .iter()
                    .map(|r| PolicyRow {
                        name: r.get(0),
                        revision: r.get(1),
                        text: r.get(2),
                        created_at: r.get(3),
                    })
                    .collect();
                let volumes = q("SELECT name, policy, description, enabled, created_at, highest_version FROM volumes ORDER BY name")
                    .await?
                    .iter()
                    .map(|r| VolumeRow {
                        name: r.get(0),
                        policy: r.get(1),
                        description: r.get(2),
                        enabled: r.get(3),
                        created_at: r.get(4),
                        highest_version: r.get(5),
                    })
                    .collect();
                let keys = q("SELECT volume, version, state, master_key_id, nonce, ciphertext, created_at, state_changed_at, retired_at FROM key_versions ORDER BY volume, version")
                    .await?
                    .iter()
                    .map(|r| KeyRow {
                        volume: r.get(0),
                        version: r.get(1),
                        state: r.get(2),
                        master_key_id: hex::encode(r.get::<_, &[u8]>(3)),
                        nonce: hex::encode(r.get::<_, &[u8]>(4)),
                        ciphertext: hex::encode(r.get::<_, &[u8]>(5)),
                        created_at: r.get(6),
                        state_changed_at: r.get(7),
                        retired_at: r.get(8),
                    })
                    .collect();
                let audit = q("SELECT id, at_unix, kind, verdict, volumes, reason_codes, details_json, client_addr, prev_hash, hash FROM audit ORDER BY id")
                    .await?
                    .iter()
                    .map(|r| AuditRow {
                        id: r.get(0),
                        at_unix: r.get(1),
                        kind: r.get(2),
                        verdict: r.get(3),
                        volumes: r.get(4),
                        reason_codes: r.get(5),
                        details_json: r.get(6),
                        client_addr: r.get(7),
                        prev_hash: hex::encode(r.get::<_, &[u8]>(8)),
                        hash: hex::encode(r.get::<_, &[u8]>(9)),
                    })
                    .collect();
                let head = q("SELECT last_id, last_hash FROM audit_head WHERE singleton = 1").await?;
                let head = head
                    .first()
                    .ok_or_else(|| StoreError::Corrupt("no audit chain head".into()))?;
                let audit_head = (head.get(0), hex::encode(head.get::<_, &[u8]>(1)));
                let audit_key = q("SELECT keyed_from, boundary, master_key_id, nonce, ciphertext FROM audit_key WHERE singleton = 1")
                    .await?
                    .first()
                    .map(|r| {
                        key_record_from(r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))
                            .map(|k| AuditKeyRow::from_record(&k))
                    })
                    .transpose()?;
                let audit_pruned = q("SELECT first_id, prev_hash, mac FROM audit_pruned WHERE singleton = 1")
                    .await?
                    .first()
                    .map(|r| {
                        prune_anchor_from(r.get(0), r.get(1), r.get(2))
                            .map(|a| PruneAnchorRow::from_anchor(&a))
                    })
                    .transpose()?;
                let used_nonces = q("SELECT nonce, expires_at FROM used_nonces ORDER BY nonce")
                    .await?
                    .iter()
                    .map(|r| (hex::encode(r.get::<_, &[u8]>(0)), r.get(1)))
                    .collect();
                let rotation_sessions = q("SELECT nonce, volume, version, report_data, expires_at FROM rotation_sessions ORDER BY nonce, volume")
                    .await?
                    .iter()
                    .map(|r| SessionRow {
                        nonce: hex::encode(r.get::<_, &[u8]>(0)),
                        volume: r.get(1),
                        version: r.get(2),
                        report_data: hex::encode(r.get::<_, &[u8]>(3)),
                        expires_at: r.get(4),
                    })
                    .collect();
                tx.commit().await.map_err(backend)?;
                Ok(Snapshot {
                    format: SNAPSHOT_FORMAT.into(),
                    policies,
                    volumes,
                    keys,
                    audit,
                    audit_head,
                    audit_key,
                    audit_pruned,
                    used_nonces,
                    rotation_sessions,
                })
            })
        })
    }

    fn import_snapshot(&self, s: &Snapshot) -> Result<(), StoreError> {
        check_format(s)?;
        let s = s.clone();
        self.run_long(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await.map_err(backend)?;
                // No other writer may start meanwhile.
                tx.batch_execute(
                    "LOCK TABLE policies, policy_revisions, volumes, key_versions, audit, \
                     audit_head, audit_key, audit_pruned, used_nonces, rotation_sessions IN EXCLUSIVE MODE",
                )
                .await
                .map_err(backend)?;
                let used: i64 = tx
                    .query_one(
                        "SELECT (SELECT COUNT(*) FROM policies) + (SELECT COUNT(*) FROM volumes) \
                         + (SELECT COUNT(*) FROM audit)",
                        &[],
                    )
                    .await
                    .map_err(backend)?
                    .get(0);
                if used != 0 {
                    return Err(not_empty());
                }
                for p in &s.policies {
                    tx.execute(
                        "INSERT INTO policy_revisions (name, revision, text, created_at) VALUES ($1, $2, $3, $4)",
                        &[&p.name, &p.revision, &p.text, &p.created_at],
                    )
                    .await
                    .map_err(backend)?;
                }
                tx.batch_execute(
                    "INSERT INTO policies (name, revision, text, updated_at) \
                     SELECT name, revision, text, created_at FROM policy_revisions r \
                     WHERE revision = (SELECT MAX(revision) FROM policy_revisions WHERE name = r.name)",
                )
                .await
                .map_err(backend)?;
                for v in &s.volumes {
                    tx.execute(
                        "INSERT INTO volumes (name, policy, description, enabled, created_at, highest_version) \
                         VALUES ($1, $2, $3, $4, $5, $6)",
                        &[&v.name, &v.policy, &v.description, &v.enabled, &v.created_at, &v.highest_version],
                    )
                    .await
                    .map_err(backend)?;
                }
                for k in &s.keys {
                    tx.execute(
                        "INSERT INTO key_versions (volume, version, state, master_key_id, nonce, ciphertext, \
                         created_at, state_changed_at, retired_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                        &[
                            &k.volume,
                            &k.version,
                            &k.state,
                            &unhex("master key id", &k.master_key_id)?,
                            &unhex("key nonce", &k.nonce)?,
                            &unhex("ciphertext", &k.ciphertext)?,
                            &k.created_at,
                            &k.state_changed_at,
                            &k.retired_at,
                        ],
                    )
                    .await
                    .map_err(backend)?;
                }
                for a in &s.audit {
                    tx.execute(
                        "INSERT INTO audit (id, at_unix, kind, verdict, volumes, reason_codes, details_json, \
                         client_addr, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                        &[
                            &a.id,
                            &a.at_unix,
                            &a.kind,
                            &a.verdict,
                            &a.volumes,
                            &a.reason_codes,
                            &a.details_json,
                            &a.client_addr,
                            &unhex("audit hash", &a.prev_hash)?,
                            &unhex("audit hash", &a.hash)?,
                        ],
                    )
                    .await
                    .map_err(backend)?;
                }
                tx.execute(
                    "UPDATE audit_head SET last_id = $1, last_hash = $2 WHERE singleton = 1",
                    &[&s.audit_head.0, &unhex("audit head", &s.audit_head.1)?],
                )
                .await
                .map_err(backend)?;
                // The snapshot's chain key (or none, for plain entries)
                // replaces one `broker init` made for the empty store.
                tx.execute("DELETE FROM audit_key", &[])
                    .await
                    .map_err(backend)?;
                if let Some(k) = &s.audit_key {
                    let r = k.to_record()?;
                    tx.execute(
                        "INSERT INTO audit_key (singleton, keyed_from, boundary, master_key_id, \
                         nonce, ciphertext, created_at) VALUES (1, $1, $2, $3, $4, $5, $6)",
                        &[
                            &r.keyed_from,
                            &&r.boundary[..],
                            &&r.sealed.master_key_id.as_bytes()[..],
                            &&r.sealed.nonce[..],
                            &r.sealed.ciphertext,
                            &super::now_unix(),
                        ],
                    )
                    .await
                    .map_err(backend)?;
                }
                if let Some(a) = &s.audit_pruned {
                    let a = a.to_anchor()?;
                    tx.execute(
                        "INSERT INTO audit_pruned (singleton, first_id, prev_hash, mac, pruned_at) \
                         VALUES (1, $1, $2, $3, $4)",
                        &[&a.first_id, &&a.prev_hash[..], &&a.mac[..], &super::now_unix()],
                    )
                    .await
                    .map_err(backend)?;
                }
                for (n, exp) in &s.used_nonces {
                    tx.execute(
                        "INSERT INTO used_nonces (nonce, expires_at) VALUES ($1, $2)",
                        &[&unhex("nonce", n)?, exp],
                    )
                    .await
                    .map_err(backend)?;
                }
                for r in &s.rotation_sessions {
                    tx.execute(
                        "INSERT INTO rotation_sessions (nonce, volume, version, report_data, expires_at) \
                         VALUES ($1, $2, $3, $4, $5)",
                        &[
                            &unhex("nonce", &r.nonce)?,
                            &r.volume,
                            &r.version,
                            &unhex("report data", &r.report_data)?,
                            &r.expires_at,
                        ],
                    )
                    .await
                    .map_err(backend)?;
                }
                tx.commit().await.map_err(backend)
            })
        })
    }
}
