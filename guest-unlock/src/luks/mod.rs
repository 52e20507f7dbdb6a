//! LUKS2 through libcryptsetup: binding a keyslot to the broker (`bind`),
//! describing (`list`), removing (`unbind`) such bindings and changing
//! their brokers and pins (`edit`).
//!
//! Every libcryptsetup call of guest-unlock goes through [`Device`]
//! (`device.rs`), a safe wrapper over `libcryptsetup-rs` built with its
//! `mutex` feature (libcryptsetup is not thread-safe; calls are serialised
//! process-wide). The only `unsafe` is libcryptsetup's log callback
//! (`log.rs`), which routes the library's messages to `tracing`.
//!
//! # Binding
//!
//! A binding is one keyslot per released version of a broker volume key
//! (64 random bytes, stretched with PBKDF2 at the minimum iteration count)
//! plus one `sev-keybroker` token ([`crate::token`]) that records each
//! keyslot with its key version, the brokers, their pins and the volume.
//! During a key rotation ([`crate::rotation`]) the token records two
//! keyslots, one per version. The device's own volume key never changes.
//!
//! [`bind`] attests first (through the caller's `fetch`), and only then
//! touches the header: it saves the header (or, with `format`, the first
//! 16 MiB of the device) to a private temporary file, makes its changes,
//! proves each new keyslot opens with its key, and on any failure after the
//! first change writes the saved bytes back, so the header is as before.

mod device;
mod log;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use keybroker_proto::VolumeId;
use serde::Serialize;
use zeroize::Zeroizing;

pub use device::{
    mapping_active, ActivateFlags, Device, LuksError, Pbkdf, RawHeadBackup, CIPHER, LUKS2_SLOTS,
    MIN_PBKDF2_ITERATIONS, RAW_HEAD_BYTES, VOLUME_KEY_BYTES,
};

use keybroker_proto::SpkiPin;

use crate::config::BrokerUrl;
use crate::flow::{UnlockError, UnwrappedKey};
use crate::token::{is_broker_token, BrokerToken, SlotVersion, TokenError};

/// Why a bind, list or unbind failed. Messages name the device; none holds
/// key or passphrase bytes.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// A libcryptsetup operation failed (the device was not changed, or was
    /// restored: see [`BindError::Restored`]).
    #[error(transparent)]
    Luks(#[from] LuksError),
    /// A `sev-keybroker` token does not validate.
    #[error("{}: token {token} (sev-keybroker) is invalid: {source}; nothing was changed (inspect it with `cryptsetup token export --token-id {token} {}`)", device.display(), device.display())]
    BadToken {
        /// The device.
        device: PathBuf,
        /// The token id.
        token: u32,
        /// What is wrong.
        #[source]
        source: TokenError,
    },
    /// The attestation failed.
    #[error("attestation failed: {0}")]
    Attestation(#[from] UnlockError),
    /// The broker refused the volume.
    #[error("broker {broker} refused volume {volume}: {}", reasons.join(","))]
    Denied {
        /// The broker.
        broker: String,
        /// The volume.
        volume: String,
        /// Reason codes.
        reasons: Vec<String>,
    },
    /// Every released key version is already bound.
    #[error("{}: volume {volume} key version {key_version} is already bound (keyslot {keyslot}); see `guest-unlock list`", device.display())]
    AlreadyBound {
        /// The device.
        device: PathBuf,
        /// The volume.
        volume: String,
        /// The key version.
        key_version: u32,
        /// Its keyslot.
        keyslot: u32,
    },
    /// `unbind` of a keyslot that is not active.
    #[error("{}: keyslot {slot} is not in use", device.display())]
    NoSuchKeyslot {
        /// The device.
        device: PathBuf,
        /// The keyslot.
        slot: u32,
    },
    /// `unbind` of a keyslot that no `sev-keybroker` token names.
    #[error("{}: keyslot {slot} is not bound to a broker (no sev-keybroker token names it); remove passphrase keyslots with `cryptsetup luksKillSlot`", device.display())]
    NotBound {
        /// The device.
        device: PathBuf,
        /// The keyslot.
        slot: u32,
    },
    /// `unbind` of the only keyslot without `--force`.
    #[error("{}: keyslot {slot} is the last keyslot; removing it makes the data unrecoverable (add a passphrase first with `cryptsetup luksAddKey`, or pass --force)", device.display())]
    LastKeyslot {
        /// The device.
        device: PathBuf,
        /// The keyslot.
        slot: u32,
    },
    /// `edit` of a device with no `sev-keybroker` token.
    #[error("{}: no sev-keybroker token to edit; bind the device first with `guest-unlock bind`", device.display())]
    NoBinding {
        /// The device.
        device: PathBuf,
    },
    /// `edit --token N` of a token that is not a `sev-keybroker` token.
    #[error("{}: token {token} is not a sev-keybroker token (it is {kind}); `guest-unlock list` shows the bound tokens", device.display())]
    NotOurToken {
        /// The device.
        device: PathBuf,
        /// The token id.
        token: u32,
        /// Its type, or `absent`.
        kind: String,
    },
    /// `edit --remove-pin` of a pin the token does not hold.
    #[error("{}: token {token} has no pin {pin} (it has {held}); nothing was changed", device.display())]
    PinNotHeld {
        /// The device.
        device: PathBuf,
        /// The token id.
        token: u32,
        /// The pin asked for.
        pin: String,
        /// The pins it holds.
        held: String,
    },
    /// `edit` that would leave a token without brokers or pins.
    #[error("{}: token {token} would be left without {what}; a guest could no longer reach its broker (add the new {what} before removing the old); nothing was changed", device.display())]
    WouldEmpty {
        /// The device.
        device: PathBuf,
        /// The token id.
        token: u32,
        /// `pins` or `brokers`.
        what: &'static str,
    },
    /// The backup could not be made (nothing was changed).
    #[error("{}: cannot back up the header before changing it: {reason}; nothing was changed", device.display())]
    Backup {
        /// The device.
        device: PathBuf,
        /// Why.
        reason: String,
    },
    /// A step failed after the header was changed; the backup was restored.
    #[error("{cause}; the header was restored from its backup")]
    Restored {
        /// The failure.
        cause: Box<BindError>,
    },
    /// A step failed and the backup could not be written back either.
    #[error("{cause}; restoring the header backup also failed ({restore_error}): the backup is kept at {} (restore it with `cryptsetup luksHeaderRestore --header-backup-file {} {}`)", backup.display(), backup.display(), device.display())]
    RestoreFailed {
        /// The device.
        device: PathBuf,
        /// The original failure.
        cause: Box<BindError>,
        /// Why the restore failed.
        restore_error: String,
        /// Where the backup is kept.
        backup: PathBuf,
    },
}

/// One binding as found on a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Binding {
    /// The device.
    pub device: PathBuf,
    /// The LUKS2 token id.
    pub token: u32,
    /// The keyslots it names (one per key version; two while a key
    /// rotation is under way).
    pub keyslots: Vec<u32>,
    /// Each keyslot with its key version.
    pub slots: Vec<SlotVersion>,
    /// The volume.
    pub volume: String,
    /// The highest key version it records.
    pub key_version: u32,
    /// Broker URLs.
    pub brokers: Vec<String>,
    /// SPKI pins.
    pub spki_pins: Vec<String>,
}

impl Binding {
    fn new(device: &Path, token: u32, t: &BrokerToken) -> Self {
        Binding {
            device: device.to_owned(),
            token,
            keyslots: t.keyslots(),
            slots: t.slots.clone(),
            volume: t.volume.to_string(),
            key_version: t.versions().last().copied().unwrap_or(0),
            brokers: t.brokers.iter().map(ToString::to_string).collect(),
            spki_pins: t.spki_pins.iter().map(ToString::to_string).collect(),
        }
    }

    /// The `bind` arguments that recreate this binding, with a comment:
    /// `bind DEVICE --broker URL[,URL] --volume NAME --pin PIN...  # keyslot 1, key version 1, token 0`;
    /// while a rotation is under way the comment names every keyslot:
    /// `# keyslot 1 v1, keyslot 2 v2 (rotation under way), token 0`.
    pub fn bind_line(&self) -> String {
        let mut s = format!(
            "bind {} --broker {} --volume {}",
            shell_quote(&self.device.to_string_lossy()),
            self.brokers.join(","),
            self.volume
        );
        for p in &self.spki_pins {
            let _ = write!(s, " --pin {p}");
        }
        match self.slots.as_slice() {
            [one] => {
                let _ = write!(
                    s,
                    "  # keyslot {}, key version {}, token {}",
                    one.keyslot, one.key_version, self.token
                );
            }
            many => {
                let slots: Vec<String> = many
                    .iter()
                    .map(|e| format!("keyslot {} v{}", e.keyslot, e.key_version))
                    .collect();
                let rotating = many.iter().any(|e| e.key_version != many[0].key_version);
                let _ = write!(
                    s,
                    "  # {}{}, token {}",
                    slots.join(", "),
                    if rotating {
                        " (rotation under way)"
                    } else {
                        ""
                    },
                    self.token
                );
            }
        }
        s
    }
}

/// Quotes a word for a POSIX shell when it needs it.
fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-=:,+@%".contains(&b))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Every `sev-keybroker` token of an open device, each validated strictly;
/// the first invalid one is an error. Other token types are skipped.
pub fn read_tokens(dev: &mut Device) -> Result<Vec<(u32, BrokerToken)>, BindError> {
    let active = dev.active_keyslots();
    let mut out = Vec::new();
    for (id, json) in dev.tokens()? {
        if !is_broker_token(&json) {
            continue;
        }
        let t = BrokerToken::from_json(&json, &active).map_err(|source| BindError::BadToken {
            device: dev.path().to_owned(),
            token: id,
            source,
        })?;
        out.push((id, t));
    }
    Ok(out)
}

/// The bindings of `device` (fails on the first invalid token).
pub fn list(device: &Path) -> Result<Vec<Binding>, BindError> {
    let mut dev = Device::open(device)?;
    Ok(read_tokens(&mut dev)?
        .iter()
        .map(|(id, t)| Binding::new(device, *id, t))
        .collect())
}

/// What `bind` is asked to do.
pub struct BindRequest<'a> {
    /// The device (or header file).
    pub device: &'a Path,
    /// The broker volume.
    pub volume: VolumeId,
    /// Brokers to record in the token.
    pub brokers: Vec<BrokerUrl>,
    /// Pins to record in the token.
    pub pins: Vec<SpkiPin>,
    /// Without `format`: a passphrase that opens an existing keyslot
    /// (required). With `format`: an optional passphrase for a second,
    /// recovery keyslot (argon2id, libcryptsetup's defaults).
    pub passphrase: Option<Zeroizing<Vec<u8>>>,
    /// Make a new LUKS2 device (refused if it already carries a LUKS header).
    pub format: bool,
}

/// A key that `fetch` obtained: what [`bind`] needs from an attestation.
pub type FetchKeys<'f> = dyn FnOnce(&VolumeId) -> Result<Vec<UnwrappedKey>, BindError> + 'f;

/// Binds `req.device` to the broker: attests through `fetch` (which
/// returns this volume's released key versions, or an error), then adds a
/// keyslot and a token for each released version not yet bound. Returns
/// the new bindings.
pub fn bind(req: BindRequest<'_>, fetch: Box<FetchKeys<'_>>) -> Result<Vec<Binding>, BindError> {
    let path = req.device;
    // Everything that can be checked without the broker, first.
    let mut bound: Vec<(u32, BrokerToken)> = Vec::new();
    let mut existing = None;
    if req.format {
        if Device::has_luks_header(path) {
            return Err(LuksError::AlreadyLuks {
                device: path.to_owned(),
            }
            .into());
        }
    } else {
        let mut dev = Device::open(path)?;
        let pass = req
            .passphrase
            .as_ref()
            .ok_or_else(|| LuksError::WrongPassphrase {
                device: path.to_owned(),
            })?;
        dev.check_passphrase(None, pass)?;
        bound = read_tokens(&mut dev)?;
        existing = Some(dev);
    }
    let keys = fetch(&req.volume)?;
    let mut new_keys: Vec<&UnwrappedKey> = Vec::new();
    let mut already = None;
    for k in keys.iter().filter(|k| k.volume == req.volume) {
        match bound
            .iter()
            .filter(|(_, t)| t.volume == req.volume)
            .find_map(|(_, t)| t.slots_for(k.version).first().copied())
        {
            Some(slot) => already = Some((k.version, slot)),
            None => new_keys.push(k),
        }
    }
    if new_keys.is_empty() {
        return Err(match already {
            Some((key_version, keyslot)) => BindError::AlreadyBound {
                device: path.to_owned(),
                volume: req.volume.to_string(),
                key_version,
                keyslot,
            },
            None => BindError::Denied {
                broker: "the broker".into(),
                volume: req.volume.to_string(),
                reasons: vec!["NO_KEY_RELEASED".into()],
            },
        });
    }

    if req.format {
        let backup_dir = tempfile::Builder::new()
            .prefix("guest-unlock-bind.")
            .tempdir()
            .map_err(|e| BindError::Backup {
                device: path.to_owned(),
                reason: e.to_string(),
            })?;
        let backup_err = |reason: String| BindError::Backup {
            device: path.to_owned(),
            reason,
        };
        let mut raw =
            RawHeadBackup::save(path, backup_dir.path()).map_err(|e| backup_err(e.to_string()))?;
        let mut dev = None;
        let result = bind_format(path, &req, &new_keys, &mut dev);
        drop(dev);
        match result {
            Ok(b) => Ok(b),
            Err(cause) => match raw.restore(path) {
                Ok(()) => Err(BindError::Restored {
                    cause: Box::new(cause),
                }),
                Err(e) => {
                    let kept = backup_dir.keep();
                    Err(BindError::RestoreFailed {
                        device: path.to_owned(),
                        cause: Box::new(cause),
                        restore_error: format!("writing the saved first bytes back: {e}"),
                        backup: kept,
                    })
                }
            },
        }
    } else {
        let mut dev = existing.take().ok_or_else(|| BindError::Backup {
            device: path.to_owned(),
            reason: "device not open".into(),
        })?;
        let pass = req.passphrase.as_ref().map(|p| p.as_slice()).unwrap_or(&[]);
        with_header_backup(&mut dev, "guest-unlock-bind.", |dev| {
            bind_existing(dev, &req, pass, &new_keys)
        })
    }
}

/// Runs `change` on an open device with its header saved first to a
/// private temporary file; when `change` fails the header is written back
/// ([`BindError::Restored`]), or, if that fails too, the backup is kept
/// and the error says where ([`BindError::RestoreFailed`]). `bind`,
/// `unbind` and `edit` change headers only through this.
fn with_header_backup<T>(
    dev: &mut Device,
    prefix: &str,
    change: impl FnOnce(&mut Device) -> Result<T, BindError>,
) -> Result<T, BindError> {
    let device = dev.path().to_owned();
    // A device this process cannot write (not root, read-only) is refused
    // before anything is saved or changed.
    if let Err(e) = std::fs::OpenOptions::new().write(true).open(&device) {
        return Err(LuksError::Op {
            device: device.clone(),
            op: "opening the device for writing",
            errno: e.raw_os_error(),
            reason: format!("{e}; nothing was changed"),
        }
        .into());
    }
    let backup_err = |reason: String| BindError::Backup {
        device: device.clone(),
        reason,
    };
    let backup_dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .map_err(|e| backup_err(e.to_string()))?;
    let file = backup_dir.path().join("header.img");
    dev.header_backup(&file)
        .map_err(|e| backup_err(e.to_string()))?;
    match change(dev) {
        Ok(t) => Ok(t),
        Err(cause) => match dev.header_restore(&file) {
            Ok(()) => Err(BindError::Restored {
                cause: Box::new(cause),
            }),
            Err(e) => Err(BindError::RestoreFailed {
                device: device.clone(),
                cause: Box::new(cause),
                restore_error: e.to_string(),
                backup: backup_dir.keep().join("header.img"),
            }),
        },
    }
}

/// Adds one token naming the new keyslots (one per released version),
/// then proves each keyslot opens with its key.
fn add_bindings(
    dev: &mut Device,
    req: &BindRequest<'_>,
    slots: &[(u32, &UnwrappedKey)],
) -> Result<Vec<Binding>, BindError> {
    let token = BrokerToken::new(
        slots
            .iter()
            .map(|(slot, key)| SlotVersion {
                keyslot: *slot,
                key_version: key.version,
            })
            .collect(),
        req.brokers.clone(),
        req.volume.clone(),
        req.pins.clone(),
    );
    let id = dev.set_token(None, &token.to_json())?;
    let out = vec![Binding::new(req.device, id, &token)];
    for (slot, key) in slots {
        dev.check_passphrase(Some(*slot), key.expose_secret())?;
    }
    // Read back through the strict parser: what unlock will see.
    let written = read_tokens(dev)?;
    for b in &out {
        if !written.iter().any(|(id, _)| *id == b.token) {
            return Err(LuksError::Op {
                device: req.device.to_owned(),
                op: "reading back the token",
                errno: None,
                reason: format!("token {} is missing after writing it", b.token),
            }
            .into());
        }
    }
    Ok(out)
}

fn bind_existing(
    dev: &mut Device,
    req: &BindRequest<'_>,
    pass: &[u8],
    keys: &[&UnwrappedKey],
) -> Result<Vec<Binding>, BindError> {
    let mut slots = Vec::new();
    for k in keys {
        let slot = dev.add_keyslot(pass, k.expose_secret(), Pbkdf::MinimalPbkdf2)?;
        slots.push((slot, *k));
    }
    add_bindings(dev, req, &slots)
}

fn bind_format(
    path: &Path,
    req: &BindRequest<'_>,
    keys: &[&UnwrappedKey],
    dev_out: &mut Option<Device>,
) -> Result<Vec<Binding>, BindError> {
    let dev = dev_out.insert(Device::format(path)?);
    let first = keys[0];
    let mut slots = vec![(
        dev.add_keyslot_after_format(first.expose_secret(), Pbkdf::MinimalPbkdf2)?,
        first,
    )];
    for k in &keys[1..] {
        slots.push((
            dev.add_keyslot(
                first.expose_secret(),
                k.expose_secret(),
                Pbkdf::MinimalPbkdf2,
            )?,
            *k,
        ));
    }
    if let Some(p) = &req.passphrase {
        dev.add_keyslot(first.expose_secret(), p, Pbkdf::Default)?;
    }
    add_bindings(dev, req, &slots)
}

/// What `unbind` removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unbound {
    /// The keyslot destroyed.
    pub keyslot: u32,
    /// Tokens removed (or rewritten without the keyslot).
    pub tokens: Vec<u32>,
}

/// Removes keyslot `slot` and its `sev-keybroker` token. Refuses a keyslot
/// that no such token names, and the last keyslot unless `force`. The
/// header is backed up first and restored on failure.
pub fn unbind(device: &Path, slot: u32, force: bool) -> Result<Unbound, BindError> {
    let mut dev = Device::open(device)?;
    let active = dev.active_keyslots();
    if !active.contains(&slot) {
        return Err(BindError::NoSuchKeyslot {
            device: device.to_owned(),
            slot,
        });
    }
    let tokens: Vec<(u32, BrokerToken)> = read_tokens(&mut dev)?
        .into_iter()
        .filter(|(_, t)| t.version_of(slot).is_some())
        .collect();
    if tokens.is_empty() {
        return Err(BindError::NotBound {
            device: device.to_owned(),
            slot,
        });
    }
    if active.len() == 1 && !force {
        return Err(BindError::LastKeyslot {
            device: device.to_owned(),
            slot,
        });
    }
    with_header_backup(&mut dev, "guest-unlock-unbind.", |dev| {
        let mut ids = Vec::new();
        for (id, t) in &tokens {
            if t.slots.len() == 1 {
                dev.remove_token(*id)?;
            } else {
                let mut rest = t.clone();
                rest.slots.retain(|s| s.keyslot != slot);
                dev.set_token(Some(*id), &rest.to_json())?;
            }
            ids.push(*id);
        }
        dev.destroy_keyslot(slot)?;
        Ok(Unbound {
            keyslot: slot,
            tokens: ids,
        })
    })
}

/// What `edit` changes in `sev-keybroker` tokens.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenEdit {
    /// The new broker list, replacing the old one.
    pub brokers: Option<Vec<BrokerUrl>>,
    /// The new pin list, replacing the old one.
    pub pins: Option<Vec<SpkiPin>>,
    /// Pins to add (after the replacement, if any; present ones are kept).
    pub add_pins: Vec<SpkiPin>,
    /// Pins to remove (each must be held).
    pub remove_pins: Vec<SpkiPin>,
}

impl TokenEdit {
    /// Whether it changes anything at all.
    pub fn is_empty(&self) -> bool {
        self.brokers.is_none()
            && self.pins.is_none()
            && self.add_pins.is_empty()
            && self.remove_pins.is_empty()
    }

    /// `t` edited; refuses removing a pin it does not hold and leaving it
    /// without pins or brokers.
    fn apply(&self, device: &Path, id: u32, t: &BrokerToken) -> Result<BrokerToken, BindError> {
        let mut out = t.clone();
        if let Some(b) = &self.brokers {
            out.brokers = b.clone();
        }
        if let Some(p) = &self.pins {
            out.spki_pins = p.clone();
        }
        for p in &self.add_pins {
            if !out.spki_pins.contains(p) {
                out.spki_pins.push(*p);
            }
        }
        for p in &self.remove_pins {
            if !out.spki_pins.contains(p) {
                return Err(BindError::PinNotHeld {
                    device: device.to_owned(),
                    token: id,
                    pin: p.to_string(),
                    held: out
                        .spki_pins
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            out.spki_pins.retain(|q| q != p);
        }
        for (what, empty) in [
            ("pins", out.spki_pins.is_empty()),
            ("brokers", out.brokers.is_empty()),
        ] {
            if empty {
                return Err(BindError::WouldEmpty {
                    device: device.to_owned(),
                    token: id,
                    what,
                });
            }
        }
        Ok(out)
    }
}

/// Changes the brokers and pins of the `sev-keybroker` tokens of `device`
/// (`token`, or every one), as `clevis luks edit` does, so that a broker
/// can move or change its TLS key without a rebind; keyslots and keys are
/// not touched, and no broker is asked. Every token is checked before the
/// header is changed; the header is backed up first and restored on
/// failure. Returns each edited binding with whether it changed.
pub fn edit(
    device: &Path,
    token: Option<u32>,
    change: &TokenEdit,
) -> Result<Vec<(Binding, bool)>, BindError> {
    let mut dev = Device::open(device)?;
    let mut tokens = read_tokens(&mut dev)?;
    if let Some(id) = token {
        if !tokens.iter().any(|(t, _)| *t == id) {
            let kind = dev
                .tokens()?
                .into_iter()
                .find(|(t, _)| *t == id)
                .map(|(_, json)| {
                    json.get("type")
                        .and_then(serde_json::Value::as_str)
                        .map_or_else(|| "untyped".to_owned(), |t| format!("type {t:?}"))
                })
                .unwrap_or_else(|| "absent".to_owned());
            return Err(BindError::NotOurToken {
                device: device.to_owned(),
                token: id,
                kind,
            });
        }
        tokens.retain(|(t, _)| *t == id);
    }
    if tokens.is_empty() {
        return Err(BindError::NoBinding {
            device: device.to_owned(),
        });
    }
    let mut edited = Vec::new();
    for (id, t) in &tokens {
        let new = change.apply(device, *id, t)?;
        let changed = new.brokers != t.brokers || new.spki_pins != t.spki_pins;
        edited.push((*id, new, changed));
    }
    if !edited.iter().any(|(_, _, changed)| *changed) {
        return Ok(edited
            .iter()
            .map(|(id, t, _)| (Binding::new(device, *id, t), false))
            .collect());
    }
    with_header_backup(&mut dev, "guest-unlock-edit.", |dev| {
        for (id, t, changed) in &edited {
            if *changed {
                dev.set_token(Some(*id), &t.to_json())?;
            }
        }
        // Read back through the strict parser: what unlock will see.
        let written = read_tokens(dev)?;
        let mut out = Vec::new();
        for (id, t, changed) in &edited {
            match written.iter().find(|(w, _)| w == id) {
                Some((_, w)) if w.brokers == t.brokers && w.spki_pins == t.spki_pins => {
                    out.push((Binding::new(device, *id, w), *changed))
                }
                _ => {
                    return Err(LuksError::Op {
                        device: device.to_owned(),
                        op: "reading back the token",
                        errno: None,
                        reason: format!("token {id} does not hold what was written"),
                    }
                    .into())
                }
            }
        }
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("/dev/vda2"), "/dev/vda2");
        assert_eq!(shell_quote("/tmp/a b"), "'/tmp/a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn bind_line_shape() {
        let b = Binding {
            device: "/dev/vdb".into(),
            token: 0,
            keyslots: vec![1],
            slots: vec![SlotVersion {
                keyslot: 1,
                key_version: 2,
            }],
            volume: "data".into(),
            key_version: 2,
            brokers: vec!["https://a:1".into(), "https://b:2".into()],
            spki_pins: vec!["sha256:aa".into(), "sha256:bb".into()],
        };
        assert_eq!(
            b.bind_line(),
            "bind /dev/vdb --broker https://a:1,https://b:2 --volume data --pin sha256:aa --pin sha256:bb  # keyslot 1, key version 2, token 0"
        );
        // While a rotation is under way, every keyslot with its version.
        let mut r = b.clone();
        r.keyslots = vec![1, 2];
        r.slots.push(SlotVersion {
            keyslot: 2,
            key_version: 3,
        });
        r.key_version = 3;
        assert!(
            r.bind_line()
                .ends_with("  # keyslot 1 v2, keyslot 2 v3 (rotation under way), token 0"),
            "{}",
            r.bind_line()
        );
    }
}
