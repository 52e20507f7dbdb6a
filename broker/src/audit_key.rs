//! The audit chain key of a store (`keys::AuditChainKey`): unsealed with
//! the master key and installed in the store, so that it appends and
//! verifies the keyed chain; made on the first open of a store that has
//! none (a new database, keyed from entry 1, or one written before the
//! chain was keyed, keyed from the entry after its current head); and
//! re-sealed by a master key rotation.
//!
//! Creation is a compare-and-set against the chain head under the lock
//! appends take (`AuditStore::insert_audit_key`), so no entry is appended
//! between reading the boundary and storing the record, and of two
//! replicas starting at once exactly one creates the key; the other
//! unseals that one.

use std::sync::Arc;

use crate::keys::{
    seal_audit_chain_key, unseal_audit_chain_key, AuditChainKey, KeyError, Keyring, MasterKey,
};
use crate::store::{AuditKeyInsert, AuditKeyRecord, ChainKeying, Store, StoreError};

/// Why the store's audit chain key cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditKeyError {
    /// The record names a master key this process does not hold.
    #[error("the audit chain key in the database is sealed under master key {id}, which is not loaded; point [keys] master_key at that key's file (after a master key rotation, the database must have finished it: run the rotation again with both key files in place)")]
    KeyNotHeld {
        /// The master key id the record names.
        id: crate::keys::MasterKeyId,
    },
    /// The record does not unseal.
    #[error("the audit chain key in the database cannot be unsealed ({source}): the record, or where the keyed chain starts (entry {keyed_from}), was changed outside the broker. Keep a copy of the database for investigation and restore it from your backup")]
    Unseal {
        /// The record's `keyed_from`.
        keyed_from: i64,
        /// Why.
        source: KeyError,
    },
    /// A key could not be made or sealed.
    #[error("making the audit chain key: {0}")]
    Keys(#[from] KeyError),
    /// The store failed.
    #[error("the audit chain key: {0}")]
    Store(#[from] StoreError),
}

/// Unseals `record` with the master key it names.
fn unseal(keyring: &Keyring, record: &AuditKeyRecord) -> Result<AuditChainKey, AuditKeyError> {
    let id = record.sealed.master_key_id;
    let master = match keyring.key(id) {
        Some(k) => k,
        None => {
            // A rotation finished by another process: re-read the files.
            keyring.refresh()?;
            keyring.key(id).ok_or(AuditKeyError::KeyNotHeld { id })?
        }
    };
    unseal_audit_chain_key(&master, record.keyed_from, &record.boundary, &record.sealed).map_err(
        |source| AuditKeyError::Unseal {
            keyed_from: record.keyed_from,
            source,
        },
    )
}

fn install(store: &dyn Store, key: &AuditChainKey, record: &AuditKeyRecord) -> i64 {
    store.install_audit_key(Arc::new(ChainKeying::new(
        key,
        record.keyed_from,
        record.boundary,
    )));
    record.keyed_from
}

/// Unseals the store's audit chain key and installs it in `store`; with
/// `create`, makes one first if the store has none. Returns the first entry
/// id the key MACs, or `None` (only without `create`) when the store has
/// no chain key yet (its entries are all plain).
pub fn load(
    store: &dyn Store,
    keyring: &Keyring,
    create: bool,
) -> Result<Option<i64>, AuditKeyError> {
    // Each retry follows an append by another process between reading the
    // head and storing the record; a busy log settles within a few.
    for _ in 0..32 {
        if let Some(record) = store.audit_key_record()? {
            let key = unseal(keyring, &record)?;
            return Ok(Some(install(store, &key, &record)));
        }
        if !create {
            return Ok(None);
        }
        let (last_id, boundary) = store.audit_head()?;
        let key = AuditChainKey::generate()?;
        let record = AuditKeyRecord {
            keyed_from: last_id + 1,
            boundary,
            sealed: seal_audit_chain_key(&keyring.sealing_key(), &key, last_id + 1, &boundary)?,
        };
        match store.insert_audit_key(&record)? {
            AuditKeyInsert::Created => {
                tracing::info!(
                    keyed_from = record.keyed_from,
                    "made the audit chain key: entries from {} on are MAC'd under it (sealed \
                     under the master key in the database)",
                    record.keyed_from
                );
                return Ok(Some(install(store, &key, &record)));
            }
            AuditKeyInsert::Exists(theirs) => {
                let key = unseal(keyring, &theirs)?;
                return Ok(Some(install(store, &key, &theirs)));
            }
            AuditKeyInsert::HeadMoved => continue,
        }
    }
    Err(StoreError::Unavailable(
        "the audit log kept growing while its chain key was being made; try again".into(),
    )
    .into())
}

/// Master key rotation's step for the audit chain key: re-seals it under
/// `to` if it is under another key, unsealing with `keyring` or, after
/// the key files were swapped, `old` (compare-and-set: a concurrent run
/// cannot apply it twice). Returns whether the record is now under `to`
/// (or there is none).
pub fn reseal(
    store: &dyn Store,
    keyring: &Keyring,
    old: Option<&MasterKey>,
    to: &MasterKey,
) -> Result<bool, AuditKeyError> {
    let Some(record) = store.audit_key_record()? else {
        return Ok(true);
    };
    let from = record.sealed.master_key_id;
    if from == to.id() {
        return Ok(true);
    }
    let key = match old.filter(|k| k.id() == from) {
        Some(k) => unseal_audit_chain_key(k, record.keyed_from, &record.boundary, &record.sealed)
            .map_err(|source| AuditKeyError::Unseal {
            keyed_from: record.keyed_from,
            source,
        })?,
        None => unseal(keyring, &record)?,
    };
    let sealed = seal_audit_chain_key(to, &key, record.keyed_from, &record.boundary)?;
    store.reseal_audit_key(from, &sealed)?;
    Ok(store
        .audit_key_record()?
        .is_some_and(|r| r.sealed.master_key_id == to.id()))
}
