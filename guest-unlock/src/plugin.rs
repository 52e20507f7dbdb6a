//! What the libcryptsetup token plugin (`token-plugin/`,
//! `libcryptsetup-token-sev-keybroker.so`) does, in safe code: the plugin
//! crate only converts C strings and buffers. The attestation and unwrap
//! are [`crate::fetch_keys_blocking`], the same as `guest-unlock unlock`.
//!
//! - [`validate`]: a token's JSON is a well-formed `sev-keybroker` token
//!   (libcryptsetup calls it before it stores one);
//! - [`dump`]: the lines `cryptsetup luksDump` shows under the token;
//! - [`passphrase`]: attest to the token's brokers with the settings of
//!   [`CONFIG_PATH`] and return the key that opens one of its keyslots.
//!
//! The plugin gets no configuration of its own: the brokers and pins come
//! from the token, the evidence provider and time limits from the same
//! file as `guest-unlock unlock`.

use std::path::Path;

use serde_json::Value;
use zeroize::Zeroizing;

use crate::config::{self, ConfigError, GuestConfig};
use crate::token::{BrokerToken, TokenError, MAX_KEYSLOT};
use crate::UnlockError;

/// The configuration file the plugin reads (`guest-unlock unlock`'s default).
pub const CONFIG_PATH: &str = "/etc/guest-unlock/config.toml";

/// Why the plugin gives no passphrase. libcryptsetup then tries the next
/// token or keyslot (the passphrase prompt), so each is only a message.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The token's JSON is not a valid `sev-keybroker` token.
    #[error("invalid sev-keybroker token: {0}")]
    Token(#[from] TokenError),
    /// The token is not JSON at all.
    #[error("invalid sev-keybroker token: not JSON: {0}")]
    Json(String),
    /// The configuration file is missing or wrong.
    #[error("{}", config_message(.path, .source))]
    Config {
        /// The file.
        path: String,
        /// What is wrong.
        source: ConfigError,
    },
    /// No key: unreachable brokers, bad evidence, a failed attestation.
    #[error("{0}")]
    Unlock(#[from] UnlockError),
    /// The broker refused the volume.
    #[error("the broker refused volume {volume} ({reasons}){}", decision_suffix(.decision))]
    Refused {
        /// The volume.
        volume: String,
        /// Its reason codes, comma-separated.
        reasons: String,
        /// The broker's decision id (its audit entry), if it gave one.
        decision: String,
    },
}

impl PluginError {
    /// The negative errno libcryptsetup expects: `-EPERM` for a refusal,
    /// `-EAGAIN` when no broker answered (worth trying again later),
    /// `-EINVAL` for a bad token or configuration.
    pub fn errno(&self) -> i32 {
        match self {
            PluginError::Refused { .. } => -libc::EPERM,
            PluginError::Unlock(e) if e.is_retryable() => -libc::EAGAIN,
            PluginError::Unlock(_) => -libc::EACCES,
            PluginError::Token(_) | PluginError::Json(_) | PluginError::Config { .. } => {
                -libc::EINVAL
            }
        }
    }
}

fn config_message(path: &str, e: &ConfigError) -> String {
    match e {
        // It names the file already.
        ConfigError::Read { .. } => e.to_string(),
        _ => format!("{path}: {e}"),
    }
}

fn decision_suffix(d: &str) -> String {
    if d.is_empty() {
        String::new()
    } else {
        format!(", decision {d}")
    }
}

/// Parses and checks a token's JSON. Keyslot ids are checked for their
/// form only: libcryptsetup itself checks that they exist.
pub fn validate(json: &str) -> Result<BrokerToken, PluginError> {
    let v: Value = serde_json::from_str(json).map_err(|e| PluginError::Json(e.to_string()))?;
    let every_keyslot: Vec<u32> = (0..=MAX_KEYSLOT).collect();
    Ok(BrokerToken::from_json(&v, &every_keyslot)?)
}

/// The lines `cryptsetup luksDump` shows for a token, each starting with a
/// tab as libcryptsetup's own are; an invalid token says why.
pub fn dump(json: &str) -> String {
    match validate(json) {
        Ok(t) => {
            let mut out = format!("\tvolume:     {}\n", t.volume);
            for s in &t.slots {
                out.push_str(&format!(
                    "\tkeyslot {}:  key version {}\n",
                    s.keyslot, s.key_version
                ));
            }
            for b in &t.brokers {
                out.push_str(&format!("\tbroker:     {}\n", b.authority()));
            }
            for p in &t.spki_pins {
                out.push_str(&format!("\tpin:        {p}\n"));
            }
            out
        }
        Err(e) => format!("\t{e}\n"),
    }
}

/// Attests to the token's brokers with the settings of the configuration
/// file `config_path` and returns the key of the token's volume that one
/// of its keyslots records (current before pending, newest first, as
/// `unlock` tries them), else the first key released.
pub fn passphrase(json: &str, config_path: &Path) -> Result<Zeroizing<Vec<u8>>, PluginError> {
    let tok = validate(json)?;
    let config_error = |source| PluginError::Config {
        path: config_path.display().to_string(),
        source,
    };
    let text = std::fs::read_to_string(config_path).map_err(|e| {
        config_error(ConfigError::Read {
            path: config_path.display().to_string(),
            reason: e.to_string(),
        })
    })?;
    let settings = config::parse(&text)
        .and_then(|raw| config::resolve_settings(&raw))
        .map_err(config_error)?;
    let cfg = GuestConfig::new(tok.brokers.clone(), tok.spki_pins.clone(), &settings)
        .map_err(config_error)?;
    let volumes = keybroker_proto::VolumeIds::new(vec![tok.volume.clone()]).map_err(|e| {
        PluginError::Token(TokenError {
            field: "volume",
            reason: e.to_string(),
        })
    })?;
    let outcome = crate::fetch_keys_blocking(&cfg, &volumes)?;
    let mut keys: Vec<_> = outcome
        .keys
        .iter()
        .filter(|k| k.volume == tok.volume)
        .collect();
    keys.sort_by_key(|k| {
        (
            tok.slots_for(k.version).is_empty(),
            k.state != keybroker_proto::pb::KeyState::Current,
            std::cmp::Reverse(k.version),
        )
    });
    match keys.first() {
        Some(k) => Ok(Zeroizing::new(k.expose_secret().to_vec())),
        None => Err(PluginError::Refused {
            volume: tok.volume.to_string(),
            reasons: outcome
                .denied
                .iter()
                .flat_map(|d| d.reason_codes.iter().cloned())
                .collect::<Vec<_>>()
                .join(","),
            decision: outcome.decision_id.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIN: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

    fn token() -> String {
        format!(
            r#"{{"type":"sev-keybroker","keyslots":["1"],"version":2,
                "brokers":["https://kb.example:8443"],"volume":"root",
                "slots":[{{"keyslot":1,"key_version":3}}],"spki_pins":["{PIN}"]}}"#
        )
    }

    #[test]
    fn a_good_token_validates_and_dumps() {
        let t = validate(&token()).unwrap();
        assert_eq!(t.volume.as_str(), "root");
        let d = dump(&token());
        assert!(d.contains("\tvolume:     root\n"), "{d}");
        assert!(d.contains("\tkeyslot 1:  key version 3\n"), "{d}");
        assert!(d.contains("\tbroker:     kb.example:8443\n"), "{d}");
        assert!(d.contains(PIN), "{d}");
    }

    #[test]
    fn malformed_tokens_are_refused() {
        for (bad, what) in [
            ("", "not JSON"),
            ("{", "not JSON"),
            ("[]", "not a JSON object"),
            (r#"{"type":"sev-keybroker"}"#, "version"),
            (&token().replace("\"root\"", "\"\""), "volume"),
            (&token().replace("https://", "http://"), "brokers"),
            (&token().replace(PIN, "sha256:00"), "spki_pins"),
            (&token().replace("\"1\"", "\"32\""), "keyslots"),
            (
                &token().replace("\"version\":2", "\"version\":9"),
                "version",
            ),
            (
                &token().replace("\"volume\"", "\"extra\":1,\"volume\""),
                "unknown field",
            ),
        ] {
            let e = validate(bad).expect_err(bad);
            assert_eq!(e.errno(), -libc::EINVAL, "{bad}");
            assert!(e.to_string().contains(what), "{bad}: {e}");
            assert!(
                dump(bad).starts_with("\tinvalid sev-keybroker token"),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_missing_or_bad_config_is_refused_before_any_attestation() {
        let d = tempfile::tempdir().unwrap();
        let missing = d.path().join("missing.toml");
        let e = passphrase(&token(), &missing).unwrap_err();
        assert!(matches!(e, PluginError::Config { .. }), "{e}");
        assert_eq!(e.errno(), -libc::EINVAL);
        let bad = d.path().join("bad.toml");
        std::fs::write(&bad, "timeout_secs = 5\n").unwrap();
        let e = passphrase(&token(), &bad).unwrap_err();
        assert!(e.to_string().contains("evidence"), "{e}");
        // The token is checked first.
        assert!(matches!(passphrase("{", &bad), Err(PluginError::Json(_))));
    }
}
