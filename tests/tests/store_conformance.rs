//! The store conformance suite (`keybroker_tests::store_conformance`) run
//! against the SQLite store: in memory, on a file, and with the audit log
//! tampered with through a raw connection (as an attacker with the file
//! would, dropping the append-only triggers first).

use broker::store::{SqliteStore, Store};
use keybroker_tests::store_conformance::{self as conformance, Tamper, Tamperable};

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

/// Applies `t` to the SQLite file `path` as an attacker with the file
/// would, dropping the append-only triggers first.
fn tamper_sqlite(path: &std::path::Path, t: Tamper) {
    let c = rusqlite::Connection::open(path).unwrap();
    c.execute_batch(
        "DROP TRIGGER IF EXISTS audit_no_update; DROP TRIGGER IF EXISTS audit_no_delete;",
    )
    .unwrap();
    let x = hex::encode;
    let sql = match t {
        Tamper::ChangeVerdict(id) => format!("UPDATE audit SET verdict = 'allow' WHERE id = {id}"),
        Tamper::ChangeDetails(id) => {
            format!("UPDATE audit SET details_json = '{{}}' WHERE id = {id}")
        }
        Tamper::Delete(id) => format!("DELETE FROM audit WHERE id = {id}"),
        Tamper::Swap(a, b) => format!(
            "UPDATE audit SET id = -1 WHERE id = {a};
             UPDATE audit SET id = {a} WHERE id = {b};
             UPDATE audit SET id = {b} WHERE id = -1;"
        ),
        Tamper::DeleteLast => "DELETE FROM audit WHERE id = (SELECT MAX(id) FROM audit)".into(),
        Tamper::SetEntry {
            id,
            verdict,
            prev_hash,
            hash,
        } => format!(
            "UPDATE audit SET verdict = '{verdict}', prev_hash = X'{}', hash = X'{}' WHERE id = {id}",
            x(prev_hash),
            x(hash)
        ),
        Tamper::SetHead { id, hash } => format!(
            "UPDATE audit_head SET last_id = {id}, last_hash = X'{}'",
            x(hash)
        ),
        Tamper::SetKeyRecord {
            keyed_from,
            boundary,
        } => format!(
            "UPDATE audit_key SET keyed_from = {keyed_from}, boundary = X'{}'",
            x(boundary)
        ),
        Tamper::DeleteKeyRecord => "DELETE FROM audit_key".into(),
        Tamper::SetPruneAnchor {
            first_id,
            prev_hash,
        } => format!(
            "UPDATE audit_pruned SET first_id = {first_id}, prev_hash = X'{}'",
            x(prev_hash)
        ),
        Tamper::DeletePruneAnchor => "DELETE FROM audit_pruned".into(),
    };
    c.execute_batch(&sql).unwrap();
}

fn fresh_sqlite<'a>(
    dir: &'a std::path::Path,
    counter: &'a std::cell::Cell<u32>,
) -> impl Fn() -> Tamperable + 'a {
    move || {
        counter.set(counter.get() + 1);
        let path = dir.join(format!("t{}.db", counter.get()));
        let store = SqliteStore::open(&path).unwrap();
        (
            Box::new(store) as Box<dyn Store>,
            Box::new(move |t| tamper_sqlite(&path, t)) as Box<dyn Fn(Tamper)>,
        )
    }
}

#[test]
fn audit_tamper_through_raw_sqlite_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let counter = std::cell::Cell::new(0);
    conformance::audit_tamper_detected(&fresh_sqlite(dir.path(), &counter));
}

#[test]
fn keyed_audit_chain_rewritten_through_raw_sqlite_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let counter = std::cell::Cell::new(0);
    conformance::audit_keyed_tamper_detected(&fresh_sqlite(dir.path(), &counter));
}

#[test]
fn audit_verification_crosses_pages_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let counter = std::cell::Cell::new(0);
    conformance::audit_verify_crosses_pages(&fresh_sqlite(dir.path(), &counter));
}

#[test]
fn audit_prune_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let counter = std::cell::Cell::new(0);
    conformance::audit_prune_keeps_a_verifiable_chain(&fresh_sqlite(dir.path(), &counter));
    conformance::audit_prune_tamper_detected(&fresh_sqlite(dir.path(), &counter));
}
