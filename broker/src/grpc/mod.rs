//! The guest-facing gRPC boundary: prost messages stop here.
//!
//! `TryFrom`-style checks turn wire messages into typed inputs (lengths,
//! ids, protocol version); the [`crate::release::Broker`] never sees a
//! prost type, and errors become a `tonic::Status` in one place
//! ([`crate::error::Error::to_status`]).

mod evidence;
pub mod limits;
mod server;
mod shards;

use std::sync::Arc;

use keybroker_proto::{
    check_version, pb, protocol_version, GuestPublicKey, Nonce, VolumeId, VolumeIds,
    ROTATION_PROOF_LEN,
};
use tonic::{Request, Response, Status};

use crate::error::{Error, InvalidRequest};
use crate::release::{AttestInput, Broker, ConfirmInput};

pub use server::{serve, shutdown_signal, tls_server_config, ServeError, ServeOptions};
pub use shards::{bind_shards, run_shards};

/// Implementation of `keybroker.v1.KeyBroker`.
pub struct KeyBrokerService {
    broker: Arc<Broker>,
    rate_limit: Option<Arc<limits::RateLimiter>>,
}

impl KeyBrokerService {
    /// Wraps the release service.
    pub fn new(broker: Arc<Broker>) -> Self {
        KeyBrokerService {
            broker,
            rate_limit: None,
        }
    }

    /// Limits Challenge and Attest requests per source address.
    pub fn with_rate_limit(mut self, rate_limit: Option<Arc<limits::RateLimiter>>) -> Self {
        self.rate_limit = rate_limit;
        self
    }

    /// RESOURCE_EXHAUSTED when `client` has used up its requests per second.
    fn rate_limited(&self, kind: &str, client: Option<std::net::SocketAddr>) -> Result<(), Status> {
        let (Some(limit), Some(addr)) = (&self.rate_limit, client) else {
            return Ok(());
        };
        if limit.allow(addr.ip()) {
            return Ok(());
        }
        let e = Error::RateLimited {
            per_sec: limit.per_sec(),
        };
        self.broker.noise(kind, &e, client);
        Err(e.to_status(None))
    }

    /// Runs `f`, which calls the store: inline for an embedded store
    /// (microseconds), or, when the store is remote (PostgreSQL, whose call
    /// may wait up to its timeout on a row lock or a restart), on the
    /// blocking pool under a bound: past it, a request is refused at once
    /// with UNAVAILABLE rather than queued, so a slow database cannot pile
    /// up work (or stall the serving thread's other connections).
    async fn store_bound<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Broker) -> T + Send + 'static,
    ) -> Result<T, Status> {
        let Some(limit) = self.broker.store_offload() else {
            return Ok(f(&self.broker));
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            crate::metrics::global().store_error();
            return Err(
                crate::error::Error::Store(crate::store::StoreError::Unavailable(
                    "every store slot of this broker is busy (a slow database?); retry".into(),
                ))
                .to_status(None),
            );
        };
        let broker = self.broker.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            f(&broker)
        })
        .await
        .map_err(|_| Status::internal("a release task failed; an operator must look at the log"))
    }
}

fn version(v: Option<&pb::ProtocolVersion>) -> Result<(), Error> {
    check_version(v).map_err(|e| InvalidRequest::Version(e.to_string()).into())
}

fn volumes(ids: &[String]) -> Result<VolumeIds, Error> {
    VolumeIds::parse(ids).map_err(|e| {
        InvalidRequest::Field {
            field: "volume_ids",
            message: e.to_string(),
        }
        .into()
    })
}

fn field<T, E: std::fmt::Display>(field: &'static str, r: Result<T, E>) -> Result<T, Error> {
    r.map_err(|e| {
        InvalidRequest::Field {
            field,
            message: e.to_string(),
        }
        .into()
    })
}

/// Checks the form of an AttestRequest and turns it into typed input.
pub fn attest_input(mut req: pb::AttestRequest) -> Result<AttestInput, Error> {
    version(req.version.as_ref())?;
    let evidence = evidence::evidence(&mut req)?;
    Ok(AttestInput {
        nonce: field("nonce", Nonce::try_from(req.nonce.as_slice()))?,
        guest_public_key: field(
            "guest_public_key",
            GuestPublicKey::try_from(req.guest_public_key.as_slice()),
        )?,
        volumes: volumes(&req.volume_ids)?,
        evidence,
    })
}

/// Checks the form of a ConfirmRotationRequest and turns it into typed input.
pub fn confirm_input(req: pb::ConfirmRotationRequest) -> Result<ConfirmInput, Error> {
    version(req.version.as_ref())?;
    if req.key_version == 0 {
        return Err(InvalidRequest::Field {
            field: "key_version",
            message: "key versions start at 1".into(),
        }
        .into());
    }
    if req.proof.len() != ROTATION_PROOF_LEN {
        return Err(InvalidRequest::Field {
            field: "proof",
            message: format!("{} bytes, expected {ROTATION_PROOF_LEN}", req.proof.len()),
        }
        .into());
    }
    Ok(ConfirmInput {
        nonce: field("nonce", Nonce::try_from(req.nonce.as_slice()))?,
        volume: field("volume_id", VolumeId::new(req.volume_id))?,
        version: req.key_version,
        proof: req.proof,
    })
}

#[tonic::async_trait]
impl pb::key_broker_server::KeyBroker for KeyBrokerService {
    async fn challenge(
        &self,
        request: Request<pb::ChallengeRequest>,
    ) -> Result<Response<pb::ChallengeResponse>, Status> {
        let client = request.remote_addr();
        self.rate_limited("challenge", client)?;
        let req = request.into_inner();
        let grant = version(req.version.as_ref())
            .and_then(|()| volumes(&req.volume_ids))
            .and_then(|v| self.broker.challenge(&v, client))
            .map_err(|e| {
                // Nothing about a Challenge is authenticated: counted, not
                // audited (`crate::noise`).
                self.broker.noise("challenge", &e, client);
                e.to_status(None)
            })?;
        Ok(Response::new(pb::ChallengeResponse {
            version: Some(protocol_version()),
            nonce: grant.nonce.as_bytes().to_vec(),
            expires_in_secs: grant.expires_in.as_secs() as u32,
        }))
    }

    async fn attest(
        &self,
        request: Request<pb::AttestRequest>,
    ) -> Result<Response<pb::AttestResponse>, Status> {
        let client = request.remote_addr();
        self.rate_limited("attest", client)?;
        let started = std::time::Instant::now();
        let input = attest_input(request.into_inner()).map_err(|e| {
            self.broker.noise("attest", &e, client);
            e.to_status(None)
        })?;
        // Verification is CPU work of a few hundred microseconds; it runs on
        // the runtime's worker threads (one per core) without a blocking
        // pool hand-off, which would cost more than it saves at this size.
        // Exception: with AMD KDS enabled (off by default) a verification
        // may wait for one certificate or CRL fetch and holds this thread
        // meanwhile (docs/operations.md, "AMD KDS").
        let release = self.store_bound(move |b| b.attest(input, client)).await?;
        crate::metrics::global().release_latency(started.elapsed());
        let release = release.map_err(|(e, decision)| e.to_status(decision.as_deref()))?;
        Ok(Response::new(pb::AttestResponse {
            version: Some(protocol_version()),
            keys: release
                .keys
                .into_iter()
                .map(|k| pb::WrappedKey {
                    volume_id: k.volume.as_str().to_owned(),
                    key_version: k.version,
                    state: match k.state {
                        crate::store::KeyState::Pending => pb::KeyState::Pending,
                        _ => pb::KeyState::Current,
                    } as i32,
                    enc: k.wrapped.enc,
                    ciphertext: k.wrapped.ciphertext,
                })
                .collect(),
            denied: release.denied.iter().map(|d| d.to_pb()).collect(),
            decision_id: release.decision_id,
        }))
    }

    async fn confirm_rotation(
        &self,
        request: Request<pb::ConfirmRotationRequest>,
    ) -> Result<Response<pb::ConfirmRotationResponse>, Status> {
        let client = request.remote_addr();
        let input = confirm_input(request.into_inner()).map_err(|e| {
            self.broker.noise("rotation", &e, client);
            e.to_status(None)
        })?;
        // One unseal, one HMAC and one short transaction: inline, like Attest.
        let confirmed = self
            .store_bound(move |b| b.confirm_rotation(input, client))
            .await?
            .map_err(|(e, decision)| e.to_status(decision.as_deref()))?;
        Ok(Response::new(pb::ConfirmRotationResponse {
            version: Some(protocol_version()),
            current_version: confirmed.current_version,
            decision_id: confirmed.decision_id,
        }))
    }
}
