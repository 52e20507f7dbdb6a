//! The `guest-unlock` command line.
//!
//! ```text
//! guest-unlock probe --config FILE --volume NAME [--volume NAME]...
//! guest-unlock probe --broker URL [--broker URL]... --pin PIN [--pin PIN]...
//!                    --evidence sev-guest[:DEV]|configfs-tsm[:ROOT] --volume NAME...
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
//! error, prefixed `guest-unlock:`.
//!
//! LUKS2 (see [`crate::luks`], [`crate::token`], [`crate::unlock`]):
//!
//! ```text
//! guest-unlock bind DEVICE --broker URL[,URL]... --volume NAME [--pin PIN]...
//!                   [--key-file FILE|-] [--format] [--evidence PROVIDER] [--config FILE]
//! guest-unlock list DEVICE [--json]
//! guest-unlock unbind DEVICE --slot N [--force]
//! guest-unlock unlock (--all | DEVICE...) [--name NAME] [--timeout SECS]
//!                     [--config FILE] [--crypttab FILE] [--dry-run]
//! guest-unlock rotate [DEVICE|NAME]... [--config FILE] [--crypttab FILE] [--timeout SECS]
//! guest-unlock status [--json] [--report [--config FILE | --evidence PROVIDER]]
//! ```
//!
//! - `bind` attests, adds the released key as a new keyslot's passphrase
//!   (PBKDF2, minimum iterations) and writes a `sev-keybroker` token; it
//!   needs an existing passphrase (`--key-file FILE`, or `-` for standard
//!   input, read verbatim like cryptsetup's key files) unless `--format`
//!   makes a new LUKS2 device (then `--key-file` adds an optional recovery
//!   passphrase). It prints `bound DEVICE keyslot N (token T): volume V key
//!   version K`. Without `--config`, `--broker`, `--pin` and `--evidence`
//!   are all needed; with it, the flags override its values.
//! - `list` prints one line per binding that can be pasted back after
//!   `guest-unlock` (`bind DEVICE --broker … --volume … --pin …  # keyslot 1,
//!   key version 1, token 0`); `--json` prints an array.
//! - `unbind` removes a bound keyslot and its token; the last keyslot only
//!   with `--force`.
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
//!   removes the old version's keyslot ([`crate::rotation`]); it prints
//!   `rotated VOLUME (DEVICE): …` on success and `guest-unlock: VOLUME
//!   (DEVICE): …` when a step did not complete. Rotation never turns an
//!   unlock into a failure.
//! - `rotate` does the same rotation steps on a running guest, for devices
//!   that are already open (the current key is checked, nothing is
//!   activated): the devices or crypttab names given, or every block
//!   device with a `sev-keybroker` token. It exits 1 when a step did not
//!   complete.
//! - `status` reports whether SEV, SEV-ES and SEV-SNP are active (exit 0 only
//!   when SEV-SNP is); `--report` also obtains a report from the configured
//!   provider and prints its policy bits, TCB and measurement.
//!
//! # Exit codes
//!
//! | code | meaning |
//! | --- | --- |
//! | 0 | success: every requested volume was granted (`probe`), bound (`bind`), unlocked (`unlock`), checked with every rotation step done (`rotate`); SEV-SNP is active (`status`) |
//! | 1 | failure or refusal: a volume was denied, no broker could be reached, the attempt failed (evidence, protocol, a key that did not open), a LUKS2 operation failed or was refused (wrong passphrase, invalid token, last keyslot), a device stays locked, a rotation step did not complete (`rotate` only), SEV-SNP is not active |
//! | 2 | usage error: bad arguments or an invalid configuration file |

use clap::{Args, Parser, Subcommand};
use keybroker_proto::pb::KeyState;
use keybroker_proto::VolumeIds;
use std::path::PathBuf;

use crate::config::{self, ConfigError, GuestConfig};
use crate::evidence::open_provider_at_vmpl;
use crate::flow::{fetch_keys, fetch_keys_session, FetchOutcome};
use crate::rotation::{Confirmer, SessionConfirmer};

/// The `--evidence` help: the provider forms this build accepts.
const EVIDENCE_HELP: &str = if crate::evidence::SIM_BUILT_IN {
    "Evidence provider: sev-guest[:DEVICE], configfs-tsm[:ROOT] or sim:DIR"
} else {
    "Evidence provider: sev-guest[:DEVICE] or configfs-tsm[:ROOT]"
};

/// Exit code: every volume granted.
pub const EXIT_GRANTED: u8 = 0;
/// Exit code: denied, unreachable or failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit code: usage or configuration error.
pub const EXIT_USAGE: u8 = 2;

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
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attest once and print, per volume, whether its key was granted (never the key).
    Probe(ProbeArgs),
    /// Create or describe a simulated SEV-SNP platform (test builds only).
    #[cfg(feature = "sim")]
    #[command(subcommand)]
    SimPlatform(crate::sim_cli::SimCommand),
    /// Attest, then add the released volume key to a new LUKS2 keyslot with a sev-keybroker token.
    Bind(BindArgs),
    /// Print the broker bindings of a LUKS2 device (pasteable back into bind).
    List(ListArgs),
    /// Remove a bound keyslot and its token.
    Unbind(UnbindArgs),
    /// Open LUKS2 devices bound to a broker, one attestation per broker list.
    Unlock(UnlockArgs),
    /// On a running guest: finish a key rotation on open devices (add the pending key, confirm, remove the old keyslot).
    Rotate(RotateArgs),
    /// Report whether SEV, SEV-ES and SEV-SNP are active in this guest.
    Status(StatusArgs),
}

/// Arguments of `probe`.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// Guest configuration file (TOML).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["brokers", "pins", "evidence"])]
    pub config: Option<PathBuf>,
    /// Broker URL, https://HOST:PORT (repeat to try several, in order).
    #[arg(long = "broker", value_name = "URL")]
    pub brokers: Vec<String>,
    /// Pin of the broker's TLS key, `sha256:` and the SPKI digest in hex or base64 (repeatable).
    #[arg(
        long = "pin",
        value_name = "PIN",
        help = "Pin of the broker's TLS key: sha256:<hex or base64 of the SPKI digest> (repeatable)"
    )]
    pub pins: Vec<String>,
    /// Evidence provider (see `PROVIDER_FORMS`).
    #[arg(long, value_name = "PROVIDER", help = EVIDENCE_HELP)]
    pub evidence: Option<String>,
    /// Volume to ask for (repeat for several).
    #[arg(long = "volume", value_name = "NAME", required = true)]
    pub volumes: Vec<String>,
    /// Per-connection timeout in seconds (overrides the configuration).
    #[arg(long, value_name = "SECS")]
    pub connect_timeout: Option<u64>,
    /// Overall timeout in seconds (overrides the configuration).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
}

/// Parses the process arguments; exits with code 2 (and help) on usage errors.
pub fn parse() -> Cli {
    Cli::parse()
}

pub(crate) fn eprint_err(msg: impl std::fmt::Display) {
    eprintln!("guest-unlock: {msg}");
}

/// Runs a parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> u8 {
    init_logging(cli.verbose);
    match cli.command {
        Command::Probe(args) => probe(args),
        #[cfg(feature = "sim")]
        Command::SimPlatform(cmd) => match crate::sim_cli::run(cmd) {
            Ok(()) => EXIT_GRANTED,
            Err(e) => {
                eprint_err(e);
                EXIT_FAILED
            }
        },
        Command::Bind(a) => bind_cmd(a),
        Command::List(a) => list_cmd(a),
        Command::Unbind(a) => unbind_cmd(a),
        Command::Unlock(a) => unlock_cmd(a),
        Command::Rotate(a) => rotate_cmd(a),
        Command::Status(a) => status_cmd(a),
    }
}

fn init_logging(verbose: bool) {
    let level = if verbose { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("GUEST_UNLOCK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    // A second initialisation (tests) is harmless.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .event_format(Prefixed)
        .try_init();
}

/// Log lines as `guest-unlock: LEVEL: message key=value`, like the other
/// diagnostics.
struct Prefixed;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for Prefixed
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let level = event.metadata().level().as_str().to_ascii_lowercase();
        write!(writer, "guest-unlock: {level}: ")?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// Builds the configuration from `--config` or from the flags (the
/// `--timeout` flags override either).
pub fn probe_config(args: &ProbeArgs) -> Result<GuestConfig, ConfigError> {
    let mut raw = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
            config::parse(&text)?
        }
        None => {
            if args.brokers.is_empty() || args.pins.is_empty() || args.evidence.is_none() {
                return Err(ConfigError::Missing {
                    setting: "--config",
                    hint: "give --config FILE, or all of --broker URL, --pin PIN and --evidence PROVIDER",
                });
            }
            config::RawConfig {
                brokers: args.brokers.clone(),
                pins: args.pins.clone(),
                evidence: args.evidence.clone(),
                ..Default::default()
            }
        }
    };
    if args.connect_timeout.is_some() {
        raw.connect_timeout_secs = args.connect_timeout;
    }
    if args.timeout.is_some() {
        raw.timeout_secs = args.timeout;
    }
    config::resolve(raw)
}

fn probe(args: ProbeArgs) -> u8 {
    let volumes = match VolumeIds::parse(&args.volumes) {
        Ok(v) => v,
        Err(e) => {
            eprint_err(format_args!("--volume: {e}"));
            return EXIT_USAGE;
        }
    };
    let cfg = match probe_config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprint_err(e);
            return EXIT_USAGE;
        }
    };
    let provider = match open_provider_at_vmpl(&cfg.evidence, cfg.vmpl) {
        Ok(p) => p,
        Err(e) => {
            eprint_err(format_args!("evidence provider {}: {e}", cfg.evidence));
            return EXIT_FAILED;
        }
    };
    // The sim provider itself warns that its reports prove nothing.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprint_err(format_args!("cannot start the async runtime: {e}"));
            return EXIT_FAILED;
        }
    };
    let result = rt.block_on(fetch_keys(&cfg, provider.as_ref(), &volumes));
    match result {
        Ok(outcome) => {
            for line in report_lines(&outcome) {
                println!("{line}");
            }
            if let Some(msg) = &outcome.refusal {
                eprint_err(format_args!("broker {} refused: {msg}", outcome.broker));
            }
            if outcome.all_granted() {
                EXIT_GRANTED
            } else {
                EXIT_FAILED
            }
        }
        Err(e) => {
            eprint_err(e);
            EXIT_FAILED
        }
    }
}

/// The stdout lines of `probe`: `granted VOLUME version N (STATE)` per key,
/// `denied VOLUME: CODE,CODE` per refused volume. Never key bytes.
pub fn report_lines(outcome: &FetchOutcome) -> Vec<String> {
    let mut lines: Vec<String> = outcome
        .keys
        .iter()
        .map(|k| {
            let state = match k.state {
                KeyState::Current => "current",
                KeyState::Pending => "pending",
                KeyState::Unspecified => "unspecified",
            };
            format!("granted {} version {} ({state})", k.volume, k.version)
        })
        .collect();
    lines.extend(outcome.denied.iter().map(|d| {
        let codes = if d.reason_codes.is_empty() {
            "UNSPECIFIED".to_owned()
        } else {
            d.reason_codes.join(",")
        };
        format!("denied {}: {codes}", d.volume)
    }));
    lines
}

// ------------------------------------------------------------------ LUKS2

/// Default configuration file of `unlock` and `status --report`.
pub const DEFAULT_CONFIG: &str = "/etc/guest-unlock/config.toml";
/// Largest key file accepted (cryptsetup's default limit).
pub const MAX_KEY_FILE_BYTES: u64 = 8 << 20;

/// Arguments of `bind`.
#[derive(Debug, Args)]
pub struct BindArgs {
    /// The LUKS2 device (or a file holding a LUKS2 header).
    #[arg(value_name = "DEVICE")]
    pub device: PathBuf,
    /// Broker URL(s), https://HOST:PORT, comma-separated or repeated; recorded in the token.
    #[arg(long = "broker", value_name = "URL", value_delimiter = ',')]
    pub brokers: Vec<String>,
    /// The broker's volume name.
    #[arg(long, value_name = "NAME")]
    pub volume: String,
    /// Pin of the broker's TLS key, sha256:<hex or base64> (repeatable); recorded in the token.
    #[arg(long = "pin", value_name = "PIN")]
    pub pins: Vec<String>,
    /// File holding an existing passphrase, read verbatim; `-` reads standard input.
    #[arg(long, value_name = "FILE|-")]
    pub key_file: Option<PathBuf>,
    /// Format DEVICE as a new LUKS2 device (refused if it already carries a LUKS header).
    #[arg(long)]
    pub format: bool,
    /// Evidence provider (see `PROVIDER_FORMS`).
    #[arg(long, value_name = "PROVIDER", help = EVIDENCE_HELP)]
    pub evidence: Option<String>,
    /// Guest configuration file (TOML); flags override its values.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Per-connection timeout in seconds.
    #[arg(long, value_name = "SECS")]
    pub connect_timeout: Option<u64>,
    /// Overall timeout in seconds.
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
}

/// Arguments of `list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// The LUKS2 device.
    #[arg(value_name = "DEVICE")]
    pub device: PathBuf,
    /// Print a JSON array instead of bind lines.
    #[arg(long)]
    pub json: bool,
}

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

/// Arguments of `unlock`.
#[derive(Debug, Args)]
pub struct UnlockArgs {
    /// Devices to open.
    #[arg(value_name = "DEVICE", conflicts_with = "all")]
    pub devices: Vec<PathBuf>,
    /// Open every block device whose LUKS2 header has a sev-keybroker token.
    #[arg(long)]
    pub all: bool,
    /// Mapping name (one DEVICE only); default: crypttab's name, else luks-<UUID>.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Overall timeout of each attestation, in seconds (overrides the configuration).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// Guest configuration (evidence provider, time limits).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Evidence provider (overrides the configuration).
    #[arg(long, value_name = "PROVIDER")]
    pub evidence: Option<String>,
    /// crypttab to take mapping names and options from (default /etc/crypttab).
    #[arg(long, value_name = "FILE")]
    pub crypttab: Option<PathBuf>,
    /// Attest and check that the keys open their keyslots; activate nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Settings shared by `unlock` and `rotate`.
#[derive(Debug, Args)]
pub struct DeviceArgs {
    /// Overall timeout of each attestation, in seconds (overrides the configuration).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// Guest configuration (evidence provider, time limits).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Evidence provider (overrides the configuration).
    #[arg(long, value_name = "PROVIDER")]
    pub evidence: Option<String>,
    /// crypttab to take mapping names and options from (default /etc/crypttab).
    #[arg(long, value_name = "FILE")]
    pub crypttab: Option<PathBuf>,
}

/// Arguments of `rotate`.
#[derive(Debug, Args)]
pub struct RotateArgs {
    /// Devices (paths) or crypttab names; default: every block device with a sev-keybroker token.
    #[arg(value_name = "DEVICE|NAME")]
    pub targets: Vec<std::ffi::OsString>,
    /// Configuration, crypttab and timeout.
    #[command(flatten)]
    pub common: DeviceArgs,
}

/// Arguments of `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Also obtain a test report from the configured evidence provider.
    #[arg(long)]
    pub report: bool,
    /// Guest configuration (for the evidence provider); default /etc/guest-unlock/config.toml.
    #[arg(long, value_name = "FILE", requires = "report")]
    pub config: Option<PathBuf>,
    /// Evidence provider (overrides the configuration).
    #[arg(long, value_name = "PROVIDER", requires = "report")]
    pub evidence: Option<String>,
}

/// Reads a key file (or standard input for `-`) verbatim into zeroized memory.
pub fn read_key_file(path: &std::path::Path) -> std::io::Result<zeroize::Zeroizing<Vec<u8>>> {
    use std::io::Read as _;
    let mut buf = zeroize::Zeroizing::new(Vec::with_capacity(4096));
    let limit = MAX_KEY_FILE_BYTES + 1;
    // Preallocated; a longer key file is read in place up to the limit.
    let n = if path.as_os_str() == "-" {
        std::io::stdin().lock().take(limit).read_to_end(&mut buf)?
    } else {
        std::fs::File::open(path)?
            .take(limit)
            .read_to_end(&mut buf)?
    };
    if n as u64 > MAX_KEY_FILE_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {MAX_KEY_FILE_BYTES} bytes"),
        ));
    }
    if n == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "empty",
        ));
    }
    Ok(buf)
}

fn read_raw_config(path: &std::path::Path) -> Result<config::RawConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    config::parse(&text)
}

/// The configuration of `bind`: `--config` (if any), overridden by the flags.
pub fn bind_config(args: &BindArgs) -> Result<GuestConfig, ConfigError> {
    let mut raw = match &args.config {
        Some(p) => read_raw_config(p)?,
        None => config::RawConfig::default(),
    };
    if !args.brokers.is_empty() {
        raw.brokers = args.brokers.clone();
    }
    if !args.pins.is_empty() {
        raw.pins = args.pins.clone();
    }
    if args.evidence.is_some() {
        raw.evidence = args.evidence.clone();
    }
    if args.connect_timeout.is_some() {
        raw.connect_timeout_secs = args.connect_timeout;
    }
    if args.timeout.is_some() {
        raw.timeout_secs = args.timeout;
    }
    config::resolve(raw)
}

fn runtime() -> Result<tokio::runtime::Runtime, u8> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprint_err(format_args!("cannot start the async runtime: {e}"));
            EXIT_FAILED
        })
}

fn bind_cmd(args: BindArgs) -> u8 {
    let volume = match keybroker_proto::VolumeId::new(args.volume.as_str()) {
        Ok(v) => v,
        Err(e) => {
            eprint_err(format_args!("--volume: {e}"));
            return EXIT_USAGE;
        }
    };
    if !args.format && args.key_file.is_none() {
        eprint_err("bind needs a passphrase that opens the device: --key-file FILE, or --key-file - to read it from standard input (or --format to make a new LUKS2 device)");
        return EXIT_USAGE;
    }
    let cfg = match bind_config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprint_err(e);
            return EXIT_USAGE;
        }
    };
    let passphrase = match &args.key_file {
        None => None,
        Some(p) => match read_key_file(p) {
            Ok(k) => Some(k),
            Err(e) => {
                eprint_err(format_args!("--key-file {}: {e}", p.display()));
                return EXIT_FAILED;
            }
        },
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let req = crate::luks::BindRequest {
        device: &args.device,
        volume,
        brokers: cfg.brokers.clone(),
        pins: cfg.pins.clone(),
        passphrase,
        format: args.format,
    };
    let fetch = |v: &keybroker_proto::VolumeId| {
        let provider = open_provider_at_vmpl(&cfg.evidence, cfg.vmpl).map_err(|e| {
            crate::flow::UnlockError::Evidence {
                provider: "configured",
                source: e,
            }
        })?;
        let ids =
            VolumeIds::new(vec![v.clone()]).map_err(|e| crate::flow::UnlockError::BadResponse {
                broker: String::new(),
                problem: e.to_string(),
            })?;
        let outcome = rt.block_on(fetch_keys(&cfg, provider.as_ref(), &ids))?;
        if let Some(d) = outcome.denied.iter().find(|d| &d.volume == v) {
            return Err(crate::luks::BindError::Denied {
                broker: outcome.broker.to_string(),
                volume: v.to_string(),
                reasons: d.reason_codes.clone(),
            });
        }
        Ok(outcome.keys)
    };
    match crate::luks::bind(req, Box::new(fetch)) {
        Ok(bindings) => {
            for b in bindings {
                println!(
                    "bound {} keyslot {} (token {}): volume {} key version {}",
                    b.device.display(),
                    b.keyslots
                        .iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(","),
                    b.token,
                    b.volume,
                    b.key_version
                );
            }
            EXIT_GRANTED
        }
        Err(e) => {
            eprint_err(e);
            EXIT_FAILED
        }
    }
}

fn list_cmd(args: ListArgs) -> u8 {
    match crate::luks::list(&args.device) {
        Ok(bindings) => {
            if args.json {
                match serde_json::to_string_pretty(&bindings) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprint_err(e);
                        return EXIT_FAILED;
                    }
                }
            } else {
                for b in &bindings {
                    println!("{}", b.bind_line());
                }
            }
            EXIT_GRANTED
        }
        Err(e) => {
            eprint_err(e);
            EXIT_FAILED
        }
    }
}

fn unbind_cmd(args: UnbindArgs) -> u8 {
    match crate::luks::unbind(&args.device, args.slot, args.force) {
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

/// The raw configuration of `unlock`/`status`: `--config`, else the
/// default file if it exists, else empty; `--evidence` overrides.
fn boot_raw_config(
    path: Option<&PathBuf>,
    evidence: Option<&String>,
) -> Result<config::RawConfig, ConfigError> {
    let mut raw = match path {
        Some(p) => read_raw_config(p)?,
        None if std::path::Path::new(DEFAULT_CONFIG).exists() => {
            read_raw_config(std::path::Path::new(DEFAULT_CONFIG))?
        }
        None => config::RawConfig::default(),
    };
    if let Some(e) = evidence {
        raw.evidence = Some(e.clone());
    }
    if raw.evidence.is_none() {
        return Err(ConfigError::Missing {
            setting: "evidence",
            hint: "name the evidence provider in /etc/guest-unlock/config.toml (evidence = \"sev-guest\"), or give --config FILE or --evidence PROVIDER",
        });
    }
    Ok(raw)
}

fn unlock_cmd(args: UnlockArgs) -> u8 {
    use crate::unlock as u;
    if !args.all && args.devices.is_empty() {
        eprint_err("unlock needs --all or at least one DEVICE");
        return EXIT_USAGE;
    }
    if args.name.is_some() && (args.all || args.devices.len() != 1) {
        eprint_err("--name needs exactly one DEVICE");
        return EXIT_USAGE;
    }
    if let Some(n) = &args.name {
        if !u::valid_mapping_name(n) {
            eprint_err(format_args!("--name {n:?}: not a usable mapping name"));
            return EXIT_USAGE;
        }
    }
    let mode = if args.dry_run {
        crate::unlock::Mode::CheckOnly
    } else {
        crate::unlock::Mode::Activate
    };
    let selection = if args.all {
        None
    } else {
        Some(
            args.devices
                .iter()
                .map(|d| d.as_os_str().to_owned())
                .collect(),
        )
    };
    let common = DeviceArgs {
        timeout: args.timeout,
        config: args.config,
        evidence: args.evidence,
        crypttab: args.crypttab,
    };
    let started = std::time::Instant::now();
    let (code, counts) = open_devices(&common, selection, args.name.as_deref(), mode);
    if let Some((unlocked, locked)) = counts {
        crate::events::emit(&crate::events::done(
            unlocked,
            locked,
            started.elapsed().as_secs_f64(),
        ));
    }
    code
}

fn rotate_cmd(args: RotateArgs) -> u8 {
    let selection = if args.targets.is_empty() {
        None
    } else {
        Some(args.targets.clone())
    };
    open_devices(&args.common, selection, None, crate::unlock::Mode::Rotate).0
}

/// The command line's [`crate::unlock::Progress`]: event lines as things
/// happen, the human line before a rotation, and the crash-point test hook.
struct Console {
    mode: crate::unlock::Mode,
    #[cfg(feature = "failpoints")]
    failpoint: crate::failpoint::Failpoint,
}

impl crate::unlock::Progress for Console {
    fn opened(&mut self, u: &crate::unlock::Unlocked) {
        if self.mode == crate::unlock::Mode::Activate {
            crate::events::emit(&crate::events::unlocked(u));
        }
    }

    fn rotation_starts(&mut self, u: &crate::unlock::Unlocked) {
        eprint_err(format_args!(
            "{} ({}) is open with keyslot {}, key version {}; key rotation follows",
            u.volume,
            u.device.display(),
            u.keyslot.unwrap_or_default(),
            u.key_version.unwrap_or_default()
        ));
    }

    fn rotation_step(&mut self, step: &crate::rotation::StepDone) -> std::ops::ControlFlow<()> {
        crate::events::emit(&crate::events::rotation(step));
        #[cfg(feature = "failpoints")]
        self.failpoint.after(step.step);
        std::ops::ControlFlow::Continue(())
    }
}

/// A device that stays locked before any attestation.
fn not_attempted(
    volume: &str,
    device: PathBuf,
    reason: String,
    kind: crate::unlock::FailureKind,
) -> crate::unlock::StillLocked {
    crate::unlock::StillLocked {
        volume: volume.to_owned(),
        device,
        reason,
        cause: crate::unlock::LockCause::Failed(kind),
    }
}

/// `unlock` and `rotate`: `selection` is `None` for every bound block
/// device, else device paths (and, for `rotate`, crypttab names). Returns
/// the exit code and, once devices were looked at, how many are open and
/// how many stay locked.
fn open_devices(
    args: &DeviceArgs,
    selection: Option<Vec<std::ffi::OsString>>,
    name: Option<&str>,
    mode: crate::unlock::Mode,
) -> (u8, Option<(usize, usize)>) {
    use crate::unlock::{self as u, FailureKind, Probe};
    let all = selection.is_none();
    let mut raw = match boot_raw_config(args.config.as_ref(), args.evidence.as_ref()) {
        Ok(r) => r,
        Err(e) => {
            eprint_err(e);
            return (EXIT_USAGE, None);
        }
    };
    if args.timeout.is_some() {
        raw.timeout_secs = args.timeout;
    }
    // Check the non-broker settings now (brokers and pins come from tokens).
    let probe_raw = config::RawConfig {
        brokers: vec!["https://localhost".into()],
        pins: vec![format!("sha256:{}", "00".repeat(32))],
        ..raw.clone()
    };
    let base = match config::resolve(probe_raw) {
        Ok(c) => c,
        Err(e) => {
            eprint_err(e);
            return (EXIT_USAGE, None);
        }
    };
    let crypttab_path = args
        .crypttab
        .clone()
        .unwrap_or_else(|| PathBuf::from(u::DEFAULT_CRYPTTAB));
    let crypttab = match std::fs::read_to_string(&crypttab_path) {
        Ok(text) => {
            let (entries, errors) = u::parse_crypttab(&text);
            for e in errors {
                eprint_err(format_args!("warning: {}: {e}", crypttab_path.display()));
            }
            entries
        }
        Err(e) => {
            if args.crypttab.is_some() {
                eprint_err(format_args!(
                    "warning: cannot read {}: {e}; using default names",
                    crypttab_path.display()
                ));
            }
            Vec::new()
        }
    };

    let mut locked: Vec<u::StillLocked> = Vec::new();
    let mut targets = Vec::new();
    let candidates = match &selection {
        None => u::scan_block_devices(std::path::Path::new(u::SYS_CLASS_BLOCK)),
        Some(items) => {
            let mut out = Vec::new();
            for item in items {
                // `unlock` takes device paths only, as it always did.
                let found = if mode == u::Mode::Rotate {
                    u::device_for(item, &crypttab, &u::resolve_spec)
                } else {
                    Ok(PathBuf::from(item))
                };
                match found {
                    Ok(p) => out.push(p),
                    Err(reason) => locked.push(not_attempted(
                        "?",
                        PathBuf::from(item),
                        reason,
                        FailureKind::NotFound,
                    )),
                }
            }
            out
        }
    };
    for dev in candidates {
        match u::probe(&dev) {
            Probe::Bound(t) => targets.push(t),
            Probe::NotLuks2(e) if !all => locked.push(not_attempted(
                "?",
                dev,
                e.to_string(),
                FailureKind::NotLuks2,
            )),
            Probe::NoToken if !all => locked.push(not_attempted(
                "?",
                dev,
                "no sev-keybroker token: bind it first with `guest-unlock bind`".into(),
                FailureKind::NoToken,
            )),
            Probe::NotLuks2(_) | Probe::NoToken => {}
            Probe::Invalid(e) => locked.push(not_attempted(
                "?",
                dev,
                e.to_string(),
                FailureKind::InvalidToken,
            )),
        }
    }
    u::name_targets(&mut targets, name, &crypttab, &u::resolve_spec);
    if targets.is_empty() && locked.is_empty() {
        eprint_err("no LUKS2 device bound to a broker was found");
        return (EXIT_GRANTED, Some((0, 0)));
    }
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return (code, None),
    };
    let provider = if targets.is_empty() {
        None
    } else {
        match open_provider_at_vmpl(&base.evidence, base.vmpl) {
            Ok(p) => Some(p),
            Err(e) => {
                for t in &targets {
                    locked.push(not_attempted(
                        &t.volumes(),
                        t.device.clone(),
                        format!("evidence provider {}: {e}", base.evidence),
                        FailureKind::Evidence,
                    ));
                }
                targets.clear();
                None
            }
        }
    };
    let rt = &rt;
    let mut console = Console {
        mode,
        #[cfg(feature = "failpoints")]
        failpoint: crate::failpoint::Failpoint::from_process(),
    };
    let fetch = &mut |group: &u::Group, ids: &VolumeIds| {
        let cfg = config::resolve(config::RawConfig {
            brokers: group.brokers.iter().map(ToString::to_string).collect(),
            pins: group.pins.iter().map(ToString::to_string).collect(),
            ..raw.clone()
        })
        .map_err(|e| crate::flow::UnlockError::BadResponse {
            broker: String::new(),
            problem: format!("token settings: {e}"),
        })?;
        let provider = provider.as_ref().expect("targets imply a provider");
        let (outcome, session) = rt.block_on(fetch_keys_session(&cfg, provider.as_ref(), ids))?;
        let confirmer = match (mode, session) {
            (u::Mode::CheckOnly, _) | (_, None) => None,
            (_, Some(s)) => Some(Box::new(SessionConfirmer::new(rt, s)) as Box<dyn Confirmer + '_>),
        };
        Ok(u::Fetched { outcome, confirmer })
    };
    let report = u::unlock_targets(&targets, mode, fetch, &mut console);
    let verb = match mode {
        u::Mode::Activate => "unlocked",
        u::Mode::CheckOnly | u::Mode::Rotate => "checked",
    };
    for ok in &report.unlocked {
        match (ok.keyslot, ok.key_version) {
            (Some(slot), Some(v)) => println!(
                "{verb} {} ({}) as {}, keyslot {slot}, key version {v}",
                ok.volume,
                ok.device.display(),
                ok.name
            ),
            _ => println!(
                "already active: {} ({}) as {}",
                ok.volume,
                ok.device.display(),
                ok.name
            ),
        }
    }
    let mut rotation_failed = false;
    for n in &report.rotation {
        if n.ok {
            println!("rotated {n}");
        } else {
            rotation_failed = true;
            eprint_err(n);
        }
    }
    locked.extend(report.locked);
    for l in &locked {
        eprint_err(l);
        crate::events::emit(&crate::events::locked(l));
    }
    let counts = Some((report.unlocked.len(), locked.len()));
    // A rotation that did not complete never fails an unlock (the volume
    // is open); it fails `rotate`.
    if locked.is_empty() && !(mode == u::Mode::Rotate && rotation_failed) {
        (EXIT_GRANTED, counts)
    } else {
        (EXIT_FAILED, counts)
    }
}

fn status_cmd(args: StatusArgs) -> u8 {
    let mut st = crate::status::observe(std::path::Path::new("/"));
    if args.report {
        st.report = Some(status_report(&args));
    }
    if args.json {
        let mut v = serde_json::to_value(&st).unwrap_or_default();
        if let Some(obj) = v.as_object_mut() {
            obj.insert("snp_active".into(), serde_json::json!(st.snp_active()));
        }
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        for l in st.lines() {
            println!("{l}");
        }
    }
    if st.snp_active() {
        EXIT_GRANTED
    } else {
        EXIT_FAILED
    }
}

fn status_report(args: &StatusArgs) -> Result<crate::status::ReportSummary, String> {
    let raw =
        boot_raw_config(args.config.as_ref(), args.evidence.as_ref()).map_err(|e| e.to_string())?;
    let evidence: crate::evidence::ProviderConfig = raw
        .evidence
        .as_deref()
        .unwrap_or_default()
        .parse()
        .map_err(|e: crate::evidence::EvidenceError| e.to_string())?;
    let provider =
        open_provider_at_vmpl(&evidence, raw.vmpl.unwrap_or(0)).map_err(|e| e.to_string())?;
    let mut rd = [0u8; 64];
    rd[..16].copy_from_slice(b"guest-unlock sta");
    let ev = provider.get_evidence(&rd).map_err(|e| e.to_string())?;
    crate::status::summarize_report(&ev.report).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{Denied, UnwrappedKey};
    use keybroker_proto::VolumeId;
    use std::time::Duration;

    fn args(v: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("guest-unlock").chain(v.iter().copied()))
    }

    const PIN: &str = "sha256:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[cfg(feature = "sim")]
    #[test]
    fn flags_build_a_config() {
        let cli = args(&[
            "probe",
            "--broker",
            "https://kb:8443",
            "--pin",
            PIN,
            "--evidence",
            "sim:/tmp/p",
            "--volume",
            "root",
            "--volume",
            "data",
            "--timeout",
            "9",
        ])
        .unwrap();
        let Command::Probe(a) = cli.command else {
            panic!("parsed as another command")
        };
        let cfg = probe_config(&a).unwrap();
        assert_eq!(cfg.brokers[0].port(), 8443);
        assert_eq!(cfg.timeout, Duration::from_secs(9));
        assert!(matches!(
            cfg.evidence,
            crate::evidence::ProviderConfig::Sim { .. }
        ));
        assert_eq!(a.volumes, ["root", "data"]);
    }

    #[test]
    fn usage_errors() {
        // No volume.
        assert!(args(&["probe", "--config", "/x"]).is_err());
        // --config conflicts with the flags.
        assert!(args(&["probe", "--config", "/x", "--pin", PIN, "--volume", "a"]).is_err());
        // Flags incomplete: a usage error at config time.
        let cli = args(&["probe", "--broker", "https://kb:1", "--volume", "a"]).unwrap();
        let Command::Probe(a) = cli.command else {
            panic!("parsed as another command")
        };
        assert!(matches!(probe_config(&a), Err(ConfigError::Missing { .. })));
        assert_eq!(
            run(args(&["probe", "--broker", "https://kb:1", "--volume", "a"]).unwrap()),
            EXIT_USAGE
        );
        // Bad volume name.
        let cli = args(&[
            "probe",
            "--broker",
            "https://kb:1",
            "--pin",
            PIN,
            "--evidence",
            "sev-guest",
            "--volume",
            "../etc",
        ])
        .unwrap();
        assert_eq!(run(cli), EXIT_USAGE);
        // Unreadable config file.
        let cli = args(&[
            "probe",
            "--config",
            "/nonexistent/guest-unlock.toml",
            "--volume",
            "a",
        ])
        .unwrap();
        assert_eq!(run(cli), EXIT_USAGE);
    }

    #[test]
    fn lines_never_contain_keys() {
        let out = FetchOutcome {
            broker: "https://kb:1".parse().unwrap(),
            keys: vec![UnwrappedKey {
                volume: VolumeId::new("root").unwrap(),
                version: 3,
                state: KeyState::Pending,
                key: zeroize::Zeroizing::new(vec![0xab; 64]),
            }],
            denied: vec![Denied {
                volume: VolumeId::new("data").unwrap(),
                reason_codes: vec!["A".into(), "B".into()],
            }],
            decision_id: String::new(),
            refusal: None,
        };
        let lines = report_lines(&out);
        assert_eq!(
            lines,
            ["granted root version 3 (pending)", "denied data: A,B"]
        );
        assert!(!lines.concat().to_lowercase().contains("abab"));
    }

    /// The command end to end: the simulated platform, a fake broker over
    /// pinned TLS, a config file, and the exit code.
    #[cfg(feature = "sim")]
    #[test]
    fn probe_exit_codes_against_a_fake_broker() {
        use crate::client::test_support::{serve, server_config, test_cert};
        use crate::flow::tests::{GrpcFake, Twist};
        use crate::sim::{SimParams, SimPlatform};

        let dir = tempfile::tempdir().unwrap();
        let platform = dir.path().join("platform");
        SimPlatform::generate(&platform, &SimParams::default()).unwrap();
        let server_rt = tokio::runtime::Runtime::new().unwrap();
        let cert = test_cert();
        for (twist, expected) in [
            (Twist::None, EXIT_GRANTED),
            (Twist::DenySecond, EXIT_FAILED),
            (Twist::Refuse, EXIT_FAILED),
            (Twist::Tamper, EXIT_FAILED),
        ] {
            let url =
                server_rt.block_on(serve(GrpcFake { twist, down: false }, server_config(&cert)));
            let conf = dir.path().join("guest.toml");
            std::fs::write(
                &conf,
                format!(
                    "brokers = [\"{url}\"]\npins = [\"{}\"]\nevidence = \"sim:{}\"\ntimeout_secs = 20\n",
                    cert.pin,
                    platform.display()
                ),
            )
            .unwrap();
            let cli = args(&[
                "probe",
                "--config",
                conf.to_str().unwrap(),
                "--volume",
                "root",
                "--volume",
                "data",
            ])
            .unwrap();
            assert_eq!(run(cli), expected, "{twist:?}");
        }
    }
}
