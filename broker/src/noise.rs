//! Unauthenticated failures: counted, logged at a bounded rate, audited
//! only as an aggregate.
//!
//! Anyone who can reach the guest port can send a malformed request, a
//! made-up or expired nonce, a report with a bad chain or signature, a
//! genuine report bound to another request, or replay a used nonce. None of
//! these is a decision about verified evidence, and each costs a stranger
//! nothing, so none of them gets an audit entry of its own (that would let
//! a stranger grow the database without bound). Instead each is counted
//! here by kind and reason code ([`Noise::record`]); the counts go to the
//! metrics at once and, once per interval, into one audit entry of kind
//! `noise` ([`Noise::take`], appended by store upkeep) holding the counts
//! and nothing the requests named. Log lines about them are limited to
//! [`LOG_BURST`] per [`LOG_WINDOW`], then one line saying how many were
//! suppressed. `docs/threat-model.md`, "What is audited", has the reasoning.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Log lines about unauthenticated failures per window.
pub const LOG_BURST: u32 = 20;
/// The window of [`LOG_BURST`].
pub const LOG_WINDOW: Duration = Duration::from_secs(10);
/// How often the counts become an audit entry (when any is non-zero).
pub const AUDIT_INTERVAL: Duration = Duration::from_secs(60);

/// The counts since the last [`Noise::take`], and the log limiter.
#[derive(Debug, Default)]
pub struct Noise {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// "kind/REASON" → count since the last take.
    counts: BTreeMap<String, u64>,
    window_start: Option<Instant>,
    logged_in_window: u32,
    suppressed: u64,
}

impl Noise {
    /// Counts one unauthenticated failure of a request of `kind`
    /// ("challenge", "attest", "rotation") with these reason codes, counts
    /// it in the metrics, and logs `message` unless the log budget of the
    /// current window is spent.
    pub fn record(
        &self,
        kind: &str,
        reasons: &[String],
        client: Option<SocketAddr>,
        message: &dyn std::fmt::Display,
    ) {
        crate::metrics::global().decision(kind, "deny", reasons);
        let now = Instant::now();
        let (log, suppressed) = {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            for r in reasons {
                *s.counts.entry(format!("{kind}/{r}")).or_default() += 1;
            }
            if reasons.is_empty() {
                *s.counts.entry(format!("{kind}/OTHER")).or_default() += 1;
            }
            let expired = s
                .window_start
                .is_none_or(|t| now.duration_since(t) >= LOG_WINDOW);
            let mut suppressed = 0;
            if expired {
                suppressed = std::mem::take(&mut s.suppressed);
                s.window_start = Some(now);
                s.logged_in_window = 0;
            }
            if s.logged_in_window < LOG_BURST {
                s.logged_in_window += 1;
                (true, suppressed)
            } else {
                s.suppressed += 1;
                (false, suppressed)
            }
        };
        if suppressed > 0 {
            tracing::warn!(
                suppressed,
                "{suppressed} more unauthenticated failures were not logged (at most {LOG_BURST} lines per {}s); the metrics count all of them",
                LOG_WINDOW.as_secs()
            );
        }
        if log {
            tracing::info!(client = ?client, reasons = ?reasons, "{kind} refused before verification: {message}");
        }
    }

    /// The counts since the last call (and resets them): "kind/REASON" →
    /// count. Empty when nothing happened.
    pub fn take(&self) -> BTreeMap<String, u64> {
        std::mem::take(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()).counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_and_take_resets() {
        let n = Noise::default();
        for _ in 0..(LOG_BURST * 3) {
            n.record("attest", &["NONCE_UNKNOWN".into()], None, &"x");
        }
        n.record("challenge", &["REQUEST_INVALID".into()], None, &"x");
        n.record("attest", &[], None, &"x");
        let c = n.take();
        assert_eq!(c["attest/NONCE_UNKNOWN"], u64::from(LOG_BURST * 3));
        assert_eq!(c["challenge/REQUEST_INVALID"], 1);
        assert_eq!(c["attest/OTHER"], 1);
        assert!(n.take().is_empty());
        // The log budget of this window is spent: the rest were suppressed.
        assert!(n.state.lock().unwrap().suppressed > 0);
    }
}
