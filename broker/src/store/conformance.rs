//! The conformance suite every [`Store`] implementation must pass.
//!
//! Each function panics (assert) on a violation, so an implementation's
//! tests call [`run_all`] on a fresh store, and [`audit_tamper_detected`]
//! with a hook that edits the backend directly. Names are unique per
//! function, so the functions can share one store.
#![doc(hidden)]

use std::sync::Barrier;

use super::{
    AuditEvent, AuditFilter, KeyState, NewVolume, NonceOutcome, PurgedVersion, ResealUpdate,
    RotationSession, SessionLookup, Store, StoreError,
};
use crate::keys::{MasterKeyId, SealedKey};

/// Runs every backend-independent property on `store`.
pub fn run_all(store: &dyn Store) {
    nonce_single_use(store);
    nonce_race_exactly_one_fresh(store);
    nonce_expiry_and_unknown(store);
    nonce_purge(store);
    policies_crud(store);
    volumes_crud(store);
    duplicate_volume_refused(store);
    volume_needs_existing_policy(store);
    names_validated(store);
    key_rotation_states(store);
    audit_append_filter_and_chain(store);
    release_view_is_one_snapshot(store);
    maintain_purges_expired_nonces(store);
    pending_without_proof_stays_pending(store);
    concurrent_promotions_one_wins(store);
    cancel_pending_rules(store);
    rotation_sessions_expire(store);
    reseal_batch_is_compare_and_set(store);
    // Last: it destroys every retired version older than its cutoff.
    purge_retired_respects_cutoff(store);
}

fn lifecycle_volume(store: &dyn Store, name: &str, fill: u8) {
    store.put_policy("cf-life-pol", POLICY_TEXT).unwrap();
    store
        .create_volume(
            &NewVolume {
                name: name.into(),
                policy: "cf-life-pol".into(),
                description: String::new(),
            },
            &sample_sealed(fill),
        )
        .unwrap();
}

fn states(store: &dyn Store, name: &str) -> Vec<(u32, KeyState)> {
    store
        .key_versions(name)
        .unwrap()
        .iter()
        .map(|k| (k.version, k.state))
        .collect()
}

/// A pending version whose proof never arrives stays pending: time,
/// upkeep and other volumes' promotions do not change it.
pub fn pending_without_proof_stays_pending(store: &dyn Store) {
    lifecycle_volume(store, "cf-wait", 0x30);
    lifecycle_volume(store, "cf-wait-other", 0x32);
    store
        .add_pending_version("cf-wait", 2, &sample_sealed(0x31))
        .unwrap();
    store
        .add_pending_version("cf-wait-other", 2, &sample_sealed(0x33))
        .unwrap();
    store.promote_pending("cf-wait-other", 2).unwrap();
    store.maintain(i64::MAX - 1).unwrap();
    store.purge_rotation_sessions(i64::MAX - 1).unwrap();
    assert_eq!(
        states(store, "cf-wait"),
        vec![(1, KeyState::Current), (2, KeyState::Pending)]
    );
    let keys = store.key_versions("cf-wait").unwrap();
    assert_eq!(keys[0].retired_at, None);
    assert_eq!(keys[1].retired_at, None);
    let other = store.key_versions("cf-wait-other").unwrap();
    assert!(other[0].retired_at.is_some(), "promotion sets retired_at");
    assert_eq!(other[1].retired_at, None);
}

/// Eight threads promote the same pending version: exactly one wins, the
/// others get `Conflict`, and the volume ends with one current version.
pub fn concurrent_promotions_one_wins(store: &dyn Store) {
    const THREADS: usize = 8;
    for round in 0..5u8 {
        let name = format!("cf-race-{round}");
        lifecycle_volume(store, &name, 0x40 + round);
        store
            .add_pending_version(&name, 2, &sample_sealed(0x48 + round))
            .unwrap();
        let barrier = Barrier::new(THREADS);
        let results: Vec<Result<(), StoreError>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..THREADS)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        store.promote_pending(&name, 2)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let won = results.iter().filter(|r| r.is_ok()).count();
        let conflicts = results
            .iter()
            .filter(|r| matches!(r, Err(StoreError::Conflict(_))))
            .count();
        assert_eq!((won, conflicts), (1, THREADS - 1), "{results:?}");
        assert_eq!(
            states(store, &name),
            vec![(1, KeyState::Retired), (2, KeyState::Current)]
        );
    }
}

/// Cancelling deletes only the pending version, and its number is not
/// handed out again.
pub fn cancel_pending_rules(store: &dyn Store) {
    lifecycle_volume(store, "cf-cancel", 0x50);
    assert!(matches!(
        store.cancel_pending("cf-cancel"),
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store.cancel_pending("cf-cancel-none"),
        Err(StoreError::NotFound { what: "volume", .. })
    ));
    store
        .add_pending_version("cf-cancel", 2, &sample_sealed(0x51))
        .unwrap();
    let err = store
        .add_pending_version("cf-cancel", 3, &sample_sealed(0x52))
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict(m) if m.contains("pending key version 2")),
        "{err}"
    );
    assert_eq!(store.next_key_version("cf-cancel").unwrap(), 3);
    assert_eq!(store.cancel_pending("cf-cancel").unwrap(), 2);
    assert_eq!(store.next_key_version("cf-cancel").unwrap(), 3);
    assert!(matches!(
        store.next_key_version("cf-cancel-none"),
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(states(store, "cf-cancel"), vec![(1, KeyState::Current)]);
    assert_eq!(
        store.key_versions("cf-cancel").unwrap()[0].sealed,
        sample_sealed(0x50)
    );
    // Version 2 is spent: the next rotation is version 3.
    assert!(matches!(
        store.add_pending_version("cf-cancel", 2, &sample_sealed(0x53)),
        Err(StoreError::Conflict(_))
    ));
    store
        .add_pending_version("cf-cancel", 3, &sample_sealed(0x53))
        .unwrap();
    assert_eq!(
        states(store, "cf-cancel"),
        vec![(1, KeyState::Current), (3, KeyState::Pending)]
    );
}

/// Sessions are found by nonce and volume while unexpired, then Expired,
/// then gone after a purge.
pub fn rotation_sessions_expire(store: &dyn Store) {
    let s = RotationSession {
        nonce: nonce("session", 0),
        volume: "cf-sess".into(),
        version: 4,
        report_data: [0x5a; 64],
        expires_at: 1_000,
    };
    store.record_rotation_session(&s).unwrap();
    assert!(matches!(
        store.record_rotation_session(&s),
        Err(StoreError::AlreadyExists { .. })
    ));
    let other_vol = RotationSession {
        volume: "cf-sess-2".into(),
        version: 7,
        ..s.clone()
    };
    store.record_rotation_session(&other_vol).unwrap();
    assert_eq!(
        store.rotation_session(&s.nonce, "cf-sess", 999).unwrap(),
        SessionLookup::Live(s.clone())
    );
    assert_eq!(
        store.rotation_session(&s.nonce, "cf-sess-2", 0).unwrap(),
        SessionLookup::Live(other_vol)
    );
    assert_eq!(
        store.rotation_session(&s.nonce, "cf-sess", 1_000).unwrap(),
        SessionLookup::Expired
    );
    assert_eq!(
        store
            .rotation_session(&nonce("session", 1), "cf-sess", 0)
            .unwrap(),
        SessionLookup::Unknown
    );
    assert_eq!(
        store.rotation_session(&s.nonce, "cf-sess-3", 0).unwrap(),
        SessionLookup::Unknown
    );
    let live = RotationSession {
        nonce: nonce("session", 2),
        expires_at: 50_000,
        ..s.clone()
    };
    store.record_rotation_session(&live).unwrap();
    assert!(store.purge_rotation_sessions(1_000).unwrap() >= 2);
    assert_eq!(
        store.rotation_session(&s.nonce, "cf-sess", 0).unwrap(),
        SessionLookup::Unknown
    );
    assert_eq!(
        store
            .rotation_session(&live.nonce, "cf-sess", 1_000)
            .unwrap(),
        SessionLookup::Live(live)
    );
}

/// `keys_not_under` finds records under other master keys; `reseal_batch`
/// updates a row only while it is still under the expected key.
pub fn reseal_batch_is_compare_and_set(store: &dyn Store) {
    lifecycle_volume(store, "cf-reseal", 0x60);
    store
        .add_pending_version("cf-reseal", 2, &sample_sealed(0x60))
        .unwrap();
    let old = sample_sealed(0x60).master_key_id;
    let new = MasterKeyId::from_bytes([0x61; 16]);
    let mine = |v: Vec<super::SealedVersion>| -> Vec<u32> {
        v.into_iter()
            .filter(|k| k.volume == "cf-reseal")
            .map(|k| k.version)
            .collect()
    };
    assert_eq!(mine(store.keys_not_under(new, 10_000).unwrap()), vec![1, 2]);
    assert!(store.keys_not_under(new, 1).unwrap().len() <= 1);
    let usage = store.master_key_usage().unwrap();
    let u = usage.iter().find(|u| u.id == old).unwrap();
    assert!(u.records >= 2);
    let resealed = |v: u32, from: MasterKeyId| ResealUpdate {
        volume: "cf-reseal".into(),
        version: v,
        from,
        sealed: SealedKey {
            master_key_id: new,
            nonce: [v as u8; 12],
            ciphertext: vec![0x62; 80],
        },
    };
    // Wrong expected id: nothing applies.
    assert_eq!(store.reseal_batch(&[resealed(1, new)]).unwrap(), 0);
    assert_eq!(
        store
            .reseal_batch(&[resealed(1, old), resealed(2, old)])
            .unwrap(),
        2
    );
    // Repeating the batch (a second run, or a concurrent one) applies nothing.
    assert_eq!(
        store
            .reseal_batch(&[resealed(1, old), resealed(2, old)])
            .unwrap(),
        0
    );
    assert!(mine(store.keys_not_under(new, 10_000).unwrap()).is_empty());
    let keys = store.key_versions("cf-reseal").unwrap();
    assert_eq!(keys[0].sealed, resealed(1, old).sealed);
    assert_eq!(keys[1].state, KeyState::Pending, "states are untouched");
    let usage = store.master_key_usage().unwrap();
    assert_eq!(usage.iter().find(|u| u.id == new).unwrap().records, 2);
    store.sync_durable().unwrap();
}

/// Only retired versions retired strictly before the cutoff are destroyed.
pub fn purge_retired_respects_cutoff(store: &dyn Store) {
    lifecycle_volume(store, "cf-purge", 0x70);
    store
        .add_pending_version("cf-purge", 2, &sample_sealed(0x71))
        .unwrap();
    store.promote_pending("cf-purge", 2).unwrap();
    store
        .add_pending_version("cf-purge", 3, &sample_sealed(0x72))
        .unwrap();
    let retired_at = store.key_versions("cf-purge").unwrap()[0]
        .retired_at
        .expect("retired_at set");
    let purged = store.purge_retired(retired_at).unwrap();
    assert!(!purged.iter().any(|p| p.volume == "cf-purge"), "{purged:?}");
    // One volume only: another volume's retired versions are not touched,
    // an unknown volume is NotFound.
    lifecycle_volume(store, "cf-purge-other", 0x73);
    store
        .add_pending_version("cf-purge-other", 2, &sample_sealed(0x74))
        .unwrap();
    store.promote_pending("cf-purge-other", 2).unwrap();
    let other_retired_at = store.key_versions("cf-purge-other").unwrap()[0]
        .retired_at
        .expect("retired_at set");
    let purged = store
        .purge_retired_volume("cf-purge-other", other_retired_at + 1)
        .unwrap();
    assert_eq!(
        purged,
        vec![PurgedVersion {
            volume: "cf-purge-other".into(),
            version: 1,
            retired_at: other_retired_at,
        }]
    );
    assert_eq!(store.key_versions("cf-purge").unwrap().len(), 3);
    assert!(matches!(
        store.purge_retired_volume("cf-no-such-volume", i64::MAX),
        Err(StoreError::NotFound { what: "volume", .. })
    ));
    assert_eq!(store.key_versions("cf-purge").unwrap().len(), 3);
    let purged = store.purge_retired(retired_at + 1).unwrap();
    let mine: Vec<_> = purged.iter().filter(|p| p.volume == "cf-purge").collect();
    assert_eq!(mine.len(), 1);
    assert_eq!((mine[0].version, mine[0].retired_at), (1, retired_at));
    assert_eq!(
        states(store, "cf-purge"),
        vec![(2, KeyState::Current), (3, KeyState::Pending)]
    );
    // Nothing but retired versions is ever purged, whatever the cutoff.
    store.purge_retired(i64::MAX).unwrap();
    assert_eq!(
        states(store, "cf-purge"),
        vec![(2, KeyState::Current), (3, KeyState::Pending)]
    );
    for v in store.list_volumes().unwrap() {
        assert!(store
            .key_versions(&v.name)
            .unwrap()
            .iter()
            .all(|k| k.state != KeyState::Retired));
    }
}

/// `release_view` agrees with the separate reads and hides retired keys.
fn release_view_is_one_snapshot(store: &dyn Store) {
    store.put_policy("rv-policy", "version = 1\n").unwrap();
    store
        .create_volume(
            &NewVolume {
                name: "rv-vol".into(),
                policy: "rv-policy".into(),
                description: "snapshot".into(),
            },
            &sample_sealed(9),
        )
        .unwrap();
    let view = store
        .release_view("rv-vol")
        .unwrap()
        .expect("volume exists");
    assert_eq!(
        Some(view.volume.clone()),
        store.get_volume("rv-vol").unwrap()
    );
    assert_eq!(view.policy, store.get_policy("rv-policy").unwrap());
    assert_eq!(view.keys, store.releasable_keys("rv-vol").unwrap());
    assert_eq!(view.keys.len(), 1);
    assert!(store.release_view("rv-missing").unwrap().is_none());
    // A rotation: pending appears beside current; once promoted, the old
    // version is retired and no longer releasable.
    store
        .add_pending_version("rv-vol", 2, &sample_sealed(10))
        .unwrap();
    let v: Vec<u32> = store
        .release_view("rv-vol")
        .unwrap()
        .unwrap()
        .keys
        .iter()
        .map(|k| k.version)
        .collect();
    assert_eq!(v, vec![1, 2]);
    store.promote_pending("rv-vol", 2).unwrap();
    let v: Vec<u32> = store
        .release_view("rv-vol")
        .unwrap()
        .unwrap()
        .keys
        .iter()
        .map(|k| k.version)
        .collect();
    assert_eq!(v, vec![2]);
}

/// `maintain` removes expired nonces and keeps fresh ones usable.
fn maintain_purges_expired_nonces(store: &dyn Store) {
    let old = nonce("maintain", 0);
    let fresh = nonce("maintain", 1);
    store.insert_nonce(&old, &["v".into()], 1_000).unwrap();
    store.insert_nonce(&fresh, &["v".into()], 5_000).unwrap();
    assert!(store.maintain(2_000).unwrap() >= 1);
    assert_eq!(
        store.consume_nonce(&old, 2_000).unwrap(),
        NonceOutcome::Unknown
    );
    assert!(matches!(
        store.consume_nonce(&fresh, 2_000).unwrap(),
        NonceOutcome::Fresh { .. }
    ));
}

fn nonce(tag: &str, i: u32) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        format!("conformance/{tag}/{i}").as_bytes(),
    );
    let mut n = [0u8; 32];
    n.copy_from_slice(d.as_ref());
    n
}

/// A sealed record with recognisable, non-secret bytes.
pub fn sample_sealed(fill: u8) -> SealedKey {
    SealedKey {
        master_key_id: MasterKeyId::from_bytes([fill; 16]),
        nonce: [fill.wrapping_add(1); 12],
        ciphertext: vec![fill.wrapping_add(2); 80],
    }
}

const POLICY_TEXT: &str = "version = 1\n# conformance\n";

/// A nonce is Fresh once, then AlreadyUsed; volumes come back in order.
pub fn nonce_single_use(store: &dyn Store) {
    let n = nonce("single", 0);
    let vols = vec!["b-vol".to_string(), "a-vol".to_string()];
    store.insert_nonce(&n, &vols, 1_000).unwrap();
    assert!(matches!(
        store.insert_nonce(&n, &vols, 1_000),
        Err(StoreError::AlreadyExists { .. })
    ));
    assert_eq!(
        store.consume_nonce(&n, 999).unwrap(),
        NonceOutcome::Fresh { volumes: vols }
    );
    assert_eq!(
        store.consume_nonce(&n, 999).unwrap(),
        NonceOutcome::AlreadyUsed
    );
    // Still used after its expiry has also passed.
    assert_eq!(
        store.consume_nonce(&n, 5_000).unwrap(),
        NonceOutcome::AlreadyUsed
    );
    let empty = nonce("single", 1);
    store.insert_nonce(&empty, &[], 1_000).unwrap();
    assert_eq!(
        store.consume_nonce(&empty, 0).unwrap(),
        NonceOutcome::Fresh { volumes: vec![] }
    );
}

/// Eight threads consume one nonce at once: exactly one Fresh, seven
/// AlreadyUsed; repeated for several nonces.
pub fn nonce_race_exactly_one_fresh(store: &dyn Store) {
    const THREADS: usize = 8;
    for round in 0..20 {
        let n = nonce("race", round);
        store.insert_nonce(&n, &["v".into()], i64::MAX).unwrap();
        let barrier = Barrier::new(THREADS);
        let outcomes: Vec<NonceOutcome> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..THREADS)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        store.consume_nonce(&n, 0).unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let fresh = outcomes
            .iter()
            .filter(|o| matches!(o, NonceOutcome::Fresh { .. }))
            .count();
        let used = outcomes
            .iter()
            .filter(|o| **o == NonceOutcome::AlreadyUsed)
            .count();
        assert_eq!(
            (fresh, used),
            (1, THREADS - 1),
            "round {round}: {outcomes:?}"
        );
    }
}

/// Valid while `now < expires_at`; an expired nonce is not burnt into
/// Fresh later; unknown nonces are Unknown.
pub fn nonce_expiry_and_unknown(store: &dyn Store) {
    let n = nonce("expiry", 0);
    store.insert_nonce(&n, &["v".into()], 100).unwrap();
    assert_eq!(store.consume_nonce(&n, 100).unwrap(), NonceOutcome::Expired);
    assert_eq!(store.consume_nonce(&n, 101).unwrap(), NonceOutcome::Expired);
    // A refusal for expiry does not burn the nonce: expiry is judged
    // against the caller's clock, and at an earlier time it is still valid.
    assert!(matches!(
        store.consume_nonce(&n, 99).unwrap(),
        NonceOutcome::Fresh { .. }
    ));
    assert_eq!(
        store.consume_nonce(&nonce("expiry", 1), 0).unwrap(),
        NonceOutcome::Unknown
    );
}

/// Purge removes expired nonces only; a purged nonce is Unknown.
pub fn nonce_purge(store: &dyn Store) {
    let old = nonce("purge", 0);
    let live = nonce("purge", 1);
    store.insert_nonce(&old, &[], 10).unwrap();
    store.insert_nonce(&live, &[], 10_000).unwrap();
    assert!(store.purge_nonces(10).unwrap() >= 1);
    assert_eq!(store.consume_nonce(&old, 5).unwrap(), NonceOutcome::Unknown);
    assert!(matches!(
        store.consume_nonce(&live, 10).unwrap(),
        NonceOutcome::Fresh { .. }
    ));
}

/// put/get/list/revisions/delete of policies.
pub fn policies_crud(store: &dyn Store) {
    assert!(store.get_policy("cf-pol").unwrap().is_none());
    assert_eq!(store.put_policy("cf-pol", "version = 1\n# a\n").unwrap(), 1);
    assert_eq!(store.put_policy("cf-pol", "version = 1\n# b\n").unwrap(), 2);
    let p = store.get_policy("cf-pol").unwrap().unwrap();
    assert_eq!((p.name.as_str(), p.revision), ("cf-pol", 2));
    assert_eq!(p.text, "version = 1\n# b\n");
    let r1 = store.get_policy_revision("cf-pol", 1).unwrap().unwrap();
    assert_eq!(r1.text, "version = 1\n# a\n");
    assert!(store.get_policy_revision("cf-pol", 3).unwrap().is_none());
    store.put_policy("cf-pol-0", POLICY_TEXT).unwrap();
    let names: Vec<String> = store
        .list_policies()
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    let a = names.iter().position(|n| n == "cf-pol").unwrap();
    let b = names.iter().position(|n| n == "cf-pol-0").unwrap();
    assert!(a < b, "policies listed by name: {names:?}");
    store.delete_policy("cf-pol-0").unwrap();
    assert!(store.get_policy("cf-pol-0").unwrap().is_none());
    assert!(matches!(
        store.delete_policy("cf-pol-0"),
        Err(StoreError::NotFound { what: "policy", .. })
    ));
}

/// Volumes: create, get, list, enable/disable, policy change, delete rules.
pub fn volumes_crud(store: &dyn Store) {
    store.put_policy("cf-vpol", POLICY_TEXT).unwrap();
    store.put_policy("cf-vpol2", POLICY_TEXT).unwrap();
    let sealed = sample_sealed(1);
    store
        .create_volume(
            &NewVolume {
                name: "cf-vol".into(),
                policy: "cf-vpol".into(),
                description: "root disk".into(),
            },
            &sealed,
        )
        .unwrap();
    let v = store.get_volume("cf-vol").unwrap().unwrap();
    assert_eq!(
        (
            v.name.as_str(),
            v.policy.as_str(),
            v.description.as_str(),
            v.enabled
        ),
        ("cf-vol", "cf-vpol", "root disk", true)
    );
    assert!(store.get_volume("cf-none").unwrap().is_none());
    assert!(store
        .list_volumes()
        .unwrap()
        .iter()
        .any(|v| v.name == "cf-vol"));
    let keys = store.key_versions("cf-vol").unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!((keys[0].version, keys[0].state), (1, KeyState::Current));
    assert_eq!(keys[0].sealed, sealed);
    assert_eq!(store.releasable_keys("cf-vol").unwrap(), keys);
    assert!(matches!(
        store.key_versions("cf-none"),
        Err(StoreError::NotFound { what: "volume", .. })
    ));
    assert!(matches!(
        store.releasable_keys("cf-none"),
        Err(StoreError::NotFound { what: "volume", .. })
    ));

    // A policy in use cannot be deleted.
    assert!(matches!(
        store.delete_policy("cf-vpol"),
        Err(StoreError::Conflict(_))
    ));
    store.set_volume_policy("cf-vol", "cf-vpol2").unwrap();
    assert_eq!(
        store.get_volume("cf-vol").unwrap().unwrap().policy,
        "cf-vpol2"
    );
    assert!(matches!(
        store.set_volume_policy("cf-vol", "cf-nopol"),
        Err(StoreError::NotFound { what: "policy", .. })
    ));

    // Enabled volumes cannot be deleted; disabled ones can, with their keys.
    assert!(matches!(
        store.delete_volume("cf-vol"),
        Err(StoreError::Conflict(_))
    ));
    store.set_volume_enabled("cf-vol", false).unwrap();
    assert!(!store.get_volume("cf-vol").unwrap().unwrap().enabled);
    store.set_volume_enabled("cf-vol", true).unwrap();
    assert!(store.get_volume("cf-vol").unwrap().unwrap().enabled);
    store.set_volume_enabled("cf-vol", false).unwrap();
    assert!(matches!(
        store.set_volume_enabled("cf-none", false),
        Err(StoreError::NotFound { .. })
    ));
    store.delete_volume("cf-vol").unwrap();
    assert!(store.get_volume("cf-vol").unwrap().is_none());
    assert!(matches!(
        store.key_versions("cf-vol"),
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.delete_volume("cf-vol"),
        Err(StoreError::NotFound { .. })
    ));
    // Re-creating starts again at version 1 with the new key only.
    store
        .create_volume(
            &NewVolume {
                name: "cf-vol".into(),
                policy: "cf-vpol".into(),
                description: String::new(),
            },
            &sample_sealed(9),
        )
        .unwrap();
    let keys = store.key_versions("cf-vol").unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].sealed, sample_sealed(9));
}

/// A second volume of the same name is AlreadyExists and changes nothing.
pub fn duplicate_volume_refused(store: &dyn Store) {
    store.put_policy("cf-dpol", POLICY_TEXT).unwrap();
    let nv = NewVolume {
        name: "cf-dup".into(),
        policy: "cf-dpol".into(),
        description: "first".into(),
    };
    store.create_volume(&nv, &sample_sealed(3)).unwrap();
    let again = NewVolume {
        description: "second".into(),
        ..nv
    };
    assert!(matches!(
        store.create_volume(&again, &sample_sealed(4)),
        Err(StoreError::AlreadyExists { what: "volume", .. })
    ));
    assert_eq!(
        store.get_volume("cf-dup").unwrap().unwrap().description,
        "first"
    );
    assert_eq!(
        store.key_versions("cf-dup").unwrap()[0].sealed,
        sample_sealed(3)
    );
}

/// A volume naming a missing policy is refused.
pub fn volume_needs_existing_policy(store: &dyn Store) {
    let r = store.create_volume(
        &NewVolume {
            name: "cf-orphan".into(),
            policy: "cf-missing-policy".into(),
            description: String::new(),
        },
        &sample_sealed(5),
    );
    assert!(
        matches!(r, Err(StoreError::NotFound { what: "policy", .. })),
        "{r:?}"
    );
    assert!(store.get_volume("cf-orphan").unwrap().is_none());
}

/// Bad names are refused before anything is written.
pub fn names_validated(store: &dyn Store) {
    for bad in ["", "a b", "a/b", "é", "x\n", &"a".repeat(129)] {
        assert!(
            matches!(
                store.put_policy(bad, POLICY_TEXT),
                Err(StoreError::InvalidInput { .. })
            ),
            "{bad:?}"
        );
    }
    store.put_policy("cf-npol", POLICY_TEXT).unwrap();
    let r = store.create_volume(
        &NewVolume {
            name: "bad name".into(),
            policy: "cf-npol".into(),
            description: String::new(),
        },
        &sample_sealed(0),
    );
    assert!(matches!(r, Err(StoreError::InvalidInput { .. })));
    assert!(store.put_policy(&"a".repeat(128), POLICY_TEXT).is_ok());
}

/// Pending → current → retired, with the guards rotation relies on.
pub fn key_rotation_states(store: &dyn Store) {
    store.put_policy("cf-rpol", POLICY_TEXT).unwrap();
    store
        .create_volume(
            &NewVolume {
                name: "cf-rot".into(),
                policy: "cf-rpol".into(),
                description: String::new(),
            },
            &sample_sealed(10),
        )
        .unwrap();
    // Only version 2 may come next.
    assert!(matches!(
        store.add_pending_version("cf-rot", 3, &sample_sealed(11)),
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store.add_pending_version("cf-rot", 1, &sample_sealed(11)),
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store.add_pending_version("cf-none", 2, &sample_sealed(11)),
        Err(StoreError::NotFound { .. })
    ));
    // Promoting the current version, or one that does not exist, is refused.
    assert!(matches!(
        store.promote_pending("cf-rot", 1),
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store.promote_pending("cf-rot", 2),
        Err(StoreError::NotFound { .. })
    ));
    store
        .add_pending_version("cf-rot", 2, &sample_sealed(11))
        .unwrap();
    // One pending at a time.
    assert!(matches!(
        store.add_pending_version("cf-rot", 3, &sample_sealed(12)),
        Err(StoreError::Conflict(_))
    ));
    let rel = store.releasable_keys("cf-rot").unwrap();
    assert_eq!(
        rel.iter().map(|k| (k.version, k.state)).collect::<Vec<_>>(),
        vec![(1, KeyState::Current), (2, KeyState::Pending)]
    );
    store.promote_pending("cf-rot", 2).unwrap();
    assert!(matches!(
        store.promote_pending("cf-rot", 2),
        Err(StoreError::Conflict(_))
    ));
    let all = store.key_versions("cf-rot").unwrap();
    assert_eq!(
        all.iter().map(|k| (k.version, k.state)).collect::<Vec<_>>(),
        vec![(1, KeyState::Retired), (2, KeyState::Current)]
    );
    assert_eq!(all[1].sealed, sample_sealed(11));
    let rel = store.releasable_keys("cf-rot").unwrap();
    assert_eq!(
        rel.iter().map(|k| (k.version, k.state)).collect::<Vec<_>>(),
        vec![(2, KeyState::Current)]
    );
    store
        .add_pending_version("cf-rot", 3, &sample_sealed(12))
        .unwrap();
    assert_eq!(store.releasable_keys("cf-rot").unwrap().len(), 2);
}

fn event(at: i64, verdict: &str, volumes: &[&str], reasons: &[&str]) -> AuditEvent {
    AuditEvent {
        at_unix: at,
        kind: "attest".into(),
        verdict: verdict.into(),
        volumes: volumes.iter().map(|s| s.to_string()).collect(),
        reason_codes: reasons.iter().map(|s| s.to_string()).collect(),
        details_json: format!("{{\"measurement\":\"{at:x}\"}}"),
        client_addr: Some("192.0.2.1:4000".into()),
    }
}

/// Appends get increasing ids, filters select, the chain verifies, and bad
/// verdicts are refused.
pub fn audit_append_filter_and_chain(store: &dyn Store) {
    let before = store.verify_audit_chain().unwrap();
    let a = store
        .append_audit(&event(1_000_000, "allow", &["cf-aud-a"], &[]))
        .unwrap();
    let b = store
        .append_audit(&event(
            1_000_010,
            "deny",
            &["cf-aud-a", "cf-aud-b"],
            &["POLICY_DEBUG_ALLOWED", "POLICY_VMPL_TOO_HIGH"],
        ))
        .unwrap();
    let mut ch = event(1_000_020, "error", &["cf-aud-b"], &["STORE_UNAVAILABLE"]);
    ch.kind = "challenge".into();
    ch.client_addr = None;
    let c = store.append_audit(&ch).unwrap();
    assert!(a < b && b < c);
    assert_eq!(b.0, a.0 + 1);
    assert_eq!(store.verify_audit_chain().unwrap(), before + 3);

    let f = |filter: AuditFilter| -> Vec<i64> {
        store
            .audit_entries(&filter)
            .unwrap()
            .into_iter()
            .map(|e| e.id.0)
            .collect()
    };
    assert_eq!(
        f(AuditFilter {
            volume: Some("cf-aud-a".into()),
            ..Default::default()
        }),
        vec![a.0, b.0]
    );
    assert_eq!(
        f(AuditFilter {
            volume: Some("cf-aud-b".into()),
            verdict: Some("deny".into()),
            ..Default::default()
        }),
        vec![b.0]
    );
    assert_eq!(
        f(AuditFilter {
            volume: Some("cf-aud".into()),
            ..Default::default()
        }),
        Vec::<i64>::new(),
        "volume filter matches whole names only"
    );
    assert_eq!(
        f(AuditFilter {
            since_unix: Some(1_000_010),
            until_unix: Some(1_000_020),
            ..Default::default()
        }),
        vec![b.0]
    );
    assert_eq!(
        f(AuditFilter {
            kind: Some("challenge".into()),
            after_id: Some(a.0),
            ..Default::default()
        }),
        vec![c.0]
    );
    assert_eq!(
        f(AuditFilter {
            after_id: Some(a.0),
            limit: Some(1),
            ..Default::default()
        }),
        vec![b.0]
    );
    let got = store
        .audit_entries(&AuditFilter {
            after_id: Some(a.0),
            limit: Some(2),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(got[0].event.reason_codes.len(), 2);
    assert_eq!(got[1].event, ch);
    assert_eq!(got[1].prev_hash, got[0].hash);
    assert_eq!(
        got[1].hash,
        super::audit_entry_hash(&got[0].hash, got[1].id.0, &ch)
    );

    for bad_verdict in ["ALLOW", "", "maybe"] {
        let mut e = event(1, "allow", &[], &[]);
        e.verdict = bad_verdict.into();
        assert!(matches!(
            store.append_audit(&e),
            Err(StoreError::InvalidInput { .. })
        ));
    }
    let mut e = event(1, "allow", &[], &[]);
    e.kind = "Attest Now".into();
    assert!(store.append_audit(&e).is_err());
    assert_eq!(store.verify_audit_chain().unwrap(), before + 3);
}

/// A direct change to the backend, for [`audit_tamper_detected`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tamper {
    /// Change the verdict of entry `id` to "allow".
    ChangeVerdict(i64),
    /// Change the details of entry `id`.
    ChangeDetails(i64),
    /// Delete entry `id`.
    Delete(i64),
    /// Swap the positions of entries `a` and `b` (their ids exchanged).
    Swap(i64, i64),
    /// Delete the last entry.
    DeleteLast,
}

/// Makes a fresh, empty store and a hook that edits its backend directly.
pub type FreshTamperable<'a> = dyn Fn() -> (Box<dyn Store>, Box<dyn Fn(Tamper)>) + 'a;

/// For each kind of tampering: a fresh store (from `fresh`) gets five
/// entries, `tamper` edits its backend, and `verify_audit_chain` must fail,
/// at the expected entry.
pub fn audit_tamper_detected(fresh: &FreshTamperable<'_>) {
    let cases = [
        (Tamper::ChangeVerdict(3), 3),
        (Tamper::ChangeDetails(1), 1),
        (Tamper::Delete(2), 2),
        (Tamper::Swap(2, 4), 2),
        (Tamper::DeleteLast, 5),
    ];
    for (tamper, at) in cases {
        let (store, edit) = fresh();
        for i in 0..5 {
            let id = store
                .append_audit(&event(2_000 + i, "deny", &["t"], &["POLICY_X"]))
                .unwrap();
            assert_eq!(id.0, i + 1, "a fresh store numbers entries from 1");
        }
        assert_eq!(store.verify_audit_chain().unwrap(), 5);
        edit(tamper);
        match store.verify_audit_chain() {
            Err(StoreError::AuditChain(e)) => {
                assert_eq!(e.at_id, at, "{tamper:?}: {e}");
                assert!(!e.what.is_empty());
            }
            other => panic!("{tamper:?} not detected: {other:?}"),
        }
    }
}
