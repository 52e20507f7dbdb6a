//! [`RotationSessionStore`] on SQLite: `rotation_sessions`, keyed by nonce
//! and volume.

use rusqlite::{params, Connection, OptionalExtension};

use super::{backend, SqliteStore};
use crate::store::{
    RotationSessionLookup, RotationSessionRecord, RotationSessionStore, StoreError,
};

/// Records `session` on `conn` (a connection, or a transaction that also
/// does other work).
pub(super) fn record(conn: &Connection, session: &RotationSessionRecord) -> Result<(), StoreError> {
    let n = conn
        .prepare_cached(
            "INSERT INTO rotation_sessions (nonce, volume, version, report_data, expires_at) \
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (nonce, volume) DO NOTHING",
        )
        .and_then(|mut s| {
            s.execute(params![
                &session.nonce[..],
                session.volume,
                i64::from(session.version),
                &session.report_data[..],
                session.expires_at
            ])
        })
        .map_err(backend)?;
    if n == 0 {
        return Err(StoreError::AlreadyExists {
            what: "rotation session",
            name: format!("{}/{}", hex::encode(session.nonce), session.volume),
        });
    }
    Ok(())
}

impl RotationSessionStore for SqliteStore {
    fn record_rotation_session(&self, session: &RotationSessionRecord) -> Result<(), StoreError> {
        record(&self.conn(), session)
    }

    fn rotation_session(
        &self,
        nonce: &[u8; 32],
        volume: &str,
        now_unix: i64,
    ) -> Result<RotationSessionLookup, StoreError> {
        let conn = self.conn();
        let row: Option<(i64, Vec<u8>, i64)> = conn
            .prepare_cached(
                "SELECT version, report_data, expires_at FROM rotation_sessions \
                 WHERE nonce = ?1 AND volume = ?2",
            )
            .and_then(|mut s| {
                s.query_row(params![&nonce[..], volume], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .optional()
            })
            .map_err(backend)?;
        let Some((version, rd, expires_at)) = row else {
            return Ok(RotationSessionLookup::Unknown);
        };
        if now_unix >= expires_at {
            return Ok(RotationSessionLookup::Expired);
        }
        let corrupt = |what: &str| {
            StoreError::Corrupt(format!("rotation session of volume {volume:?}: {what}"))
        };
        Ok(RotationSessionLookup::Live(RotationSessionRecord {
            nonce: *nonce,
            volume: volume.to_owned(),
            version: u32::try_from(version).map_err(|_| corrupt("version out of range"))?,
            report_data: rd
                .try_into()
                .map_err(|_| corrupt("report data is not 64 bytes"))?,
            expires_at,
        }))
    }

    fn purge_rotation_sessions(&self, now_unix: i64) -> Result<u64, StoreError> {
        let conn = self.conn();
        let n = conn
            .prepare_cached("DELETE FROM rotation_sessions WHERE expires_at <= ?1")
            .and_then(|mut s| s.execute([now_unix]))
            .map_err(backend)?;
        Ok(n as u64)
    }
}
