//! Volume key rotation on the guest (phase 2 of the broker's two-phase
//! rotation, `docs/protocol.md`, "Rotation proof").
//!
//! While a volume is under rotation the broker releases two keys in one
//! `AttestResponse`: the CURRENT version and a PENDING one. Once the volume
//! is open, the guest runs these steps, each a separate header write
//! guarded by a header backup that is restored if the step fails:
//!
//! 1. **enroll** ([`enroll`]): if no keyslot opens with the pending key
//!    yet, add one (PBKDF2 at the minimum count, like `bind`), authorised
//!    by the key that opened the volume; check that the keyslot opens with
//!    the pending key; record it (and the keyslot that opened the volume,
//!    if the token did not know it) in the `sev-keybroker` token;
//! 2. **confirm**: send `ConfirmRotation` with the proof, in the session
//!    that released the key ([`Confirmer`]);
//! 3. **clean up** ([`cleanup`]): once the broker has made the pending
//!    version current, destroy the keyslots the token records for versions
//!    it no longer releases, then rewrite the token without them.
//!
//! Every step starts from what the header says now, not from what an
//! earlier run meant to do, so each one is idempotent, and a run stopped
//! anywhere (power off, `SIGKILL`) is finished by the next: a keyslot that
//! opens with the pending key is found (every PBKDF2 keyslot is tried)
//! instead of being added twice; a keyslot missing from the token is recorded; a
//! confirmation whose answer was lost is repeated (the broker answers it
//! again) or, when the broker already releases only the new version, the
//! old keyslot is removed on this or the next unlock. Destroying a keyslot
//! also drops it from the token's `keyslots` in the same header write
//! (libcryptsetup does that), so between steps 3's two writes the token
//! holds a *stale* entry, which [`crate::token`] accepts and the next run
//! drops.
//!
//! Two rules hold whatever the header says: a keyslot is removed only if a
//! `sev-keybroker` token of the volume records it (a passphrase keyslot is
//! never touched), and only if another keyslot was checked in this run to
//! open with a key the broker still releases and the keyslot itself opens
//! with none of them.
//!
//! Each completed step is told to a [`StepObserver`], which can stop the
//! rotation right there, leaving the header as a crash would: the tests do
//! that at every step. Test builds (cargo feature `failpoints`) also kill
//! the process there on request (`guest-unlock`'s crash points).

use std::collections::BTreeSet;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Duration;

use keybroker_proto::pb::KeyState;
use keybroker_proto::VolumeId;

use crate::client::BrokerRpc;
use crate::flow::{AttestedSession, UnlockError, UnwrappedKey};
use crate::luks::{read_tokens, BindError, Device, LuksError, Pbkdf};
use crate::token::{BrokerToken, SlotVersion};

/// How long `ConfirmRotation` may take before the guest gives up for this
/// boot (the volume is already open; the next unlock tries again).
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// A rotation step, as the `step=` of the `event=rotation` line names it.
/// Each is one header write, or the broker's confirmation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RotationStep {
    /// The pending key's keyslot was added (the token does not know it yet).
    KeyslotAdded,
    /// The token records the new keyslot.
    TokenUpdated,
    /// The broker confirmed; no keyslot was removed yet.
    Confirmed,
    /// An old keyslot was destroyed; the token still has its stale entry.
    OldSlotRemoved,
}

impl RotationStep {
    /// Every step, in order.
    pub const ALL: [RotationStep; 4] = [
        RotationStep::KeyslotAdded,
        RotationStep::TokenUpdated,
        RotationStep::Confirmed,
        RotationStep::OldSlotRemoved,
    ];

    /// The stable name (`keyslot-added`, `token-updated`, `confirmed`,
    /// `old-slot-removed`).
    pub fn name(self) -> &'static str {
        match self {
            Self::KeyslotAdded => "keyslot-added",
            Self::TokenUpdated => "token-updated",
            Self::Confirmed => "confirmed",
            Self::OldSlotRemoved => "old-slot-removed",
        }
    }
}

/// A rotation step that completed on one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepDone {
    /// The volume.
    pub volume: VolumeId,
    /// The device.
    pub device: PathBuf,
    /// The step.
    pub step: RotationStep,
    /// The key version it concerns: the pending key's (keyslot added,
    /// token updated), the new current one (confirmed), the removed
    /// keyslot's (old slot removed).
    pub key_version: u32,
}

/// Told of each completed step; [`ControlFlow::Break`] stops the rotation
/// there, leaving the header as a crash would (tests).
pub type StepObserver<'a> = dyn FnMut(&StepDone) -> ControlFlow<()> + 'a;

/// Sends `ConfirmRotation` for an enrolled pending key in the session that
/// released it.
pub trait Confirmer {
    /// Returns the broker's new current version, or why it was not confirmed.
    fn confirm(&mut self, key: &UnwrappedKey) -> Result<u32, UnlockError>;
}

/// Why a pending key was not confirmed (its keyslot and the old one stay;
/// the next unlock tries again).
#[derive(Debug, thiserror::Error)]
pub enum NotConfirmed {
    /// Enrolling the pending key failed on a device of the volume.
    #[error("enrolling it failed on a device of this volume")]
    EnrollFailed,
    /// No session of the attestation that released the key is left.
    #[error("no broker session to confirm it in")]
    NoSession,
    /// The broker did not confirm.
    #[error(transparent)]
    Broker(#[from] UnlockError),
}

/// A [`Confirmer`] over a [`AttestedSession`], blocking on `rt`.
pub struct SessionConfirmer<'r, B> {
    rt: &'r tokio::runtime::Runtime,
    session: AttestedSession<B>,
}

impl<'r, B> SessionConfirmer<'r, B> {
    /// Confirms in `session`, running the call on `rt`.
    pub fn new(rt: &'r tokio::runtime::Runtime, session: AttestedSession<B>) -> Self {
        Self { rt, session }
    }
}

impl<B: BrokerRpc> Confirmer for SessionConfirmer<'_, B> {
    fn confirm(&mut self, key: &UnwrappedKey) -> Result<u32, UnlockError> {
        self.rt.block_on(self.session.confirm(key, CONFIRM_TIMEOUT))
    }
}

/// Why a rotation step did not complete. The volume stays open either way.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    /// Reading or changing the header failed (restored if it was changed).
    #[error(transparent)]
    Header(#[from] BindError),
    /// The device has no `sev-keybroker` token for the volume.
    #[error("no sev-keybroker token records volume {volume}")]
    NoToken {
        /// The volume.
        volume: String,
    },
    /// The key that opened the volume is not among the released keys
    /// (a caller bug).
    #[error("the key version {version} that opened the volume was not released")]
    NoOpeningKey {
        /// The version.
        version: u32,
    },
    /// Removing old keyslots would not be safe (nothing was removed).
    #[error("old keyslots kept: {0}")]
    Unsafe(String),
    /// The step observer stopped the rotation after this step.
    #[error("stopped after {}", .0.name())]
    Stopped(RotationStep),
}

impl From<LuksError> for RotationError {
    fn from(e: LuksError) -> Self {
        Self::Header(e.into())
    }
}

/// The keyslot (and key version) that opened the volume in this run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    /// The keyslot.
    pub keyslot: u32,
    /// The key version whose key opened it.
    pub version: u32,
}

/// What [`enroll`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Enrolled {
    /// The pending key's keyslot, checked to open with it.
    pub pending: Option<SlotVersion>,
    /// Keyslots checked in this run to open with a released key.
    pub verified: Vec<SlotVersion>,
    /// Whether a keyslot was added in this run.
    pub added: bool,
    /// Keyslots recorded in the token in this run.
    pub recorded: Vec<SlotVersion>,
}

/// What [`cleanup`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Cleaned {
    /// Keyslots destroyed, with the version the token recorded for them.
    pub removed: Vec<SlotVersion>,
    /// Tokens rewritten (stale or retired entries dropped).
    pub tokens_rewritten: Vec<u32>,
    /// Tokens removed (they named nothing left).
    pub tokens_removed: Vec<u32>,
}

fn tell(
    observer: &mut StepObserver<'_>,
    device: &Path,
    volume: &VolumeId,
    step: RotationStep,
    key_version: u32,
) -> Result<(), RotationError> {
    let done = StepDone {
        volume: volume.clone(),
        device: device.to_owned(),
        step,
        key_version,
    };
    match observer(&done) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(()) => Err(RotationError::Stopped(step)),
    }
}

/// Where header backups go: the temporary directory, else `/run` (an
/// initramfs may have no `/tmp`).
fn backup_dir() -> std::io::Result<tempfile::TempDir> {
    let builder = || {
        let mut b = tempfile::Builder::new();
        b.prefix("guest-unlock-rotate.");
        b
    };
    builder()
        .tempdir()
        .or_else(|_| builder().tempdir_in("/run"))
}

/// Runs `f` (one header write) with a header backup that is written back
/// if `f` fails.
fn with_backup<T>(
    dev: &mut Device,
    f: impl FnOnce(&mut Device) -> Result<T, LuksError>,
) -> Result<T, RotationError> {
    let device: PathBuf = dev.path().to_owned();
    let dir = backup_dir().map_err(|e| BindError::Backup {
        device: device.clone(),
        reason: e.to_string(),
    })?;
    let file = dir.path().join("header.img");
    dev.header_backup(&file).map_err(|e| BindError::Backup {
        device: device.clone(),
        reason: e.to_string(),
    })?;
    match f(dev) {
        Ok(t) => Ok(t),
        Err(cause) => match dev.header_restore(&file) {
            Ok(()) => Err(BindError::Restored {
                cause: Box::new(cause.into()),
            }
            .into()),
            Err(e) => Err(BindError::RestoreFailed {
                device,
                cause: Box::new(cause.into()),
                restore_error: e.to_string(),
                backup: dir.keep().join("header.img"),
            }
            .into()),
        },
    }
}

/// The volume's tokens, re-read from the header.
fn volume_tokens(
    dev: &mut Device,
    volume: &VolumeId,
) -> Result<Vec<(u32, BrokerToken)>, RotationError> {
    Ok(read_tokens(dev)?
        .into_iter()
        .filter(|(_, t)| &t.volume == volume)
        .collect())
}

/// The keyslot `key` opens: the keyslots the tokens record for its version
/// first, then every other PBKDF2 keyslot (one added by an earlier run but
/// not yet recorded). Argon2 keyslots are skipped: guest-unlock never adds
/// one, and trying a key on one costs seconds and much memory.
pub fn find_slot(
    dev: &mut Device,
    tokens: &[(u32, BrokerToken)],
    key: &UnwrappedKey,
) -> Result<Option<u32>, LuksError> {
    let recorded: Vec<u32> = tokens
        .iter()
        .flat_map(|(_, t)| t.slots_for(key.version))
        .collect();
    let others: Vec<u32> = dev
        .active_keyslots()
        .into_iter()
        .filter(|s| !recorded.contains(s))
        .collect();
    let others: Vec<u32> = others
        .into_iter()
        .filter(|s| dev.keyslot_is_pbkdf2(*s))
        .collect();
    for slot in recorded.into_iter().chain(others) {
        match dev.check_passphrase(Some(slot), key.expose_secret()) {
            Ok(s) => return Ok(Some(s)),
            Err(LuksError::WrongPassphrase { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// The pending key among `keys` (the highest pending version), if any.
pub fn pending_key<'k>(keys: &[&'k UnwrappedKey]) -> Option<&'k UnwrappedKey> {
    keys.iter()
        .copied()
        .filter(|k| k.state == KeyState::Pending)
        .max_by_key(|k| k.version)
}

/// Step 1 on one device, open with `opened`: makes sure a keyslot opens
/// with the pending key (adding one if needed), checks it, and records it
/// and the opening keyslot in the volume's token. `keys` are the keys
/// released for `volume` in this session.
pub fn enroll(
    device: &Path,
    volume: &VolumeId,
    keys: &[&UnwrappedKey],
    opened: Opened,
    observer: &mut StepObserver<'_>,
) -> Result<Enrolled, RotationError> {
    let mut dev = Device::open(device)?;
    let tokens = volume_tokens(&mut dev, volume)?;
    if tokens.is_empty() {
        return Err(RotationError::NoToken {
            volume: volume.to_string(),
        });
    }
    let auth = keys
        .iter()
        .find(|k| k.version == opened.version && &k.volume == volume)
        .ok_or(RotationError::NoOpeningKey {
            version: opened.version,
        })?;
    let mut out = Enrolled {
        verified: vec![SlotVersion {
            keyslot: opened.keyslot,
            key_version: opened.version,
        }],
        ..Enrolled::default()
    };
    if let Some(p) = pending_key(keys).filter(|p| p.version != opened.version) {
        let slot = match find_slot(&mut dev, &tokens, p)? {
            Some(s) => s,
            None => {
                let s = with_backup(&mut dev, |d| {
                    d.add_keyslot(
                        auth.expose_secret(),
                        p.expose_secret(),
                        Pbkdf::MinimalPbkdf2,
                    )
                })?;
                out.added = true;
                tracing::info!(device = %device.display(), %volume, keyslot = s,
                    version = p.version, "added a keyslot for the pending key");
                tell(
                    observer,
                    device,
                    volume,
                    RotationStep::KeyslotAdded,
                    p.version,
                )?;
                s
            }
        };
        // The new keyslot must open before the broker hears of it.
        dev.check_passphrase(Some(slot), p.expose_secret())?;
        let sv = SlotVersion {
            keyslot: slot,
            key_version: p.version,
        };
        out.verified.push(sv);
        out.pending = Some(sv);
    } else if let Some(p) = pending_key(keys) {
        // The pending key itself opened the volume.
        out.pending = Some(SlotVersion {
            keyslot: opened.keyslot,
            key_version: p.version,
        });
    }

    // Record every checked keyslot the token does not know (or knows under
    // another version) in the token that records the opening keyslot, else
    // the volume's first token.
    let recorded = |sv: &SlotVersion| {
        tokens
            .iter()
            .any(|(_, t)| t.version_of(sv.keyslot) == Some(sv.key_version))
    };
    let missing: Vec<SlotVersion> = out
        .verified
        .iter()
        .copied()
        .filter(|sv| !recorded(sv))
        .collect();
    if !missing.is_empty() {
        let (id, tok) = tokens
            .iter()
            .find(|(_, t)| t.version_of(opened.keyslot).is_some())
            .unwrap_or(&tokens[0]);
        let mut t = tok.clone();
        for sv in &missing {
            t.slots.retain(|e| e.keyslot != sv.keyslot);
            t.slots.push(*sv);
        }
        let json = t.to_json();
        with_backup(&mut dev, |d| d.set_token(Some(*id), &json))?;
        let newest = missing.iter().map(|sv| sv.key_version).max().unwrap_or(0);
        out.recorded = missing;
        tell(observer, device, volume, RotationStep::TokenUpdated, newest)?;
    }
    Ok(out)
}

/// Step 3 on one device: destroys the keyslots the volume's tokens record
/// for versions other than those of `released` (the keys the broker still
/// releases), then rewrites the tokens without them and without stale
/// entries. `verified` are keyslots checked in this run to open with a
/// released key: one of them must survive, or nothing is removed.
pub fn cleanup(
    device: &Path,
    volume: &VolumeId,
    released: &[&UnwrappedKey],
    verified: &[SlotVersion],
    observer: &mut StepObserver<'_>,
) -> Result<Cleaned, RotationError> {
    let mut out = Cleaned::default();
    let mut dev = Device::open(device)?;
    let keep: BTreeSet<u32> = released.iter().map(|k| k.version).collect();
    let active = dev.active_keyslots();
    let anchors: Vec<u32> = verified
        .iter()
        .filter(|sv| keep.contains(&sv.key_version) && active.contains(&sv.keyslot))
        .map(|sv| sv.keyslot)
        .collect();
    let tokens = volume_tokens(&mut dev, volume)?;
    let mut retired: Vec<SlotVersion> = Vec::new();
    for (_, t) in &tokens {
        for e in &t.slots {
            if !keep.contains(&e.key_version) && !retired.iter().any(|r| r.keyslot == e.keyslot) {
                retired.push(*e);
            }
        }
    }
    if !retired.is_empty() && anchors.is_empty() {
        return Err(RotationError::Unsafe(format!(
            "no keyslot was checked to open with key version {} in this run",
            keep.iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(" or ")
        )));
    }
    for e in retired {
        if anchors.contains(&e.keyslot) {
            continue;
        }
        // Never remove a keyslot that a released key opens, whatever the
        // token says about it.
        let mut opens = false;
        for k in released {
            match dev.check_passphrase(Some(e.keyslot), k.expose_secret()) {
                Ok(_) => opens = true,
                Err(LuksError::WrongPassphrase { .. }) => {}
                Err(err) => return Err(err.into()),
            }
        }
        if opens {
            tracing::warn!(device = %device.display(), keyslot = e.keyslot,
                "the token records another version for a keyslot a released key opens; kept");
            continue;
        }
        with_backup(&mut dev, |d| d.destroy_keyslot(e.keyslot))?;
        tracing::info!(device = %device.display(), %volume, keyslot = e.keyslot,
            version = e.key_version, "removed the retired key's keyslot");
        out.removed.push(e);
        tell(
            observer,
            device,
            volume,
            RotationStep::OldSlotRemoved,
            e.key_version,
        )?;
    }

    // Rewrite the tokens: drop stale entries (keyslots destroyed) and, for
    // the keyslots just removed, their entries.
    for (id, t) in volume_tokens(&mut dev, volume)? {
        if t.stale.is_empty() {
            continue;
        }
        if t.slots.is_empty() {
            with_backup(&mut dev, |d| d.remove_token(id))?;
            out.tokens_removed.push(id);
        } else {
            let json = t.to_json();
            with_backup(&mut dev, |d| d.set_token(Some(id), &json))?;
            out.tokens_rewritten.push(id);
        }
    }
    Ok(out)
}
