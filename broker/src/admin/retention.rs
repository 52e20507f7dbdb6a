//! Audit retention: `broker audit prune`, as the admin API serves it.

use super::{now_unix, Admin, AdminError, AdminErrorKind, Caller, ChainCheck};
use crate::store::PruneOutcome;

impl Admin {
    /// Removes the audit entries older than `before_unix` (always keeping
    /// the newest) through `AuditStore::prune_audit`, which leaves an
    /// anchor MAC'd under the chain key and appends an entry of kind
    /// `prune` naming `caller`. Refuses, changing nothing, a time in the
    /// future and a chain that does not verify (pruning would remove the
    /// evidence).
    pub fn audit_prune(
        &self,
        caller: &Caller,
        before_unix: i64,
    ) -> Result<PruneOutcome, AdminError> {
        let now = now_unix();
        if before_unix > now {
            return Err(AdminError::invalid(format!(
                "--before is {} seconds in the future; prune removes entries older than a time \
                 that has passed: give today's date or an earlier one",
                before_unix - now
            )));
        }
        if let ChainCheck::Broken { at_id, what } = self.audit_verify()? {
            return Err(AdminError::new(
                AdminErrorKind::FailedPrecondition,
                format!(
                    "the audit chain is broken at entry {at_id} ({what}); nothing was pruned, \
                     since that would remove the evidence: keep a copy of the database and \
                     investigate first"
                ),
            ));
        }
        let out = self
            .store
            .prune_audit(before_unix, now, Some(caller.to_string()))?;
        if let Some(id) = out.entry {
            tracing::info!(audit_id = %id, removed = out.removed, first_kept = out.first_kept, caller = %caller, "audit log pruned");
        }
        Ok(out)
    }
}
