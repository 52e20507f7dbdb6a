//! Building the service from a [`Config`]: store, master key, trust anchors.

use std::sync::Arc;

use anyhow::Context as _;

use crate::config::{Config, StoreConfig};
use crate::keys::Keyring;
use crate::release::Broker;
use crate::store::{SqliteStore, Store};
use crate::verify::{TrustStore, Verifier};

/// Opens the configured store.
pub fn store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    match &config.store {
        StoreConfig::Sqlite { path } => {
            Ok(Arc::new(SqliteStore::open(path).with_context(|| {
                format!("cannot open the SQLite store {}", path.display())
            })?))
        }
    }
}

/// The trust anchors: AMD's pinned roots, plus a simulated root only when
/// the config names one (with a warning, every start).
pub fn trust(config: &Config) -> anyhow::Result<TrustStore> {
    let mut trust = TrustStore::amd();
    if let Some(sim) = &config.simulated {
        let ark = std::fs::read(&sim.ark)
            .with_context(|| format!("cannot read simulated ARK {}", sim.ark.display()))?;
        trust = trust
            .with_simulated_root(sim.generation, &ark)
            .with_context(|| format!("invalid simulated ARK {}", sim.ark.display()))?;
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
pub fn keyring(config: &Config) -> anyhow::Result<Keyring> {
    let ring = Keyring::load(&config.master_key)
        .with_context(|| format!("cannot load the master key {}", config.master_key.display()))?;
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
pub fn verifier(config: &Config, trust: TrustStore) -> anyhow::Result<Verifier> {
    use crate::certsource::{CacheSource, CertCache, KdsSource};
    let cache = Arc::new(CertCache::new(config.cert_cache.clone()));
    let mut v = Verifier::new(trust.clone(), config.certs_dir.clone())
        .with_source(Arc::new(CacheSource::new(cache.clone(), &trust)));
    if let Some(kds) = &config.kds {
        tracing::info!(url = %kds.url, cache = %config.cert_cache.display(), "AMD KDS is an online certificate source");
        let source = KdsSource::new(kds.clone(), cache, trust)
            .with_context(|| format!("invalid [attestation.kds] url {}", kds.url))?;
        v = v.with_source(Arc::new(source));
    }
    Ok(v)
}

/// The whole key-release service.
pub fn broker(config: &Config) -> anyhow::Result<Broker> {
    crate::lifecycle::failpoint::init();
    let keyring = keyring(config)?;
    let verifier = verifier(config, trust(config)?)?;
    Ok(Broker::with_keyring(
        store(config)?,
        Arc::new(keyring),
        verifier,
        config.nonce_ttl,
    )
    .with_rotation_session_ttl(config.rotation_session_ttl))
}
