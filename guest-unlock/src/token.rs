//! The `sev-keybroker` LUKS2 token: which keyslot holds which volume key
//! version, and which brokers (pinned by their TLS key) release it.
//!
//! Version 2 (written by this build) records a key version per keyslot, so
//! that a volume under key rotation (two versions, two keyslots) is
//! described exactly at every step:
//!
//! ```json
//! {"type":"sev-keybroker","keyslots":["1","2"],"version":2,
//!  "brokers":["https://kb.example:8443"],"volume":"root",
//!  "slots":[{"keyslot":1,"key_version":1},{"keyslot":2,"key_version":2}],
//!  "spki_pins":["sha256:6d0c…"]}
//! ```
//!
//! Version 1 (read, converted, never written) had one `key_version` for all
//! its keyslots:
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
//! broker URLs and the pins. **Unknown fields are refused**: a token has
//! exactly the fields of its version, and a later format that needs a new
//! field bumps `version`, so an older `guest-unlock` in an initramfs says
//! "unsupported token version" instead of silently ignoring, say, a new pin
//! rule. `type` and `keyslots` are the fields libcryptsetup itself reads.
//!
//! # `keyslots` and `slots` (version 2)
//!
//! `keyslots` is libcryptsetup's list: every keyslot the token is assigned
//! to, as strings. `slots` gives each of them its key version; every id in
//! `keyslots` must have exactly one entry. One case is tolerated on
//! purpose: destroying a keyslot (`crypt_keyslot_destroy`) makes
//! libcryptsetup drop it from every token's `keyslots` in the same header
//! write, so an entry of `slots` whose keyslot is not in `keyslots` is a
//! keyslot that was removed before the token was rewritten (a rotation
//! interrupted between its last two steps). Such entries are kept apart as
//! [`BrokerToken::stale`], never used to open or remove anything, and
//! dropped by the next write. For the same reason a version-2 token whose
//! `keyslots` is empty is accepted when it has stale entries (it names no
//! usable keyslot and is removed by the next rotation step).
//!
//! Errors name the field; callers add the device and token id.

use std::collections::BTreeSet;

use keybroker_proto::VolumeId;
use serde_json::{json, Map, Value};

use keybroker_proto::SpkiPin;

use crate::config::{BrokerUrl, MAX_BROKERS};

/// The LUKS2 token type.
pub const TOKEN_TYPE: &str = "sev-keybroker";
/// The token format version this build writes.
pub const TOKEN_VERSION: u64 = 2;
/// Token format versions this build reads.
pub const READABLE_VERSIONS: [u64; 2] = [1, 2];
/// Highest LUKS2 keyslot id (LUKS2 has 32 keyslots).
pub const MAX_KEYSLOT: u32 = 31;

/// The fields a version-1 token has, in the order they were written.
const FIELDS_V1: [&str; 7] = [
    "type",
    "keyslots",
    "version",
    "brokers",
    "volume",
    "key_version",
    "spki_pins",
];

/// The fields a version-2 token has, in the order they are written.
const FIELDS_V2: [&str; 7] = [
    "type",
    "keyslots",
    "version",
    "brokers",
    "volume",
    "slots",
    "spki_pins",
];

/// One keyslot and the volume key version that opens it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct SlotVersion {
    /// The LUKS2 keyslot.
    pub keyslot: u32,
    /// The key version whose key is its passphrase.
    pub key_version: u32,
}

/// A checked `sev-keybroker` token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerToken {
    /// The keyslots the token is assigned to, each with its key version, in
    /// token order (bind writes one per released version).
    pub slots: Vec<SlotVersion>,
    /// Entries for keyslots already destroyed (see the module docs): never
    /// used, dropped by the next write.
    pub stale: Vec<SlotVersion>,
    /// Brokers, tried in order.
    pub brokers: Vec<BrokerUrl>,
    /// The broker's volume name.
    pub volume: VolumeId,
    /// Accepted broker TLS key pins.
    pub spki_pins: Vec<SpkiPin>,
}

/// A token that is not a valid `sev-keybroker` token.
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
    /// A token for `slots` (none stale).
    pub fn new(
        slots: Vec<SlotVersion>,
        brokers: Vec<BrokerUrl>,
        volume: VolumeId,
        spki_pins: Vec<SpkiPin>,
    ) -> Self {
        Self {
            slots,
            stale: Vec::new(),
            brokers,
            volume,
            spki_pins,
        }
    }

    /// The keyslots it is assigned to, in token order.
    pub fn keyslots(&self) -> Vec<u32> {
        self.slots.iter().map(|s| s.keyslot).collect()
    }

    /// The keyslots recorded for key version `v`.
    pub fn slots_for(&self, v: u32) -> Vec<u32> {
        self.slots
            .iter()
            .filter(|s| s.key_version == v)
            .map(|s| s.keyslot)
            .collect()
    }

    /// The key version recorded for `keyslot`.
    pub fn version_of(&self, keyslot: u32) -> Option<u32> {
        self.slots
            .iter()
            .find(|s| s.keyslot == keyslot)
            .map(|s| s.key_version)
    }

    /// The key versions it records, ascending, without duplicates.
    pub fn versions(&self) -> Vec<u32> {
        let v: BTreeSet<u32> = self.slots.iter().map(|s| s.key_version).collect();
        v.into_iter().collect()
    }

    /// Checks a token's JSON (version 1 or 2). `active_keyslots` are the
    /// header's active keyslots; every keyslot the token is assigned to must
    /// be one of them.
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
        let version = match obj.get("version") {
            None => {
                return Err(err(
                    "version",
                    "missing (this guest-unlock reads versions 1 and 2)",
                ))
            }
            Some(Value::Number(n)) => match n.as_u64() {
                Some(v) if READABLE_VERSIONS.contains(&v) => v,
                Some(_) => {
                    return Err(err(
                        "version",
                        format!(
                        "unsupported token version {n}; this guest-unlock reads versions 1 and 2: \
                             upgrade guest-unlock (and the initramfs)"
                    ),
                    ))
                }
                None => {
                    return Err(err(
                        "version",
                        format!("expected the integer 1 or 2, found {n}"),
                    ))
                }
            },
            Some(other) => {
                return Err(err(
                    "version",
                    format!("expected the integer 1 or 2, found {}", shown(other)),
                ))
            }
        };
        let fields: &[&str] = if version == 1 { &FIELDS_V1 } else { &FIELDS_V2 };
        if let Some(unknown) = obj.keys().find(|k| !fields.contains(&k.as_str())) {
            return Err(err(
                "(token)",
                format!(
                    "unknown field {:?}: a version-{version} token has only {}",
                    crate::flow::printable(unknown),
                    fields.join(", ")
                ),
            ));
        }
        let keyslots = keyslots(obj, active_keyslots, version == 1)?;
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
        let (slots, stale) = if version == 1 {
            let key_version = key_version(obj.get("key_version"), "key_version")?;
            let slots = keyslots
                .iter()
                .map(|&keyslot| SlotVersion {
                    keyslot,
                    key_version,
                })
                .collect();
            (slots, Vec::new())
        } else {
            slot_versions(obj, &keyslots)?
        };
        Ok(Self {
            slots,
            stale,
            brokers,
            volume,
            spki_pins,
        })
    }

    /// The token's JSON (always version 2), fields in the documented order;
    /// stale entries are left out.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("type".into(), json!(TOKEN_TYPE));
        m.insert(
            "keyslots".into(),
            json!(self
                .slots
                .iter()
                .map(|s| s.keyslot.to_string())
                .collect::<Vec<_>>()),
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
        m.insert(
            "slots".into(),
            Value::Array(
                self.slots
                    .iter()
                    .map(|s| json!({"keyslot": s.keyslot, "key_version": s.key_version}))
                    .collect(),
            ),
        );
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

fn key_version(v: Option<&Value>, field: &'static str) -> Result<u32, TokenError> {
    match v {
        None => Err(err(field, "missing")),
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n >= 1)
            .ok_or_else(|| {
                err(
                    field,
                    format!("expected an integer from 1 to {}, found {n}", u32::MAX),
                )
            }),
        Some(other) => Err(err(
            field,
            format!("expected an integer, found {}", shown(other)),
        )),
    }
}

/// `slots` of a version-2 token: (live, stale) entries.
fn slot_versions(
    obj: &Map<String, Value>,
    keyslots: &[u32],
) -> Result<(Vec<SlotVersion>, Vec<SlotVersion>), TokenError> {
    let list = match obj.get("slots") {
        None => return Err(err("slots", "missing")),
        Some(Value::Array(a)) => a,
        Some(other) => {
            return Err(err(
                "slots",
                format!(
                    "expected an array of {{\"keyslot\": N, \"key_version\": N}}, found {}",
                    shown(other)
                ),
            ))
        }
    };
    if list.is_empty() {
        return Err(err("slots", "empty: the token records no keyslot"));
    }
    if list.len() > MAX_KEYSLOT as usize + 1 {
        return Err(err(
            "slots",
            format!("{} entries, at most {}", list.len(), MAX_KEYSLOT + 1),
        ));
    }
    let mut seen = BTreeSet::new();
    let mut entries = Vec::with_capacity(list.len());
    for item in list {
        let Value::Object(e) = item else {
            return Err(err(
                "slots",
                format!(
                    "expected {{\"keyslot\": N, \"key_version\": N}}, found {}",
                    shown(item)
                ),
            ));
        };
        if let Some(unknown) = e
            .keys()
            .find(|k| k.as_str() != "keyslot" && k.as_str() != "key_version")
        {
            return Err(err(
                "slots",
                format!(
                    "unknown field {:?} in an entry: an entry has only keyslot, key_version",
                    crate::flow::printable(unknown)
                ),
            ));
        }
        let keyslot = match e.get("keyslot") {
            Some(Value::Number(n)) => n
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n <= MAX_KEYSLOT)
                .ok_or_else(|| {
                    err(
                        "slots",
                        format!("keyslot {n} is not a keyslot id (0 to {MAX_KEYSLOT})"),
                    )
                })?,
            Some(other) => {
                return Err(err(
                    "slots",
                    format!("keyslot: expected an integer, found {}", shown(other)),
                ))
            }
            None => return Err(err("slots", "an entry has no keyslot")),
        };
        let key_version = key_version(e.get("key_version"), "slots").map_err(|mut te| {
            te.reason = format!("keyslot {keyslot}: key_version: {}", te.reason);
            te
        })?;
        if !seen.insert(keyslot) {
            return Err(err("slots", format!("keyslot {keyslot} is listed twice")));
        }
        entries.push(SlotVersion {
            keyslot,
            key_version,
        });
    }
    if let Some(k) = keyslots.iter().find(|k| !seen.contains(k)) {
        return Err(err(
            "slots",
            format!("keyslot {k} is in `keyslots` but has no entry (no key version)"),
        ));
    }
    // Order: as `keyslots` lists them; stale ones apart.
    let (live, stale): (Vec<_>, Vec<_>) = entries
        .into_iter()
        .partition(|e| keyslots.contains(&e.keyslot));
    let mut live = live;
    live.sort_by_key(|e| keyslots.iter().position(|k| *k == e.keyslot));
    Ok((live, stale))
}

fn keyslots(obj: &Map<String, Value>, active: &[u32], v1: bool) -> Result<Vec<u32>, TokenError> {
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
    // Version 2: an empty list is checked against `slots` (all stale).
    if list.is_empty() && v1 {
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

    fn good_v1() -> Value {
        json!({"type":"sev-keybroker","keyslots":["1"],"version":1,
               "brokers":["https://kb:8443","https://10.0.0.2:9000"],"volume":"root",
               "key_version":3,"spki_pins":[PIN]})
    }

    fn good() -> Value {
        json!({"type":"sev-keybroker","keyslots":["1","2"],"version":2,
               "brokers":["https://kb:8443","https://10.0.0.2:9000"],"volume":"root",
               "slots":[{"keyslot":1,"key_version":3},{"keyslot":2,"key_version":4}],
               "spki_pins":[PIN]})
    }

    fn sv(keyslot: u32, key_version: u32) -> SlotVersion {
        SlotVersion {
            keyslot,
            key_version,
        }
    }

    #[test]
    fn round_trip() {
        let t = BrokerToken::from_json(&good(), &[0, 1, 2]).unwrap();
        assert_eq!(t.slots, [sv(1, 3), sv(2, 4)]);
        assert!(t.stale.is_empty());
        assert_eq!(t.keyslots(), [1, 2]);
        assert_eq!(t.versions(), [3, 4]);
        assert_eq!(t.slots_for(4), [2]);
        assert_eq!(t.version_of(1), Some(3));
        assert_eq!(t.brokers[1].port(), 9000);
        assert_eq!(t.to_json(), good());
        assert!(is_broker_token(&good()));
        assert!(!is_broker_token(&json!({"type":"systemd-tpm2"})));
    }

    #[test]
    fn version_1_is_read_and_written_as_version_2() {
        let t = BrokerToken::from_json(&good_v1(), &[0, 1]).unwrap();
        assert_eq!(t.slots, [sv(1, 3)]);
        let mut v = good_v1();
        v.as_object_mut().unwrap().remove("key_version");
        v["version"] = json!(2);
        v["slots"] = json!([{"keyslot":1,"key_version":3}]);
        assert_eq!(t.to_json(), v);
        // A v1 token naming two keyslots: both get its key_version.
        let mut two = good_v1();
        two["keyslots"] = json!(["1", "0"]);
        let t = BrokerToken::from_json(&two, &[0, 1]).unwrap();
        assert_eq!(t.slots, [sv(1, 3), sv(0, 3)]);
        // Version-2 fields in a v1 token, and the reverse, are unknown fields.
        let mut mixed = good_v1();
        mixed["slots"] = json!([]);
        assert_eq!(
            BrokerToken::from_json(&mixed, &[1]).unwrap_err().field,
            "(token)"
        );
        let mut mixed = good();
        mixed["key_version"] = json!(1);
        assert_eq!(
            BrokerToken::from_json(&mixed, &[1, 2]).unwrap_err().field,
            "(token)"
        );
    }

    #[test]
    fn destroyed_keyslots_are_stale_not_errors() {
        // libcryptsetup dropped keyslot 1 from `keyslots` when it was
        // destroyed; the token was not rewritten yet.
        let mut v = good();
        v["keyslots"] = json!(["2"]);
        let t = BrokerToken::from_json(&v, &[0, 2]).unwrap();
        assert_eq!(t.slots, [sv(2, 4)]);
        assert_eq!(t.stale, [sv(1, 3)]);
        assert_eq!(t.to_json()["slots"], json!([{"keyslot":2,"key_version":4}]));
        // Every keyslot destroyed: accepted, names nothing usable.
        v["keyslots"] = json!([]);
        let t = BrokerToken::from_json(&v, &[0]).unwrap();
        assert!(t.slots.is_empty());
        assert_eq!(t.stale.len(), 2);
        // `slots` order follows `keyslots`.
        let mut v = good();
        v["keyslots"] = json!(["2", "1"]);
        let t = BrokerToken::from_json(&v, &[1, 2]).unwrap();
        assert_eq!(t.keyslots(), [2, 1]);
    }

    fn refused_in(
        base: Value,
        active: &[u32],
        mutate: impl FnOnce(&mut Map<String, Value>),
        field: &str,
    ) {
        let mut v = base;
        mutate(v.as_object_mut().unwrap());
        let e = BrokerToken::from_json(&v, active).unwrap_err();
        assert_eq!(e.field, field, "{v}: {e}");
    }

    fn refused(mutate: impl FnOnce(&mut Map<String, Value>), field: &str) {
        refused_in(good(), &[0, 1, 2], mutate, field)
    }

    fn refused_v1(mutate: impl FnOnce(&mut Map<String, Value>), field: &str) {
        refused_in(good_v1(), &[0, 1], mutate, field)
    }

    #[test]
    fn malformed_tokens_name_the_field() {
        for (base, active) in [(good(), &[0u32, 1, 2][..]), (good_v1(), &[0, 1][..])] {
            let r = |m: &dyn Fn(&mut Map<String, Value>), f: &str| {
                refused_in(base.clone(), active, |x| m(x), f)
            };
            r(&|m| drop(m.insert("version".into(), json!(3))), "version");
            r(&|m| drop(m.insert("version".into(), json!(0))), "version");
            r(&|m| drop(m.insert("version".into(), json!("1"))), "version");
            r(&|m| drop(m.insert("version".into(), json!(1.5))), "version");
            r(&|m| drop(m.remove("version")), "version");
            r(&|m| drop(m.insert("type".into(), json!("clevis"))), "type");
            r(&|m| drop(m.insert("extra".into(), json!(1))), "(token)");
            r(
                &|m| drop(m.insert("keyslots".into(), json!(["7"]))),
                "keyslots",
            );
            r(
                &|m| drop(m.insert("keyslots".into(), json!([1]))),
                "keyslots",
            );
            r(
                &|m| drop(m.insert("keyslots".into(), json!(["01"]))),
                "keyslots",
            );
            r(
                &|m| drop(m.insert("keyslots".into(), json!(["1", "1"]))),
                "keyslots",
            );
            r(
                &|m| drop(m.insert("keyslots".into(), json!("1"))),
                "keyslots",
            );
            r(&|m| drop(m.remove("keyslots")), "keyslots");
            r(&|m| drop(m.remove("brokers")), "brokers");
            r(&|m| drop(m.insert("brokers".into(), json!([]))), "brokers");
            r(
                &|m| drop(m.insert("brokers".into(), json!(["http://kb"]))),
                "brokers",
            );
            r(&|m| drop(m.insert("brokers".into(), json!([7]))), "brokers");
            r(
                &|m| drop(m.insert("brokers".into(), json!(vec!["https://kb"; MAX_BROKERS + 1]))),
                "brokers",
            );
            r(
                &|m| drop(m.insert("spki_pins".into(), json!(["sha1:00"]))),
                "spki_pins",
            );
            r(&|m| drop(m.remove("spki_pins")), "spki_pins");
            r(
                &|m| drop(m.insert("volume".into(), json!("../x"))),
                "volume",
            );
            r(&|m| drop(m.insert("volume".into(), json!(5))), "volume");
            r(&|m| drop(m.remove("volume")), "volume");
        }
        assert!(BrokerToken::from_json(&json!([1]), &[1]).is_err());

        // Version 1: key_version, and an empty keyslots list.
        refused_v1(|m| drop(m.insert("keyslots".into(), json!([]))), "keyslots");
        refused_v1(|m| drop(m.remove("key_version")), "key_version");
        for bad in [
            json!(0),
            json!(-1),
            json!(1u64 << 40),
            json!("1"),
            json!(null),
        ] {
            refused_v1(|m| drop(m.insert("key_version".into(), bad)), "key_version");
        }

        // Version 2: slots.
        let slots = |v: Value| move |m: &mut Map<String, Value>| drop(m.insert("slots".into(), v));
        refused(|m| drop(m.remove("slots")), "slots");
        refused(slots(json!([])), "slots");
        refused(slots(json!({"1": 3})), "slots");
        refused(slots(json!([[1, 3], [2, 4]])), "slots");
        // A keyslot of `keyslots` without an entry.
        refused(slots(json!([{"keyslot":1,"key_version":3}])), "slots");
        // Duplicates, bad numbers, missing or unknown entry fields.
        refused(
            slots(
                json!([{"keyslot":1,"key_version":3},{"keyslot":1,"key_version":4},{"keyslot":2,"key_version":4}]),
            ),
            "slots",
        );
        for bad in [
            json!({"keyslot":"1","key_version":3}),
            json!({"keyslot":32,"key_version":3}),
            json!({"keyslot":-1,"key_version":3}),
            json!({"keyslot":1.0,"key_version":3}),
            json!({"keyslot":1,"key_version":0}),
            json!({"keyslot":1,"key_version":"3"}),
            json!({"keyslot":1,"key_version":4294967296u64}),
            json!({"keyslot":1}),
            json!({"key_version":3}),
            json!({"keyslot":1,"key_version":3,"state":"current"}),
        ] {
            refused(slots(json!([bad, {"keyslot":2,"key_version":4}])), "slots");
        }
        // Too many entries.
        let many: Vec<Value> = (0..40)
            .map(|i| json!({"keyslot": i % 32, "key_version": 1}))
            .collect();
        refused(slots(Value::Array(many)), "slots");
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
