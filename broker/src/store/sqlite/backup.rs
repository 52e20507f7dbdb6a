//! [`BackupStore`] on SQLite: one read transaction out, one write
//! transaction in.

use rusqlite::{params, Connection, TransactionBehavior};

use super::{backend, SqliteStore};
use crate::store::backup::{check_format, not_empty, unhex};
use crate::store::{
    AuditKeyRow, AuditRow, BackupStore, KeyRow, PolicyRow, PruneAnchorRow, SessionRow, Snapshot,
    StoreError, VolumeRow, SNAPSHOT_FORMAT,
};

fn rows<T>(
    conn: &Connection,
    sql: &str,
    f: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>, StoreError> {
    let mut s = conn.prepare(sql).map_err(backend)?;
    let out = s
        .query_map([], f)
        .map_err(backend)?
        .collect::<Result<Vec<T>, _>>()
        .map_err(backend)?;
    Ok(out)
}

impl BackupStore for SqliteStore {
    fn export_snapshot(&self) -> Result<Snapshot, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(backend)?;
        let snap = Snapshot {
            format: SNAPSHOT_FORMAT.into(),
            policies: rows(
                &tx,
                "SELECT name, revision, text, created_at FROM policy_revisions ORDER BY name, revision",
                |r| {
                    Ok(PolicyRow {
                        name: r.get(0)?,
                        revision: r.get(1)?,
                        text: r.get(2)?,
                        created_at: r.get(3)?,
                    })
                },
            )?,
            volumes: rows(
                &tx,
                "SELECT name, policy, description, enabled, created_at, highest_version \
                 FROM volumes ORDER BY name",
                |r| {
                    Ok(VolumeRow {
                        name: r.get(0)?,
                        policy: r.get(1)?,
                        description: r.get(2)?,
                        enabled: r.get::<_, i64>(3)? != 0,
                        created_at: r.get(4)?,
                        highest_version: r.get(5)?,
                    })
                },
            )?,
            keys: rows(
                &tx,
                "SELECT volume, version, state, master_key_id, nonce, ciphertext, created_at, \
                 state_changed_at, retired_at FROM key_versions ORDER BY volume, version",
                |r| {
                    Ok(KeyRow {
                        volume: r.get(0)?,
                        version: r.get(1)?,
                        state: r.get(2)?,
                        master_key_id: hex::encode(r.get::<_, Vec<u8>>(3)?),
                        nonce: hex::encode(r.get::<_, Vec<u8>>(4)?),
                        ciphertext: hex::encode(r.get::<_, Vec<u8>>(5)?),
                        created_at: r.get(6)?,
                        state_changed_at: r.get(7)?,
                        retired_at: r.get(8)?,
                    })
                },
            )?,
            audit: rows(
                &tx,
                "SELECT id, at_unix, kind, verdict, volumes, reason_codes, details_json, \
                 client_addr, prev_hash, hash FROM audit ORDER BY id",
                |r| {
                    Ok(AuditRow {
                        id: r.get(0)?,
                        at_unix: r.get(1)?,
                        kind: r.get(2)?,
                        verdict: r.get(3)?,
                        volumes: r.get(4)?,
                        reason_codes: r.get(5)?,
                        details_json: r.get(6)?,
                        client_addr: r.get(7)?,
                        prev_hash: hex::encode(r.get::<_, Vec<u8>>(8)?),
                        hash: hex::encode(r.get::<_, Vec<u8>>(9)?),
                    })
                },
            )?,
            audit_head: tx
                .query_row(
                    "SELECT last_id, last_hash FROM audit_head WHERE singleton = 1",
                    [],
                    |r| Ok((r.get(0)?, hex::encode(r.get::<_, Vec<u8>>(1)?))),
                )
                .map_err(backend)?,
            audit_key: super::audit::key_record_of(&tx)?
                .as_ref()
                .map(AuditKeyRow::from_record),
            audit_pruned: super::audit::prune_anchor_of(&tx)?
                .as_ref()
                .map(PruneAnchorRow::from_anchor),
            used_nonces: rows(
                &tx,
                "SELECT nonce, expires_at FROM used_nonces ORDER BY nonce",
                |r| Ok((hex::encode(r.get::<_, Vec<u8>>(0)?), r.get(1)?)),
            )?,
            rotation_sessions: rows(
                &tx,
                "SELECT nonce, volume, version, report_data, expires_at FROM rotation_sessions \
                 ORDER BY nonce, volume",
                |r| {
                    Ok(SessionRow {
                        nonce: hex::encode(r.get::<_, Vec<u8>>(0)?),
                        volume: r.get(1)?,
                        version: r.get(2)?,
                        report_data: hex::encode(r.get::<_, Vec<u8>>(3)?),
                        expires_at: r.get(4)?,
                    })
                },
            )?,
        };
        tx.commit().map_err(backend)?;
        Ok(snap)
    }

    fn import_snapshot(&self, s: &Snapshot) -> Result<(), StoreError> {
        check_format(s)?;
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        let used: i64 = tx
            .query_row(
                "SELECT (SELECT COUNT(*) FROM policies) + (SELECT COUNT(*) FROM volumes) + \
                 (SELECT COUNT(*) FROM audit)",
                [],
                |r| r.get(0),
            )
            .map_err(backend)?;
        if used != 0 {
            return Err(not_empty());
        }
        for p in &s.policies {
            tx.execute(
                "INSERT INTO policy_revisions (name, revision, text, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![p.name, p.revision, p.text, p.created_at],
            )
            .map_err(backend)?;
        }
        // The latest revision of each policy is its current text.
        tx.execute_batch(
            "INSERT INTO policies (name, revision, text, updated_at) \
             SELECT name, revision, text, created_at FROM policy_revisions r \
             WHERE revision = (SELECT MAX(revision) FROM policy_revisions WHERE name = r.name)",
        )
        .map_err(backend)?;
        for v in &s.volumes {
            tx.execute(
                "INSERT INTO volumes (name, policy, description, enabled, created_at, highest_version) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![v.name, v.policy, v.description, i64::from(v.enabled), v.created_at, v.highest_version],
            )
            .map_err(backend)?;
        }
        for k in &s.keys {
            tx.execute(
                "INSERT INTO key_versions (volume, version, state, master_key_id, nonce, ciphertext, \
                 created_at, state_changed_at, retired_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    k.volume,
                    k.version,
                    k.state,
                    unhex("master key id", &k.master_key_id)?,
                    unhex("key nonce", &k.nonce)?,
                    unhex("ciphertext", &k.ciphertext)?,
                    k.created_at,
                    k.state_changed_at,
                    k.retired_at
                ],
            )
            .map_err(backend)?;
        }
        for a in &s.audit {
            tx.execute(
                "INSERT INTO audit (id, at_unix, kind, verdict, volumes, reason_codes, details_json, \
                 client_addr, prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    a.id,
                    a.at_unix,
                    a.kind,
                    a.verdict,
                    a.volumes,
                    a.reason_codes,
                    a.details_json,
                    a.client_addr,
                    unhex("audit hash", &a.prev_hash)?,
                    unhex("audit hash", &a.hash)?
                ],
            )
            .map_err(backend)?;
        }
        tx.execute(
            "UPDATE audit_head SET last_id = ?1, last_hash = ?2 WHERE singleton = 1",
            params![s.audit_head.0, unhex("audit head", &s.audit_head.1)?],
        )
        .map_err(backend)?;
        // The snapshot's chain key (or none, for plain entries) replaces
        // one `broker init` made for the empty store.
        tx.execute("DELETE FROM audit_key", []).map_err(backend)?;
        if let Some(k) = &s.audit_key {
            let r = k.to_record()?;
            tx.execute(
                "INSERT INTO audit_key (singleton, keyed_from, boundary, master_key_id, nonce, \
                 ciphertext, created_at) VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    r.keyed_from,
                    &r.boundary[..],
                    &r.sealed.master_key_id.as_bytes()[..],
                    &r.sealed.nonce[..],
                    r.sealed.ciphertext,
                    super::now_unix()
                ],
            )
            .map_err(backend)?;
        }
        if let Some(a) = &s.audit_pruned {
            let a = a.to_anchor()?;
            tx.execute(
                "INSERT INTO audit_pruned (singleton, first_id, prev_hash, mac, pruned_at) \
                 VALUES (1, ?1, ?2, ?3, ?4)",
                params![a.first_id, &a.prev_hash[..], &a.mac[..], super::now_unix()],
            )
            .map_err(backend)?;
        }
        for (n, exp) in &s.used_nonces {
            tx.execute(
                "INSERT INTO used_nonces (nonce, expires_at) VALUES (?1, ?2)",
                params![unhex("nonce", n)?, exp],
            )
            .map_err(backend)?;
        }
        for r in &s.rotation_sessions {
            tx.execute(
                "INSERT INTO rotation_sessions (nonce, volume, version, report_data, expires_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    unhex("nonce", &r.nonce)?,
                    r.volume,
                    r.version,
                    unhex("report data", &r.report_data)?,
                    r.expires_at
                ],
            )
            .map_err(backend)?;
        }
        tx.commit().map_err(backend)
    }
}
