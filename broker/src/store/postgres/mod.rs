//! The PostgreSQL store, for several broker replicas sharing one database:
//! tokio-postgres connections in a small pool ([`pool`]), driven by a
//! runtime of their own, behind the same synchronous [`Store`] traits as
//! SQLite. Numbered migrations run at open under an advisory lock
//! ([`schema`]), so replicas starting at once migrate exactly once.
//!
//! One module per part of the [`Store`] trait, like `sqlite/`. Every
//! guarantee that must hold across replicas is made by the database: a
//! nonce is burnt by one insert into `used_nonces` (its primary key lets one
//! replica succeed), an Attest's writes are one transaction, the audit chain
//! head is read `FOR UPDATE` in the transaction of each append, policy
//! revisions are compare-and-set, and key state changes take row locks.
//!
//! A call waits at most the configured operation timeout (and the server
//! enforces the same as `statement_timeout` and `lock_timeout`), so a
//! database that is down or a row lock held elsewhere fails the request with
//! `StoreError::Unavailable` instead of piling up work.

mod audit;
mod backup;
mod keycheck;
mod nonce;
mod policy;
pub(crate) mod pool;
mod reseal;
mod rotation;
mod schema;
mod tls;
mod volume;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::Client;

use super::{
    AttestCommit, AttestCommitted, NonceBurn, NonceStore, RotationSessionStore, Store, StoreError,
};
pub use pool::PgOptions;
use pool::Pool;
pub use schema::SCHEMA_VERSION as PG_SCHEMA_VERSION;

/// A boxed future borrowing a pooled client.
pub(super) type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// PostgreSQL implementation of [`Store`].
pub struct PgStore {
    /// `None` only while dropping.
    rt: Option<tokio::runtime::Runtime>,
    pool: Arc<Pool>,
    op_timeout: Duration,
    /// The unsealed audit chain key, once installed.
    keying: super::audit::KeyingSlot,
}

/// Maps a database error to a [`StoreError`]: a connection that is gone,
/// refused or timed out is `Unavailable`; anything else `Backend`. The text
/// is the server's message, which never holds the password.
pub(super) fn backend(e: tokio_postgres::Error) -> StoreError {
    if let Some(db) = e.as_db_error() {
        use tokio_postgres::error::SqlState;
        let code = db.code();
        if *code == SqlState::QUERY_CANCELED
            || *code == SqlState::LOCK_NOT_AVAILABLE
            || *code == SqlState::ADMIN_SHUTDOWN
            || *code == SqlState::CRASH_SHUTDOWN
            || *code == SqlState::CANNOT_CONNECT_NOW
            || *code == SqlState::T_R_SERIALIZATION_FAILURE
            || *code == SqlState::T_R_DEADLOCK_DETECTED
        {
            return StoreError::Unavailable(format!("PostgreSQL: {}", db.message()));
        }
        return StoreError::Backend(format!("PostgreSQL: {} ({})", db.message(), code.code()));
    }
    if e.is_closed() {
        return StoreError::Unavailable("the connection to PostgreSQL is closed".into());
    }
    // The causes too: "error performing TLS handshake" alone does not say
    // that the certificate's issuer is unknown or its name is another.
    let mut why = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        why.push_str(": ");
        why.push_str(&s.to_string());
        source = s.source();
    }
    StoreError::Unavailable(format!("PostgreSQL: {why}"))
}

pub(super) fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

pub(super) fn to_json(list: &[String]) -> String {
    serde_json::Value::from(list.to_vec()).to_string()
}

pub(super) fn not_found(what: &'static str, name: &str) -> StoreError {
    StoreError::NotFound {
        what,
        name: name.to_owned(),
    }
}

impl PgStore {
    /// Connects to the database `opts` names, checks that the login works,
    /// and brings the schema up to date under an advisory lock. A wrong
    /// URL, an unreachable server, a wrong password or a schema from a
    /// newer broker are refused here, at start.
    pub fn open(opts: PgOptions) -> Result<Self, StoreError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("store-pg")
            .enable_all()
            .build()
            .map_err(|e| {
                StoreError::Backend(format!("cannot start the PostgreSQL runtime: {e}"))
            })?;
        let op_timeout = opts.op_timeout;
        let pool = Arc::new(Pool::new(opts)?);
        let store = PgStore {
            rt: Some(rt),
            pool,
            op_timeout,
            keying: Default::default(),
        };
        store.run_with_timeout(op_timeout.max(Duration::from_secs(30)), |c| {
            Box::pin(schema::migrate(c))
        })?;
        Ok(store)
    }

    /// Runs `f` on a pooled connection, on the store's runtime, and waits
    /// for it at most the operation timeout. Callable from any thread,
    /// including the threads of another tokio runtime.
    pub(super) fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'a> FnOnce(&'a mut Client) -> BoxFut<'a, Result<T, StoreError>> + Send + 'static,
    {
        self.run_with_timeout(self.op_timeout, f)
    }

    /// [`PgStore::run`] for whole-store work (backup, restore): waits up
    /// to ten minutes. The sessions' statement timeout still applies to
    /// each statement.
    pub(super) fn run_long<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'a> FnOnce(&'a mut Client) -> BoxFut<'a, Result<T, StoreError>> + Send + 'static,
    {
        self.run_with_timeout(Duration::from_secs(600), f)
    }

    fn run_with_timeout<T, F>(&self, timeout: Duration, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'a> FnOnce(&'a mut Client) -> BoxFut<'a, Result<T, StoreError>> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let pool = self.pool.clone();
        let deadline = std::time::Instant::now() + timeout;
        let Some(rt) = &self.rt else {
            return Err(StoreError::Unavailable("the store is closing".into()));
        };
        let task = rt.spawn(async move {
            let result = async {
                let mut conn = pool.get(deadline).await?;
                let r = f(conn.client()).await;
                conn.release();
                r
            }
            .await;
            let _ = tx.send(result);
        });
        match rx.recv_timeout(timeout) {
            Ok(r) => r,
            Err(_) => {
                // Dropping the task drops its connection unreturned: a
                // statement may still be in flight on it.
                task.abort();
                Err(StoreError::Unavailable(format!(
                    "PostgreSQL did not answer within {} ms",
                    timeout.as_millis()
                )))
            }
        }
    }

    /// The schema version of the database.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        self.run(|c| {
            Box::pin(async move {
                let row = c
                    .query_one("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[])
                    .await
                    .map_err(backend)?;
                Ok(row.get::<_, i64>(0))
            })
        })
    }

    /// The URL this store connects to, with any password replaced by `***`.
    pub fn redacted_url(&self) -> String {
        self.pool.redacted_url()
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // Without waiting: a store may be dropped on an async thread.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Store for PgStore {
    fn commit_attest(&self, commit: &AttestCommit<'_>) -> Result<AttestCommitted, StoreError> {
        commit.audit.validate()?;
        let (nonce, expires_at) = (commit.nonce, commit.nonce_expires_at);
        let (event, sessions) = (commit.audit.clone(), commit.sessions.to_vec());
        let keying = self.keying.get();
        self.run(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await.map_err(backend)?;
                if nonce::burn(&tx, &nonce, expires_at).await? == NonceBurn::AlreadyUsed {
                    // Dropping the transaction rolls it back: nothing written.
                    return Ok(AttestCommitted::NonceAlreadyUsed);
                }
                let id = audit::append(&tx, keying.as_deref(), &event).await?;
                for s in &sessions {
                    rotation::record(&tx, s).await?;
                }
                tx.commit().await.map_err(backend)?;
                Ok(AttestCommitted::Committed(id))
            })
        })
    }

    fn maintain(&self, now_unix: i64) -> Result<u64, StoreError> {
        let n = self.purge_used_nonces(now_unix)?;
        self.purge_rotation_sessions(now_unix)?;
        Ok(n)
    }
}
