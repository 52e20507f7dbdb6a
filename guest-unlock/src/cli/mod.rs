//! The `guest-unlock` command line: argument definitions and the command
//! bodies, one module per command, over the `guest_unlock` library.
//!
//! ```text
//! guest-unlock probe [-c FILE] --volume NAME [--volume NAME]...
//! guest-unlock probe --broker URL [--broker URL]... --pin PIN [--pin PIN]...
//!                    --evidence sev-guest[:DEV]|configfs-tsm[:ROOT]|azure-vtpm[:DEV] --volume NAME...
//! ```
//!
//! `probe` performs one full attestation and prints one line per key or
//! denial on standard output:
//!
//! ```text
//! granted root version 3 (current)
//! granted root version 4 (pending)
//! denied data: POLICY_MEASUREMENT_NOT_ALLOWED,TCB_TOO_OLD
//! ```
//!
//! It never prints key bytes; no command does. Diagnostics go to standard
//! error, prefixed `guest-unlock:`, with machine-readable event lines beside
//! them ([`events`]).
//!
//! LUKS2 (see [`guest_unlock::luks`], [`guest_unlock::token`], [`guest_unlock::unlock`]):
//!
//! ```text
//! guest-unlock bind DEVICE --broker URL[,URL]... --volume NAME [--pin PIN]...
//!                   [--key-file FILE|-] [--format] [--evidence PROVIDER] [--config FILE]
//! guest-unlock list DEVICE [--json]
//! guest-unlock unbind DEVICE --slot N [--force]
//! guest-unlock edit DEVICE [--token ID] [--broker URL[,URL]...]
//!                   [--pin PIN... | --add-pin PIN... --remove-pin PIN...]
//! guest-unlock unlock (--all | DEVICE...) [--name NAME] [--timeout SECS]
//!                     [--config FILE] [--crypttab FILE] [--dry-run]
//! guest-unlock rotate [DEVICE|NAME]... [--config FILE] [--crypttab FILE] [--timeout SECS]
//! guest-unlock status [--json] [--report [--config FILE | --evidence PROVIDER]]
//!                     [--pcrs[=LIST] [--tpm DEVICE]]
//! ```
//!
//! - `bind` attests, adds the released key as a new keyslot's passphrase
//!   (PBKDF2, minimum iterations) and writes a `sev-keybroker` token; it
//!   needs an existing passphrase (`--key-file FILE`, or `-` for standard
//!   input, read verbatim like cryptsetup's key files) unless `--format`
//!   makes a new LUKS2 device (then `--key-file` adds an optional recovery
//!   passphrase). It prints `bound DEVICE keyslot N (token T): volume V key
//!   version K`. Its settings come from `-c/--config FILE` (else
//!   `/etc/guest-unlock/config.toml` if it exists), the flags overriding
//!   its values; without a file `--broker`, `--pin` and `--evidence` are
//!   all needed. `probe` takes its settings the same way.
//! - `list` prints one line per binding that can be pasted back after
//!   `guest-unlock` (`bind DEVICE --broker … --volume … --pin …  # keyslot 1,
//!   key version 1, token 0`); `--json` prints an array.
//! - `unbind` removes a bound keyslot and its token; the last keyslot only
//!   with `--force`.
//! - `edit` changes the brokers (`--broker`, replacing the list) and pins
//!   (`--pin` replacing the list, or `--add-pin`/`--remove-pin`) of every
//!   `sev-keybroker` token of a device (or `--token ID`), as `clevis luks
//!   edit` does: no broker is asked, keyslots are not touched, the header
//!   is backed up and restored on failure. It prints `edited DEVICE token
//!   T: brokers …; pins …` (or `unchanged …`) and refuses a token that is
//!   not ours, a pin the token does not hold and an edit that would leave
//!   a token without pins or brokers.
//! - `unlock` opens every device given (or, with `--all`, every block device
//!   whose LUKS2 header has a `sev-keybroker` token), one attestation per
//!   broker list; the evidence provider and time limits come from `--config`
//!   (default `/etc/guest-unlock/config.toml`), brokers and pins from the
//!   tokens. Mapping names come from `--name`, then crypttab (default
//!   `/etc/crypttab`; initramfs-tools: `/cryptroot/crypttab`), then
//!   `luks-<UUID>`. It prints `unlocked VOLUME (DEVICE) as NAME, keyslot N,
//!   key version K` per device and, on standard error, `guest-unlock:
//!   VOLUME (DEVICE): reason` per device still locked. `--dry-run` only
//!   checks that the keys open their keyslots. When the broker releases a
//!   pending key version (a rotation), `unlock` then adds it to a new
//!   keyslot, records it in the token, confirms it to the broker and
//!   removes the old version's keyslot ([`guest_unlock::rotation`]); it prints
//!   `rotated VOLUME (DEVICE): …` on success and `guest-unlock: VOLUME
//!   (DEVICE): …` when a step did not complete. Rotation never turns an
//!   unlock into a failure.
//! - `rotate` does the same rotation steps on a running guest, for devices
//!   that are already open (the current key is checked, nothing is
//!   activated): the devices or crypttab names given, or every block
//!   device with a `sev-keybroker` token. It exits 1 when a step did not
//!   complete.
//! - `status` reports whether SEV, SEV-ES and SEV-SNP are active and whether
//!   this is an Azure confidential VM (its vTPM holds the paravisor's HCL
//!   report) (exit 0 only when SEV-SNP is, directly or behind Azure's
//!   paravisor); `--report` also obtains a report from the configured
//!   provider and prints its policy bits, TCB and measurement; `--pcrs`
//!   prints the vTPM's SHA-256 PCRs (0–9, or LIST) and a `[[vtpm.pcr_sets]]`
//!   entry for the broker's policy.
//!
//! # Exit codes
//!
//! | code | meaning |
//! | --- | --- |
//! | 0 | success: every requested volume was granted (`probe`), bound (`bind`), unlocked (`unlock`), checked with every rotation step done (`rotate`); SEV-SNP is active (`status`) |
//! | 1 | failure or refusal: a volume was denied, no broker could be reached, the attempt failed (evidence, protocol, a key that did not open), a LUKS2 operation failed or was refused (wrong passphrase, invalid token, last keyslot), a device stays locked, a rotation step did not complete (`rotate` only), SEV-SNP is not active |
//! | 2 | usage error: bad arguments or an invalid configuration file |

//!
//! Modules: [`settings`] (flags and configuration files into a
//! configuration), [`logging`], [`events`] (the event lines), one per
//! command ([`probe`], [`bind`], [`list`], [`unbind`], [`unlock`] with
//! `rotate`, [`status`]; `sim-platform` in test builds), and in test builds
//! with crash points `failpoint`.

use clap::{Parser, Subcommand};

mod bind;
mod edit;
pub mod events;
#[cfg(feature = "failpoints")]
mod failpoint;
mod list;
mod logging;
mod probe;
mod settings;
#[cfg(feature = "sim")]
mod sim_platform;
mod status;
mod unbind;
mod unlock;

/// Exit code: every volume granted.
pub const EXIT_GRANTED: u8 = 0;
/// Exit code: denied, unreachable or failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit code: usage or configuration error.
pub const EXIT_USAGE: u8 = 2;

/// The `--evidence` help: the provider forms this build accepts.
const EVIDENCE_HELP: &str = if guest_unlock::evidence::SIM_BUILT_IN {
    "Evidence provider: sev-guest[:DEVICE], configfs-tsm[:ROOT], azure-vtpm[:DEVICE] or sim:DIR"
} else {
    "Evidence provider: sev-guest[:DEVICE], configfs-tsm[:ROOT] or azure-vtpm[:DEVICE]"
};

/// Guest side of the attested disk-key broker.
#[derive(Debug, Parser)]
#[command(name = "guest-unlock", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Log progress (retries, brokers tried) to standard error.
    #[arg(short, long, global = true)]
    pub verbose: bool,
    /// Log lines and diagnostics as text or as one JSON object per line
    /// (the event lines keep their text form).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t,
        env = "GUEST_UNLOCK_LOG_FORMAT"
    )]
    pub log_format: logging::LogFormat,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attest once and print, per volume, whether its key was granted (never the key).
    Probe(probe::ProbeArgs),
    /// Create or describe a simulated SEV-SNP platform (test builds only).
    #[cfg(feature = "sim")]
    #[command(subcommand)]
    SimPlatform(sim_platform::SimCommand),
    /// Attest, then add the released volume key to a new LUKS2 keyslot with a sev-keybroker token.
    Bind(bind::BindArgs),
    /// Print the broker bindings of a LUKS2 device (pasteable back into bind).
    List(list::ListArgs),
    /// Remove a bound keyslot and its token.
    Unbind(unbind::UnbindArgs),
    /// Change the brokers and pins recorded in a device's tokens (as `clevis luks edit`).
    Edit(edit::EditArgs),
    /// Open LUKS2 devices bound to a broker, one attestation per broker list.
    Unlock(unlock::UnlockArgs),
    /// On a running guest: finish a key rotation on open devices (add the pending key, confirm, remove the old keyslot).
    Rotate(unlock::RotateArgs),
    /// Report whether SEV, SEV-ES and SEV-SNP are active in this guest.
    Status(status::StatusArgs),
}

/// Parses the process arguments; exits with code 2 (and help) on usage errors.
pub fn parse() -> Cli {
    Cli::parse()
}

/// Prints a diagnostic on standard error, prefixed like every other, in
/// one `write` so that a kernel message on the boot console cannot split
/// the line (the VM harness reads the event lines from the console).
pub fn eprint_err(msg: impl std::fmt::Display) {
    let line = match logging::format() {
        logging::LogFormat::Text => format!("guest-unlock: {msg}\n"),
        logging::LogFormat::Json => logging::json_line(&msg.to_string()),
    };
    write_stderr(&line);
}

/// Writes a whole line to standard error in one `write`.
fn write_stderr(line: &str) {
    use std::io::Write as _;
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Runs a parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> u8 {
    logging::init(cli.verbose, cli.log_format);
    match cli.command {
        Command::Probe(args) => probe::run(args),
        #[cfg(feature = "sim")]
        Command::SimPlatform(cmd) => match sim_platform::run(cmd) {
            Ok(()) => EXIT_GRANTED,
            Err(e) => {
                eprint_err(e);
                EXIT_FAILED
            }
        },
        Command::Bind(a) => bind::run(a),
        Command::List(a) => list::run(a),
        Command::Unbind(a) => unbind::run(a),
        Command::Edit(a) => edit::run(a),
        Command::Unlock(a) => unlock::run_unlock(a),
        Command::Rotate(a) => unlock::run_rotate(a),
        Command::Status(a) => status::run(a),
    }
}

/// The single-threaded runtime a command blocks on.
fn runtime() -> Result<tokio::runtime::Runtime, u8> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprint_err(format_args!("cannot start the async runtime: {e}"));
            EXIT_FAILED
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The command line of `args` (without the program name).
    pub(super) fn args(v: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("guest-unlock").chain(v.iter().copied()))
    }

    #[test]
    fn the_definitions_are_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }

    #[test]
    fn the_simulated_platform_command_exists_only_in_test_builds() {
        let r = args(&["sim-platform", "show", "--dir", "/nonexistent"]);
        assert_eq!(r.is_ok(), cfg!(feature = "sim"), "{r:?}");
    }
}
