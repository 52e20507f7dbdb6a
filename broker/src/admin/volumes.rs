//! Volumes: enrollment with a fresh key, listing, enabling and disabling,
//! deletion.

use super::{Admin, AdminError, AdminErrorKind, Caller};
use crate::keys::VolumeKey;
use crate::lifecycle::{self, LifecycleError, RotationState};
use crate::store::{KeyVersionRecord, NewVolume, ReleaseView, VolumeRecord};

impl Admin {
    /// Enrolls a volume with a fresh 64-byte key (version 1, current).
    pub fn volume_add(
        &self,
        caller: &Caller,
        name: &str,
        policy: &str,
        description: &str,
    ) -> Result<VolumeRecord, AdminError> {
        let max = self.settings().max_description_bytes;
        let description_ok = check_description(description, max);
        let result = (|| {
            keybroker_proto::VolumeId::new(name)
                .map_err(|e| AdminError::invalid(format!("invalid volume name: {e}")))?;
            description_ok.clone()?;
            if self.store.get_policy(policy)?.is_none() {
                return Err(AdminError::new(
                    AdminErrorKind::NotFound,
                    format!("policy {policy:?} does not exist; create it first with `broker policy set {policy} FILE`"),
                ));
            }
            if self.store.get_volume(name)?.is_some() {
                return Err(AdminError::new(
                    AdminErrorKind::AlreadyExists,
                    format!("volume {name:?} already exists; `broker volume show {name}` shows it"),
                ));
            }
            let key = VolumeKey::generate();
            let sealed = self.keyring.seal(name, 1, &key).map_err(|e| {
                AdminError::new(
                    AdminErrorKind::Internal,
                    format!("cannot seal the key: {e}"),
                )
            })?;
            self.store.create_volume(
                &NewVolume {
                    name: name.to_owned(),
                    policy: policy.to_owned(),
                    description: description.to_owned(),
                },
                &sealed,
            )?;
            self.store
                .get_volume(name)?
                .ok_or_else(|| AdminError::no_volume(name))
        })();
        self.audited(
            caller,
            "volume.add",
            &[name],
            match description_ok {
                Ok(()) => {
                    serde_json::json!({"policy": policy, "description": description, "key_version": 1})
                }
                // A refused description is not copied into the audit log.
                Err(_) => serde_json::json!({"policy": policy, "description_bytes": description.len()}),
            },
            result,
        )
    }

    /// Every volume with its rotation state.
    pub fn volume_list_with_rotation(
        &self,
    ) -> Result<Vec<(VolumeRecord, RotationState)>, AdminError> {
        let retention = self.retired_retention();
        let mut out = Vec::new();
        for v in self.store.list_volumes()? {
            let st = match lifecycle::rotation_state(self.store.as_ref(), &v.name, retention) {
                Ok(st) => st,
                // Deleted between the two reads.
                Err(LifecycleError::UnknownVolume(_)) => continue,
                Err(e) => return Err(e.into()),
            };
            out.push((v, st));
        }
        Ok(out)
    }

    /// A volume and every key version (records only; callers must not
    /// pass the sealed keys on).
    pub fn volume_show(
        &self,
        name: &str,
    ) -> Result<(VolumeRecord, Vec<KeyVersionRecord>), AdminError> {
        let v = self
            .store
            .get_volume(name)?
            .ok_or_else(|| AdminError::no_volume(name))?;
        Ok((v, self.store.key_versions(name)?))
    }

    /// Enables or disables a volume; returns whether it changed.
    pub fn volume_set_enabled(
        &self,
        caller: &Caller,
        name: &str,
        enabled: bool,
    ) -> Result<bool, AdminError> {
        let result = (|| {
            let v = self
                .store
                .get_volume(name)?
                .ok_or_else(|| AdminError::no_volume(name))?;
            if v.enabled == enabled {
                return Ok(false);
            }
            self.store.set_volume_enabled(name, enabled)?;
            Ok(true)
        })();
        self.audited(
            caller,
            if enabled {
                "volume.enable"
            } else {
                "volume.disable"
            },
            &[name],
            serde_json::json!({"enabled": enabled}),
            result,
        )
    }

    /// Deletes a disabled volume and all its key versions.
    pub fn volume_delete(&self, caller: &Caller, name: &str) -> Result<(), AdminError> {
        let result = (|| {
            let v = self
                .store
                .get_volume(name)?
                .ok_or_else(|| AdminError::no_volume(name))?;
            if v.enabled {
                return Err(AdminError::new(
                    AdminErrorKind::FailedPrecondition,
                    format!(
                        "volume {name:?} is enabled; disable it first with `broker volume disable \
                         {name}` (guests then stop receiving its key), then delete it"
                    ),
                ));
            }
            self.store.delete_volume(name)?;
            Ok(())
        })();
        self.audited(
            caller,
            "volume.delete",
            &[name],
            serde_json::json!({"deleted": true}),
            result,
        )
    }

    /// The volume, its policy and releasable keys, from one snapshot.
    pub fn volume_policy(&self, name: &str) -> Result<ReleaseView, AdminError> {
        self.store
            .release_view(name)?
            .ok_or_else(|| AdminError::no_volume(name))
    }
}

/// A description is at most `max` bytes of printable text: no control
/// characters (terminal escapes, newlines), which `volume list` would print
/// raw.
fn check_description(description: &str, max: usize) -> Result<(), AdminError> {
    if description.len() > max {
        return Err(AdminError::invalid(format!(
            "the description is {} bytes, more than the {max} allowed ([limits] max_description_bytes); shorten it",
            description.len()
        )));
    }
    if let Some(c) = description.chars().find(|c| c.is_control()) {
        return Err(AdminError::invalid(format!(
            "the description holds the control character {:?}; use printable text on one line",
            c
        )));
    }
    Ok(())
}
