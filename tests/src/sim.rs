//! The simulated SEV-SNP platform and guest, and a guest configuration
//! that uses them. This is the one module of the kit that names where the
//! simulator lives; tests import it from here.

use std::path::Path;

pub use guest_unlock::evidence::SimProvider;
pub use guest_unlock::sim::azure::swtpm::SimVtpm;
pub use guest_unlock::sim::azure::{paravisor_measurement, SimParavisor};
pub use guest_unlock::sim::{SimEvidence, SimGuest, SimParams, SimPlatform};

/// The default simulated guest (its measurement is what policies allow).
pub fn default_guest() -> SimGuest {
    SimGuest::default()
}

/// A guest config for `broker` with the sim provider of `dir`.
pub fn guest_config(
    broker_urls: &[String],
    pin: &str,
    sim_dir: &Path,
    timeout_secs: u64,
) -> anyhow::Result<guest_unlock::config::GuestConfig> {
    let raw = guest_unlock::config::RawConfig {
        brokers: broker_urls.to_vec(),
        pins: vec![pin.to_owned()],
        connect_timeout_secs: Some(timeout_secs.min(5)),
        timeout_secs: Some(timeout_secs),
        evidence: Some(format!("sim:{}", sim_dir.display())),
        vmpl: None,
    };
    Ok(guest_unlock::config::resolve(raw)?)
}
