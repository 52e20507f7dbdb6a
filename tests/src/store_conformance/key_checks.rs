//! Key-check values: recorded once per master key id, never replaced.

use broker::keys::MasterKeyId;
use broker::store::{KeyCheck, Store, StoreError};

/// Put, list, idempotent put, refused replacement.
pub fn key_checks_recorded_once(store: &dyn Store) {
    let a = KeyCheck {
        master_key_id: MasterKeyId::from_bytes([0xa1; 16]),
        kcv: [1; 32],
    };
    let b = KeyCheck {
        master_key_id: MasterKeyId::from_bytes([0xb2; 16]),
        kcv: [2; 32],
    };
    store.put_key_check(&a).unwrap();
    store.put_key_check(&b).unwrap();
    store.put_key_check(&a).unwrap();
    let all = store.key_checks().unwrap();
    assert!(all.contains(&a) && all.contains(&b), "{all:?}");
    assert_eq!(all.iter().filter(|c| **c == a).count(), 1);
    assert!(matches!(
        store.put_key_check(&KeyCheck {
            kcv: [9; 32],
            ..a.clone()
        }),
        Err(StoreError::Conflict(_))
    ));
    assert!(store.key_checks().unwrap().contains(&a));
}
