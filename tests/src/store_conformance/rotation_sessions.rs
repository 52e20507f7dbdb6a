//! Rotation sessions: lookup by nonce and volume, expiry, purge.

use broker::store::{RotationSessionLookup, RotationSessionRecord, Store, StoreError};

use super::nonce;

/// Sessions are found by nonce and volume while unexpired, then Expired,
/// then gone after a purge.
pub fn rotation_sessions_expire(store: &dyn Store) {
    let s = RotationSessionRecord {
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
    let other_vol = RotationSessionRecord {
        volume: "cf-sess-2".into(),
        version: 7,
        ..s.clone()
    };
    store.record_rotation_session(&other_vol).unwrap();
    assert_eq!(
        store.rotation_session(&s.nonce, "cf-sess", 999).unwrap(),
        RotationSessionLookup::Live(s.clone())
    );
    assert_eq!(
        store.rotation_session(&s.nonce, "cf-sess-2", 0).unwrap(),
        RotationSessionLookup::Live(other_vol)
    );
    assert_eq!(
        store.rotation_session(&s.nonce, "cf-sess", 1_000).unwrap(),
        RotationSessionLookup::Expired
    );
    assert_eq!(
        store
            .rotation_session(&nonce("session", 1), "cf-sess", 0)
            .unwrap(),
        RotationSessionLookup::Unknown
    );
    assert_eq!(
        store.rotation_session(&s.nonce, "cf-sess-3", 0).unwrap(),
        RotationSessionLookup::Unknown
    );
    let live = RotationSessionRecord {
        nonce: nonce("session", 2),
        expires_at: 50_000,
        ..s.clone()
    };
    store.record_rotation_session(&live).unwrap();
    assert!(store.purge_rotation_sessions(1_000).unwrap() >= 2);
    assert_eq!(
        store.rotation_session(&s.nonce, "cf-sess", 0).unwrap(),
        RotationSessionLookup::Unknown
    );
    assert_eq!(
        store
            .rotation_session(&live.nonce, "cf-sess", 1_000)
            .unwrap(),
        RotationSessionLookup::Live(live)
    );
}
