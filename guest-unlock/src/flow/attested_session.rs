//! The session of an Attest that released keys, kept for
//! `ConfirmRotation` (`docs/protocol.md`, "Rotation proof").

use std::fmt;
use std::time::Duration;

use keybroker_proto::pb;
use keybroker_proto::{protocol_version, rotation_proof};

use super::error::{printable, UnlockError};
use super::keys::UnwrappedKey;
use super::session::Session;
use super::states::SessionBinding;
use crate::client::BrokerRpc;

/// The session of an Attest that released keys, kept open so that a
/// pending key, once enrolled, can be confirmed in it: `ConfirmRotation`
/// carries the same nonce, and the proof is bound to the same REPORT_DATA
/// (`docs/protocol.md`, "Rotation proof"). Only
/// [`attest_session`](super::attest_session) makes one, from the session it
/// attested in.
pub struct AttestedSession<B> {
    session: Session<B>,
    binding: SessionBinding,
}

impl<B> fmt::Debug for AttestedSession<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttestedSession")
            .field("broker", &self.session.broker)
            .finish_non_exhaustive()
    }
}

impl<B> AttestedSession<B> {
    /// The session `session` attested in, with what it was bound to.
    pub(super) fn new(session: Session<B>, binding: SessionBinding) -> Self {
        Self { session, binding }
    }
}

impl<B: BrokerRpc> AttestedSession<B> {
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
