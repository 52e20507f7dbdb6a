//! [`RotationSessionStore`] on PostgreSQL: `rotation_sessions`, keyed by
//! nonce and volume, so a session recorded through one replica is
//! confirmed through any other.

use tokio_postgres::GenericClient;

use super::{backend, PgStore};
use crate::store::{
    RotationSessionLookup, RotationSessionRecord, RotationSessionStore, StoreError,
};

/// Records `session` on `c` (a client, or a transaction that also does
/// other work).
pub(super) async fn record(
    c: &impl GenericClient,
    session: &RotationSessionRecord,
) -> Result<(), StoreError> {
    let n = c
        .execute(
            "INSERT INTO rotation_sessions (nonce, volume, version, report_data, expires_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (nonce, volume) DO NOTHING",
            &[
                &&session.nonce[..],
                &session.volume,
                &i64::from(session.version),
                &&session.report_data[..],
                &session.expires_at,
            ],
        )
        .await
        .map_err(backend)?;
    if n == 0 {
        return Err(StoreError::AlreadyExists {
            what: "rotation session",
            name: format!("{}/{}", hex::encode(session.nonce), session.volume),
        });
    }
    Ok(())
}

impl RotationSessionStore for PgStore {
    fn record_rotation_session(&self, session: &RotationSessionRecord) -> Result<(), StoreError> {
        let session = session.clone();
        self.run(move |c| Box::pin(async move { record(&*c, &session).await }))
    }

    fn rotation_session(
        &self,
        nonce: &[u8; 32],
        volume: &str,
        now_unix: i64,
    ) -> Result<RotationSessionLookup, StoreError> {
        let (nonce, volume) = (*nonce, volume.to_owned());
        self.run(move |c| {
            Box::pin(async move {
                let Some(row) = c
                    .query_opt(
                        "SELECT version, report_data, expires_at FROM rotation_sessions \
                         WHERE nonce = $1 AND volume = $2",
                        &[&&nonce[..], &volume],
                    )
                    .await
                    .map_err(backend)?
                else {
                    return Ok(RotationSessionLookup::Unknown);
                };
                let (version, rd, expires_at): (i64, Vec<u8>, i64) =
                    (row.get(0), row.get(1), row.get(2));
                if now_unix >= expires_at {
                    return Ok(RotationSessionLookup::Expired);
                }
                let corrupt = |what: &str| {
                    StoreError::Corrupt(format!("rotation session of volume {volume:?}: {what}"))
                };
                Ok(RotationSessionLookup::Live(RotationSessionRecord {
                    nonce,
                    version: u32::try_from(version).map_err(|_| corrupt("version out of range"))?,
                    report_data: rd
                        .try_into()
                        .map_err(|_| corrupt("report data is not 64 bytes"))?,
                    expires_at,
                    volume,
                }))
            })
        })
    }

    fn purge_rotation_sessions(&self, now_unix: i64) -> Result<u64, StoreError> {
        self.run(move |c| {
            Box::pin(async move {
                c.execute(
                    "DELETE FROM rotation_sessions WHERE expires_at <= $1",
                    &[&now_unix],
                )
                .await
                .map_err(backend)
            })
        })
    }
}
