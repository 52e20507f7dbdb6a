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
