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

/// Entries per page of `AuditQuery`.
pub const PAGE_ENTRIES: u32 = 500;

/// About this many bytes of entries per page (the gRPC message limit is far
/// above; this keeps the broker's and the client's memory small).
pub const PAGE_BYTES: usize = 1 << 20;

/// One page of a listing.
#[derive(Clone, Debug)]
pub struct AuditPage {
    /// Entries, oldest first.
    pub entries: Vec<AuditEntry>,
    /// Ask again after this id; `None` on the last page.
    pub next_after_id: Option<i64>,
}

/// An entry's size on the wire, near enough for a page bound.
fn entry_size(e: &AuditEntry) -> usize {
    let ev = &e.event;
    128 + ev.kind.len()
        + ev.verdict.len()
        + ev.details_json.len()
        + ev.client_addr.as_ref().map_or(0, String::len)
        + ev.volumes
            .iter()
            .chain(&ev.reason_codes)
            .map(|s| s.len() + 2)
            .sum::<usize>()
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
    /// One page of the audit entries matching `filter`, oldest first,
    /// bounded in entries and bytes (the admin API's `AuditQuery`), and the
    /// id to continue after when more may follow.
    ///
    /// `after_id` continues a listing. Without it and with `last = N`, the
    /// page starts at the Nth most recent match (found by walking back in
    /// pages, so memory stays bounded whatever N is); the caller stops after
    /// N entries.
    pub fn audit_page(
        &self,
        filter: &AuditFilter,
        last: Option<u32>,
        after_id: Option<i64>,
    ) -> Result<AuditPage, AdminError> {
        let start_after = match (after_id, last) {
            (Some(a), _) => Some(a),
            (None, Some(n)) => self.after_nth_newest(filter, n)?,
            (None, None) => None,
        };
        let mut entries = self.store.audit_entries(&AuditFilter {
            after_id: start_after,
            before_id: None,
            newest_first: false,
            limit: Some(PAGE_ENTRIES),
            ..filter.clone()
        })?;
        let full = entries.len() == PAGE_ENTRIES as usize;
        let mut bytes = 0usize;
        let keep = entries
            .iter()
            .position(|e| {
                bytes += entry_size(e);
                bytes > PAGE_BYTES
            })
            // Always at least one entry, so a listing makes progress.
            .map_or(entries.len(), |i| i.max(1));
        let cut = keep < entries.len();
        entries.truncate(keep);
        let next_after_id = if full || cut {
            entries.last().map(|e| e.id.0)
        } else {
            None
        };
        Ok(AuditPage {
            entries,
            next_after_id,
        })
    }

    /// The id just before the `n`th most recent entry matching `filter`
    /// (`None`: there are at most `n`, start at the beginning).
    fn after_nth_newest(&self, filter: &AuditFilter, n: u32) -> Result<Option<i64>, AdminError> {
        let mut remaining = n;
        let mut before = None;
        while remaining > 0 {
            let want = remaining.min(PAGE_ENTRIES);
            let page = self.store.audit_entries(&AuditFilter {
                after_id: None,
                before_id: before,
                newest_first: true,
                limit: Some(want),
                ..filter.clone()
            })?;
            let got = u32::try_from(page.len()).unwrap_or(u32::MAX);
            match page.last() {
                // Fewer than `n` match: start at the beginning.
                Some(_) if got < want => return Ok(None),
                None => return Ok(None),
                Some(oldest) => before = Some(oldest.id.0),
            }
            remaining -= got;
        }
        Ok(before.map(|id| id - 1))
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
