//! [`NonceStore`] on SQLite.

use rusqlite::{params, Connection, OptionalExtension};

use super::{backend, from_json, to_json, SqliteStore};
use crate::store::{NonceOutcome, NonceStore, StoreError};

/// Burns `nonce` on `conn` (a connection, or a transaction that also does
/// other work): exactly one caller ever gets `Fresh`.
pub(super) fn consume(
    conn: &Connection,
    nonce: &[u8; 32],
    now_unix: i64,
) -> Result<NonceOutcome, StoreError> {
    // The only guard that matters: one atomic conditional update.
    let burnt: Option<String> = conn
        .prepare_cached(
            "UPDATE nonces SET used = 1 WHERE nonce = ?1 AND used = 0 AND expires_at > ?2 \
             RETURNING volumes",
        )
        .and_then(|mut s| {
            s.query_row(params![&nonce[..], now_unix], |r| r.get(0))
                .optional()
        })
        .map_err(backend)?;
    if let Some(v) = burnt {
        let volumes =
            from_json(&v, "nonce volumes").map_err(|e| StoreError::Corrupt(e.to_string()))?;
        return Ok(NonceOutcome::Fresh { volumes });
    }
    let state: Option<(i64, i64)> = conn
        .prepare_cached("SELECT used, expires_at FROM nonces WHERE nonce = ?1")
        .and_then(|mut s| {
            s.query_row([&nonce[..]], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .map_err(backend)?;
    Ok(match state {
        None => NonceOutcome::Unknown,
        Some((used, _)) if used != 0 => NonceOutcome::AlreadyUsed,
        Some(_) => NonceOutcome::Expired,
    })
}

impl NonceStore for SqliteStore {
    fn insert_nonce(
        &self,
        nonce: &[u8; 32],
        volumes: &[String],
        expires_at_unix: i64,
    ) -> Result<(), StoreError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(
                "INSERT INTO nonces (nonce, volumes, expires_at, used) VALUES (?1, ?2, ?3, 0) \
                 ON CONFLICT (nonce) DO NOTHING",
            )
            .map_err(backend)?;
        let n = stmt
            .execute(params![&nonce[..], to_json(volumes), expires_at_unix])
            .map_err(backend)?;
        if n == 0 {
            return Err(StoreError::AlreadyExists {
                what: "nonce",
                name: hex::encode(nonce),
            });
        }
        Ok(())
    }

    fn consume_nonce(&self, nonce: &[u8; 32], now_unix: i64) -> Result<NonceOutcome, StoreError> {
        consume(&self.conn(), nonce, now_unix)
    }

    fn purge_nonces(&self, now_unix: i64) -> Result<u64, StoreError> {
        let conn = self.conn();
        let n = conn
            .prepare_cached("DELETE FROM nonces WHERE expires_at <= ?1")
            .and_then(|mut s| s.execute([now_unix]))
            .map_err(backend)?;
        Ok(n as u64)
    }
}
