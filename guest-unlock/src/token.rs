//! The `sev-keybroker` LUKS2 token: which keyslot holds which volume key
//! version, and which brokers (pinned by their TLS key) release it.
//!
//! ```json
//! {"type":"sev-keybroker","keyslots":["1"],"version":1,
//!  "brokers":["https://kb.example:8443"],"volume":"root","key_version":1,
//!  "spki_pins":["sha256:6d0c…"]}
//! ```
//!
//! # Strictness
//!
//! A token is read by [`BrokerToken::from_json`], which checks every field:
//! `version` first (an unknown version is reported as such, never as an
//! unknown field), then each required field and its type, the keyslot ids
//! (decimal, no duplicates, each one an active keyslot of the header), the
//! broker URLs and the pins. **Unknown fields are refused**: a version-1
//! token has exactly the fields above, and a later format that needs a new
//! field bumps `version`, so an older `guest-unlock` in an initramfs says
//! "unsupported token version" instead of silently ignoring, say, a new pin
//! rule. The one exception is fields that libcryptsetup itself manages; it
//! adds none to external tokens today, and `type`/`keyslots` are the only
//! ones it reads.
//!
//! Errors name the field; callers add the device and token id.

use std::collections::BTreeSet;

use keybroker_proto::VolumeId;
use serde_json::{json, Map, Value};

use crate::config::{BrokerUrl, SpkiPin, MAX_BROKERS};

/// The LUKS2 token type.
pub const TOKEN_TYPE: &str = "sev-keybroker";
/// The token format version this build writes and reads.
pub const TOKEN_VERSION: u64 = 1;
/// Highest LUKS2 keyslot id (LUKS2 has 32 keyslots).
pub const MAX_KEYSLOT: u32 = 31;

/// The fields a version-1 token has, in the order they are written.
const FIELDS: [&str; 7] = [
    "type",
    "keyslots",
    "version",
    "brokers",
    "volume",
    "key_version",
    "spki_pins",
];

/// A checked `sev-keybroker` token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerToken {
    /// Keyslots whose passphrase is this volume key version (bind writes one).
    pub keyslots: Vec<u32>,
    /// Brokers, tried in order.
    pub brokers: Vec<BrokerUrl>,
    /// The broker's volume name.
    pub volume: VolumeId,
    /// The key version the keyslot was bound with.
    pub key_version: u32,
    /// Accepted broker TLS key pins.
    pub spki_pins: Vec<SpkiPin>,
}

/// A token that is not a valid version-1 `sev-keybroker` token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {reason}")]
pub struct TokenError {
    /// The offending field (`(token)` for the token as a whole).
    pub field: &'static str,
    /// What is wrong and what to do.
    pub reason: String,
}

fn err(field: &'static str, reason: impl Into<String>) -> TokenError {
    TokenError {
        field,
        reason: reason.into(),
    }
}

/// Shortens and escapes untrusted text for an error message.
fn shown(v: &Value) -> String {
    let s = v.to_string();
    crate::flow::printable(&s.chars().take(80).collect::<String>())
}

/// Whether a token's JSON declares the `sev-keybroker` type (other tokens,
/// such as systemd-tpm2 or clevis, are not ours and are left alone).
pub fn is_broker_token(v: &Value) -> bool {
    v.get("type").and_then(Value::as_str) == Some(TOKEN_TYPE)
}

/// Parses a keyslot id as LUKS2 writes it: decimal, no sign, no leading zero.
pub fn parse_keyslot(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 2 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if s.len() > 1 && s.starts_with('0') {
        return None;
    }
    s.parse().ok().filter(|n| *n <= MAX_KEYSLOT)
}

impl BrokerToken {
    /// Checks a token's JSON. `active_keyslots` are the header's active
    /// keyslots; every keyslot the token names must be one of them.
    pub fn from_json(v: &Value, active_keyslots: &[u32]) -> Result<Self, TokenError> {
        let obj = v
            .as_object()
            .ok_or_else(|| err("(token)", "the token is not a JSON object"))?;
        match obj.get("type") {
            Some(Value::String(t)) if t == TOKEN_TYPE => {}
            Some(other) => {
                return Err(err(
                    "type",
                    format!("expected \"{TOKEN_TYPE}\", found {}", shown(other)),
                ))
            }
            None => return Err(err("type", "missing")),
        }
        // Version first: a newer format may legitimately have other fields.
        match obj.get("version") {
            None => return Err(err("version", "missing (this guest-unlock reads version 1)")),
            Some(Value::Number(n)) if n.as_u64() == Some(TOKEN_VERSION) => {}
            Some(Value::Number(n)) if n.as_u64().is_some() => {
                return Err(err(
                    "version",
                    format!(
                        "unsupported token version {n}; this guest-unlock reads version {TOKEN_VERSION}: \
                         upgrade guest-unlock (and the initramfs)"
                    ),
                ))
            }
            Some(other) => {
                return Err(err(
                    "version",
                    format!("expected the integer 1, found {}", shown(other)),
                ))
            }
        }
        if let Some(unknown) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(err(
                "(token)",
                format!(
                    "unknown field {:?}: a version-1 token has only {}",
                    crate::flow::printable(unknown),
                    FIELDS.join(", ")
                ),
            ));
        }
        let keyslots = keyslots(obj, active_keyslots)?;
        let brokers = string_list(obj, "brokers")?;
        if brokers.len() > MAX_BROKERS {
            return Err(err(
                "brokers",
                format!("{} URLs, at most {MAX_BROKERS}", brokers.len()),
            ));
        }
        let brokers = brokers
            .iter()
            .map(|s| {
                s.parse::<BrokerUrl>()
                    .map_err(|e| err("brokers", e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let pins = string_list(obj, "spki_pins")?;
        if pins.len() > MAX_BROKERS {
            return Err(err(
                "spki_pins",
                format!("{} pins, at most {MAX_BROKERS}", pins.len()),
            ));
        }
        let spki_pins = pins
            .iter()
            .map(|s| {
                s.parse::<SpkiPin>()
                    .map_err(|e| err("spki_pins", e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let volume = match obj.get("volume") {
            None => return Err(err("volume", "missing")),
            Some(Value::String(s)) => {
                VolumeId::new(s.as_str()).map_err(|e| err("volume", e.to_string()))?
            }
            Some(other) => {
                return Err(err(
                    "volume",
                    format!("expected a string, found {}", shown(other)),
                ))
            }
        };
        let key_version = match obj.get("key_version") {
            None => return Err(err("key_version", "missing")),
            Some(Value::Number(n)) => n
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n >= 1)
                .ok_or_else(|| {
                    err(
                        "key_version",
                        format!("expected an integer from 1 to {}, found {n}", u32::MAX),
                    )
                })?,
            Some(other) => {
                return Err(err(
                    "key_version",
                    format!("expected an integer, found {}", shown(other)),
                ))
            }
        };
        Ok(Self {
            keyslots,
            brokers,
            volume,
            key_version,
            spki_pins,
        })
    }

    /// The token's JSON, fields in the documented order.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("type".into(), json!(TOKEN_TYPE));
        m.insert(
            "keyslots".into(),
            json!(self.keyslots.iter().map(u32::to_string).collect::<Vec<_>>()),
        );
        m.insert("version".into(), json!(TOKEN_VERSION));
        m.insert(
            "brokers".into(),
            json!(self
                .brokers
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()),
        );
        m.insert("volume".into(), json!(self.volume.as_str()));
        m.insert("key_version".into(), json!(self.key_version));
        m.insert(
            "spki_pins".into(),
            json!(self
                .spki_pins
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()),
        );
        Value::Object(m)
    }
}

fn keyslots(obj: &Map<String, Value>, active: &[u32]) -> Result<Vec<u32>, TokenError> {
    let list = match obj.get("keyslots") {
        None => return Err(err("keyslots", "missing")),
        Some(Value::Array(a)) => a,
        Some(other) => {
            return Err(err(
                "keyslots",
                format!("expected an array of keyslot ids, found {}", shown(other)),
            ))
        }
    };
    if list.is_empty() {
        return Err(err("keyslots", "empty: the token is bound to no keyslot"));
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(list.len());
    for item in list {
        let Value::String(s) = item else {
            return Err(err(
                "keyslots",
                format!(
                    "expected keyslot ids as strings (\"1\"), found {}",
                    shown(item)
                ),
            ));
        };
        let n = parse_keyslot(s).ok_or_else(|| {
            err(
                "keyslots",
                format!(
                    "{:?} is not a keyslot id (0 to {MAX_KEYSLOT})",
                    crate::flow::printable(s)
                ),
            )
        })?;
        if !seen.insert(n) {
            return Err(err("keyslots", format!("keyslot {n} is listed twice")));
        }
        if !active.contains(&n) {
            return Err(err(
                "keyslots",
                format!("keyslot {n} does not exist in the header"),
            ));
        }
        out.push(n);
    }
    Ok(out)
}

fn string_list(obj: &Map<String, Value>, field: &'static str) -> Result<Vec<String>, TokenError> {
    let list = match obj.get(field) {
        None => return Err(err(field, "missing")),
        Some(Value::Array(a)) => a,
        Some(other) => {
            return Err(err(
                field,
                format!("expected an array of strings, found {}", shown(other)),
            ))
        }
    };
    if list.is_empty() {
        return Err(err(field, "empty"));
    }
    list.iter()
        .map(|v| match v {
            Value::String(s) => Ok(s.clone()),
            other => Err(err(
                field,
                format!("expected a string, found {}", shown(other)),
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIN: &str = "sha256:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn good() -> Value {
        json!({"type":"sev-keybroker","keyslots":["1"],"version":1,
               "brokers":["https://kb:8443","https://10.0.0.2:9000"],"volume":"root",
               "key_version":3,"spki_pins":[PIN]})
    }

    #[test]
    fn round_trip() {
        let t = BrokerToken::from_json(&good(), &[0, 1]).unwrap();
        assert_eq!(t.keyslots, [1]);
        assert_eq!(t.key_version, 3);
        assert_eq!(t.brokers[1].port(), 9000);
        assert_eq!(t.to_json(), good());
        assert!(is_broker_token(&good()));
        assert!(!is_broker_token(&json!({"type":"systemd-tpm2"})));
    }

    fn refused(mutate: impl FnOnce(&mut Map<String, Value>), field: &str) {
        let mut v = good();
        mutate(v.as_object_mut().unwrap());
        let e = BrokerToken::from_json(&v, &[0, 1]).unwrap_err();
        assert_eq!(e.field, field, "{e}");
    }

    #[test]
    fn malformed_tokens_name_the_field() {
        refused(|m| drop(m.insert("version".into(), json!(2))), "version");
        refused(|m| drop(m.insert("version".into(), json!("1"))), "version");
        refused(|m| drop(m.remove("version")), "version");
        refused(|m| drop(m.insert("type".into(), json!("clevis"))), "type");
        refused(|m| drop(m.insert("extra".into(), json!(1))), "(token)");
        refused(
            |m| drop(m.insert("keyslots".into(), json!(["7"]))),
            "keyslots",
        );
        refused(
            |m| drop(m.insert("keyslots".into(), json!([1]))),
            "keyslots",
        );
        refused(
            |m| drop(m.insert("keyslots".into(), json!(["01"]))),
            "keyslots",
        );
        refused(
            |m| drop(m.insert("keyslots".into(), json!(["1", "1"]))),
            "keyslots",
        );
        refused(|m| drop(m.insert("keyslots".into(), json!([]))), "keyslots");
        refused(
            |m| drop(m.insert("keyslots".into(), json!("1"))),
            "keyslots",
        );
        refused(|m| drop(m.remove("brokers")), "brokers");
        refused(|m| drop(m.insert("brokers".into(), json!([]))), "brokers");
        refused(
            |m| drop(m.insert("brokers".into(), json!(["http://kb"]))),
            "brokers",
        );
        refused(|m| drop(m.insert("brokers".into(), json!([7]))), "brokers");
        refused(
            |m| drop(m.insert("spki_pins".into(), json!(["sha1:00"]))),
            "spki_pins",
        );
        refused(|m| drop(m.remove("spki_pins")), "spki_pins");
        refused(|m| drop(m.insert("volume".into(), json!("../x"))), "volume");
        refused(|m| drop(m.insert("volume".into(), json!(5))), "volume");
        refused(
            |m| drop(m.insert("key_version".into(), json!(0))),
            "key_version",
        );
        refused(
            |m| drop(m.insert("key_version".into(), json!(-1))),
            "key_version",
        );
        refused(
            |m| drop(m.insert("key_version".into(), json!(1u64 << 40))),
            "key_version",
        );
        refused(
            |m| drop(m.insert("key_version".into(), json!("1"))),
            "key_version",
        );
        assert!(BrokerToken::from_json(&json!([1]), &[1]).is_err());
        // Too many brokers.
        refused(
            |m| drop(m.insert("brokers".into(), json!(vec!["https://kb"; MAX_BROKERS + 1]))),
            "brokers",
        );
    }

    #[test]
    fn keyslot_ids() {
        assert_eq!(parse_keyslot("0"), Some(0));
        assert_eq!(parse_keyslot("31"), Some(31));
        for bad in ["", "32", "-1", "+1", "01", "1 ", "a", "100"] {
            assert_eq!(parse_keyslot(bad), None, "{bad:?}");
        }
    }
}
