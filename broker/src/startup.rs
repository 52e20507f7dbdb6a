//! Start-up checks: what would only fail later, refused before the broker
//! serves, each refusal naming the fix.
//!
//! [`check_audit_tail`]: the newest audit entries (from the checkpoint's
//! entry on, at least the last 1,000) must verify under the chain key.
//!
//! [`check_master_key`]: the master key must be the one the database
//! belongs to. The database records a key-check value per master key
//! ([`KeyCheckStore`](crate::store::KeyCheckStore)); a database written
//! before those existed gets one on its first start with this version,
//! after the key was shown to unseal one of its records (if it has any).

use std::path::{Path, PathBuf};

use crate::keys::derived::key_check_value;
use crate::keys::{KeyError, Keyring, MasterKeyId};
use crate::store::{KeyCheck, Store, StoreError};

/// Why the broker refuses to start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartupError {
    /// The master key is not the one the database belongs to.
    #[error("master key {} (id {loaded}) is not the key of this database ({why}); point [keys] master_key at the master.key that belongs to this database (restore it from your offline backup), or [store] path at the database of this key. Never replace a master key: every sealed disk key needs the one it was sealed under", path.display())]
    WrongMasterKey {
        /// The master key file.
        path: PathBuf,
        /// Its id.
        loaded: MasterKeyId,
        /// What the database says.
        why: String,
    },
    /// The tail of the audit chain does not verify.
    #[error("the audit log is broken at entry {at_id}: {what}. The database was changed outside the broker: keep a copy of it for investigation, then restore the database from a backup taken before entry {at_id} was written (`broker restore`); the broker does not serve on an audit log it cannot vouch for")]
    AuditChainBroken {
        /// The first entry that fails.
        at_id: i64,
        /// What is wrong there.
        what: String,
    },
    /// The store failed while checking.
    #[error("checking the database at start: {0}")]
    Store(#[from] StoreError),
    /// A key could not be derived.
    #[error("checking the master key: {0}")]
    Keys(#[from] KeyError),
}

/// Checks that the keyring's keys are the ones `store` belongs to, and
/// records the key-check value of any held key the store does not know
/// yet (a new database, a database from before key-check values, a
/// finished master key rotation).
pub fn check_master_key(
    store: &dyn Store,
    keyring: &Keyring,
    path: &Path,
) -> Result<(), StartupError> {
    let held = keyring.all_keys();
    let loaded = keyring.current_id();
    let refuse = |why: String| StartupError::WrongMasterKey {
        path: path.to_owned(),
        loaded,
        why,
    };
    // 1. Every sealed record names a key this process holds.
    let usage = store.master_key_usage()?;
    let foreign: Vec<String> = usage
        .iter()
        .filter(|u| u.records > 0 && !keyring.has(u.id))
        .map(|u| format!("{} ({} key records)", u.id, u.records))
        .collect();
    if !foreign.is_empty() {
        return Err(refuse(format!(
            "its keys are sealed under master key {}",
            foreign.join(", ")
        )));
    }
    // 2. Recorded key-check values of held keys match.
    let checks = store.key_checks()?;
    let mut known = Vec::new();
    for k in &held {
        let kcv = key_check_value(k)?;
        if let Some(c) = checks.iter().find(|c| c.master_key_id == k.id()) {
            if c.kcv != kcv {
                return Err(refuse(
                    "its key-check value for this key id does not match".into(),
                ));
            }
            known.push(k.id());
        }
    }
    let has_records = usage.iter().any(|u| u.records > 0);
    if known.is_empty() && !checks.is_empty() && !has_records {
        let ids: Vec<String> = checks.iter().map(|c| c.master_key_id.to_hex()).collect();
        return Err(refuse(format!(
            "it belongs to master key {}",
            ids.join(", ")
        )));
    }
    // 3. Record the held keys it does not know, each proven first by
    // unsealing one of its records when it has any.
    for k in &held {
        if known.contains(&k.id()) {
            continue;
        }
        if let Some((volume, version, sealed)) = first_record_under(store, k.id())? {
            crate::keys::unseal(k, &volume, version, &sealed).map_err(|e| {
                refuse(format!(
                    "its record of volume {volume:?} version {version} does not unseal: {e}"
                ))
            })?;
        }
        store.put_key_check(&KeyCheck {
            master_key_id: k.id(),
            kcv: key_check_value(k)?,
        })?;
        tracing::info!(master_key = %k.id(), "recorded the master key's key-check value in the database");
    }
    Ok(())
}

/// Entries the start-up check of the audit chain's tail covers at least.
pub const AUDIT_TAIL_ENTRIES: i64 = 1000;

/// Verifies the audit chain's tail with the installed chain key: from the
/// checkpoint's entry (`checkpoint_id`, what the file beside the master
/// key vouches for) to the head, and at least the last
/// [`AUDIT_TAIL_ENTRIES`]. Returns the number of entries checked.
pub fn check_audit_tail(
    store: &dyn Store,
    checkpoint_id: Option<i64>,
) -> Result<u64, StartupError> {
    let (head, _) = store.audit_head()?;
    let from = checkpoint_id
        .unwrap_or(i64::MAX)
        .min(head - (AUDIT_TAIL_ENTRIES - 1))
        .max(1);
    match store.verify_audit_from(from) {
        Ok(n) => Ok(n),
        Err(StoreError::AuditChain(e)) => Err(StartupError::AuditChainBroken {
            at_id: e.at_id,
            what: e.what,
        }),
        Err(e) => Err(e.into()),
    }
}

fn first_record_under(
    store: &dyn Store,
    id: MasterKeyId,
) -> Result<Option<(String, u32, crate::keys::SealedKey)>, StoreError> {
    for v in store.list_volumes()? {
        for k in store.key_versions(&v.name)? {
            if k.sealed.master_key_id == id {
                return Ok(Some((v.name, k.version, k.sealed)));
            }
        }
    }
    Ok(None)
}
