//! Guest side of the attested disk-key broker: library behind `guest-unlock`.
//!
//! - [`config`]: the guest configuration (brokers, key pins, timeouts,
//!   evidence provider);
//! - [`evidence`]: where the SEV-SNP report comes from (`sev-guest`,
//!   `configfs-tsm`; in test builds, cargo feature `sim`, also the simulated
//!   platform, [`keybroker_sim`], only when configured);
//! - [`client`]: gRPC over TLS pinned to the broker's key;
//! - [`flow`]: the unlock flow as explicit states, and [`flow::fetch_keys`];
//! - [`luks`]: LUKS2 through libcryptsetup (bind, list, unbind);
//! - [`token`]: the `sev-keybroker` LUKS2 token format;
//! - [`unlock`]: finding bound devices and opening them at boot;
//! - [`rotation`]: enrolling a pending key version, confirming it, removing
//!   the retired keyslot (and the crash-point test hook);
//! - [`status`]: is SEV-SNP active in this guest;
//! - [`cli`]: the command line (exit codes documented there).
#![deny(unsafe_code)]

pub mod cli;
pub mod client;
pub mod config;
pub mod events;
pub mod evidence;
#[cfg(feature = "failpoints")]
mod failpoint;
pub mod flow;
pub mod luks;
pub mod rotation;
#[cfg(feature = "sim")]
pub use keybroker_sim as sim;
#[cfg(feature = "sim")]
mod sim_cli;
pub mod status;
pub mod token;
pub mod unlock;

pub use flow::{fetch_keys, Denied, FetchOutcome, UnlockError, UnwrappedKey};
