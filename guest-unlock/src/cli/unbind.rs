//! `guest-unlock unbind`: remove a bound keyslot and its token (the last
//! keyslot only with `--force`).

use std::path::PathBuf;

use clap::Args;

use super::{eprint_err, EXIT_FAILED, EXIT_GRANTED};

/// Arguments of `unbind`.
#[derive(Debug, Args)]
pub struct UnbindArgs {
    /// The LUKS2 device.
    #[arg(value_name = "DEVICE")]
    pub device: PathBuf,
    /// The bound keyslot to remove.
    #[arg(long, value_name = "N")]
    pub slot: u32,
    /// Remove it even if it is the last keyslot (the data becomes unrecoverable without the broker).
    #[arg(long)]
    pub force: bool,
}

/// Runs `unbind`; returns the exit code.
pub fn run(args: UnbindArgs) -> u8 {
    match guest_unlock::luks::unbind(&args.device, args.slot, args.force) {
        Ok(u) => {
            println!(
                "removed keyslot {} and token {} from {}",
                u.keyslot,
                u.tokens
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
                args.device.display()
            );
            EXIT_GRANTED
        }
        Err(e) => {
            eprint_err(e);
            EXIT_FAILED
        }
    }
}
