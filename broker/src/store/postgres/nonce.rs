//! [`NonceStore`] on PostgreSQL: `used_nonces (nonce PRIMARY KEY,
//! expires_at)`. One insert burns a nonce; the primary key lets exactly
//! one of several replicas succeed.

use tokio_postgres::GenericClient;

use super::{backend, PgStore};
use crate::store::{NonceBurn, NonceStore, StoreError};

/// Burns `nonce` on `c` (a client, or a transaction that also does other
/// work). A concurrent insert of the same nonce waits for this one's
/// transaction and then finds the conflict, so one caller gets `Burnt`.
pub(super) async fn burn(
    c: &impl GenericClient,
    nonce: &[u8; 32],
    expires_at_unix: i64,
) -> Result<NonceBurn, StoreError> {
    let n = c
        .execute(
            "INSERT INTO used_nonces (nonce, expires_at) VALUES ($1, $2) \
             ON CONFLICT (nonce) DO NOTHING",
            &[&&nonce[..], &expires_at_unix],
        )
        .await
        .map_err(backend)?;
    Ok(if n == 1 {
        NonceBurn::Burnt
    } else {
        NonceBurn::AlreadyUsed
    })
}

impl NonceStore for PgStore {
    fn burn_nonce(&self, nonce: &[u8; 32], expires_at_unix: i64) -> Result<NonceBurn, StoreError> {
        let nonce = *nonce;
        self.run(move |c| Box::pin(async move { burn(&*c, &nonce, expires_at_unix).await }))
    }

    fn purge_used_nonces(&self, now_unix: i64) -> Result<u64, StoreError> {
        self.run(move |c| {
            Box::pin(async move {
                c.execute(
                    "DELETE FROM used_nonces WHERE expires_at <= $1",
                    &[&now_unix],
                )
                .await
                .map_err(backend)
            })
        })
    }

    fn used_nonce_count(&self) -> Result<u64, StoreError> {
        self.run(|c| {
            Box::pin(async move {
                let n: i64 = c
                    .query_one("SELECT COUNT(*) FROM used_nonces", &[])
                    .await
                    .map_err(backend)?
                    .get(0);
                Ok(n as u64)
            })
        })
    }
}
