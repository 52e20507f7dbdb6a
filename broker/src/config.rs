//! The broker's configuration file (`broker.toml`), parsed without I/O and
//! then resolved against the directory that holds it.
//!
//! Secure by default: the guest port is TLS only, administration has no
//! network listener here, and a simulated SEV-SNP platform is trusted only
//! when `[attestation.simulated]` names its root certificate.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::verify::Generation;

/// Largest gRPC message accepted by default (a report plus a certificate
/// table is about 5 KiB; 64 KiB leaves room for long volume lists).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Default lifetime of a challenge nonce.
pub const DEFAULT_NONCE_TTL_SECS: u32 = 60;

/// The file as written (relative paths, optional fields).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: RawServer,
    store: RawStore,
    keys: RawKeys,
    #[serde(default)]
    attestation: RawAttestation,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: SocketAddr,
    tls_cert: PathBuf,
    tls_key: PathBuf,
    max_message_bytes: Option<usize>,
    nonce_ttl_secs: Option<u32>,
    request_timeout_secs: Option<u64>,
    handshake_timeout_secs: Option<u64>,
    threads: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "lowercase")]
enum RawStore {
    Sqlite { path: PathBuf },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeys {
    master_key: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAttestation {
    certs_dir: Option<PathBuf>,
    simulated: Option<RawSimulated>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSimulated {
    ark: PathBuf,
    generation: Generation,
}

/// A resolved configuration: absolute paths, defaults filled in.
#[derive(Debug, Clone)]
pub struct Config {
    /// Guest-facing gRPC/TLS listener.
    pub listen: SocketAddr,
    /// PEM certificate chain of the guest-facing TLS listener.
    pub tls_cert: PathBuf,
    /// PEM private key of the guest-facing TLS listener (mode 0600).
    pub tls_key: PathBuf,
    /// Largest accepted request message.
    pub max_message_bytes: usize,
    /// Challenge nonce lifetime.
    pub nonce_ttl: Duration,
    /// Per-request deadline.
    pub request_timeout: Duration,
    /// TLS handshake deadline.
    pub handshake_timeout: Duration,
    /// Serving threads (one single-threaded runtime each); default: one per CPU.
    pub threads: usize,
    /// Store location.
    pub store: StoreConfig,
    /// Master key file (mode 0600, never in the database).
    pub master_key: PathBuf,
    /// Offline certificate directory (VCEK/VLEK, ASK, ASVK, ARK, CRL).
    pub certs_dir: Option<PathBuf>,
    /// A simulated SEV-SNP platform root, trusted only when named here.
    pub simulated: Option<SimulatedRoot>,
}

/// Which store backs the broker.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// Embedded SQLite database file.
    Sqlite {
        /// Database file.
        path: PathBuf,
    },
}

/// The explicitly configured root of a simulated platform.
#[derive(Debug, Clone)]
pub struct SimulatedRoot {
    /// PEM or DER ARK certificate of the simulated platform.
    pub ark: PathBuf,
    /// Generation the simulated platform claims to be.
    pub generation: Generation,
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {cause}; pass --config with the file `broker init` wrote")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause (kept in the message, not as an error source, so that
        /// `{:#}` chains do not print it twice).
        cause: std::io::Error,
    },
    /// The file is not valid TOML or has unknown/missing fields.
    #[error("invalid config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What toml said, with line and column.
        message: String,
    },
    /// A value is out of range.
    #[error("invalid config {path}: {field}: {message}")]
    Value {
        /// The file.
        path: PathBuf,
        /// Field name.
        field: &'static str,
        /// What is wrong and what to do.
        message: String,
    },
}

impl Config {
    /// Reads and resolves a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            path: path.to_owned(),
            cause,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, path, base)
    }

    /// Parses config text; relative paths are resolved against `base`.
    pub fn parse(text: &str, path: &Path, base: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        let value_err = |field, message: &str| ConfigError::Value {
            path: path.to_owned(),
            field,
            message: message.to_owned(),
        };
        let max_message_bytes = raw
            .server
            .max_message_bytes
            .unwrap_or(DEFAULT_MAX_MESSAGE_BYTES);
        if !(4096..=16 * 1024 * 1024).contains(&max_message_bytes) {
            return Err(value_err(
                "server.max_message_bytes",
                "must be between 4096 and 16777216 (a report with its certificates needs about 5 KiB)",
            ));
        }
        let ttl = raw.server.nonce_ttl_secs.unwrap_or(DEFAULT_NONCE_TTL_SECS);
        if !(1..=600).contains(&ttl) {
            return Err(value_err(
                "server.nonce_ttl_secs",
                "must be between 1 and 600 seconds; a long-lived nonce weakens replay protection",
            ));
        }
        let threads = match raw.server.threads {
            Some(0) | Some(257..) => {
                return Err(value_err("server.threads", "must be between 1 and 256"))
            }
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let resolve = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        Ok(Config {
            listen: raw.server.listen,
            tls_cert: resolve(raw.server.tls_cert),
            tls_key: resolve(raw.server.tls_key),
            max_message_bytes,
            nonce_ttl: Duration::from_secs(ttl.into()),
            request_timeout: Duration::from_secs(raw.server.request_timeout_secs.unwrap_or(10)),
            handshake_timeout: Duration::from_secs(raw.server.handshake_timeout_secs.unwrap_or(5)),
            threads,
            store: match raw.store {
                RawStore::Sqlite { path } => StoreConfig::Sqlite {
                    path: resolve(path),
                },
            },
            master_key: resolve(raw.keys.master_key),
            certs_dir: raw.attestation.certs_dir.map(resolve),
            simulated: raw.attestation.simulated.map(|s| SimulatedRoot {
                ark: resolve(s.ark),
                generation: s.generation,
            }),
        })
    }
}

/// The config file `broker init` writes.
pub fn default_config_text(listen: SocketAddr) -> String {
    format!(
        r#"# keybroker configuration, written by `broker init`.
# Paths are relative to this file.

[server]
# Guest-facing gRPC over TLS. Administration is never served here.
listen = "{listen}"
tls_cert = "tls/cert.pem"
tls_key = "tls/key.pem"
max_message_bytes = {DEFAULT_MAX_MESSAGE_BYTES}
nonce_ttl_secs = {DEFAULT_NONCE_TTL_SECS}

[store]
kind = "sqlite"
path = "broker.db"

[keys]
# 32 random bytes, mode 0600. Back it up offline: without it no key can be unsealed.
master_key = "master.key"

[attestation]
# Offline AMD certificates (vcek.der/vlek.der, ask.pem, asvk.pem, ark.pem, crl.der).
# certs_dir = "certs"

# A simulated SEV-SNP platform is trusted ONLY when named here (tests, demos).
# [attestation.simulated]
# ark = "sim/ark.pem"
# generation = "milan"
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/kb/broker.toml"), Path::new("/etc/kb"))
    }

    #[test]
    fn default_config_parses_and_resolves_paths() {
        let cfg = parse(&default_config_text("127.0.0.1:8443".parse().unwrap())).unwrap();
        assert_eq!(cfg.tls_key, Path::new("/etc/kb/tls/key.pem"));
        assert_eq!(cfg.master_key, Path::new("/etc/kb/master.key"));
        assert_eq!(cfg.nonce_ttl, Duration::from_secs(60));
        assert!(
            cfg.simulated.is_none(),
            "simulated platform must be off by default"
        );
        assert!(cfg.certs_dir.is_none());
    }

    #[test]
    fn unknown_field_is_refused_with_its_name() {
        let text = default_config_text("127.0.0.1:1".parse().unwrap())
            .replace("[keys]", "[keys]\nmaster_key_inline = \"00\"");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("master_key_inline"), "{err}");
    }

    #[test]
    fn out_of_range_values_are_refused() {
        let base = default_config_text("127.0.0.1:1".parse().unwrap());
        let err = parse(&base.replace("nonce_ttl_secs = 60", "nonce_ttl_secs = 86400"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("server.nonce_ttl_secs"), "{err}");
        let err = parse(&base.replace("max_message_bytes = 65536", "max_message_bytes = 10"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("server.max_message_bytes"), "{err}");
    }

    #[test]
    fn malformed_toml_and_bad_addresses_are_refused() {
        assert!(matches!(parse("[server"), Err(ConfigError::Parse { .. })));
        let base = default_config_text("127.0.0.1:1".parse().unwrap());
        assert!(matches!(
            parse(&base.replace("127.0.0.1:1", "not-an-address")),
            Err(ConfigError::Parse { .. })
        ));
        assert!(matches!(
            parse(&base.replace("kind = \"sqlite\"", "kind = \"oracle\"")),
            Err(ConfigError::Parse { .. })
        ));
    }

    #[test]
    fn simulated_root_needs_generation() {
        let base = default_config_text("127.0.0.1:1".parse().unwrap());
        let with_sim = base.replace(
            "# [attestation.simulated]\n# ark = \"sim/ark.pem\"\n# generation = \"milan\"",
            "[attestation.simulated]\nark = \"sim/ark.pem\"\ngeneration = \"milan\"",
        );
        let cfg = parse(&with_sim).unwrap();
        let sim = cfg.simulated.unwrap();
        assert_eq!(sim.generation, Generation::Milan);
        assert_eq!(sim.ark, Path::new("/etc/kb/sim/ark.pem"));
        let no_gen = with_sim.replace("generation = \"milan\"", "");
        assert!(parse(&no_gen).is_err());
    }
}
