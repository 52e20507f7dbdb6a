//! Policies: validated replacement, reading, and in-place edits of the
//! measurement and blocked-chip lists (the text edit itself is `edit.rs`).

use super::edit::{self, ListEdit};
use super::{Admin, AdminError, AdminErrorKind, Caller};
use crate::policy::Policy;
use crate::store::StoredPolicy;

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
    /// Creates or replaces a policy after validating it; returns the revision.
    pub fn policy_set(&self, caller: &Caller, name: &str, text: &str) -> Result<i64, AdminError> {
        let max = self.settings().max_policy_bytes;
        let result = (|| {
            crate::store::validate_name("policy name", name)?;
            if text.len() > max {
                return Err(AdminError::invalid(format!(
                    "the policy is {} bytes, more than the {max} allowed ([limits] max_policy_bytes); a policy lists measurements and TCB floors, which take a few KiB",
                    text.len()
                )));
            }
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
            // The write is a compare-and-set on the revision the edit was
            // made from: an edit through another replica in between makes
            // it fail, and it is redone on the new text (never written over
            // it). A handful of attempts covers any real contention.
            let mut outcome = Err(AdminError::new(
                AdminErrorKind::FailedPrecondition,
                format!("policy {name:?} kept changing while this edit was made; run it again"),
            ));
            for _ in 0..5 {
                match self.policy_edit_inner(name, list, add, value) {
                    Ok(None) => continue,
                    Ok(Some(o)) => {
                        outcome = Ok(o);
                        break;
                    }
                    Err(e) => {
                        outcome = Err(e);
                        break;
                    }
                }
            }
            outcome
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
    ) -> Result<Option<EditOutcome>, AdminError> {
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
            return Ok(Some(EditOutcome {
                changed: false,
                revision: stored.revision,
                reformatted: false,
            }));
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
        // `None`: another writer (another replica) stored a revision since
        // this one was read; the caller redoes the edit on it.
        let revision = match self.store.put_policy_at(name, &text, stored.revision) {
            Ok(r) => r,
            Err(crate::store::StoreError::Conflict(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(Some(EditOutcome {
            changed: true,
            revision,
            reformatted,
        }))
    }
}
