//! Guest side of the attested disk-key broker: library behind `guest-unlock`.
//!
//! - [`config`]: the guest configuration (brokers, key pins, timeouts,
//!   evidence provider);
//! - [`evidence`]: where the SEV-SNP report comes from (`sev-guest`,
//!   `configfs-tsm`, or the simulated platform `sim`, only when configured);
//! - [`sim`]: the simulated platform;
//! - [`client`]: gRPC over TLS pinned to the broker's key;
//! - [`flow`]: the unlock flow as explicit states, and [`flow::fetch_keys`];
//! - [`cli`]: the command line (exit codes documented there).
#![deny(unsafe_code)]

pub mod cli;
pub mod client;
pub mod config;
pub mod evidence;
pub mod flow;
pub mod hardening;
pub mod sim;
mod sim_cli;

pub use flow::{fetch_keys, Denied, FetchOutcome, UnlockError, UnwrappedKey};
