//! Flags and configuration files into a configuration: `probe` (a file or
//! the flags), `bind` (a file overridden by the flags), and `unlock`,
//! `rotate`, `status --report` (a file or the default one, its evidence
//! overridden by `--evidence`; brokers and pins come from the tokens).

use std::path::{Path, PathBuf};

use guest_unlock::config::{self, ConfigError, GuestConfig, RawConfig};

/// Default configuration file of `unlock`, `rotate` and `status --report`.
pub const DEFAULT_CONFIG: &str = "/etc/guest-unlock/config.toml";

/// Reads and parses a configuration file.
pub fn read_raw(path: &Path) -> Result<RawConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    config::parse(&text)
}

/// Flags that override a configuration file's values.
#[derive(Debug, Default)]
pub struct Overrides<'a> {
    /// `--broker`.
    pub brokers: &'a [String],
    /// `--pin`.
    pub pins: &'a [String],
    /// `--evidence`.
    pub evidence: Option<&'a String>,
    /// `--connect-timeout`.
    pub connect_timeout: Option<u64>,
    /// `--timeout`.
    pub timeout: Option<u64>,
}

impl Overrides<'_> {
    /// `raw` with each flag given in place of its setting.
    pub fn apply(&self, mut raw: RawConfig) -> RawConfig {
        if !self.brokers.is_empty() {
            raw.brokers = self.brokers.to_vec();
        }
        if !self.pins.is_empty() {
            raw.pins = self.pins.to_vec();
        }
        if let Some(e) = self.evidence {
            raw.evidence = Some(e.clone());
        }
        if self.connect_timeout.is_some() {
            raw.connect_timeout_secs = self.connect_timeout;
        }
        if self.timeout.is_some() {
            raw.timeout_secs = self.timeout;
        }
        raw
    }
}

/// `probe`: `--config FILE`, or all of `--broker`, `--pin` and
/// `--evidence`; the time limits override either.
pub fn probe_config(
    file: Option<&PathBuf>,
    flags: &Overrides<'_>,
) -> Result<GuestConfig, ConfigError> {
    let raw = match file {
        Some(path) => read_raw(path)?,
        None => {
            if flags.brokers.is_empty() || flags.pins.is_empty() || flags.evidence.is_none() {
                return Err(ConfigError::Missing {
                    setting: "--config",
                    hint: "give --config FILE, or all of --broker URL, --pin PIN and --evidence PROVIDER",
                });
            }
            RawConfig::default()
        }
    };
    config::resolve(flags.apply(raw))
}

/// `bind`: `--config` (if any), overridden by the flags.
pub fn bind_config(
    file: Option<&PathBuf>,
    flags: &Overrides<'_>,
) -> Result<GuestConfig, ConfigError> {
    let raw = match file {
        Some(p) => read_raw(p)?,
        None => RawConfig::default(),
    };
    config::resolve(flags.apply(raw))
}

/// `unlock`, `rotate` and `status --report`: `--config`, else the default
/// file if it exists, else nothing; `--evidence` overrides. An evidence
/// provider must be named somewhere.
pub fn boot_raw_config(
    path: Option<&PathBuf>,
    evidence: Option<&String>,
) -> Result<RawConfig, ConfigError> {
    let mut raw = match path {
        Some(p) => read_raw(p)?,
        None if Path::new(DEFAULT_CONFIG).exists() => read_raw(Path::new(DEFAULT_CONFIG))?,
        None => RawConfig::default(),
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

#[cfg(test)]
mod tests {
    use super::*;

    const PIN: &str = "sha256:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("guest.toml");
        std::fs::write(
            &file,
            format!(
                "brokers = [\"https://a:1\"]\npins = [\"{PIN}\"]\nevidence = \"configfs-tsm\"\ntimeout_secs = 9\n"
            ),
        )
        .unwrap();
        let brokers = ["https://b:2".to_owned()];
        let flags = Overrides {
            brokers: &brokers,
            timeout: Some(3),
            ..Overrides::default()
        };
        let c = bind_config(Some(&file), &flags).unwrap();
        assert_eq!(c.brokers[0].host(), "b");
        assert_eq!(c.timeout, std::time::Duration::from_secs(3));
        // probe takes the file as it is, the time limits overridden.
        let c = probe_config(Some(&file), &flags).unwrap();
        assert_eq!(c.brokers[0].host(), "b");
        // Without a file, probe needs all three flags.
        assert!(matches!(
            probe_config(None, &flags),
            Err(ConfigError::Missing {
                setting: "--config",
                ..
            })
        ));
        assert!(matches!(
            bind_config(Some(&dir.path().join("missing.toml")), &flags),
            Err(ConfigError::Read { .. })
        ));
    }

    #[test]
    fn the_boot_configuration_needs_an_evidence_provider() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("guest.toml");
        std::fs::write(&file, "timeout_secs = 9\n").unwrap();
        assert!(matches!(
            boot_raw_config(Some(&file), None),
            Err(ConfigError::Missing {
                setting: "evidence",
                ..
            })
        ));
        let raw = boot_raw_config(Some(&file), Some(&"sev-guest".to_owned())).unwrap();
        assert_eq!(raw.evidence.as_deref(), Some("sev-guest"));
        assert_eq!(raw.timeout_secs, Some(9));
    }
}
