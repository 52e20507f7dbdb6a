//! The `guest-unlock` command line.
//!
//! ```text
//! guest-unlock probe --config FILE --volume NAME [--volume NAME]...
//! guest-unlock probe --broker URL [--broker URL]... --pin PIN [--pin PIN]...
//!                    --evidence sim:DIR|sev-guest[:DEV]|configfs-tsm[:ROOT] --volume NAME...
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
//! # Exit codes
//!
//! | code | meaning |
//! | --- | --- |
//! | 0 | every requested volume was granted |
//! | 1 | a volume was denied, no broker could be reached, or the attempt failed (evidence, protocol, a key that did not open) |
//! | 2 | usage error: bad arguments or an invalid configuration file |

use clap::{Args, Parser, Subcommand};
use keybroker_proto::pb::KeyState;
use keybroker_proto::VolumeIds;
use std::path::PathBuf;

use crate::config::{self, ConfigError, GuestConfig};
use crate::evidence::open_provider_at_vmpl;
use crate::flow::{fetch_keys, FetchOutcome};

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
    /// Create or describe a simulated SEV-SNP platform (tests and demos only).
    #[command(subcommand)]
    SimPlatform(crate::sim_cli::SimCommand),
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
    /// Evidence provider: `sev-guest[:DEVICE]`, `configfs-tsm[:ROOT]` or `sim:DIR`.
    #[arg(
        long,
        value_name = "PROVIDER",
        help = "Evidence provider: sev-guest[:DEVICE], configfs-tsm[:ROOT] or sim:DIR"
    )]
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

fn eprint_err(msg: impl std::fmt::Display) {
    eprintln!("guest-unlock: {msg}");
}

/// Runs a parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> u8 {
    init_logging(cli.verbose);
    match cli.command {
        Command::Probe(args) => probe(args),
        Command::SimPlatform(cmd) => match crate::sim_cli::run(cmd) {
            Ok(()) => EXIT_GRANTED,
            Err(e) => {
                eprint_err(e);
                EXIT_FAILED
            }
        },
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
