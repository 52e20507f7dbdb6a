//! A small pool of PostgreSQL connections: at most `pool_size` open, each
//! with its own connection task on the store's runtime. A connection that
//! closed (server restart, network) is dropped and a new one is made on the
//! next request, so the broker reconnects without a restart.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::config::SslMode;
use tokio_postgres::Client;
use zeroize::Zeroizing;

use super::tls::MakeRustls;
use crate::store::url::redact_url;
use crate::store::StoreError;

/// How to reach the database. `Debug` never shows the password.
#[derive(Clone)]
pub struct PgOptions {
    /// `postgres://USER[:PASSWORD]@HOST[:PORT]/DB[?...]`; a HOST that is a
    /// directory (percent-encoded, or `?host=/run/postgresql`) is a Unix
    /// socket, where peer login needs no password at all.
    pub url: String,
    /// The password, read from `[store] password_file` (overrides one in
    /// the URL).
    pub password: Option<Zeroizing<String>>,
    /// PEM CA certificate(s) the server's TLS certificate must chain to;
    /// without it, the Mozilla roots.
    pub ca_cert: Option<PathBuf>,
    /// Most connections open at once.
    pub pool_size: usize,
    /// Longest a store call waits, connecting and queueing included; also
    /// the server's `statement_timeout` and `lock_timeout`.
    pub op_timeout: Duration,
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOptions")
            .field("url", &redact_url(&self.url))
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("ca_cert", &self.ca_cert)
            .field("pool_size", &self.pool_size)
            .field("op_timeout", &self.op_timeout)
            .finish()
    }
}

impl PgOptions {
    /// Options for `url` with the defaults: 8 connections, 5 s per call.
    pub fn new(url: impl Into<String>) -> Self {
        PgOptions {
            url: url.into(),
            password: None,
            ca_cert: None,
            pool_size: 8,
            op_timeout: Duration::from_secs(5),
        }
    }
}

pub(crate) struct Pool {
    config: tokio_postgres::Config,
    tls: Option<MakeRustls>,
    idle: Mutex<Vec<Client>>,
    permits: Arc<Semaphore>,
    size: usize,
    redacted: String,
}

/// A connection taken from the pool. Returned by [`Conn::release`]; one
/// dropped without it (its task aborted mid-statement) is closed.
pub(crate) struct Conn {
    client: Option<Client>,
    pool: Arc<Pool>,
    _permit: OwnedSemaphorePermit,
}

impl Conn {
    pub(crate) fn client(&mut self) -> &mut Client {
        self.client
            .as_mut()
            .expect("a pooled connection holds a client")
    }

    /// Puts the connection back for the next call, unless it closed.
    pub(crate) fn release(mut self) {
        if let Some(c) = self.client.take() {
            if !c.is_closed() {
                self.pool
                    .idle
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(c);
            }
        }
    }
}

impl Pool {
    pub(crate) fn new(opts: PgOptions) -> Result<Self, StoreError> {
        let redacted = redact_url(&opts.url);
        let bad = |why: String| StoreError::InvalidInput {
            what: "PostgreSQL URL",
            reason: format!("{redacted}: {why}"),
        };
        let mut config: tokio_postgres::Config = opts
            .url
            .parse()
            .map_err(|e: tokio_postgres::Error| bad(e.to_string()))?;
        if config.get_user().is_none() {
            return Err(bad("no user; write postgres://USER@HOST/DB".into()));
        }
        if let Some(p) = &opts.password {
            config.password(p.as_bytes());
        }
        if opts.pool_size == 0 {
            return Err(bad("pool_size must be at least 1".into()));
        }
        let ms = opts.op_timeout.as_millis().max(1);
        config
            .application_name("keybroker")
            .connect_timeout(opts.op_timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .options(format!(
                "-c statement_timeout={ms} -c lock_timeout={ms} \
                 -c idle_in_transaction_session_timeout={}",
                ms * 2
            ));
        // No TLS on a Unix socket (the kernel is the channel), as in libpq.
        let unix_only = config
            .get_hosts()
            .iter()
            .all(|h| matches!(h, tokio_postgres::config::Host::Unix(_)));
        let tls = if config.get_ssl_mode() == SslMode::Disable || unix_only {
            None
        } else {
            Some(MakeRustls::new(opts.ca_cert.as_deref()).map_err(bad)?)
        };
        if opts.ca_cert.is_some() && config.get_ssl_mode() == SslMode::Prefer {
            // A CA named in the config means TLS is wanted, not merely preferred.
            config.ssl_mode(SslMode::Require);
        }
        Ok(Pool {
            config,
            tls,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(opts.pool_size)),
            size: opts.pool_size,
            redacted,
        })
    }

    pub(crate) fn redacted_url(&self) -> String {
        self.redacted.clone()
    }

    /// A connection, waiting until `deadline` for one to be free.
    pub(crate) async fn get(self: &Arc<Self>, deadline: Instant) -> Result<Conn, StoreError> {
        let deadline = tokio::time::Instant::from_std(deadline);
        let permit = tokio::time::timeout_at(deadline, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| {
                StoreError::Unavailable(format!(
                    "all {} PostgreSQL connections stayed busy (is a row lock held?)",
                    self.size
                ))
            })?
            .map_err(|_| StoreError::Unavailable("the PostgreSQL pool is closed".into()))?;
        let idle = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            idle.retain(|c| !c.is_closed());
            idle.pop()
        };
        let client = match idle {
            Some(c) => c,
            None => tokio::time::timeout_at(deadline, self.connect())
                .await
                .map_err(|_| {
                    StoreError::Unavailable(format!(
                        "cannot connect to PostgreSQL at {}: timed out",
                        self.redacted
                    ))
                })??,
        };
        Ok(Conn {
            client: Some(client),
            pool: self.clone(),
            _permit: permit,
        })
    }

    async fn connect(&self) -> Result<Client, StoreError> {
        let fail = |e: tokio_postgres::Error| {
            let e = super::backend(e);
            let why = match &e {
                StoreError::Unavailable(s) | StoreError::Backend(s) => s.clone(),
                other => other.to_string(),
            };
            StoreError::Unavailable(format!(
                "cannot connect to PostgreSQL at {}: {why}",
                self.redacted
            ))
        };
        let client = match &self.tls {
            Some(tls) => {
                let (client, conn) = self.config.connect(tls.clone()).await.map_err(fail)?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!("PostgreSQL connection ended: {e}");
                    }
                });
                client
            }
            None => {
                let (client, conn) = self
                    .config
                    .connect(tokio_postgres::NoTls)
                    .await
                    .map_err(fail)?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!("PostgreSQL connection ended: {e}");
                    }
                });
                client
            }
        };
        Ok(client)
    }
}
