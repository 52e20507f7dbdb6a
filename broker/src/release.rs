//! Key release: the Challenge and Attest steps of the protocol, independent
//! of gRPC (the `grpc` module adapts them to the wire).
//!
//! **Invariant:** a volume key is wrapped only for a [`BoundEvidence`] (a
//! bare SNP report, or Azure vTPM evidence), which only `verify` can
//! construct after every evidence check passed and the evidence was bound
//! to the transcript (REPORT_DATA, or the quote and the HCL user data); and
//! only to the guest public key that the transcript (and so the signed
//! evidence) binds.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keybroker_proto::{
    report_data, verify_rotation_proof, wrap_volume_key, GuestPublicKey, Nonce, ReportData,
    VolumeId, VolumeIds, WrappedKey,
};
use time::OffsetDateTime;

use crate::audit::AuditDraft;
use crate::error::{Error, NonceRejected, RefusalCause, RotationRejected, VolumeRefusal};
use crate::keys::{Keyring, MasterKey};
use crate::lifecycle::failpoint;
use crate::noise::Noise;
use crate::nonce::NonceMinter;
use crate::policy::Policy;
use crate::store::{
    AttestCommit, AttestCommitted, KeyState, RotationSessionLookup, RotationSessionRecord, Store,
    StoreError, StoredPolicy,
};
use crate::verify::{BoundEvidence, Evidence, Verifier};

/// A granted nonce.
#[derive(Debug)]
pub struct ChallengeGrant {
    /// The nonce to bind into the report.
    pub nonce: Nonce,
    /// Its lifetime.
    pub expires_in: Duration,
}

/// What a guest sends in Attest, already checked for form by the adapter.
#[derive(Debug)]
pub struct AttestInput {
    /// Nonce from Challenge.
    pub nonce: Nonce,
    /// The evidence: a bare report with its certificate table, or Azure
    /// vTPM evidence.
    pub evidence: Evidence,
    /// The guest's ephemeral X25519 public key.
    pub guest_public_key: GuestPublicKey,
    /// Requested volumes, in transcript order.
    pub volumes: VolumeIds,
}

/// One released key, wrapped to the attested guest.
#[derive(Debug)]
pub struct ReleasedKey {
    /// Volume.
    pub volume: VolumeId,
    /// Key version.
    pub version: u32,
    /// Current or pending.
    pub state: KeyState,
    /// HPKE output.
    pub wrapped: WrappedKey,
}

/// The outcome of a successful Attest: at least one key released.
#[derive(Debug)]
pub struct Release {
    /// Released keys.
    pub keys: Vec<ReleasedKey>,
    /// Volumes refused (partial grant).
    pub denied: Vec<VolumeRefusal>,
    /// Audit entry id of this decision.
    pub decision_id: String,
}

/// What a guest sends in ConfirmRotation, already checked for form.
#[derive(Debug)]
pub struct ConfirmInput {
    /// Nonce of the Attest that released the pending key (names the session).
    pub nonce: Nonce,
    /// The volume.
    pub volume: VolumeId,
    /// The pending version the guest enrolled.
    pub version: u32,
    /// The rotation proof (32 bytes; length checked with the proof).
    pub proof: Vec<u8>,
}

/// A confirmed rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirmed {
    /// The volume's current version now (the confirmed one).
    pub current_version: u32,
    /// True when the version was already current (a retried confirmation).
    pub already_current: bool,
    /// Audit entry id of this decision.
    pub decision_id: String,
}

/// The key-release service.
pub struct Broker {
    store: Arc<dyn Store>,
    keyring: Arc<Keyring>,
    nonces: NonceMinter,
    noise: Noise,
    verifier: Verifier,
    nonce_ttl: Duration,
    rotation_session_ttl: Duration,
    policies: Mutex<HashMap<String, (i64, Arc<Policy>)>>,
    store_offload: Option<Arc<tokio::sync::Semaphore>>,
    /// The audit checkpoint file and what was last written to it.
    anchor: Option<(std::path::PathBuf, Mutex<crate::audit_anchor::AnchorState>)>,
}

impl Broker {
    /// Assembles the service with a single in-memory master key.
    pub fn new(
        store: Arc<dyn Store>,
        master: MasterKey,
        verifier: Verifier,
        nonce_ttl: Duration,
    ) -> Self {
        Self::with_keyring(
            store,
            Arc::new(Keyring::from_key(master)),
            verifier,
            nonce_ttl,
        )
    }

    /// Assembles the service over a keyring (the master key file and,
    /// during a master rotation, the next one).
    pub fn with_keyring(
        store: Arc<dyn Store>,
        keyring: Arc<Keyring>,
        verifier: Verifier,
        nonce_ttl: Duration,
    ) -> Self {
        Broker {
            store,
            nonces: NonceMinter::new(keyring.clone()),
            noise: Noise::default(),
            keyring,
            verifier,
            nonce_ttl,
            rotation_session_ttl: Duration::from_secs(
                crate::config::DEFAULT_ROTATION_SESSION_TTL_SECS.into(),
            ),
            policies: Mutex::new(HashMap::new()),
            store_offload: None,
            anchor: None,
        }
    }

    /// How long after an Attest that released a pending key the guest may
    /// confirm it (default [`crate::config::DEFAULT_ROTATION_SESSION_TTL_SECS`]).
    /// Longer than the nonce lifetime: a guest enrolling keys on many
    /// devices (about 0.8 s each) confirms only after all of them.
    pub fn with_rotation_session_ttl(mut self, ttl: Duration) -> Self {
        self.rotation_session_ttl = ttl;
        self
    }

    /// Bounds store-bound requests run on the blocking pool: `permits` at
    /// once, past which a request is refused with UNAVAILABLE. For a
    /// remote store (PostgreSQL); without it they run inline.
    pub fn with_store_offload(mut self, permits: usize) -> Self {
        self.store_offload = Some(Arc::new(tokio::sync::Semaphore::new(permits.max(1))));
        self
    }

    /// The bound of [`Broker::with_store_offload`], if set.
    pub fn store_offload(&self) -> Option<&Arc<tokio::sync::Semaphore>> {
        self.store_offload.as_ref()
    }

    /// Keeps the audit checkpoint at `path` up to date from store upkeep,
    /// starting from `known` (what the file held at start).
    pub fn with_audit_anchor(
        mut self,
        path: std::path::PathBuf,
        known: Option<crate::audit_anchor::Checkpoint>,
    ) -> Self {
        self.anchor = Some((
            path,
            Mutex::new(crate::audit_anchor::AnchorState {
                known,
                written_with: None,
            }),
        ));
        self
    }

    /// Moves the audit checkpoint to the newest entry (store upkeep).
    pub fn advance_audit_anchor(&self) {
        let Some((path, state)) = &self.anchor else {
            return;
        };
        let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) =
            crate::audit_anchor::advance(self.store.as_ref(), &self.keyring, path, &mut state)
        {
            tracing::error!("could not update the audit checkpoint: {e}");
        }
    }

    /// The store (for admin commands and tests).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The keyring (for the lifecycle functions the admin API calls, so a
    /// master rotation run in this process shares its keys).
    pub fn keyring(&self) -> &Arc<Keyring> {
        &self.keyring
    }

    /// Step 1: issue a single-use nonce for these volumes. Writes nothing:
    /// the nonce is its own proof of issue ([`crate::nonce`]).
    pub fn challenge(
        &self,
        volumes: &VolumeIds,
        client: Option<SocketAddr>,
    ) -> Result<ChallengeGrant, Error> {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let expires_at = now.saturating_add(self.nonce_ttl.as_secs() as i64);
        let nonce = self
            .nonces
            .issue(volumes, expires_at)
            .map_err(|e| Error::Keys {
                volume: String::new(),
                what: format!("cannot issue a nonce: {e}"),
            })?;
        crate::metrics::global().decision("challenge", "allow", &[]);
        tracing::debug!(volumes = volumes.len(), client = ?client, "challenge issued");
        Ok(ChallengeGrant {
            nonce,
            expires_in: self.nonce_ttl,
        })
    }

    /// Counts a failure that is not a decision about verified evidence
    /// ([`crate::noise`]): no audit entry of its own.
    pub fn noise(&self, kind: &str, err: &Error, client: Option<SocketAddr>) {
        self.noise.record(kind, &err.reason_codes(), client, err);
    }

    /// The unauthenticated failures counted since the last call, for the
    /// aggregate audit entry of store upkeep.
    pub fn take_noise(&self) -> std::collections::BTreeMap<String, u64> {
        self.noise.take()
    }

    /// Step 3-5: check the nonce, verify the evidence, evaluate each
    /// volume's policy and wrap every granted key to the attested guest
    /// key. Failures before the evidence is verified and bound to this
    /// request (and replays) are counted, not audited ([`crate::noise`]);
    /// every decision after is audited, in the one transaction that burns
    /// the nonce ([`Store::commit_attest`]). The returned error carries the
    /// decision id when one exists.
    pub fn attest(
        &self,
        input: AttestInput,
        client: Option<SocketAddr>,
    ) -> Result<Release, (Error, Option<String>)> {
        let now = OffsetDateTime::now_utc();
        // 1-5: nonce, evidence, binding. Nothing is written on failure.
        let (bound, expected, nonce_expires_at, mut audit) =
            match self.authenticate(&input, now, client) {
                Ok(v) => v,
                Err(err) => {
                    self.noise("attest", &err, client);
                    return Err((err, None));
                }
            };
        // 6. Each volume's state and policy; keys wrapped in memory only.
        let decided = self.decide(&input, &bound, &expected, now);
        let sessions = match &decided {
            Ok((_, _, sessions)) => sessions.clone(),
            Err(_) => Vec::new(),
        };
        match &decided {
            Ok((_, denied, _)) => {
                audit.verdict = "allow".into();
                audit.reason_codes = denied.iter().flat_map(|d| d.reason_codes()).collect();
                if !denied.is_empty() {
                    audit.detail("refusals", &refusal_details(denied));
                }
                for s in &sessions {
                    audit.detail(
                        &format!("rotation_session.{}", s.volume),
                        &format!(
                            "pending v{} released; session open until {}",
                            s.version, s.expires_at
                        ),
                    );
                }
            }
            Err(err) => {
                audit.verdict = match err {
                    Error::Store(_) | Error::Keys { .. } | Error::MasterKeyUnavailable { .. } => {
                        "error".into()
                    }
                    _ => "deny".into(),
                };
                audit.reason_codes = err.reason_codes();
                audit.detail("error", &err.to_string());
                if let Error::PolicyDenied(refusals) = err {
                    audit.detail("refusals", &refusal_details(refusals));
                }
            }
        }
        // 7. The one write: burn the nonce, audit the decision, open the
        // rotation sessions. Only then does a key leave.
        let event = audit.into_event();
        let commit = AttestCommit {
            nonce: *input.nonce.as_bytes(),
            nonce_expires_at,
            audit: &event,
            sessions: &sessions,
        };
        let m = crate::metrics::global();
        let decision_id = match self.store.commit_attest(&commit) {
            Ok(AttestCommitted::Committed(id)) => id.to_string(),
            Ok(AttestCommitted::NonceAlreadyUsed) => {
                let err = Error::Nonce(NonceRejected::AlreadyUsed);
                self.noise("attest", &err, client);
                return Err((err, None));
            }
            Err(e) => {
                m.store_error();
                tracing::error!("could not record the attest decision: {e}");
                return Err((Error::Store(e), None));
            }
        };
        m.decision(&event.kind, &event.verdict, &event.reason_codes);
        if !sessions.is_empty() {
            failpoint::hit("attest-after-session-recorded");
        }
        match decided {
            Ok((keys, denied, _)) => {
                tracing::info!(
                    decision = decision_id.as_str(),
                    granted = keys.len(),
                    denied = denied.len(),
                    "attest allowed"
                );
                Ok(Release {
                    keys,
                    denied,
                    decision_id,
                })
            }
            Err(err) => {
                tracing::warn!(
                    decision = decision_id.as_str(),
                    reasons = ?err.reason_codes(),
                    "attest refused: {err}"
                );
                Err((err, Some(decision_id)))
            }
        }
    }

    /// Steps 1-5: the nonce is authentic, for these volumes and unexpired;
    /// the evidence verifies and binds this request's transcript. Returns
    /// the bound evidence, the transcript hash, the nonce's expiry and the
    /// audit entry started with the report's claims.
    fn authenticate(
        &self,
        input: &AttestInput,
        now: OffsetDateTime,
        client: Option<SocketAddr>,
    ) -> Result<(BoundEvidence, ReportData, i64, AuditDraft), Error> {
        let nonce_expires_at = self
            .nonces
            .check(&input.nonce, &input.volumes, now.unix_timestamp())
            .map_err(Error::Nonce)?;
        let verified = self.verifier.verify_evidence(&input.evidence, None, now)?;
        let expected = report_data(&input.nonce, &input.guest_public_key, &input.volumes);
        let names: Vec<String> = input
            .volumes
            .iter()
            .map(|v| v.as_str().to_owned())
            .collect();
        let mut audit = AuditDraft::new("attest", now.unix_timestamp(), names, client);
        audit.record_claims(verified.claims());
        audit.detail("evidence", verified.kind().as_str());
        let bound = verified.bind(expected.as_bytes())?;
        audit.record_bound(&bound);
        Ok((bound, expected, nonce_expires_at, audit))
    }

    /// Step 6: each volume's state and policy, and the wrapped keys of the
    /// granted ones with the rotation sessions their pending keys open.
    #[allow(clippy::type_complexity)]
    fn decide(
        &self,
        input: &AttestInput,
        bound: &BoundEvidence,
        expected: &ReportData,
        now: OffsetDateTime,
    ) -> Result<
        (
            Vec<ReleasedKey>,
            Vec<VolumeRefusal>,
            Vec<RotationSessionRecord>,
        ),
        Error,
    > {
        let mut keys = Vec::new();
        let mut denied = Vec::new();
        let mut sessions = Vec::new();
        let session_expiry = now.unix_timestamp() + self.rotation_session_ttl.as_secs() as i64;
        for volume in input.volumes.iter() {
            match self.release_volume(bound, volume, expected, &input.guest_public_key)? {
                Ok(mut released) => {
                    // A released pending key opens a rotation session: the
                    // guest's ConfirmRotation is checked against it.
                    for k in released.iter().filter(|k| k.state == KeyState::Pending) {
                        sessions.push(RotationSessionRecord {
                            nonce: *input.nonce.as_bytes(),
                            volume: volume.as_str().to_owned(),
                            version: k.version,
                            report_data: *expected.as_bytes(),
                            expires_at: session_expiry,
                        });
                    }
                    keys.append(&mut released);
                }
                Err(cause) => denied.push(VolumeRefusal {
                    volume: volume.as_str().to_owned(),
                    cause,
                }),
            }
        }
        if keys.is_empty() {
            return Err(Error::PolicyDenied(denied));
        }
        Ok((keys, denied, sessions))
    }

    /// Releases the keys of one volume, or says why not. The outer error is
    /// a broker failure; the inner one a refusal of this volume.
    fn release_volume(
        &self,
        bound: &BoundEvidence,
        volume: &VolumeId,
        report_data: &keybroker_proto::ReportData,
        guest: &GuestPublicKey,
    ) -> Result<Result<Vec<ReleasedKey>, RefusalCause>, Error> {
        let Some(view) = self.store.release_view(volume.as_str())? else {
            return Ok(Err(RefusalCause::UnknownVolume));
        };
        if !view.volume.enabled {
            return Ok(Err(RefusalCause::Disabled));
        }
        let policy = match self.policy(&view.volume.policy, view.policy) {
            Ok(p) => p,
            Err(cause) => return Ok(Err(cause)),
        };
        let verdict = policy.evaluate_evidence(bound);
        if !verdict.is_allowed() {
            return Ok(Err(RefusalCause::Policy(verdict.failures)));
        }
        let versions = view.keys;
        if versions.is_empty() {
            return Ok(Err(RefusalCause::NoKey));
        }
        let mut out = Vec::with_capacity(versions.len());
        for v in versions {
            let key = self
                .keyring
                .unseal(volume.as_str(), v.version, &v.sealed)
                .map_err(|e| Error::unseal_failed(volume.as_str(), e))?;
            let wrapped =
                wrap_volume_key(guest, report_data, volume, v.version, key.expose_secret())
                    .map_err(|e| Error::Keys {
                        volume: volume.as_str().to_owned(),
                        what: e.to_string(),
                    })?;
            out.push(ReleasedKey {
                volume: volume.clone(),
                version: v.version,
                state: v.state,
                wrapped,
            });
        }
        Ok(Ok(out))
    }

    /// ConfirmRotation: the guest proves, in the session of the Attest
    /// that released a pending key, that it enrolled that key; the pending
    /// version becomes current and the current one retired, in one
    /// transaction. Confirming a version that is already current with a
    /// proof that verifies in its session answers OK again (lost reply).
    /// Every decision is audited (kind "rotation").
    pub fn confirm_rotation(
        &self,
        input: ConfirmInput,
        client: Option<SocketAddr>,
    ) -> Result<Confirmed, (Error, Option<String>)> {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let mut audit = AuditDraft::new(
            "rotation",
            now,
            vec![input.volume.as_str().to_owned()],
            client,
        );
        audit.detail("key_version", &input.version.to_string());
        match self.confirm_inner(&input, now, &mut audit) {
            Ok((current_version, already_current)) => {
                audit.verdict = "allow".into();
                audit.detail(
                    "outcome",
                    if already_current {
                        "already current (repeated confirmation)"
                    } else {
                        "promoted"
                    },
                );
                let decision_id = self.append_audit(audit);
                tracing::info!(
                    decision = decision_id.as_deref().unwrap_or("-"),
                    volume = input.volume.as_str(),
                    version = current_version,
                    already_current,
                    "rotation confirmed"
                );
                // The reply has not left yet: a crash here is the "lost
                // reply" case the guest's retry must survive.
                failpoint::hit("confirm-after-promote");
                Ok(Confirmed {
                    current_version,
                    already_current,
                    decision_id: decision_id.unwrap_or_default(),
                })
            }
            Err(
                err @ Error::Rotation(
                    RotationRejected::SessionUnknown | RotationRejected::SessionExpired,
                ),
            ) => {
                // Anyone can name a made-up nonce: not a decision about
                // anything verified, so counted, not audited.
                self.noise("rotation", &err, client);
                Err((err, None))
            }
            Err(err) => {
                audit.verdict = match err {
                    Error::Store(_) | Error::Keys { .. } | Error::MasterKeyUnavailable { .. } => {
                        "error".into()
                    }
                    _ => "deny".into(),
                };
                audit.reason_codes = err.reason_codes();
                audit.detail("error", &err.to_string());
                let decision_id = self.append_audit(audit);
                tracing::warn!(
                    decision = decision_id.as_deref().unwrap_or("-"),
                    volume = input.volume.as_str(),
                    reasons = ?err.reason_codes(),
                    "rotation refused: {err}"
                );
                Err((err, decision_id))
            }
        }
    }

    fn confirm_inner(
        &self,
        input: &ConfirmInput,
        now: i64,
        audit: &mut AuditDraft,
    ) -> Result<(u32, bool), Error> {
        let volume = input.volume.as_str();
        let session = match self
            .store
            .rotation_session(input.nonce.as_bytes(), volume, now)?
        {
            RotationSessionLookup::Live(s) => s,
            RotationSessionLookup::Expired => {
                return Err(Error::Rotation(RotationRejected::SessionExpired))
            }
            RotationSessionLookup::Unknown => {
                return Err(Error::Rotation(RotationRejected::SessionUnknown))
            }
        };
        if session.version != input.version {
            return Err(Error::Rotation(RotationRejected::VersionMismatch {
                asked: input.version,
                released: session.version,
            }));
        }
        let versions = match self.store.key_versions(volume) {
            Ok(v) => v,
            Err(StoreError::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let Some(record) = versions.iter().find(|k| k.version == input.version) else {
            return Err(Error::Rotation(RotationRejected::NotPending {
                version: input.version,
                state: "gone",
            }));
        };
        if record.state == KeyState::Retired {
            return Err(Error::Rotation(RotationRejected::NotPending {
                version: input.version,
                state: "retired",
            }));
        }
        let key = self
            .keyring
            .unseal(volume, record.version, &record.sealed)
            .map_err(|e| Error::unseal_failed(volume, e))?;
        let rd = ReportData::from_bytes(session.report_data);
        if !verify_rotation_proof(
            key.expose_secret(),
            &rd,
            &input.volume,
            input.version,
            &input.proof,
        ) {
            return Err(Error::Rotation(RotationRejected::ProofInvalid));
        }
        if record.state == KeyState::Current {
            return Ok((input.version, true));
        }
        let retiring = versions
            .iter()
            .find(|k| k.state == KeyState::Current)
            .map(|k| k.version);
        failpoint::hit("confirm-before-promote");
        match self.store.promote_pending(volume, input.version) {
            Ok(()) => {
                if let Some(old) = retiring {
                    audit.detail("retired_version", &old.to_string());
                }
                Ok((input.version, false))
            }
            // Another confirmation of the same version won the race.
            Err(StoreError::Conflict(_))
                if self
                    .store
                    .key_versions(volume)?
                    .iter()
                    .any(|k| k.version == input.version && k.state == KeyState::Current) =>
            {
                Ok((input.version, true))
            }
            Err(StoreError::Conflict(_) | StoreError::NotFound { .. }) => {
                Err(Error::Rotation(RotationRejected::NotPending {
                    version: input.version,
                    state: "gone",
                }))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The parsed policy, cached by name and revision so a release does
    /// not re-parse TOML; a missing or invalid one refuses the volume.
    fn policy(
        &self,
        name: &str,
        stored: Option<StoredPolicy>,
    ) -> Result<Arc<Policy>, RefusalCause> {
        let Some(stored) = stored else {
            return Err(RefusalCause::PolicyUnavailable(format!(
                "policy {name:?} does not exist"
            )));
        };
        let mut cache = self.policies.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((rev, p)) = cache.get(name) {
            if *rev == stored.revision {
                return Ok(p.clone());
            }
        }
        match Policy::from_toml(&stored.text) {
            Ok(p) => {
                let p = Arc::new(p);
                cache.insert(name.to_owned(), (stored.revision, p.clone()));
                Ok(p)
            }
            Err(e) => Err(RefusalCause::PolicyUnavailable(format!(
                "policy {name:?} is invalid: {e}"
            ))),
        }
    }

    fn append_audit(&self, event: AuditDraft) -> Option<String> {
        let event = event.into_event();
        let m = crate::metrics::global();
        m.decision(&event.kind, &event.verdict, &event.reason_codes);
        if event.reason_codes.iter().any(|c| c == "STORE_UNAVAILABLE") {
            m.store_error();
        }
        match self.store.append_audit(&event) {
            Ok(id) => Some(id.to_string()),
            Err(e) => {
                m.store_error();
                tracing::error!("could not append audit entry: {e}");
                None
            }
        }
    }
}

/// Re-reads the master key files (`K` and `K.next`) on every SIGHUP, so
/// a replica given a new master key (a rollout) serves records sealed under
/// it without a restart. Keys already held stay. (A record sealed under a
/// key not yet held also makes the keyring re-read the files once.)
pub fn spawn_key_reload_on_sighup(keyring: Arc<Keyring>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cannot watch SIGHUP; master keys reload only on demand: {e}");
                return;
            }
        };
        while hup.recv().await.is_some() {
            match keyring.refresh() {
                Ok(()) => tracing::info!(
                    current = %keyring.current_id(),
                    next = ?keyring.next_id().map(|k| k.to_string()),
                    "SIGHUP: master key files re-read"
                ),
                Err(e) => tracing::error!("SIGHUP: cannot re-read the master key files: {e}"),
            }
        }
    })
}

/// Runs store upkeep (purging used-nonce records past their expiry,
/// checkpointing) every `every` on the blocking pool, and once per
/// [`crate::noise::AUDIT_INTERVAL`] appends the aggregate audit entry of
/// the unauthenticated failures counted meanwhile, until the returned task
/// is aborted.
pub fn spawn_maintenance(broker: Arc<Broker>, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut last_noise = std::time::Instant::now();
        loop {
            tick.tick().await;
            let b = broker.clone();
            let flush_noise = last_noise.elapsed() >= crate::noise::AUDIT_INTERVAL;
            if flush_noise {
                last_noise = std::time::Instant::now();
            }
            let now = OffsetDateTime::now_utc().unix_timestamp();
            let work = move || {
                if flush_noise {
                    b.audit_noise(now);
                }
                b.advance_audit_anchor();
                b.store.maintain(now)
            };
            match tokio::task::spawn_blocking(work).await {
                Ok(Ok(n)) if n > 0 => tracing::debug!(purged = n, "expired used nonces purged"),
                Ok(Err(e)) => {
                    crate::metrics::global().store_error();
                    tracing::warn!("store maintenance failed: {e}")
                }
                _ => {}
            }
        }
    })
}

impl Broker {
    /// Appends one audit entry of kind `noise` with the unauthenticated
    /// failures counted since the last one, if there were any: their counts
    /// by request kind and reason code, nothing the requests named.
    pub fn audit_noise(&self, now_unix: i64) {
        let counts = self.take_noise();
        if counts.is_empty() {
            return;
        }
        let mut audit = AuditDraft::new("noise", now_unix, Vec::new(), None);
        audit.verdict = "deny".into();
        let mut reasons: Vec<String> = counts
            .keys()
            .filter_map(|k| k.split_once('/').map(|(_, r)| r.to_owned()))
            .collect();
        reasons.sort();
        reasons.dedup();
        audit.reason_codes = reasons;
        let total: u64 = counts.values().sum();
        audit.detail("total", &total.to_string());
        for (k, n) in &counts {
            audit.detail(&format!("count.{k}"), &n.to_string());
        }
        let event = audit.into_event();
        if let Err(e) = self.store.append_audit(&event) {
            crate::metrics::global().store_error();
            tracing::error!("could not append the noise audit entry: {e}");
        }
    }
}

fn refusal_details(refusals: &[VolumeRefusal]) -> String {
    let mut out = String::new();
    for r in refusals {
        match &r.cause {
            RefusalCause::Policy(failures) => {
                for f in failures {
                    out.push_str(&format!(
                        "{}: {} {}: expected {}, actual {}; ",
                        r.volume, f.code, f.check, f.expected, f.actual
                    ));
                }
            }
            other => out.push_str(&format!("{}: {:?}; ", r.volume, other)),
        }
    }
    out
}
