//! The unlock flow as explicit states, each consumed by its `handle` step:
//!
//! ```text
//! Start { volumes }
//!   --Challenge-->  Challenged { nonce, volumes }
//!   --evidence, Attest-->  Attested { response, keypair, report_data, volumes }
//!   --unwrap every key-->  Unwrapped { keys, denied, decision_id }
//!   (same session)  RotationSession { session, nonce, report_data }
//!   --ConfirmRotation(proof) per enrolled pending key-->  new current version
//! ```
//!
//! A state can only be reached through the previous one, so keys cannot be
//! accepted without a report bound to a fresh nonce and this attempt's key
//! pair. [`fetch_keys`] runs the states against the configured brokers, in
//! order, with exponential backoff, until the overall timeout;
//! [`fetch_keys_session`] also keeps the [`RotationSession`], which alone
//! holds the nonce and REPORT_DATA that a rotation proof is bound to
//! (`docs/protocol.md`, "Rotation proof").
//!
//! Errors say what failed and what to do. No error, log line or `Debug`
//! output contains key bytes.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::time::Duration;

use keybroker_proto::pb::{self, KeyState};
use keybroker_proto::{
    check_version, denial_from_status, protocol_version, report_data, rotation_proof, GuestKeyPair,
    Nonce, ReportData, VolumeId, VolumeIds, WrapError, REASON_VERSION_MISMATCH,
};
use tokio::time::Instant;
use zeroize::Zeroizing;

use crate::client::{self, Backoff, BrokerRpc, TlsSetupError};
use crate::config::{BrokerUrl, GuestConfig};
use crate::evidence::{EvidenceError, EvidenceProvider};

/// Most key versions accepted for one volume in a response (current and
/// pending during a rotation, with room to spare).
const MAX_VERSIONS_PER_VOLUME: usize = 4;

/// A volume key, unwrapped. Its bytes are zeroized on drop, never printed
/// (there is no `Debug`, `Clone` or `Serialize`) and read only through
/// [`UnwrappedKey::expose_secret`].
pub struct UnwrappedKey {
    /// The volume.
    pub volume: VolumeId,
    /// The key version (the LUKS2 keyslot it belongs to is the caller's business).
    pub version: u32,
    /// Current, or pending during a rotation.
    pub state: KeyState,
    key: Zeroizing<Vec<u8>>,
}

impl UnwrappedKey {
    /// A key of `volume` at `version` (its bytes move in; they are
    /// zeroized when this is dropped).
    pub fn new(volume: VolumeId, version: u32, state: KeyState, key: Zeroizing<Vec<u8>>) -> Self {
        Self {
            volume,
            version,
            state,
            key,
        }
    }

    /// The key bytes: to open a keyslot or prove possession, never to
    /// print or store.
    pub fn expose_secret(&self) -> &[u8] {
        &self.key
    }
}

/// What may be shown of a key: everything but its bytes.
struct KeyLabel<'a>(&'a UnwrappedKey);

impl fmt::Debug for KeyLabel<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} v{} ({:?}, {} bytes)",
            self.0.volume,
            self.0.version,
            self.0.state,
            self.0.key.len()
        )
    }
}

fn key_labels(keys: &[UnwrappedKey]) -> Vec<KeyLabel<'_>> {
    keys.iter().map(KeyLabel).collect()
}

/// A volume the broker refused, with its reason codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    /// The volume.
    pub volume: VolumeId,
    /// Stable reason codes (see docs/protocol.md, "Reason codes").
    pub reason_codes: Vec<String>,
}

/// What one attestation obtained (its `Debug` names the keys, never their
/// bytes).
pub struct FetchOutcome {
    /// The broker that answered.
    pub broker: BrokerUrl,
    /// Granted keys, in request order (a volume may have a current and a
    /// pending version).
    pub keys: Vec<UnwrappedKey>,
    /// Refused volumes, in request order.
    pub denied: Vec<Denied>,
    /// The broker's audit entry for this decision (may be empty).
    pub decision_id: String,
    /// When the broker refused the whole request (`PERMISSION_DENIED`), its
    /// message; every volume is then in `denied`.
    pub refusal: Option<String>,
}

impl fmt::Debug for FetchOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FetchOutcome")
            .field("broker", &self.broker)
            .field("keys", &key_labels(&self.keys))
            .field("denied", &self.denied)
            .field("decision_id", &self.decision_id)
            .field("refusal", &self.refusal)
            .finish()
    }
}

impl FetchOutcome {
    /// Whether every requested volume got at least one key.
    pub fn all_granted(&self) -> bool {
        self.denied.is_empty() && self.refusal.is_none()
    }
}

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
    /// The provider's report does not carry the requested REPORT_DATA.
    #[error("the {provider} provider returned a report whose REPORT_DATA is not the one requested; the provider or platform is broken, report this")]
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
    /// [`fetch_keys`] turns this into a [`FetchOutcome`] with every volume denied.
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

/// What a flow step needs: the RPC handle, which broker it is (for messages)
/// and the deadline of the whole unlock.
pub struct Session<B> {
    rpc: B,
    broker: String,
    deadline: Instant,
}

impl<B: BrokerRpc> Session<B> {
    /// A session on `rpc`, named `broker` in messages, ending at `deadline`.
    pub fn new(rpc: B, broker: impl Into<String>, deadline: Instant) -> Self {
        Self {
            rpc,
            broker: broker.into(),
            deadline,
        }
    }

    fn remaining(&self) -> Duration {
        self.deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    }

    fn bad(&self, problem: impl Into<String>) -> UnlockError {
        UnlockError::BadResponse {
            broker: self.broker.clone(),
            problem: problem.into(),
        }
    }

    fn status_error(&self, st: tonic::Status) -> UnlockError {
        let broker = self.broker.clone();
        let message = printable(st.message());
        let denial = denial_from_status(&st);
        let codes = denial
            .as_ref()
            .map(|d| d.reason_codes.iter().map(|c| printable(c)).collect())
            .unwrap_or_default();
        match st.code() {
            tonic::Code::PermissionDenied => UnlockError::Refused {
                broker,
                message,
                denial,
            },
            tonic::Code::FailedPrecondition
                if denial.as_ref().is_some_and(|d| {
                    d.reason_codes.iter().any(|c| c == REASON_VERSION_MISMATCH)
                }) =>
            {
                UnlockError::VersionMismatch { broker, message }
            }
            code @ (tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition) => {
                UnlockError::Rejected {
                    broker,
                    code,
                    message,
                    reason_codes: codes,
                }
            }
            code => UnlockError::BrokerFault {
                broker,
                code,
                message: if message.is_empty() {
                    "(no message)".into()
                } else {
                    message
                },
            },
        }
    }

    fn check_version(&self, v: Option<&pb::ProtocolVersion>) -> Result<(), UnlockError> {
        check_version(v).map_err(|e| UnlockError::VersionMismatch {
            broker: self.broker.clone(),
            message: e.to_string(),
        })
    }
}

/// First state: the volumes to ask for.
#[derive(Debug)]
pub struct Start {
    volumes: VolumeIds,
}

/// The broker issued a nonce for the volumes.
#[derive(Debug)]
pub struct Challenged {
    nonce: Nonce,
    volumes: VolumeIds,
}

/// The broker answered the attestation; keys are still wrapped.
#[derive(Debug)]
pub struct Attested {
    response: pb::AttestResponse,
    keypair: GuestKeyPair,
    nonce: Nonce,
    report_data: ReportData,
    volumes: VolumeIds,
}

/// Every granted key opened (its `Debug` names the keys, never their bytes).
pub struct Unwrapped {
    /// Granted keys, in request order.
    pub keys: Vec<UnwrappedKey>,
    /// Refused volumes, in request order.
    pub denied: Vec<Denied>,
    /// The broker's audit entry id.
    pub decision_id: String,
    /// What a rotation proof in this session is bound to (taken by
    /// [`attest_session`]).
    binding: Option<SessionBinding>,
}

impl fmt::Debug for Unwrapped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Unwrapped")
            .field("keys", &key_labels(&self.keys))
            .field("denied", &self.denied)
            .field("decision_id", &self.decision_id)
            .finish_non_exhaustive()
    }
}

/// The nonce and REPORT_DATA of an Attest that released keys.
#[derive(Debug)]
struct SessionBinding {
    nonce: Nonce,
    report_data: ReportData,
}

/// The session of an Attest that released keys, kept open so that a
/// pending key, once enrolled, can be confirmed in it: `ConfirmRotation`
/// carries the same nonce, and the proof is bound to the same REPORT_DATA
/// (`docs/protocol.md`, "Rotation proof"). Only [`attest_session`] makes
/// one, from the session it attested in.
pub struct RotationSession<B> {
    session: Session<B>,
    binding: SessionBinding,
}

impl<B> fmt::Debug for RotationSession<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RotationSession")
            .field("broker", &self.session.broker)
            .finish_non_exhaustive()
    }
}

impl<B: BrokerRpc> RotationSession<B> {
    /// The broker, for messages.
    pub fn broker(&self) -> &str {
        &self.session.broker
    }

    /// Sends `ConfirmRotation` for `key` (a pending version this session
    /// released, now enrolled and checked) with its proof, waiting at most
    /// `timeout`. Returns the volume's current version, which must be the
    /// key's version. A broker that does not know the call (protocol 1.0,
    /// or not implemented yet) answers `UNIMPLEMENTED`: a
    /// [`UnlockError::BrokerFault`].
    pub async fn confirm(
        &mut self,
        key: &UnwrappedKey,
        timeout: Duration,
    ) -> Result<u32, UnlockError> {
        let proof = rotation_proof(
            key.expose_secret(),
            &self.binding.report_data,
            &key.volume,
            key.version,
        );
        let req = pb::ConfirmRotationRequest {
            version: Some(protocol_version()),
            nonce: self.binding.nonce.as_bytes().to_vec(),
            volume_id: key.volume.to_string(),
            key_version: key.version,
            proof: proof.to_vec(),
        };
        let s = &mut self.session;
        let resp = tokio::time::timeout(timeout, s.rpc.confirm_rotation(req, timeout))
            .await
            .map_err(|_| UnlockError::BrokerFault {
                broker: s.broker.clone(),
                code: tonic::Code::DeadlineExceeded,
                message: format!("no answer to ConfirmRotation within {timeout:?}"),
            })?
            .map_err(|st| s.status_error(st))?;
        s.check_version(resp.version.as_ref())?;
        if resp.current_version != key.version {
            return Err(s.bad(format!(
                "ConfirmRotation of volume {} version {} answered current version {}",
                key.volume, key.version, resp.current_version
            )));
        }
        tracing::info!(broker = %s.broker, volume = %key.volume, version = key.version,
            decision = %printable(&resp.decision_id), "rotation confirmed");
        Ok(resp.current_version)
    }
}

impl Start {
    /// Begins an unlock of `volumes`.
    pub fn new(volumes: VolumeIds) -> Self {
        Self { volumes }
    }

    /// Sends `Challenge` and keeps the nonce.
    pub async fn handle<B: BrokerRpc>(self, s: &mut Session<B>) -> Result<Challenged, UnlockError> {
        let req = pb::ChallengeRequest {
            version: Some(protocol_version()),
            volume_ids: self.volumes.to_strings(),
        };
        let timeout = s.remaining();
        let resp = s
            .rpc
            .challenge(req, timeout)
            .await
            .map_err(|st| s.status_error(st))?;
        s.check_version(resp.version.as_ref())?;
        let nonce = Nonce::try_from(resp.nonce.as_slice())
            .map_err(|e| s.bad(format!("challenge nonce: {e}")))?;
        tracing::debug!(broker = %s.broker, expires_in_secs = resp.expires_in_secs, "challenged");
        Ok(Challenged {
            nonce,
            volumes: self.volumes,
        })
    }
}

impl Challenged {
    /// Makes this attempt's key pair, gets a report binding it to the nonce
    /// and the volumes, and sends `Attest`.
    pub async fn handle<B: BrokerRpc>(
        self,
        provider: &dyn EvidenceProvider,
        s: &mut Session<B>,
    ) -> Result<Attested, UnlockError> {
        let keypair = GuestKeyPair::generate().map_err(UnlockError::KeyPair)?;
        let public = keypair.public();
        let rd = report_data(&self.nonce, &public, &self.volumes);
        // Evidence providers block (ioctl or configfs); they are quick.
        let evidence =
            provider
                .get_evidence(rd.as_bytes())
                .map_err(|source| UnlockError::Evidence {
                    provider: provider.name(),
                    source,
                })?;
        if keybroker_snp::report::report_data(&evidence.report) != Some(&rd.as_bytes()[..]) {
            return Err(UnlockError::EvidenceMismatch {
                provider: provider.name(),
            });
        }
        let req = pb::AttestRequest {
            version: Some(protocol_version()),
            nonce: self.nonce.as_bytes().to_vec(),
            report: evidence.report,
            cert_table: evidence.cert_table,
            guest_public_key: public.as_bytes().to_vec(),
            volume_ids: self.volumes.to_strings(),
        };
        let timeout = s.remaining();
        let response = s
            .rpc
            .attest(req, timeout)
            .await
            .map_err(|st| s.status_error(st))?;
        Ok(Attested {
            response,
            keypair,
            nonce: self.nonce,
            report_data: rd,
            volumes: self.volumes,
        })
    }
}

impl Attested {
    /// Checks the response against the request and opens every key. Any key
    /// that does not open refuses the whole response.
    pub fn handle<B: BrokerRpc>(self, s: &Session<B>) -> Result<Unwrapped, UnlockError> {
        let Self {
            response,
            keypair,
            nonce,
            report_data,
            volumes,
        } = self;
        s.check_version(response.version.as_ref())?;
        let requested = |raw: &str, what: &str| -> Result<VolumeId, UnlockError> {
            let v = VolumeId::new(raw).map_err(|e| s.bad(format!("{what}: {e}")))?;
            if !volumes.contains(&v) {
                return Err(s.bad(format!("{what} for volume {v}, which was not requested")));
            }
            Ok(v)
        };

        let mut granted: BTreeMap<usize, Vec<UnwrappedKey>> = BTreeMap::new();
        let mut seen = HashSet::new();
        for wk in &response.keys {
            let volume = requested(&wk.volume_id, "a key")?;
            if !seen.insert((volume.clone(), wk.key_version)) {
                return Err(s.bad(format!(
                    "volume {volume} version {} is sent twice",
                    wk.key_version
                )));
            }
            let state = match KeyState::try_from(wk.state) {
                Ok(st @ (KeyState::Current | KeyState::Pending)) => st,
                _ => {
                    return Err(s.bad(format!(
                        "volume {volume} version {} has key state {}, expected CURRENT or PENDING",
                        wk.key_version, wk.state
                    )))
                }
            };
            let key = keypair
                .unwrap_volume_key(
                    &report_data,
                    &volume,
                    wk.key_version,
                    &wk.enc,
                    &wk.ciphertext,
                )
                .map_err(|source| UnlockError::KeyDidNotOpen {
                    broker: s.broker.clone(),
                    volume: volume.to_string(),
                    version: wk.key_version,
                    source,
                })?;
            let pos = volumes
                .iter()
                .position(|v| *v == volume)
                .unwrap_or(usize::MAX);
            let entry = granted.entry(pos).or_default();
            if entry.len() >= MAX_VERSIONS_PER_VOLUME {
                return Err(s.bad(format!(
                    "more than {MAX_VERSIONS_PER_VOLUME} key versions for volume {volume}"
                )));
            }
            entry.push(UnwrappedKey::new(volume, wk.key_version, state, key));
        }

        let mut denied: BTreeMap<usize, Denied> = BTreeMap::new();
        for d in &response.denied {
            let volume = requested(&d.volume_id, "a denial")?;
            let pos = volumes
                .iter()
                .position(|v| *v == volume)
                .unwrap_or(usize::MAX);
            if granted.contains_key(&pos) {
                return Err(s.bad(format!("volume {volume} is both granted and denied")));
            }
            if denied.contains_key(&pos) {
                return Err(s.bad(format!("volume {volume} is denied twice")));
            }
            denied.insert(
                pos,
                Denied {
                    volume,
                    reason_codes: d.reason_codes.iter().map(|c| printable(c)).collect(),
                },
            );
        }
        if let Some(v) = volumes
            .iter()
            .enumerate()
            .find(|(i, _)| !granted.contains_key(i) && !denied.contains_key(i))
            .map(|(_, v)| v)
        {
            return Err(s.bad(format!("volume {v} is neither granted nor denied")));
        }
        // The keypair (and its private key) is dropped, and zeroized, here.
        Ok(Unwrapped {
            keys: granted.into_values().flatten().collect(),
            denied: denied.into_values().collect(),
            decision_id: printable(&response.decision_id),
            binding: Some(SessionBinding { nonce, report_data }),
        })
    }
}

/// Runs the whole flow once against one broker session.
pub async fn run_once<B: BrokerRpc>(
    s: &mut Session<B>,
    provider: &dyn EvidenceProvider,
    volumes: &VolumeIds,
) -> Result<Unwrapped, UnlockError> {
    let challenged = Start::new(volumes.clone()).handle(s).await?;
    let attested = challenged.handle(provider, s).await?;
    attested.handle(s)
}

/// Runs the whole flow once and keeps the session for `ConfirmRotation`.
pub async fn attest_session<B: BrokerRpc>(
    mut s: Session<B>,
    provider: &dyn EvidenceProvider,
    volumes: &VolumeIds,
) -> Result<(Unwrapped, RotationSession<B>), UnlockError> {
    let mut u = run_once(&mut s, provider, volumes).await?;
    let binding = u
        .binding
        .take()
        .ok_or_else(|| s.bad("internal: the session binding is missing"))?;
    Ok((
        u,
        RotationSession {
            session: s,
            binding,
        },
    ))
}

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
/// evidence failures stop at once.
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
) -> Result<(FetchOutcome, Option<RotationSession<BrokerClient>>), UnlockError> {
    let tls = client::tls_config(&cfg.pins)?;
    let deadline = Instant::now() + cfg.timeout;
    let mut backoff = Backoff::default();
    let mut attempts = 0usize;
    let mut last_errors: BTreeMap<usize, String> = BTreeMap::new();
    let mut pin_mismatch = false;
    let mut timed_out = false;

    'rounds: loop {
        for (i, url) in cfg.brokers.iter().enumerate() {
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
                    last_errors.insert(
                        i,
                        format!("{url}: no connection before the overall timeout"),
                    );
                    timed_out = true;
                    break 'rounds;
                }
                Ok(Err(e)) => {
                    tracing::info!(broker = %url, error = %e, "broker unreachable");
                    pin_mismatch |= e.is_pin_mismatch();
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
                    last_errors.insert(i, format!("{url}: no answer before the overall timeout"));
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
        if left.is_zero() {
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::evidence::Evidence;
    use keybroker_proto::{denial_status, wrap_volume_key, GuestPublicKey};
    use std::sync::Mutex;

    /// Evidence whose report carries the requested REPORT_DATA (content is
    /// otherwise irrelevant to the guest).
    struct FakeEvidence;

    impl EvidenceProvider for FakeEvidence {
        fn name(&self) -> &'static str {
            "fake"
        }
        fn get_evidence(&self, rd: &[u8; 64]) -> Result<Evidence, EvidenceError> {
            use keybroker_snp::report::{offset, REPORT_DATA_LEN, REPORT_LEN};
            let mut report = vec![0u8; REPORT_LEN];
            report[offset::REPORT_DATA..offset::REPORT_DATA + REPORT_DATA_LEN].copy_from_slice(rd);
            Ok(Evidence {
                report,
                cert_table: Vec::new(),
            })
        }
    }

    /// What the fake broker does to its answer.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Twist {
        None,
        /// Wrap to the right key but for another version in the aad.
        WrongVersionBinding,
        /// Wrap to a different key pair.
        WrongRecipient,
        /// Flip a ciphertext byte.
        Tamper,
        /// Grant a volume that was not requested.
        ExtraVolume,
        /// Answer nothing about the second volume.
        Omit,
        /// Deny the second volume.
        DenySecond,
        /// Refuse everything with PERMISSION_DENIED.
        Refuse,
        /// Answer with another major version.
        OtherMajor,
    }

    /// A ConfirmRotation the fake received: (nonce, volume, version, proof ok).
    type Confirmed = (Vec<u8>, String, u32, bool);

    struct FakeBroker {
        twist: Twist,
        nonce: [u8; 32],
        log: Mutex<Vec<&'static str>>,
        /// REPORT_DATA of the last Attest (for checking rotation proofs).
        last_rd: Mutex<Option<ReportData>>,
        /// What ConfirmRotation received: (nonce, volume, version, proof ok).
        confirmed: Mutex<Vec<Confirmed>>,
    }

    impl FakeBroker {
        fn new(twist: Twist) -> Self {
            Self {
                twist,
                nonce: [0x11; 32],
                log: Mutex::new(Vec::new()),
                last_rd: Mutex::new(None),
                confirmed: Mutex::new(Vec::new()),
            }
        }
    }

    impl BrokerRpc for &FakeBroker {
        async fn challenge(
            &mut self,
            req: pb::ChallengeRequest,
            _t: Duration,
        ) -> Result<pb::ChallengeResponse, tonic::Status> {
            self.log.lock().unwrap().push("challenge");
            check_version(req.version.as_ref())?;
            Ok(pb::ChallengeResponse {
                version: Some(protocol_version()),
                nonce: self.nonce.to_vec(),
                expires_in_secs: 60,
            })
        }

        async fn attest(
            &mut self,
            req: pb::AttestRequest,
            _t: Duration,
        ) -> Result<pb::AttestResponse, tonic::Status> {
            self.log.lock().unwrap().push("attest");
            let pk = GuestPublicKey::try_from(req.guest_public_key.as_slice()).unwrap();
            let vols = VolumeIds::parse(&req.volume_ids).unwrap();
            *self.last_rd.lock().unwrap() =
                Some(report_data(&Nonce::from_bytes(self.nonce), &pk, &vols));
            fake_attest(req, &self.nonce, self.twist)
        }

        async fn confirm_rotation(
            &mut self,
            req: pb::ConfirmRotationRequest,
            _t: Duration,
        ) -> Result<pb::ConfirmRotationResponse, tonic::Status> {
            self.log.lock().unwrap().push("confirm");
            check_version(req.version.as_ref())?;
            let rd = self.last_rd.lock().unwrap().take().unwrap();
            let volume = VolumeId::new(req.volume_id.as_str()).unwrap();
            // The fake's keys: volume i has key [i + 1; 64] (see fake_attest).
            let key = if volume.as_str() == "root" {
                [1u8; 64]
            } else {
                [2u8; 64]
            };
            let ok = keybroker_proto::verify_rotation_proof(
                &key,
                &rd,
                &volume,
                req.key_version,
                &req.proof,
            );
            self.confirmed.lock().unwrap().push((
                req.nonce.clone(),
                req.volume_id.clone(),
                req.key_version,
                ok,
            ));
            if !ok {
                return Err(tonic::Status::permission_denied("bad proof"));
            }
            Ok(pb::ConfirmRotationResponse {
                version: Some(protocol_version()),
                current_version: req.key_version,
                decision_id: "d-3".into(),
            })
        }
    }

    /// The fake broker's answer to `Attest`: checks the request as a broker
    /// would (minus the report signature), then wraps one key per volume.
    fn fake_attest(
        req: pb::AttestRequest,
        expected_nonce: &[u8; 32],
        twist: Twist,
    ) -> Result<pb::AttestResponse, tonic::Status> {
        let vols = VolumeIds::parse(&req.volume_ids).unwrap();
        let pk = GuestPublicKey::try_from(req.guest_public_key.as_slice()).unwrap();
        let nonce = Nonce::try_from(req.nonce.as_slice()).unwrap();
        assert_eq!(nonce.as_bytes(), expected_nonce);
        let rd = report_data(&nonce, &pk, &vols);
        assert_eq!(&req.report[0x50..0x90], &rd.as_bytes()[..]);
        if twist == Twist::Refuse {
            return Err(denial_status(
                tonic::Code::PermissionDenied,
                "measurement not allowed",
                &pb::Denial {
                    reason_codes: vec!["POLICY_MEASUREMENT_NOT_ALLOWED".into()],
                    volumes: vec![],
                    decision_id: "d-1".into(),
                },
            ));
        }
        let mut keys = Vec::new();
        let mut denied = Vec::new();
        for (i, v) in vols.iter().enumerate() {
            if i == 1 && twist == Twist::Omit {
                continue;
            }
            if i == 1 && twist == Twist::DenySecond {
                denied.push(pb::VolumeDenial {
                    volume_id: v.to_string(),
                    reason_codes: vec!["VOLUME_NOT_BOUND".into()],
                });
                continue;
            }
            let key = [i as u8 + 1; 64];
            let (to, version_in_aad) = match twist {
                Twist::WrongRecipient => (GuestKeyPair::generate().unwrap().public(), 1),
                Twist::WrongVersionBinding => (pk, 2),
                _ => (pk, 1),
            };
            let mut w = wrap_volume_key(&to, &rd, v, version_in_aad, &key).unwrap();
            if twist == Twist::Tamper {
                w.ciphertext[0] ^= 1;
            }
            keys.push(pb::WrappedKey {
                volume_id: v.to_string(),
                key_version: 1,
                state: KeyState::Current as i32,
                enc: w.enc,
                ciphertext: w.ciphertext,
            });
        }
        if twist == Twist::ExtraVolume {
            let other = VolumeId::new("not-requested").unwrap();
            let w = wrap_volume_key(&pk, &rd, &other, 1, &[9; 64]).unwrap();
            keys.push(pb::WrappedKey {
                volume_id: other.to_string(),
                key_version: 1,
                state: KeyState::Current as i32,
                enc: w.enc,
                ciphertext: w.ciphertext,
            });
        }
        let version = if twist == Twist::OtherMajor {
            pb::ProtocolVersion { major: 2, minor: 0 }
        } else {
            protocol_version()
        };
        Ok(pb::AttestResponse {
            version: Some(version),
            keys,
            denied,
            decision_id: "d-2".into(),
        })
    }

    fn vols() -> VolumeIds {
        VolumeIds::parse(["root", "data"]).unwrap()
    }

    async fn run(twist: Twist) -> Result<Unwrapped, UnlockError> {
        let broker = FakeBroker::new(twist);
        let mut s = Session::new(&broker, "fake", Instant::now() + Duration::from_secs(5));
        let start = Start::new(vols());
        let challenged = start.handle(&mut s).await?;
        assert_eq!(challenged.nonce.as_bytes(), &[0x11; 32]);
        let attested = challenged.handle(&FakeEvidence, &mut s).await?;
        assert_eq!(*broker.log.lock().unwrap(), ["challenge", "attest"]);
        attested.handle(&s)
    }

    #[tokio::test]
    async fn happy_path_unwraps_every_key_in_request_order() {
        let u = run(Twist::None).await.unwrap();
        assert_eq!(u.keys.len(), 2);
        assert_eq!(u.keys[0].volume.as_str(), "root");
        assert_eq!(u.keys[0].expose_secret(), &[1; 64]);
        assert_eq!(u.keys[1].volume.as_str(), "data");
        assert_eq!(u.keys[1].expose_secret(), &[2; 64]);
        assert_eq!(u.keys[0].state, KeyState::Current);
        assert!(u.denied.is_empty());
        assert_eq!(u.decision_id, "d-2");
        // Debug never shows key bytes.
        let dbg = format!("{u:?}");
        assert!(dbg.contains("root v1") && !dbg.contains("1, 1"), "{dbg}");
    }

    #[tokio::test]
    async fn confirm_rotation_is_bound_to_the_attest_session() {
        let broker = FakeBroker::new(Twist::None);
        let s = Session::new(&broker, "fake", Instant::now() + Duration::from_secs(5));
        let (u, mut rot) = attest_session(s, &FakeEvidence, &vols()).await.unwrap();
        assert_eq!(rot.broker(), "fake");
        let root = &u.keys[0];
        let v = rot.confirm(root, Duration::from_secs(5)).await.unwrap();
        assert_eq!(v, 1);
        let got = broker.confirmed.lock().unwrap().clone();
        assert_eq!(got, [(vec![0x11; 32], "root".to_owned(), 1, true)]);
        assert_eq!(
            *broker.log.lock().unwrap(),
            ["challenge", "attest", "confirm"]
        );
        // A proof made with another key is refused by the broker.
        *broker.last_rd.lock().unwrap() = Some(ReportData::from_bytes([0; 64]));
        let e = rot.confirm(root, Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(e, UnlockError::Refused { .. }), "{e}");
        assert!(!broker.confirmed.lock().unwrap()[1].3);
    }

    #[tokio::test]
    async fn confirm_rotation_on_a_broker_without_it_is_a_fault() {
        /// Only Challenge and Attest: ConfirmRotation is the trait's default.
        struct Old<'a>(&'a FakeBroker);
        impl BrokerRpc for Old<'_> {
            async fn challenge(
                &mut self,
                req: pb::ChallengeRequest,
                t: Duration,
            ) -> Result<pb::ChallengeResponse, tonic::Status> {
                let mut b = self.0;
                b.challenge(req, t).await
            }
            async fn attest(
                &mut self,
                req: pb::AttestRequest,
                t: Duration,
            ) -> Result<pb::AttestResponse, tonic::Status> {
                let mut b = self.0;
                b.attest(req, t).await
            }
        }
        let broker = FakeBroker::new(Twist::None);
        let s = Session::new(Old(&broker), "old", Instant::now() + Duration::from_secs(5));
        let (u, mut rot) = attest_session(s, &FakeEvidence, &vols()).await.unwrap();
        let e = rot
            .confirm(&u.keys[0], Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                UnlockError::BrokerFault {
                    code: tonic::Code::Unimplemented,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_key_that_does_not_open_refuses_the_response() {
        for twist in [
            Twist::WrongVersionBinding,
            Twist::WrongRecipient,
            Twist::Tamper,
        ] {
            let e = run(twist).await.unwrap_err();
            assert!(
                matches!(e, UnlockError::KeyDidNotOpen { ref volume, version: 1, .. } if volume == "root"),
                "{e}"
            );
            assert!(!e.is_retryable());
            assert!(e.to_string().contains("nothing was unlocked"), "{e}");
        }
    }

    #[tokio::test]
    async fn protocol_violations_are_refused() {
        let e = run(Twist::ExtraVolume).await.unwrap_err();
        assert!(matches!(e, UnlockError::BadResponse { .. }), "{e}");
        assert!(e.to_string().contains("not-requested"), "{e}");
        let e = run(Twist::Omit).await.unwrap_err();
        assert!(e.to_string().contains("neither granted nor denied"), "{e}");
        let e = run(Twist::OtherMajor).await.unwrap_err();
        assert!(matches!(e, UnlockError::VersionMismatch { .. }), "{e}");
        assert!(e.to_string().contains("v2.0"), "{e}");
    }

    #[tokio::test]
    async fn per_volume_denial_is_reported() {
        let u = run(Twist::DenySecond).await.unwrap();
        assert_eq!(u.keys.len(), 1);
        assert_eq!(
            u.denied,
            vec![Denied {
                volume: VolumeId::new("data").unwrap(),
                reason_codes: vec!["VOLUME_NOT_BOUND".into()]
            }]
        );
    }

    #[tokio::test]
    async fn refusal_carries_reason_codes() {
        let e = run(Twist::Refuse).await.unwrap_err();
        let UnlockError::Refused {
            denial, message, ..
        } = e
        else {
            panic!("{e}")
        };
        assert_eq!(message, "measurement not allowed");
        let out = refusal_outcome(&"https://kb:1".parse().unwrap(), &vols(), message, denial);
        assert!(!out.all_granted());
        assert_eq!(out.denied.len(), 2);
        assert_eq!(
            out.denied[1].reason_codes,
            ["POLICY_MEASUREMENT_NOT_ALLOWED"]
        );
        assert_eq!(out.decision_id, "d-1");
    }

    #[tokio::test]
    async fn evidence_not_carrying_report_data_is_refused_locally() {
        struct Liar;
        impl EvidenceProvider for Liar {
            fn name(&self) -> &'static str {
                "liar"
            }
            fn get_evidence(&self, _rd: &[u8; 64]) -> Result<Evidence, EvidenceError> {
                Ok(Evidence {
                    report: vec![0; 1184],
                    cert_table: vec![],
                })
            }
        }
        let broker = FakeBroker::new(Twist::None);
        let mut s = Session::new(&broker, "fake", Instant::now() + Duration::from_secs(5));
        let c = Start::new(vols()).handle(&mut s).await.unwrap();
        let e = c.handle(&Liar, &mut s).await.unwrap_err();
        assert!(
            matches!(e, UnlockError::EvidenceMismatch { provider: "liar" }),
            "{e}"
        );
        assert_eq!(
            *broker.log.lock().unwrap(),
            ["challenge"],
            "nothing sent to attest"
        );
    }

    #[test]
    fn status_mapping() {
        let broker = FakeBroker::new(Twist::None);
        let s = Session::new(&broker, "b", Instant::now());
        let vm: tonic::Status = check_version(None).unwrap_err().into();
        assert!(matches!(
            s.status_error(vm),
            UnlockError::VersionMismatch { .. }
        ));
        assert!(s
            .status_error(tonic::Status::unavailable("x"))
            .is_retryable());
        assert!(s.status_error(tonic::Status::internal("x")).is_retryable());
        assert!(!s
            .status_error(tonic::Status::invalid_argument("x"))
            .is_retryable());
        let e = s.status_error(tonic::Status::unavailable("evil\x1b[2J"));
        assert!(!e.to_string().contains('\x1b'), "{e}");
    }

    // --- Over the wire: TLS, pinning, gRPC status details, broker fallback. ---

    use crate::client::test_support::{closed_port_url, serve, server_config, test_cert};
    use crate::evidence::ProviderConfig;
    use keybroker_proto::pb::key_broker_server::KeyBroker;

    /// A gRPC broker that answers like [`fake_attest`], or is "down".
    pub(crate) struct GrpcFake {
        pub(crate) twist: Twist,
        pub(crate) down: bool,
    }

    #[tonic::async_trait]
    impl KeyBroker for GrpcFake {
        async fn challenge(
            &self,
            req: tonic::Request<pb::ChallengeRequest>,
        ) -> Result<tonic::Response<pb::ChallengeResponse>, tonic::Status> {
            if self.down {
                return Err(tonic::Status::unavailable("nonce store unreachable"));
            }
            check_version(req.get_ref().version.as_ref())?;
            Ok(tonic::Response::new(pb::ChallengeResponse {
                version: Some(protocol_version()),
                nonce: vec![0x22; 32],
                expires_in_secs: 60,
            }))
        }

        async fn attest(
            &self,
            req: tonic::Request<pb::AttestRequest>,
        ) -> Result<tonic::Response<pb::AttestResponse>, tonic::Status> {
            fake_attest(req.into_inner(), &[0x22; 32], self.twist).map(tonic::Response::new)
        }

        async fn confirm_rotation(
            &self,
            _req: tonic::Request<pb::ConfirmRotationRequest>,
        ) -> Result<tonic::Response<pb::ConfirmRotationResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("not in this fake"))
        }
    }

    fn cfg(brokers: Vec<BrokerUrl>, pins: Vec<keybroker_proto::SpkiPin>, secs: u64) -> GuestConfig {
        GuestConfig {
            brokers,
            pins,
            connect_timeout: Duration::from_secs(1),
            timeout: Duration::from_secs(secs),
            evidence: ProviderConfig::SevGuest {
                device: "/unused".into(),
            },
            vmpl: 0,
        }
    }

    #[tokio::test]
    async fn fetch_keys_falls_back_to_the_next_broker() {
        let cert = test_cert();
        let down = serve(
            GrpcFake {
                twist: Twist::None,
                down: true,
            },
            server_config(&cert),
        )
        .await;
        let good = serve(
            GrpcFake {
                twist: Twist::None,
                down: false,
            },
            server_config(&cert),
        )
        .await;
        let dead = closed_port_url().await;
        let c = cfg(vec![dead, down, good.clone()], vec![cert.pin], 20);
        let out = fetch_keys(&c, &FakeEvidence, &vols()).await.unwrap();
        assert_eq!(out.broker, good);
        assert!(out.all_granted());
        assert_eq!(out.keys.len(), 2);
        assert_eq!(out.keys[1].expose_secret(), &[2; 64]);
        assert_eq!(out.decision_id, "d-2");
    }

    #[tokio::test]
    async fn nothing_listening_is_no_connection() {
        let dead = closed_port_url().await;
        let e = fetch_keys(
            &cfg(vec![dead], vec![test_cert().pin], 1),
            &FakeEvidence,
            &vols(),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(
                e,
                UnlockError::Unreachable {
                    cause: UnreachableCause::NoConnection,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[tokio::test]
    async fn refusal_reason_codes_survive_the_wire() {
        let cert = test_cert();
        let url = serve(
            GrpcFake {
                twist: Twist::Refuse,
                down: false,
            },
            server_config(&cert),
        )
        .await;
        let out = fetch_keys(&cfg(vec![url], vec![cert.pin], 20), &FakeEvidence, &vols())
            .await
            .unwrap();
        assert!(!out.all_granted());
        assert!(out.keys.is_empty());
        assert_eq!(out.refusal.as_deref(), Some("measurement not allowed"));
        assert_eq!(out.denied.len(), 2);
        assert_eq!(
            out.denied[0].reason_codes,
            ["POLICY_MEASUREMENT_NOT_ALLOWED"]
        );
        assert_eq!(out.decision_id, "d-1");
    }

    #[tokio::test]
    async fn a_bad_key_over_the_wire_is_an_error_not_a_retry() {
        let cert = test_cert();
        let url = serve(
            GrpcFake {
                twist: Twist::Tamper,
                down: false,
            },
            server_config(&cert),
        )
        .await;
        let e = fetch_keys(&cfg(vec![url], vec![cert.pin], 20), &FakeEvidence, &vols())
            .await
            .unwrap_err();
        assert!(matches!(e, UnlockError::KeyDidNotOpen { .. }), "{e}");
    }

    #[tokio::test]
    async fn wrong_pin_ends_unreachable_within_the_timeout() {
        let cert = test_cert();
        let url = serve(
            GrpcFake {
                twist: Twist::None,
                down: false,
            },
            server_config(&cert),
        )
        .await;
        let started = std::time::Instant::now();
        let e = fetch_keys(
            &cfg(vec![url], vec![test_cert().pin], 2),
            &FakeEvidence,
            &vols(),
        )
        .await
        .unwrap_err();
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(1900) && took < Duration::from_secs(5),
            "{took:?}"
        );
        let UnlockError::Unreachable {
            attempts, cause, ..
        } = &e
        else {
            panic!("{e}")
        };
        assert_eq!(*cause, UnreachableCause::PinMismatch);
        assert!(*attempts >= 2, "retried with backoff: {attempts}");
        let msg = e.to_string();
        assert!(msg.contains("matches none of the configured pins"), "{msg}");
        assert!(msg.contains(&cert.pin.to_string()), "{msg}");
    }
}
