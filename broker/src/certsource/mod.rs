//! Where the verifier finds AMD certificates that a guest did not send.
//!
//! The guest's extended-report certificate table comes first and the
//! offline `certs_dir` second (both in [`crate::verify`]); then, as
//! [`crate::verify::CertSource`]s:
//!
//! - [`CacheSource`]: the certificate cache directory ([`CertCache`],
//!   `[attestation] cert_cache`), laid out by generation, hwID and TCB,
//!   filled by `broker certs import` ([`import`]) and by the KDS source;
//! - [`KdsSource`]: AMD's Key Distribution Service, online, **off by
//!   default** (`[attestation.kds] enabled = true`), with a per-host rate
//!   limit and a backoff that honours HTTP 429 `Retry-After`, during which
//!   the verifier fails fast with `EVIDENCE_CERT_UNAVAILABLE`.
//!
//! Nothing a source returns is trusted: every certificate and CRL is
//! verified against the pinned ARKs when it is stored and again, like any
//! other, when a report is verified. [`stats`] counts cache hits and misses
//! and KDS requests for the metrics.

pub mod cache;
pub mod http;
pub mod import;
pub mod kds;

use std::sync::atomic::{AtomicU64, Ordering};

pub use cache::{CacheSource, CertCache};
pub use kds::{KdsSettings, KdsSource};

/// Certificate-source counters: per source and process-wide ([`stats`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct CacheStats {
    /// A VEK the guest did not send was found in the certificate cache.
    pub hits: u64,
    /// A VEK the guest did not send was not in the certificate cache.
    pub misses: u64,
    /// HTTP requests sent to AMD KDS.
    pub kds_requests: u64,
    /// VEKs fetched from AMD KDS, verified and stored in the cache.
    pub kds_fetched: u64,
    /// KDS requests that failed (network, timeout, HTTP status other than
    /// 200 and 404, or a response that did not verify).
    pub kds_failures: u64,
    /// Verifications refused at once because KDS asked the broker to back
    /// off or the rate limit was exhausted (`EVIDENCE_CERT_UNAVAILABLE`).
    pub kds_backoff_refusals: u64,
}

/// Atomic counters behind [`CacheStats`].
#[derive(Debug, Default)]
pub struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    kds_requests: AtomicU64,
    kds_fetched: AtomicU64,
    kds_failures: AtomicU64,
    kds_backoff_refusals: AtomicU64,
}

/// Which counter to bump.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Counter {
    Hit,
    Miss,
    KdsRequest,
    KdsFetched,
    KdsFailure,
    KdsBackoffRefusal,
}

static GLOBAL: Counters = Counters::new();

impl Counters {
    /// All zero.
    pub const fn new() -> Self {
        Counters {
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            kds_requests: AtomicU64::new(0),
            kds_fetched: AtomicU64::new(0),
            kds_failures: AtomicU64::new(0),
            kds_backoff_refusals: AtomicU64::new(0),
        }
    }

    fn cell(&self, c: Counter) -> &AtomicU64 {
        match c {
            Counter::Hit => &self.hits,
            Counter::Miss => &self.misses,
            Counter::KdsRequest => &self.kds_requests,
            Counter::KdsFetched => &self.kds_fetched,
            Counter::KdsFailure => &self.kds_failures,
            Counter::KdsBackoffRefusal => &self.kds_backoff_refusals,
        }
    }

    /// Bumps `c` here and in the process-wide counters.
    pub(crate) fn bump(&self, c: Counter) {
        self.cell(c).fetch_add(1, Ordering::Relaxed);
        GLOBAL.cell(c).fetch_add(1, Ordering::Relaxed);
    }

    /// The current values.
    pub fn snapshot(&self) -> CacheStats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CacheStats {
            hits: g(&self.hits),
            misses: g(&self.misses),
            kds_requests: g(&self.kds_requests),
            kds_fetched: g(&self.kds_fetched),
            kds_failures: g(&self.kds_failures),
            kds_backoff_refusals: g(&self.kds_backoff_refusals),
        }
    }
}

/// Process-wide certificate-source counters (every cache and KDS source
/// of this process), for the metrics endpoint.
pub fn stats() -> CacheStats {
    GLOBAL.snapshot()
}

/// `der` as one PEM block labelled `label` (64-column base64).
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len() * 4 / 3 + 4);
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &b)| acc | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(char::from(B64[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn pem_roundtrip() {
        for len in [0usize, 1, 2, 3, 47, 48, 49, 100] {
            let der: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let pem = super::pem_encode("CERTIFICATE", &der);
            let back = crate::verify::pem_blocks(pem.as_bytes(), "CERTIFICATE");
            assert_eq!(back, vec![der], "{pem}");
        }
    }
}
