//! The store conformance suite (`keybroker_tests::store_conformance`) run
//! against the SQLite store: in memory, on a file, and with the audit log
//! tampered with through a raw connection (as an attacker with the file
//! would, dropping the append-only triggers first).

use broker::store::{SqliteStore, Store};
use keybroker_tests::store_conformance::{self as conformance, Tamper};

#[test]
fn conformance_in_memory() {
    conformance::run_all(&SqliteStore::open_in_memory().unwrap());
}

#[test]
fn conformance_on_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("broker.db")).unwrap();
    conformance::run_all(&store);
}

#[test]
fn audit_tamper_through_raw_sqlite_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let counter = std::cell::Cell::new(0);
    conformance::audit_tamper_detected(&|| {
        counter.set(counter.get() + 1);
        let path = dir.path().join(format!("t{}.db", counter.get()));
        let store = SqliteStore::open(&path).unwrap();
        let edit = move |t: Tamper| {
            let c = rusqlite::Connection::open(&path).unwrap();
            // An attacker with the file drops the append-only triggers first.
            c.execute_batch("DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete;")
                .unwrap();
            match t {
                Tamper::ChangeVerdict(id) => {
                    c.execute("UPDATE audit SET verdict = 'allow' WHERE id = ?1", [id])
                        .unwrap();
                }
                Tamper::ChangeDetails(id) => {
                    c.execute("UPDATE audit SET details_json = '{}' WHERE id = ?1", [id])
                        .unwrap();
                }
                Tamper::Delete(id) => {
                    c.execute("DELETE FROM audit WHERE id = ?1", [id]).unwrap();
                }
                Tamper::Swap(a, b) => {
                    c.execute_batch(&format!(
                        "UPDATE audit SET id = -1 WHERE id = {a};
                         UPDATE audit SET id = {a} WHERE id = {b};
                         UPDATE audit SET id = {b} WHERE id = -1;"
                    ))
                    .unwrap();
                }
                Tamper::DeleteLast => {
                    c.execute(
                        "DELETE FROM audit WHERE id = (SELECT MAX(id) FROM audit)",
                        [],
                    )
                    .unwrap();
                }
            }
        };
        (
            Box::new(store) as Box<dyn Store>,
            Box::new(edit) as Box<dyn Fn(Tamper)>,
        )
    });
}
