//! The keyed audit chain: a store from before the chain was keyed upgrades
//! in place (old entries stay plain and verify, new ones are MAC'd under a
//! key sealed by the master key), two openers make one key, and a database
//! writer without the master key cannot rewrite the chain, recompute it
//! (with plain SHA-256 or a key of their own), move where the keyed chain
//! starts, or remove the key record, without `verify_audit_chain` naming
//! the entry, in the whole chain and in its tail from that entry on (the
//! check at start). No checkpoint file is involved: the chain alone
//! catches it.

use broker::audit_key;
use broker::keys::{AuditChainKey, Keyring, MasterKey};
use broker::store::{
    audit_entry_hash, keyed_audit_entry_hash, AuditEvent, AuditFilter, AuditKeyInsert, ChainKeying,
    Store, StoreError, GENESIS_HASH,
};

use super::{FreshTamperable, Tamper};

fn event(at: i64, verdict: &str) -> AuditEvent {
    AuditEvent {
        at_unix: at,
        kind: "attest".into(),
        verdict: verdict.into(),
        volumes: vec!["cf-keyed".into()],
        reason_codes: vec![],
        details_json: "{}".into(),
        client_addr: None,
    }
}

/// A keyring of one fresh in-memory master key.
pub fn test_keyring() -> Keyring {
    Keyring::from_key(MasterKey::generate().unwrap())
}

/// On a store with plain entries and no chain key: the first load with the
/// master key makes the key, keyed from the entry after the head; the
/// plain entries still verify, new ones are keyed; loading again (another
/// process) finds the same key; a master rotation's re-seal keeps it
/// usable under the new master key alone.
pub fn audit_chain_key_upgrade(store: &dyn Store) {
    let ring = test_keyring();
    if store.audit_key_record().unwrap().is_none() {
        store.append_audit(&event(4_000_000, "deny")).unwrap();
    }
    let before = store.verify_audit_chain().unwrap();
    let (head_id, head_hash) = store.audit_head().unwrap();
    let from = audit_key::load(store, &ring, true).unwrap().unwrap();
    let record = store.audit_key_record().unwrap().unwrap();
    assert_eq!(record.keyed_from, from);
    if from == head_id + 1 {
        assert_eq!(record.boundary, head_hash);
    }
    let id = store.append_audit(&event(4_000_001, "allow")).unwrap();
    let e = &store
        .audit_entries(&AuditFilter {
            after_id: Some(id.0 - 1),
            limit: Some(1),
            ..Default::default()
        })
        .unwrap()[0];
    assert_ne!(
        e.hash,
        audit_entry_hash(&e.prev_hash, e.id.0, &e.event),
        "a new entry is not plain SHA-256"
    );
    let installed = store.installed_audit_key().unwrap();
    assert_eq!(
        e.hash,
        keyed_audit_entry_hash(&installed, &e.prev_hash, e.id.0, &e.event)
    );
    assert_eq!(store.verify_audit_chain().unwrap(), before + 1);
    assert_eq!(store.verify_audit_from(id.0).unwrap(), 1, "the tail alone");
    assert_eq!(store.verify_audit_from(1).unwrap(), before + 1);
    // Another opener: the same record, not a second key.
    assert_eq!(audit_key::load(store, &ring, true).unwrap(), Some(from));
    assert_eq!(store.audit_key_record().unwrap().unwrap(), record);
    assert!(matches!(
        store.insert_audit_key(&record).unwrap(),
        AuditKeyInsert::Exists(r) if r == record
    ));
    // A key of the wrong master key does not unseal it.
    assert!(audit_key::load(store, &test_keyring(), false).is_err());
    // Master rotation: re-sealed under the new key, which alone opens it.
    let new = MasterKey::generate().unwrap();
    assert!(audit_key::reseal(store, &ring, None, &new).unwrap());
    let after = store.audit_key_record().unwrap().unwrap();
    assert_eq!(after.sealed.master_key_id, new.id());
    assert_eq!(
        (after.keyed_from, after.boundary),
        (record.keyed_from, record.boundary)
    );
    let new_ring = Keyring::from_key(new);
    assert_eq!(
        audit_key::load(store, &new_ring, false).unwrap(),
        Some(from)
    );
    assert_eq!(store.verify_audit_chain().unwrap(), before + 1);
    store.append_audit(&event(4_000_002, "deny")).unwrap();
    assert_eq!(store.verify_audit_chain().unwrap(), before + 2);
}

/// How an attacker computes an entry's hash: previous hash, id, content.
type EntryHash<'a> = &'a dyn Fn(&[u8; 32], i64, &AuditEvent) -> [u8; 32];

/// Rewrites entries `from..` of `store`'s chain: `verdict` for entry
/// `changed`, every hash recomputed from entry `from` on by `hash`,
/// through `edit`; returns the new hash of the last one rewritten.
fn recompute(
    store: &dyn Store,
    edit: &dyn Fn(Tamper),
    from: i64,
    to: i64,
    changed: i64,
    hash: EntryHash<'_>,
) -> [u8; 32] {
    let entries = store.audit_entries(&AuditFilter::default()).unwrap();
    let mut prev = entries
        .iter()
        .find(|e| e.id.0 == from - 1)
        .map_or(GENESIS_HASH, |e| e.hash);
    for e in entries.iter().filter(|e| (from..=to).contains(&e.id.0)) {
        let mut ev = e.event.clone();
        if e.id.0 == changed {
            ev.verdict = "allow".into();
        }
        let h = hash(&prev, e.id.0, &ev);
        edit(Tamper::SetEntry {
            id: e.id.0,
            verdict: if e.id.0 == changed { "allow" } else { "deny" },
            prev_hash: prev,
            hash: h,
        });
        prev = h;
    }
    prev
}

/// For each rewrite a database writer without the master key could make,
/// a fresh store (from `fresh`) with three plain entries, then its chain
/// key (keyed from 4), then three keyed entries: `verify_audit_chain`
/// fails, naming the entry.
pub fn audit_keyed_tamper_detected(fresh: &FreshTamperable<'_>) {
    type Case = (&'static str, i64);
    let cases: [Case; 6] = [
        ("allow->deny recomputed with plain SHA-256", 5),
        ("allow->deny recomputed with a made-up HMAC key", 5),
        ("a plain entry rewritten, the plain prefix recomputed", 3),
        (
            "keyed_from moved past the head, the rest recomputed plain",
            4,
        ),
        ("the key record removed, everything recomputed plain", 4),
        ("the newest keyed entry rewritten, head fixed up", 6),
    ];
    for (case, at) in cases {
        let (store, edit) = fresh();
        let store = store.as_ref();
        for i in 1..=3 {
            store.append_audit(&event(5_000 + i, "deny")).unwrap();
        }
        assert_eq!(
            audit_key::load(store, &test_keyring(), true).unwrap(),
            Some(4)
        );
        for i in 4..=6 {
            store.append_audit(&event(5_000 + i, "deny")).unwrap();
        }
        assert_eq!(store.verify_audit_chain().unwrap(), 6);
        let plain = |p: &[u8; 32], id: i64, e: &AuditEvent| audit_entry_hash(p, id, e);
        let made_up = ChainKeying::new(&AuditChainKey::generate().unwrap(), 1, GENESIS_HASH);
        let forged =
            |p: &[u8; 32], id: i64, e: &AuditEvent| keyed_audit_entry_hash(&made_up, p, id, e);
        let head = match case {
            c if c.contains("plain SHA-256") => recompute(store, &*edit, 5, 6, 5, &plain),
            c if c.contains("made-up") => recompute(store, &*edit, 5, 6, 5, &forged),
            c if c.contains("plain prefix") => {
                let h3 = recompute(store, &*edit, 2, 3, 2, &plain);
                // Entry 4 linked to the new prefix too.
                let e4 = &store.audit_entries(&AuditFilter::default()).unwrap()[3];
                edit(Tamper::SetEntry {
                    id: 4,
                    verdict: "deny",
                    prev_hash: h3,
                    hash: e4.hash,
                });
                store.audit_head().unwrap().1
            }
            c if c.contains("keyed_from moved") => {
                let h = recompute(store, &*edit, 4, 6, 5, &plain);
                edit(Tamper::SetKeyRecord {
                    keyed_from: 7,
                    boundary: h,
                });
                h
            }
            c if c.contains("removed") => {
                edit(Tamper::DeleteKeyRecord);
                recompute(store, &*edit, 1, 6, 5, &plain)
            }
            _ => recompute(store, &*edit, 6, 6, 6, &plain),
        };
        edit(Tamper::SetHead { id: 6, hash: head });
        match store.verify_audit_chain() {
            Err(StoreError::AuditChain(e)) => {
                assert_eq!(e.at_id, at, "{case}: {e}");
            }
            other => panic!("{case}: not detected: {other:?}"),
        }
        // The check of the tail from that entry on (as at start) too.
        match store.verify_audit_from(at) {
            Err(StoreError::AuditChain(e)) => {
                assert_eq!(e.at_id, at, "{case}, tail: {e}");
            }
            other => panic!("{case}: not detected from entry {at}: {other:?}"),
        }
    }
}

/// Verification reads the chain in pages of [`broker::store::VERIFY_PAGE`]
/// entries (bounded memory): a log of two pages and a bit verifies, and an
/// entry changed just after a page boundary, or one removed just before
/// it, is still named.
pub fn audit_verify_crosses_pages(fresh: &FreshTamperable<'_>) {
    let page = i64::from(broker::store::VERIFY_PAGE);
    let total = 2 * page + 5;
    for (tamper, at) in [
        (None, 0),
        (Some(Tamper::ChangeVerdict(page + 1)), page + 1),
        (Some(Tamper::Delete(page)), page),
    ] {
        let (store, edit) = fresh();
        let store = store.as_ref();
        audit_key::load(store, &test_keyring(), true).unwrap();
        for i in 0..total {
            store.append_audit(&event(6_000 + i, "deny")).unwrap();
        }
        assert_eq!(store.verify_audit_chain().unwrap(), total as u64);
        let Some(t) = tamper else { continue };
        edit(t);
        match store.verify_audit_chain() {
            Err(StoreError::AuditChain(e)) => assert_eq!(e.at_id, at, "{t:?}: {e}"),
            other => panic!("{t:?}: not detected: {other:?}"),
        }
    }
}
