//! Lifecycle unit tests: volume rotation guards and display, purge by
//! retention, master rotation over files including resumed runs.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::*;
use crate::keys::{next_path, retired_path, MasterKey};
use crate::store::{NewVolume, PolicyStore, ResealStore, SqliteStore, VolumeStore};

fn store_with(names: &[&str], keyring: &Keyring) -> (SqliteStore, Vec<Vec<u8>>) {
    let store = SqliteStore::open_in_memory().unwrap();
    store.put_policy("p", "version = 1\n").unwrap();
    let mut keys = Vec::new();
    for n in names {
        let k = VolumeKey::generate();
        keys.push(k.expose_secret().to_vec());
        store
            .create_volume(
                &NewVolume {
                    name: (*n).into(),
                    policy: "p".into(),
                    description: String::new(),
                },
                &keyring.seal(n, 1, &k).unwrap(),
            )
            .unwrap();
    }
    (store, keys)
}

#[test]
fn rotate_cancel_and_state() {
    let ring = Keyring::from_key(MasterKey::generate().unwrap());
    let (store, _) = store_with(&["root"], &ring);
    let day = Duration::from_secs(86_400);
    let st = rotation_state(&store, "root", day).unwrap();
    assert_eq!(st.to_string(), "no rotation (current v1)");
    assert_eq!(rotate_volume(&store, &ring, "root").unwrap(), 2);
    let st = rotation_state(&store, "root", day).unwrap();
    assert_eq!(
        st.to_string(),
        "pending v2 awaiting the guest's proof (current v1)"
    );
    let err = rotate_volume(&store, &ring, "root").unwrap_err();
    assert!(
        matches!(err, LifecycleError::RotationPending { version: 2, .. }),
        "{err}"
    );
    // The error names the real command.
    assert!(
        err.to_string()
            .contains("`broker volume cancel-rotation root`"),
        "{err}"
    );
    assert_eq!(cancel_rotation(&store, "root").unwrap(), 2);
    let err = cancel_rotation(&store, "root").unwrap_err();
    assert!(
        matches!(err, LifecycleError::NoPendingRotation { .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("`broker volume show root`"),
        "{err}"
    );
    let err = rotate_volume(&store, &ring, "nope").unwrap_err();
    assert!(matches!(err, LifecycleError::UnknownVolume(_)), "{err}");
    assert!(err.to_string().contains("`broker volume list`"), "{err}");
    assert!(matches!(
        cancel_rotation(&store, "nope"),
        Err(LifecycleError::UnknownVolume(_))
    ));
    // The cancelled number is not reused.
    assert_eq!(rotate_volume(&store, &ring, "root").unwrap(), 3);
    store.promote_pending("root", 3).unwrap();
    let st = rotation_state(&store, "root", day * 30).unwrap();
    let retired = &st.retired[0];
    assert_eq!(retired.kept_until, retired.retired_at + 30 * 86_400);
    assert_eq!(
        st.to_string(),
        format!(
            "current v3, retired v1 kept until {}",
            date(retired.kept_until)
        )
    );
    assert_eq!(date(0), "1970-01-01");
}

#[test]
fn purge_respects_retention() {
    let ring = Keyring::from_key(MasterKey::generate().unwrap());
    let (store, _) = store_with(&["a", "b"], &ring);
    rotate_volume(&store, &ring, "a").unwrap();
    store.promote_pending("a", 2).unwrap();
    rotate_volume(&store, &ring, "b").unwrap();
    let now = OffsetDateTime::now_utc();
    let month = Duration::from_secs(30 * 86_400);
    assert!(purge_retired(&store, now, month).unwrap().is_empty());
    let later = now + time::Duration::days(31);
    let purged = purge_retired(&store, later, month).unwrap();
    assert_eq!(
        purged
            .iter()
            .map(|p| (p.volume.as_str(), p.version))
            .collect::<Vec<_>>(),
        vec![("a", 1)]
    );
    // The pending version of b and every current version remain.
    assert_eq!(store.key_versions("b").unwrap().len(), 2);
    assert_eq!(store.key_versions("a").unwrap().len(), 1);
}

#[test]
fn purge_of_one_volume_leaves_the_others() {
    let ring = Keyring::from_key(MasterKey::generate().unwrap());
    let (store, _) = store_with(&["a", "b"], &ring);
    for v in ["a", "b"] {
        rotate_volume(&store, &ring, v).unwrap();
        store.promote_pending(v, 2).unwrap();
    }
    let later = OffsetDateTime::now_utc() + time::Duration::days(31);
    let month = Duration::from_secs(30 * 86_400);
    let purged = purge_retired_volume(&store, "b", later, month).unwrap();
    assert_eq!(
        purged
            .iter()
            .map(|p| (p.volume.as_str(), p.version))
            .collect::<Vec<_>>(),
        vec![("b", 1)]
    );
    assert_eq!(store.key_versions("a").unwrap().len(), 2);
    assert!(matches!(
        purge_retired_volume(&store, "nope", later, month),
        Err(LifecycleError::UnknownVolume(_))
    ));
}

fn file_ring(dir: &Path) -> (std::path::PathBuf, Keyring) {
    let k = dir.join("master.key");
    MasterKey::generate_to_file(&k).unwrap();
    let ring = Keyring::load(&k).unwrap();
    (k, ring)
}

fn assert_all_unseal(store: &dyn Store, ring: &Keyring, names: &[String], keys: &[Vec<u8>]) {
    for (n, want) in names.iter().zip(keys) {
        let v = &store.key_versions(n).unwrap()[0];
        let got = ring.unseal(n, v.version, &v.sealed).unwrap();
        assert_eq!(got.expose_secret().as_slice(), want.as_slice(), "{n}");
    }
}

#[test]
fn master_rotation_over_files() {
    let dir = tempfile::tempdir().unwrap();
    let (k, ring) = file_ring(dir.path());
    let names: Vec<String> = (0..25).map(|i| format!("v{i:02}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let (store, keys) = store_with(&refs, &ring);
    let old = ring.current_id();
    let before = status(&store, &ring).unwrap();
    assert!(!before.rotation_under_way());
    assert_eq!(before.keys[0].records, 25);
    let mut seen = Vec::new();
    let out = rotate_master(&store, &ring, 7, &mut |p| seen.push(p.clone())).unwrap();
    assert_eq!((out.resealed, out.batches), (25, 4));
    assert_eq!(
        seen.iter().map(|p| p.resealed).collect::<Vec<_>>(),
        vec![7, 7, 7, 4]
    );
    assert_eq!(seen.last().unwrap().remaining, 0);
    assert_eq!(out.old, old);
    assert_ne!(out.new, old);
    // Files: K holds the new key, the old one is retired (0600), no .next.
    assert!(!next_path(&k).exists());
    let retired = retired_path(&k, old);
    assert_eq!(out.retired_file.as_deref(), Some(retired.as_path()));
    assert_eq!(MasterKey::load(&retired).unwrap().id(), old);
    let mode = std::fs::metadata(&retired).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let fresh = Keyring::load(&k).unwrap();
    assert_eq!(fresh.current_id(), out.new);
    assert_all_unseal(&store, &fresh, &names, &keys);
    assert_all_unseal(&store, &ring, &names, &keys);
    let after = status(&store, &fresh).unwrap();
    assert_eq!(after.keys.len(), 1);
    assert_eq!(after.keys[0].records, 25);
    assert!(after
        .to_string()
        .contains("no master key rotation under way"));
}

#[test]
fn master_rotation_resumes_after_a_crash_mid_batches_and_mid_retire() {
    let dir = tempfile::tempdir().unwrap();
    let (k, ring) = file_ring(dir.path());
    let names: Vec<String> = (0..10).map(|i| format!("r{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let (store, keys) = store_with(&refs, &ring);
    let old = ring.current_id();
    // A first run that "crashes" after re-sealing 3 records: .next exists.
    let next = ring.begin_rotation().unwrap();
    let batch = store.keys_not_under(next, 3).unwrap();
    let updates: Vec<_> = batch.iter().map(|r| resealed(&ring, r)).collect();
    assert_eq!(store.reseal_batch(&updates).unwrap(), 3);
    drop(ring);
    // A restarted broker loads both files and can unseal everything.
    let ring = Keyring::load(&k).unwrap();
    assert_eq!(ring.next_id(), Some(next));
    assert_all_unseal(&store, &ring, &names, &keys);
    let st = status(&store, &ring).unwrap();
    assert!(st.rotation_under_way());
    assert_eq!(
        st.keys.iter().map(|k| k.records).collect::<Vec<_>>(),
        vec![7, 3]
    );
    // "Crash" between the link and the rename: K old, K.next new, retired
    // link present. Loading still unseals everything; running again finishes.
    std::fs::hard_link(&k, retired_path(&k, old)).unwrap();
    let updates: Vec<_> = store
        .keys_not_under(next, 100)
        .unwrap()
        .iter()
        .map(|r| resealed(&ring, r))
        .collect();
    store.reseal_batch(&updates).unwrap();
    let ring = Keyring::load(&k).unwrap();
    assert_all_unseal(&store, &ring, &names, &keys);
    let out = rotate_master(&store, &ring, 4, &mut |_| {}).unwrap();
    assert_eq!((out.old, out.new, out.resealed), (old, next, 0));
    let ring = Keyring::load(&k).unwrap();
    assert_eq!(ring.current_id(), next);
    assert_eq!(ring.next_id(), None);
    assert_all_unseal(&store, &ring, &names, &keys);
}

/// Re-seals one record to the keyring's sealing key (test helper).
fn resealed(ring: &Keyring, r: &crate::store::SealedVersion) -> crate::store::ResealUpdate {
    let key = ring.unseal(&r.volume, r.version, &r.sealed).unwrap();
    crate::store::ResealUpdate {
        volume: r.volume.clone(),
        version: r.version,
        from: r.sealed.master_key_id,
        sealed: ring.seal(&r.volume, r.version, &key).unwrap(),
    }
}

#[test]
fn a_running_broker_picks_up_a_rotation_started_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let (k, serving) = file_ring(dir.path());
    let (store, keys) = store_with(&["root"], &serving);
    // Another process (the admin) rotates the master key completely.
    let admin = Keyring::load(&k).unwrap();
    rotate_master(&store, &admin, 100, &mut |_| {}).unwrap();
    assert!(!serving.has(admin.current_id()));
    // The serving keyring re-reads the files on a miss.
    assert_all_unseal(&store, &serving, &["root".into()], &keys);
    assert_eq!(serving.current_id(), admin.current_id());
}

#[cfg(feature = "failpoints")]
#[test]
fn failpoint_is_inert_without_the_variable() {
    // The test process does not set KEYBROKER_CRASH_AT.
    assert!(std::env::var(failpoint::ENV).is_err());
    failpoint::init();
    failpoint::hit("confirm-before-promote");
    assert!(!failpoint::armed());
}
