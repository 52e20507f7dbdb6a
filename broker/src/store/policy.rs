//! Policies, as text with every revision kept (validation is the policy
//! module's job).

use super::StoreError;

/// A stored policy: its text and revision (1 for the first `put_policy`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredPolicy {
    /// Name.
    pub name: String,
    /// Revision, incremented by each `put_policy`.
    pub revision: i64,
    /// The TOML text as given.
    pub text: String,
    /// When this revision was stored (Unix seconds).
    pub updated_at: i64,
}

/// The policies part of a [`Store`](super::Store).
pub trait PolicyStore {
    /// Creates or replaces a policy's text; returns the new revision.
    fn put_policy(&self, name: &str, text: &str) -> Result<i64, StoreError>;

    /// Compare-and-set: stores `text` as the next revision only if the
    /// policy's latest revision is still `base_revision` (0: the policy must
    /// not exist yet); `Conflict` otherwise. An edit made from a revision
    /// read earlier uses this, so that two admins (on two replicas) cannot
    /// silently undo each other.
    fn put_policy_at(&self, name: &str, text: &str, base_revision: i64) -> Result<i64, StoreError>;

    /// The latest revision of a policy.
    fn get_policy(&self, name: &str) -> Result<Option<StoredPolicy>, StoreError>;

    /// One past revision of a policy.
    fn get_policy_revision(
        &self,
        name: &str,
        revision: i64,
    ) -> Result<Option<StoredPolicy>, StoreError>;

    /// Every policy (latest revisions), by name.
    fn list_policies(&self) -> Result<Vec<StoredPolicy>, StoreError>;

    /// Deletes a policy and its history; refused (`Conflict`) while a volume
    /// uses it.
    fn delete_policy(&self, name: &str) -> Result<(), StoreError>;
}

/// The `Conflict` of a compare-and-set on a policy revision.
pub(super) fn stale_revision(name: &str, base: i64, found: i64) -> StoreError {
    StoreError::Conflict(format!(
        "policy {name:?} changed meanwhile: the edit was based on revision {base}, the store \
         holds revision {found}; read it again and redo the edit"
    ))
}
