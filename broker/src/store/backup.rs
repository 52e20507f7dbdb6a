//! Backups and migration: a consistent, backend-neutral snapshot of a
//! whole store, written and read by `broker backup`, `broker restore` and
//! `broker store migrate`.
//!
//! A snapshot holds the sealed key records (never a key in the clear, never
//! the master key: a backup is useless without `master.key`, which is kept
//! offline apart from it), every policy revision, the volumes, the audit log
//! with its chain hashes and head and its chain key (sealed), the used nonces (so a restore cannot
//! reopen a replay window) and the rotation sessions. It is read in one
//! transaction (a consistent snapshot of a live store) and written in one
//! (a restore is all or nothing), into an empty store only.

use serde::{Deserialize, Serialize};

use super::StoreError;

/// The format tag of a snapshot file.
pub const SNAPSHOT_FORMAT: &str = "keybroker-snapshot/1";

/// One policy revision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRow {
    /// Name.
    pub name: String,
    /// Revision.
    pub revision: i64,
    /// TOML text.
    pub text: String,
    /// When stored (Unix seconds).
    pub created_at: i64,
}

/// One volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRow {
    /// Name.
    pub name: String,
    /// Its policy.
    pub policy: String,
    /// Free text.
    pub description: String,
    /// Enabled.
    pub enabled: bool,
    /// Creation time.
    pub created_at: i64,
    /// Highest version ever handed out (a cancelled one included).
    pub highest_version: i64,
}

/// One sealed key version (hex fields: public metadata and ciphertext).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRow {
    /// Volume.
    pub volume: String,
    /// Version.
    pub version: i64,
    /// pending, current or retired.
    pub state: String,
    /// Master key id (hex).
    pub master_key_id: String,
    /// AES-GCM nonce (hex).
    pub nonce: String,
    /// Sealed key (hex).
    pub ciphertext: String,
    /// Creation time.
    pub created_at: i64,
    /// Last state change.
    pub state_changed_at: i64,
    /// When retired.
    pub retired_at: Option<i64>,
}

/// One audit entry, as stored (hashes hex).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRow {
    /// Id.
    pub id: i64,
    /// Time.
    pub at_unix: i64,
    /// Kind.
    pub kind: String,
    /// Verdict.
    pub verdict: String,
    /// Volumes (JSON list text, as stored).
    pub volumes: String,
    /// Reason codes (JSON list text, as stored).
    pub reason_codes: String,
    /// Details (JSON object text).
    pub details_json: String,
    /// Peer.
    pub client_addr: Option<String>,
    /// Previous hash (hex).
    pub prev_hash: String,
    /// Hash (hex).
    pub hash: String,
}

/// The sealed audit chain key (hex fields).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditKeyRow {
    /// The first entry id MAC'd under it.
    pub keyed_from: i64,
    /// The hash of entry `keyed_from - 1` (hex).
    pub boundary: String,
    /// Master key id (hex).
    pub master_key_id: String,
    /// AES-GCM nonce (hex).
    pub nonce: String,
    /// Sealed key (hex).
    pub ciphertext: String,
}

impl AuditKeyRow {
    /// The row of a record.
    pub fn from_record(r: &super::AuditKeyRecord) -> Self {
        AuditKeyRow {
            keyed_from: r.keyed_from,
            boundary: hex::encode(r.boundary),
            master_key_id: r.sealed.master_key_id.to_hex(),
            nonce: hex::encode(r.sealed.nonce),
            ciphertext: hex::encode(&r.sealed.ciphertext),
        }
    }

    /// The record of a row, checking every field.
    pub fn to_record(&self) -> Result<super::AuditKeyRecord, StoreError> {
        super::audit::key_record_from(
            self.keyed_from,
            unhex("audit key boundary", &self.boundary)?,
            unhex("audit key master key id", &self.master_key_id)?,
            unhex("audit key nonce", &self.nonce)?,
            unhex("audit key ciphertext", &self.ciphertext)?,
        )
        .map_err(|e| StoreError::InvalidInput {
            what: "snapshot",
            reason: e.to_string(),
        })
    }
}

/// Where a pruned audit chain starts (hex fields).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneAnchorRow {
    /// The first entry kept.
    pub first_id: i64,
    /// Its link to the removed entry before it (hex).
    pub prev_hash: String,
    /// The MAC under the chain key (hex).
    pub mac: String,
}

impl PruneAnchorRow {
    /// The row of an anchor.
    pub fn from_anchor(a: &super::PruneAnchor) -> Self {
        PruneAnchorRow {
            first_id: a.first_id,
            prev_hash: hex::encode(a.prev_hash),
            mac: hex::encode(a.mac),
        }
    }

    /// The anchor of a row, checking every field.
    pub fn to_anchor(&self) -> Result<super::PruneAnchor, StoreError> {
        super::audit::prune_anchor_from(
            self.first_id,
            unhex("prune anchor prev_hash", &self.prev_hash)?,
            unhex("prune anchor MAC", &self.mac)?,
        )
        .map_err(|e| StoreError::InvalidInput {
            what: "snapshot",
            reason: e.to_string(),
        })
    }
}

/// A rotation session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRow {
    /// Nonce (hex).
    pub nonce: String,
    /// Volume.
    pub volume: String,
    /// Version.
    pub version: i64,
    /// REPORT_DATA (hex).
    pub report_data: String,
    /// Expiry.
    pub expires_at: i64,
}

/// A whole store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// [`SNAPSHOT_FORMAT`].
    pub format: String,
    /// Every policy revision.
    pub policies: Vec<PolicyRow>,
    /// Volumes.
    pub volumes: Vec<VolumeRow>,
    /// Sealed key versions.
    pub keys: Vec<KeyRow>,
    /// The audit log.
    pub audit: Vec<AuditRow>,
    /// The chain head: last id and hash (hex).
    pub audit_head: (i64, String),
    /// The sealed audit chain key (absent in a snapshot of a store from
    /// before the keyed chain, whose entries are all plain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_key: Option<AuditKeyRow>,
    /// Where the audit chain starts, if it was pruned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_pruned: Option<PruneAnchorRow>,
    /// Used nonces (hex) and their expiry.
    pub used_nonces: Vec<(String, i64)>,
    /// Rotation sessions.
    pub rotation_sessions: Vec<SessionRow>,
}

/// The backup part of a [`Store`](super::Store).
pub trait BackupStore {
    /// Reads the whole store in one consistent snapshot.
    fn export_snapshot(&self) -> Result<Snapshot, StoreError>;

    /// Writes `snapshot` into this store in one transaction. Refused
    /// (`Conflict`) unless the store is empty (no policy, volume or audit
    /// entry), so a restore never mixes two stores.
    fn import_snapshot(&self, snapshot: &Snapshot) -> Result<(), StoreError>;
}

pub(super) fn unhex(what: &'static str, s: &str) -> Result<Vec<u8>, StoreError> {
    hex::decode(s).map_err(|e| StoreError::InvalidInput {
        what,
        reason: format!("not hex: {e}"),
    })
}

pub(super) fn check_format(s: &Snapshot) -> Result<(), StoreError> {
    if s.format != SNAPSHOT_FORMAT {
        return Err(StoreError::InvalidInput {
            what: "snapshot",
            reason: format!("format {:?}, expected {SNAPSHOT_FORMAT:?}", s.format),
        });
    }
    Ok(())
}

pub(super) fn not_empty() -> StoreError {
    StoreError::Conflict(
        "the target store is not empty (it holds policies, volumes or audit entries); restore \
         only into a new, empty store"
            .into(),
    )
}
