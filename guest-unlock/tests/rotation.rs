//! Volume key rotation on 32 MiB LUKS2 image files, against a fake broker
//! behind the real flow: Challenge, Attest (keys wrapped with HPKE to the
//! attempt's key), and ConfirmRotation whose proof the fake checks with
//! `verify_rotation_proof` against the REPORT_DATA of the same session.
//! Device-mapper is not available on the host, so the devices are "open"
//! in the `rotate` sense: the current key is checked with libcryptsetup's
//! check-only activation (`Mode::Rotate`), then the rotation steps run.
//!
//! The crash test stops the rotation after each step in turn (the progress
//! observer returns `Break`, leaving the header exactly as a power cut there would),
//! checks that the volume still opens with one of the two keys, then runs a
//! normal unlock and checks that the rotation completed.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use guest_unlock::evidence::{Evidence, EvidenceError, EvidenceProvider, SnpEvidence};
use guest_unlock::flow::{attest_session, FetchOutcome, Session};
use guest_unlock::luks::{self, Device, LuksError, Pbkdf};
use guest_unlock::rotation::{RotationStep, SessionConfirmer, StepDone};
use guest_unlock::token::{BrokerToken, SlotVersion};
use guest_unlock::unlock::{self, Fetched, Mode, Probe, Target, UnlockReport};
use keybroker_proto::pb::{self, KeyState};
use keybroker_proto::{
    check_version, denial_status, protocol_version, report_data, verify_rotation_proof,
    wrap_volume_key, GuestPublicKey, Nonce, ReportData, VolumeId, VolumeIds,
};
use serde_json::json;

const PASSPHRASE: &[u8] = b"correct horse battery staple";
const PIN: &str = "sha256:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const K1: [u8; 64] = [0x11; 64];
const K2: [u8; 64] = [0x22; 64];

/// The crash point right after a rotation step, as `KEYBROKER_CRASH_AT`
/// names it (test builds with the `failpoints` feature).
fn crash_point(step: RotationStep) -> &'static str {
    match step {
        RotationStep::KeyslotAdded => "guest-after-keyslot-add",
        RotationStep::TokenUpdated => "guest-after-token-update",
        RotationStep::Confirmed => "guest-after-confirm",
        RotationStep::OldSlotRemoved => "guest-after-old-slot-removed",
    }
}

// ------------------------------------------------------------ fake broker

/// What the fake broker holds for volume `root`.
struct BrokerState {
    current: (u32, [u8; 64]),
    pending: Option<(u32, [u8; 64])>,
    /// REPORT_DATA per nonce of each Attest.
    sessions: BTreeMap<Vec<u8>, ReportData>,
    next_nonce: u8,
    /// Refuse every ConfirmRotation as a bad proof.
    refuse: bool,
    /// Answer ConfirmRotation with UNIMPLEMENTED (a 1.0 broker).
    unimplemented: bool,
    /// ConfirmRotation calls: (version, proof valid).
    confirms: Vec<(u32, bool)>,
}

#[derive(Clone)]
struct FakeBroker(Arc<Mutex<BrokerState>>);

impl BrokerState {
    /// Volume `root` under rotation: v1 current, v2 pending.
    fn rotating() -> Self {
        BrokerState {
            current: (1, K1),
            pending: Some((2, K2)),
            sessions: BTreeMap::new(),
            next_nonce: 1,
            refuse: false,
            unimplemented: false,
            confirms: Vec::new(),
        }
    }
}

impl FakeBroker {
    fn rotating() -> Self {
        Self(Arc::new(Mutex::new(BrokerState::rotating())))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, BrokerState> {
        self.0.lock().unwrap()
    }
}

impl guest_unlock::client::BrokerRpc for FakeBroker {
    async fn challenge(
        &mut self,
        req: pb::ChallengeRequest,
        _t: Duration,
    ) -> Result<pb::ChallengeResponse, tonic::Status> {
        check_version(req.version.as_ref())?;
        let mut st = self.state();
        let n = st.next_nonce;
        st.next_nonce += 1;
        Ok(pb::ChallengeResponse {
            version: Some(protocol_version()),
            nonce: vec![n; 32],
            expires_in_secs: 60,
        })
    }

    async fn attest(
        &mut self,
        req: pb::AttestRequest,
        _t: Duration,
    ) -> Result<pb::AttestResponse, tonic::Status> {
        check_version(req.version.as_ref())?;
        let vols = VolumeIds::parse(&req.volume_ids).unwrap();
        let pk = GuestPublicKey::try_from(req.guest_public_key.as_slice()).unwrap();
        let nonce = Nonce::try_from(req.nonce.as_slice()).unwrap();
        let rd = report_data(&nonce, &pk, &vols);
        assert_eq!(&req.report[0x50..0x90], &rd.as_bytes()[..]);
        let mut st = self.state();
        st.sessions.insert(req.nonce.clone(), rd);
        let mut keys = Vec::new();
        for v in vols.iter() {
            assert_eq!(v.as_str(), "root");
            let mut release = vec![(st.current, KeyState::Current)];
            if let Some(p) = st.pending {
                release.push((p, KeyState::Pending));
            }
            for ((version, key), state) in release {
                let w = wrap_volume_key(&pk, &rd, v, version, &key).unwrap();
                keys.push(pb::WrappedKey {
                    volume_id: v.to_string(),
                    key_version: version,
                    state: state as i32,
                    enc: w.enc,
                    ciphertext: w.ciphertext,
                });
            }
        }
        Ok(pb::AttestResponse {
            version: Some(protocol_version()),
            keys,
            denied: vec![],
            decision_id: "d-attest".into(),
        })
    }

    async fn confirm_rotation(
        &mut self,
        req: pb::ConfirmRotationRequest,
        _t: Duration,
    ) -> Result<pb::ConfirmRotationResponse, tonic::Status> {
        let mut st = self.state();
        if st.unimplemented {
            return Err(tonic::Status::unimplemented("ConfirmRotation"));
        }
        check_version(req.version.as_ref())?;
        let rd = st
            .sessions
            .get(&req.nonce)
            .copied()
            .ok_or_else(|| tonic::Status::failed_precondition("unknown session"))?;
        let volume = VolumeId::new(req.volume_id.as_str()).unwrap();
        let denied = |code: &str| {
            denial_status(
                tonic::Code::PermissionDenied,
                "rotation not confirmed",
                &pb::Denial {
                    reason_codes: vec![code.into()],
                    volumes: vec![],
                    decision_id: "d-confirm".into(),
                },
            )
        };
        // Already current (a lost answer, retried): confirmed again.
        if st.pending.is_none() && st.current.0 == req.key_version {
            let ok =
                verify_rotation_proof(&st.current.1, &rd, &volume, req.key_version, &req.proof);
            st.confirms.push((req.key_version, ok));
            return if ok {
                Ok(pb::ConfirmRotationResponse {
                    version: Some(protocol_version()),
                    current_version: req.key_version,
                    decision_id: "d-confirm".into(),
                })
            } else {
                Err(denied("ROTATION_PROOF_INVALID"))
            };
        }
        let Some((pv, pkey)) = st.pending else {
            return Err(denied("ROTATION_NOT_PENDING"));
        };
        let ok = pv == req.key_version
            && verify_rotation_proof(&pkey, &rd, &volume, req.key_version, &req.proof);
        st.confirms.push((req.key_version, ok));
        if !ok || st.refuse {
            return Err(denied("ROTATION_PROOF_INVALID"));
        }
        st.current = (pv, pkey);
        st.pending = None;
        Ok(pb::ConfirmRotationResponse {
            version: Some(protocol_version()),
            current_version: pv,
            decision_id: "d-confirm".into(),
        })
    }
}

/// Evidence carrying the requested REPORT_DATA (the fake broker checks only that).
struct FakeEvidence;

impl EvidenceProvider for FakeEvidence {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn get_evidence(&self, rd: &[u8; 64]) -> Result<Evidence, EvidenceError> {
        use keybroker_snp::report::{offset, REPORT_DATA_LEN, REPORT_LEN};
        let mut report = vec![0u8; REPORT_LEN];
        report[offset::REPORT_DATA..offset::REPORT_DATA + REPORT_DATA_LEN].copy_from_slice(rd);
        Ok(SnpEvidence {
            report,
            cert_table: Vec::new(),
        }
        .into())
    }
}

// ------------------------------------------------------------ devices

/// A 32 MiB LUKS2 image: passphrase in keyslot 0, K1 in keyslot 1, and a
/// version-1 token (as bind wrote before token version 2) for it.
fn bound_image(dir: &Path, name: &str) -> PathBuf {
    bound_image_for(dir, name, "https://127.0.0.1:1", PIN)
}

/// [`bound_image`] whose token names `broker` and `pin`.
fn bound_image_for(dir: &Path, name: &str, broker: &str, pin: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::File::create(&path)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let mut d = Device::format(&path).unwrap();
    assert_eq!(
        d.add_keyslot_after_format(PASSPHRASE, Pbkdf::MinimalPbkdf2)
            .unwrap(),
        0
    );
    assert_eq!(
        d.add_keyslot(PASSPHRASE, &K1, Pbkdf::MinimalPbkdf2)
            .unwrap(),
        1
    );
    d.set_token(
        None,
        &json!({"type":"sev-keybroker","keyslots":["1"],"version":1,
                "brokers":[broker],"volume":"root","key_version":1,
                "spki_pins":[pin]}),
    )
    .unwrap();
    path
}

fn target(dev: &Path) -> Target {
    match unlock::probe(dev) {
        Probe::Bound(mut t) => {
            t.name = "root_crypt".into();
            t
        }
        other => panic!("{}: {other:?}", dev.display()),
    }
}

/// Stops the rotation when its closure says so.
struct Steps<'a>(&'a mut dyn FnMut(RotationStep) -> bool);

impl unlock::Progress for Steps<'_> {
    fn rotation_step(&mut self, s: &StepDone) -> ControlFlow<()> {
        if (self.0)(s.step) {
            ControlFlow::Continue(())
        } else {
            ControlFlow::Break(())
        }
    }
}

/// One `rotate`-mode run against `broker`, with `hook` deciding whether to
/// go on after each step.
fn run(
    dev: &Path,
    broker: &FakeBroker,
    hook: &mut dyn FnMut(RotationStep) -> bool,
) -> UnlockReport {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let targets = vec![target(dev)];
    let rt = &rt;
    unlock::unlock_targets(
        &targets,
        Mode::Rotate,
        &mut |_group, ids| {
            let s = Session::new(
                broker.clone(),
                "fake",
                tokio::time::Instant::now() + Duration::from_secs(10),
            );
            let (u, rot) = rt.block_on(attest_session(s, &FakeEvidence, ids))?;
            Ok(Fetched {
                outcome: FetchOutcome {
                    broker: "https://127.0.0.1:1".parse().unwrap(),
                    keys: u.keys,
                    denied: u.denied,
                    decision_id: u.decision_id,
                    refusal: None,
                },
                confirmer: Some(Box::new(SessionConfirmer::new(rt, rot))),
            })
        },
        &mut Steps(hook),
    )
}

fn run_to_end(dev: &Path, broker: &FakeBroker) -> UnlockReport {
    let r = run(dev, broker, &mut |_| true);
    assert!(r.stopped.is_none());
    assert!(r.locked.is_empty(), "{:?}", r.locked);
    r
}

fn tokens(dev: &Path) -> Vec<(u32, BrokerToken)> {
    let mut d = Device::open(dev).unwrap();
    luks::read_tokens(&mut d).unwrap()
}

fn opens(dev: &Path, key: &[u8]) -> Option<u32> {
    match Device::open(dev).unwrap().check_passphrase(None, key) {
        Ok(s) => Some(s),
        Err(LuksError::WrongPassphrase { .. }) => None,
        Err(e) => panic!("{e}"),
    }
}

fn sv(keyslot: u32, key_version: u32) -> SlotVersion {
    SlotVersion {
        keyslot,
        key_version,
    }
}

/// The end state of a completed rotation: K2 in one keyslot recorded as
/// version 2, K1 gone, the passphrase keyslot untouched, the broker at v2.
fn assert_rotated(dev: &Path, broker: &FakeBroker) {
    let st = broker.state();
    assert_eq!(st.current.0, 2);
    assert!(st.pending.is_none());
    drop(st);
    let toks = tokens(dev);
    assert_eq!(toks.len(), 1, "{toks:?}");
    let t = &toks[0].1;
    assert!(t.stale.is_empty(), "{t:?}");
    assert_eq!(t.slots.len(), 1, "{t:?}");
    let s = t.slots[0];
    assert_eq!(s.key_version, 2);
    assert_eq!(opens(dev, &K2), Some(s.keyslot));
    assert_eq!(opens(dev, &K1), None);
    assert_eq!(opens(dev, PASSPHRASE), Some(0));
    let mut active = Device::open(dev).unwrap().active_keyslots();
    active.sort_unstable();
    assert_eq!(active, vec![0, s.keyslot]);
    // The token on disk is version 2.
    let (_, raw) = Device::open(dev).unwrap().tokens().unwrap().remove(0);
    assert_eq!(raw["version"], json!(2));
    assert_eq!(
        raw["slots"],
        json!([{"keyslot": s.keyslot, "key_version": 2}])
    );
}

// ------------------------------------------------------------ tests

#[test]
fn full_rotation_in_one_unlock() {
    let dir = tempfile::tempdir().unwrap();
    let dev = bound_image(dir.path(), "disk.img");
    // The version-1 token reads as one keyslot at version 1.
    let b = luks::list(&dev).unwrap();
    assert_eq!((b[0].keyslots.clone(), b[0].key_version), (vec![1], 1));
    let broker = FakeBroker::rotating();
    let mut points = Vec::new();
    let r = run(&dev, &broker, &mut |p| {
        points.push(p);
        true
    });
    assert_eq!(points, RotationStep::ALL);
    assert_eq!(r.unlocked.len(), 1);
    assert_eq!(r.unlocked[0].key_version, Some(1));
    assert_eq!(r.rotation.len(), 1, "{:?}", r.rotation);
    let line = r.rotation[0].to_string();
    assert!(r.rotation[0].ok, "{line}");
    assert!(
        line.contains("added keyslot 2 for pending key version 2")
            && line.contains("broker confirmed key version 2")
            && line.contains("removed keyslot 1 (key version 1)"),
        "{line}"
    );
    assert_eq!(broker.state().confirms, [(2, true)]);
    assert_rotated(&dev, &broker);

    // The next unlock opens with v2 and has nothing to do.
    let r = run_to_end(&dev, &broker);
    assert_eq!(r.unlocked[0].key_version, Some(2));
    assert!(r.rotation.is_empty(), "{:?}", r.rotation);
    assert_rotated(&dev, &broker);
}

#[test]
fn a_crash_after_any_step_is_finished_by_the_next_unlock() {
    let dir = tempfile::tempdir().unwrap();
    let mut exercised = BTreeSet::new();
    for stop_at in 0.. {
        let dev = bound_image(dir.path(), &format!("disk-{stop_at}.img"));
        let broker = FakeBroker::rotating();
        let mut seen = 0;
        let r = run(&dev, &broker, &mut |_| {
            let go = seen != stop_at;
            seen += 1;
            go
        });
        let Some(point) = r.stopped else {
            // Ran to the end: every step was interrupted once before.
            assert_eq!(stop_at, RotationStep::ALL.len());
            assert_rotated(&dev, &broker);
            break;
        };
        assert_eq!(point, RotationStep::ALL[stop_at], "steps run in order");
        exercised.insert(point);

        // The interrupted state: the token still parses, the passphrase
        // and the broker's current key open the volume.
        let toks = tokens(&dev);
        assert_eq!(toks.len(), 1);
        assert_eq!(opens(&dev, PASSPHRASE), Some(0));
        let current = broker.state().current.1;
        assert!(opens(&dev, &current).is_some(), "{point:?}: current key");
        match point {
            RotationStep::KeyslotAdded => {
                // The token does not know keyslot 2 yet.
                assert_eq!(toks[0].1.slots, [sv(1, 1)]);
                assert_eq!(opens(&dev, &K2), Some(2));
            }
            RotationStep::TokenUpdated => {
                assert_eq!(toks[0].1.slots, [sv(1, 1), sv(2, 2)]);
                let line = luks::list(&dev).unwrap()[0].bind_line();
                assert!(
                    line.ends_with("# keyslot 1 v1, keyslot 2 v2 (rotation under way), token 0"),
                    "{line}"
                );
            }
            RotationStep::Confirmed => {
                assert_eq!(broker.state().current.0, 2);
                assert_eq!(toks[0].1.slots, [sv(1, 1), sv(2, 2)]);
            }
            RotationStep::OldSlotRemoved => {
                // libcryptsetup dropped keyslot 1 from `keyslots`; the
                // token's entry for it is stale until the next write.
                assert_eq!(toks[0].1.slots, [sv(2, 2)]);
                assert_eq!(toks[0].1.stale, [sv(1, 1)]);
                assert_eq!(opens(&dev, &K1), None);
            }
        }

        // The next unlock opens the volume and finishes the rotation.
        let r = run_to_end(&dev, &broker);
        assert_eq!(r.unlocked.len(), 1);
        assert!(
            r.rotation.iter().all(|n| n.ok),
            "{point:?}: {:?}",
            r.rotation
        );
        assert_rotated(&dev, &broker);
        // And the one after that has nothing left to do.
        let r = run_to_end(&dev, &broker);
        assert!(r.rotation.is_empty(), "{point:?}: {:?}", r.rotation);
        assert_rotated(&dev, &broker);
        // Never more than one keyslot per version was added.
        assert!(broker.state().confirms.iter().all(|(v, ok)| *v == 2 && *ok));
    }
    assert_eq!(
        exercised,
        RotationStep::ALL.into_iter().collect::<BTreeSet<_>>(),
        "every crash point was exercised"
    );
}

#[test]
fn a_refused_or_unanswered_confirmation_keeps_both_keyslots() {
    let dir = tempfile::tempdir().unwrap();
    for unimplemented in [false, true] {
        let dev = bound_image(dir.path(), &format!("refused-{unimplemented}.img"));
        let broker = FakeBroker::rotating();
        {
            let mut st = broker.state();
            st.refuse = !unimplemented;
            st.unimplemented = unimplemented;
        }
        for round in 0..2 {
            let r = run_to_end(&dev, &broker);
            assert_eq!(r.unlocked.len(), 1, "still opens");
            assert_eq!(r.rotation.len(), 1);
            let n = &r.rotation[0];
            assert!(!n.ok);
            let line = n.to_string();
            assert!(
                line.contains("pending key version 2 is in keyslot 2 but was not confirmed")
                    && line.contains("both keyslots kept"),
                "{line}"
            );
            assert!(
                line.contains(if unimplemented {
                    "Unimplemented"
                } else {
                    "ROTATION_PROOF_INVALID"
                }),
                "{line}"
            );
            if round == 0 {
                assert!(line.starts_with("root ("), "{line}");
                assert!(line.contains("added keyslot 2"), "{line}");
            } else {
                assert!(!line.contains("added keyslot"), "{line}");
            }
            let toks = tokens(&dev);
            assert_eq!(toks[0].1.slots, [sv(1, 1), sv(2, 2)]);
            assert_eq!(opens(&dev, &K1), Some(1));
            assert_eq!(opens(&dev, &K2), Some(2));
            let mut active = Device::open(&dev).unwrap().active_keyslots();
            active.sort_unstable();
            assert_eq!(active, [0, 1, 2], "no keyslot added twice");
        }
        let st = broker.state();
        assert_eq!(st.current.0, 1);
        if !unimplemented {
            // The proofs were valid; the broker refused anyway.
            assert_eq!(st.confirms, [(2, true), (2, true)]);
        }
    }
}

#[test]
fn the_old_keyslot_goes_when_the_broker_no_longer_releases_it() {
    // The confirmation's answer was lost (or another device confirmed):
    // the broker releases only v2, and the token still lists v1's keyslot.
    let dir = tempfile::tempdir().unwrap();
    let dev = bound_image(dir.path(), "lost-answer.img");
    let broker = FakeBroker::rotating();
    broker.state().unimplemented = true;
    run_to_end(&dev, &broker);
    {
        let mut st = broker.state();
        st.unimplemented = false;
        st.current = (2, K2);
        st.pending = None;
    }
    let r = run_to_end(&dev, &broker);
    assert_eq!(r.unlocked[0].key_version, Some(2));
    assert_eq!(r.unlocked[0].keyslot, Some(2));
    assert_eq!(r.rotation.len(), 1);
    assert_eq!(r.rotation[0].message, "removed keyslot 1 (key version 1)");
    assert_rotated(&dev, &broker);
}

#[test]
fn a_key_in_a_keyslot_the_token_does_not_record_still_opens() {
    let dir = tempfile::tempdir().unwrap();
    let dev = bound_image(dir.path(), "unknown-slot.img");
    // K2 in keyslot 2, unknown to the token; the broker says v2 is current.
    {
        let mut d = Device::open(&dev).unwrap();
        assert_eq!(
            d.add_keyslot(PASSPHRASE, &K2, Pbkdf::MinimalPbkdf2)
                .unwrap(),
            2
        );
    }
    let broker = FakeBroker::rotating();
    {
        let mut st = broker.state();
        st.current = (2, K2);
        st.pending = None;
    }
    let r = run_to_end(&dev, &broker);
    assert_eq!(r.unlocked[0].keyslot, Some(2));
    assert_eq!(r.unlocked[0].key_version, Some(2));
    // It is recorded, and v1's keyslot (no longer released) removed.
    assert_eq!(r.rotation.len(), 1, "{:?}", r.rotation);
    assert!(r.rotation[0].ok);
    assert_rotated(&dev, &broker);
}

#[test]
fn a_keyslot_that_a_released_key_opens_is_never_removed() {
    let dir = tempfile::tempdir().unwrap();
    let dev = bound_image(dir.path(), "guarded.img");
    // K1 also in keyslot 2, which the token (wrongly) records as version 9,
    // a version the broker does not release.
    {
        let mut d = Device::open(&dev).unwrap();
        assert_eq!(
            d.add_keyslot(PASSPHRASE, &K1, Pbkdf::MinimalPbkdf2)
                .unwrap(),
            2
        );
        let t = BrokerToken::new(
            vec![sv(1, 1), sv(2, 9)],
            vec!["https://127.0.0.1:1".parse().unwrap()],
            VolumeId::new("root").unwrap(),
            vec![PIN.parse().unwrap()],
        );
        d.set_token(Some(0), &t.to_json()).unwrap();
    }
    let broker = FakeBroker::rotating();
    broker.state().pending = None;
    let r = run_to_end(&dev, &broker);
    assert_eq!(r.unlocked[0].keyslot, Some(1));
    assert!(r.rotation.is_empty(), "{:?}", r.rotation);
    // Keyslot 2 opens with the released key: kept. The passphrase keyslot,
    // which no token records, is never a candidate.
    let mut active = Device::open(&dev).unwrap().active_keyslots();
    active.sort_unstable();
    assert_eq!(active, [0, 1, 2]);
    assert_eq!(opens(&dev, PASSPHRASE), Some(0));
}

#[test]
fn cleanup_removes_nothing_unless_a_released_key_was_checked_to_open() {
    // The token records keyslot 1 as version 1; the broker now releases
    // only version 2. Without a keyslot checked in this run to open with
    // version 2, removing keyslot 1 could leave no broker key that opens
    // the volume: cleanup must refuse and leave the header as it is.
    let dir = tempfile::tempdir().unwrap();
    let dev = bound_image(dir.path(), "unanchored.img");
    let k2 = guest_unlock::flow::UnwrappedKey::new(
        VolumeId::new("root").unwrap(),
        2,
        KeyState::Current,
        zeroize::Zeroizing::new(K2.to_vec()),
    );
    let before = std::fs::read(&dev).unwrap();
    let err = guest_unlock::rotation::cleanup(
        &dev,
        &VolumeId::new("root").unwrap(),
        &[&k2],
        &[],
        &mut |_| ControlFlow::Continue(()),
    )
    .unwrap_err();
    assert!(
        matches!(err, guest_unlock::rotation::RotationError::Unsafe(_)),
        "{err:?}"
    );
    assert!(err.to_string().contains("key version 2"), "{err}");
    let mut active = Device::open(&dev).unwrap().active_keyslots();
    active.sort_unstable();
    assert_eq!(active, [0, 1]);
    assert!(std::fs::read(&dev).unwrap() == before, "header changed");
}

#[test]
fn dry_run_never_changes_the_header() {
    let dir = tempfile::tempdir().unwrap();
    let dev = bound_image(dir.path(), "dry.img");
    let before = std::fs::read(&dev).unwrap();
    let broker = FakeBroker::rotating();
    let targets = vec![target(&dev)];
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let r = unlock::unlock_targets(
        &targets,
        Mode::CheckOnly,
        &mut |_g, ids| {
            let s = Session::new(
                broker.clone(),
                "fake",
                tokio::time::Instant::now() + Duration::from_secs(10),
            );
            let (u, _rot) = rt.block_on(attest_session(s, &FakeEvidence, ids))?;
            Ok(Fetched::from(FetchOutcome {
                broker: "https://127.0.0.1:1".parse().unwrap(),
                keys: u.keys,
                denied: u.denied,
                decision_id: u.decision_id,
                refusal: None,
            }))
        },
        &mut (),
    );
    assert_eq!(r.unlocked.len(), 1);
    assert!(r.rotation.is_empty());
    assert!(std::fs::read(&dev).unwrap() == before, "the image changed");
}

// ------------------------------------------------------------ the real binary

/// The fake broker over gRPC and pinned TLS on loopback.
mod grpc {
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};
    use std::time::Duration;

    use guest_unlock::client::BrokerRpc;
    use keybroker_proto::pb;
    use keybroker_proto::pb::key_broker_server::{KeyBroker, KeyBrokerServer};
    use keybroker_proto::SpkiPin;
    use rcgen::PublicKeyData;
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
    use tonic::transport::server::Connected;
    use tonic::{Request, Response, Status};

    use super::FakeBroker;

    pub struct GrpcFake(pub FakeBroker);

    const T: Duration = Duration::from_secs(10);

    #[tonic::async_trait]
    impl KeyBroker for GrpcFake {
        async fn challenge(
            &self,
            req: Request<pb::ChallengeRequest>,
        ) -> Result<Response<pb::ChallengeResponse>, Status> {
            let mut b = self.0.clone();
            b.challenge(req.into_inner(), T).await.map(Response::new)
        }
        async fn attest(
            &self,
            req: Request<pb::AttestRequest>,
        ) -> Result<Response<pb::AttestResponse>, Status> {
            let mut b = self.0.clone();
            b.attest(req.into_inner(), T).await.map(Response::new)
        }
        async fn confirm_rotation(
            &self,
            req: Request<pb::ConfirmRotationRequest>,
        ) -> Result<Response<pb::ConfirmRotationResponse>, Status> {
            let mut b = self.0.clone();
            b.confirm_rotation(req.into_inner(), T)
                .await
                .map(Response::new)
        }
    }

    struct TlsIo(tokio_rustls::server::TlsStream<tokio::net::TcpStream>);

    impl Connected for TlsIo {
        type ConnectInfo = ();
        fn connect_info(&self) {}
    }

    impl AsyncRead for TlsIo {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for TlsIo {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Pin::new(&mut self.0).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }
        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }

    /// Serves `svc` over TLS 1.3 with a fresh self-signed certificate on a
    /// loopback port; returns the URL and the pin of the certificate's key.
    pub async fn serve(svc: GrpcFake) -> (String, SpkiPin) {
        let ck = rcgen::generate_simple_self_signed(vec!["broker.test".to_owned()]).unwrap();
        let pin = SpkiPin::of_spki(&ck.signing_key.subject_public_key_info());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![ck.cert.der().clone()], key)
            .unwrap();
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<TlsIo, std::io::Error>>(16);
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    if let Ok(s) = acceptor.accept(tcp).await {
                        let _ = tx.send(Ok(TlsIo(s))).await;
                    }
                });
            }
        });
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(KeyBrokerServer::new(svc))
                .serve_with_incoming(tokio_stream::wrappers::ReceiverStream::new(rx)),
        );
        (format!("https://127.0.0.1:{port}"), pin)
    }
}

/// `guest-unlock rotate` as a process, killed by `KEYBROKER_CRASH_AT` at
/// each crash point in turn; the next run (no variable) finishes the
/// rotation.
#[test]
fn the_binary_killed_at_each_crash_point_recovers() {
    use std::os::unix::process::ExitStatusExt as _;

    let dir = tempfile::tempdir().unwrap();
    let sim = dir.path().join("sim");
    guest_unlock::sim::SimPlatform::generate(&sim, &guest_unlock::sim::SimParams::default())
        .unwrap();
    let conf = dir.path().join("guest.toml");
    std::fs::write(
        &conf,
        format!("evidence = \"sim:{}\"\ntimeout_secs = 20\n", sim.display()),
    )
    .unwrap();
    let server_rt = tokio::runtime::Runtime::new().unwrap();
    let broker = FakeBroker::rotating();
    let (url, pin) = server_rt.block_on(grpc::serve(grpc::GrpcFake(broker.clone())));
    let run = |dev: &Path, crash_at: Option<&str>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_guest-unlock"));
        cmd.args(["rotate", "--config", conf.to_str().unwrap()])
            .arg(dev)
            .env_remove("KEYBROKER_CRASH_AT")
            .env_remove("RUST_LOG");
        if let Some(p) = crash_at {
            cmd.env("KEYBROKER_CRASH_AT", p);
        }
        cmd.output().unwrap()
    };
    for point in RotationStep::ALL {
        *broker.state() = BrokerState::rotating();
        let dev = bound_image_for(dir.path(), crash_point(point), &url, &pin.to_string());
        let out = run(&dev, Some(crash_point(point)));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.signal(), Some(9), "{point:?}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "guest-unlock: crash point {} reached",
                crash_point(point)
            )),
            "{stderr}"
        );
        // The event lines: the step, then the crash point, last.
        let events: Vec<&str> = stderr
            .lines()
            .filter_map(|l| l.strip_prefix("guest-unlock: event="))
            .collect();
        assert_eq!(
            events.last().copied(),
            Some(format!("crash-point v=1 point={}", crash_point(point)).as_str()),
            "{stderr}"
        );
        let step = format!(
            "rotation v=1 volume=root device={} step={}",
            dev.display(),
            point.name()
        );
        assert!(
            events[events.len() - 2].starts_with(&step),
            "{step}: {stderr}"
        );
        let current = broker.state().current.1;
        assert!(opens(&dev, &current).is_some(), "{point:?}");

        let out = run(&dev, None);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{point:?}: {stdout} {stderr}");
        assert!(stdout.contains("rotated root ("), "{point:?}: {stdout}");
        assert_rotated(&dev, &broker);
    }
    // A name that is no crash point never fires.
    *broker.state() = BrokerState::rotating();
    let dev = bound_image_for(dir.path(), "no-crash", &url, &pin.to_string());
    let out = run(&dev, Some("guest-after-nothing"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_rotated(&dev, &broker);
}

/// The search for the pending key's keyslot skips argon2 keyslots (a
/// passphrase's: seconds and much memory per try); guest-unlock's own
/// keyslots are PBKDF2.
#[test]
fn the_pending_key_is_not_tried_on_argon2_keyslots() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("argon.img");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let mut d = Device::format(&path).unwrap();
    assert_eq!(
        d.add_keyslot_after_format(&K1, Pbkdf::MinimalPbkdf2)
            .unwrap(),
        0
    );
    assert_eq!(d.add_keyslot(&K1, PASSPHRASE, Pbkdf::Default).unwrap(), 1);
    assert_eq!(d.add_keyslot(&K1, &K2, Pbkdf::MinimalPbkdf2).unwrap(), 2);
    drop(d);
    let mut d = Device::open(&path).unwrap();
    assert!(d.keyslot_is_pbkdf2(0));
    assert!(!d.keyslot_is_pbkdf2(1));
    assert!(d.keyslot_is_pbkdf2(2));
    assert!(!d.keyslot_is_pbkdf2(7), "inactive");
    let key = |k: &[u8; 64], version| {
        guest_unlock::UnwrappedKey::new(
            VolumeId::new("root").unwrap(),
            version,
            KeyState::Pending,
            zeroize::Zeroizing::new(k.to_vec()),
        )
    };
    // Not recorded anywhere: found among the PBKDF2 keyslots.
    assert_eq!(
        guest_unlock::rotation::find_slot(&mut d, &[], &key(&K2, 2)).unwrap(),
        Some(2)
    );
    // The passphrase is in an argon2 keyslot only: not found, by design.
    let pass_as_key = guest_unlock::UnwrappedKey::new(
        VolumeId::new("root").unwrap(),
        3,
        KeyState::Pending,
        zeroize::Zeroizing::new(PASSPHRASE.to_vec()),
    );
    assert_eq!(
        guest_unlock::rotation::find_slot(&mut d, &[], &pass_as_key).unwrap(),
        None
    );
}
