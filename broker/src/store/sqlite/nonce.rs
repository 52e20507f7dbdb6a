//! [`NonceStore`] on SQLite: `used_nonces (nonce PRIMARY KEY, expires_at)`.

use rusqlite::{params, Connection};

use super::{backend, SqliteStore};
use crate::store::{NonceBurn, NonceStore, StoreError};

/// Burns `nonce` on `conn` (a connection, or a transaction that also does
/// other work): one insert, which the primary key lets succeed once.
pub(super) fn burn(
    conn: &Connection,
    nonce: &[u8; 32],
    expires_at_unix: i64,
) -> Result<NonceBurn, StoreError> {
    let n = conn
        .prepare_cached(
            "INSERT INTO used_nonces (nonce, expires_at) VALUES (?1, ?2) \
             ON CONFLICT (nonce) DO NOTHING",
        )
        .and_then(|mut s| s.execute(params![&nonce[..], expires_at_unix]))
        .map_err(backend)?;
    Ok(if n == 1 {
        NonceBurn::Burnt
    } else {
        NonceBurn::AlreadyUsed
    })
}

impl NonceStore for SqliteStore {
    fn burn_nonce(&self, nonce: &[u8; 32], expires_at_unix: i64) -> Result<NonceBurn, StoreError> {
        burn(&self.conn(), nonce, expires_at_unix)
    }

    fn purge_used_nonces(&self, now_unix: i64) -> Result<u64, StoreError> {
        let conn = self.conn();
        let n = conn
            .prepare_cached("DELETE FROM used_nonces WHERE expires_at <= ?1")
            .and_then(|mut s| s.execute([now_unix]))
            .map_err(backend)?;
        Ok(n as u64)
    }

    fn used_nonce_count(&self) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn()
            .query_row("SELECT COUNT(*) FROM used_nonces", [], |r| r.get(0))
            .map_err(backend)?;
        Ok(n as u64)
    }
}
