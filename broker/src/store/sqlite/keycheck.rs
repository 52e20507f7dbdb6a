//! [`KeyCheckStore`] on SQLite: `key_checks (master_key_id PRIMARY KEY, kcv)`.

use rusqlite::{params, OptionalExtension};

use super::{backend, now_unix, SqliteStore};
use crate::keys::MasterKeyId;
use crate::store::{KeyCheck, KeyCheckStore, StoreError};

impl KeyCheckStore for SqliteStore {
    fn key_checks(&self) -> Result<Vec<KeyCheck>, StoreError> {
        let conn = self.conn();
        let mut s = conn
            .prepare_cached("SELECT master_key_id, kcv FROM key_checks ORDER BY master_key_id")
            .map_err(backend)?;
        let rows = s
            .query_map([], |r| {
                Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))
            })
            .map_err(backend)?;
        let mut out = Vec::new();
        for r in rows {
            let (id, kcv) = r.map_err(backend)?;
            out.push(KeyCheck {
                master_key_id: MasterKeyId::from_slice(&id).ok_or_else(|| {
                    StoreError::Corrupt("a key check's master key id is not 16 bytes".into())
                })?,
                kcv: kcv
                    .try_into()
                    .map_err(|_| StoreError::Corrupt("a key-check value is not 32 bytes".into()))?,
            });
        }
        Ok(out)
    }

    fn put_key_check(&self, check: &KeyCheck) -> Result<(), StoreError> {
        let conn = self.conn();
        let id = &check.master_key_id.as_bytes()[..];
        let existing: Option<Vec<u8>> = conn
            .prepare_cached("SELECT kcv FROM key_checks WHERE master_key_id = ?1")
            .and_then(|mut s| s.query_row([id], |r| r.get(0)).optional())
            .map_err(backend)?;
        match existing {
            Some(kcv) if kcv == check.kcv => Ok(()),
            Some(_) => Err(StoreError::Conflict(format!(
                "master key {} has another key-check value recorded",
                check.master_key_id
            ))),
            None => conn
                .prepare_cached(
                    "INSERT INTO key_checks (master_key_id, kcv, created_at) VALUES (?1, ?2, ?3)",
                )
                .and_then(|mut s| s.execute(params![id, &check.kcv[..], now_unix()]))
                .map(|_| ())
                .map_err(backend),
        }
    }
}
