//! The audit log and the platform inventory, as the admin API serves them.

use super::{Admin, AdminError, AdminErrorKind};
use crate::policy::Policy;
use crate::store::{AuditEntry, AuditFilter, StoreError};

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

impl Admin {
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

    /// Recomputes the audit chain and compares it with the checkpoint
    /// beside the master key (`crate::audit_anchor`), if there is one.
    pub fn audit_verify(&self) -> Result<ChainCheck, AdminError> {
        match self.store.verify_audit_chain() {
            Ok(n) => {
                let Some(master) = self.keyring.path() else {
                    return Ok(ChainCheck::Intact(n));
                };
                let path = crate::audit_anchor::checkpoint_path(master);
                // The first entry the checkpoint shows to be wrong: its own
                // id (missing or changed), or the first for a bad file.
                let checked = crate::audit_anchor::read(&self.keyring, &path)
                    .map_err(|e| (1, e))
                    .and_then(|c| {
                        c.map_or(Ok(()), |c| {
                            crate::audit_anchor::check(self.store.as_ref(), &path, &c)
                                .map_err(|e| (c.id, e))
                        })
                    });
                match checked {
                    Ok(()) => Ok(ChainCheck::Intact(n)),
                    Err((_, crate::audit_anchor::AnchorError::Store(e))) => Err(e.into()),
                    Err((at_id, e)) => Ok(ChainCheck::Broken {
                        at_id,
                        what: e.to_string(),
                    }),
                }
            }
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
}
