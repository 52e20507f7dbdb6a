//! `guest-unlock bind`: attest, then add the released key to a new LUKS2
//! keyslot with a `sev-keybroker` token.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use clap::Args;
use guest_unlock::evidence::open_provider_at_vmpl;
use guest_unlock::flow::{fetch_keys, UnlockError};
use guest_unlock::luks::{self, BindError, BindRequest};
use keybroker_proto::{VolumeId, VolumeIds};
use zeroize::Zeroizing;

use super::settings::{flags_config, Overrides};
use super::{eprint_err, runtime, EVIDENCE_HELP, EXIT_FAILED, EXIT_GRANTED, EXIT_USAGE};

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
    /// Evidence provider.
    #[arg(long, value_name = "PROVIDER", help = EVIDENCE_HELP)]
    pub evidence: Option<String>,
    /// Guest configuration file (TOML) [default: /etc/guest-unlock/config.toml
    /// if it exists]; the flags override its values.
    #[arg(long, short = 'c', env = "GUEST_UNLOCK_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Per-connection timeout in seconds.
    #[arg(long, value_name = "SECS")]
    pub connect_timeout: Option<u64>,
    /// Overall timeout in seconds.
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
}

/// Reads a key file (or standard input for `-`) verbatim into zeroized memory.
pub fn read_key_file(path: &Path) -> std::io::Result<Zeroizing<Vec<u8>>> {
    let mut buf = Zeroizing::new(Vec::with_capacity(4096));
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

/// Runs `bind`; returns the exit code.
pub fn run(args: BindArgs) -> u8 {
    let volume = match VolumeId::new(args.volume.as_str()) {
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
    let flags = Overrides {
        brokers: &args.brokers,
        pins: &args.pins,
        evidence: args.evidence.as_ref(),
        connect_timeout: args.connect_timeout,
        timeout: args.timeout,
    };
    let cfg = match flags_config(args.config.as_ref(), &flags) {
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
    let req = BindRequest {
        device: &args.device,
        volume,
        brokers: cfg.brokers.clone(),
        pins: cfg.pins.clone(),
        passphrase,
        format: args.format,
    };
    let fetch = |v: &VolumeId| {
        let provider =
            open_provider_at_vmpl(&cfg.evidence, cfg.vmpl).map_err(|e| UnlockError::Evidence {
                provider: "configured",
                source: e,
            })?;
        let ids = VolumeIds::new(vec![v.clone()]).map_err(|e| UnlockError::BadResponse {
            broker: String::new(),
            problem: e.to_string(),
        })?;
        let outcome = rt.block_on(fetch_keys(&cfg, provider.as_ref(), &ids))?;
        if let Some(d) = outcome.denied.iter().find(|d| &d.volume == v) {
            return Err(BindError::Denied {
                broker: outcome.broker.to_string(),
                volume: v.to_string(),
                reasons: d.reason_codes.clone(),
            });
        }
        Ok(outcome.keys)
    };
    match luks::bind(req, Box::new(fetch)) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_are_read_verbatim_within_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key");
        std::fs::write(&p, b"pass phrase\n").unwrap();
        assert_eq!(&read_key_file(&p).unwrap()[..], b"pass phrase\n");
        std::fs::write(&p, b"").unwrap();
        assert!(read_key_file(&p).is_err(), "empty");
        std::fs::File::create(&p)
            .unwrap()
            .set_len(MAX_KEY_FILE_BYTES + 1)
            .unwrap();
        let e = read_key_file(&p).unwrap_err();
        assert!(e.to_string().contains("larger than"), "{e}");
        assert!(read_key_file(&dir.path().join("missing")).is_err());
    }
}
