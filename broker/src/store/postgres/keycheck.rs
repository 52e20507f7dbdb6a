//! [`KeyCheckStore`] on PostgreSQL: `key_checks (master_key_id PRIMARY KEY,
//! kcv)`; the insert's conflict check makes concurrent recorders agree.

use super::{backend, now_unix, PgStore};
use crate::keys::MasterKeyId;
use crate::store::{KeyCheck, KeyCheckStore, StoreError};

impl KeyCheckStore for PgStore {
    fn key_checks(&self) -> Result<Vec<KeyCheck>, StoreError> {
        self.run(|c| {
            Box::pin(async move {
                let rows = c
                    .query(
                        "SELECT master_key_id, kcv FROM key_checks ORDER BY master_key_id",
                        &[],
                    )
                    .await
                    .map_err(backend)?;
                let mut out = Vec::with_capacity(rows.len());
                for r in rows {
                    out.push(KeyCheck {
                        master_key_id: MasterKeyId::from_slice(r.get(0)).ok_or_else(|| {
                            StoreError::Corrupt(
                                "a key check's master key id is not 16 bytes".into(),
                            )
                        })?,
                        kcv: r.get::<_, &[u8]>(1).try_into().map_err(|_| {
                            StoreError::Corrupt("a key-check value is not 32 bytes".into())
                        })?,
                    });
                }
                Ok(out)
            })
        })
    }

    fn put_key_check(&self, check: &KeyCheck) -> Result<(), StoreError> {
        let check = check.clone();
        self.run(move |c| {
            Box::pin(async move {
                let id = &check.master_key_id.as_bytes()[..];
                c.execute(
                    "INSERT INTO key_checks (master_key_id, kcv, created_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (master_key_id) DO NOTHING",
                    &[&id, &&check.kcv[..], &now_unix()],
                )
                .await
                .map_err(backend)?;
                let kcv: Vec<u8> = c
                    .query_one(
                        "SELECT kcv FROM key_checks WHERE master_key_id = $1",
                        &[&id],
                    )
                    .await
                    .map_err(backend)?
                    .get(0);
                if kcv != check.kcv {
                    return Err(StoreError::Conflict(format!(
                        "master key {} has another key-check value recorded",
                        check.master_key_id
                    )));
                }
                Ok(())
            })
        })
    }
}
