//! What an unlock run reports: the devices opened, the devices still locked
//! and why (as a line and as data), the rotation notes.

use std::path::PathBuf;

use crate::flow::{UnlockError, UnreachableCause};
use crate::rotation::RotationStep;

/// A device opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unlocked {
    /// The device.
    pub device: PathBuf,
    /// The mapping name.
    pub name: String,
    /// The volume.
    pub volume: String,
    /// The keyslot that opened (None when the mapping already existed).
    pub keyslot: Option<u32>,
    /// The key version used.
    pub key_version: Option<u32>,
    /// The broker's audit decision id of the attestation that released the
    /// key (None when the mapping already existed, or the broker sent none).
    pub decision_id: Option<String>,
}

/// Why a device stays locked, in one stable kebab-case word: the `reason=`
/// of the `event=failed` line (`docs/operations.md`, "Event lines").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureKind {
    /// No broker could be reached (refused, no route, broker faults).
    BrokerUnreachable,
    /// The overall timeout ended the attempt.
    Timeout,
    /// A broker presented a TLS key that no pin matches.
    PinMismatch,
    /// The evidence provider failed.
    Evidence,
    /// The device could not be opened or activated.
    OpenFailed,
    /// Keys were released but none opens a keyslot.
    NoKeyOpens,
    /// The broker released no key for the device's volume, and said nothing else.
    NoKeyReleased,
    /// The device named on the command line was not found.
    NotFound,
    /// Not a LUKS2 device.
    NotLuks2,
    /// A LUKS2 device without a `sev-keybroker` token.
    NoToken,
    /// A `sev-keybroker` token or header that does not validate.
    InvalidToken,
    /// The settings recorded in the token are unusable.
    Config,
    /// The broker speaks another major protocol version.
    VersionMismatch,
    /// The broker rejected the request as malformed.
    Rejected,
    /// The broker's answer breaks the protocol.
    BadResponse,
    /// A released key did not open with this attempt's key.
    KeyDidNotOpen,
    /// The broker failed in a way another attempt may not.
    BrokerFault,
    /// TLS or the attempt's key pair could not be set up.
    Setup,
}

impl FailureKind {
    /// The stable word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BrokerUnreachable => "broker-unreachable",
            Self::Timeout => "timeout",
            Self::PinMismatch => "pin-mismatch",
            Self::Evidence => "evidence",
            Self::OpenFailed => "open-failed",
            Self::NoKeyOpens => "no-key-opens",
            Self::NoKeyReleased => "no-key-released",
            Self::NotFound => "not-found",
            Self::NotLuks2 => "not-luks2",
            Self::NoToken => "no-token",
            Self::InvalidToken => "invalid-token",
            Self::Config => "config",
            Self::VersionMismatch => "version-mismatch",
            Self::Rejected => "rejected",
            Self::BadResponse => "bad-response",
            Self::KeyDidNotOpen => "key-did-not-open",
            Self::BrokerFault => "broker-fault",
            Self::Setup => "setup",
        }
    }
}

impl From<&UnlockError> for FailureKind {
    fn from(e: &UnlockError) -> Self {
        match e {
            UnlockError::Tls(_) | UnlockError::KeyPair(_) | UnlockError::Runtime(_) => Self::Setup,
            UnlockError::Evidence { .. } | UnlockError::EvidenceMismatch { .. } => Self::Evidence,
            UnlockError::VersionMismatch { .. } => Self::VersionMismatch,
            // A refusal becomes an outcome before it gets here; it is the
            // broker rejecting the request all the same.
            UnlockError::Refused { .. } | UnlockError::Rejected { .. } => Self::Rejected,
            UnlockError::BrokerFault { .. } => Self::BrokerFault,
            UnlockError::BadResponse { .. } => Self::BadResponse,
            UnlockError::KeyDidNotOpen { .. } => Self::KeyDidNotOpen,
            UnlockError::Config(_) => Self::Config,
            UnlockError::Unreachable { cause, .. } => match cause {
                UnreachableCause::PinMismatch => Self::PinMismatch,
                UnreachableCause::Timeout => Self::Timeout,
                UnreachableCause::NoConnection => Self::BrokerUnreachable,
            },
        }
    }
}

/// Why a device stays locked, as data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockCause {
    /// The broker refused the volume.
    Refused {
        /// Its reason codes (`docs/protocol.md`, "Reason codes").
        reason_codes: Vec<String>,
        /// Its audit decision id (empty when it sent none).
        decision_id: String,
    },
    /// No decision could be had, or the released keys did not open it.
    Failed(FailureKind),
}

/// A device that stays locked, with the reason (one line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StillLocked {
    /// The volume(s).
    pub volume: String,
    /// The device.
    pub device: PathBuf,
    /// Why.
    pub reason: String,
    /// Why, as data.
    pub cause: LockCause,
}

impl std::fmt::Display for StillLocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.volume,
            self.device.display(),
            self.reason
        )
    }
}

/// One line about key rotation on an open device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationNote {
    /// The volume.
    pub volume: String,
    /// The device.
    pub device: PathBuf,
    /// Whether the steps went through (else the line is a warning; the
    /// device stays open either way).
    pub ok: bool,
    /// What was done, or what failed and what happens next.
    pub message: String,
}

impl std::fmt::Display for RotationNote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.volume,
            self.device.display(),
            self.message
        )
    }
}

/// The result of [`unlock_targets`](super::unlock_targets).
#[derive(Debug, Default)]
pub struct UnlockReport {
    /// Devices opened (or found already open).
    pub unlocked: Vec<Unlocked>,
    /// Devices still locked.
    pub locked: Vec<StillLocked>,
    /// Key rotation on the opened devices (nothing when none was under way).
    pub rotation: Vec<RotationNote>,
    /// The progress observer stopped the rotation after this step (see
    /// [`Progress::rotation_step`](super::Progress::rotation_step)).
    pub stopped: Option<RotationStep>,
}
