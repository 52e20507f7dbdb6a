//! The admin plane: volume and policy administration, key lifecycle
//! (volume and master key rotation, purging retired versions, status), the
//! audit log and the platform inventory, as plain functions over the store
//! ([`Admin`]),
//! served as `keybroker.admin.v1` by a thin gRPC adapter ([`service`]) on
//! admin-only listeners ([`listen`]: a Unix socket checked by peer
//! credentials, optionally TCP with mutual TLS), and called by the `broker`
//! CLI through [`client`].
//!
//! **Architecture Invariant:** the admin service is never added to the
//! guest-facing server; nothing here is reachable on the guest port.
//! Every mutating call, allowed or refused, appends an audit entry of kind
//! `admin` naming the caller. No call returns key bytes.

pub mod client;
mod edit;
pub mod listen;
pub mod service;

use std::fmt;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::keys::{Keyring, VolumeKey};
use crate::lifecycle::{self, LifecycleError, MasterProgress, MasterRotation, MasterStatus};
use crate::policy::Policy;
use crate::store::{
    AuditEntry, AuditEvent, AuditFilter, KeyVersionRecord, NewVolume, PurgedVersion, ReleaseView,
    Store, StoreError, StoredPolicy, VolumeRecord,
};

pub use crate::lifecycle::{RetiredVersion, RotationState};

pub use edit::{edit_string_list, ListEdit};

/// Who made an admin call: the Unix peer or the TLS client certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// A Unix-socket peer, by its credentials.
    Unix {
        /// Peer uid.
        uid: u32,
        /// Peer pid, when the kernel gave it.
        pid: Option<i32>,
    },
    /// A mutual-TLS client, by its certificate's subject.
    Cert {
        /// The subject distinguished name.
        subject: String,
    },
    /// An in-process caller (tests, tools linking the library).
    Local,
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Unix { uid, pid: Some(p) } => write!(f, "uid={uid},pid={p}"),
            Caller::Unix { uid, pid: None } => write!(f, "uid={uid}"),
            Caller::Cert { subject } => write!(f, "cert={subject}"),
            Caller::Local => f.write_str("local"),
        }
    }
}

/// What kind of refusal an [`AdminError`] is (it decides the gRPC code).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminErrorKind {
    /// The named object does not exist.
    NotFound,
    /// The named object exists already.
    AlreadyExists,
    /// The object's state does not allow the call (e.g. deleting an enabled volume).
    FailedPrecondition,
    /// An argument is malformed (name, hex, policy text).
    InvalidArgument,
    /// The caller is not admitted.
    PermissionDenied,
    /// The broker failed (store, master key).
    Internal,
}

/// A refused or failed admin call: its kind and a message that says what
/// to do. Never holds key bytes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct AdminError {
    /// Kind (gRPC code).
    pub kind: AdminErrorKind,
    /// What failed and what to do.
    pub message: String,
}

impl AdminError {
    fn new(kind: AdminErrorKind, message: impl Into<String>) -> Self {
        AdminError {
            kind,
            message: message.into(),
        }
    }
    fn invalid(message: impl Into<String>) -> Self {
        Self::new(AdminErrorKind::InvalidArgument, message)
    }
    fn no_volume(name: &str) -> Self {
        Self::new(
            AdminErrorKind::NotFound,
            format!("no volume named {name:?}; `broker volume list` shows the enrolled ones"),
        )
    }
    fn no_policy(name: &str) -> Self {
        Self::new(
            AdminErrorKind::NotFound,
            format!("no policy named {name:?}; `broker policy list` shows them"),
        )
    }
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        let kind = match &e {
            StoreError::NotFound { .. } => AdminErrorKind::NotFound,
            StoreError::AlreadyExists { .. } => AdminErrorKind::AlreadyExists,
            StoreError::Conflict(_) => AdminErrorKind::FailedPrecondition,
            StoreError::InvalidInput { .. } => AdminErrorKind::InvalidArgument,
            _ => AdminErrorKind::Internal,
        };
        AdminError::new(kind, e.to_string())
    }
}

impl From<LifecycleError> for AdminError {
    fn from(e: LifecycleError) -> Self {
        match e {
            LifecycleError::UnknownVolume(name) => AdminError::no_volume(&name),
            LifecycleError::RotationPending { .. } | LifecycleError::NoPendingRotation { .. } => {
                AdminError::new(AdminErrorKind::FailedPrecondition, e.to_string())
            }
            LifecycleError::Store(e) => e.into(),
            LifecycleError::Master(_) => {
                AdminError::new(AdminErrorKind::FailedPrecondition, e.to_string())
            }
            e => AdminError::new(AdminErrorKind::Internal, e.to_string()),
        }
    }
}

/// A listener of the broker, as `Status` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerInfo {
    /// `guest`, `admin-unix`, `admin-tls` or `metrics`.
    pub kind: String,
    /// Address, or the socket's path.
    pub address: String,
}

/// What the admin plane knows of the broker's configuration.
#[derive(Clone, Debug)]
pub struct AdminSettings {
    /// `[keys] retired_retention_days`: the default of `VolumePurgeRetired`
    /// and the "kept until" dates.
    pub retired_retention: Duration,
    /// What `Status` lists as the broker's listeners.
    pub listeners: Vec<ListenerInfo>,
}

impl Default for AdminSettings {
    /// The default retention and no listeners (a library caller).
    fn default() -> Self {
        AdminSettings {
            retired_retention: Duration::from_secs(
                u64::from(crate::config::DEFAULT_RETIRED_RETENTION_DAYS) * 86_400,
            ),
            listeners: Vec::new(),
        }
    }
}

impl AdminSettings {
    /// The retention and the configured listeners of `config` (the guest
    /// port as configured: [`Admin::set_listener`] replaces it with the
    /// bound address when the port was 0).
    pub fn from_config(config: &crate::config::Config) -> Self {
        let mut listeners = vec![
            ListenerInfo {
                kind: "guest".into(),
                address: config.listen.to_string(),
            },
            ListenerInfo {
                kind: "admin-unix".into(),
                address: config.admin.socket.display().to_string(),
            },
        ];
        if let Some(tcp) = &config.admin.tcp {
            listeners.push(ListenerInfo {
                kind: "admin-tls".into(),
                address: tcp.listen.to_string(),
            });
        }
        if let Some(m) = config.metrics_listen {
            listeners.push(ListenerInfo {
                kind: "metrics".into(),
                address: m.to_string(),
            });
        }
        AdminSettings {
            retired_retention: config.retired_retention,
            listeners,
        }
    }
}

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
fn days(d: Duration) -> u32 {
    u32::try_from(d.as_secs() / 86_400).unwrap_or(u32::MAX)
}

/// Which list of a policy an edit changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyList {
    /// `measurements`: 48-byte launch measurements.
    Measurements,
    /// `blocked_chip_ids`: 64-byte chip ids (or the 8 significant bytes of a Turin id).
    BlockedChips,
}

impl PolicyList {
    /// The TOML key.
    pub fn key(self) -> &'static str {
        match self {
            PolicyList::Measurements => "measurements",
            PolicyList::BlockedChips => "blocked_chip_ids",
        }
    }
}

/// The outcome of a policy list edit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EditOutcome {
    /// False when the list already had (or lacked) the value.
    pub changed: bool,
    /// Revision after the call.
    pub revision: i64,
    /// True when the text was re-serialized (comments lost).
    pub reformatted: bool,
}

/// The result of an audit chain check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChainCheck {
    /// Intact, with this many entries.
    Intact(u64),
    /// Broken at this entry id, for this reason.
    Broken {
        /// First failing entry id.
        at_id: i64,
        /// What is wrong there.
        what: String,
    },
}

/// The platform inventory as served.
#[derive(Clone, Debug)]
pub struct Inventory {
    /// `inventory::platforms` as JSON.
    pub json: String,
    /// Policies left out because they do not parse.
    pub skipped: Vec<String>,
}

/// The admin operations over one store. Cheap to share (`Arc` inside).
pub struct Admin {
    store: Arc<dyn Store>,
    keyring: Arc<Keyring>,
    settings: RwLock<AdminSettings>,
    /// Held while a master key rotation runs in this process.
    master_rotation: Mutex<()>,
    /// Held across every policy write, so that an in-place edit (read,
    /// change one list, write) cannot overwrite a concurrent edit or
    /// `policy set` of the same broker and silently undo, say, a revoked
    /// measurement. (Replicas sharing one database would need a
    /// compare-and-set on the revision in the store instead.)
    policy_write: Mutex<()>,
}

fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Checks hex of exactly one of `lens` bytes; returns it lower-cased.
fn parse_hex(value: &str, what: &str, lens: &[usize], hint: &str) -> Result<String, AdminError> {
    let v = value.trim();
    let bytes = hex::decode(v).map_err(|e| {
        AdminError::invalid(format!(
            "{value:?} is not a {what}: {e}; write {hint} in hex"
        ))
    })?;
    if !lens.contains(&bytes.len()) {
        return Err(AdminError::invalid(format!(
            "{value:?} is not a {what}: {} bytes ({} hex characters); write {hint} in hex",
            bytes.len(),
            v.len()
        )));
    }
    Ok(hex::encode(bytes))
}

impl Admin {
    /// Admin operations over `store`, sealing new keys with `keyring` (the
    /// broker's own, so a master key rotation is seen at once).
    ///
    /// Without [`Admin::with_settings`] the retention is the default one
    /// and `Status` lists no listeners.
    pub fn new(store: Arc<dyn Store>, keyring: Arc<Keyring>) -> Self {
        Admin {
            store,
            keyring,
            settings: RwLock::new(AdminSettings::default()),
            master_rotation: Mutex::new(()),
            policy_write: Mutex::new(()),
        }
    }

    /// Uses the retention and listeners of `settings`
    /// ([`AdminSettings::from_config`]).
    pub fn with_settings(self, settings: AdminSettings) -> Self {
        *self.settings.write().unwrap_or_else(|p| p.into_inner()) = settings;
        self
    }

    /// Records the address a listener of `kind` is bound to (replacing the
    /// configured one, e.g. a guest port 0).
    pub fn set_listener(&self, kind: &str, address: impl Into<String>) {
        let mut s = self.settings.write().unwrap_or_else(|p| p.into_inner());
        let address = address.into();
        match s.listeners.iter_mut().find(|l| l.kind == kind) {
            Some(l) => l.address = address,
            None => s.listeners.push(ListenerInfo {
                kind: kind.to_owned(),
                address,
            }),
        }
    }

    fn settings(&self) -> AdminSettings {
        self.settings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// `[keys] retired_retention_days` as this admin plane applies it.
    pub fn retired_retention(&self) -> Duration {
        self.settings().retired_retention
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Appends the audit entry of a mutating call and passes its result on.
    fn audited<T>(
        &self,
        caller: &Caller,
        action: &str,
        volumes: &[&str],
        change: serde_json::Value,
        result: Result<T, AdminError>,
    ) -> Result<T, AdminError> {
        let mut details = serde_json::json!({
            "action": action,
            "caller": caller.to_string(),
            "change": change,
        });
        if let Err(e) = &result {
            details["error"] = serde_json::Value::String(e.message.clone());
        }
        let event = AuditEvent {
            at_unix: now_unix(),
            kind: "admin".into(),
            verdict: if result.is_ok() { "allow" } else { "deny" }.into(),
            volumes: volumes.iter().map(|v| (*v).to_owned()).collect(),
            reason_codes: Vec::new(),
            details_json: details.to_string(),
            client_addr: Some(caller.to_string()),
        };
        match self.store.append_audit(&event) {
            Ok(id) => {
                tracing::info!(audit_id = %id, action, caller = %caller, verdict = %event.verdict, "admin");
                result
            }
            Err(e) => {
                tracing::error!(action, caller = %caller, "cannot write the admin audit entry: {e}");
                match result {
                    Ok(_) => Err(AdminError::new(
                        AdminErrorKind::Internal,
                        format!("{action} was done but its audit entry could not be written: {e}; check the store"),
                    )),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Enrolls a volume with a fresh 64-byte key (version 1, current).
    pub fn volume_add(
        &self,
        caller: &Caller,
        name: &str,
        policy: &str,
        description: &str,
    ) -> Result<VolumeRecord, AdminError> {
        let result = (|| {
            keybroker_proto::VolumeId::new(name)
                .map_err(|e| AdminError::invalid(format!("invalid volume name: {e}")))?;
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
            serde_json::json!({"policy": policy, "description": description, "key_version": 1}),
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

    /// Creates or replaces a policy after validating it; returns the revision.
    pub fn policy_set(&self, caller: &Caller, name: &str, text: &str) -> Result<i64, AdminError> {
        let result = (|| {
            crate::store::validate_name("policy name", name)?;
            Policy::from_toml(text).map_err(|e| AdminError::invalid(e.to_string()))?;
            let _write = self.policy_write.lock().unwrap_or_else(|p| p.into_inner());
            Ok(self.store.put_policy(name, text)?)
        })();
        let change = match &result {
            Ok(rev) => serde_json::json!({"policy": name, "revision": rev}),
            Err(_) => serde_json::json!({"policy": name}),
        };
        self.audited(caller, "policy.set", &[], change, result)
    }

    /// A policy's latest revision.
    pub fn policy_get(&self, name: &str) -> Result<StoredPolicy, AdminError> {
        self.store
            .get_policy(name)?
            .ok_or_else(|| AdminError::no_policy(name))
    }

    /// Every policy (latest revisions).
    pub fn policy_list(&self) -> Result<Vec<StoredPolicy>, AdminError> {
        Ok(self.store.list_policies()?)
    }

    /// Adds (`add`) or removes a value of one list of a policy, as a new
    /// revision; the rest of the text is kept as written.
    pub fn policy_edit(
        &self,
        caller: &Caller,
        name: &str,
        list: PolicyList,
        add: bool,
        value: &str,
    ) -> Result<EditOutcome, AdminError> {
        let action = match (list, add) {
            (PolicyList::Measurements, true) => "policy.allow_measurement",
            (PolicyList::Measurements, false) => "policy.revoke_measurement",
            (PolicyList::BlockedChips, true) => "policy.block_chip",
            (PolicyList::BlockedChips, false) => "policy.unblock_chip",
        };
        let result = {
            let _write = self.policy_write.lock().unwrap_or_else(|p| p.into_inner());
            self.policy_edit_inner(name, list, add, value)
        };
        let change = match &result {
            Ok(o) => serde_json::json!({
                "policy": name, "list": list.key(), "value": value.trim().to_ascii_lowercase(),
                "changed": o.changed, "revision": o.revision,
            }),
            Err(_) => serde_json::json!({"policy": name, "list": list.key(), "value": value}),
        };
        self.audited(caller, action, &[], change, result)
    }

    fn policy_edit_inner(
        &self,
        name: &str,
        list: PolicyList,
        add: bool,
        value: &str,
    ) -> Result<EditOutcome, AdminError> {
        let hex = match list {
            PolicyList::Measurements => parse_hex(
                value,
                "launch measurement",
                &[48],
                "the 48-byte SHA-384 digest (96 characters, as `broker measure` prints it)",
            )?,
            PolicyList::BlockedChips => parse_hex(
                value,
                "chip id",
                &[64, 8],
                "the 64-byte chip id (128 characters; 16 for the 8 significant bytes of a Turin id)",
            )?,
        };
        let stored = self.policy_get(name)?;
        let policy = Policy::from_toml(&stored.text).map_err(|e| {
            AdminError::new(
                AdminErrorKind::FailedPrecondition,
                format!("the stored policy {name:?} is invalid ({e}); replace it with `broker policy set {name} FILE`"),
            )
        })?;
        let present = match list {
            PolicyList::Measurements => policy
                .measurements
                .iter()
                .any(|m| hex::encode(m.as_ref()) == hex),
            PolicyList::BlockedChips => policy
                .blocked_chip_ids
                .iter()
                .any(|c| hex::encode(c.as_bytes()) == hex),
        };
        if present == add {
            return Ok(EditOutcome {
                changed: false,
                revision: stored.revision,
                reformatted: false,
            });
        }
        if list == PolicyList::Measurements && !add && policy.measurements.len() == 1 {
            return Err(AdminError::new(
                AdminErrorKind::FailedPrecondition,
                format!(
                    "cannot revoke the only allowed measurement of policy {name:?}; allow the \
                     replacement first, or disable the volumes that use it"
                ),
            ));
        }
        let edit = if add {
            ListEdit::Add(&hex)
        } else {
            ListEdit::Remove(&hex)
        };
        let (text, reformatted) = edit::apply(&stored.text, list, edit, &policy)
            .map_err(|e| AdminError::new(AdminErrorKind::FailedPrecondition, e.to_string()))?;
        // Validated again as a whole, exactly as `policy set` would.
        Policy::from_toml(&text).map_err(|e| {
            AdminError::new(
                AdminErrorKind::FailedPrecondition,
                format!("the edited policy does not validate ({e}); edit it by hand and use `broker policy set`"),
            )
        })?;
        let revision = self.store.put_policy(name, &text)?;
        Ok(EditOutcome {
            changed: true,
            revision,
            reformatted,
        })
    }

    /// Audit entries matching `filter`; with `last`, only the most recent N.
    pub fn audit_query(
        &self,
        filter: &AuditFilter,
        last: Option<u32>,
    ) -> Result<Vec<AuditEntry>, AdminError> {
        let mut entries = self.store.audit_entries(filter)?;
        if let Some(n) = last {
            let skip = entries.len().saturating_sub(n as usize);
            entries.drain(..skip);
        }
        Ok(entries)
    }

    /// Recomputes the audit chain.
    pub fn audit_verify(&self) -> Result<ChainCheck, AdminError> {
        match self.store.verify_audit_chain() {
            Ok(n) => Ok(ChainCheck::Intact(n)),
            Err(StoreError::AuditChain(e)) => Ok(ChainCheck::Broken {
                at_id: e.at_id,
                what: e.what,
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// The platform inventory, as JSON.
    pub fn platforms(&self) -> Result<Inventory, AdminError> {
        let filter = AuditFilter {
            kind: Some("attest".into()),
            ..AuditFilter::default()
        };
        let entries = self.store.audit_entries(&filter)?;
        let mut policies = Vec::new();
        let mut skipped = Vec::new();
        for stored in self.store.list_policies()? {
            match Policy::from_toml(&stored.text) {
                Ok(p) => policies.push((stored.name, p)),
                Err(e) => skipped.push(format!(
                    "policy {:?} is invalid and was skipped ({e}); fix it with `broker policy set`",
                    stored.name
                )),
            }
        }
        let found = crate::inventory::platforms(&entries, &policies);
        let json = serde_json::to_string(&found)
            .map_err(|e| AdminError::new(AdminErrorKind::Internal, e.to_string()))?;
        Ok(Inventory { json, skipped })
    }

    /// The volume, its policy and releasable keys, from one snapshot.
    pub fn volume_policy(&self, name: &str) -> Result<ReleaseView, AdminError> {
        self.store
            .release_view(name)?
            .ok_or_else(|| AdminError::no_volume(name))
    }
}
