//! `guest-unlock probe`: one full attestation, one line per key or denial
//! on standard output (never key bytes).

use std::path::PathBuf;

use clap::Args;
use guest_unlock::evidence::open_provider_at_vmpl;
use guest_unlock::flow::{fetch_keys, FetchOutcome};
use keybroker_proto::pb::KeyState;
use keybroker_proto::VolumeIds;

use super::settings::{flags_config, Overrides};
use super::{eprint_err, runtime, EVIDENCE_HELP, EXIT_FAILED, EXIT_GRANTED, EXIT_USAGE};

/// Arguments of `probe`.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// Guest configuration file (TOML) [default: /etc/guest-unlock/config.toml
    /// if it exists]; the flags override its values.
    #[arg(long, short = 'c', env = "GUEST_UNLOCK_CONFIG", value_name = "FILE")]
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
    /// Evidence provider.
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

impl ProbeArgs {
    fn overrides(&self) -> Overrides<'_> {
        Overrides {
            brokers: &self.brokers,
            pins: &self.pins,
            evidence: self.evidence.as_ref(),
            connect_timeout: self.connect_timeout,
            timeout: self.timeout,
        }
    }
}

/// Runs `probe`; returns the exit code.
pub fn run(args: ProbeArgs) -> u8 {
    let volumes = match VolumeIds::parse(&args.volumes) {
        Ok(v) => v,
        Err(e) => {
            eprint_err(format_args!("--volume: {e}"));
            return EXIT_USAGE;
        }
    };
    let cfg = match flags_config(args.config.as_ref(), &args.overrides()) {
        Ok(c) => c,
        Err(e) => {
            eprint_err(e);
            return EXIT_USAGE;
        }
    };
    // The sim provider itself warns that its reports prove nothing.
    let provider = match open_provider_at_vmpl(&cfg.evidence, cfg.vmpl) {
        Ok(p) => p,
        Err(e) => {
            eprint_err(format_args!("evidence provider {}: {e}", cfg.evidence));
            return EXIT_FAILED;
        }
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(fetch_keys(&cfg, provider.as_ref(), &volumes)) {
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
/// `denied VOLUME: CODE,CODE (decision ID)` per refused volume. Never key bytes.
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
        format!(
            "denied {}: {codes}{}",
            d.volume,
            guest_unlock::unlock::decision_suffix(&outcome.decision_id)
        )
    }));
    lines
}

#[cfg(test)]
mod tests {
    use super::super::tests::args;
    use super::super::{run as run_cli, Command};
    use super::*;
    use guest_unlock::flow::{Denied, UnwrappedKey};
    use keybroker_proto::VolumeId;
    use std::time::Duration;

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
            "configfs-tsm:/tmp/p",
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
        let cfg = flags_config(None, &a.overrides()).unwrap();
        assert_eq!(cfg.brokers[0].port(), 8443);
        assert_eq!(cfg.timeout, Duration::from_secs(9));
        assert!(matches!(
            cfg.evidence,
            guest_unlock::evidence::ProviderConfig::ConfigfsTsm { .. }
        ));
        assert_eq!(a.volumes, ["root", "data"]);
    }

    #[test]
    fn usage_errors() {
        // No volume.
        assert!(args(&["probe", "--config", "/x"]).is_err());
        // -c is --config, and the flags override it.
        let cli = args(&["probe", "-c", "/x", "--pin", PIN, "--volume", "a"]).unwrap();
        let Command::Probe(a) = cli.command else {
            panic!("parsed as another command")
        };
        assert_eq!(a.config.as_deref(), Some(std::path::Path::new("/x")));
        // Flags incomplete: a usage error at config time.
        assert_eq!(
            run_cli(args(&["probe", "--broker", "https://kb:1", "--volume", "a"]).unwrap()),
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
        assert_eq!(run_cli(cli), EXIT_USAGE);
        // Unreadable config file.
        let cli = args(&[
            "probe",
            "--config",
            "/nonexistent/guest-unlock.toml",
            "--volume",
            "a",
        ])
        .unwrap();
        assert_eq!(run_cli(cli), EXIT_USAGE);
    }

    #[test]
    fn lines_never_contain_keys() {
        let out = FetchOutcome {
            broker: "https://kb:1".parse().unwrap(),
            keys: vec![UnwrappedKey::new(
                VolumeId::new("root").unwrap(),
                3,
                KeyState::Pending,
                zeroize::Zeroizing::new(vec![0xab; 64]),
            )],
            denied: vec![Denied {
                volume: VolumeId::new("data").unwrap(),
                reason_codes: vec!["A".into(), "B".into()],
            }],
            decision_id: "17".into(),
            refusal: None,
        };
        let lines = report_lines(&out);
        assert_eq!(
            lines,
            [
                "granted root version 3 (pending)",
                "denied data: A,B (decision 17)"
            ]
        );
        assert!(!lines.concat().to_lowercase().contains("abab"));
    }
}
