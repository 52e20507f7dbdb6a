//! Retention (`broker audit prune`): the oldest entries go, the newest
//! always stays, the chain verifies from an anchor MAC'd under the chain
//! key, and removing more from the front, or moving or removing the
//! anchor, breaks verification; pruning with nothing older changes
//! nothing.

use broker::audit_key;
use broker::keys::Keyring;
use broker::store::{AuditEvent, AuditFilter, Store, StoreError};

use super::audit_keyed::test_keyring;
use super::{FreshTamperable, Tamper};

fn event(at: i64) -> AuditEvent {
    AuditEvent {
        at_unix: at,
        kind: "attest".into(),
        verdict: "deny".into(),
        volumes: vec!["cf-prune".into()],
        reason_codes: vec![],
        details_json: "{}".into(),
        client_addr: None,
    }
}

/// Ten entries at times 1000..=1009 in a fresh keyed store; its keyring.
fn ten(store: &dyn Store) -> Keyring {
    let ring = test_keyring();
    audit_key::load(store, &ring, true).unwrap();
    for i in 0..10 {
        store.append_audit(&event(1_000 + i)).unwrap();
    }
    ring
}

fn ids(store: &dyn Store) -> Vec<i64> {
    store
        .audit_entries(&AuditFilter::default())
        .unwrap()
        .iter()
        .map(|e| e.id.0)
        .collect()
}

/// Prune, then verify; again with nothing older; then past every entry,
/// which keeps the newest. Each prune is an entry of kind `prune`.
pub fn audit_prune_keeps_a_verifiable_chain(fresh: &FreshTamperable<'_>) {
    let (store, _) = fresh();
    let store = store.as_ref();
    // Without the chain key a prune is refused.
    store.append_audit(&event(1)).unwrap();
    assert!(matches!(
        store.prune_audit(10, 2_000, None),
        Err(StoreError::Conflict(_))
    ));
    let (store, _) = fresh();
    let store = store.as_ref();
    let ring = ten(store);
    let head = store.audit_head().unwrap();
    // Nothing older than the first entry: nothing changes.
    let out = store.prune_audit(1_000, 2_000, None).unwrap();
    assert_eq!((out.removed, out.first_kept, out.entry), (0, 1, None));
    assert_eq!(store.audit_head().unwrap(), head);
    assert_eq!(store.audit_prune_anchor().unwrap(), None);
    assert_eq!(store.verify_audit_chain().unwrap(), 10);

    let out = store
        .prune_audit(1_005, 2_000, Some("uid=0".into()))
        .unwrap();
    assert_eq!((out.removed, out.first_kept), (5, 6));
    let entry = out.entry.unwrap();
    assert_eq!(entry.0, 11);
    assert_eq!(ids(store), (6..=11).collect::<Vec<_>>());
    let last = store.audit_entries(&AuditFilter::default()).unwrap();
    let p = &last.last().unwrap().event;
    assert_eq!((p.kind.as_str(), p.verdict.as_str()), ("prune", "allow"));
    let d: serde_json::Value = serde_json::from_str(&p.details_json).unwrap();
    assert_eq!(
        (&d["removed"], &d["before_unix"], &d["first_kept_id"]),
        (&5.into(), &1_005.into(), &6.into())
    );
    assert_eq!(p.client_addr.as_deref(), Some("uid=0"));
    assert_eq!(store.verify_audit_chain().unwrap(), 6);
    assert_eq!(store.verify_audit_from(1).unwrap(), 6);
    assert_eq!(store.verify_audit_from(9).unwrap(), 3);
    let anchor = store.audit_prune_anchor().unwrap().unwrap();
    assert_eq!(anchor.first_id, 6);

    // The same again: nothing older is left.
    let head = store.audit_head().unwrap();
    let out = store.prune_audit(1_005, 2_000, None).unwrap();
    assert_eq!((out.removed, out.first_kept, out.entry), (0, 6, None));
    assert_eq!(store.audit_head().unwrap(), head);
    assert_eq!(store.audit_prune_anchor().unwrap().unwrap(), anchor);

    // Past everything: the newest entry (the last prune's) stays.
    let out = store.prune_audit(1_000_000, 3_000, None).unwrap();
    assert_eq!((out.removed, out.first_kept), (5, 11));
    assert_eq!(ids(store), vec![11, 12]);
    assert_eq!(store.verify_audit_chain().unwrap(), 2);
    // Appends go on after a prune.
    store.append_audit(&event(4_000)).unwrap();
    assert_eq!(store.verify_audit_chain().unwrap(), 3);
    // A backup of the pruned store restores with its anchor and verifies
    // with the same master key.
    let (copy, _) = fresh();
    let copy = copy.as_ref();
    let snap = store.export_snapshot().unwrap();
    assert!(snap.audit_pruned.is_some() && snap.audit_key.is_some());
    copy.import_snapshot(&snap).unwrap();
    audit_key::load(copy, &ring, false).unwrap();
    assert_eq!(copy.verify_audit_chain().unwrap(), 3);
    assert_eq!(copy.export_snapshot().unwrap(), snap);
}

/// After a prune (entries 1..5 gone, the chain starting at 6): removing
/// one more old entry, moving the anchor forward over a removed entry, or
/// removing the anchor, is named by verification.
pub fn audit_prune_tamper_detected(fresh: &FreshTamperable<'_>) {
    let cases: [(&str, i64); 3] = [
        ("one more old entry removed", 6),
        ("the anchor moved forward over a removed entry", 7),
        ("the anchor removed", 1),
    ];
    for (case, at) in cases {
        let (store, edit) = fresh();
        let store = store.as_ref();
        ten(store);
        store.prune_audit(1_005, 2_000, None).unwrap();
        assert_eq!(store.verify_audit_chain().unwrap(), 6);
        match case {
            c if c.starts_with("one more") => edit(Tamper::Delete(6)),
            c if c.contains("moved forward") => {
                let e7 = &store.audit_entries(&AuditFilter::default()).unwrap()[1];
                edit(Tamper::SetPruneAnchor {
                    first_id: 7,
                    prev_hash: e7.prev_hash,
                });
                edit(Tamper::Delete(6));
            }
            _ => edit(Tamper::DeletePruneAnchor),
        }
        for (how, r) in [
            ("chain", store.verify_audit_chain()),
            ("tail", store.verify_audit_from(1)),
        ] {
            match r {
                Err(StoreError::AuditChain(e)) => assert_eq!(e.at_id, at, "{case} ({how}): {e}"),
                other => panic!("{case} ({how}): not detected: {other:?}"),
            }
        }
    }
}
