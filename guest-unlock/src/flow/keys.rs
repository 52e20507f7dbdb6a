//! What an attestation gives: the unwrapped keys (secrets, typed) and the
//! denials.

use std::fmt;

use keybroker_proto::pb::KeyState;
use keybroker_proto::VolumeId;
use zeroize::Zeroizing;

use crate::config::BrokerUrl;

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
pub(super) struct KeyLabel<'a>(&'a UnwrappedKey);

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

pub(super) fn key_labels(keys: &[UnwrappedKey]) -> Vec<KeyLabel<'_>> {
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
