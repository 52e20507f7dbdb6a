//! `broker audit prune --before DATE` (audit retention) through the admin
//! plane and the real executable: a date in the future, a malformed one
//! and a broken chain are refused, changing nothing; a prune is an audit
//! entry of kind `prune` naming its caller, leaves a chain that verifies,
//! and a broker whose checkpoint names a pruned entry still starts.

use broker::admin::{Admin, AdminErrorKind, Caller, ChainCheck};
use broker::store::{AuditEvent, AuditFilter};
use keybroker_tests::exe::run_in;
use keybroker_tests::{BrokerDir, BrokerOptions};

const T0: i64 = 1_700_000_000;

fn event(i: i64) -> AuditEvent {
    AuditEvent {
        at_unix: T0 + i,
        kind: "attest".into(),
        verdict: "deny".into(),
        volumes: vec!["root".into()],
        reason_codes: vec![],
        details_json: "{}".into(),
        client_addr: None,
    }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

#[test]
fn prune_through_the_admin_plane() {
    let dir = BrokerDir::create(&BrokerOptions::default()).unwrap();
    let cfg = dir.config().unwrap();
    let b = broker::wiring::broker(&cfg).unwrap();
    for i in 1..=5 {
        b.store().append_audit(&event(i)).unwrap();
    }
    b.advance_audit_anchor();
    let admin = Admin::new(b.store().clone(), b.keyring().clone());
    let head = b.store().audit_head().unwrap();

    // In the future: refused, nothing changed.
    let e = admin
        .audit_prune(&Caller::Local, now() + 3_600)
        .unwrap_err();
    assert_eq!(e.kind, AdminErrorKind::InvalidArgument);
    assert!(e.message.contains("in the future"), "{}", e.message);
    assert_eq!(b.store().audit_head().unwrap(), head);

    // Entries 1..3 are older than T0 + 4.
    let out = admin.audit_prune(&Caller::Local, T0 + 4).unwrap();
    assert_eq!((out.removed, out.first_kept), (3, 4));
    let entries = b.store().audit_entries(&AuditFilter::default()).unwrap();
    assert_eq!(
        entries.iter().map(|e| e.id.0).collect::<Vec<_>>(),
        vec![4, 5, 6]
    );
    let p = &entries[2].event;
    assert_eq!(p.kind, "prune");
    assert_eq!(p.client_addr.as_deref(), Some("local"));
    assert_eq!(admin.audit_verify().unwrap(), ChainCheck::Intact(3));

    // Everything up to now: the newest entry stays; the checkpoint's
    // entry (5) is gone, and the broker still starts on it.
    let out = admin.audit_prune(&Caller::Local, now()).unwrap();
    assert!(out.removed >= 2, "{out:?}");
    drop((admin, b));
    let b = broker::wiring::broker(&cfg).expect("starts after a prune past its checkpoint");
    let admin = Admin::new(b.store().clone(), b.keyring().clone());
    assert!(matches!(
        admin.audit_verify().unwrap(),
        ChainCheck::Intact(_)
    ));

    // A broken chain is not pruned: that would remove the evidence.
    let newest = b.store().audit_head().unwrap().0;
    drop((admin, b));
    let c = rusqlite::Connection::open(dir.dir.path().join("broker.db")).unwrap();
    c.execute_batch("DROP TRIGGER audit_no_update;").unwrap();
    c.execute("UPDATE audit SET verdict = 'deny' WHERE id = ?1", [newest])
        .unwrap();
    drop(c);
    let store = broker::wiring::keyed_store(&cfg).unwrap();
    let keyring = std::sync::Arc::new(broker::wiring::keyring(&cfg).unwrap());
    let admin = Admin::new(store.clone(), keyring);
    let before = store.audit_entries(&AuditFilter::default()).unwrap();
    let e = admin.audit_prune(&Caller::Local, now()).unwrap_err();
    assert_eq!(e.kind, AdminErrorKind::FailedPrecondition);
    assert!(e.message.contains("broken at entry"), "{}", e.message);
    assert_eq!(
        store.audit_entries(&AuditFilter::default()).unwrap(),
        before
    );
}

/// The executable refuses a malformed date (a usage error, naming the
/// forms) and a date in the future before it asks any broker.
#[test]
fn prune_refuses_malformed_and_future_dates() {
    let dir = BrokerDir::create(&BrokerOptions::default()).unwrap();
    let cfg = dir.config_path.to_str().unwrap();
    for bad in ["2025-13-01", "yesterday", "2025-06-01 00:00"] {
        let r = run_in(
            dir.dir.path(),
            &["audit", "prune", "--before", bad, "--config", cfg],
        );
        r.expect_code(2);
        assert!(
            r.stderr.contains("YYYY-MM-DD") && r.stderr.contains("RFC 3339"),
            "{bad}: {}",
            r.stderr
        );
    }
    let r = run_in(
        dir.dir.path(),
        &["audit", "prune", "--before", "2999-01-01", "--config", cfg],
    );
    r.expect_code(1);
    assert!(
        r.stderr.contains("in the future") && r.stderr.contains("nothing was changed"),
        "{}",
        r.stderr
    );
}
