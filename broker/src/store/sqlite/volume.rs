//! [`VolumeStore`] on SQLite: `volumes` and `key_versions`, at most one
//! current and one pending version per volume (partial unique indexes).

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::policy::{policy_exists, read_policy};
use super::{backend, not_found, now_unix, SqliteStore};
use crate::keys::{MasterKeyId, SealedKey};
use crate::store::volume::expect_pending;
use crate::store::{
    validate_name, KeyState, KeyVersionRecord, NewVolume, PurgedVersion, ReleaseView, StoreError,
    VolumeRecord, VolumeStore,
};

pub(super) fn sealed_from_row(
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

fn read_volume(r: &rusqlite::Row<'_>) -> rusqlite::Result<VolumeRecord> {
    Ok(VolumeRecord {
        name: r.get(0)?,
        policy: r.get(1)?,
        description: r.get(2)?,
        enabled: r.get::<_, i64>(3)? != 0,
        created_at: r.get(4)?,
    })
}

/// Deletes retired versions retired before `cutoff_unix`, of one
/// volume (`NotFound` if it does not exist) or of all.
fn purge_retired_where(
    store: &SqliteStore,
    volume: Option<&str>,
    cutoff_unix: i64,
) -> Result<Vec<PurgedVersion>, StoreError> {
    let mut conn = store.conn();
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

impl VolumeStore for SqliteStore {
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
        expect_pending(name, version, state.as_deref())?;
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
        purge_retired_where(self, None, cutoff_unix)
    }

    fn purge_retired_volume(
        &self,
        name: &str,
        cutoff_unix: i64,
    ) -> Result<Vec<PurgedVersion>, StoreError> {
        purge_retired_where(self, Some(name), cutoff_unix)
    }
}
