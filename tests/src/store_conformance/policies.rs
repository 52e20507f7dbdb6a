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
