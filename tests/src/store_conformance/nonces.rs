//! Nonces: single use, one winner of a race, expiry, purge, upkeep.

use std::sync::Barrier;

use broker::store::{NonceOutcome, Store, StoreError};

use super::nonce;

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

/// `maintain` removes expired nonces and keeps fresh ones usable.
pub fn maintain_purges_expired_nonces(store: &dyn Store) {
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
