//! The unlock flow as explicit states, each consumed by its `handle` step:
//!
//! ```text
//! Start { volumes }
//!   --Challenge-->  Challenged { nonce, volumes }
//!   --evidence, Attest-->  Attested { response, keypair, report_data, volumes }
//!   --unwrap every key-->  Unwrapped { keys, denied, decision_id }
//!   (same session)  AttestedSession { session, nonce, report_data }
//!   --ConfirmRotation(proof) per enrolled pending key-->  new current version
//! ```
//!
//! A state can only be reached through the previous one, so keys cannot be
//! accepted without a report bound to a fresh nonce and this attempt's key
//! pair. [`fetch_keys`] runs the states against the configured brokers, in
//! order, with exponential backoff, until the overall timeout;
//! [`fetch_keys_session`] also keeps the [`AttestedSession`], which alone
//! holds the nonce and REPORT_DATA that a rotation proof is bound to
//! (`docs/protocol.md`, "Rotation proof").
//!
//! Errors say what failed and what to do. No error, log line or `Debug`
//! output contains key bytes.
//!
//! Modules by concern: `states` (the states and their steps), `session`
//! (one broker session and its status mapping), `attested_session` (what a
//! rotation proof is bound to), `keys` (the unwrapped keys and denials),
//! `error`; this module runs the states against the configured brokers.

use std::collections::BTreeMap;

use keybroker_proto::pb;
use keybroker_proto::VolumeIds;
use tokio::time::Instant;

use crate::client::{self, Backoff};
use crate::config::{BrokerUrl, GuestConfig};
use crate::evidence::EvidenceProvider;

mod attested_session;
mod error;
mod keys;
mod session;
mod states;
#[cfg(test)]
mod tests;

pub use attested_session::AttestedSession;
pub use error::{printable, UnlockError, UnreachableCause};
pub use keys::{Denied, FetchOutcome, UnwrappedKey};
pub use session::Session;
pub use states::{attest_session, run_once, Attested, Challenged, Start, Unwrapped};

fn refusal_outcome(
    broker: &BrokerUrl,
    volumes: &VolumeIds,
    message: String,
    denial: Option<pb::Denial>,
) -> FetchOutcome {
    let denial = denial.unwrap_or_default();
    let general: Vec<String> = if denial.reason_codes.is_empty() {
        vec!["PERMISSION_DENIED".to_owned()]
    } else {
        denial.reason_codes.iter().map(|c| printable(c)).collect()
    };
    let denied = volumes
        .iter()
        .map(|v| {
            let specific = denial
                .volumes
                .iter()
                .find(|d| d.volume_id == v.as_str())
                .map(|d| {
                    d.reason_codes
                        .iter()
                        .map(|c| printable(c))
                        .collect::<Vec<_>>()
                })
                .filter(|c| !c.is_empty());
            Denied {
                volume: v.clone(),
                reason_codes: specific.unwrap_or_else(|| general.clone()),
            }
        })
        .collect();
    FetchOutcome {
        broker: broker.clone(),
        keys: Vec::new(),
        denied,
        decision_id: printable(&denial.decision_id),
        refusal: Some(message),
    }
}

/// Performs one attestation and returns the unwrapped keys and the
/// per-volume denials.
///
/// Brokers are tried in configuration order; a broker that cannot be reached
/// or fails (gRPC `UNAVAILABLE` and the like) is followed by the next one, and
/// after each full round the flow waits with exponential backoff. Everything
/// stops at `cfg.timeout`. A refusal (`PERMISSION_DENIED`) is an outcome, not
/// an error: every volume is reported denied with the broker's reason codes.
/// Protocol violations, keys that do not open, version mismatches and
/// evidence failures stop at once. A broker whose TLS key does not match
/// the pins cannot become right by retrying: it is not tried again, and
/// when no broker is left the flow stops at once instead of spending its
/// whole timeout.
pub async fn fetch_keys(
    cfg: &GuestConfig,
    provider: &dyn EvidenceProvider,
    volumes: &VolumeIds,
) -> Result<FetchOutcome, UnlockError> {
    fetch_keys_session(cfg, provider, volumes)
        .await
        .map(|(outcome, _)| outcome)
}

/// The broker connection type of [`fetch_keys_session`].
pub type BrokerClient =
    keybroker_proto::pb::key_broker_client::KeyBrokerClient<tonic::transport::Channel>;

/// [`fetch_keys`], also returning the session of the Attest that released
/// the keys (none after a refusal), for `ConfirmRotation`.
pub async fn fetch_keys_session(
    cfg: &GuestConfig,
    provider: &dyn EvidenceProvider,
    volumes: &VolumeIds,
) -> Result<(FetchOutcome, Option<AttestedSession<BrokerClient>>), UnlockError> {
    let tls = client::tls_config(&cfg.pins)?;
    let deadline = Instant::now() + cfg.timeout;
    let mut backoff = Backoff::default();
    let mut attempts = 0usize;
    let mut last_errors: BTreeMap<usize, String> = BTreeMap::new();
    let mut pin_mismatch = false;
    let mut timed_out = false;
    // Brokers that cannot succeed by retrying (their key is not pinned).
    let mut hopeless = vec![false; cfg.brokers.len()];

    'rounds: loop {
        for (i, url) in cfg.brokers.iter().enumerate() {
            if hopeless[i] {
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                break 'rounds;
            }
            attempts += 1;
            let connect_timeout = cfg.connect_timeout.min(deadline - now);
            let conn = tokio::time::timeout_at(
                deadline,
                client::connect(url, tls.clone(), connect_timeout),
            )
            .await;
            let rpc = match conn {
                Err(_) => {
                    // An earlier answer of this broker says more than the cut.
                    last_errors.entry(i).or_insert_with(|| {
                        format!("{url}: no connection before the overall timeout")
                    });
                    timed_out = true;
                    break 'rounds;
                }
                Ok(Err(e)) => {
                    tracing::info!(broker = %url, error = %e, "broker unreachable");
                    if e.is_pin_mismatch() {
                        pin_mismatch = true;
                        hopeless[i] = true;
                    }
                    last_errors.insert(i, format!("{url}: {e}"));
                    continue;
                }
                Ok(Ok(rpc)) => rpc,
            };
            let session = Session::new(rpc, url.to_string(), deadline);
            match tokio::time::timeout_at(deadline, attest_session(session, provider, volumes))
                .await
            {
                Err(_) => {
                    last_errors
                        .entry(i)
                        .or_insert_with(|| format!("{url}: no answer before the overall timeout"));
                    timed_out = true;
                    break 'rounds;
                }
                Ok(Ok((u, rotation))) => {
                    return Ok((
                        FetchOutcome {
                            broker: url.clone(),
                            keys: u.keys,
                            denied: u.denied,
                            decision_id: u.decision_id,
                            refusal: None,
                        },
                        Some(rotation),
                    ))
                }
                Ok(Err(UnlockError::Refused {
                    message, denial, ..
                })) => return Ok((refusal_outcome(url, volumes, message, denial), None)),
                Ok(Err(e)) if e.is_retryable() => {
                    tracing::info!(broker = %url, error = %e, "broker failed; trying the next");
                    last_errors.insert(i, e.to_string());
                }
                Ok(Err(e)) => return Err(e),
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || hopeless.iter().all(|h| *h) {
            break;
        }
        tokio::time::sleep(backoff.next_delay().min(left)).await;
    }
    let cause = if pin_mismatch {
        UnreachableCause::PinMismatch
    } else if timed_out {
        UnreachableCause::Timeout
    } else {
        UnreachableCause::NoConnection
    };
    Err(UnlockError::Unreachable {
        timeout: cfg.timeout,
        attempts,
        last_errors: last_errors.into_values().collect(),
        cause,
    })
}
