//! `broker backup`, `broker restore` and `broker store migrate`, the real
//! executable on a broker directory: every round trip keeps the sealed
//! records, so every key unseals to the same bytes with the same master
//! key, every policy revision, and an audit chain that verifies. A restore
//! into a non-empty store is refused; a backup never holds the master key.
//! A broker then serves the restored database: a guest gets the same key.

use std::path::Path;

use broker::keys::Keyring;
use broker::store::{AuditEvent, Store};
use guest_unlock::flow::fetch_keys;
use keybroker_proto::VolumeIds;
use keybroker_tests::exe::run_in;
use keybroker_tests::pg::PgCluster;
use keybroker_tests::sim::{SimPlatform, SimProvider};
use keybroker_tests::{
    default_guest, guest_config, policy_for, BrokerDir, BrokerOptions, RunningBroker,
};

/// A broker directory with two volumes (one rotated: a pending version),
/// two policy revisions and audit entries; the volume keys by name.
fn populated(dir: &BrokerDir) -> Vec<(String, u32, Vec<u8>)> {
    dir.set_policy("prod", &policy_for(&default_guest().measurement, ""))
        .unwrap();
    dir.set_policy("prod", &policy_for(&default_guest().measurement, "# r2\n"))
        .unwrap();
    let a = dir.add_volume("root", "prod").unwrap();
    let b = dir.add_volume("data", "prod").unwrap();
    let cfg = dir.config().unwrap();
    let store = broker::wiring::store(&cfg).unwrap();
    let ring = broker::wiring::keyring(&cfg).unwrap();
    let pending = broker::lifecycle::rotate_volume(store.as_ref(), &ring, "data").unwrap();
    // Two plain entries (an old broker's), then the chain key, then keyed
    // ones: a round trip must carry the key record and the boundary.
    for i in 0..5 {
        if i == 2 {
            assert_eq!(
                broker::audit_key::load(store.as_ref(), &ring, true).unwrap(),
                Some(3)
            );
        }
        store
            .append_audit(&AuditEvent {
                at_unix: 1_000 + i,
                kind: "attest".into(),
                verdict: "allow".into(),
                volumes: vec!["root".into()],
                reason_codes: vec![],
                details_json: "{}".into(),
                client_addr: None,
            })
            .unwrap();
    }
    let pending_key = unsealed(store.as_ref(), &ring, "data", pending);
    vec![
        ("root".into(), 1, a),
        ("data".into(), 1, b),
        ("data".into(), pending, pending_key),
    ]
}

fn unsealed(store: &dyn Store, ring: &Keyring, volume: &str, version: u32) -> Vec<u8> {
    let k = store
        .key_versions(volume)
        .unwrap()
        .into_iter()
        .find(|k| k.version == version)
        .unwrap();
    ring.unseal(volume, version, &k.sealed)
        .unwrap()
        .expose_secret()
        .to_vec()
}

/// Every key unseals to the same bytes, the policy has both revisions,
/// and the chain verifies.
fn assert_same(config: &Path, keys: &[(String, u32, Vec<u8>)], audit_entries: u64) {
    let cfg = broker::config::Config::load(config).unwrap();
    let store = broker::wiring::keyed_store(&cfg).unwrap();
    assert_eq!(store.audit_key_record().unwrap().unwrap().keyed_from, 3);
    let ring = broker::wiring::keyring(&cfg).unwrap();
    for (volume, version, bytes) in keys {
        assert_eq!(
            &unsealed(store.as_ref(), &ring, volume, *version),
            bytes,
            "{volume} v{version}"
        );
    }
    assert_eq!(store.get_policy("prod").unwrap().unwrap().revision, 2);
    assert!(store.get_policy_revision("prod", 1).unwrap().is_some());
    assert_eq!(store.verify_audit_chain().unwrap(), audit_entries);
}

/// Starts the broker on `dir` and unlocks `volume` as the default
/// simulated guest: the current key's bytes.
fn served_key(dir: &BrokerDir, volume: &str) -> Vec<u8> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let broker = RunningBroker::start(dir).await.unwrap();
        let cfg = guest_config(&[broker.url()], &dir.pin, dir.sim.dir(), 20).unwrap();
        let provider = SimProvider::new(SimPlatform::load(dir.sim.dir()).unwrap(), default_guest());
        let out = fetch_keys(&cfg, &provider, &VolumeIds::parse([volume]).unwrap())
            .await
            .unwrap();
        assert!(out.all_granted(), "{:?}", out.denied);
        let key = out.keys[0].expose_secret().to_vec();
        broker.stop().await.unwrap();
        key
    })
}

fn set_store(config: &Path, url: &str) {
    let text = std::fs::read_to_string(config).unwrap();
    let start = text.find("\nurl = ").unwrap();
    let end = start + 1 + text[start + 1..].find('\n').unwrap();
    std::fs::write(
        config,
        format!(
            "{}\nurl = {}{}",
            &text[..start],
            serde_json::Value::from(url),
            &text[end..]
        ),
    )
    .unwrap();
}

#[test]
fn backup_then_restore_into_a_new_sqlite_store() {
    let dir = BrokerDir::create(&BrokerOptions::default()).unwrap();
    let keys = populated(&dir);
    let cfg = dir.config_path.to_str().unwrap();
    let out = dir.dir.path().join("backup.json");
    let r = run_in(
        dir.dir.path(),
        &["backup", "-c", cfg, "--out", out.to_str().unwrap()],
    );
    r.expect_code(0);
    assert!(r.stderr.contains("NOT the master key"), "{}", r.stderr);
    assert_eq!(keybroker_tests::exe::mode(&out), 0o600);
    // The master key's bytes are nowhere in the file.
    let master = std::fs::read(dir.dir.path().join("master.key")).unwrap();
    let backup = std::fs::read(&out).unwrap();
    assert!(!backup.windows(master.len()).any(|w| w == master.as_slice()));
    assert!(!String::from_utf8_lossy(&backup).contains(&hex::encode(&master)));
    // A second backup to the same file is refused (never overwritten).
    run_in(
        dir.dir.path(),
        &["backup", "-c", cfg, "--out", out.to_str().unwrap()],
    )
    .expect_code(1);
    let entries = {
        let store = broker::wiring::keyed_store(&dir.config().unwrap()).unwrap();
        store.verify_audit_chain().unwrap()
    };

    // Disaster: the database is gone. Restore into a new file.
    std::fs::remove_file(dir.dir.path().join("broker.db")).unwrap();
    for ext in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(dir.dir.path().join(format!("broker.db{ext}")));
    }
    let r = run_in(
        dir.dir.path(),
        &["restore", "-c", cfg, out.to_str().unwrap()],
    );
    r.expect_code(0);
    assert!(r.stdout.contains("verifies"), "{}", r.stdout);
    assert_same(&dir.config_path, &keys, entries);
    // The restored database is served: the broker starts on it and a
    // guest gets the same key as before the disaster.
    assert_eq!(served_key(&dir, "root"), keys[0].2);
    // Restoring again, into the now non-empty store, is refused.
    let r = run_in(
        dir.dir.path(),
        &["restore", "-c", cfg, out.to_str().unwrap()],
    );
    r.expect_code(1);
    assert!(r.stderr.contains("not empty"), "{}", r.stderr);
    // A damaged file is refused with a clear error.
    std::fs::write(dir.dir.path().join("bad.json"), b"{\"format\":").unwrap();
    let r = run_in(dir.dir.path(), &["restore", "-c", cfg, "bad.json"]);
    r.expect_code(1);
    assert!(r.stderr.contains("is not a snapshot"), "{}", r.stderr);
}

#[test]
fn migrate_sqlite_to_postgres_then_backup_and_restore_there() {
    let pg = PgCluster::shared();
    let dir = BrokerDir::create(&BrokerOptions::default()).unwrap();
    let keys = populated(&dir);
    let entries = broker::wiring::keyed_store(&dir.config().unwrap())
        .unwrap()
        .verify_audit_chain()
        .unwrap();
    let db = pg.fresh_database();
    let to = pg.socket_url(&db);
    let sqlite = dir.dir.path().join("broker.db");
    let migrate = |extra: &[&str]| {
        let mut args = vec![
            "store",
            "migrate",
            "--from",
            sqlite.to_str().unwrap(),
            "--to",
            &to,
        ];
        args.extend_from_slice(extra);
        run_in(dir.dir.path(), &args)
    };
    // The keyed chain is verified before and after: it needs the master key.
    let r = migrate(&[]);
    r.expect_code(1);
    assert!(r.stderr.contains("--master-key"), "{}", r.stderr);
    assert!(sqlite.exists());
    let master = dir.dir.path().join("master.key");
    migrate(&["--master-key", master.to_str().unwrap()]).expect_code(0);
    // The SQLite file can no longer be served.
    assert!(!sqlite.exists());
    assert!(dir.dir.path().join("broker.db.migrated").exists());
    set_store(&dir.config_path, &to);
    assert_same(&dir.config_path, &keys, entries);
    // Migrating into a store that holds something else is refused.
    let other = BrokerDir::create(&BrokerOptions::default()).unwrap();
    other
        .set_policy("x", &policy_for(&default_guest().measurement, ""))
        .unwrap();
    let r = run_in(
        other.dir.path(),
        &[
            "store",
            "migrate",
            "--from",
            other.dir.path().join("broker.db").to_str().unwrap(),
            "--to",
            &to,
        ],
    );
    r.expect_code(1);
    assert!(
        other.dir.path().join("broker.db").exists(),
        "a refused migration retired its source"
    );

    // Backup of the PostgreSQL store, restore into another database.
    let cfg = dir.config_path.to_str().unwrap();
    let out = dir.dir.path().join("pg-backup.json");
    run_in(
        dir.dir.path(),
        &["backup", "-c", cfg, "--out", out.to_str().unwrap()],
    )
    .expect_code(0);
    set_store(&dir.config_path, &pg.socket_url(&pg.fresh_database()));
    run_in(
        dir.dir.path(),
        &["restore", "-c", cfg, out.to_str().unwrap()],
    )
    .expect_code(0);
    assert_same(&dir.config_path, &keys, entries);
    assert_eq!(served_key(&dir, "root"), keys[0].2);
}
