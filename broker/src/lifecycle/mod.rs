//! Key lifecycle: volume key rotation (pending → current → retired →
//! purged) and master key rotation (re-sealing every record under a new
//! master key, resumable after a crash).
//!
//! Plain library functions over a [`Store`] and a [`Keyring`]; the admin
//! API and CLI call them, the guest-facing half of volume rotation
//! (`ConfirmRotation`) lives in [`crate::release`]. The state machine and
//! the file states of a master rotation are in `docs/operations.md`,
//! "Rotating keys".
//!
//! **Invariant:** nothing here makes a key version current. Only a
//! guest's verified rotation proof does (`Broker::confirm_rotation`), so a
//! volume is never left with a current key that its LUKS header lacks.

#[cfg(feature = "failpoints")]
pub mod failpoint;
mod master;

/// Without the `failpoints` feature (every build but the tests'), crash
/// points compile to nothing: no environment is read, no point is armed.
#[cfg(not(feature = "failpoints"))]
pub(crate) mod failpoint {
    /// Nothing to read.
    #[inline(always)]
    pub fn init() {}

    /// Never armed.
    #[inline(always)]
    pub fn armed() -> bool {
        false
    }

    /// Never fires.
    #[inline(always)]
    pub fn hit(_point: &str) {}
}

use std::fmt;
use std::time::Duration;

use time::OffsetDateTime;

use crate::keys::{KeyError, Keyring, VolumeKey};
use crate::store::{KeyState, PurgedVersion, Store, StoreError};

pub use master::{
    rotate_master, status, MasterKeyRole, MasterKeyStatus, MasterProgress, MasterRotation,
    MasterStatus,
};

/// Errors of lifecycle operations. Each message says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LifecycleError {
    /// A rotation of this volume is already waiting for the guest's proof.
    #[error(
        "volume {volume:?} already has pending key version {version} awaiting the guest's proof; \
         it becomes current when the guest confirms it (at its next unlock, or \
         `guest-unlock rotate` in the guest), or cancel that rotation first with \
         `broker volume cancel-rotation {volume}` (safe: the guest keeps opening the volume \
         with the current key)"
    )]
    RotationPending {
        /// The volume.
        volume: String,
        /// Its pending version.
        version: u32,
    },
    /// Cancel was asked but nothing is pending.
    #[error(
        "volume {volume:?} has no pending key version; there is no rotation to cancel \
         (`broker volume show {volume}` shows its key versions)"
    )]
    NoPendingRotation {
        /// The volume.
        volume: String,
    },
    /// The volume does not exist.
    #[error("no volume named {0:?}; `broker volume list` shows the enrolled ones")]
    UnknownVolume(String),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// A key could not be sealed, unsealed or its file handled.
    #[error("keys: {0}")]
    Keys(#[from] KeyError),
    /// A master key rotation cannot proceed.
    #[error("master key rotation: {0}")]
    Master(String),
}

fn volume_err(name: &str) -> impl FnOnce(StoreError) -> LifecycleError + '_ {
    move |e| match e {
        StoreError::NotFound { what: "volume", .. } => LifecycleError::UnknownVolume(name.into()),
        e => LifecycleError::Store(e),
    }
}

/// Starts a rotation of `name`: a new random key, sealed under the
/// keyring's sealing key, stored as a pending version (the highest version
/// ever used + 1) beside the current one. Attest releases both from now on;
/// the pending one becomes current only when the guest proves it enrolled
/// it. Refused while another rotation of the volume is pending. Returns the
/// new version.
pub fn rotate_volume(
    store: &dyn Store,
    keyring: &Keyring,
    name: &str,
) -> Result<u32, LifecycleError> {
    let versions = store.key_versions(name).map_err(volume_err(name))?;
    if let Some(p) = versions.iter().find(|k| k.state == KeyState::Pending) {
        return Err(LifecycleError::RotationPending {
            volume: name.into(),
            version: p.version,
        });
    }
    let version = store.next_key_version(name).map_err(volume_err(name))?;
    let key = VolumeKey::generate();
    let sealed = keyring.seal(name, version, &key)?;
    match store.add_pending_version(name, version, &sealed) {
        Ok(()) => Ok(version),
        // A concurrent rotation won the race: report it as such.
        Err(StoreError::Conflict(msg)) => match pending_version(store, name)? {
            Some(v) => Err(LifecycleError::RotationPending {
                volume: name.into(),
                version: v,
            }),
            None => Err(LifecycleError::Store(StoreError::Conflict(msg))),
        },
        Err(e) => Err(volume_err(name)(e)),
    }
}

fn pending_version(store: &dyn Store, name: &str) -> Result<Option<u32>, LifecycleError> {
    Ok(store
        .key_versions(name)
        .map_err(volume_err(name))?
        .iter()
        .find(|k| k.state == KeyState::Pending)
        .map(|k| k.version))
}

/// Cancels the pending rotation of `name`: deletes the pending version,
/// which was never proven, so the current key keeps opening the volume (a
/// keyslot the guest may already have added for it simply stops being
/// released). Its version number is not reused. Returns the cancelled
/// version.
pub fn cancel_rotation(store: &dyn Store, name: &str) -> Result<u32, LifecycleError> {
    match store.cancel_pending(name) {
        Ok(v) => Ok(v),
        Err(StoreError::Conflict(_)) => Err(LifecycleError::NoPendingRotation {
            volume: name.into(),
        }),
        Err(e) => Err(volume_err(name)(e)),
    }
}

/// Destroys every retired key version retired more than `retention` before
/// `now` (`[keys] retired_retention_days`). Pending and current versions
/// are never touched. Returns what was destroyed.
pub fn purge_retired(
    store: &dyn Store,
    now: OffsetDateTime,
    retention: Duration,
) -> Result<Vec<PurgedVersion>, LifecycleError> {
    let secs = i64::try_from(retention.as_secs()).unwrap_or(i64::MAX);
    let cutoff = now.unix_timestamp().saturating_sub(secs);
    Ok(store.purge_retired(cutoff)?)
}

/// [`purge_retired`] for one volume only; [`LifecycleError::UnknownVolume`]
/// if it does not exist.
pub fn purge_retired_volume(
    store: &dyn Store,
    name: &str,
    now: OffsetDateTime,
    retention: Duration,
) -> Result<Vec<PurgedVersion>, LifecycleError> {
    let secs = i64::try_from(retention.as_secs()).unwrap_or(i64::MAX);
    let cutoff = now.unix_timestamp().saturating_sub(secs);
    store
        .purge_retired_volume(name, cutoff)
        .map_err(volume_err(name))
}

/// A retired version and when it may be purged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetiredVersion {
    /// Version.
    pub version: u32,
    /// When it was retired (Unix seconds).
    pub retired_at: i64,
    /// From when `purge_retired` destroys it (Unix seconds).
    pub kept_until: i64,
}

/// Where a volume stands in its rotation, for display.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RotationState {
    /// The volume.
    pub volume: String,
    /// Its current version (`None` only for a corrupt store).
    pub current: Option<u32>,
    /// A pending version awaiting the guest's proof, and since when.
    pub pending: Option<(u32, i64)>,
    /// Retired versions still kept.
    pub retired: Vec<RetiredVersion>,
}

/// The rotation state of `name`, with the dates retired versions are kept
/// until under `retention`.
pub fn rotation_state(
    store: &dyn Store,
    name: &str,
    retention: Duration,
) -> Result<RotationState, LifecycleError> {
    let versions = store.key_versions(name).map_err(volume_err(name))?;
    let secs = i64::try_from(retention.as_secs()).unwrap_or(i64::MAX);
    let mut st = RotationState {
        volume: name.into(),
        current: None,
        pending: None,
        retired: Vec::new(),
    };
    for k in versions {
        match k.state {
            KeyState::Current => st.current = Some(k.version),
            KeyState::Pending => st.pending = Some((k.version, k.created_at)),
            KeyState::Retired => {
                let at = k.retired_at.unwrap_or(k.created_at);
                st.retired.push(RetiredVersion {
                    version: k.version,
                    retired_at: at,
                    kept_until: at.saturating_add(secs),
                });
            }
        }
    }
    Ok(st)
}

/// `YYYY-MM-DD` (UTC) of a Unix time.
pub fn date(unix: i64) -> String {
    match OffsetDateTime::from_unix_timestamp(unix) {
        Ok(t) => format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day()),
        Err(_) => unix.to_string(),
    }
}

impl fmt::Display for RotationState {
    /// "no rotation (current v1)", "pending v3 awaiting the guest's proof
    /// (current v2)", "current v3, retired v2 kept until 2026-12-26".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let current = self
            .current
            .map_or_else(|| "none".to_owned(), |v| format!("v{v}"));
        match self.pending {
            Some((p, _)) => write!(
                f,
                "pending v{p} awaiting the guest's proof (current {current})"
            )?,
            None if self.retired.is_empty() => write!(f, "no rotation (current {current})")?,
            None => write!(f, "current {current}")?,
        }
        for r in &self.retired {
            write!(
                f,
                ", retired v{} kept until {}",
                r.version,
                date(r.kept_until)
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
