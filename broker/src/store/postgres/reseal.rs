//! [`ResealStore`] on PostgreSQL: compare-and-set updates of
//! `key_versions` by master key id.

use super::volume::{sealed_from_row, version_u32};
use super::{backend, PgStore};
use crate::keys::{MasterKeyId, SealedKey};
use crate::store::{MasterKeyUsage, ResealStore, ResealUpdate, SealedVersion, StoreError};

impl ResealStore for PgStore {
    fn keys_not_under(
        &self,
        master: MasterKeyId,
        limit: u32,
    ) -> Result<Vec<SealedVersion>, StoreError> {
        self.run(move |c| {
            Box::pin(async move {
                let rows = c
                    .query(
                        "SELECT volume, version, master_key_id, nonce, ciphertext FROM key_versions \
                         WHERE master_key_id <> $1 ORDER BY volume, version LIMIT $2",
                        &[&&master.as_bytes()[..], &i64::from(limit)],
                    )
                    .await
                    .map_err(backend)?;
                let mut out = Vec::with_capacity(rows.len());
                for r in rows {
                    let volume: String = r.get(0);
                    let version = version_u32(&volume, r.get(1))?;
                    let sealed = sealed_from_row(&volume, version, r.get(2), r.get(3), r.get(4))?;
                    out.push(SealedVersion {
                        volume,
                        version,
                        sealed,
                    });
                }
                Ok(out)
            })
        })
    }

    fn reseal_batch(&self, updates: &[ResealUpdate]) -> Result<u64, StoreError> {
        let updates = updates.to_vec();
        self.run(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await.map_err(backend)?;
                let stmt = tx
                    .prepare(
                        "UPDATE key_versions SET master_key_id = $4, nonce = $5, ciphertext = $6 \
                         WHERE volume = $1 AND version = $2 AND master_key_id = $3",
                    )
                    .await
                    .map_err(backend)?;
                let mut n = 0u64;
                for u in &updates {
                    n += tx
                        .execute(
                            &stmt,
                            &[
                                &u.volume,
                                &i64::from(u.version),
                                &&u.from.as_bytes()[..],
                                &&u.sealed.master_key_id.as_bytes()[..],
                                &&u.sealed.nonce[..],
                                &u.sealed.ciphertext,
                            ],
                        )
                        .await
                        .map_err(backend)?;
                }
                tx.commit().await.map_err(backend)?;
                Ok(n)
            })
        })
    }

    fn master_key_usage(&self) -> Result<Vec<MasterKeyUsage>, StoreError> {
        self.run(|c| {
            Box::pin(async move {
                let rows = c
                    .query(
                        "SELECT master_key_id, COUNT(*), COUNT(*) FILTER (WHERE state = 'retired'), \
                         MIN(created_at) FROM key_versions GROUP BY master_key_id \
                         ORDER BY master_key_id",
                        &[],
                    )
                    .await
                    .map_err(backend)?;
                let mut out = Vec::with_capacity(rows.len());
                for r in rows {
                    out.push(MasterKeyUsage {
                        id: MasterKeyId::from_slice(r.get(0)).ok_or_else(|| {
                            StoreError::Corrupt(
                                "a key version's master key id is not 16 bytes".into(),
                            )
                        })?,
                        records: r.get::<_, i64>(1) as u64,
                        retired: r.get::<_, i64>(2) as u64,
                        oldest_created_at: r.get(3),
                    });
                }
                Ok(out)
            })
        })
    }

    fn reseal_audit_key(&self, from: MasterKeyId, sealed: &SealedKey) -> Result<bool, StoreError> {
        let sealed = sealed.clone();
        self.run(move |c| {
            Box::pin(async move {
                let n = c
                    .execute(
                        "UPDATE audit_key SET master_key_id = $2, nonce = $3, ciphertext = $4 \
                         WHERE singleton = 1 AND master_key_id = $1",
                        &[
                            &&from.as_bytes()[..],
                            &&sealed.master_key_id.as_bytes()[..],
                            &&sealed.nonce[..],
                            &sealed.ciphertext,
                        ],
                    )
                    .await
                    .map_err(backend)?;
                Ok(n == 1)
            })
        })
    }
}
