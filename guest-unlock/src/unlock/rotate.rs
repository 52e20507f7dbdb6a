//! Key rotation over the opened devices: enroll on every device of a
//! volume, confirm once per volume, then clean up each device
//! ([`crate::rotation`] holds the steps themselves).

use std::collections::BTreeMap;

use keybroker_proto::VolumeId;

use super::discovery::Target;
use super::outcome::{RotationNote, UnlockReport, Unlocked};
use super::Progress;
use crate::flow::UnwrappedKey;
use crate::rotation::{
    cleanup, enroll, pending_key, Confirmer, Enrolled, NotConfirmed, Opened, RotationError,
    RotationStep, StepDone,
};
use crate::token::BrokerToken;

/// One opened device whose volume may need rotation work.
struct Work<'t> {
    target: &'t Target,
    volume: VolumeId,
    opened: Opened,
    /// Step 1's result (`None`: not run, or failed).
    enrolled: Option<Enrolled>,
    /// What was done, for the device's line.
    done: Vec<String>,
    /// A failure, for the device's line.
    failed: Option<String>,
}

/// Whether the device needs rotation work: a pending key was released, or
/// its tokens record a keyslot for a version no longer released, hold
/// stale entries, or do not record the keyslot that opened it.
fn needs_rotation(t: &Target, volume: &VolumeId, keys: &[&UnwrappedKey], opened: Opened) -> bool {
    if pending_key(keys).is_some() {
        return true;
    }
    let toks: Vec<&BrokerToken> = t
        .tokens
        .iter()
        .filter(|(_, tok)| &tok.volume == volume)
        .map(|(_, tok)| tok)
        .collect();
    let released = |v: u32| keys.iter().any(|k| k.version == v);
    let recorded = toks
        .iter()
        .any(|tok| tok.version_of(opened.keyslot) == Some(opened.version));
    !recorded
        || toks
            .iter()
            .any(|tok| !tok.stale.is_empty() || tok.slots.iter().any(|e| !released(e.key_version)))
}

/// The three rotation steps over all opened devices: enroll on every device
/// of a volume, confirm once per volume (only when every device of it
/// enrolled), then clean up each device. Failures become warning lines.
pub(super) fn rotate_opened<'a>(
    opened: &[(&Target, Unlocked)],
    keys: &[(usize, UnwrappedKey)],
    confirmers: &mut [Option<Box<dyn Confirmer + 'a>>],
    progress: &mut dyn Progress,
    report: &mut UnlockReport,
) {
    let volume_keys = |v: &VolumeId| -> Vec<&UnwrappedKey> {
        keys.iter()
            .map(|(_, k)| k)
            .filter(|k| &k.volume == v)
            .collect()
    };
    let mut works: Vec<Work<'_>> = Vec::new();
    for (t, u) in opened {
        let (Some(keyslot), Some(version)) = (u.keyslot, u.key_version) else {
            continue;
        };
        let Ok(volume) = VolumeId::new(u.volume.as_str()) else {
            continue;
        };
        let opened = Opened { keyslot, version };
        if needs_rotation(t, &volume, &volume_keys(&volume), opened) {
            // Told before the rotation steps start: the device is usable
            // whatever happens to them (the final report follows at the end).
            progress.rotation_starts(u);
            works.push(Work {
                target: t,
                volume,
                opened,
                enrolled: None,
                done: Vec::new(),
                failed: None,
            });
        }
    }

    // 1. Enroll.
    for w in works.iter_mut() {
        match enroll(
            &w.target.device,
            &w.volume,
            &volume_keys(&w.volume),
            w.opened,
            &mut |s| progress.rotation_step(s),
        ) {
            Ok(e) => {
                if let (true, Some(p)) = (e.added, e.pending) {
                    w.done.push(format!(
                        "added keyslot {} for pending key version {}",
                        p.keyslot, p.key_version
                    ));
                }
                let recorded: Vec<String> = e
                    .recorded
                    .iter()
                    .filter(|r| !(e.added && Some(**r) == e.pending))
                    .map(|r| format!("keyslot {} (key version {})", r.keyslot, r.key_version))
                    .collect();
                if !recorded.is_empty() {
                    w.done
                        .push(format!("recorded {} in the token", recorded.join(", ")));
                }
                w.enrolled = Some(e);
            }
            Err(RotationError::Stopped(p)) => {
                report.stopped = Some(p);
                return;
            }
            Err(e) => w.failed = Some(format!("key rotation: {e}")),
        }
    }

    // 2. Confirm, once per volume with a pending key.
    let mut confirmed: BTreeMap<VolumeId, u32> = BTreeMap::new();
    let mut volumes: Vec<VolumeId> = works.iter().map(|w| w.volume.clone()).collect();
    volumes.sort();
    volumes.dedup();
    for v in volumes {
        let vkeys = volume_keys(&v);
        let Some(p) = pending_key(&vkeys) else {
            continue;
        };
        let mine = || works.iter().filter(|w| w.volume == v);
        let result = if mine().any(|w| w.enrolled.is_none()) {
            Err(NotConfirmed::EnrollFailed)
        } else {
            let gi = keys
                .iter()
                .find(|(_, k)| k.volume == v && k.version == p.version)
                .map(|(gi, _)| *gi);
            match gi
                .and_then(|gi| confirmers.get_mut(gi))
                .and_then(Option::as_mut)
            {
                Some(c) => c.confirm(p).map_err(NotConfirmed::from),
                None => Err(NotConfirmed::NoSession),
            }
        };
        match result {
            Ok(current) => {
                confirmed.insert(v.clone(), current);
                let mut stop = false;
                for w in works.iter_mut().filter(|w| w.volume == v) {
                    w.done
                        .push(format!("broker confirmed key version {current}"));
                    let step = StepDone {
                        volume: v.clone(),
                        device: w.target.device.clone(),
                        step: RotationStep::Confirmed,
                        key_version: current,
                    };
                    stop |= progress.rotation_step(&step).is_break();
                }
                if stop {
                    report.stopped = Some(RotationStep::Confirmed);
                    return;
                }
            }
            Err(why) => {
                for w in works
                    .iter_mut()
                    .filter(|w| w.volume == v && w.failed.is_none())
                {
                    let slot = w
                        .enrolled
                        .as_ref()
                        .and_then(|e| e.pending)
                        .map(|p| format!(" is in keyslot {}", p.keyslot))
                        .unwrap_or_default();
                    w.failed = Some(format!(
                        "pending key version {}{slot} but was not confirmed: {why}; both keyslots kept, the next unlock tries again",
                        p.version
                    ));
                }
            }
        }
    }

    // 3. Clean up: versions the broker no longer releases.
    for w in works.iter_mut() {
        let Some(e) = &w.enrolled else { continue };
        let vkeys = volume_keys(&w.volume);
        let released: Vec<&UnwrappedKey> = match confirmed.get(&w.volume) {
            Some(c) => vkeys.into_iter().filter(|k| k.version == *c).collect(),
            None => vkeys,
        };
        match cleanup(
            &w.target.device,
            &w.volume,
            &released,
            &e.verified,
            &mut |s| progress.rotation_step(s),
        ) {
            Ok(c) => {
                if !c.removed.is_empty() {
                    let slots: Vec<String> = c
                        .removed
                        .iter()
                        .map(|r| format!("keyslot {} (key version {})", r.keyslot, r.key_version))
                        .collect();
                    w.done.push(format!("removed {}", slots.join(", ")));
                } else if !c.tokens_rewritten.is_empty() || !c.tokens_removed.is_empty() {
                    w.done
                        .push("dropped removed keyslots from the token".to_owned());
                }
            }
            Err(RotationError::Stopped(p)) => {
                report.stopped = Some(p);
                return;
            }
            Err(e) => {
                if w.failed.is_none() {
                    w.failed = Some(format!("key rotation: {e}"));
                }
            }
        }
    }

    for w in works {
        let device = w.target.device.clone();
        let volume = w.volume.to_string();
        if let Some(f) = w.failed {
            let mut message = w.done.join("; ");
            if !message.is_empty() {
                message.push_str("; ");
            }
            message.push_str(&f);
            report.rotation.push(RotationNote {
                volume,
                device,
                ok: false,
                message,
            });
        } else if !w.done.is_empty() {
            report.rotation.push(RotationNote {
                volume,
                device,
                ok: true,
                message: w.done.join("; "),
            });
        }
    }
}
