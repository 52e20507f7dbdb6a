//! Why an attempt failed: one error type for the flow, whose messages say
//! what failed and what to do.

use std::time::Duration;

use keybroker_proto::pb;
use keybroker_proto::WrapError;

use crate::client::TlsSetupError;
use crate::evidence::EvidenceError;

/// Why an unlock attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum UnlockError {
    /// TLS could not be set up.
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    /// The async runtime could not be started.
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The ephemeral key pair could not be generated.
    #[error("cannot generate this attempt's X25519 key pair: {0}")]
    KeyPair(WrapError),
    /// The evidence provider failed.
    #[error("cannot obtain attestation evidence from the {provider} provider: {source}")]
    Evidence {
        /// Provider name.
        provider: &'static str,
        /// The cause.
        #[source]
        source: EvidenceError,
    },
    /// The provider's evidence does not carry the requested binding value
    /// (REPORT_DATA; on Azure, the quote's qualifying data and the HCL user data).
    #[error("the {provider} provider returned evidence that does not carry the REPORT_DATA requested; the provider or platform is broken, report this")]
    EvidenceMismatch {
        /// Provider name.
        provider: &'static str,
    },
    /// The broker speaks another major protocol version.
    #[error("broker {broker}: {message}")]
    VersionMismatch {
        /// The broker.
        broker: String,
        /// Its explanation (names both versions).
        message: String,
    },
    /// The broker refused the whole request (`PERMISSION_DENIED`).
    /// [`fetch_keys`](super::fetch_keys) turns this into a
    /// [`FetchOutcome`](super::FetchOutcome) with every volume denied.
    #[error("broker {broker} refused the request: {message} [{}]", .denial.as_ref().map(|d| d.reason_codes.join(",")).unwrap_or_default())]
    Refused {
        /// The broker.
        broker: String,
        /// Its message.
        message: String,
        /// Its reason codes, if it sent any.
        denial: Option<pb::Denial>,
    },
    /// The broker rejected the request as malformed or out of order.
    #[error("broker {broker} rejected the request ({code:?}): {message}{}; check the volume names and that guest-unlock and the broker are compatible releases", fmt_codes(.reason_codes))]
    Rejected {
        /// The broker.
        broker: String,
        /// gRPC code.
        code: tonic::Code,
        /// Its message.
        message: String,
        /// Reason codes, if any.
        reason_codes: Vec<String>,
    },
    /// The broker failed in a way another attempt may not (retried).
    #[error("broker {broker} failed ({code:?}): {message}")]
    BrokerFault {
        /// The broker.
        broker: String,
        /// gRPC code.
        code: tonic::Code,
        /// Its message.
        message: String,
    },
    /// The broker's answer breaks the protocol.
    #[error("broker {broker} sent an invalid response: {problem}; nothing was unlocked; the broker may run an incompatible release or misbehave, report this")]
    BadResponse {
        /// The broker.
        broker: String,
        /// What is wrong.
        problem: String,
    },
    /// A wrapped key did not open with this attempt's private key.
    #[error("the key for volume {volume} version {version} from broker {broker} did not open with this guest's attested key: {source}; the whole response was refused and nothing was unlocked (tampering, or a broker bug: report this)")]
    KeyDidNotOpen {
        /// The broker.
        broker: String,
        /// The volume.
        volume: String,
        /// The key version.
        version: u32,
        /// Why.
        #[source]
        source: WrapError,
    },
    /// The brokers and pins recorded in a token make no configuration.
    #[error("the token's broker settings: {0}")]
    Config(#[from] crate::config::ConfigError),
    /// No broker could be reached in time.
    #[error("no broker answered within {timeout:?} ({attempts} attempts): {}; check the network, the broker URLs and pins, or raise timeout_secs", .last_errors.join("; "))]
    Unreachable {
        /// The overall timeout.
        timeout: Duration,
        /// Connection attempts made.
        attempts: usize,
        /// The last error seen from each broker.
        last_errors: Vec<String>,
        /// What kept the brokers out of reach, in one word.
        cause: UnreachableCause,
    },
}

/// Why no broker answered, for machine-readable output: the last errors
/// say it in words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnreachableCause {
    /// A broker answered with a TLS key that matches no pin.
    PinMismatch,
    /// The overall timeout ended a connection or an answer under way.
    Timeout,
    /// No connection could be made (refused, no route, broker faults).
    NoConnection,
}

fn fmt_codes(codes: &[String]) -> String {
    if codes.is_empty() {
        String::new()
    } else {
        format!(" [{}]", codes.join(","))
    }
}

/// Escapes control characters in text that came from the network.
pub fn printable(s: &str) -> String {
    const MAX: usize = 512;
    let mut out: String = s
        .chars()
        .take(MAX)
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect();
    if s.chars().count() > MAX {
        out.push_str("...");
    }
    out
}

impl UnlockError {
    /// Whether the next broker (or a later retry) may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::BrokerFault { .. })
    }
}
