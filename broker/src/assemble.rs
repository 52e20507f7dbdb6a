//! Building the service from a [`Config`]: store, master key, trust anchors.

use std::sync::Arc;

use anyhow::Context as _;

use crate::config::{Config, StoreConfig};
use crate::keys::MasterKey;
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

/// The whole key-release service.
pub fn broker(config: &Config) -> anyhow::Result<Broker> {
    let master = MasterKey::load(&config.master_key)
        .with_context(|| format!("cannot load the master key {}", config.master_key.display()))?;
    let verifier = Verifier::new(trust(config)?, config.certs_dir.clone());
    Ok(Broker::new(
        store(config)?,
        master,
        verifier,
        config.nonce_ttl,
    ))
}
