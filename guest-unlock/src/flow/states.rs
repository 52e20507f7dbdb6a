//! The states of one attestation, each consumed by its `handle` step:
//! [`Start`] → [`Challenged`] → [`Attested`] → [`Unwrapped`].

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use keybroker_proto::pb::{self, KeyState};
use keybroker_proto::{
    protocol_version, report_data, GuestKeyPair, Nonce, ReportData, VolumeId, VolumeIds,
    PROTOCOL_MAJOR,
};

use super::attested_session::AttestedSession;
use super::error::{printable, UnlockError};
use super::keys::{key_labels, Denied, UnwrappedKey};
use super::session::Session;
use crate::client::BrokerRpc;
use crate::evidence::{Evidence, EvidenceProvider};

/// Most key versions accepted for one volume in a response (current and
/// pending during a rotation, with room to spare).
const MAX_VERSIONS_PER_VOLUME: usize = 4;

/// First state: the volumes to ask for.
#[derive(Debug)]
pub struct Start {
    volumes: VolumeIds,
}

/// The broker issued a nonce for the volumes.
#[derive(Debug)]
pub struct Challenged {
    pub(super) nonce: Nonce,
    volumes: VolumeIds,
    /// The protocol minor the broker speaks (what evidence it accepts).
    broker_minor: u32,
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
pub(super) struct SessionBinding {
    pub(super) nonce: Nonce,
    pub(super) report_data: ReportData,
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
            broker_minor: resp.version.map_or(0, |v| v.minor),
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
        // A broker that cannot read this provider's evidence would refuse
        // it as malformed; say why before touching the platform.
        let needed = provider.min_protocol_minor();
        if self.broker_minor < needed {
            return Err(UnlockError::VersionMismatch {
                broker: s.broker.clone(),
                message: format!(
                    "the broker speaks keybroker v{PROTOCOL_MAJOR}.{}, but {} evidence needs \
                     v{PROTOCOL_MAJOR}.{needed} or later: upgrade the broker",
                    self.broker_minor,
                    provider.name()
                ),
            });
        }
        let keypair = GuestKeyPair::generate().map_err(UnlockError::KeyPair)?;
        let public = keypair.public();
        let rd = report_data(&self.nonce, &public, &self.volumes);
        // Evidence providers block (ioctl, configfs, TPM); they are quick.
        let evidence =
            provider
                .get_evidence(rd.as_bytes())
                .map_err(|source| UnlockError::Evidence {
                    provider: provider.name(),
                    source,
                })?;
        if !evidence.binds(rd.as_bytes()) {
            return Err(UnlockError::EvidenceMismatch {
                provider: provider.name(),
            });
        }
        let mut req = pb::AttestRequest {
            version: Some(protocol_version()),
            nonce: self.nonce.as_bytes().to_vec(),
            guest_public_key: public.as_bytes().to_vec(),
            volume_ids: self.volumes.to_strings(),
            ..Default::default()
        };
        match evidence {
            Evidence::Snp(e) => {
                req.report = e.report;
                req.cert_table = e.cert_table;
            }
            Evidence::AzureVtpm(a) => {
                req.evidence_kind = pb::EvidenceKind::AzureVtpm as i32;
                req.azure_vtpm = Some(pb::AzureVtpmEvidence {
                    hcl_report: a.hcl_report,
                    quote: a.quote,
                    signature: a.signature,
                    pcr_values: a.pcr_values.iter().map(|v| v.to_vec()).collect(),
                });
            }
        }
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
) -> Result<(Unwrapped, AttestedSession<B>), UnlockError> {
    let mut u = run_once(&mut s, provider, volumes).await?;
    let binding = u
        .binding
        .take()
        .ok_or_else(|| s.bad("internal: the session binding is missing"))?;
    Ok((u, AttestedSession::new(s, binding)))
}
