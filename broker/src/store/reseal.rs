//! Master key rotation's view of the key versions: which records are not
//! yet under the new master key, and their compare-and-set re-sealing.

use super::StoreError;
use crate::keys::{MasterKeyId, SealedKey};

/// One key version and its sealed record, as master rotation reads them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedVersion {
    /// Volume.
    pub volume: String,
    /// Version.
    pub version: u32,
    /// The record.
    pub sealed: SealedKey,
}

/// A re-sealed record to write, if the row is still under `from`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResealUpdate {
    /// Volume.
    pub volume: String,
    /// Version.
    pub version: u32,
    /// The master key id the row must still have for the update to apply.
    pub from: MasterKeyId,
    /// The record under the new master key.
    pub sealed: SealedKey,
}

/// How many key records are sealed under one master key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MasterKeyUsage {
    /// The master key id.
    pub id: MasterKeyId,
    /// Records (key versions of any state) sealed under it.
    pub records: u64,
    /// Of which retired.
    pub retired: u64,
    /// Earliest creation time of those records (Unix seconds).
    pub oldest_created_at: i64,
}

/// The master-key re-sealing part of a [`Store`](super::Store).
pub trait ResealStore {
    /// Up to `limit` key versions (any state) whose record is not sealed
    /// under `master`, ordered by volume and version.
    fn keys_not_under(
        &self,
        master: MasterKeyId,
        limit: u32,
    ) -> Result<Vec<SealedVersion>, StoreError>;

    /// Writes re-sealed records in one transaction. Each row is updated only
    /// if its master key id is still `update.from` (compare-and-set), so a
    /// concurrent or repeated run never applies an update twice or over a
    /// newer record. Returns how many rows were updated.
    fn reseal_batch(&self, updates: &[ResealUpdate]) -> Result<u64, StoreError>;

    /// Records per master key id, by id.
    fn master_key_usage(&self) -> Result<Vec<MasterKeyUsage>, StoreError>;

    /// Replaces the sealed audit chain key with `sealed` (the same key
    /// under another master key) if it is still sealed under `from`
    /// (compare-and-set, like [`ResealStore::reseal_batch`]). Returns
    /// whether it was updated.
    fn reseal_audit_key(&self, from: MasterKeyId, sealed: &SealedKey) -> Result<bool, StoreError>;
}
