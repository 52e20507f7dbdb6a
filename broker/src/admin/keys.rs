//! Key lifecycle: volume key rotation (start, cancel, state), purging
//! retired versions, master key rotation, and the status report.

use std::time::Duration;

use super::{Admin, AdminError, AdminErrorKind, Caller, ListenerInfo};
use crate::lifecycle::{
    self, LifecycleError, MasterProgress, MasterRotation, MasterStatus, RetiredVersion,
    RotationState,
};
use crate::store::{AuditFilter, PurgedVersion};

/// A started volume rotation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeRotation {
    /// The new pending version.
    pub pending: u32,
    /// The version that stays current until the guest's proof.
    pub current: Option<u32>,
}

impl VolumeRotation {
    /// What happens next, for the operator.
    pub fn next_steps(&self, volume: &str) -> String {
        let current = self
            .current
            .map_or_else(|| "the current version".to_owned(), |c| format!("v{c}"));
        format!(
            "The broker now releases v{p} beside {current}. v{p} becomes current once the guest \
             proves it enrolled it: at its next unlock (`guest-unlock unlock` at boot) or at once \
             with `guest-unlock rotate` in the guest; until then {current} keeps opening the \
             volume. `broker volume show {volume}` follows it; `broker volume cancel-rotation \
             {volume}` abandons it.",
            p = self.pending
        )
    }
}

/// A volume with a rotation waiting for the guest's proof.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingRotation {
    /// The volume.
    pub volume: String,
    /// Its pending version.
    pub pending: u32,
    /// Its current version.
    pub current: Option<u32>,
    /// When the pending version was created (Unix seconds).
    pub since: i64,
}

/// The broker's key lifecycle at a glance.
#[derive(Clone, Debug)]
pub struct StatusReport {
    /// Master keys, their roles and record counts.
    pub master: MasterStatus,
    /// 1 + master rotations completed through the admin API (audit log).
    pub generation: u64,
    /// Volumes with a pending rotation.
    pub pending: Vec<PendingRotation>,
    /// Retired versions still kept, by volume.
    pub retired: Vec<(String, RetiredVersion)>,
    /// The retention applied to retired versions.
    pub retired_retention: Duration,
    /// The broker's listeners.
    pub listeners: Vec<ListenerInfo>,
}

/// Whole days of a duration.
pub(super) fn days(d: Duration) -> u32 {
    u32::try_from(d.as_secs() / 86_400).unwrap_or(u32::MAX)
}

impl Admin {
    /// The rotation state of a volume (`lifecycle::rotation_state` with
    /// this broker's retention).
    pub fn rotation_state(&self, name: &str) -> Result<RotationState, AdminError> {
        Ok(lifecycle::rotation_state(
            self.store.as_ref(),
            name,
            self.retired_retention(),
        )?)
    }

    /// Starts a rotation of a volume's key (`lifecycle::rotate_volume`).
    pub fn volume_rotate(&self, caller: &Caller, name: &str) -> Result<VolumeRotation, AdminError> {
        let result = (|| {
            let pending = lifecycle::rotate_volume(self.store.as_ref(), &self.keyring, name)?;
            let current = self
                .store
                .key_versions(name)?
                .iter()
                .find(|k| k.state == crate::store::KeyState::Current)
                .map(|k| k.version);
            Ok(VolumeRotation { pending, current })
        })();
        let change = match &result {
            Ok(r) => {
                serde_json::json!({"pending_version": r.pending, "current_version": r.current})
            }
            Err(_) => serde_json::json!({}),
        };
        self.audited(caller, "volume.rotate", &[name], change, result)
    }

    /// Cancels a volume's pending rotation; returns the deleted version.
    pub fn volume_cancel_rotation(&self, caller: &Caller, name: &str) -> Result<u32, AdminError> {
        let result =
            lifecycle::cancel_rotation(self.store.as_ref(), name).map_err(AdminError::from);
        let change = match &result {
            Ok(v) => serde_json::json!({"cancelled_version": v}),
            Err(_) => serde_json::json!({}),
        };
        self.audited(caller, "volume.cancel_rotation", &[name], change, result)
    }

    /// Destroys retired versions retired more than `older_than_days` ago
    /// (default: the retention), of one volume or all. Returns what was
    /// destroyed and the retention applied, in days.
    pub fn volume_purge_retired(
        &self,
        caller: &Caller,
        name: Option<&str>,
        older_than_days: Option<u32>,
    ) -> Result<(Vec<PurgedVersion>, u32), AdminError> {
        let retention = match older_than_days {
            Some(d) => Duration::from_secs(u64::from(d) * 86_400),
            None => self.retired_retention(),
        };
        let days = days(retention);
        let now = time::OffsetDateTime::now_utc();
        let result = match name {
            Some(n) => lifecycle::purge_retired_volume(self.store.as_ref(), n, now, retention),
            None => lifecycle::purge_retired(self.store.as_ref(), now, retention),
        }
        .map_err(AdminError::from);
        let mut volumes: Vec<String> = match (&result, name) {
            (_, Some(n)) => vec![n.to_owned()],
            (Ok(purged), None) => purged.iter().map(|p| p.volume.clone()).collect(),
            (Err(_), None) => Vec::new(),
        };
        volumes.dedup();
        let volumes: Vec<&str> = volumes.iter().map(String::as_str).collect();
        let change = match &result {
            Ok(purged) => serde_json::json!({
                "older_than_days": days,
                "purged": purged.iter().map(|p| serde_json::json!({
                    "volume": p.volume, "version": p.version, "retired_at": p.retired_at,
                })).collect::<Vec<_>>(),
            }),
            Err(_) => serde_json::json!({"older_than_days": days}),
        };
        let result = result.map(|p| (p, days));
        self.audited(caller, "volume.purge_retired", &volumes, change, result)
    }

    /// Rotates the master key (`lifecycle::rotate_master`), calling
    /// `progress` after each committed batch. One rotation at a time per
    /// process; a second call meanwhile is refused.
    pub fn rotate_master(
        &self,
        caller: &Caller,
        batch_size: u32,
        progress: &mut dyn FnMut(&MasterProgress),
    ) -> Result<MasterRotation, AdminError> {
        let result = (|| {
            if batch_size == 0 {
                return Err(AdminError::invalid(
                    "batch size 0: give at least 1 record per batch (e.g. --batch 500)",
                ));
            }
            let _running = match self.master_rotation.try_lock() {
                Ok(g) => g,
                // A run that panicked left nothing half-done that a new
                // run cannot resume.
                Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => {
                    return Err(AdminError::new(
                        AdminErrorKind::FailedPrecondition,
                        "a master key rotation is already running in this broker; wait for it \
                         to finish (`broker status` shows it under way)",
                    ))
                }
            };
            Ok(lifecycle::rotate_master(
                self.store.as_ref(),
                &self.keyring,
                batch_size,
                progress,
            )?)
        })();
        let change = match &result {
            Ok(r) => serde_json::json!({
                "old_master_key_id": r.old.to_hex(),
                "new_master_key_id": r.new.to_hex(),
                "resealed": r.resealed,
                "batches": r.batches,
                "batch_size": batch_size,
            }),
            Err(_) => serde_json::json!({"batch_size": batch_size}),
        };
        self.audited(caller, "master.rotate", &[], change, result)
    }

    /// Master keys, rotations under way, retired versions, listeners.
    pub fn status(&self) -> Result<StatusReport, AdminError> {
        let settings = self.settings();
        let master = lifecycle::status(self.store.as_ref(), &self.keyring)?;
        let rotations = self.store.audit_entries(&AuditFilter {
            kind: Some("admin".into()),
            verdict: Some("allow".into()),
            ..AuditFilter::default()
        })?;
        let completed = rotations
            .iter()
            .filter(|e| {
                serde_json::from_str::<serde_json::Value>(&e.event.details_json)
                    .is_ok_and(|d| d["action"] == "master.rotate")
            })
            .count() as u64;
        let mut pending = Vec::new();
        let mut retired = Vec::new();
        for v in self.store.list_volumes()? {
            let st = match lifecycle::rotation_state(
                self.store.as_ref(),
                &v.name,
                settings.retired_retention,
            ) {
                Ok(st) => st,
                Err(LifecycleError::UnknownVolume(_)) => continue,
                Err(e) => return Err(e.into()),
            };
            if let Some((p, since)) = st.pending {
                pending.push(PendingRotation {
                    volume: v.name.clone(),
                    pending: p,
                    current: st.current,
                    since,
                });
            }
            for r in st.retired {
                retired.push((v.name.clone(), r));
            }
        }
        Ok(StatusReport {
            master,
            generation: 1 + completed,
            pending,
            retired,
            retired_retention: settings.retired_retention,
            listeners: settings.listeners,
        })
    }
}
