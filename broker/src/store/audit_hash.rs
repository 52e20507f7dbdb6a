//! The audit chain: canonical encoding of an entry, its hash, and chain
//! verification, shared by every store implementation.
//!
//! `hash(n) = HMAC-SHA256(chain key, hash(n-1) || encode(n))` with
//! `hash(0)` all zero, where `encode` is a length-prefixed,
//! domain-separated encoding of the id and every field. The chain key is
//! random, made once per database and kept there only sealed under the
//! master key (`keys::AuditChainKey`), so someone who can write the
//! database but does not hold `master.key` cannot recompute a single link:
//! a changed, deleted or reordered entry breaks its own MAC or the next
//! entry's link, whatever else they rewrite.
//!
//! A database written before the chain was keyed keeps its old entries as
//! they were: entries below `keyed_from` (the first id MAC'd, recorded with
//! the sealed key) are plain `SHA-256(hash(n-1) || encode(n))` under
//! another domain label. The sealed key record binds `keyed_from` and the
//! hash of entry `keyed_from - 1`, so neither the boundary nor the plain
//! prefix can be moved or rewritten: the prefix must end in exactly that
//! hash. A fresh database is keyed from entry 1.
//!
//! Retention (`broker audit prune`) removes the oldest entries and leaves a
//! [`PruneAnchor`]: the first kept entry's id and link, MAC'd under the
//! chain key; verification starts there, so entries removed beyond it, or
//! an anchor moved or forged, break the chain.
//!
//! Including the id makes renumbering detectable; comparing the last entry
//! with the stored chain head detects removal at the end unless the head
//! row is rewritten too, which is what the checkpoint outside the database
//! catches (`crate::audit_anchor`).

use std::fmt;

use aws_lc_rs::{digest, hmac};

use super::{AuditChainError, AuditEntry, AuditEvent, PruneAnchor, StoreError};
use crate::keys::AuditChainKey;

/// `prev_hash` of the first entry.
pub const GENESIS_HASH: [u8; 32] = [0u8; 32];

/// Entries verified per page: a verification holds at most this many.
pub const VERIFY_PAGE: u32 = 1000;

/// Domain label of the plain entries of a database from before the keyed
/// chain.
const PLAIN_LABEL: &[u8] = b"keybroker/audit-entry/v1";
/// Domain label of the keyed entries.
const KEYED_LABEL: &[u8] = b"keybroker/audit-entry/v2-hmac";
/// Domain label of a prune anchor's MAC.
const ANCHOR_LABEL: &[u8] = b"keybroker/audit-prune-anchor/v1";

/// The unsealed chain key and where the keyed chain starts.
pub struct ChainKeying {
    key: hmac::Key,
    keyed_from: i64,
    boundary: [u8; 32],
}

impl fmt::Debug for ChainKeying {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChainKeying")
            .field("keyed_from", &self.keyed_from)
            .field("boundary", &hex::encode(self.boundary))
            .finish_non_exhaustive()
    }
}

impl ChainKeying {
    /// `key` MACs entries from `keyed_from` on; `boundary` is the hash of
    /// entry `keyed_from - 1` ([`GENESIS_HASH`] when `keyed_from` is 1).
    pub fn new(key: &AuditChainKey, keyed_from: i64, boundary: [u8; 32]) -> Self {
        ChainKeying {
            key: hmac::Key::new(hmac::HMAC_SHA256, key.expose_secret()),
            keyed_from,
            boundary,
        }
    }

    /// The first entry id MAC'd under the key.
    pub fn keyed_from(&self) -> i64 {
        self.keyed_from
    }

    /// The hash of entry `keyed_from - 1`.
    pub fn boundary(&self) -> [u8; 32] {
        self.boundary
    }

    /// The MAC of a prune anchor: the chain starts at entry `first_id`,
    /// whose link to the removed entry before it is `prev_hash`.
    pub fn anchor_mac(&self, first_id: i64, prev_hash: &[u8; 32]) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(ANCHOR_LABEL);
        ctx.update(&first_id.to_be_bytes());
        ctx.update(prev_hash);
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }
}

fn encode(out: &mut dyn FnMut(&[u8]), label: &[u8], id: i64, event: &AuditEvent) {
    fn bytes(out: &mut dyn FnMut(&[u8]), b: &[u8]) {
        // Field lengths are bounded far below 4 GiB by the database;
        // saturate rather than panic, which would still change the hash.
        let len = u32::try_from(b.len()).unwrap_or(u32::MAX);
        out(&len.to_be_bytes());
        out(b);
    }
    fn list(out: &mut dyn FnMut(&[u8]), items: &[String]) {
        let n = u32::try_from(items.len()).unwrap_or(u32::MAX);
        out(&n.to_be_bytes());
        for i in items {
            bytes(out, i.as_bytes());
        }
    }
    out(label);
    out(&id.to_be_bytes());
    out(&event.at_unix.to_be_bytes());
    bytes(out, event.kind.as_bytes());
    bytes(out, event.verdict.as_bytes());
    list(out, &event.volumes);
    list(out, &event.reason_codes);
    bytes(out, event.details_json.as_bytes());
    match &event.client_addr {
        None => out(&[0]),
        Some(a) => {
            out(&[1]);
            bytes(out, a.as_bytes());
        }
    }
}

/// The plain (unkeyed) hash of entry `id` holding `event`, following
/// `prev`: the entries of a database below its `keyed_from`.
pub fn audit_entry_hash(prev: &[u8; 32], id: i64, event: &AuditEvent) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(prev);
    encode(&mut |b| ctx.update(b), PLAIN_LABEL, id, event);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The keyed hash of entry `id`: HMAC-SHA256 under the chain key.
pub fn keyed_audit_entry_hash(
    keying: &ChainKeying,
    prev: &[u8; 32],
    id: i64,
    event: &AuditEvent,
) -> [u8; 32] {
    let mut ctx = hmac::Context::with_key(&keying.key);
    ctx.update(prev);
    encode(&mut |b| ctx.update(b), KEYED_LABEL, id, event);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

/// The chain hash of entry `id`: keyed from `keyed_from` on, plain before
/// it or when the database has no chain key yet (`keying` is `None`).
pub fn chain_hash(
    keying: Option<&ChainKeying>,
    prev: &[u8; 32],
    id: i64,
    event: &AuditEvent,
) -> [u8; 32] {
    match keying {
        Some(k) if id >= k.keyed_from => keyed_audit_entry_hash(k, prev, id, event),
        _ => audit_entry_hash(prev, id, event),
    }
}

/// The error of a database whose chain is keyed, verified by a process
/// that has not unsealed its key.
pub(super) fn key_not_loaded(keyed_from: i64) -> StoreError {
    StoreError::Conflict(format!(
        "the audit chain is keyed (from entry {keyed_from}) and this process has not unsealed \
         its key with the master key; run it through the broker (`broker audit verify`) or a \
         command given the broker's config"
    ))
}

/// A walk over the chain in id order, one page at a time, so that a
/// verification never holds the whole log: [`ChainWalk::new`], then
/// [`ChainWalk::push`] every entry after [`ChainWalk::after_id`], then
/// [`ChainWalk::finish`] against the stored head.
pub struct ChainWalk<'k> {
    keying: Option<&'k ChainKeying>,
    prev: [u8; 32],
    next_id: i64,
    count: u64,
}

impl<'k> ChainWalk<'k> {
    /// A walk from entry 1. `installed` is the chain key this process
    /// unsealed (if any); `stored` is `keyed_from` and the boundary hash of
    /// the key record in the database now (if any). They must agree: a
    /// record removed or replaced since the key was unsealed is a break.
    pub fn new(
        installed: Option<&'k ChainKeying>,
        stored: Option<(i64, [u8; 32])>,
    ) -> Result<Self, StoreError> {
        match (installed, stored) {
            (None, Some((keyed_from, _))) => return Err(key_not_loaded(keyed_from)),
            (Some(k), None) => {
                return Err(AuditChainError {
                    at_id: k.keyed_from,
                    what: "the audit chain key record was removed from the database (the \
                           chain would read as unkeyed)"
                        .into(),
                }
                .into())
            }
            (Some(k), Some((from, boundary))) if from != k.keyed_from || boundary != k.boundary => {
                return Err(AuditChainError {
                    at_id: from.min(k.keyed_from),
                    what: format!(
                        "the audit chain key record now says the keyed chain starts at entry \
                         {from}, but it was unsealed for entry {} (the record was moved)",
                        k.keyed_from
                    ),
                }
                .into())
            }
            (Some(k), Some(_)) if k.keyed_from == 1 && k.boundary != GENESIS_HASH => {
                return Err(AuditChainError {
                    at_id: 1,
                    what: "the keyed chain starts at entry 1 but not from the genesis hash".into(),
                }
                .into())
            }
            _ => {}
        }
        Ok(ChainWalk {
            keying: installed,
            prev: GENESIS_HASH,
            next_id: 1,
            count: 0,
        })
    }

    /// The same walk, starting at entry `id` whose stored link is `prev`
    /// (taken as given: a keyed entry's MAC covers it), for a check of the
    /// chain's tail.
    pub fn starting_at(mut self, id: i64, prev: [u8; 32]) -> Self {
        self.next_id = id;
        self.prev = prev;
        self
    }

    /// The walk of a pruned chain: it starts at the anchor's first kept
    /// entry, from the anchor's link, once the anchor's MAC checks out
    /// under the installed chain key. An anchor without the key, or with
    /// a MAC that does not match (forged, or moved), is a break.
    pub fn from_prune_anchor(self, anchor: &PruneAnchor) -> Result<Self, StoreError> {
        let Some(k) = self.keying else {
            return Err(key_not_loaded(anchor.first_id));
        };
        let want = k.anchor_mac(anchor.first_id, &anchor.prev_hash);
        if !bool::from(subtle::ConstantTimeEq::ct_eq(&want[..], &anchor.mac[..])) {
            return Err(AuditChainError {
                at_id: anchor.first_id,
                what: "the prune anchor (where the chain starts after `broker audit prune`) \
                       does not match its MAC under the audit chain key: it was forged or \
                       moved"
                    .into(),
            }
            .into());
        }
        Ok(self.starting_at(anchor.first_id, anchor.prev_hash))
    }

    /// The id after which the next page starts.
    pub fn after_id(&self) -> i64 {
        self.next_id - 1
    }

    /// Checks the next entry (decoded, or the error of an unreadable row).
    pub fn push(
        &mut self,
        entry: Result<AuditEntry, AuditChainError>,
    ) -> Result<(), AuditChainError> {
        let e = entry?;
        let id = e.id.0;
        let expected = self.next_id;
        if id != expected {
            return Err(AuditChainError {
                at_id: expected,
                what: if id > expected {
                    format!(
                        "entries {expected}..{} are missing (removed); next present entry is {id}",
                        id - 1
                    )
                } else {
                    format!("entry id {id} appears out of order")
                },
            });
        }
        if e.prev_hash != self.prev {
            return Err(AuditChainError {
                at_id: id,
                what: "its link to the previous entry does not match (an earlier entry was \
                       changed, removed or reordered)"
                    .into(),
            });
        }
        let h = chain_hash(self.keying, &self.prev, id, &e.event);
        if h != e.hash {
            return Err(AuditChainError {
                at_id: id,
                what: if self.keying.is_some_and(|k| id >= k.keyed_from) {
                    "its content does not match its MAC under the audit chain key (the entry \
                     was changed, or its hash recomputed without the key)"
                        .into()
                } else {
                    "its content does not match its hash (the entry was changed)".into()
                },
            });
        }
        if let Some(k) = self.keying {
            if id == k.keyed_from - 1 && h != k.boundary {
                return Err(AuditChainError {
                    at_id: id,
                    what: "it is the last entry before the keyed chain, and its hash is not the \
                           one sealed with the chain key (an entry before it was changed and \
                           the plain hashes recomputed)"
                        .into(),
                });
            }
        }
        self.prev = h;
        self.next_id += 1;
        self.count += 1;
        Ok(())
    }

    /// Checks the end of the walk against the stored chain head `(last_id,
    /// last_hash)`; returns the number of entries.
    pub fn finish(self, head: (i64, [u8; 32])) -> Result<u64, AuditChainError> {
        let (head_id, head_hash) = head;
        let last_id = self.next_id - 1;
        if let Some(k) = self.keying {
            if last_id < k.keyed_from - 1 {
                return Err(AuditChainError {
                    at_id: last_id + 1,
                    what: format!(
                        "the chain ends at entry {last_id}, before entry {} that the audit chain \
                         key record vouches for (entries were removed)",
                        k.keyed_from - 1
                    ),
                });
            }
        }
        if head_id != last_id {
            return Err(AuditChainError {
                at_id: last_id + 1,
                what: format!(
                    "the chain head records {head_id} entries but {last_id} are present \
                     (entries at the end were removed or the head was changed)"
                ),
            });
        }
        if head_hash != self.prev {
            return Err(AuditChainError {
                at_id: last_id,
                what: "the chain head's hash does not match the last entry".into(),
            });
        }
        Ok(self.count)
    }
}
