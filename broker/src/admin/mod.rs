//! The admin plane: volume and policy administration, key lifecycle
//! (volume and master key rotation, purging retired versions, status), the
//! audit log and the platform inventory, as plain functions over the store
//! ([`Admin`], one module per concern: `volumes`, `policies`, `keys`,
//! `audit`), served as `keybroker.admin.v1` by a thin gRPC adapter
//! ([`service`]) on admin-only listeners ([`listen`]: a Unix socket checked
//! by peer credentials, optionally TCP with mutual TLS), and called by the
//! `broker` CLI through [`connect`].
//!
//! **Architecture Invariant:** the admin service is never added to the
//! guest-facing server; nothing here is reachable on the guest port.
//! Every mutating call, allowed or refused, appends an audit entry of kind
//! `admin` naming the caller. No call returns key bytes.

mod audit;
pub mod connect;
mod edit;
mod error;
mod keys;
pub mod listen;
mod policies;
mod retention;
pub mod service;
mod settings;
mod volumes;

use std::fmt;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::keys::Keyring;
use crate::store::{AuditEvent, Store};

pub use crate::lifecycle::{RetiredVersion, RotationState};

pub use audit::{AuditPage, ChainCheck, Inventory, PAGE_BYTES, PAGE_ENTRIES};
pub use edit::{edit_string_list, EditError, ListEdit};
pub use error::{AdminError, AdminErrorKind};
pub use keys::{PendingRotation, StatusReport, VolumeRotation};
pub use policies::{EditOutcome, PolicyList};
pub use settings::{AdminSettings, ListenerInfo};

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

/// The admin operations over one store. Cheap to share (`Arc` inside).
pub struct Admin {
    store: Arc<dyn Store>,
    keyring: Arc<Keyring>,
    settings: RwLock<AdminSettings>,
    /// Held while a master key rotation runs in this process.
    master_rotation: Mutex<()>,
    /// Held across every policy write of this process. Across replicas
    /// sharing one database, an in-place edit (read, change one list,
    /// write) is a compare-and-set on the revision it read
    /// (`PolicyStore::put_policy_at`), redone on conflict, so it never
    /// silently undoes a concurrent edit, say a revoked measurement.
    policy_write: Mutex<()>,
}

fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
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
}
