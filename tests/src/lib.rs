//! The test kit of the workspace: everything the cross-crate tests, the
//! load generator and the benchmarks share, in one crate that depends on
//! `broker` and `guest-unlock` (and that neither of them depends on).
//!
//! - [`local_broker`]: a real broker in this process (real TLS on loopback, real
//!   SQLite file, real master key file) with a simulated platform beside it;
//! - [`sim`]: the simulated SEV-SNP platform and guest, and the simulated
//!   Azure vTPM (the one module that names where the simulator lives);
//! - [`exe`]: the real `broker` and `guest-unlock` executables, run in a
//!   temporary directory, ripgrep `tests/util.rs` style;
//! - [`snapshot`]: snapshots of what an executable printed;
//! - [`fixtures`]: the real AMD report sets of `tests/fixtures/snp-real/`
//!   and the real Azure captures of `tests/fixtures/azure-snp-vtpm/`;
//! - [`store_conformance`]: the suite every store implementation passes;
//! - [`haproxy`]: HAProxy in TCP mode in front of broker replicas;
//! - [`ca`]: a throwaway certificate authority for TLS peers;
//! - [`pg`]: a throwaway PostgreSQL cluster (Debian's binaries, a temporary
//!   directory, an unprivileged user).

pub mod ca;
pub mod exe;
pub mod fixtures;
pub mod haproxy;
pub mod local_broker;
pub mod pg;
pub mod sim;
pub mod snapshot;
pub mod store_conformance;

pub use crate::local_broker::{
    policy_for, vtpm_policy_for, BrokerDir, BrokerOptions, RunningBroker,
};
pub use crate::sim::{default_guest, guest_config};
