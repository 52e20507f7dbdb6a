//! Guest configuration: which brokers, how they are pinned, time limits, and
//! where evidence comes from.
//!
//! Two stages, as ripgrep turns low-level arguments into high-level ones:
//! [`parse`] reads TOML text into a [`RawConfig`] (no I/O, no defaults), and
//! [`resolve`] checks it and fills in defaults, giving a [`GuestConfig`]
//! (still no I/O: no file is opened, no name resolved). [`load`] does both
//! for a file.
//!
//! ```toml
//! # /etc/guest-unlock.toml
//! brokers = ["https://kb1.example.net:8443", "https://10.0.0.7:8443"]
//! # SHA-256 of the broker TLS key's SubjectPublicKeyInfo (DER), hex or base64:
//! #   openssl x509 -in broker.pem -pubkey -noout \
//! #     | openssl pkey -pubin -outform DER | sha256sum
//! pins = ["sha256:6d0c6b4e0b3f...e1"]
//! connect_timeout_secs = 5   # per TCP + TLS connection attempt (default 5)
//! timeout_secs = 60          # whole unlock, all brokers and retries (default 60)
//! evidence = "sev-guest"     # or "configfs-tsm", "sev-guest:/dev/sev-guest",
//!                            # "configfs-tsm:/sys/kernel/config/tsm/report"
//!                            # (test builds: "sim:DIR")
//! vmpl = 0                   # VMPL of the requested report (default 0)
//! ```
//!
//! `evidence` has no default: the simulated platform (`sim:DIR`, in test
//! builds only) is used only when named, never as a fallback for missing
//! hardware.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use keybroker_proto::SpkiPin;
use serde::Deserialize;

use crate::evidence::ProviderConfig;

/// Default per-connection timeout (TCP connect and TLS handshake).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default limit for a whole unlock, across all brokers and retries.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest accepted `timeout_secs` / `connect_timeout_secs`.
pub const MAX_TIMEOUT_SECS: u64 = 3600;
/// Most broker URLs / pins accepted.
pub const MAX_BROKERS: usize = 32;

/// A configuration file as written, before checks and defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Broker URLs, tried in order.
    #[serde(default)]
    pub brokers: Vec<String>,
    /// Accepted broker key pins.
    #[serde(default)]
    pub pins: Vec<String>,
    /// Per-connection timeout, seconds.
    pub connect_timeout_secs: Option<u64>,
    /// Whole-unlock timeout, seconds.
    pub timeout_secs: Option<u64>,
    /// Evidence provider: `sev-guest[:DEVICE]`, `configfs-tsm[:ROOT]` (or, in
    /// test builds, `sim:DIR`).
    pub evidence: Option<String>,
    /// VMPL of the requested report (0..=3).
    pub vmpl: Option<u32>,
}

/// A checked configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestConfig {
    /// Brokers, tried in this order.
    pub brokers: Vec<BrokerUrl>,
    /// A broker is accepted iff its TLS key matches one of these.
    pub pins: Vec<SpkiPin>,
    /// Limit for one TCP connect plus TLS handshake.
    pub connect_timeout: Duration,
    /// Limit for the whole unlock.
    pub timeout: Duration,
    /// Where the attestation report comes from.
    pub evidence: ProviderConfig,
    /// VMPL of the requested report.
    pub vmpl: u32,
}

/// A configuration problem. Messages name the setting and what to write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {reason}")]
    Read {
        /// The path.
        path: String,
        /// The I/O error.
        reason: String,
    },
    /// The text is not valid TOML for this schema.
    #[error("invalid config: {0}")]
    Syntax(String),
    /// A required setting is missing.
    #[error("missing setting `{setting}`: {hint}")]
    Missing {
        /// The setting.
        setting: &'static str,
        /// What to write.
        hint: &'static str,
    },
    /// A setting has an unusable value.
    #[error("invalid `{setting}` value {value:?}: {reason}")]
    Invalid {
        /// The setting.
        setting: &'static str,
        /// The offending value (cut to 100 characters).
        value: String,
        /// What is wrong and what is expected.
        reason: String,
    },
}

fn invalid(setting: &'static str, value: &str, reason: impl Into<String>) -> ConfigError {
    let mut v: String = value.chars().take(100).collect();
    if value.chars().count() > 100 {
        v.push_str("...");
    }
    ConfigError::Invalid {
        setting,
        value: v,
        reason: reason.into(),
    }
}

/// Parses TOML text (no I/O, no checks beyond the schema).
pub fn parse(text: &str) -> Result<RawConfig, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string().trim_end().to_owned()))
}

/// The settings of an attestation besides where the brokers are: what
/// `unlock` takes from the configuration file while the brokers and pins
/// come from each device's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Limit for one TCP connect plus TLS handshake (at most `timeout`).
    pub connect_timeout: Duration,
    /// Limit for the whole unlock.
    pub timeout: Duration,
    /// Where the attestation report comes from.
    pub evidence: ProviderConfig,
    /// VMPL of the requested report.
    pub vmpl: u32,
}

/// A broker or pin list must name 1 to [`MAX_BROKERS`] entries.
fn check_list(setting: &'static str, len: usize) -> Result<(), ConfigError> {
    if len == 0 {
        return Err(ConfigError::Missing {
            setting,
            hint: if setting == "brokers" {
                "list the broker URLs, e.g. brokers = [\"https://broker.example:8443\"]"
            } else {
                "pin the broker's TLS key: pins = [\"sha256:<SHA-256 of its SubjectPublicKeyInfo>\"] \
                 (there is no CA fallback)"
            },
        });
    }
    if len > MAX_BROKERS {
        let what = if setting == "brokers" { "URLs" } else { "pins" };
        return Err(invalid(
            setting,
            &format!("{len} {what}"),
            format!("at most {MAX_BROKERS} {setting}"),
        ));
    }
    Ok(())
}

/// Checks a raw configuration and applies defaults.
pub fn resolve(raw: RawConfig) -> Result<GuestConfig, ConfigError> {
    check_list("brokers", raw.brokers.len())?;
    let brokers = raw
        .brokers
        .iter()
        .map(|s| s.parse())
        .collect::<Result<Vec<BrokerUrl>, _>>()?;
    check_list("pins", raw.pins.len())?;
    let pins = raw
        .pins
        .iter()
        .map(|s| {
            s.parse::<SpkiPin>()
                .map_err(|e| invalid("pins", s, e.to_string()))
        })
        .collect::<Result<Vec<SpkiPin>, _>>()?;
    GuestConfig::new(brokers, pins, &resolve_settings(&raw)?)
}

/// Checks the settings of a raw configuration other than `brokers` and
/// `pins` (which it ignores), and applies defaults.
pub fn resolve_settings(raw: &RawConfig) -> Result<Settings, ConfigError> {
    let secs = |setting: &'static str, v: Option<u64>, default: Duration| match v {
        None => Ok(default),
        Some(0) => Err(invalid(setting, "0", "must be at least 1 second")),
        Some(n) if n > MAX_TIMEOUT_SECS => Err(invalid(
            setting,
            &n.to_string(),
            format!("must be at most {MAX_TIMEOUT_SECS} seconds"),
        )),
        Some(n) => Ok(Duration::from_secs(n)),
    };
    let connect_timeout = secs(
        "connect_timeout_secs",
        raw.connect_timeout_secs,
        DEFAULT_CONNECT_TIMEOUT,
    )?;
    let timeout = secs("timeout_secs", raw.timeout_secs, DEFAULT_TIMEOUT)?;
    let connect_timeout = connect_timeout.min(timeout);
    let evidence = match &raw.evidence {
        None => {
            return Err(ConfigError::Missing {
                setting: "evidence",
                hint: "name the evidence provider: \"sev-guest\" or \"configfs-tsm\"",
            })
        }
        Some(s) => s
            .parse::<ProviderConfig>()
            .map_err(|e| invalid("evidence", s, e.to_string()))?,
    };
    let vmpl = match raw.vmpl {
        None => 0,
        Some(v @ 0..=3) => v,
        Some(v) => return Err(invalid("vmpl", &v.to_string(), "must be 0, 1, 2 or 3")),
    };
    Ok(Settings {
        connect_timeout,
        timeout,
        evidence,
        vmpl,
    })
}

impl GuestConfig {
    /// Brokers and pins (from a token, say) with `settings`.
    pub fn new(
        brokers: Vec<BrokerUrl>,
        pins: Vec<SpkiPin>,
        settings: &Settings,
    ) -> Result<Self, ConfigError> {
        check_list("brokers", brokers.len())?;
        check_list("pins", pins.len())?;
        Ok(GuestConfig {
            brokers,
            pins,
            connect_timeout: settings.connect_timeout,
            timeout: settings.timeout,
            evidence: settings.evidence.clone(),
            vmpl: settings.vmpl,
        })
    }
}

/// Reads, parses and resolves a configuration file.
pub fn load(path: &Path) -> Result<GuestConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    resolve(parse(&text)?)
}

/// A broker address, `https://HOST[:PORT]` (port 443 by default). HOST is a
/// DNS name, an IPv4 address or a bracketed IPv6 address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BrokerUrl {
    host: String,
    port: u16,
}

impl BrokerUrl {
    /// Host name or IP address (IPv6 without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The authority, `host:port` (`[v6]:port`).
    pub fn authority(&self) -> String {
        keybroker_rt::channel::authority(&self.host, self.port)
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "https://{}", self.authority())
    }
}

impl FromStr for BrokerUrl {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| invalid("brokers", s, reason);
        let uri: http::Uri = s
            .parse()
            .map_err(|_| bad("not a URL; expected https://HOST:PORT"))?;
        match uri.scheme_str() {
            Some("https") => {}
            Some(_) => return Err(bad("only https:// is supported")),
            None => return Err(bad("missing scheme; expected https://HOST:PORT")),
        }
        let auth = uri
            .authority()
            .ok_or_else(|| bad("missing host; expected https://HOST:PORT"))?;
        if auth.as_str().contains('@') {
            return Err(bad("user information is not allowed in a broker URL"));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(bad("a broker URL has no path or query: https://HOST:PORT"));
        }
        let host = auth.host();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() {
            return Err(bad("missing host"));
        }
        // What follows the host: "" or ":PORT".
        let port_part = auth.as_str().get(auth.host().len()..).unwrap_or_default();
        let port = match (auth.port_u16(), port_part) {
            (Some(0), _) => return Err(bad("port 0 is not usable")),
            (Some(p), _) => p,
            (None, "") => 443,
            (None, _) => return Err(bad("the port must be a number from 1 to 65535")),
        };
        // The name must be usable for TLS (a DNS name or an IP address).
        rustls::pki_types::ServerName::try_from(host.to_owned())
            .map_err(|_| bad("the host is neither a DNS name nor an IP address"))?;
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIN_HEX: &str = "sha256:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn full() -> String {
        format!(
            r#"
brokers = ["https://kb1.example.net:8443", "https://10.0.0.7:9000", "https://[::1]:8443"]
pins = ["{PIN_HEX}"]
connect_timeout_secs = 3
timeout_secs = 30
evidence = "configfs-tsm"
vmpl = 1
"#
        )
    }

    #[test]
    fn full_config() {
        let c = resolve(parse(&full()).unwrap()).unwrap();
        assert_eq!(c.brokers.len(), 3);
        assert_eq!(c.brokers[0].host(), "kb1.example.net");
        assert_eq!(c.brokers[0].port(), 8443);
        assert_eq!(c.brokers[2].host(), "::1");
        assert_eq!(c.brokers[2].to_string(), "https://[::1]:8443");
        assert_eq!(c.pins[0].as_bytes()[31], 0x1f);
        assert_eq!(c.connect_timeout, Duration::from_secs(3));
        assert_eq!(c.timeout, Duration::from_secs(30));
        assert!(matches!(c.evidence, ProviderConfig::ConfigfsTsm { .. }));
        assert_eq!(c.vmpl, 1);
    }

    #[test]
    fn defaults() {
        let c = resolve(
            parse(&format!(
                "brokers = [\"https://kb\"]\npins = [\"{PIN_HEX}\"]\nevidence = \"sev-guest\"\n"
            ))
            .unwrap(),
        )
        .unwrap();
        assert_eq!(c.brokers[0].port(), 443);
        assert_eq!(c.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(c.timeout, DEFAULT_TIMEOUT);
        assert_eq!(c.vmpl, 0);
    }

    #[test]
    fn evidence_is_never_defaulted() {
        let raw = parse(&format!(
            "brokers = [\"https://kb\"]\npins = [\"{PIN_HEX}\"]\n"
        ))
        .unwrap();
        let e = resolve(raw).unwrap_err();
        assert!(
            matches!(
                e,
                ConfigError::Missing {
                    setting: "evidence",
                    ..
                }
            ),
            "{e}"
        );
        let raw = parse(&format!(
            "brokers = [\"https://kb\"]\npins = [\"{PIN_HEX}\"]\nevidence = \"sim\"\n"
        ))
        .unwrap();
        assert!(resolve(raw).is_err(), "sim without a directory");
    }

    #[test]
    fn malformed_toml_and_unknown_keys() {
        assert!(matches!(parse("brokers = ["), Err(ConfigError::Syntax(_))));
        assert!(matches!(parse("broker = []"), Err(ConfigError::Syntax(_))));
        assert!(matches!(
            parse("brokers = \"https://kb\""),
            Err(ConfigError::Syntax(_))
        ));
        assert!(matches!(
            parse("timeout_secs = -1"),
            Err(ConfigError::Syntax(_))
        ));
        assert!(matches!(
            parse("vmpl = \"zero\""),
            Err(ConfigError::Syntax(_))
        ));
        let e = parse("pin = [\"x\"]").unwrap_err().to_string();
        assert!(e.contains("pin"), "{e}");
    }

    #[test]
    fn missing_and_bad_values() {
        let base = |extra: &str| {
            format!(
                "brokers = [\"https://kb:1\"]\npins = [\"{PIN_HEX}\"]\nevidence = \"sev-guest\"\n{extra}"
            )
        };
        assert!(matches!(
            resolve(parse("pins = []\nevidence = \"sev-guest\"").unwrap()),
            Err(ConfigError::Missing {
                setting: "brokers",
                ..
            })
        ));
        assert!(matches!(
            resolve(parse("brokers = [\"https://kb\"]\nevidence = \"sev-guest\"").unwrap()),
            Err(ConfigError::Missing {
                setting: "pins",
                ..
            })
        ));
        for extra in [
            "timeout_secs = 0",
            "connect_timeout_secs = 99999",
            "vmpl = 4",
        ] {
            assert!(
                matches!(
                    resolve(parse(&base(extra)).unwrap()),
                    Err(ConfigError::Invalid { .. })
                ),
                "{extra}"
            );
        }
        // connect timeout is capped by the overall timeout.
        let c =
            resolve(parse(&base("timeout_secs = 2\nconnect_timeout_secs = 10")).unwrap()).unwrap();
        assert_eq!(c.connect_timeout, Duration::from_secs(2));
    }

    #[test]
    fn broker_urls() {
        for ok in [
            "https://a.b:1",
            "https://10.1.2.3",
            "https://[fe80::1]:443",
            "https://kb/",
        ] {
            assert!(ok.parse::<BrokerUrl>().is_ok(), "{ok}");
        }
        for bad in [
            "http://kb:80",
            "kb:8443",
            "https://",
            "https://kb:0",
            "https://kb:99999",
            "https://kb:8443/path",
            "https://kb:8443/?q=1",
            "https://user@kb:8443",
            "https://kb:",
            "",
            "https://bad host",
        ] {
            assert!(bad.parse::<BrokerUrl>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn settings_without_brokers_and_configs_from_typed_lists() {
        let raw = parse("evidence = \"configfs-tsm\"\ntimeout_secs = 7\n").unwrap();
        let st = resolve_settings(&raw).unwrap();
        assert_eq!(st.timeout, Duration::from_secs(7));
        assert_eq!(st.connect_timeout, DEFAULT_CONNECT_TIMEOUT.min(st.timeout));
        assert!(matches!(
            resolve_settings(&parse("timeout_secs = 7").unwrap()),
            Err(ConfigError::Missing {
                setting: "evidence",
                ..
            })
        ));
        let broker: BrokerUrl = "https://kb:1".parse().unwrap();
        let pin: SpkiPin = PIN_HEX.parse().unwrap();
        let c = GuestConfig::new(vec![broker.clone()], vec![pin], &st).unwrap();
        assert_eq!((c.timeout, c.vmpl), (st.timeout, 0));
        assert!(matches!(
            GuestConfig::new(vec![], vec![pin], &st),
            Err(ConfigError::Missing {
                setting: "brokers",
                ..
            })
        ));
        assert!(matches!(
            GuestConfig::new(vec![broker; MAX_BROKERS + 1], vec![pin], &st),
            Err(ConfigError::Invalid {
                setting: "brokers",
                ..
            })
        ));
    }

    #[test]
    fn a_bad_pin_names_the_setting() {
        let raw = parse(&format!(
            "brokers = [\"https://kb\"]\npins = [\"{PIN_HEX}\", \"sha256:0001\"]\nevidence = \"sev-guest\"\n"
        ))
        .unwrap();
        let e = resolve(raw).unwrap_err();
        assert!(
            matches!(e, ConfigError::Invalid { setting: "pins", ref value, .. } if value == "sha256:0001"),
            "{e}"
        );
        assert!(e.to_string().contains("32 bytes"), "{e}");
    }
}
