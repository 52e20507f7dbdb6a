//! Policies: revisions and deletion.

use broker::store::{Store, StoreError};

use super::POLICY_TEXT;

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

/// `put_policy_at` compares and sets the revision: a write based on a
/// stale revision is a `Conflict` and changes nothing, and of writers
/// racing from one revision exactly one wins.
pub fn policy_compare_and_set(store: &dyn Store) {
    let text = |tag: &str| format!("version = 1\n# {tag}\n");
    assert_eq!(store.put_policy_at("cf-cas", &text("a"), 0).unwrap(), 1);
    assert!(matches!(
        store.put_policy_at("cf-cas", &text("again"), 0),
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.put_policy_at("cf-cas", &text("b"), 1).unwrap(), 2);
    match store.put_policy_at("cf-cas", &text("stale"), 1) {
        Err(StoreError::Conflict(m)) => assert!(m.contains("revision 1"), "{m}"),
        other => panic!("a stale revision was accepted: {other:?}"),
    }
    let p = store.get_policy("cf-cas").unwrap().unwrap();
    assert_eq!((p.revision, p.text.as_str()), (2, text("b").as_str()));
    assert!(store.get_policy_revision("cf-cas", 3).unwrap().is_none());

    const THREADS: usize = 6;
    let barrier = std::sync::Barrier::new(THREADS);
    let results: Vec<Result<i64, StoreError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|i| {
                let (barrier, t) = (&barrier, text(&format!("racer {i}")));
                s.spawn(move || {
                    barrier.wait();
                    store.put_policy_at("cf-cas", &t, 2)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let won: Vec<i64> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().copied())
        .collect();
    assert_eq!(won, vec![3], "{results:?}");
    assert!(results
        .iter()
        .all(|r| matches!(r, Ok(3) | Err(StoreError::Conflict(_)))));
    assert_eq!(store.get_policy("cf-cas").unwrap().unwrap().revision, 3);
}
