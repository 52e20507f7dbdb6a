//! Guest side of the attested disk-key broker: the library behind the
//! `guest-unlock` command (whose command line lives in the binary).
//!
//! One entry point does what a caller other than the command line needs
//! (a libcryptsetup token plugin, say): [`fetch_keys_blocking`] attests for
//! some volumes with a [`GuestConfig`] and gives back the unwrapped keys
//! and the denials; [`fetch_keys`] is the same for async callers.
//!
//! - [`config`]: the guest configuration (brokers, key pins, timeouts,
//!   evidence provider);
//! - [`evidence`]: where the SEV-SNP evidence comes from (`sev-guest`,
//!   `configfs-tsm`, Azure's vTPM `azure-vtpm`; in test builds, cargo
//!   feature `sim`, also the simulated platform of `keybroker-sim`, only
//!   when configured);
//! - [`client`]: gRPC over TLS pinned to the broker's key;
//! - [`flow`]: the unlock flow as explicit states, and [`flow::fetch_keys`];
//! - [`luks`]: LUKS2 through libcryptsetup (bind, list, unbind);
//! - [`token`]: the `sev-keybroker` LUKS2 token format;
//! - [`plugin`]: what the libcryptsetup token plugin does (validate, dump,
//!   the passphrase from the broker), in safe code;
//! - [`unlock`]: finding bound devices and opening them at boot;
//! - [`rotation`]: enrolling a pending key version, confirming it, removing
//!   the retired keyslot;
//! - [`sev_detect`]: is SEV-SNP active in this guest, and [`azure_detect`]:
//!   is it an Azure confidential VM, and its vTPM's PCRs (what `guest-unlock
//!   status` shows).
//!
//! Errors are typed, per module; nothing here prints, exits or reads the
//! process's arguments.
#![deny(unsafe_code)]

pub mod azure_detect;
pub mod client;
pub mod config;
pub mod evidence;
pub mod flow;
pub mod luks;
pub mod plugin;
pub mod rotation;
#[cfg(feature = "sim")]
pub use keybroker_sim as sim;
pub mod sev_detect;
pub mod token;
pub mod unlock;

pub use config::GuestConfig;
pub use flow::{fetch_keys, Denied, FetchOutcome, UnlockError, UnwrappedKey};

/// Attests once for `volumes` with `cfg` (its evidence provider, brokers,
/// pins and time limits) and returns the unwrapped keys and the denials,
/// blocking the calling thread: the whole of what a volume-unlocking
/// caller needs, without any command-line code. Keys are zeroized when the
/// outcome is dropped.
pub fn fetch_keys_blocking(
    cfg: &GuestConfig,
    volumes: &keybroker_proto::VolumeIds,
) -> Result<FetchOutcome, UnlockError> {
    let provider = evidence::open_provider_at_vmpl(&cfg.evidence, cfg.vmpl).map_err(|source| {
        UnlockError::Evidence {
            provider: "configured",
            source,
        }
    })?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(UnlockError::Runtime)?;
    rt.block_on(fetch_keys(cfg, provider.as_ref(), volumes))
}
