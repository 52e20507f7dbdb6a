//! `guest-unlock unlock`: find LUKS2 devices bound to a broker, attest once
//! per distinct broker list for all their volumes, open each device with
//! its released key, zeroize.
//!
//! The steps are separate functions so that each is testable without
//! device-mapper: [`parse_crypttab`] and [`crypttab_entry_for`] (names and
//! options), [`scan_block_devices`] (`--all`), [`probe`] (is this a LUKS2
//! device with a `sev-keybroker` token?), [`group_targets`] (one
//! attestation per broker list and per
//! [`MAX_VOLUMES`](keybroker_proto::MAX_VOLUMES) volumes), and
//! [`unlock_targets`], which takes the
//! attestation as a function and can check keyslots instead of activating
//! (`--dry-run`).
//!
//! Modules by concern: `crypttab` (names, options, `rotate`'s crypttab
//! names), `discovery` (block devices, tokens, mapping names), `grouping`
//! (one attestation per broker configuration), `activate` (one device),
//! `rotate` (key rotation over the opened devices) and `outcome` (what a
//! run reports).

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use keybroker_proto::VolumeIds;

use crate::flow::{FetchOutcome, UnlockError, UnwrappedKey};
use crate::luks::mapping_active;
use crate::rotation::{Confirmer, StepDone};

mod activate;
mod crypttab;
mod discovery;
mod grouping;
mod outcome;
mod rotate;

pub use crypttab::{
    activate_flags, crypttab_entry_for, device_for, parse_crypttab, resolve_spec,
    valid_mapping_name, CrypttabEntry, CrypttabLineError, DeviceIdentity, DeviceLookupError,
    DeviceSpec, DEFAULT_CRYPTTAB,
};
pub use discovery::{name_targets, probe, scan_block_devices, Probe, Target, SYS_CLASS_BLOCK};
pub use grouping::{group_targets, Group};
pub use outcome::{FailureKind, LockCause, RotationNote, StillLocked, UnlockReport, Unlocked};

/// Whether to activate or only to check that a key opens its keyslot, and
/// whether key rotation follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Create the device-mapper mapping, then do any key rotation.
    Activate,
    /// Check the keyslot only (`--dry-run`; no device-mapper needed); the
    /// header is never changed.
    CheckOnly,
    /// Check the keyslot (the device is open already), then do any key
    /// rotation (`guest-unlock rotate`).
    Rotate,
}

/// What one group's attestation gave: the outcome, and the session in
/// which an enrolled pending key is confirmed.
pub struct Fetched<'a> {
    /// Keys and denials.
    pub outcome: FetchOutcome,
    /// `ConfirmRotation` in the same session (none after a refusal).
    pub confirmer: Option<Box<dyn Confirmer + 'a>>,
}

impl From<FetchOutcome> for Fetched<'_> {
    fn from(outcome: FetchOutcome) -> Self {
        Self {
            outcome,
            confirmer: None,
        }
    }
}

/// The outcome of one group's attestation.
pub type GroupResult<'a> = Result<Fetched<'a>, UnlockError>;

/// What [`unlock_targets`] tells as it goes, before its [`UnlockReport`]:
/// the command line prints event lines from it, so that a step is on the
/// console even if the process dies right after it. Every method does
/// nothing by default; `()` observes nothing.
pub trait Progress {
    /// A device was opened with a released key (or, in [`Mode::Activate`],
    /// found already open: `keyslot` is then `None`).
    fn opened(&mut self, unlocked: &Unlocked) {
        let _ = unlocked;
    }

    /// Key rotation starts on an opened device (it is usable whatever
    /// happens to the rotation).
    fn rotation_starts(&mut self, unlocked: &Unlocked) {
        let _ = unlocked;
    }

    /// A rotation step completed. [`ControlFlow::Break`] stops the rotation
    /// right there, leaving the header exactly as a crash at that point
    /// would (tests); [`UnlockReport::stopped`] then names the step.
    fn rotation_step(&mut self, step: &StepDone) -> ControlFlow<()> {
        let _ = step;
        ControlFlow::Continue(())
    }
}

impl Progress for () {}

/// Attests once per group (through `fetch`), then opens each target with
/// the keys released for its volumes, then (unless [`Mode::CheckOnly`])
/// carries out any key rotation (see [`crate::rotation`]), telling
/// `progress` as it goes. For each volume the current key is tried first,
/// on the keyslots its token records for that version and then on any
/// keyslot; then the other released keys likewise. All keys are zeroized
/// when this returns.
pub fn unlock_targets<'a>(
    targets: &[Target],
    mode: Mode,
    fetch: &mut dyn FnMut(&Group, &VolumeIds) -> GroupResult<'a>,
    progress: &mut dyn Progress,
) -> UnlockReport {
    let mut report = UnlockReport::default();
    // Keys released, each with the index of the group (session) that released it.
    let mut keys: Vec<(usize, UnwrappedKey)> = Vec::new();
    let mut confirmers: Vec<Option<Box<dyn Confirmer + 'a>>> = Vec::new();
    // The broker's decision id per group.
    let mut decisions: Vec<String> = Vec::new();
    let mut reasons: BTreeMap<String, (String, LockCause)> = BTreeMap::new();
    let pending: Vec<&Target> = targets
        .iter()
        .filter(|t| {
            if mode == Mode::Activate && mapping_active(&t.name) {
                let u = Unlocked {
                    device: t.device.clone(),
                    name: t.name.clone(),
                    volume: t.volumes(),
                    keyslot: None,
                    key_version: None,
                    decision_id: None,
                };
                progress.opened(&u);
                report.unlocked.push(u);
                false
            } else {
                true
            }
        })
        .collect();
    let owned: Vec<Target> = pending.iter().map(|t| (*t).clone()).collect();
    for group in group_targets(&owned) {
        let gi = confirmers.len();
        confirmers.push(None);
        decisions.push(String::new());
        let ids = match VolumeIds::new(group.volumes.clone()) {
            Ok(v) => v,
            Err(e) => {
                for v in &group.volumes {
                    reasons.insert(
                        v.to_string(),
                        (
                            format!("cannot ask for the volumes: {e}"),
                            LockCause::Failed(FailureKind::InvalidToken),
                        ),
                    );
                }
                continue;
            }
        };
        match fetch(&group, &ids) {
            Ok(Fetched { outcome, confirmer }) => {
                for d in &outcome.denied {
                    let codes = if d.reason_codes.is_empty() {
                        "UNSPECIFIED".to_owned()
                    } else {
                        d.reason_codes.join(",")
                    };
                    reasons.insert(
                        d.volume.to_string(),
                        (
                            format!(
                                "broker {} refused: {codes}{}",
                                outcome.broker,
                                decision_suffix(&outcome.decision_id)
                            ),
                            LockCause::Refused {
                                reason_codes: d.reason_codes.clone(),
                                decision_id: outcome.decision_id.clone(),
                            },
                        ),
                    );
                }
                keys.extend(outcome.keys.into_iter().map(|k| (gi, k)));
                confirmers[gi] = confirmer;
                decisions[gi] = outcome.decision_id;
            }
            Err(e) => {
                let kind = FailureKind::from(&e);
                for v in &group.volumes {
                    reasons.insert(v.to_string(), (e.to_string(), LockCause::Failed(kind)));
                }
            }
        }
    }
    let all_keys: Vec<(&UnwrappedKey, &str)> = keys
        .iter()
        .map(|(gi, k)| (k, decisions[*gi].as_str()))
        .collect();
    let mut opened: Vec<(&Target, Unlocked)> = Vec::new();
    for t in pending {
        match activate::open_target(t, &all_keys, mode) {
            Ok(u) => {
                progress.opened(&u);
                opened.push((t, u));
            }
            Err(why) => {
                let (reason, cause) = why.unwrap_or_else(|| {
                    t.tokens
                        .iter()
                        .find_map(|(_, tok)| reasons.get(tok.volume.as_str()).cloned())
                        .unwrap_or_else(|| {
                            (
                                "no key was released for this volume".into(),
                                LockCause::Failed(FailureKind::NoKeyReleased),
                            )
                        })
                });
                report.locked.push(StillLocked {
                    volume: t.volumes(),
                    device: t.device.clone(),
                    reason,
                    cause,
                });
            }
        }
    }
    if mode != Mode::CheckOnly {
        rotate::rotate_opened(&opened, &keys, &mut confirmers, progress, &mut report);
    }
    report.unlocked.extend(opened.into_iter().map(|(_, u)| u));
    // `keys` (Zeroizing) are wiped here.
    drop(keys);
    report
}

/// ` (decision ID)`, naming the broker's audit entry (`broker audit`
/// shows the same id), or nothing when the broker gave none.
pub fn decision_suffix(decision_id: &str) -> String {
    if decision_id.is_empty() {
        String::new()
    } else {
        format!(" (decision {decision_id})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::UnreachableCause;
    use crate::luks::ActivateFlags;
    use crate::token::BrokerToken;
    use keybroker_proto::{VolumeId, MAX_VOLUMES};
    use std::path::PathBuf;

    const PIN_A: &str = "sha256:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const PIN_B: &str = "sha256:1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100";

    fn target(dev: &str, uuid: &str, toks: &[(&str, &[&str], &str, u32)]) -> Target {
        Target {
            device: dev.into(),
            uuid: uuid.into(),
            tokens: toks
                .iter()
                .enumerate()
                .map(|(i, (vol, brokers, pin, ver))| {
                    (
                        i as u32,
                        BrokerToken::new(
                            vec![crate::token::SlotVersion {
                                keyslot: i as u32 + 1,
                                key_version: *ver,
                            }],
                            brokers.iter().map(|b| b.parse().unwrap()).collect(),
                            VolumeId::new(*vol).unwrap(),
                            vec![pin.parse().unwrap()],
                        ),
                    )
                })
                .collect(),
            name: String::new(),
            flags: ActivateFlags::default(),
        }
    }

    #[test]
    fn one_attestation_per_broker_list() {
        let ab: &[&str] = &["https://a:1", "https://b:1"];
        let ba: &[&str] = &["https://b:1", "https://a:1"];
        let targets = vec![
            target("/dev/vda", "u1", &[("root", ab, PIN_A, 1)]),
            target(
                "/dev/vdb",
                "u2",
                &[("data", ab, PIN_A, 1), ("data", ab, PIN_A, 2)],
            ),
            target("/dev/vdc", "u3", &[("logs", ba, PIN_A, 1)]),
            target("/dev/vdd", "u4", &[("other", ab, PIN_B, 1)]),
            target("/dev/vde", "u5", &[("root", ab, PIN_A, 1)]),
        ];
        let groups = group_targets(&targets);
        assert_eq!(groups.len(), 3, "{groups:?}");
        let vols: Vec<Vec<&str>> = groups
            .iter()
            .map(|g| g.volumes.iter().map(VolumeId::as_str).collect())
            .collect();
        assert_eq!(vols, [vec!["root", "data"], vec!["logs"], vec!["other"]]);
        assert_eq!(groups[1].brokers[0].host(), "b");
        assert!(group_targets(&[]).is_empty());
    }

    #[test]
    fn more_volumes_than_one_attest_may_name_are_split() {
        let ab: &[&str] = &["https://a:1"];
        let n = 2 * MAX_VOLUMES + 6;
        let names: Vec<String> = (0..n).map(|i| format!("vol{i:03}")).collect();
        let mut targets: Vec<Target> = names
            .iter()
            .enumerate()
            .map(|(i, v)| target(&format!("/dev/x{i}"), "u", &[(v.as_str(), ab, PIN_A, 1)]))
            .collect();
        // A second device of an already seen volume adds nothing; another
        // pin set is grouped apart.
        targets.push(target("/dev/again", "u", &[("vol000", ab, PIN_A, 2)]));
        targets.push(target("/dev/other", "u", &[("other", ab, PIN_B, 1)]));
        let groups = group_targets(&targets);
        let sizes: Vec<usize> = groups.iter().map(|g| g.volumes.len()).collect();
        assert_eq!(sizes, [MAX_VOLUMES, MAX_VOLUMES, 6, 1], "{sizes:?}");
        // Every volume once, in first-seen order, and each group is a valid request.
        let flat: Vec<&str> = groups[..3]
            .iter()
            .flat_map(|g| g.volumes.iter().map(VolumeId::as_str))
            .collect();
        assert_eq!(flat, names.iter().map(String::as_str).collect::<Vec<_>>());
        for g in &groups {
            assert!(VolumeIds::new(g.volumes.clone()).is_ok());
        }
        assert!(groups[..3].iter().all(|g| g.pins == groups[0].pins));
        assert_eq!(groups[3].volumes[0].as_str(), "other");

        // unlock_targets attests once per group, with every volume asked for.
        let mut asked: Vec<usize> = Vec::new();
        let report = unlock_targets(
            &targets,
            Mode::CheckOnly,
            &mut |_, ids| {
                asked.push(ids.as_slice().len());
                Err(UnlockError::Unreachable {
                    timeout: std::time::Duration::from_secs(1),
                    attempts: 1,
                    last_errors: vec!["unreachable".into()],
                    cause: UnreachableCause::NoConnection,
                })
            },
            &mut (),
        );
        assert_eq!(asked, sizes);
        assert_eq!(report.locked.len(), targets.len());
        assert!(report
            .locked
            .iter()
            .all(|l| l.reason.starts_with("no broker answered")));
    }

    #[test]
    fn names_from_flag_crypttab_or_uuid() {
        let ab: &[&str] = &["https://a:1"];
        let mut targets = vec![
            target("/nonexistent/vda", "1111-aaaa", &[("root", ab, PIN_A, 1)]),
            target("/nonexistent/vdb", "2222-bbbb", &[("data", ab, PIN_A, 1)]),
        ];
        let (entries, _) = parse_crypttab("cryptroot UUID=1111-AAAA none luks,discard\n");
        name_targets(&mut targets, None, &entries, &|_| None);
        assert_eq!(targets[0].name, "cryptroot");
        assert!(targets[0].flags.allow_discards);
        assert_eq!(targets[1].name, "luks-2222-bbbb");
        name_targets(&mut targets[..1], Some("mine"), &entries, &|_| None);
        assert_eq!(targets[0].name, "mine");
    }

    #[test]
    fn scanning_skips_empty_devices() {
        let d = tempfile::tempdir().unwrap();
        for (name, size) in [("vda", "20971520\n"), ("loop0", "0\n"), ("vda1", "2048")] {
            std::fs::create_dir(d.path().join(name)).unwrap();
            std::fs::write(d.path().join(name).join("size"), size).unwrap();
        }
        std::fs::create_dir(d.path().join("nosize")).unwrap();
        assert_eq!(
            scan_block_devices(d.path()),
            [PathBuf::from("/dev/vda"), PathBuf::from("/dev/vda1")]
        );
        assert!(scan_block_devices(&d.path().join("missing")).is_empty());
    }

    #[test]
    fn denials_and_errors_become_one_line_per_device() {
        let ab: &[&str] = &["https://a:1"];
        let targets = vec![
            target("/nonexistent/vda", "u1", &[("root", ab, PIN_A, 1)]),
            target("/nonexistent/vdb", "u2", &[("data", ab, PIN_B, 1)]),
        ];
        let mut calls = 0;
        let report = unlock_targets(
            &targets,
            Mode::CheckOnly,
            &mut |g, ids| {
                calls += 1;
                if g.pins[0].to_string() == PIN_A {
                    Ok(Fetched::from(FetchOutcome {
                        broker: "https://a:1".parse().unwrap(),
                        keys: Vec::new(),
                        denied: ids
                            .iter()
                            .map(|v| crate::flow::Denied {
                                volume: v.clone(),
                                reason_codes: vec!["POLICY_MEASUREMENT_NOT_ALLOWED".into()],
                            })
                            .collect(),
                        decision_id: "d-9".into(),
                        refusal: None,
                    }))
                } else {
                    Err(UnlockError::Unreachable {
                        timeout: std::time::Duration::from_secs(1),
                        attempts: 1,
                        last_errors: vec!["https://a:1: connection refused".into()],
                        cause: UnreachableCause::NoConnection,
                    })
                }
            },
            &mut (),
        );
        assert_eq!(calls, 2);
        assert!(report.unlocked.is_empty());
        let lines: Vec<String> = report.locked.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines[0],
            "root (/nonexistent/vda): broker https://a:1 refused: POLICY_MEASUREMENT_NOT_ALLOWED (decision d-9)"
        );
        assert!(
            lines[1].starts_with("data (/nonexistent/vdb): no broker answered"),
            "{}",
            lines[1]
        );
        // The same as data, for the event lines.
        assert_eq!(
            report.locked[0].cause,
            LockCause::Refused {
                reason_codes: vec!["POLICY_MEASUREMENT_NOT_ALLOWED".into()],
                decision_id: "d-9".into(),
            }
        );
        assert_eq!(
            report.locked[1].cause,
            LockCause::Failed(FailureKind::BrokerUnreachable)
        );
    }

    #[test]
    fn failure_kinds_of_unlock_errors() {
        let unreachable = |cause| UnlockError::Unreachable {
            timeout: std::time::Duration::from_secs(1),
            attempts: 1,
            last_errors: vec![],
            cause,
        };
        let kind = |e: &UnlockError| FailureKind::from(e).as_str();
        assert_eq!(
            kind(&unreachable(UnreachableCause::PinMismatch)),
            "pin-mismatch"
        );
        assert_eq!(kind(&unreachable(UnreachableCause::Timeout)), "timeout");
        assert_eq!(
            kind(&unreachable(UnreachableCause::NoConnection)),
            "broker-unreachable"
        );
        assert_eq!(
            kind(&UnlockError::EvidenceMismatch { provider: "sim" }),
            "evidence"
        );
        assert_eq!(
            kind(&UnlockError::BadResponse {
                broker: String::new(),
                problem: String::new()
            }),
            "bad-response"
        );
    }
}
