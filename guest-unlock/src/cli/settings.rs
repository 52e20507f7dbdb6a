//! Flags and configuration files into a configuration. Every command takes
//! `-c/--config FILE` (also `GUEST_UNLOCK_CONFIG`), else reads
//! `/etc/guest-unlock/config.toml` if it exists: `probe` and `bind` with
//! the flags overriding its values; `unlock`, `rotate`, `status --report`
//! with `--evidence` and the time limits overriding it (brokers and pins
//! come from the tokens).

use std::path::{Path, PathBuf};

use guest_unlock::config::{self, ConfigError, GuestConfig, RawConfig};

/// Default configuration file of every command.
pub const DEFAULT_CONFIG: &str = "/etc/guest-unlock/config.toml";

/// Reads and parses a configuration file.
pub fn read_raw(path: &Path) -> Result<RawConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    // The file's name before toml's message (line, column and caret).
    config::parse(&text).map_err(|e| match e {
        ConfigError::Syntax(m) => ConfigError::Syntax(format!("{}: {m}", path.display())),
        other => other,
    })
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

/// The configuration file of every command: `--config FILE`, else the
/// default file if it exists, else none.
fn read_file_or_default(path: Option<&PathBuf>) -> Result<RawConfig, ConfigError> {
    read_file_or(path, Path::new(DEFAULT_CONFIG))
}

/// `path`, else `default` if it exists, else an empty configuration.
fn read_file_or(path: Option<&PathBuf>, default: &Path) -> Result<RawConfig, ConfigError> {
    match path {
        Some(p) => read_raw(p),
        None if default.exists() => read_raw(default),
        None => Ok(RawConfig::default()),
    }
}

/// `probe` and `bind`: `--config` (else the default file, if it exists),
/// overridden by the flags. Brokers, pins and an evidence provider must
/// come from one or the other.
pub fn flags_config(
    file: Option<&PathBuf>,
    flags: &Overrides<'_>,
) -> Result<GuestConfig, ConfigError> {
    flags_config_or(file, Path::new(DEFAULT_CONFIG), flags)
}

/// [`flags_config`] with another default file (tests).
fn flags_config_or(
    file: Option<&PathBuf>,
    default: &Path,
    flags: &Overrides<'_>,
) -> Result<GuestConfig, ConfigError> {
    let raw = flags.apply(read_file_or(file, default)?);
    if raw.brokers.is_empty() && raw.pins.is_empty() && raw.evidence.is_none() {
        return Err(ConfigError::Missing {
            setting: "--config",
            hint: "give --config FILE (default /etc/guest-unlock/config.toml), or all of --broker URL, --pin PIN and --evidence PROVIDER",
        });
    }
    config::resolve(raw)
}

/// `unlock`, `rotate` and `status --report`: `--config`, else the default
/// file if it exists, else nothing; `--evidence` overrides. An evidence
/// provider must be named somewhere.
pub fn boot_raw_config(
    path: Option<&PathBuf>,
    evidence: Option<&String>,
) -> Result<RawConfig, ConfigError> {
    let mut raw = read_file_or_default(path)?;
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
        let c = flags_config(Some(&file), &flags).unwrap();
        assert_eq!(c.brokers[0].host(), "b");
        assert_eq!(c.timeout, std::time::Duration::from_secs(3));
        // Without a file (and no default one on the build host), all
        // three flags are needed; none is a usage error naming --config.
        if !Path::new(DEFAULT_CONFIG).exists() {
            assert!(matches!(
                flags_config(None, &Overrides::default()),
                Err(ConfigError::Missing {
                    setting: "--config",
                    ..
                })
            ));
            assert!(matches!(
                flags_config(None, &flags),
                Err(ConfigError::Missing {
                    setting: "pins",
                    ..
                })
            ));
        }
        assert!(matches!(
            flags_config(Some(&dir.path().join("missing.toml")), &flags),
            Err(ConfigError::Read { .. })
        ));
    }

    #[test]
    fn without_config_the_default_file_is_read_and_overridden() {
        let dir = tempfile::tempdir().unwrap();
        let default = dir.path().join("config.toml");
        std::fs::write(
            &default,
            format!("brokers = [\"https://a:1\"]\npins = [\"{PIN}\"]\nevidence = \"sev-guest\"\n"),
        )
        .unwrap();
        let c = flags_config_or(None, &default, &Overrides::default()).unwrap();
        assert_eq!(c.brokers[0].host(), "a");
        let brokers = ["https://b:2".to_owned()];
        let flags = Overrides {
            brokers: &brokers,
            ..Overrides::default()
        };
        let c = flags_config_or(None, &default, &flags).unwrap();
        assert_eq!(c.brokers[0].host(), "b");
        // --config wins over the default file.
        let other = dir.path().join("other.toml");
        std::fs::write(&other, "brokers = [1\n").unwrap();
        match flags_config_or(Some(&other), &default, &flags) {
            Err(ConfigError::Syntax(m)) => {
                assert!(
                    m.starts_with(&format!("{}: TOML parse error", other.display())),
                    "{m}"
                )
            }
            r => panic!("{r:?}"),
        }
        // No default file, no flags: say what to give.
        assert!(matches!(
            flags_config_or(None, &dir.path().join("none"), &Overrides::default()),
            Err(ConfigError::Missing {
                setting: "--config",
                ..
            })
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
