//! The audit log: ids, filters, the hash chain, and tampering detected.

use broker::store::{AuditEvent, AuditFilter, Store, StoreError};

fn event(at: i64, verdict: &str, volumes: &[&str], reasons: &[&str]) -> AuditEvent {
    AuditEvent {
        at_unix: at,
        kind: "attest".into(),
        verdict: verdict.into(),
        volumes: volumes.iter().map(|s| s.to_string()).collect(),
        reason_codes: reasons.iter().map(|s| s.to_string()).collect(),
        details_json: format!("{{\"measurement\":\"{at:x}\"}}"),
        client_addr: Some("192.0.2.1:4000".into()),
    }
}

/// Appends get increasing ids, filters select, the chain verifies, and bad
/// verdicts are refused.
pub fn audit_append_filter_and_chain(store: &dyn Store) {
    let before = store.verify_audit_chain().unwrap();
    let a = store
        .append_audit(&event(1_000_000, "allow", &["cf-aud-a"], &[]))
        .unwrap();
    let b = store
        .append_audit(&event(
            1_000_010,
            "deny",
            &["cf-aud-a", "cf-aud-b"],
            &["POLICY_DEBUG_ALLOWED", "POLICY_VMPL_TOO_HIGH"],
        ))
        .unwrap();
    let mut ch = event(1_000_020, "error", &["cf-aud-b"], &["STORE_UNAVAILABLE"]);
    ch.kind = "challenge".into();
    ch.client_addr = None;
    let c = store.append_audit(&ch).unwrap();
    assert!(a < b && b < c);
    assert_eq!(b.0, a.0 + 1);
    assert_eq!(store.verify_audit_chain().unwrap(), before + 3);

    let f = |filter: AuditFilter| -> Vec<i64> {
        store
            .audit_entries(&filter)
            .unwrap()
            .into_iter()
            .map(|e| e.id.0)
            .collect()
    };
    assert_eq!(
        f(AuditFilter {
            volume: Some("cf-aud-a".into()),
            ..Default::default()
        }),
        vec![a.0, b.0]
    );
    assert_eq!(
        f(AuditFilter {
            volume: Some("cf-aud-b".into()),
            verdict: Some("deny".into()),
            ..Default::default()
        }),
        vec![b.0]
    );
    assert_eq!(
        f(AuditFilter {
            volume: Some("cf-aud".into()),
            ..Default::default()
        }),
        Vec::<i64>::new(),
        "volume filter matches whole names only"
    );
    assert_eq!(
        f(AuditFilter {
            since_unix: Some(1_000_010),
            until_unix: Some(1_000_020),
            ..Default::default()
        }),
        vec![b.0]
    );
    assert_eq!(
        f(AuditFilter {
            kind: Some("challenge".into()),
            after_id: Some(a.0),
            ..Default::default()
        }),
        vec![c.0]
    );
    assert_eq!(
        f(AuditFilter {
            after_id: Some(a.0),
            limit: Some(1),
            ..Default::default()
        }),
        vec![b.0]
    );
    assert_eq!(
        f(AuditFilter {
            newest_first: true,
            limit: Some(2),
            ..Default::default()
        }),
        vec![c.0, b.0],
        "newest first, limited"
    );
    assert_eq!(
        f(AuditFilter {
            before_id: Some(c.0),
            newest_first: true,
            limit: Some(2),
            ..Default::default()
        }),
        vec![b.0, a.0],
        "paging backward from an id"
    );
    assert_eq!(
        f(AuditFilter {
            after_id: Some(a.0),
            before_id: Some(c.0),
            ..Default::default()
        }),
        vec![b.0]
    );
    let got = store
        .audit_entries(&AuditFilter {
            after_id: Some(a.0),
            limit: Some(2),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(got[0].event.reason_codes.len(), 2);
    assert_eq!(got[1].event, ch);
    assert_eq!(got[1].prev_hash, got[0].hash);
    assert_eq!(
        got[1].hash,
        broker::store::chain_hash(
            store.installed_audit_key().as_deref(),
            &got[0].hash,
            got[1].id.0,
            &ch
        )
    );

    for bad_verdict in ["ALLOW", "", "maybe"] {
        let mut e = event(1, "allow", &[], &[]);
        e.verdict = bad_verdict.into();
        assert!(matches!(
            store.append_audit(&e),
            Err(StoreError::InvalidInput { .. })
        ));
    }
    let mut e = event(1, "allow", &[], &[]);
    e.kind = "Attest Now".into();
    assert!(store.append_audit(&e).is_err());
    assert_eq!(store.verify_audit_chain().unwrap(), before + 3);
}

/// A direct change to the backend, for [`audit_tamper_detected`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tamper {
    /// Change the verdict of entry `id` to "allow".
    ChangeVerdict(i64),
    /// Change the details of entry `id`.
    ChangeDetails(i64),
    /// Delete entry `id`.
    Delete(i64),
    /// Swap the positions of entries `a` and `b` (their ids exchanged).
    Swap(i64, i64),
    /// Delete the last entry.
    DeleteLast,
    /// Set entry `id`'s verdict and hashes.
    SetEntry {
        /// The entry.
        id: i64,
        /// Its new verdict.
        verdict: &'static str,
        /// Its new `prev_hash`.
        prev_hash: [u8; 32],
        /// Its new `hash`.
        hash: [u8; 32],
    },
    /// Set the chain head.
    SetHead {
        /// Last id.
        id: i64,
        /// Last hash.
        hash: [u8; 32],
    },
    /// Set where the keyed chain starts, in the chain key record.
    SetKeyRecord {
        /// The new `keyed_from`.
        keyed_from: i64,
        /// The new boundary hash.
        boundary: [u8; 32],
    },
    /// Delete the chain key record.
    DeleteKeyRecord,
    /// Set the prune anchor's first entry and link (its MAC kept).
    SetPruneAnchor {
        /// The new first entry.
        first_id: i64,
        /// The new link.
        prev_hash: [u8; 32],
    },
    /// Delete the prune anchor.
    DeletePruneAnchor,
}

/// A fresh, empty store and a hook that edits its backend directly.
pub type Tamperable = (Box<dyn Store>, Box<dyn Fn(Tamper)>);

/// Makes a [`Tamperable`].
pub type FreshTamperable<'a> = dyn Fn() -> Tamperable + 'a;

/// For each kind of tampering: a fresh store (from `fresh`) gets five
/// entries, `tamper` edits its backend, and `verify_audit_chain` must fail,
/// at the expected entry.
pub fn audit_tamper_detected(fresh: &FreshTamperable<'_>) {
    let cases = [
        (Tamper::ChangeVerdict(3), 3),
        (Tamper::ChangeDetails(1), 1),
        (Tamper::Delete(2), 2),
        (Tamper::Swap(2, 4), 2),
        (Tamper::DeleteLast, 5),
    ];
    for (tamper, at) in cases {
        let (store, edit) = fresh();
        for i in 0..5 {
            let id = store
                .append_audit(&event(2_000 + i, "deny", &["t"], &["POLICY_X"]))
                .unwrap();
            assert_eq!(id.0, i + 1, "a fresh store numbers entries from 1");
        }
        assert_eq!(store.verify_audit_chain().unwrap(), 5);
        edit(tamper);
        match store.verify_audit_chain() {
            Err(StoreError::AuditChain(e)) => {
                assert_eq!(e.at_id, at, "{tamper:?}: {e}");
                assert!(!e.what.is_empty());
            }
            other => panic!("{tamper:?} not detected: {other:?}"),
        }
    }
}

/// Appends from several threads at once (several replicas, on a shared
/// database) form one chain without gaps, and it verifies.
pub fn audit_concurrent_appends_one_chain(store: &dyn Store) {
    const THREADS: i64 = 6;
    const EACH: i64 = 20;
    let before = store.verify_audit_chain().unwrap();
    let ids: Vec<i64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                s.spawn(move || {
                    (0..EACH)
                        .map(|i| {
                            store
                                .append_audit(&event(
                                    3_000_000 + t * 100 + i,
                                    "deny",
                                    &["cf-conc"],
                                    &[],
                                ))
                                .unwrap()
                                .0
                        })
                        .collect::<Vec<i64>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len() as i64, THREADS * EACH, "ids handed out twice");
    assert_eq!(
        store.verify_audit_chain().unwrap(),
        before + (THREADS * EACH) as u64
    );
}
