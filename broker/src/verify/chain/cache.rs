//! The cache of verified chains, so that the hot path only re-checks
//! validity times.

use std::collections::HashMap;
use std::sync::Mutex;

use aws_lc_rs::digest;

use super::VerifiedChain;
use crate::verify::certs::CertSet;
use crate::verify::claims::{Generation, SignerKind};

/// Bounded, thread-safe cache of verified chains, keyed by the SHA-256 of
/// the report generation, the signer kind and every supplied certificate
/// (VEK, intermediate, ARK, CRLs).
#[derive(Debug)]
pub struct ChainCache {
    capacity: usize,
    map: Mutex<HashMap<[u8; 32], VerifiedChain>>,
}

impl ChainCache {
    /// A cache holding at most `capacity` chains (0 disables caching).
    pub fn new(capacity: usize) -> Self {
        ChainCache {
            capacity,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// The cache key for one verification's inputs.
    pub fn key(generation: Option<Generation>, signer: SignerKind, certs: &CertSet) -> [u8; 32] {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(b"keybroker chain cache v1");
        ctx.update(&[generation.map_or(0, |g| g as u8 + 1), signer as u8]);
        let crls = certs.crls.iter().map(|c| Some(c.as_slice()));
        for part in [
            certs.vek(signer),
            certs.intermediate(signer),
            certs.ark.as_deref(),
        ]
        .into_iter()
        .chain(crls)
        {
            match part {
                Some(p) => {
                    ctx.update(&[1]);
                    ctx.update(&(p.len() as u64).to_le_bytes());
                    ctx.update(p);
                }
                None => ctx.update(&[0]),
            }
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }

    /// The cached chain for `key`, if any.
    pub fn get(&self, key: &[u8; 32]) -> Option<VerifiedChain> {
        self.map.lock().ok()?.get(key).cloned()
    }

    /// Stores a verified chain, evicting an arbitrary entry when full.
    pub fn insert(&self, key: [u8; 32], chain: VerifiedChain) {
        if self.capacity == 0 {
            return;
        }
        if let Ok(mut m) = self.map.lock() {
            if m.len() >= self.capacity && !m.contains_key(&key) {
                if let Some(k) = m.keys().next().copied() {
                    m.remove(&k);
                }
            }
            m.insert(key, chain);
        }
    }

    /// Number of cached chains.
    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }
}
