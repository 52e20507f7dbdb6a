//! Used nonces: burnt once, one winner of a race, kept until their
//! expiry, then purged by upkeep.

use std::sync::Barrier;

use broker::store::{NonceBurn, Store};

use super::nonce;

/// A nonce burns once; every later burn is AlreadyUsed, whatever expiry
/// it names.
pub fn nonce_single_use(store: &dyn Store) {
    let n = nonce("single", 0);
    assert_eq!(store.burn_nonce(&n, 1_000).unwrap(), NonceBurn::Burnt);
    assert_eq!(store.burn_nonce(&n, 1_000).unwrap(), NonceBurn::AlreadyUsed);
    assert_eq!(store.burn_nonce(&n, 9_000).unwrap(), NonceBurn::AlreadyUsed);
    let other = nonce("single", 1);
    assert_eq!(store.burn_nonce(&other, 1_000).unwrap(), NonceBurn::Burnt);
}

/// Eight threads burn one nonce at once: exactly one Burnt, seven
/// AlreadyUsed; repeated for several nonces.
pub fn nonce_race_exactly_one_fresh(store: &dyn Store) {
    const THREADS: usize = 8;
    for round in 0..20 {
        let n = nonce("race", round);
        let barrier = Barrier::new(THREADS);
        let outcomes: Vec<NonceBurn> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..THREADS)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        store.burn_nonce(&n, i64::MAX).unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let burnt = outcomes.iter().filter(|o| **o == NonceBurn::Burnt).count();
        assert_eq!(burnt, 1, "round {round}: {outcomes:?}");
    }
}

/// Purge removes records whose expiry has come (`expires_at <= now`) and
/// keeps the others, which still refuse a second burn.
pub fn nonce_purge(store: &dyn Store) {
    let old = nonce("purge", 0);
    let edge = nonce("purge", 1);
    let live = nonce("purge", 2);
    store.burn_nonce(&old, 5).unwrap();
    store.burn_nonce(&edge, 10).unwrap();
    store.burn_nonce(&live, 10_000).unwrap();
    let before = store.used_nonce_count().unwrap();
    assert!(store.purge_used_nonces(10).unwrap() >= 2);
    assert_eq!(store.used_nonce_count().unwrap(), before - 2);
    assert_eq!(
        store.burn_nonce(&live, 10_000).unwrap(),
        NonceBurn::AlreadyUsed
    );
    // A purged record is gone: the nonce's own expiry refuses it now
    // (`broker::nonce`), not the store.
    assert_eq!(store.burn_nonce(&old, 5).unwrap(), NonceBurn::Burnt);
}

/// `maintain` purges expired records and keeps live ones.
pub fn maintain_purges_expired_nonces(store: &dyn Store) {
    let old = nonce("maintain", 0);
    let fresh = nonce("maintain", 1);
    store.burn_nonce(&old, 1_000).unwrap();
    store.burn_nonce(&fresh, 5_000).unwrap();
    assert!(store.maintain(2_000).unwrap() >= 1);
    assert_eq!(store.burn_nonce(&old, 1_000).unwrap(), NonceBurn::Burnt);
    assert_eq!(
        store.burn_nonce(&fresh, 5_000).unwrap(),
        NonceBurn::AlreadyUsed
    );
}
