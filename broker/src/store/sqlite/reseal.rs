//! [`ResealStore`] on SQLite: compare-and-set updates of `key_versions` by
//! master key id.

use rusqlite::{params, TransactionBehavior};

use super::volume::sealed_from_row;
use super::{backend, SqliteStore};
use crate::keys::{MasterKeyId, SealedKey};
use crate::store::{MasterKeyUsage, ResealStore, ResealUpdate, SealedVersion, StoreError};

impl ResealStore for SqliteStore {
    fn keys_not_under(
        &self,
        master: MasterKeyId,
        limit: u32,
    ) -> Result<Vec<SealedVersion>, StoreError> {
        let conn = self.conn();
        let mut s = conn
            .prepare_cached(
                "SELECT volume, version, master_key_id, nonce, ciphertext FROM key_versions \
                 WHERE master_key_id != ?1 ORDER BY volume, version LIMIT ?2",
            )
            .map_err(backend)?;
        let rows = s
            .query_map(params![&master.as_bytes()[..], i64::from(limit)], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                    r.get::<_, Vec<u8>>(4)?,
                ))
            })
            .map_err(backend)?;
        let mut out = Vec::new();
        for row in rows {
            let (volume, version, id, nonce, ct) = row.map_err(backend)?;
            let version = u32::try_from(version).map_err(|_| {
                StoreError::Corrupt(format!("volume {volume:?}: version {version}"))
            })?;
            let sealed = sealed_from_row(&volume, version, id, nonce, ct)?;
            out.push(SealedVersion {
                volume,
                version,
                sealed,
            });
        }
        Ok(out)
    }

    fn reseal_batch(&self, updates: &[ResealUpdate]) -> Result<u64, StoreError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(backend)?;
        let mut n = 0u64;
        {
            let mut s = tx
                .prepare_cached(
                    "UPDATE key_versions SET master_key_id = ?4, nonce = ?5, ciphertext = ?6 \
                     WHERE volume = ?1 AND version = ?2 AND master_key_id = ?3",
                )
                .map_err(backend)?;
            for u in updates {
                n += s
                    .execute(params![
                        u.volume,
                        i64::from(u.version),
                        &u.from.as_bytes()[..],
                        &u.sealed.master_key_id.as_bytes()[..],
                        &u.sealed.nonce[..],
                        u.sealed.ciphertext
                    ])
                    .map_err(backend)? as u64;
            }
        }
        tx.commit().map_err(backend)?;
        Ok(n)
    }

    fn master_key_usage(&self) -> Result<Vec<MasterKeyUsage>, StoreError> {
        let conn = self.conn();
        let mut s = conn
            .prepare_cached(
                "SELECT master_key_id, COUNT(*), COALESCE(SUM(state = 'retired'), 0), \
                 MIN(created_at) FROM key_versions GROUP BY master_key_id ORDER BY master_key_id",
            )
            .map_err(backend)?;
        let rows = s
            .query_map([], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })
            .map_err(backend)?;
        let mut out = Vec::new();
        for row in rows {
            let (id, records, retired, oldest) = row.map_err(backend)?;
            out.push(MasterKeyUsage {
                id: MasterKeyId::from_slice(&id).ok_or_else(|| {
                    StoreError::Corrupt("a key version's master key id is not 16 bytes".into())
                })?,
                records: records as u64,
                retired: retired as u64,
                oldest_created_at: oldest,
            });
        }
        Ok(out)
    }

    fn reseal_audit_key(&self, from: MasterKeyId, sealed: &SealedKey) -> Result<bool, StoreError> {
        let n = self
            .conn()
            .execute(
                "UPDATE audit_key SET master_key_id = ?2, nonce = ?3, ciphertext = ?4 \
                 WHERE singleton = 1 AND master_key_id = ?1",
                params![
                    &from.as_bytes()[..],
                    &sealed.master_key_id.as_bytes()[..],
                    &sealed.nonce[..],
                    sealed.ciphertext
                ],
            )
            .map_err(backend)?;
        Ok(n == 1)
    }
}
