//! What an admin call's refusal or failure is, and how store and lifecycle
//! errors map to it.

use crate::lifecycle::LifecycleError;
use crate::store::StoreError;

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
    pub(super) fn new(kind: AdminErrorKind, message: impl Into<String>) -> Self {
        AdminError {
            kind,
            message: message.into(),
        }
    }
    pub(super) fn invalid(message: impl Into<String>) -> Self {
        Self::new(AdminErrorKind::InvalidArgument, message)
    }
    pub(super) fn no_volume(name: &str) -> Self {
        Self::new(
            AdminErrorKind::NotFound,
            format!("no volume named {name:?}; `broker volume list` shows the enrolled ones"),
        )
    }
    pub(super) fn no_policy(name: &str) -> Self {
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
