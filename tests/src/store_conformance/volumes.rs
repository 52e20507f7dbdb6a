//! Volumes and key versions: life cycle, guards, races, one-snapshot reads,
//! purging retired versions.

use std::sync::Barrier;

use broker::store::{KeyState, NewVolume, PurgedVersion, Store, StoreError};

use super::{lifecycle_volume, sample_sealed, states, POLICY_TEXT};

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

/// `release_view` agrees with the separate reads and hides retired keys.
pub fn release_view_is_one_snapshot(store: &dyn Store) {
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
