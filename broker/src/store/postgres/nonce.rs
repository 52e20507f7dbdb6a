//! [`NonceStore`] on PostgreSQL: one conditional `UPDATE ... RETURNING`
//! burns a nonce, so of several replicas exactly one gets `Fresh`.

use tokio_postgres::GenericClient;

use super::{backend, from_json, to_json, PgStore};
use crate::store::{NonceOutcome, NonceStore, StoreError};

/// Burns `nonce` on `c` (a client, or a transaction that also does other
/// work): exactly one caller ever gets `Fresh`.
pub(super) async fn consume(
    c: &impl GenericClient,
    nonce: &[u8; 32],
    now_unix: i64,
) -> Result<NonceOutcome, StoreError> {
    let n = &nonce[..];
    // Under READ COMMITTED a concurrent burner waits for the row lock and
    // then re-checks `used`, so it finds nothing to update.
    if let Some(row) = c
        .query_opt(
            "UPDATE nonces SET used = TRUE WHERE nonce = $1 AND NOT used AND expires_at > $2 \
             RETURNING volumes",
            &[&n, &now_unix],
        )
        .await
        .map_err(backend)?
    {
        let volumes = from_json(row.get(0), "nonce volumes")?;
        return Ok(NonceOutcome::Fresh { volumes });
    }
    let state = c
        .query_opt("SELECT used FROM nonces WHERE nonce = $1", &[&n])
        .await
        .map_err(backend)?;
    Ok(match state {
        None => NonceOutcome::Unknown,
        Some(r) if r.get::<_, bool>(0) => NonceOutcome::AlreadyUsed,
        Some(_) => NonceOutcome::Expired,
    })
}

impl NonceStore for PgStore {
    fn insert_nonce(
        &self,
        nonce: &[u8; 32],
        volumes: &[String],
        expires_at_unix: i64,
    ) -> Result<(), StoreError> {
        let (nonce, volumes) = (*nonce, to_json(volumes));
        self.run(move |c| {
            Box::pin(async move {
                let n = c
                    .execute(
                        "INSERT INTO nonces (nonce, volumes, expires_at, used) \
                         VALUES ($1, $2, $3, FALSE) ON CONFLICT (nonce) DO NOTHING",
                        &[&&nonce[..], &volumes, &expires_at_unix],
                    )
                    .await
                    .map_err(backend)?;
                if n == 0 {
                    return Err(StoreError::AlreadyExists {
                        what: "nonce",
                        name: hex::encode(nonce),
                    });
                }
                Ok(())
            })
        })
    }

    fn consume_nonce(&self, nonce: &[u8; 32], now_unix: i64) -> Result<NonceOutcome, StoreError> {
        let nonce = *nonce;
        self.run(move |c| Box::pin(async move { consume(&*c, &nonce, now_unix).await }))
    }

    fn purge_nonces(&self, now_unix: i64) -> Result<u64, StoreError> {
        self.run(move |c| {
            Box::pin(async move {
                c.execute("DELETE FROM nonces WHERE expires_at <= $1", &[&now_unix])
                    .await
                    .map_err(backend)
            })
        })
    }
}
