//! Wiring the key-release service from a [`Config`]: the store, the trust
//! anchors, the master keyring, the verifier and its certificate sources,
//! and the [`Broker`] over them. `broker serve` and the test kit build the
//! service through these functions, so both run the same wiring.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use zeroize::Zeroizing;

use crate::certsource::http::HttpError;
use crate::config::{Config, StoreConfig};
use crate::keys::{KeyError, Keyring};
use crate::release::Broker;
use crate::store::{redact_url, PgOptions, PgStore, SqliteStore, Store, StoreError};
use crate::verify::{EvidenceRejected, TrustStore, Verifier};

/// A part of the service that the config names but that cannot be set up.
/// Each variant names the file or value of the config at fault; its source
/// says what went wrong with it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WiringError {
    /// The database does not exist (only `broker init` creates one).
    #[error("database {} does not exist; `broker init` creates a broker directory with its database. If this broker had enrolled volumes, restore the database from your backup (a new, empty one knows no volume, and every guest would be refused), or fix [store] path", path.display())]
    StoreMissing {
        /// The database file.
        path: PathBuf,
    },
    /// The audit log does not match its checkpoint.
    #[error(transparent)]
    AuditAnchor(#[from] crate::audit_anchor::AnchorError),
    /// The master key is not the database's.
    #[error(transparent)]
    Startup(#[from] crate::startup::StartupError),
    /// The audit chain key cannot be unsealed or made.
    #[error(transparent)]
    AuditKey(#[from] crate::audit_key::AuditKeyError),
    /// The store cannot be opened.
    #[error("cannot open the store {location}")]
    Store {
        /// The database: `sqlite:PATH`, or the PostgreSQL URL without its
        /// password.
        location: String,
        /// Why.
        source: StoreError,
    },
    /// `[store] password_file` cannot be used.
    #[error("cannot use the PostgreSQL password file {}: {why}", path.display())]
    PasswordFile {
        /// The file.
        path: PathBuf,
        /// Why (never the password).
        why: String,
    },
    /// `[attestation.simulated] ark` cannot be read.
    #[error("cannot read simulated ARK {}", path.display())]
    ReadSimulatedArk {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `[attestation.simulated] ark` is not a usable root certificate.
    #[error("invalid simulated ARK {}", path.display())]
    SimulatedArk {
        /// The file.
        path: PathBuf,
        /// Why.
        source: EvidenceRejected,
    },
    /// The master key (or the `.next` key of a rotation) cannot be loaded.
    #[error("cannot load the master key {}", path.display())]
    Keyring {
        /// The master key file.
        path: PathBuf,
        /// Why.
        source: KeyError,
    },
    /// `[attestation.kds] url` is not usable.
    #[error("invalid [attestation.kds] url {url}")]
    KdsUrl {
        /// The URL.
        url: String,
        /// Why.
        source: HttpError,
    },
}

/// Opens the configured store, which must exist: a missing database is
/// refused, never silently recreated empty ([`create_store`] is for
/// `broker init`).
pub fn store(config: &Config) -> Result<Arc<dyn Store>, WiringError> {
    open_store(&config.store)
}

/// Opens a store: the SQLite file, or PostgreSQL (connecting, logging in
/// and migrating now, so a wrong URL or password is refused at start).
pub fn open_store(store: &StoreConfig) -> Result<Arc<dyn Store>, WiringError> {
    match store {
        StoreConfig::Sqlite { path } => {
            if !path.exists() {
                return Err(WiringError::StoreMissing { path: path.clone() });
            }
            open_sqlite(path)
        }
        StoreConfig::Postgres(pg) => {
            let mut opts = PgOptions::new(pg.url.clone());
            opts.ca_cert = pg.ca_cert.clone();
            opts.pool_size = pg.pool_size;
            opts.op_timeout = pg.timeout;
            if let Some(path) = &pg.password_file {
                opts.password = Some(read_password_file(path)?);
            }
            let store = PgStore::open(opts).map_err(|source| WiringError::Store {
                location: redact_url(&pg.url),
                source,
            })?;
            tracing::info!(url = %store.redacted_url(), "store: PostgreSQL");
            Ok(Arc::new(store))
        }
    }
}

/// The password of `[store] password_file`: the first line, from a file
/// that only its owner may read.
fn read_password_file(path: &Path) -> Result<Zeroizing<String>, WiringError> {
    use std::os::unix::fs::PermissionsExt as _;
    let fail = |why: String| WiringError::PasswordFile {
        path: path.to_owned(),
        why,
    };
    let meta = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(fail(format!(
            "mode {:o} lets others read it; run chmod 600 {}",
            meta.permissions().mode() & 0o777,
            path.display()
        )));
    }
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?);
    let line = text.lines().next().unwrap_or("");
    if line.is_empty() {
        return Err(fail(
            "it is empty; write the password on its first line".into(),
        ));
    }
    Ok(Zeroizing::new(line.to_owned()))
}

/// The configured store (which must exist) with its audit chain key
/// unsealed by the config's master key, so that it appends and verifies
/// the keyed chain (`broker backup`, tools, the test kit). Never makes a
/// chain key: a store from before the keyed chain stays as it is until
/// `broker serve` upgrades it.
pub fn keyed_store(config: &Config) -> Result<Arc<dyn Store>, WiringError> {
    let store = store(config)?;
    crate::audit_key::load(store.as_ref(), &keyring(config)?, false)?;
    Ok(store)
}

/// Creates the configured store (`broker init`, the test kit), or opens it
/// if it exists.
pub fn create_store(config: &Config) -> Result<Arc<dyn Store>, WiringError> {
    match &config.store {
        StoreConfig::Sqlite { path } => open_sqlite(path),
        StoreConfig::Postgres(_) => open_store(&config.store),
    }
}

fn open_sqlite(path: &std::path::Path) -> Result<Arc<dyn Store>, WiringError> {
    Ok(Arc::new(SqliteStore::open(path).map_err(|source| {
        WiringError::Store {
            location: format!("sqlite:{}", path.display()),
            source,
        }
    })?))
}

/// The trust anchors: AMD's pinned roots, plus a simulated root only when
/// the config names one (with a warning, every start).
pub fn trust(config: &Config) -> Result<TrustStore, WiringError> {
    let mut trust = TrustStore::amd();
    if let Some(sim) = &config.simulated {
        let ark = std::fs::read(&sim.ark).map_err(|source| WiringError::ReadSimulatedArk {
            path: sim.ark.clone(),
            source,
        })?;
        trust = trust
            .with_simulated_root(sim.generation, &ark)
            .map_err(|source| WiringError::SimulatedArk {
                path: sim.ark.clone(),
                source,
            })?;
        tracing::warn!(
            ark = %sim.ark.display(),
            generation = %sim.generation,
            "TRUSTING A SIMULATED SEV-SNP PLATFORM: reports it signs prove nothing about real hardware; never use this in production"
        );
    }
    Ok(trust)
}

/// The keyring: the master key file and, if a master key rotation is under
/// way, `<master_key>.next`.
pub fn keyring(config: &Config) -> Result<Keyring, WiringError> {
    let ring = Keyring::load(&config.master_key).map_err(|source| WiringError::Keyring {
        path: config.master_key.clone(),
        source,
    })?;
    if let Some(next) = ring.next_id() {
        tracing::warn!(
            current = %ring.current_id(),
            next = %next,
            "a master key rotation is under way (the .next key file exists); both keys are loaded; run the master key rotation again to finish it"
        );
    }
    Ok(ring)
}

/// The verifier: `trust`, the offline `certs_dir`, the certificate cache
/// and, only when `[attestation.kds] enabled = true`, AMD KDS.
pub fn verifier(config: &Config, trust: TrustStore) -> Result<Verifier, WiringError> {
    use crate::certsource::{CacheSource, CertCache, KdsSource};
    let cache = Arc::new(CertCache::new(config.cert_cache.clone()));
    let mut v = Verifier::new(trust.clone(), config.certs_dir.clone())
        .with_source(Arc::new(CacheSource::new(cache.clone(), &trust)));
    if let Some(kds) = &config.kds {
        tracing::info!(url = %kds.url, cache = %config.cert_cache.display(), "AMD KDS is an online certificate source");
        let source =
            KdsSource::new(kds.clone(), cache, trust).map_err(|source| WiringError::KdsUrl {
                url: kds.url.clone(),
                source,
            })?;
        v = v.with_source(Arc::new(source));
    }
    Ok(v)
}

/// The whole key-release service. Refuses a missing database, a master
/// key that is not the database's, and an audit log that does not match
/// its checkpoint or does not verify at its tail (`crate::startup`).
pub fn broker(config: &Config) -> Result<Broker, WiringError> {
    crate::lifecycle::failpoint::init();
    let keyring = keyring(config)?;
    let store = store(config)?;
    crate::startup::check_master_key(store.as_ref(), &keyring, &config.master_key)?;
    // The audit chain key: unsealed, or made on the first start (a new
    // database, or one from before the keyed chain).
    crate::audit_key::load(store.as_ref(), &keyring, true)?;
    // The audit log must still hold what its checkpoint vouches for.
    let anchor = crate::audit_anchor::checkpoint_path(&config.master_key);
    let checkpoint = crate::audit_anchor::read(&keyring, &anchor)?;
    if let Some(c) = &checkpoint {
        crate::audit_anchor::check(store.as_ref(), &anchor, c)?;
    }
    // ...and its newest entries, which the checkpoint may not cover yet,
    // must verify under the chain key.
    let checked = crate::startup::check_audit_tail(store.as_ref(), checkpoint.map(|c| c.id))?;
    tracing::debug!(entries = checked, "the audit chain's tail verifies");
    let verifier = verifier(config, trust(config)?)?;
    let broker = Broker::with_keyring(store, Arc::new(keyring), verifier, config.nonce_ttl)
        .with_rotation_session_ttl(config.rotation_session_ttl)
        .with_audit_anchor(anchor, checkpoint);
    // A remote store's calls may wait (a row lock, a restart): off the
    // serving threads, at most twice the pool's connections at once.
    Ok(match &config.store {
        StoreConfig::Postgres(pg) => broker.with_store_offload(pg.pool_size * 2),
        StoreConfig::Sqlite { .. } => broker,
    })
}
