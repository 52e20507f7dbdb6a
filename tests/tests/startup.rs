//! Start-up refuses what would only fail later (issue #9), each refusal
//! naming the fix: a master key that is not the database's, a missing
//! database, a second broker on a served guest port, an audit log changed
//! outside the broker. And a database from before key-check values and
//! the keyed audit chain upgrades in place.

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
const MAIN_SCHEMA: &str = "DROP TABLE audit_pruned; DROP TABLE audit_key; DROP TABLE key_checks; DROP TABLE used_nonces; \
     CREATE TABLE nonces (nonce BLOB PRIMARY KEY, volumes TEXT NOT NULL, \
       expires_at INTEGER NOT NULL, used INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID; \
     INSERT INTO nonces VALUES (x'00', '[\"root\"]', 1, 0); \
     DELETE FROM schema_version WHERE version >= 3;";

/// A database written before key-check values and the keyed audit chain
/// existed (schema 4, 3, and main's schema 2) upgrades in place: the key
/// is shown to unseal a record, its key-check value is recorded, nothing
/// enrolled is lost; a wrong key on such a database is still refused. Its
/// plain audit entries still verify; the chain is keyed from the next
/// entry on, with a key made at the first start.
#[test]
fn a_database_without_key_check_or_keyed_audit_upgrades_in_place() {
    for old in [
        "DROP TABLE audit_pruned; DROP TABLE audit_key; \
         DELETE FROM schema_version WHERE version >= 5;",
        "DROP TABLE audit_pruned; DROP TABLE audit_key; DROP TABLE key_checks; \
         DELETE FROM schema_version WHERE version >= 4;",
        MAIN_SCHEMA,
    ] {
        upgrade_from(old);
    }
}

fn upgrade_from(old_schema: &str) {
    use broker::store::{audit_entry_hash, AuditFilter};
    let dir = BrokerDir::create(&BrokerOptions::default()).unwrap();
    dir.set_policy("p", &policy_for(&[0; 48], "")).unwrap();
    let key = dir.add_volume("root", "p").unwrap();
    let db = dir.dir.path().join("broker.db");
    {
        // The old broker's plain audit entries.
        let store = broker::wiring::store(&dir.config().unwrap()).unwrap();
        assert!(store.audit_key_record().unwrap().is_none());
        for i in 1..=3 {
            store.append_audit(&event(i, "allow")).unwrap();
        }
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
    // The audit log: the old entries verify, the next is keyed.
    let store = b.store();
    assert_eq!(store.audit_key_record().unwrap().unwrap().keyed_from, 4);
    assert_eq!(store.verify_audit_chain().unwrap(), 3);
    store.append_audit(&event(4, "deny")).unwrap();
    let all = store.audit_entries(&AuditFilter::default()).unwrap();
    for e in &all[..3] {
        assert_eq!(e.hash, audit_entry_hash(&e.prev_hash, e.id.0, &e.event));
    }
    assert_ne!(
        all[3].hash,
        audit_entry_hash(&all[3].prev_hash, 4, &all[3].event),
        "entry 4 is keyed"
    );
    assert_eq!(store.verify_audit_chain().unwrap(), 4);
    // Restarting finds the same key.
    drop(b);
    let again = broker::wiring::broker(&dir.config().unwrap()).unwrap();
    assert_eq!(again.store().verify_audit_chain().unwrap(), 4);
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

/// A broker directory whose broker appended five entries (keyed from 1)
/// and advanced its checkpoint; the database opened raw, append-only
/// triggers dropped, as someone who can write it but not the master key's
/// directory would.
fn five_entries() -> (BrokerDir, rusqlite::Connection) {
    let dir = BrokerDir::create(&BrokerOptions::default()).unwrap();
    let cfg = dir.config().unwrap();
    let b = broker::wiring::broker(&cfg).unwrap();
    for i in 1..=5 {
        b.store().append_audit(&event(i, "deny")).unwrap();
    }
    b.advance_audit_anchor();
    assert!(broker::audit_anchor::checkpoint_path(&cfg.master_key).exists());
    drop(b);
    let c = rusqlite::Connection::open(dir.dir.path().join("broker.db")).unwrap();
    c.execute_batch("DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete;")
        .unwrap();
    (dir, c)
}

fn audit_verify(dir: &BrokerDir) -> broker::admin::ChainCheck {
    let cfg = dir.config().unwrap();
    let store = broker::wiring::keyed_store(&cfg).unwrap();
    let keyring = std::sync::Arc::new(broker::keys::Keyring::load(&cfg.master_key).unwrap());
    broker::admin::Admin::new(store, keyring)
        .audit_verify()
        .unwrap()
}

/// How an attacker computes an entry's hash: previous hash, id, content.
type EntryHash<'a> = &'a dyn Fn(&[u8; 32], i64, &broker::store::AuditEvent) -> [u8; 32];

/// Entry `changed` becomes an allow and entries `changed..=last` are
/// rehashed with `hash`, the head updated.
fn rewrite(c: &rusqlite::Connection, changed: i64, last: i64, hash: EntryHash<'_>) {
    let mut prev: Vec<u8> = c
        .query_row("SELECT hash FROM audit WHERE id = ?1", [changed - 1], |r| {
            r.get(0)
        })
        .unwrap();
    for id in changed..=last {
        let verdict = if id == changed { "allow" } else { "deny" };
        let p: [u8; 32] = prev.clone().try_into().unwrap();
        let h = hash(&p, id, &event(id, verdict));
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
}

fn rewrite_entry_3(c: &rusqlite::Connection, hash: EntryHash<'_>) {
    rewrite(c, 3, 5, hash);
}

/// Someone who can write the database but not the master key's directory
/// changes an entry from deny to allow and recomputes the chain, with
/// plain SHA-256 or with an HMAC key of their own: the keyed chain itself
/// names the entry, with or without the checkpoint beside master.key.
#[test]
fn a_rewritten_and_recomputed_audit_log_is_detected_by_the_keyed_chain() {
    use broker::keys::AuditChainKey;
    use broker::store::{audit_entry_hash, keyed_audit_entry_hash, ChainKeying, GENESIS_HASH};
    let made_up = ChainKeying::new(&AuditChainKey::generate().unwrap(), 1, GENESIS_HASH);
    for (how, with_checkpoint) in [("plain", true), ("plain", false), ("made-up key", false)] {
        let (dir, c) = five_entries();
        if !with_checkpoint {
            std::fs::remove_file(broker::audit_anchor::checkpoint_path(
                &dir.config().unwrap().master_key,
            ))
            .unwrap();
        }
        if how == "plain" {
            rewrite_entry_3(&c, &|p, id, e| audit_entry_hash(p, id, e));
        } else {
            rewrite_entry_3(&c, &|p, id, e| keyed_audit_entry_hash(&made_up, p, id, e));
        }
        drop(c);
        match audit_verify(&dir) {
            broker::admin::ChainCheck::Broken { at_id, what } => {
                assert_eq!(at_id, 3, "{how}: {what}");
                assert!(what.contains("audit chain key"), "{how}: {what}");
            }
            other => panic!("{how}: {other:?}"),
        }
        // And the broker does not start on it.
        let e = refusal(&dir);
        let want = if with_checkpoint {
            "does not match its checkpoint"
        } else {
            "the audit log is broken at entry 3"
        };
        assert!(e.contains(want), "{how}: {e}");
    }
}

/// The newest entries, written after the checkpoint (which vouches for
/// entry 5 only), rewritten and recomputed: the start-up check of the
/// chain's tail names the entry, and the broker does not serve.
#[test]
fn a_rewritten_entry_after_the_checkpoint_stops_the_broker() {
    use broker::store::audit_entry_hash;
    let (dir, c) = five_entries();
    drop(c);
    {
        let store = broker::wiring::keyed_store(&dir.config().unwrap()).unwrap();
        for i in 6..=7 {
            store.append_audit(&event(i, "deny")).unwrap();
        }
    }
    let c = rusqlite::Connection::open(dir.dir.path().join("broker.db")).unwrap();
    c.execute_batch("DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete;")
        .unwrap();
    rewrite(&c, 7, 7, &|p, id, e| audit_entry_hash(p, id, e));
    drop(c);
    let e = refusal(&dir);
    assert!(
        e.contains("the audit log is broken at entry 7")
            && e.contains("audit chain key")
            && e.contains("broker restore"),
        "{e}"
    );
}

/// Moving where the keyed chain starts (to make the keyed entries read as
/// plain ones, recomputable by anyone) breaks the seal of the chain key:
/// the broker refuses to start, naming the record.
#[test]
fn a_moved_keyed_chain_boundary_is_refused_at_start() {
    use broker::store::audit_entry_hash;
    let (dir, c) = five_entries();
    std::fs::remove_file(broker::audit_anchor::checkpoint_path(
        &dir.config().unwrap().master_key,
    ))
    .unwrap();
    rewrite_entry_3(&c, &|p, id, e| audit_entry_hash(p, id, e));
    let head: Vec<u8> = c
        .query_row("SELECT last_hash FROM audit_head", [], |r| r.get(0))
        .unwrap();
    c.execute(
        "UPDATE audit_key SET keyed_from = 6, boundary = ?1",
        [&head[..]],
    )
    .unwrap();
    drop(c);
    let e = refusal(&dir);
    assert!(
        e.contains("audit chain key") && e.contains("cannot be unsealed") && e.contains("entry 6"),
        "{e}"
    );
}

/// Someone removes the newest entries and fixes up the head: the chain
/// that is left verifies, but the checkpoint beside master.key does not
/// match, so `audit verify` reports it and the broker refuses to start.
#[test]
fn a_truncated_audit_log_is_detected_by_the_checkpoint() {
    let (dir, c) = five_entries();
    let h3: Vec<u8> = c
        .query_row("SELECT hash FROM audit WHERE id = 3", [], |r| r.get(0))
        .unwrap();
    c.execute_batch("DELETE FROM audit WHERE id > 3;").unwrap();
    c.execute(
        "UPDATE audit_head SET last_id = 3, last_hash = ?1 WHERE singleton = 1",
        [&h3[..]],
    )
    .unwrap();
    drop(c);
    // The chain alone is consistent again...
    let store = broker::wiring::keyed_store(&dir.config().unwrap()).unwrap();
    assert_eq!(store.verify_audit_chain().unwrap(), 3);
    // ...but not with its anchor.
    match audit_verify(&dir) {
        broker::admin::ChainCheck::Broken { what, .. } => {
            assert!(what.contains("is missing"), "{what}");
        }
        other => panic!("{other:?}"),
    }
    let e = refusal(&dir);
    assert!(
        e.contains("does not match its checkpoint") && e.contains("move the checkpoint file aside"),
        "{e}"
    );
}
