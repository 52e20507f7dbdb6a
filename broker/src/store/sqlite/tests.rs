//! SQLite-specific store tests: append-only audit at the SQL level, corrupt
//! rows, file mode, persistence, migrations, cross-process nonce races. (The
//! conformance suite runs against SQLite from the test kit:
//! `tests/tests/store_conformance.rs`.)

use std::os::unix::fs::PermissionsExt;
use std::sync::Barrier;

use super::schema::{MIGRATIONS, SCHEMA_VERSION};
use crate::keys::{MasterKeyId, SealedKey};
use crate::store::*;

/// A sealed record with recognisable, non-secret bytes.
fn sample_sealed(fill: u8) -> SealedKey {
    SealedKey {
        master_key_id: MasterKeyId::from_bytes([fill; 16]),
        nonce: [fill.wrapping_add(1); 12],
        ciphertext: vec![fill.wrapping_add(2); 80],
    }
}

#[test]
fn audit_is_append_only_at_the_sql_level() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    let store = SqliteStore::open(&path).unwrap();
    store
        .append_audit(&AuditEvent {
            at_unix: 1,
            kind: "attest".into(),
            verdict: "deny".into(),
            volumes: vec![],
            reason_codes: vec![],
            details_json: "{}".into(),
            client_addr: None,
        })
        .unwrap();
    let c = rusqlite::Connection::open(&path).unwrap();
    let e = c
        .execute("UPDATE audit SET verdict = 'allow'", [])
        .unwrap_err();
    assert!(e.to_string().contains("append-only"), "{e}");
    assert!(c.execute("DELETE FROM audit", []).is_err());
    assert_eq!(store.verify_audit_chain().unwrap(), 1);
}

/// After `broker audit prune`, the delete trigger lets through only
/// entries before the anchor: every other delete and every update is
/// still refused at the SQL level, also with triggers put back at open.
#[test]
fn after_a_prune_the_triggers_still_refuse_other_deletes_and_updates() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.db");
    let store = SqliteStore::open(&path).unwrap();
    let ring = crate::keys::Keyring::from_key(crate::keys::MasterKey::generate().unwrap());
    crate::audit_key::load(&store, &ring, true).unwrap();
    for i in 1..=5 {
        store
            .append_audit(&AuditEvent {
                at_unix: i,
                kind: "attest".into(),
                verdict: "deny".into(),
                volumes: vec![],
                reason_codes: vec![],
                details_json: "{}".into(),
                client_addr: None,
            })
            .unwrap();
    }
    assert_eq!(store.prune_audit(3, 10, None).unwrap().first_kept, 3);
    let refused = |c: &rusqlite::Connection| {
        for sql in [
            "DELETE FROM audit WHERE id = 3",
            "DELETE FROM audit",
            "UPDATE audit SET verdict = 'allow' WHERE id = 4",
        ] {
            let e = c.execute(sql, []).unwrap_err();
            assert!(e.to_string().contains("append-only"), "{sql}: {e}");
        }
    };
    let c = rusqlite::Connection::open(&path).unwrap();
    refused(&c);
    // Dropped and put back at open: the same rule.
    c.execute_batch("DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete;")
        .unwrap();
    drop(store);
    let store = SqliteStore::open(&path).unwrap();
    crate::audit_key::load(&store, &ring, false).unwrap();
    refused(&c);
    assert_eq!(store.verify_audit_chain().unwrap(), 4);
}

#[test]
fn corrupt_audit_row_is_reported_at_its_id() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let store = SqliteStore::open(&path).unwrap();
    for i in 0..3 {
        store
            .append_audit(&AuditEvent {
                at_unix: i,
                kind: "attest".into(),
                verdict: "deny".into(),
                volumes: vec!["v".into()],
                reason_codes: vec![],
                details_json: "{}".into(),
                client_addr: None,
            })
            .unwrap();
    }
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute_batch(
        "DROP TRIGGER audit_no_update; UPDATE audit SET volumes = 'not json' WHERE id = 2;",
    )
    .unwrap();
    match store.verify_audit_chain() {
        Err(StoreError::AuditChain(e)) => assert_eq!(e.at_id, 2, "{e}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn file_is_0600_wal_and_persists() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broker.db");
    {
        let store = SqliteStore::open(&path).unwrap();
        store.put_policy("p", "version = 1\n").unwrap();
        store
            .create_volume(
                &NewVolume {
                    name: "root".into(),
                    policy: "p".into(),
                    description: "d".into(),
                },
                &sample_sealed(7),
            )
            .unwrap();
        assert_eq!(store.burn_nonce(&[1; 32], 100).unwrap(), NonceBurn::Burnt);
    }
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    assert_eq!(
        store.key_versions("root").unwrap()[0].sealed,
        sample_sealed(7)
    );
    assert_eq!(
        store.burn_nonce(&[1; 32], 100).unwrap(),
        NonceBurn::AlreadyUsed,
        "a used nonce stays used across reopening"
    );
    let c = rusqlite::Connection::open(&path).unwrap();
    let jm: String = c
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(jm, "wal");
    let versions: i64 = c
        .query_row("SELECT COUNT(*) FROM schema_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(versions, SCHEMA_VERSION, "migrations applied once");
}

#[test]
fn version_1_database_upgrades_to_the_lifecycle_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.db");
    {
        // A database as the first release wrote it, with a finished rotation.
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL);",
        )
        .unwrap();
        c.execute_batch(MIGRATIONS[0]).unwrap();
        c.execute_batch(
            "INSERT INTO schema_version VALUES (1, 0);
             INSERT INTO policies VALUES ('p', 1, 'version = 1', 0);
             INSERT INTO volumes VALUES ('root', 'p', '', 1, 0);",
        )
        .unwrap();
        let s = sample_sealed(7);
        for (v, state) in [(1, "retired"), (2, "current")] {
            c.execute(
                "INSERT INTO key_versions VALUES ('root', ?1, ?2, ?3, ?4, ?5, 100, 500)",
                rusqlite::params![
                    v,
                    state,
                    &s.master_key_id.as_bytes()[..],
                    &s.nonce[..],
                    s.ciphertext
                ],
            )
            .unwrap();
        }
    }
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    let keys = store.key_versions("root").unwrap();
    assert_eq!(
        keys.iter()
            .map(|k| (k.version, k.state, k.retired_at))
            .collect::<Vec<_>>(),
        vec![
            (1, KeyState::Retired, Some(500)),
            (2, KeyState::Current, None)
        ]
    );
    store
        .add_pending_version("root", 3, &sample_sealed(8))
        .unwrap();
    assert_eq!(store.purge_retired(501).unwrap().len(), 1);
    drop(store);
    // Opening again applies nothing twice.
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
}

#[test]
fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.db");
    drop(SqliteStore::open(&path).unwrap());
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute(
        "INSERT INTO schema_version (version, applied_at) VALUES (?1, 0)",
        [SCHEMA_VERSION + 1],
    )
    .unwrap();
    drop(c);
    match SqliteStore::open(&path) {
        Err(StoreError::Corrupt(m)) => assert!(m.contains("upgrade the broker"), "{m}"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("newer schema accepted"),
    }
}

#[test]
fn corrupt_key_row_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.db");
    let store = SqliteStore::open(&path).unwrap();
    store.put_policy("p", "version = 1\n").unwrap();
    store
        .create_volume(
            &NewVolume {
                name: "v".into(),
                policy: "p".into(),
                description: String::new(),
            },
            &sample_sealed(1),
        )
        .unwrap();
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute("UPDATE key_versions SET nonce = x'00'", [])
        .unwrap();
    assert!(matches!(
        store.releasable_keys("v"),
        Err(StoreError::Corrupt(_))
    ));
}

/// Two independent connections (as two broker processes would have) race
/// for each nonce: the database, not a mutex, makes exactly one win.
#[test]
fn nonce_single_use_across_connections() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("race.db");
    let stores: Vec<SqliteStore> = (0..4).map(|_| SqliteStore::open(&path).unwrap()).collect();
    for round in 0..25u8 {
        let n = [round; 32];
        let barrier = Barrier::new(stores.len());
        let fresh: usize = std::thread::scope(|s| {
            let hs: Vec<_> = stores
                .iter()
                .map(|st| {
                    let barrier = &barrier;
                    s.spawn(move || {
                        barrier.wait();
                        st.burn_nonce(&n, i64::MAX).unwrap() == NonceBurn::Burnt
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap() as usize).sum()
        });
        assert_eq!(fresh, 1, "round {round}");
    }
}

/// The store operations of many releases in a row on one file: every nonce
/// burns once, a replay writes nothing, and the audit chain still
/// verifies. (Their speed is measured by the `release` benchmark, not here.)
#[test]
fn release_path_sequence_keeps_chain() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("perf.db")).unwrap();
    store.put_policy("p", "version = 1\n").unwrap();
    store
        .create_volume(
            &NewVolume {
                name: "root".into(),
                policy: "p".into(),
                description: String::new(),
            },
            &sample_sealed(1),
        )
        .unwrap();
    let ev = AuditEvent {
        at_unix: 1,
        kind: "attest".into(),
        verdict: "allow".into(),
        volumes: vec!["root".into()],
        reason_codes: vec![],
        details_json: "{\"measurement\":\"00\"}".into(),
        client_addr: Some("127.0.0.1:1".into()),
    };
    const N: u32 = 500;
    for i in 0..N {
        let mut n = [0u8; 32];
        n[..4].copy_from_slice(&i.to_be_bytes());
        assert!(store.get_volume("root").unwrap().unwrap().enabled);
        assert_eq!(store.releasable_keys("root").unwrap().len(), 1);
        let commit = AttestCommit {
            nonce: n,
            nonce_expires_at: 100,
            audit: &ev,
            sessions: &[],
        };
        assert!(matches!(
            store.commit_attest(&commit).unwrap(),
            AttestCommitted::Committed(_)
        ));
        if i % 100 == 0 {
            assert_eq!(
                store.commit_attest(&commit).unwrap(),
                AttestCommitted::NonceAlreadyUsed
            );
        }
    }
    assert_eq!(store.verify_audit_chain().unwrap(), u64::from(N));
    assert_eq!(store.used_nonce_count().unwrap(), u64::from(N));
}

#[test]
fn names_rule() {
    assert!(validate_name("volume name", "root-disk_1.v2").is_ok());
    for bad in ["", "a b", "ü", "a/b", "..\u{0}"] {
        assert!(validate_name("volume name", bad).is_err(), "{bad:?}");
    }
    assert!(validate_name("volume name", &"x".repeat(129)).is_err());
}

#[test]
fn store_is_object_safe_send_sync() {
    fn assert_send_sync<T: Send + Sync + ?Sized>() {}
    assert_send_sync::<dyn Store>();
    let s: std::sync::Arc<dyn Store> = std::sync::Arc::new(SqliteStore::open_in_memory().unwrap());
    assert!(s.list_volumes().unwrap().is_empty());
}

#[test]
fn dropped_audit_triggers_are_restored_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    drop(SqliteStore::open(&path).unwrap());
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute_batch("DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete;")
        .unwrap();
    let store = SqliteStore::open(&path).unwrap();
    store
        .append_audit(&AuditEvent {
            at_unix: 1,
            kind: "attest".into(),
            verdict: "deny".into(),
            volumes: vec![],
            reason_codes: vec![],
            details_json: "{}".into(),
            client_addr: None,
        })
        .unwrap();
    let e = c
        .execute("UPDATE audit SET verdict = 'allow'", [])
        .unwrap_err();
    assert!(e.to_string().contains("append-only"), "{e}");
    assert!(c.execute("DELETE FROM audit", []).is_err());
}
