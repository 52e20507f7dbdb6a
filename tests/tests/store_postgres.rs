//! The PostgreSQL store: the conformance suite against a throwaway cluster
//! (`keybroker_tests::pg`), tampering through a superuser's SQL, and what
//! replicas sharing one database rely on: two `PgStore`s (two brokers) on
//! one database commit an Attest (burn its nonce) once, append one audit chain, compare and set
//! policy revisions, and migrate once when they start together. A wrong
//! URL, password or server is refused at open; a schema from a newer broker
//! too; a server that goes away fails calls fast and is reconnected to.
//!
//! These tests FAIL, never skip, when the PostgreSQL binaries are missing:
//! `scripts/setup build test` installs them.

use std::sync::Barrier;
use std::time::{Duration, Instant};

use broker::store::{
    AttestCommit, AttestCommitted, AuditEvent, AuditStore, NonceBurn, NonceStore, PgOptions,
    PgStore, PolicyStore, Store, StoreError, PG_SCHEMA_VERSION,
};
use keybroker_tests::ca::TestCa;
use keybroker_tests::pg::{PgCluster, ROLE};
use keybroker_tests::store_conformance::{self as conformance, Tamper, Tamperable};

fn open(url: String) -> PgStore {
    PgStore::open(PgOptions::new(url)).unwrap_or_else(|e| panic!("open: {e}"))
}

/// A fresh database on the shared cluster, and its Unix-socket URL.
fn fresh() -> String {
    let pg = PgCluster::shared();
    pg.socket_url(&pg.fresh_database())
}

#[test]
fn conformance_postgres() {
    conformance::run_all(&open(fresh()));
}

/// A fresh database and its store, with a hook that applies a [`Tamper`]
/// as a superuser would, turning the append-only triggers off first.
fn fresh_tamperable() -> Tamperable {
    let pg = PgCluster::shared();
    let db = pg.fresh_database();
    let store = open(pg.socket_url(&db));
    let edit = move |t: Tamper| {
        let x = hex::encode;
        let sql = match t {
            Tamper::ChangeVerdict(id) => format!("UPDATE audit SET verdict = 'allow' WHERE id = {id}"),
            Tamper::ChangeDetails(id) => format!("UPDATE audit SET details_json = '{{}}' WHERE id = {id}"),
            Tamper::Delete(id) => format!("DELETE FROM audit WHERE id = {id}"),
            Tamper::Swap(a, b) => format!(
                "UPDATE audit SET id = -1 WHERE id = {a}; UPDATE audit SET id = {a} WHERE id = {b}; \
                 UPDATE audit SET id = {b} WHERE id = -1"
            ),
            Tamper::DeleteLast => "DELETE FROM audit WHERE id = (SELECT MAX(id) FROM audit)".into(),
            Tamper::SetEntry { id, verdict, prev_hash, hash } => format!(
                "UPDATE audit SET verdict = '{verdict}', prev_hash = '\\x{}'::bytea, \
                 hash = '\\x{}'::bytea WHERE id = {id}",
                x(prev_hash),
                x(hash)
            ),
            Tamper::SetHead { id, hash } => format!(
                "UPDATE audit_head SET last_id = {id}, last_hash = '\\x{}'::bytea",
                x(hash)
            ),
            Tamper::SetKeyRecord { keyed_from, boundary } => format!(
                "UPDATE audit_key SET keyed_from = {keyed_from}, boundary = '\\x{}'::bytea",
                x(boundary)
            ),
            Tamper::DeleteKeyRecord => "DELETE FROM audit_key".into(),
            Tamper::SetPruneAnchor { first_id, prev_hash } => format!(
                "UPDATE audit_pruned SET first_id = {first_id}, prev_hash = '\\x{}'::bytea",
                x(prev_hash)
            ),
            Tamper::DeletePruneAnchor => "DELETE FROM audit_pruned".into(),
        };
        PgCluster::shared()
            .psql(
                &db,
                &format!("ALTER TABLE audit DISABLE TRIGGER USER; {sql}"),
            )
            .unwrap();
    };
    (
        Box::new(store) as Box<dyn Store>,
        Box::new(edit) as Box<dyn Fn(Tamper)>,
    )
}

#[test]
fn audit_tamper_through_raw_postgres_is_detected() {
    conformance::audit_tamper_detected(&fresh_tamperable);
}

#[test]
fn keyed_audit_chain_rewritten_through_raw_postgres_is_detected() {
    conformance::audit_keyed_tamper_detected(&fresh_tamperable);
}

#[test]
fn audit_prune_on_postgres() {
    conformance::audit_prune_keeps_a_verifiable_chain(&fresh_tamperable);
    conformance::audit_prune_tamper_detected(&fresh_tamperable);
}

#[test]
fn audit_verification_crosses_pages_on_postgres() {
    conformance::audit_verify_crosses_pages(&fresh_tamperable);
}

#[test]
fn audit_is_append_only_in_postgres() {
    let pg = PgCluster::shared();
    let db = pg.fresh_database();
    let store = open(pg.socket_url(&db));
    store.append_audit(&event(1)).unwrap();
    for sql in [
        "UPDATE audit SET verdict = 'allow'",
        "DELETE FROM audit",
        "TRUNCATE audit",
    ] {
        let e = pg.psql(&db, sql).unwrap_err();
        assert!(e.contains("append-only"), "{sql}: {e}");
    }
    assert_eq!(store.verify_audit_chain().unwrap(), 1);
    drop(store);

    // Whoever owns the table can take the guard away: a trigger disabled,
    // one dropped, or the function replaced by one that lets all through.
    // The next open puts it back.
    for undo in [
        "ALTER TABLE audit DISABLE TRIGGER audit_no_update",
        "DROP TRIGGER audit_no_truncate ON audit",
        "CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger \
         LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$",
    ] {
        pg.psql(&db, undo).unwrap();
        let probe = if undo.contains("truncate") {
            "BEGIN; TRUNCATE audit; ROLLBACK"
        } else {
            "BEGIN; UPDATE audit SET verdict = 'allow'; ROLLBACK"
        };
        pg.psql(&db, probe)
            .unwrap_or_else(|e| panic!("{undo}: the guard was still there: {e}"));
        let store = open(pg.socket_url(&db));
        let e = pg.psql(&db, probe).unwrap_err();
        assert!(e.contains("append-only"), "after {undo}: {e}");
        assert_eq!(store.verify_audit_chain().unwrap(), 1);
    }
}

/// After a prune the trigger lets through only deletes of entries before
/// the anchor: every other delete, every update and TRUNCATE are refused.
#[test]
fn after_a_prune_the_trigger_still_refuses_other_deletes_and_updates() {
    let pg = PgCluster::shared();
    let db = pg.fresh_database();
    let store = open(pg.socket_url(&db));
    let ring = keybroker_tests::store_conformance::test_keyring();
    broker::audit_key::load(&store, &ring, true).unwrap();
    for i in 1..=5 {
        store.append_audit(&event(i)).unwrap();
    }
    assert_eq!(store.prune_audit(3, 10, None).unwrap().first_kept, 3);
    for sql in [
        "DELETE FROM audit WHERE id = 3",
        "DELETE FROM audit",
        "UPDATE audit SET verdict = 'allow' WHERE id = 4",
        "TRUNCATE audit",
    ] {
        let e = pg.psql(&db, sql).unwrap_err();
        assert!(e.contains("append-only"), "{sql}: {e}");
    }
    assert_eq!(store.verify_audit_chain().unwrap(), 4);
}

fn event(at: i64) -> AuditEvent {
    AuditEvent {
        at_unix: at,
        kind: "attest".into(),
        verdict: "deny".into(),
        volumes: vec!["r".into()],
        reason_codes: vec![],
        details_json: "{}".into(),
        client_addr: None,
    }
}

/// The same Attest committed through two replicas at once: the nonce is
/// burnt once, one audit entry is written, the other commits write nothing.
#[test]
fn attest_commits_once_across_replicas() {
    let url = fresh();
    let replicas = [open(url.clone()), open(url)];
    for round in 0..20u8 {
        let n = [round; 32];
        let barrier = Barrier::new(8);
        let outcomes: Vec<AttestCommitted> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|i| {
                    let (r, b) = (&replicas[i % 2], &barrier);
                    s.spawn(move || {
                        let audit = event(i as i64);
                        b.wait();
                        r.commit_attest(&AttestCommit {
                            nonce: n,
                            nonce_expires_at: i64::MAX,
                            audit: &audit,
                            sessions: &[],
                        })
                        .unwrap()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let committed = outcomes
            .iter()
            .filter(|o| matches!(o, AttestCommitted::Committed(_)))
            .count();
        assert_eq!(committed, 1, "round {round}: {outcomes:?}");
        assert_eq!(
            replicas[1].burn_nonce(&n, i64::MAX).unwrap(),
            NonceBurn::AlreadyUsed
        );
    }
    assert_eq!(replicas[0].verify_audit_chain().unwrap(), 20);
    assert_eq!(replicas[1].used_nonce_count().unwrap(), 20);
}

/// Two replicas appending at once write one chain that verifies.
#[test]
fn one_audit_chain_across_replicas() {
    let url = fresh();
    let replicas = [open(url.clone()), open(url)];
    std::thread::scope(|s| {
        for (i, r) in replicas.iter().enumerate() {
            s.spawn(move || {
                for j in 0..50 {
                    r.append_audit(&event(i as i64 * 1000 + j)).unwrap();
                }
            });
        }
    });
    assert_eq!(replicas[0].verify_audit_chain().unwrap(), 100);
    assert_eq!(replicas[1].verify_audit_chain().unwrap(), 100);
}

/// Two admins on two replicas edit from the same revision: the second
/// write is refused, not applied over the first.
#[test]
fn policy_revision_compare_and_set_across_replicas() {
    let url = fresh();
    let (a, b) = (open(url.clone()), open(url));
    let rev = a.put_policy("shared", "version = 1\n# base\n").unwrap();
    let seen_by_b = b.get_policy("shared").unwrap().unwrap();
    assert_eq!(seen_by_b.revision, rev);
    assert_eq!(
        a.put_policy_at("shared", "version = 1\n# a's edit\n", rev)
            .unwrap(),
        rev + 1
    );
    assert!(matches!(
        b.put_policy_at("shared", "version = 1\n# b's edit\n", seen_by_b.revision),
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        b.get_policy("shared").unwrap().unwrap().text,
        "version = 1\n# a's edit\n"
    );
}

/// Replicas starting together on an empty database migrate it once.
#[test]
fn replicas_starting_together_migrate_once() {
    let pg = PgCluster::shared();
    let db = pg.fresh_database();
    let url = pg.socket_url(&db);
    let stores: Vec<PgStore> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let url = url.clone();
                s.spawn(move || open(url))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for st in &stores {
        assert_eq!(st.schema_version().unwrap(), PG_SCHEMA_VERSION);
    }
    assert_eq!(
        pg.psql(
            &db,
            "SELECT COUNT(*), COUNT(DISTINCT version) FROM schema_version"
        )
        .unwrap(),
        format!("{PG_SCHEMA_VERSION}|{PG_SCHEMA_VERSION}")
    );
}

/// Replicas starting together on a database with plain audit entries and
/// no chain key (an upgrade), while others append: exactly one chain key
/// is made, every replica unseals that one, and the chain they then append
/// to together verifies from each of them.
#[test]
fn replicas_starting_together_make_one_audit_chain_key() {
    let pg = PgCluster::shared();
    let db = pg.fresh_database();
    let url = pg.socket_url(&db);
    let stores: Vec<PgStore> = (0..4).map(|_| open(url.clone())).collect();
    for i in 0..3 {
        stores[0].append_audit(&event(i)).unwrap();
    }
    let ring = keybroker_tests::store_conformance::test_keyring();
    let barrier = Barrier::new(stores.len());
    let from: Vec<i64> = std::thread::scope(|s| {
        let hs: Vec<_> = stores
            .iter()
            .map(|st| {
                let (ring, barrier) = (&ring, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    broker::audit_key::load(st, ring, true).unwrap().unwrap()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(from.iter().all(|f| *f == 4), "{from:?}");
    assert_eq!(pg.psql(&db, "SELECT COUNT(*) FROM audit_key").unwrap(), "1");
    for (i, st) in stores.iter().enumerate() {
        st.append_audit(&event(10 + i as i64)).unwrap();
    }
    for st in &stores {
        assert_eq!(st.verify_audit_chain().unwrap(), 3 + stores.len() as u64);
    }
}

/// A database of schema 1 (plain audit entries, no chain key, no prune
/// anchor, the old trigger) upgrades in place: migrated at open, keyed
/// from the next entry on the first load with the master key, old entries
/// still verifying, and the append-only trigger is the new one.
#[test]
fn a_schema_1_database_with_plain_entries_upgrades_in_place() {
    let pg = PgCluster::shared();
    let db = pg.fresh_database();
    {
        let store = open(pg.socket_url(&db));
        for i in 1..=3 {
            store.append_audit(&event(i)).unwrap();
        }
    }
    pg.psql(
        &db,
        "DROP TABLE audit_pruned; DROP TABLE audit_key; \
         DELETE FROM schema_version WHERE version >= 2; \
         CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN RAISE EXCEPTION 'audit entries are append-only'; END $$;",
    )
    .unwrap();
    let store = open(pg.socket_url(&db));
    assert_eq!(store.schema_version().unwrap(), PG_SCHEMA_VERSION);
    assert_eq!(store.verify_audit_chain().unwrap(), 3);
    let ring = keybroker_tests::store_conformance::test_keyring();
    assert_eq!(
        broker::audit_key::load(&store, &ring, true).unwrap(),
        Some(4)
    );
    store.append_audit(&event(4)).unwrap();
    assert_eq!(store.verify_audit_chain().unwrap(), 4);
    assert_eq!(store.prune_audit(3, 10, None).unwrap().first_kept, 3);
    let e = pg.psql(&db, "DELETE FROM audit WHERE id = 3").unwrap_err();
    assert!(e.contains("append-only"), "{e}");
    // Entries 3 and 4, and the prune's.
    assert_eq!(store.verify_audit_chain().unwrap(), 3);
}

#[test]
fn newer_schema_is_refused() {
    let pg = PgCluster::shared();
    let db = pg.fresh_database();
    drop(open(pg.socket_url(&db)));
    pg.psql(
        &db,
        "INSERT INTO schema_version (version, applied_at) VALUES (999, 0)",
    )
    .unwrap();
    match PgStore::open(PgOptions::new(pg.socket_url(&db))) {
        Err(StoreError::Corrupt(m)) => assert!(m.contains("newer"), "{m}"),
        Err(e) => panic!("wrong refusal: {e}"),
        Ok(_) => panic!("a schema from a newer broker was accepted"),
    }
}

#[test]
fn wrong_password_unreachable_and_malformed_urls_are_refused_at_open() {
    let pg = PgCluster::shared();
    let db = pg.fresh_database();
    // The right password over TCP works.
    let mut ok = PgOptions::new(pg.tcp_url(&db));
    ok.password = Some(zeroize::Zeroizing::new(
        keybroker_tests::pg::PASSWORD.into(),
    ));
    PgStore::open(ok).unwrap();

    let wrong = PgStore::open(PgOptions::new(pg.tcp_url_with(&db, "not-the-password")));
    let msg = match wrong {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a wrong password was accepted"),
    };
    assert!(msg.contains("password authentication failed"), "{msg}");
    assert!(
        !msg.contains("not-the-password"),
        "the password leaked: {msg}"
    );

    let mut down = PgOptions::new(format!(
        "postgres://{ROLE}@127.0.0.1:1/{db}?sslmode=disable"
    ));
    down.op_timeout = Duration::from_secs(2);
    let t = Instant::now();
    match PgStore::open(down) {
        Err(StoreError::Unavailable(m)) => assert!(m.contains("cannot connect"), "{m}"),
        Err(e) => panic!("wrong refusal: {e}"),
        Ok(_) => panic!("an unreachable server was accepted"),
    }
    assert!(t.elapsed() < Duration::from_secs(35));

    for bad in [
        "postgres://",
        "postgres://127.0.0.1:5432/db?sslmode=bogus",
        "postgres://u@h/d?pool=%%",
    ] {
        assert!(
            PgStore::open(PgOptions::new(bad)).is_err(),
            "{bad} accepted"
        );
    }
}

/// A server that goes away: calls fail with `Unavailable` within the
/// operation timeout; when it is back, the same store works again.
#[test]
fn unavailable_while_down_and_reconnects_after() {
    let pg = PgCluster::start().unwrap_or_else(|e| panic!("{e}"));
    let db = pg.fresh_database();
    let mut opts = PgOptions::new(pg.socket_url(&db));
    opts.op_timeout = Duration::from_millis(1500);
    let store = PgStore::open(opts).unwrap();
    store.put_policy("p", "version = 1\n").unwrap();
    pg.stop_server().unwrap();
    let t = Instant::now();
    match store.get_policy("p") {
        Err(StoreError::Unavailable(_)) => {}
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "a call hung {:?} on a stopped server",
        t.elapsed()
    );
    pg.start_server().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match store.get_policy("p") {
            Ok(p) => {
                assert_eq!(p.unwrap().revision, 1);
                break;
            }
            Err(e) if Instant::now() < deadline => {
                eprintln!("not yet: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("no reconnect: {e}"),
        }
    }
}

/// A row lock held elsewhere fails the call at the lock timeout instead
/// of waiting without bound.
#[test]
fn held_row_lock_times_out() {
    let pg = PgCluster::shared();
    let db = pg.fresh_database();
    let mut opts = PgOptions::new(pg.socket_url(&db));
    opts.op_timeout = Duration::from_millis(800);
    let store = PgStore::open(opts).unwrap();
    store.append_audit(&event(1)).unwrap();
    // Another session holds the chain head's row lock for 5 s.
    let holder = {
        let (pg_dir, port, db) = (pg.socket_dir().to_owned(), pg.port(), db.clone());
        std::thread::spawn(move || {
            let _ = (pg_dir, port);
            PgCluster::shared().psql(
                &db,
                "BEGIN; SELECT * FROM audit_head FOR UPDATE; SELECT pg_sleep(5); COMMIT;",
            )
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    match store.append_audit(&event(2)) {
        Err(StoreError::Unavailable(_)) => {}
        other => panic!("expected Unavailable under a held lock, got {other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    holder.join().unwrap().unwrap();
    store.append_audit(&event(3)).unwrap();
    assert_eq!(store.verify_audit_chain().unwrap(), 2);
}

/// TLS to PostgreSQL with `[store] ca_cert`: the store connects to a server
/// whose certificate chains to that CA and names the host it asked for,
/// and refuses another CA's certificate or one naming another host. The
/// database refuses TCP without TLS, so the connection that works is
/// shown to be encrypted.
#[test]
fn tls_to_postgres_checks_the_servers_certificate() {
    let pg = PgCluster::start().unwrap_or_else(|e| panic!("{e}"));
    let db = pg.fresh_database();
    let ca = TestCa::new("database CA");
    let (cert, key) = ca.issue("db.example", &["db.example"], false);
    pg.require_tls(&db, &cert, &key).unwrap();
    let tmp = keybroker_tests::exe::tempdir();
    let ca_file = tmp.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let other_file = tmp.path().join("other.pem");
    std::fs::write(&other_file, TestCa::new("another CA").pem()).unwrap();
    let opts = |url: String, ca: Option<&std::path::Path>| {
        let mut o = PgOptions::new(url);
        o.password = Some(zeroize::Zeroizing::new(
            keybroker_tests::pg::PASSWORD.into(),
        ));
        o.ca_cert = ca.map(std::path::Path::to_path_buf);
        o
    };
    let port = pg.port();
    // db.example is reached at 127.0.0.1 (`hostaddr`), and verified as db.example.
    let named =
        format!("postgres://{ROLE}@db.example:{port}/{db}?hostaddr=127.0.0.1&sslmode=require");

    let open_err = |o: PgOptions, what: &str| match PgStore::open(o) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("{what} was accepted"),
    };
    let plain = open_err(opts(pg.tcp_url(&db), None), "a connection without TLS");
    assert!(
        plain.contains("no encryption") || plain.contains("pg_hba"),
        "{plain}"
    );

    let store = PgStore::open(opts(named.clone(), Some(&ca_file))).unwrap();
    store.append_audit(&event(1_700_000_000)).unwrap();
    assert!(store.verify_audit_chain().unwrap() >= 1);
    drop(store);

    let wrong_ca = open_err(opts(named, Some(&other_file)), "another CA's certificate");
    assert!(wrong_ca.contains("UnknownIssuer"), "{wrong_ca}");
    let wrong_name = open_err(
        opts(
            format!("postgres://{ROLE}@127.0.0.1:{port}/{db}?sslmode=require"),
            Some(&ca_file),
        ),
        "a certificate for another host",
    );
    assert!(
        wrong_name.contains("not valid for name \"127.0.0.1\""),
        "{wrong_name}"
    );
}
