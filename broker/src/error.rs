//! The broker's error type and the one place that decides what a guest
//! learns about a failure.
//!
//! Guests get a gRPC code, a short message and stable reason codes (in a
//! `keybroker.v1.Denial` status detail). Expected-versus-actual values and
//! everything else an operator needs go to the audit log, never to the guest.

use keybroker_proto::pb;

use crate::policy::PolicyFailure;
use crate::store::StoreError;
use crate::verify::EvidenceRejected;

/// Reason codes the broker itself emits (besides [`crate::verify::ALL_REASON_CODES`]
/// and [`crate::policy::ALL_REASON_CODES`]).
pub const ALL_REASON_CODES: &[&str] = &[
    "VERSION_MISMATCH",
    "REQUEST_INVALID",
    "NONCE_UNKNOWN",
    "NONCE_EXPIRED",
    "NONCE_REPLAYED",
    "STORE_UNAVAILABLE",
    "MASTER_KEY_UNAVAILABLE",
    "RATE_LIMITED",
    "INTERNAL",
    "VOLUME_UNKNOWN",
    "VOLUME_DISABLED",
    "VOLUME_NO_KEY",
    "POLICY_UNAVAILABLE",
    "ROTATION_SESSION_UNKNOWN",
    "ROTATION_SESSION_EXPIRED",
    "ROTATION_VERSION_MISMATCH",
    "ROTATION_NOT_PENDING",
    "ROTATION_PROOF_INVALID",
];

/// Everything that can go wrong while serving a guest.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request was malformed (lengths, ids, versions).
    #[error("invalid request: {0}")]
    InvalidRequest(#[from] InvalidRequest),
    /// The challenge nonce was not acceptable.
    #[error("nonce refused: {0}")]
    Nonce(NonceRejected),
    /// The attestation evidence could not be fully verified.
    #[error("evidence refused: {0}")]
    EvidenceRejected(#[from] EvidenceRejected),
    /// Every requested volume was refused by its policy or state.
    #[error("policy denied every requested volume")]
    PolicyDenied(Vec<VolumeRefusal>),
    /// The store failed; the guest may retry.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// A ConfirmRotation was refused.
    #[error("rotation refused: {0}")]
    Rotation(RotationRejected),
    /// The volume's key is sealed under a master key this broker (replica)
    /// does not hold, even after re-reading its key files: a master key
    /// rollout has not reached it yet. Another replica may succeed.
    #[error(
        "volume {volume}: its key is sealed under master key {sealed_with}, which this broker \
         does not hold (it holds {held}); copy that master key here (docs/operations.md, \
         master key rollout) and send SIGHUP"
    )]
    MasterKeyUnavailable {
        /// The volume.
        volume: String,
        /// The id of the master key the record is sealed under.
        sealed_with: String,
        /// The id of this broker's current master key.
        held: String,
    },
    /// The source address sent more requests than `[limits]
    /// requests_per_sec_per_address` allows.
    #[error("too many requests from this address (at most {per_sec} a second)")]
    RateLimited {
        /// The configured rate.
        per_sec: u32,
    },
    /// A volume key could not be unsealed or wrapped: never the guest's fault.
    #[error("key handling failed for volume {volume}: {what}")]
    Keys {
        /// The volume.
        volume: String,
        /// What failed (no key material).
        what: String,
    },
}

/// Malformed input from a guest.
#[derive(Debug, thiserror::Error)]
pub enum InvalidRequest {
    /// The protocol version is missing or of another major.
    #[error("{0}")]
    Version(String),
    /// A field has the wrong length or form.
    #[error("{field}: {message}")]
    Field {
        /// Field name in the protobuf message.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// Why a nonce was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NonceRejected {
    /// Not issued by this broker (or its replicas) for these volumes: made
    /// up, changed, issued under another master key, or the Attest names
    /// other volume ids than its Challenge.
    #[error("unknown nonce, or volume_ids differ from the Challenge's; call Challenge again with the volumes to attest for")]
    Unknown,
    /// Issued but expired.
    #[error("nonce expired; call Challenge again and attest within its lifetime")]
    Expired,
    /// Already used once (replay).
    #[error("nonce already used (replay); call Challenge again")]
    AlreadyUsed,
}

impl NonceRejected {
    /// Stable reason code.
    pub fn reason_code(self) -> &'static str {
        match self {
            NonceRejected::Unknown => "NONCE_UNKNOWN",
            NonceRejected::Expired => "NONCE_EXPIRED",
            NonceRejected::AlreadyUsed => "NONCE_REPLAYED",
        }
    }
}

/// Why a ConfirmRotation was refused. Nothing is promoted in any case.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RotationRejected {
    /// No Attest with this nonce released a pending key of this volume.
    #[error("no rotation session for this nonce and volume; confirm with the nonce of the Attest that released the pending key")]
    SessionUnknown,
    /// The session outlived its lifetime (`rotation_session_ttl_secs`, from Attest).
    #[error("rotation session expired; attest again and confirm within the rotation session lifetime (the broker's rotation_session_ttl_secs)")]
    SessionExpired,
    /// The session released another version than the one named.
    #[error("version {asked} is not the pending version {released} released in this session")]
    VersionMismatch {
        /// Version in the request.
        asked: u32,
        /// Version the session released.
        released: u32,
    },
    /// The version is no longer pending nor current (cancelled, retired,
    /// purged, or the volume was deleted).
    #[error("key version {version} is {state}, neither pending nor current; attest again to see the volume's keys")]
    NotPending {
        /// The version.
        version: u32,
        /// What it is now ("retired", "gone").
        state: &'static str,
    },
    /// The proof does not verify for this session, volume, version and key.
    #[error("rotation proof does not verify")]
    ProofInvalid,
}

impl RotationRejected {
    /// Stable reason code.
    pub fn reason_code(&self) -> &'static str {
        match self {
            RotationRejected::SessionUnknown => "ROTATION_SESSION_UNKNOWN",
            RotationRejected::SessionExpired => "ROTATION_SESSION_EXPIRED",
            RotationRejected::VersionMismatch { .. } => "ROTATION_VERSION_MISMATCH",
            RotationRejected::NotPending { .. } => "ROTATION_NOT_PENDING",
            RotationRejected::ProofInvalid => "ROTATION_PROOF_INVALID",
        }
    }
}

/// Why one volume was refused.
#[derive(Debug, Clone)]
pub struct VolumeRefusal {
    /// Requested volume.
    pub volume: String,
    /// What refused it.
    pub cause: RefusalCause,
}

/// The cause of a volume refusal.
#[derive(Debug, Clone)]
pub enum RefusalCause {
    /// No such volume is enrolled.
    UnknownVolume,
    /// The volume is disabled by an administrator.
    Disabled,
    /// The volume has no key version that can be released.
    NoKey,
    /// The volume's policy failed these checks.
    Policy(Vec<PolicyFailure>),
    /// The volume's policy is missing or invalid in the store.
    PolicyUnavailable(String),
}

impl VolumeRefusal {
    /// Stable reason codes of this refusal.
    pub fn reason_codes(&self) -> Vec<String> {
        match &self.cause {
            RefusalCause::UnknownVolume => vec!["VOLUME_UNKNOWN".into()],
            RefusalCause::Disabled => vec!["VOLUME_DISABLED".into()],
            RefusalCause::NoKey => vec!["VOLUME_NO_KEY".into()],
            RefusalCause::Policy(f) => {
                let mut codes: Vec<String> = f.iter().map(|f| f.code.to_string()).collect();
                codes.dedup();
                codes
            }
            RefusalCause::PolicyUnavailable(_) => vec!["POLICY_UNAVAILABLE".into()],
        }
    }

    /// The wire form.
    pub fn to_pb(&self) -> pb::VolumeDenial {
        pb::VolumeDenial {
            volume_id: self.volume.clone(),
            reason_codes: self.reason_codes(),
        }
    }
}

impl Error {
    /// The error of unsealing `volume`'s key: [`Error::MasterKeyUnavailable`]
    /// when this broker lacks the master key, [`Error::Keys`] otherwise.
    pub fn unseal_failed(volume: &str, e: crate::keys::KeyError) -> Error {
        match e {
            crate::keys::KeyError::WrongMasterKey {
                sealed_with,
                loaded,
            } => Error::MasterKeyUnavailable {
                volume: volume.to_owned(),
                sealed_with: sealed_with.to_string(),
                held: loaded.to_string(),
            },
            e => Error::Keys {
                volume: volume.to_owned(),
                what: e.to_string(),
            },
        }
    }

    /// Stable reason codes for this error.
    pub fn reason_codes(&self) -> Vec<String> {
        match self {
            Error::InvalidRequest(InvalidRequest::Version(_)) => vec!["VERSION_MISMATCH".into()],
            Error::InvalidRequest(_) => vec!["REQUEST_INVALID".into()],
            Error::Nonce(n) => vec![n.reason_code().into()],
            Error::EvidenceRejected(e) => vec![e.reason_code().into()],
            Error::PolicyDenied(v) => {
                let mut all: Vec<String> = v.iter().flat_map(|r| r.reason_codes()).collect();
                all.sort();
                all.dedup();
                all
            }
            Error::Rotation(r) => vec![r.reason_code().into()],
            Error::Store(_) => vec!["STORE_UNAVAILABLE".into()],
            Error::MasterKeyUnavailable { .. } => vec!["MASTER_KEY_UNAVAILABLE".into()],
            Error::RateLimited { .. } => vec!["RATE_LIMITED".into()],
            Error::Keys { .. } => vec!["INTERNAL".into()],
        }
    }

    /// The gRPC status a guest receives, with the decision id of the audit
    /// entry when there is one.
    pub fn to_status(&self, decision_id: Option<&str>) -> tonic::Status {
        use tonic::Code;
        let (code, message) = match self {
            Error::InvalidRequest(InvalidRequest::Version(m)) => {
                (Code::FailedPrecondition, m.clone())
            }
            Error::InvalidRequest(e) => (Code::InvalidArgument, e.to_string()),
            Error::Nonce(n) => (Code::PermissionDenied, n.to_string()),
            Error::EvidenceRejected(_) => (
                Code::PermissionDenied,
                "attestation evidence refused; the broker's audit log has the details".to_owned(),
            ),
            Error::PolicyDenied(_) => (
                Code::PermissionDenied,
                "every requested volume was refused; the broker's audit log has expected and actual values"
                    .to_owned(),
            ),
            Error::Rotation(r @ RotationRejected::NotPending { .. }) => {
                (Code::FailedPrecondition, r.to_string())
            }
            Error::Rotation(r) => (Code::PermissionDenied, r.to_string()),
            Error::Store(_) => (
                Code::Unavailable,
                "the broker's store is unavailable; retry later".to_owned(),
            ),
            Error::MasterKeyUnavailable { .. } => (
                Code::Unavailable,
                "this broker does not hold the master key the volume's key is sealed under; \
                 retry another broker"
                    .to_owned(),
            ),
            Error::RateLimited { per_sec } => (
                Code::ResourceExhausted,
                format!(
                    "too many requests from this address: the broker answers at most {per_sec} \
                     Challenge and Attest requests a second per address ([limits] \
                     requests_per_sec_per_address); retry in a second"
                ),
            ),
            Error::Keys { .. } => (
                Code::Internal,
                "the broker could not prepare a key; an operator must look at its log".to_owned(),
            ),
        };
        let denial = pb::Denial {
            reason_codes: self.reason_codes(),
            volumes: match self {
                Error::PolicyDenied(v) => v.iter().map(VolumeRefusal::to_pb).collect(),
                _ => Vec::new(),
            },
            decision_id: decision_id.unwrap_or_default().to_owned(),
        };
        keybroker_proto::denial_status(code, &message, &denial)
    }
}
