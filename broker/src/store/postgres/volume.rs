//! [`VolumeStore`] on PostgreSQL: `volumes` and `key_versions`, at most one
//! current and one pending version per volume (partial unique indexes).
//! A change of key state locks the volume's row first (`FOR UPDATE`), so
//! two replicas rotating or confirming the same volume serialize.

use tokio_postgres::{GenericClient, Row};

use super::{backend, not_found, now_unix, PgStore};
use crate::keys::{MasterKeyId, SealedKey};
use crate::store::volume::expect_pending;
use crate::store::{
    validate_name, KeyState, KeyVersionRecord, NewVolume, PurgedVersion, ReleaseView, StoreError,
    StoredPolicy, VolumeRecord, VolumeStore,
};

pub(super) fn sealed_from_row(
    volume: &str,
    version: u32,
    id: &[u8],
    nonce: &[u8],
    ciphertext: Vec<u8>,
) -> Result<SealedKey, StoreError> {
    let corrupt = |what: &str| {
        StoreError::Corrupt(format!(
            "key version {version} of volume {volume:?}: {what}"
        ))
    };
    Ok(SealedKey {
        master_key_id: MasterKeyId::from_slice(id)
            .ok_or_else(|| corrupt("master key id is not 16 bytes"))?,
        nonce: nonce
            .try_into()
            .map_err(|_| corrupt("nonce is not 12 bytes"))?,
        ciphertext,
    })
}

pub(super) fn version_u32(volume: &str, version: i64) -> Result<u32, StoreError> {
    u32::try_from(version).map_err(|_| {
        StoreError::Corrupt(format!(
            "volume {volume:?}: key version {version} out of range"
        ))
    })
}

const SQL_KEY_VERSIONS: &str = "SELECT version, state, master_key_id, nonce, ciphertext, \
     created_at, retired_at FROM key_versions WHERE volume = $1 ORDER BY version";

const SQL_VOLUME: &str =
    "SELECT name, policy, description, enabled, created_at FROM volumes WHERE name = $1";

async fn read_keys(
    c: &impl GenericClient,
    volume: &str,
) -> Result<Vec<KeyVersionRecord>, StoreError> {
    let rows = c
        .query(SQL_KEY_VERSIONS, &[&volume])
        .await
        .map_err(backend)?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let version = version_u32(volume, r.get(0))?;
        let state: &str = r.get(1);
        let state = KeyState::parse(state).ok_or_else(|| {
            StoreError::Corrupt(format!("volume {volume:?}: unknown key state {state:?}"))
        })?;
        out.push(KeyVersionRecord {
            version,
            state,
            sealed: sealed_from_row(volume, version, r.get(2), r.get(3), r.get(4))?,
            created_at: r.get(5),
            retired_at: r.get(6),
        });
    }
    Ok(out)
}

fn read_volume(r: &Row) -> VolumeRecord {
    VolumeRecord {
        name: r.get(0),
        policy: r.get(1),
        description: r.get(2),
        enabled: r.get(3),
        created_at: r.get(4),
    }
}

async fn volume_exists(c: &impl GenericClient, name: &str) -> Result<bool, StoreError> {
    Ok(
        c.query_opt("SELECT 1 FROM volumes WHERE name = $1", &[&name])
            .await
            .map_err(backend)?
            .is_some(),
    )
}

/// Locks a volume's row for the rest of the transaction; `false` if it
/// does not exist.
async fn lock_volume(c: &impl GenericClient, name: &str) -> Result<bool, StoreError> {
    Ok(
        c.query_opt("SELECT 1 FROM volumes WHERE name = $1 FOR UPDATE", &[&name])
            .await
            .map_err(backend)?
            .is_some(),
    )
}

/// The highest version a volume ever had, with the volume's row locked;
/// `None` if it does not exist.
async fn highest_version(c: &impl GenericClient, name: &str) -> Result<Option<i64>, StoreError> {
    Ok(c.query_opt(
        "SELECT GREATEST(COALESCE((SELECT MAX(version) FROM key_versions WHERE volume = $1), 0), \
                    highest_version) FROM volumes WHERE name = $1 FOR UPDATE",
        &[&name],
    )
    .await
    .map_err(backend)?
    .map(|r| r.get(0)))
}

impl PgStore {
    fn purge_retired_where(
        &self,
        volume: Option<&str>,
        cutoff_unix: i64,
    ) -> Result<Vec<PurgedVersion>, StoreError> {
        let volume = volume.map(str::to_owned);
        self.run(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await.map_err(backend)?;
                if let Some(name) = &volume {
                    if !lock_volume(&tx, name).await? {
                        return Err(not_found("volume", name));
                    }
                }
                let rows = tx
                    .query(
                        "DELETE FROM key_versions WHERE state = 'retired' AND retired_at < $1 \
                         AND ($2::text IS NULL OR volume = $2) \
                         RETURNING volume, version, retired_at",
                        &[&cutoff_unix, &volume],
                    )
                    .await
                    .map_err(backend)?;
                let mut out = Vec::with_capacity(rows.len());
                for r in rows {
                    let name: String = r.get(0);
                    let version = version_u32(&name, r.get(1))?;
                    out.push(PurgedVersion {
                        volume: name,
                        version,
                        retired_at: r.get(2),
                    });
                }
                tx.commit().await.map_err(backend)?;
                out.sort_by(|a, b| (&a.volume, a.version).cmp(&(&b.volume, b.version)));
                Ok(out)
            })
        })
    }
}

impl VolumeStore for PgStore {
    fn create_volume(&self, volume: &NewVolume, first_key: &SealedKey) -> Result<(), StoreError> {
        validate_name("volume name", &volume.name)?;
        let (volume, key) = (volume.clone(), first_key.clone());
        self.run(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await.map_err(backend)?;
                // FOR SHARE: the policy cannot be deleted before this commits.
                if tx
                    .query_opt(
                        "SELECT 1 FROM policies WHERE name = $1 FOR SHARE",
                        &[&volume.policy],
                    )
                    .await
                    .map_err(backend)?
                    .is_none()
                {
                    return Err(not_found("policy", &volume.policy));
                }
                let now = now_unix();
                let n = tx
                    .execute(
                        "INSERT INTO volumes (name, policy, description, enabled, created_at) \
                         VALUES ($1, $2, $3, TRUE, $4) ON CONFLICT (name) DO NOTHING",
                        &[&volume.name, &volume.policy, &volume.description, &now],
                    )
                    .await
                    .map_err(backend)?;
                if n == 0 {
                    return Err(StoreError::AlreadyExists {
                        what: "volume",
                        name: volume.name.clone(),
                    });
                }
                tx.execute(
                    "INSERT INTO key_versions (volume, version, state, master_key_id, nonce, \
                     ciphertext, created_at, state_changed_at) \
                     VALUES ($1, 1, 'current', $2, $3, $4, $5, $5)",
                    &[
                        &volume.name,
                        &&key.master_key_id.as_bytes()[..],
                        &&key.nonce[..],
                        &key.ciphertext,
                        &now,
                    ],
                )
                .await
                .map_err(backend)?;
                tx.commit().await.map_err(backend)
            })
        })
    }

    fn get_volume(&self, name: &str) -> Result<Option<VolumeRecord>, StoreError> {
        let name = name.to_owned();
        self.run(move |c| {
            Box::pin(async move {
                Ok(c.query_opt(SQL_VOLUME, &[&name])
                    .await
                    .map_err(backend)?
                    .map(|r| read_volume(&r)))
            })
        })
    }

    fn list_volumes(&self) -> Result<Vec<VolumeRecord>, StoreError> {
        self.run(|c| {
            Box::pin(async move {
                Ok(c.query(
                    "SELECT name, policy, description, enabled, created_at FROM volumes \
                         ORDER BY name",
                    &[],
                )
                .await
                .map_err(backend)?
                .iter()
                .map(read_volume)
                .collect())
            })
        })
    }

    fn set_volume_enabled(&self, name: &str, enabled: bool) -> Result<(), StoreError> {
        let name = name.to_owned();
        self.run(move |c| {
            Box::pin(async move {
                let n = c
                    .execute(
                        "UPDATE volumes SET enabled = $2 WHERE name = $1",
                        &[&name, &enabled],
                    )
                    .await
                    .map_err(backend)?;
                if n == 0 {
                    return Err(not_found("volume", &name));
                }
                Ok(())
            })
        })
    }

    fn set_volume_policy(&self, name: &str, policy: &str) -> Result<(), StoreError> {
        let (name, policy) = (name.to_owned(), policy.to_owned());
        self.run(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await.map_err(backend)?;
                if tx
                    .query_opt(
                        "SELECT 1 FROM policies WHERE name = $1 FOR SHARE",
                        &[&policy],
                    )
                    .await
                    .map_err(backend)?
                    .is_none()
                {
                    return Err(not_found("policy", &policy));
                }
                let n = tx
                    .execute(
                        "UPDATE volumes SET policy = $2 WHERE name = $1",
                        &[&name, &policy],
                    )
                    .await
                    .map_err(backend)?;
                if n == 0 {
                    return Err(not_found("volume", &name));
                }
                tx.commit().await.map_err(backend)
            })
        })
    }

    fn delete_volume(&self, name: &str) -> Result<(), StoreError> {
        let name = name.to_owned();
        self.run(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await.map_err(backend)?;
                let enabled: Option<bool> = tx
                    .query_opt(
                        "SELECT enabled FROM volumes WHERE name = $1 FOR UPDATE",
                        &[&name],
                    )
                    .await
                    .map_err(backend)?
                    .map(|r| r.get(0));
                match enabled {
                    None => return Err(not_found("volume", &name)),
                    Some(true) => {
                        return Err(StoreError::Conflict(format!(
                            "volume {name:?} is enabled; disable it first"
                        )))
                    }
                    Some(false) => {}
                }
                for sql in [
                    "DELETE FROM key_versions WHERE volume = $1",
                    "DELETE FROM rotation_sessions WHERE volume = $1",
                    "DELETE FROM volumes WHERE name = $1",
                ] {
                    tx.execute(sql, &[&name]).await.map_err(backend)?;
                }
                tx.commit().await.map_err(backend)
            })
        })
    }

    fn release_view(&self, name: &str) -> Result<Option<ReleaseView>, StoreError> {
        let name = name.to_owned();
        self.run(move |c| {
            Box::pin(async move {
                // One snapshot for the three reads.
                let tx = c
                    .build_transaction()
                    .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                    .read_only(true)
                    .start()
                    .await
                    .map_err(backend)?;
                let Some(volume) = tx
                    .query_opt(SQL_VOLUME, &[&name])
                    .await
                    .map_err(backend)?
                    .map(|r| read_volume(&r))
                else {
                    return Ok(None);
                };
                let policy = tx
                    .query_opt(
                        "SELECT name, revision, text, updated_at FROM policies WHERE name = $1",
                        &[&volume.policy],
                    )
                    .await
                    .map_err(backend)?
                    .map(|r| StoredPolicy {
                        name: r.get(0),
                        revision: r.get(1),
                        text: r.get(2),
                        updated_at: r.get(3),
                    });
                let mut keys = read_keys(&tx, &name).await?;
                keys.retain(|k| k.state != KeyState::Retired);
                tx.commit().await.map_err(backend)?;
                Ok(Some(ReleaseView {
                    volume,
                    policy,
                    keys,
                }))
            })
        })
    }

    fn key_versions(&self, name: &str) -> Result<Vec<KeyVersionRecord>, StoreError> {
        let name = name.to_owned();
        self.run(move |c| {
            Box::pin(async move {
                let out = read_keys(&*c, &name).await?;
                if out.is_empty() && !volume_exists(&*c, &name).await? {
                    return Err(not_found("volume", &name));
                }
                Ok(out)
            })
        })
    }

    fn releasable_keys(&self, name: &str) -> Result<Vec<KeyVersionRecord>, StoreError> {
        let mut out = self.key_versions(name)?;
        out.retain(|k| k.state != KeyState::Retired);
        Ok(out)
    }

    fn add_pending_version(
        &self,
        name: &str,
        version: u32,
        sealed: &SealedKey,
    ) -> Result<(), StoreError> {
        let (name, sealed) = (name.to_owned(), sealed.clone());
        self.run(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await.map_err(backend)?;
                let Some(max) = highest_version(&tx, &name).await? else {
                    return Err(not_found("volume", &name));
                };
                if let Some(p) = tx
                    .query_opt(
                        "SELECT version FROM key_versions WHERE volume = $1 AND state = 'pending'",
                        &[&name],
                    )
                    .await
                    .map_err(backend)?
                {
                    let p: i64 = p.get(0);
                    return Err(StoreError::Conflict(format!(
                        "volume {name:?} already has pending key version {p} awaiting the \
                         guest's proof; let the guest confirm it, or cancel that rotation first"
                    )));
                }
                if i64::from(version) != max + 1 {
                    return Err(StoreError::Conflict(format!(
                        "volume {name:?}: the next key version is {}, not {version}",
                        max + 1
                    )));
                }
                tx.execute(
                    "INSERT INTO key_versions (volume, version, state, master_key_id, nonce, \
                     ciphertext, created_at, state_changed_at) \
                     VALUES ($1, $2, 'pending', $3, $4, $5, $6, $6)",
                    &[
                        &name,
                        &i64::from(version),
                        &&sealed.master_key_id.as_bytes()[..],
                        &&sealed.nonce[..],
                        &sealed.ciphertext,
                        &now_unix(),
                    ],
                )
                .await
                .map_err(backend)?;
                tx.commit().await.map_err(backend)
            })
        })
    }

    fn promote_pending(&self, name: &str, version: u32) -> Result<(), StoreError> {
        let name = name.to_owned();
        self.run(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await.map_err(backend)?;
                lock_volume(&tx, &name).await?;
                let state: Option<String> = tx
                    .query_opt(
                        "SELECT state FROM key_versions WHERE volume = $1 AND version = $2",
                        &[&name, &i64::from(version)],
                    )
                    .await
                    .map_err(backend)?
                    .map(|r| r.get(0));
                expect_pending(&name, version, state.as_deref())?;
                let now = now_unix();
                // Retire first: the partial unique index allows one current.
                tx.execute(
                    "UPDATE key_versions SET state = 'retired', state_changed_at = $2, \
                     retired_at = $2 WHERE volume = $1 AND state = 'current'",
                    &[&name, &now],
                )
                .await
                .map_err(backend)?;
                tx.execute(
                    "UPDATE key_versions SET state = 'current', state_changed_at = $3 \
                     WHERE volume = $1 AND version = $2",
                    &[&name, &i64::from(version), &now],
                )
                .await
                .map_err(backend)?;
                tx.commit().await.map_err(backend)
            })
        })
    }

    fn next_key_version(&self, name: &str) -> Result<u32, StoreError> {
        let name = name.to_owned();
        self.run(move |c| {
            Box::pin(async move {
                let max = c
                    .query_opt(
                        "SELECT GREATEST(COALESCE((SELECT MAX(version) FROM key_versions \
                         WHERE volume = $1), 0), highest_version) FROM volumes WHERE name = $1",
                        &[&name],
                    )
                    .await
                    .map_err(backend)?
                    .map(|r| r.get::<_, i64>(0))
                    .ok_or_else(|| not_found("volume", &name))?;
                u32::try_from(max + 1).map_err(|_| {
                    StoreError::Conflict(format!(
                        "volume {name:?} has used every key version number"
                    ))
                })
            })
        })
    }

    fn cancel_pending(&self, name: &str) -> Result<u32, StoreError> {
        let name = name.to_owned();
        self.run(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await.map_err(backend)?;
                if !lock_volume(&tx, &name).await? {
                    return Err(not_found("volume", &name));
                }
                let Some(version) = tx
                    .query_opt(
                        "DELETE FROM key_versions WHERE volume = $1 AND state = 'pending' \
                         RETURNING version",
                        &[&name],
                    )
                    .await
                    .map_err(backend)?
                    .map(|r| r.get::<_, i64>(0))
                else {
                    return Err(StoreError::Conflict(format!(
                        "volume {name:?} has no pending key version; there is no rotation to cancel"
                    )));
                };
                tx.execute(
                    "UPDATE volumes SET highest_version = GREATEST(highest_version, $2) \
                     WHERE name = $1",
                    &[&name, &version],
                )
                .await
                .map_err(backend)?;
                tx.execute(
                    "DELETE FROM rotation_sessions WHERE volume = $1 AND version = $2",
                    &[&name, &version],
                )
                .await
                .map_err(backend)?;
                tx.commit().await.map_err(backend)?;
                version_u32(&name, version)
            })
        })
    }

    fn purge_retired(&self, cutoff_unix: i64) -> Result<Vec<PurgedVersion>, StoreError> {
        self.purge_retired_where(None, cutoff_unix)
    }

    fn purge_retired_volume(
        &self,
        name: &str,
        cutoff_unix: i64,
    ) -> Result<Vec<PurgedVersion>, StoreError> {
        self.purge_retired_where(Some(name), cutoff_unix)
    }
}
