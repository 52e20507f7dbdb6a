//! Opening one device: the released keys in order, on the keyslots their
//! tokens record and then on any keyslot; activate, or only check.

use keybroker_proto::pb::KeyState;
use keybroker_proto::VolumeId;

use super::discovery::Target;
use super::outcome::{FailureKind, LockCause, Unlocked};
use super::Mode;
use crate::flow::UnwrappedKey;
use crate::luks::{Device, LuksError};

/// Why the released keys did not open a target (the line and the cause).
pub(super) type OpenFailure = (String, LockCause);

/// Tries the released keys (each with its broker decision id) on the
/// target. `Err(None)`: no key was released for it; `Err(Some(..))`: keys
/// were tried and failed.
pub(super) fn open_target(
    t: &Target,
    keys: &[(&UnwrappedKey, &str)],
    mode: Mode,
) -> Result<Unlocked, Option<OpenFailure>> {
    let open_failed = |e: &dyn std::fmt::Display| {
        Some((e.to_string(), LockCause::Failed(FailureKind::OpenFailed)))
    };
    // Per volume of its tokens: current keys (newest first), then pending.
    let mut volumes: Vec<&VolumeId> = Vec::new();
    for (_, tok) in &t.tokens {
        if !volumes.contains(&&tok.volume) {
            volumes.push(&tok.volume);
        }
    }
    let mut order: Vec<(&VolumeId, &UnwrappedKey, &str)> = Vec::new();
    for v in volumes {
        let mut ks: Vec<(&UnwrappedKey, &str)> = keys
            .iter()
            .copied()
            .filter(|(k, _)| &k.volume == v)
            .collect();
        ks.sort_by_key(|(k, _)| (k.state != KeyState::Current, std::cmp::Reverse(k.version)));
        order.extend(ks.into_iter().map(|(k, d)| (v, k, d)));
    }
    if order.is_empty() {
        return Err(None);
    }
    let mut dev = Device::open(&t.device).map_err(|e| open_failed(&e))?;
    let mut tried = Vec::new();
    for (volume, k, decision) in order {
        let mut slots: Vec<u32> = Vec::new();
        for (_, tok) in t.tokens.iter().filter(|(_, tok)| &tok.volume == volume) {
            for s in tok.slots_for(k.version) {
                if !slots.contains(&s) {
                    slots.push(s);
                }
            }
        }
        // The recorded keyslots, then any keyslot.
        for slot in slots.into_iter().map(Some).chain(std::iter::once(None)) {
            let r = match mode {
                Mode::Activate => dev.activate(&t.name, slot, k.expose_secret(), t.flags),
                Mode::CheckOnly | Mode::Rotate => dev.check_passphrase(slot, k.expose_secret()),
            };
            match r {
                Ok(s) => {
                    return Ok(Unlocked {
                        device: t.device.clone(),
                        name: t.name.clone(),
                        volume: volume.to_string(),
                        keyslot: Some(s),
                        key_version: Some(k.version),
                        decision_id: (!decision.is_empty()).then(|| decision.to_owned()),
                    })
                }
                Err(LuksError::WrongPassphrase { .. }) => {
                    let state = match k.state {
                        KeyState::Pending => "pending",
                        _ => "current",
                    };
                    tried.push(match slot {
                        Some(s) => format!("v{} ({state}) on keyslot {s}", k.version),
                        None => format!("v{} ({state}) on any keyslot", k.version),
                    });
                }
                Err(e) => return Err(open_failed(&e)),
            }
        }
    }
    Err(Some((
        format!(
            "no released key opens a keyslot (tried {}); rebind with `guest-unlock bind`",
            tried.join(", ")
        ),
        LockCause::Failed(FailureKind::NoKeyOpens),
    )))
}
