//! Start-up refuses what would only fail later (issue #9), each refusal
//! naming the fix: a master key that is not the database's, a missing
//! database, a second broker on a served guest port. And a database from
//! before key-check values upgrades in place.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;

use keybroker_tests::local_broker::{policy_for, BrokerDir, BrokerOptions};

fn refusal(dir: &BrokerDir) -> String {
    match broker::wiring::broker(&dir.config().unwrap()) {
        Ok(_) => panic!("the broker started"),
        Err(e) => format!("{:#}", anyhow::Error::from(e)),
    }
}

fn replace_master_key(dir: &BrokerDir, bytes: &[u8; 32]) {
    let path = dir.dir.path().join("master.key");
    std::fs::remove_file(&path).unwrap();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .unwrap();
    f.write_all(bytes).unwrap();
}

fn master_key(dir: &BrokerDir) -> [u8; 32] {
    std::fs::read(dir.dir.path().join("master.key"))
        .unwrap()
        .try_into()
        .unwrap()
}

#[test]
fn a_wrong_master_key_is_refused_at_start() {
    // With a volume enrolled: its record names another key.
    let dir = BrokerDir::create(&BrokerOptions::default()).unwrap();
    dir.set_policy("p", &policy_for(&[0; 48], "")).unwrap();
    dir.add_volume("root", "p").unwrap();
    broker::wiring::broker(&dir.config().unwrap()).expect("the right key starts");
    let right = master_key(&dir);
    let mut flipped = right;
    flipped[7] ^= 0x10;
    let mut random = [0u8; 32];
    aws_lc_rs::rand::fill(&mut random).unwrap();
    for wrong in [flipped, random] {
        replace_master_key(&dir, &wrong);
        let e = refusal(&dir);
        assert!(
            e.contains("is not the key of this database")
                && e.contains("sealed under master key")
                && e.contains("restore it from your offline backup"),
            "{e}"
        );
    }
    // Without any volume: the key-check value recorded at the first start.
    let empty = BrokerDir::create(&BrokerOptions::default()).unwrap();
    broker::wiring::broker(&empty.config().unwrap()).expect("first start");
    let mut flipped = master_key(&empty);
    flipped[0] ^= 1;
    replace_master_key(&empty, &flipped);
    let e = refusal(&empty);
    assert!(
        e.contains("is not the key of this database") && e.contains("it belongs to master key"),
        "{e}"
    );
}

#[test]
fn a_missing_database_is_refused_not_recreated() {
    let dir = BrokerDir::create(&BrokerOptions::default()).unwrap();
    let db = dir.dir.path().join("broker.db");
    std::fs::remove_file(&db).unwrap();
    let e = refusal(&dir);
    assert!(
        e.contains("does not exist") && e.contains("broker init") && e.contains("backup"),
        "{e}"
    );
    assert!(!db.exists(), "the refusal created a database");
}

#[test]
fn a_second_broker_on_a_served_port_is_refused() {
    let first = broker::grpc::bind_shards("127.0.0.1:0".parse().unwrap(), 2).unwrap();
    let addr = first[0].local_addr().unwrap();
    let e = match broker::grpc::bind_shards(addr, 2) {
        Ok(_) => panic!("a second broker joined {addr}"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("already served by another process") && e.contains("server.listen"),
        "{e}"
    );
    drop(first);
    // Once the first is gone the port is free again.
    broker::grpc::bind_shards(addr, 2).unwrap();
}

/// The schema this branch's main left (version 2: a `nonces` table with
/// every issued nonce, no used nonces, no key-check values), made from a
/// current database by undoing migrations 3 and 4.
const MAIN_SCHEMA: &str = "DROP TABLE key_checks; DROP TABLE used_nonces; \
     CREATE TABLE nonces (nonce BLOB PRIMARY KEY, volumes TEXT NOT NULL, \
       expires_at INTEGER NOT NULL, used INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID; \
     INSERT INTO nonces VALUES (x'00', '[\"root\"]', 1, 0); \
     DELETE FROM schema_version WHERE version >= 3;";

/// A database written before key-check values existed (schema 3, and
/// main's schema 2) upgrades in place: the key is shown to unseal a
/// record, its key-check value is recorded, nothing enrolled is lost; a
/// wrong key on such a database is still refused.
#[test]
fn a_database_without_key_check_upgrades_in_place() {
    for old in [
        "DROP TABLE key_checks; DELETE FROM schema_version WHERE version >= 4;",
        MAIN_SCHEMA,
    ] {
        upgrade_from(old);
    }
}

fn upgrade_from(old_schema: &str) {
    let dir = BrokerDir::create(&BrokerOptions::default()).unwrap();
    dir.set_policy("p", &policy_for(&[0; 48], "")).unwrap();
    let key = dir.add_volume("root", "p").unwrap();
    let db = dir.dir.path().join("broker.db");
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch(old_schema).unwrap();
    }
    let right = master_key(&dir);
    let mut wrong = right;
    wrong[31] ^= 0x80;
    replace_master_key(&dir, &wrong);
    assert!(refusal(&dir).contains("sealed under master key"));
    replace_master_key(&dir, &right);
    let b = broker::wiring::broker(&dir.config().unwrap()).expect("upgrade");
    assert_eq!(b.store().key_checks().unwrap().len(), 1);
    let cfg = dir.config().unwrap();
    let master = broker::keys::MasterKey::load(&cfg.master_key).unwrap();
    let sealed = b.store().releasable_keys("root").unwrap();
    let unsealed = broker::keys::unseal(&master, "root", 1, &sealed[0].sealed).unwrap();
    assert_eq!(unsealed.expose_secret(), &key[..]);
}

fn event(i: i64, verdict: &str) -> broker::store::AuditEvent {
    broker::store::AuditEvent {
        at_unix: 1_700_000_000 + i,
        kind: "attest".into(),
        verdict: verdict.into(),
        volumes: vec!["root".into()],
        reason_codes: vec![],
        details_json: "{}".into(),
        client_addr: None,
    }
}

/// Someone who can write the database but not the master key's directory
/// rewrites an entry and recomputes the whole (plain SHA-256) chain, or
/// removes the newest entries and fixes up the head: the chain alone
/// verifies, but the checkpoint beside master.key does not match, so
/// `audit verify` reports it and the broker refuses to start.
#[test]
fn a_rewritten_and_recomputed_or_truncated_audit_log_is_detected() {
    use broker::store::audit_entry_hash;
    for tamper in ["recompute", "truncate"] {
        let dir = BrokerDir::create(&BrokerOptions::default()).unwrap();
        let cfg = dir.config().unwrap();
        let b = broker::wiring::broker(&cfg).unwrap();
        for i in 1..=5 {
            b.store().append_audit(&event(i, "deny")).unwrap();
        }
        b.advance_audit_anchor();
        let checkpoint = broker::audit_anchor::checkpoint_path(&cfg.master_key);
        assert!(checkpoint.exists());
        drop(b);
        let db = dir.dir.path().join("broker.db");
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch("DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete;")
            .unwrap();
        if tamper == "recompute" {
            // Entry 3 becomes an allow; 3..5 rehashed, the head updated.
            let mut prev: Vec<u8> = c
                .query_row("SELECT hash FROM audit WHERE id = 2", [], |r| r.get(0))
                .unwrap();
            for id in 3..=5i64 {
                let verdict = if id == 3 { "allow" } else { "deny" };
                let p: [u8; 32] = prev.clone().try_into().unwrap();
                let h = audit_entry_hash(&p, id, &event(id, verdict));
                c.execute(
                    "UPDATE audit SET verdict = ?1, prev_hash = ?2, hash = ?3 WHERE id = ?4",
                    rusqlite::params![verdict, &p[..], &h[..], id],
                )
                .unwrap();
                prev = h.to_vec();
            }
            c.execute(
                "UPDATE audit_head SET last_hash = ?1 WHERE singleton = 1",
                [&prev[..]],
            )
            .unwrap();
        } else {
            let h3: Vec<u8> = c
                .query_row("SELECT hash FROM audit WHERE id = 3", [], |r| r.get(0))
                .unwrap();
            c.execute_batch("DELETE FROM audit WHERE id > 3;").unwrap();
            c.execute(
                "UPDATE audit_head SET last_id = 3, last_hash = ?1 WHERE singleton = 1",
                [&h3[..]],
            )
            .unwrap();
        }
        drop(c);
        // The chain alone is consistent again...
        let store = broker::wiring::store(&cfg).unwrap();
        store.verify_audit_chain().unwrap();
        // ...but not with its anchor.
        let keyring = std::sync::Arc::new(broker::keys::Keyring::load(&cfg.master_key).unwrap());
        let admin = broker::admin::Admin::new(store, keyring);
        match admin.audit_verify().unwrap() {
            broker::admin::ChainCheck::Broken { what, .. } => {
                let want = if tamper == "recompute" {
                    "another hash"
                } else {
                    "is missing"
                };
                assert!(what.contains(want), "{tamper}: {what}");
            }
            other => panic!("{tamper}: {other:?}"),
        }
        let e = refusal(&dir);
        assert!(
            e.contains("does not match its checkpoint")
                && e.contains("move the checkpoint file aside"),
            "{tamper}: {e}"
        );
    }
}
