//! Master key rotation: re-seal every key version, and the audit chain
//! key, under a new master key, in batches, resumable after a crash; then
//! retire the old key file.
//!
//! The steps and why every instant is safe are in [`crate::keys::Keyring`]
//! and `docs/operations.md` ("Rotating the master key"). In short: records
//! only move from the old key to the new one, each by a compare-and-set
//! update in a committed transaction, both key files exist until no record
//! names the old key, and the file changes are an atomic link and an atomic
//! rename made after the store is durable.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::{failpoint, LifecycleError};
use crate::keys::{self, Keyring, MasterKeyId};
use crate::store::{ResealUpdate, Store};

/// Reported after each committed batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MasterProgress {
    /// Batch number in this run, from 1.
    pub batch: u64,
    /// Records re-sealed by this batch.
    pub resealed: u64,
    /// Records re-sealed so far in this run.
    pub resealed_total: u64,
    /// Records still under another key when this run started, minus those
    /// re-sealed since (an estimate if others write meanwhile).
    pub remaining: u64,
    /// Time this batch took (unseal, seal, commit).
    pub elapsed: Duration,
}

/// The outcome of [`rotate_master`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MasterRotation {
    /// The former master key.
    pub old: MasterKeyId,
    /// The master key now in the master key file.
    pub new: MasterKeyId,
    /// Records re-sealed by this run (a resumed run counts only its own).
    pub resealed: u64,
    /// Batches committed by this run.
    pub batches: u64,
    /// Where the old key file went (`<master_key>.retired-<id>`).
    pub retired_file: Option<PathBuf>,
    /// Wall time of the whole run.
    pub elapsed: Duration,
}

/// Rotates the master key: creates (or, after a crash, reuses)
/// `<master_key>.next`, re-seals every key version not yet under it,
/// `batch_size` records per transaction, calling `progress` after each
/// batch; then makes the store durable, retires the old key file to
/// `<master_key>.retired-<old id>` and moves the new key into place.
///
/// Safe to run again after a crash at any point: it resumes with the same
/// next key and re-seals only what is left. A concurrent run cannot apply a
/// record twice (`Store::reseal_batch` is a compare-and-set).
pub fn rotate_master(
    store: &dyn Store,
    keyring: &Keyring,
    batch_size: u32,
    progress: &mut dyn FnMut(&MasterProgress),
) -> Result<MasterRotation, LifecycleError> {
    if batch_size == 0 {
        return Err(LifecycleError::Master(
            "batch size must be at least 1".into(),
        ));
    }
    let started = Instant::now();
    let old = keyring.current_id();
    let new = keyring.begin_rotation()?;
    let sealing = keyring.sealing_key();
    if sealing.id() != new {
        return Err(LifecycleError::Master(format!(
            "the keyring seals under {} but the rotation's next key is {new}",
            sealing.id()
        )));
    }
    let mut remaining: u64 = store
        .master_key_usage()?
        .iter()
        .filter(|u| u.id != new)
        .map(|u| u.records)
        .sum();
    let mut batches = 0u64;
    let mut total = 0u64;
    loop {
        let t = Instant::now();
        let batch = store.keys_not_under(new, batch_size)?;
        if batch.is_empty() {
            // The audit chain key too, in its own compare-and-set.
            reseal_audit_key(store, keyring, None, &sealing)?;
            // Make every re-sealed record durable before the old key file
            // changes, then check once more that nothing names the old key
            // (a record written meanwhile by a process that had not loaded
            // the next key yet).
            failpoint::hit("master-before-retire");
            store.sync_durable()?;
            if store.keys_not_under(new, 1)?.is_empty()
                && reseal_audit_key(store, keyring, None, &sealing)?
            {
                break;
            }
            continue;
        }
        let mut updates = Vec::with_capacity(batch.len());
        for rec in &batch {
            let key = keyring
                .unseal(&rec.volume, rec.version, &rec.sealed)
                .map_err(|e| {
                    LifecycleError::Master(format!(
                        "cannot unseal version {} of volume {:?} (sealed under {}): {e}; \
                         nothing was changed for it, the rotation can be resumed once its \
                         master key file is back in place",
                        rec.version, rec.volume, rec.sealed.master_key_id
                    ))
                })?;
            updates.push(ResealUpdate {
                volume: rec.volume.clone(),
                version: rec.version,
                from: rec.sealed.master_key_id,
                sealed: keys::seal(&sealing, &rec.volume, rec.version, &key)?,
            });
        }
        let n = store.reseal_batch(&updates)?;
        batches += 1;
        total += n;
        remaining = remaining.saturating_sub(n);
        if failpoint::armed() {
            failpoint::hit(&format!("master-after-batch-{batches}"));
        }
        progress(&MasterProgress {
            batch: batches,
            resealed: n,
            resealed_total: total,
            remaining,
            elapsed: t.elapsed(),
        });
    }
    let old_key = keyring.key(old);
    let retired = keyring.finish_rotation(&|| failpoint::hit("master-after-link"))?;
    failpoint::hit("master-after-retire");
    // A writer that sealed under the old key after the last check (a
    // process that had not loaded the next key) would leave a record only
    // the retired file opens: re-seal such stragglers with the old key
    // still in hand.
    if let Some(old_key) = old_key {
        loop {
            let stragglers: Vec<_> = store
                .keys_not_under(new, batch_size)?
                .into_iter()
                .filter(|r| r.sealed.master_key_id == old)
                .collect();
            if stragglers.is_empty() {
                break;
            }
            let mut updates = Vec::with_capacity(stragglers.len());
            for rec in &stragglers {
                let key = keys::unseal(&old_key, &rec.volume, rec.version, &rec.sealed)?;
                updates.push(ResealUpdate {
                    volume: rec.volume.clone(),
                    version: rec.version,
                    from: old,
                    sealed: keys::seal(&sealing, &rec.volume, rec.version, &key)?,
                });
            }
            total += store.reseal_batch(&updates)?;
        }
        // An audit chain key made under the old key meanwhile (a store
        // opened for the first time by such a process).
        reseal_audit_key(store, keyring, Some(&*old_key), &sealing)?;
    }
    Ok(MasterRotation {
        old,
        new,
        resealed: total,
        batches,
        retired_file: retired.file,
        elapsed: started.elapsed(),
    })
}

/// Re-seals the audit chain key under `to` (`crate::audit_key::reseal`);
/// whether it is now under `to`.
fn reseal_audit_key(
    store: &dyn Store,
    keyring: &Keyring,
    old: Option<&keys::MasterKey>,
    to: &keys::MasterKey,
) -> Result<bool, LifecycleError> {
    crate::audit_key::reseal(store, keyring, old, to)
        .map_err(|e| LifecycleError::Master(format!("re-sealing {e}")))
}

/// What a master key is to this broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MasterKeyRole {
    /// In the master key file.
    Current,
    /// In `<master_key>.next`: a rotation is under way.
    Next,
    /// Named by records but not loaded (a retired or foreign key: those
    /// records cannot be unsealed until its file is back).
    Unloaded,
}

impl fmt::Display for MasterKeyRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MasterKeyRole::Current => "current",
            MasterKeyRole::Next => "next (rotation under way)",
            MasterKeyRole::Unloaded => "NOT LOADED",
        })
    }
}

/// One master key and the records under it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MasterKeyStatus {
    /// Its id.
    pub id: MasterKeyId,
    /// Its role.
    pub role: MasterKeyRole,
    /// Records sealed under it.
    pub records: u64,
    /// Of which retired versions.
    pub retired: u64,
}

/// The master keys and how many records each seals.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MasterStatus {
    /// The key in the master key file.
    pub current: MasterKeyId,
    /// The key in `<master_key>.next`, during a rotation.
    pub next: Option<MasterKeyId>,
    /// Current first, then next, then any other id records name.
    pub keys: Vec<MasterKeyStatus>,
}

impl MasterStatus {
    /// Whether a master rotation is under way (started, not finished).
    pub fn rotation_under_way(&self) -> bool {
        self.next.is_some()
    }
}

impl fmt::Display for MasterStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "current master key: {}", self.current)?;
        match self.next {
            Some(n) => writeln!(
                f,
                "master key rotation under way to {n}: run it again to finish"
            )?,
            None => writeln!(f, "no master key rotation under way")?,
        }
        for k in &self.keys {
            writeln!(
                f,
                "  {}  {:<26} {} records ({} retired)",
                k.id,
                k.role.to_string(),
                k.records,
                k.retired
            )?;
        }
        Ok(())
    }
}

/// Per master key id: role and how many records use it; the current key;
/// whether a master rotation is under way.
pub fn status(store: &dyn Store, keyring: &Keyring) -> Result<MasterStatus, LifecycleError> {
    let current = keyring.current_id();
    let next = keyring.next_id();
    let usage = store.master_key_usage()?;
    let mut keys: Vec<MasterKeyStatus> = Vec::new();
    let mut push = |id: MasterKeyId, role: MasterKeyRole| {
        let u = usage.iter().find(|u| u.id == id);
        keys.push(MasterKeyStatus {
            id,
            role,
            records: u.map_or(0, |u| u.records),
            retired: u.map_or(0, |u| u.retired),
        });
    };
    push(current, MasterKeyRole::Current);
    if let Some(n) = next {
        push(n, MasterKeyRole::Next);
    }
    for u in &usage {
        if u.id != current && Some(u.id) != next {
            push(u.id, MasterKeyRole::Unloaded);
        }
    }
    Ok(MasterStatus {
        current,
        next,
        keys,
    })
}
