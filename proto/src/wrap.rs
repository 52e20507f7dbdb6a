//! HPKE (RFC 9180) wrapping of volume keys to the guest's ephemeral key.
//!
//! Suite: base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM
//! (`kem_id` 0x0020, `kdf_id` 0x0001, `aead_id` 0x0002), one single-shot
//! seal per wrapped key (sequence number 0).
//!
//! - `info` = `"keybroker/v1/wrap"` || REPORT_DATA (64 bytes)
//! - `aad`  = u32-BE len(volume id) || volume id || u32-BE key version
//!
//! So a wrapped key opens only with the private key of the attested report,
//! and only as the volume and version it was issued for.

use std::fmt;

use rustls::crypto::aws_lc_rs::hpke::DH_KEM_X25519_HKDF_SHA256_AES_256 as SUITE;
use rustls::crypto::hpke::{EncapsulatedSecret, Hpke, HpkePrivateKey, HpkePublicKey};
use zeroize::Zeroizing;

use crate::ids::{GuestPublicKey, ReportData, VolumeId, GUEST_PUBLIC_KEY_LEN};

/// Prefix of the HPKE `info` string; REPORT_DATA follows it.
pub const WRAP_INFO_LABEL: &[u8] = b"keybroker/v1/wrap";
/// Length of the HPKE encapsulated key (`enc`) for DHKEM(X25519).
pub const HPKE_ENC_LEN: usize = 32;
/// Length of the AES-256-GCM tag appended to each ciphertext.
pub const HPKE_TAG_LEN: usize = 16;
/// Longest volume key that may be wrapped, in bytes (LUKS2 keys are <= 64).
pub const MAX_VOLUME_KEY_LEN: usize = 1024;

/// Why wrapping or unwrapping failed. Never carries key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WrapError {
    /// The X25519 key pair could not be generated.
    #[error("could not generate the guest's X25519 key pair (system random generator or crypto library failure)")]
    KeyGeneration,
    /// The volume key to wrap was empty or too long.
    #[error("a volume key must be 1 to {MAX_VOLUME_KEY_LEN} bytes, got {len}")]
    BadKeyLength {
        /// Its length.
        len: usize,
    },
    /// Sealing failed, e.g. the guest public key is not a usable X25519 key
    /// (a low-order point gives an all-zero shared secret, which HPKE refuses).
    #[error(
        "could not wrap the key to the guest public key; the key is not a usable X25519 public key"
    )]
    Seal,
    /// The encapsulated key has the wrong length.
    #[error("HPKE enc must be {HPKE_ENC_LEN} bytes, got {got}")]
    BadEncLength {
        /// The length received.
        got: usize,
    },
    /// The ciphertext is too short or too long to hold a volume key.
    #[error(
        "wrapped key ciphertext must be {min} to {max} bytes, got {got}",
        min = HPKE_TAG_LEN + 1,
        max = HPKE_TAG_LEN + MAX_VOLUME_KEY_LEN
    )]
    BadCiphertextLength {
        /// The length received.
        got: usize,
    },
    /// Authentication failed.
    #[error(
        "the wrapped key did not open: it was wrapped for another key pair, report data, \
         volume or key version, or it was altered in transit"
    )]
    Open,
}

/// One wrapped volume key as carried in [`crate::pb::WrappedKey`].
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedKey {
    /// HPKE encapsulated key (32 bytes).
    pub enc: Vec<u8>,
    /// HPKE ciphertext: the volume key followed by a 16-byte tag.
    pub ciphertext: Vec<u8>,
}

impl fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Ciphertext is not secret, but there is no use in dumping it.
        f.debug_struct("WrappedKey")
            .field("enc_len", &self.enc.len())
            .field("ciphertext_len", &self.ciphertext.len())
            .finish()
    }
}

fn info(report_data: &ReportData) -> Vec<u8> {
    let mut i = Vec::with_capacity(WRAP_INFO_LABEL.len() + 64);
    i.extend_from_slice(WRAP_INFO_LABEL);
    i.extend_from_slice(report_data.as_bytes());
    i
}

fn aad(volume: &VolumeId, key_version: u32) -> Vec<u8> {
    let id = volume.as_bytes();
    let mut a = Vec::with_capacity(8 + id.len());
    // Volume ids are at most 128 bytes.
    a.extend_from_slice(&u32::try_from(id.len()).unwrap_or(u32::MAX).to_be_bytes());
    a.extend_from_slice(id);
    a.extend_from_slice(&key_version.to_be_bytes());
    a
}

/// Wraps `key` (a volume key, version `key_version`) to the guest's public
/// key, bound to the attested report data and the volume.
pub fn wrap_volume_key(
    guest: &GuestPublicKey,
    report_data: &ReportData,
    volume: &VolumeId,
    key_version: u32,
    key: &[u8],
) -> Result<WrappedKey, WrapError> {
    if key.is_empty() || key.len() > MAX_VOLUME_KEY_LEN {
        return Err(WrapError::BadKeyLength { len: key.len() });
    }
    let pk = HpkePublicKey(guest.as_bytes().to_vec());
    let (enc, ciphertext) = SUITE
        .seal(&info(report_data), &aad(volume, key_version), key, &pk)
        .map_err(|_| WrapError::Seal)?;
    Ok(WrappedKey {
        enc: enc.0,
        ciphertext,
    })
}

/// The guest's ephemeral X25519 key pair, made for one unlock attempt.
///
/// The private key is zeroized on drop (by rustls' `HpkePrivateKey`), is
/// never printed, and cannot be cloned.
pub struct GuestKeyPair {
    public: GuestPublicKey,
    private: HpkePrivateKey,
}

impl fmt::Debug for GuestKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuestKeyPair")
            .field("public", &self.public)
            .field("private", &"<redacted>")
            .finish()
    }
}

impl GuestKeyPair {
    /// A fresh key pair from the system CSPRNG.
    pub fn generate() -> Result<Self, WrapError> {
        let (pk, sk) = SUITE
            .generate_key_pair()
            .map_err(|_| WrapError::KeyGeneration)?;
        let public: [u8; GUEST_PUBLIC_KEY_LEN] =
            pk.0.as_slice()
                .try_into()
                .map_err(|_| WrapError::KeyGeneration)?;
        Ok(Self {
            public: GuestPublicKey::from_bytes(public),
            private: sk,
        })
    }

    /// The public half, to send in `AttestRequest.guest_public_key`.
    pub fn public(&self) -> GuestPublicKey {
        self.public
    }

    /// Opens a key wrapped by [`wrap_volume_key`] for this key pair, the
    /// same report data, volume and key version. The plaintext goes straight
    /// into a [`Zeroizing`] buffer.
    pub fn unwrap_volume_key(
        &self,
        report_data: &ReportData,
        volume: &VolumeId,
        key_version: u32,
        enc: &[u8],
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, WrapError> {
        if enc.len() != HPKE_ENC_LEN {
            return Err(WrapError::BadEncLength { got: enc.len() });
        }
        if ciphertext.len() <= HPKE_TAG_LEN || ciphertext.len() > HPKE_TAG_LEN + MAX_VOLUME_KEY_LEN
        {
            return Err(WrapError::BadCiphertextLength {
                got: ciphertext.len(),
            });
        }
        let enc = EncapsulatedSecret(enc.to_vec());
        SUITE
            .open(
                &enc,
                &info(report_data),
                &aad(volume, key_version),
                ciphertext,
                &self.private,
            )
            .map(Zeroizing::new)
            .map_err(|_| WrapError::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vol(s: &str) -> VolumeId {
        VolumeId::new(s).unwrap()
    }

    #[test]
    fn info_and_aad_layout() {
        let rd = ReportData::from_bytes([7; 64]);
        let i = info(&rd);
        assert_eq!(&i[..17], b"keybroker/v1/wrap");
        assert_eq!(&i[17..], &[7; 64]);
        assert_eq!(
            aad(&vol("root"), 0x0102_0304),
            [0, 0, 0, 4, b'r', b'o', b'o', b't', 1, 2, 3, 4]
        );
    }

    #[test]
    fn round_trip_and_every_binding() {
        let kp = GuestKeyPair::generate().unwrap();
        let rd = ReportData::from_bytes([9; 64]);
        let key = [0x5a; 64];
        let w = wrap_volume_key(&kp.public(), &rd, &vol("data"), 3, &key).unwrap();
        assert_eq!(w.enc.len(), HPKE_ENC_LEN);
        assert_eq!(w.ciphertext.len(), 64 + HPKE_TAG_LEN);

        let got = kp
            .unwrap_volume_key(&rd, &vol("data"), 3, &w.enc, &w.ciphertext)
            .unwrap();
        assert_eq!(&got[..], &key[..]);

        let other_rd = ReportData::from_bytes([8; 64]);
        let open = |rd: &ReportData, v: &str, ver: u32, kp: &GuestKeyPair| {
            kp.unwrap_volume_key(rd, &vol(v), ver, &w.enc, &w.ciphertext)
        };
        assert_eq!(open(&other_rd, "data", 3, &kp), Err(WrapError::Open));
        assert_eq!(open(&rd, "datA", 3, &kp), Err(WrapError::Open));
        assert_eq!(open(&rd, "data", 4, &kp), Err(WrapError::Open));
        let other_kp = GuestKeyPair::generate().unwrap();
        assert_eq!(open(&rd, "data", 3, &other_kp), Err(WrapError::Open));
    }

    #[test]
    fn key_lengths() {
        let kp = GuestKeyPair::generate().unwrap();
        let rd = ReportData::from_bytes([0; 64]);
        assert_eq!(
            wrap_volume_key(&kp.public(), &rd, &vol("a"), 0, &[]),
            Err(WrapError::BadKeyLength { len: 0 })
        );
        let big = vec![1; MAX_VOLUME_KEY_LEN + 1];
        assert!(wrap_volume_key(&kp.public(), &rd, &vol("a"), 0, &big).is_err());
        let max = vec![1; MAX_VOLUME_KEY_LEN];
        let w = wrap_volume_key(&kp.public(), &rd, &vol("a"), 0, &max).unwrap();
        let got = kp
            .unwrap_volume_key(&rd, &vol("a"), 0, &w.enc, &w.ciphertext)
            .unwrap();
        assert_eq!(got.len(), MAX_VOLUME_KEY_LEN);
    }

    #[test]
    fn debug_never_shows_private_key() {
        let kp = GuestKeyPair::generate().unwrap();
        let s = format!("{kp:?}");
        assert!(s.contains("<redacted>"));
        assert!(!s.contains("private: ["), "{s}");
    }
}
