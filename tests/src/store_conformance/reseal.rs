//! Master key re-sealing: finding records, compare-and-set updates.

use broker::keys::{MasterKeyId, SealedKey};
use broker::store::{KeyState, ResealUpdate, SealedVersion, Store};

use super::{lifecycle_volume, sample_sealed};

/// `keys_not_under` finds records under other master keys; `reseal_batch`
/// updates a row only while it is still under the expected key.
pub fn reseal_batch_is_compare_and_set(store: &dyn Store) {
    lifecycle_volume(store, "cf-reseal", 0x60);
    store
        .add_pending_version("cf-reseal", 2, &sample_sealed(0x60))
        .unwrap();
    let old = sample_sealed(0x60).master_key_id;
    let new = MasterKeyId::from_bytes([0x61; 16]);
    let mine = |v: Vec<SealedVersion>| -> Vec<u32> {
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
