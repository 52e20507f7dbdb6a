//! The audit chain: canonical encoding of an entry, its hash, and chain
//! verification, shared by every store implementation.
//!
//! `hash(n) = SHA-256(hash(n-1) || encode(n))` with `hash(0)` all zero, where
//! `encode` is a length-prefixed, domain-separated encoding of the id and
//! every field. Including the id makes renumbering detectable; chaining makes
//! a changed, deleted or reordered entry break every later link; comparing
//! the last entry with the stored chain head detects removal at the end
//! (unless the head is rewritten too: export the head regularly to anchor it
//! outside the database).

use aws_lc_rs::digest;

use super::{AuditChainError, AuditEntry, AuditEvent};

/// `prev_hash` of the first entry.
pub const GENESIS_HASH: [u8; 32] = [0u8; 32];

const LABEL: &[u8] = b"keybroker/audit-entry/v1";

fn put_bytes(ctx: &mut digest::Context, b: &[u8]) {
    // Field lengths are bounded far below 4 GiB by the database; saturate
    // rather than panic, which would still change the hash.
    let len = u32::try_from(b.len()).unwrap_or(u32::MAX);
    ctx.update(&len.to_be_bytes());
    ctx.update(b);
}

fn put_list(ctx: &mut digest::Context, items: &[String]) {
    let n = u32::try_from(items.len()).unwrap_or(u32::MAX);
    ctx.update(&n.to_be_bytes());
    for i in items {
        put_bytes(ctx, i.as_bytes());
    }
}

/// The chain hash of entry `id` holding `event`, following `prev`.
pub fn audit_entry_hash(prev: &[u8; 32], id: i64, event: &AuditEvent) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(prev);
    ctx.update(LABEL);
    ctx.update(&id.to_be_bytes());
    ctx.update(&event.at_unix.to_be_bytes());
    put_bytes(&mut ctx, event.kind.as_bytes());
    put_bytes(&mut ctx, event.verdict.as_bytes());
    put_list(&mut ctx, &event.volumes);
    put_list(&mut ctx, &event.reason_codes);
    put_bytes(&mut ctx, event.details_json.as_bytes());
    match &event.client_addr {
        None => ctx.update(&[0]),
        Some(a) => {
            ctx.update(&[1]);
            put_bytes(&mut ctx, a.as_bytes());
        }
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Verifies entries given in id order, each either decoded or an error
/// for an unreadable row, against the stored chain head `(last_id,
/// last_hash)`. Returns the number of entries.
pub fn verify_chain(
    entries: impl IntoIterator<Item = Result<AuditEntry, AuditChainError>>,
    head: (i64, [u8; 32]),
) -> Result<u64, AuditChainError> {
    let mut prev = GENESIS_HASH;
    let mut expected_id = 1i64;
    let mut count = 0u64;
    for entry in entries {
        let e = entry?;
        let id = e.id.0;
        if id != expected_id {
            return Err(AuditChainError {
                at_id: expected_id,
                what: if id > expected_id {
                    format!(
                        "entries {expected_id}..{} are missing (removed); next present entry is {id}",
                        id - 1
                    )
                } else {
                    format!("entry id {id} appears out of order")
                },
            });
        }
        if e.prev_hash != prev {
            return Err(AuditChainError {
                at_id: id,
                what: "its link to the previous entry does not match (an earlier entry was \
                       changed, removed or reordered)"
                    .into(),
            });
        }
        let h = audit_entry_hash(&prev, id, &e.event);
        if h != e.hash {
            return Err(AuditChainError {
                at_id: id,
                what: "its content does not match its hash (the entry was changed)".into(),
            });
        }
        prev = h;
        expected_id += 1;
        count += 1;
    }
    let (head_id, head_hash) = head;
    let last_id = expected_id - 1;
    if head_id != last_id {
        return Err(AuditChainError {
            at_id: last_id + 1,
            what: format!(
                "the chain head records {head_id} entries but {last_id} are present \
                 (entries at the end were removed or the head was changed)"
            ),
        });
    }
    if head_hash != prev {
        return Err(AuditChainError {
            at_id: last_id,
            what: "the chain head's hash does not match the last entry".into(),
        });
    }
    Ok(count)
}
