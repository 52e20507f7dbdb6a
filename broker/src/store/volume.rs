//! Volumes and their key versions (pending → current → retired), sealed
//! under the master key.

use std::fmt;

use super::{StoreError, StoredPolicy};
use crate::keys::SealedKey;

/// A volume to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewVolume {
    /// Name (what guests ask for).
    pub name: String,
    /// Name of its policy (must exist).
    pub policy: String,
    /// Free text.
    pub description: String,
}

/// A stored volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeRecord {
    /// Name.
    pub name: String,
    /// Policy name.
    pub policy: String,
    /// Free text.
    pub description: String,
    /// Disabled volumes release no key.
    pub enabled: bool,
    /// Creation time (Unix seconds).
    pub created_at: i64,
}

/// State of a key version. Rotation goes pending → current, current →
/// retired, so that at every moment one of two keys opens the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyState {
    /// Created by a rotation, released beside the current key, not yet
    /// proven to be enrolled in the guest's LUKS header.
    Pending,
    /// The key that opens the volume.
    Current,
    /// Replaced; kept for old snapshots until purged.
    Retired,
}

impl KeyState {
    /// `pending`, `current` or `retired`.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Pending => "pending",
            KeyState::Current => "current",
            KeyState::Retired => "retired",
        }
    }

    /// Parses [`KeyState::as_str`]'s output.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(KeyState::Pending),
            "current" => Some(KeyState::Current),
            "retired" => Some(KeyState::Retired),
            _ => None,
        }
    }
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One key version of a volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyVersionRecord {
    /// Version, from 1.
    pub version: u32,
    /// State.
    pub state: KeyState,
    /// The sealed key.
    pub sealed: SealedKey,
    /// Creation time (Unix seconds).
    pub created_at: i64,
    /// When it was retired (Unix seconds); `None` unless retired.
    pub retired_at: Option<i64>,
}

/// A retired key version destroyed by [`VolumeStore::purge_retired`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PurgedVersion {
    /// Volume.
    pub volume: String,
    /// Version.
    pub version: u32,
    /// When it had been retired (Unix seconds).
    pub retired_at: i64,
}

/// Everything key release reads about one volume, from one consistent
/// snapshot (one read transaction instead of three).
#[derive(Clone, Debug)]
pub struct ReleaseView {
    /// The volume.
    pub volume: VolumeRecord,
    /// Its policy's latest revision; `None` if the policy is missing.
    pub policy: Option<StoredPolicy>,
    /// Its current and pending key versions (retired ones excluded).
    pub keys: Vec<KeyVersionRecord>,
}

/// The volumes and key versions part of a [`Store`](super::Store).
pub trait VolumeStore {
    /// Creates an enabled volume with key version 1 (current). The policy
    /// must exist; an existing volume is `AlreadyExists`.
    fn create_volume(&self, volume: &NewVolume, first_key: &SealedKey) -> Result<(), StoreError>;

    /// A volume by name.
    fn get_volume(&self, name: &str) -> Result<Option<VolumeRecord>, StoreError>;

    /// Every volume, by name.
    fn list_volumes(&self) -> Result<Vec<VolumeRecord>, StoreError>;

    /// Enables or disables a volume (takes effect on the next attestation).
    fn set_volume_enabled(&self, name: &str, enabled: bool) -> Result<(), StoreError>;

    /// Points a volume at another (existing) policy.
    fn set_volume_policy(&self, name: &str, policy: &str) -> Result<(), StoreError>;

    /// Deletes a volume and all its key versions; refused (`Conflict`) while
    /// the volume is enabled.
    fn delete_volume(&self, name: &str) -> Result<(), StoreError>;

    /// The volume, its policy and its releasable keys in one snapshot;
    /// `None` if the volume does not exist.
    fn release_view(&self, name: &str) -> Result<Option<ReleaseView>, StoreError>;

    /// Every key version of a volume, by version.
    fn key_versions(&self, name: &str) -> Result<Vec<KeyVersionRecord>, StoreError>;

    /// The versions a guest receives: current, then pending if any.
    fn releasable_keys(&self, name: &str) -> Result<Vec<KeyVersionRecord>, StoreError>;

    /// Adds a pending version beside the current one. `version` must be one
    /// more than the highest existing version and no version may be pending
    /// (`Conflict` otherwise), so two concurrent rotations cannot both win.
    fn add_pending_version(
        &self,
        name: &str,
        version: u32,
        sealed: &SealedKey,
    ) -> Result<(), StoreError>;

    /// Makes pending `version` current and the current one retired (with
    /// `retired_at`), in one transaction. `Conflict` if `version` is not
    /// the pending one, so of two concurrent promotions one fails.
    fn promote_pending(&self, name: &str, version: u32) -> Result<(), StoreError>;

    /// The number the next pending version of a volume must have: one more
    /// than the highest version it ever had (a cancelled one included).
    fn next_key_version(&self, name: &str) -> Result<u32, StoreError>;

    /// Deletes the pending version of a volume (a rotation abandoned before
    /// the guest proved it) and returns its number. Its number is never
    /// handed out again for this volume. `Conflict` if none is pending.
    fn cancel_pending(&self, name: &str) -> Result<u32, StoreError>;

    /// Destroys retired key versions retired strictly before `cutoff_unix`;
    /// never touches pending or current ones. Returns what was destroyed.
    fn purge_retired(&self, cutoff_unix: i64) -> Result<Vec<PurgedVersion>, StoreError>;

    /// [`VolumeStore::purge_retired`] for one volume only. `NotFound` if the
    /// volume does not exist.
    fn purge_retired_volume(
        &self,
        name: &str,
        cutoff_unix: i64,
    ) -> Result<Vec<PurgedVersion>, StoreError>;
}

/// Checks that key version `version` of `name`, found in `state` (`None`:
/// no such version), may be promoted: only a pending version may.
pub(crate) fn expect_pending(
    name: &str,
    version: u32,
    state: Option<&str>,
) -> Result<(), StoreError> {
    match state {
        Some("pending") => Ok(()),
        Some(other) => Err(StoreError::Conflict(format!(
            "key version {version} of volume {name:?} is {other}, not pending"
        ))),
        None => Err(StoreError::NotFound {
            what: "key version",
            name: format!("{name}#{version}"),
        }),
    }
}
