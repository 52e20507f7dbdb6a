//! Keys at rest: the master key file, per-version key-encryption keys, and
//! volume keys sealed with AES-256-GCM.
//!
//! - [`MasterKey`]: 32 random bytes in their own file (mode 0600, created with
//!   `O_EXCL`), never in the database. Its public [`MasterKeyId`] is recorded
//!   with every sealed record so master rotation can find what to re-seal.
//! - [`Kek`]: HKDF-SHA256 of the master key, with the volume id and key
//!   version in `info`, so each (volume, version) has its own AES-256-GCM key.
//! - [`VolumeKey`]: 64 random bytes, the LUKS2 keyslot passphrase of one key
//!   version.
//! - [`SealedKey`]: what the store keeps: master key id, 96-bit random nonce,
//!   ciphertext with tag. The AAD binds label, volume id (length-prefixed),
//!   version (u32 big-endian) and master key id, so a record moved to another
//!   volume or version, or opened with another master key, is refused.
//!
//! **Invariant:** secret types here have no `Clone`, `Debug` or `Serialize`,
//! are zeroized on drop, and are read only through `expose_secret()`. KEK
//! bytes never exist in Rust memory: HKDF output goes straight into an
//! aws-lc AEAD context, which cleanses itself when dropped.
//!
//! - [`AuditChainKey`]: the audit chain's HMAC key, random, sealed under
//!   the master key like a volume key (`audit_chain.rs`).
//! - [`Keyring`]: the master key file and, during a master key rotation, the
//!   next one; unsealing picks the key by the record's master key id.
//!
//! Key memory is not locked (`mlock`): that needs `unsafe` FFI, which this
//! crate denies. Run the broker with swap disabled or encrypted.

use std::fmt;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::digest;
use aws_lc_rs::hkdf;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

mod audit_chain;
pub mod derived;
mod keyring;
pub use audit_chain::{
    seal_audit_chain_key, unseal_audit_chain_key, AuditChainKey, AUDIT_CHAIN_KEY_LEN,
};
pub use keyring::{next_path, retired_path, Keyring, RetiredKey};

/// Length of the master key in bytes.
pub const MASTER_KEY_LEN: usize = 32;
/// Length of a volume key in bytes.
pub const VOLUME_KEY_LEN: usize = 64;
/// Length of a [`MasterKeyId`] in bytes.
pub const MASTER_KEY_ID_LEN: usize = 16;
/// AES-GCM tag length.
const TAG_LEN: usize = 16;

const MASTER_ID_LABEL: &[u8] = b"keybroker/master-key-id/v1";
const KEK_SALT: &[u8] = b"keybroker/kek-salt/v1";
const KEK_INFO_LABEL: &[u8] = b"keybroker/kek/v1";
const SEAL_AAD_LABEL: &[u8] = b"keybroker/sealed-volume-key/v1";

/// Errors of key files, sealing and unsealing. Never carries key bytes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Reading or writing a key file failed.
    #[error("master key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The master key file exists already (generation never overwrites one).
    #[error("master key file {path} already exists; it is never overwritten (move it away first if you really mean to replace it, which makes every sealed key unreadable)")]
    AlreadyExists {
        /// The file.
        path: PathBuf,
    },
    /// The master key file can be read by group or others.
    #[error("master key file {path} has mode {mode:04o}, readable by group or others; run `chmod 600 {path}` and check who may have read it")]
    InsecurePermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The master key file is not a regular file.
    #[error("master key file {path} is not a regular file")]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// The master key file does not hold exactly 32 bytes.
    #[error("master key file {path} holds {len} bytes, expected exactly {MASTER_KEY_LEN}; it is not a broker master key (or it was truncated)")]
    WrongLength {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: u64,
    },
    /// The record was sealed under another master key.
    #[error("key sealed under master key {sealed_with}, but the loaded master key is {loaded}; load the master key this record was sealed with")]
    WrongMasterKey {
        /// Master key id stored in the record.
        sealed_with: MasterKeyId,
        /// Id of the master key in use.
        loaded: MasterKeyId,
    },
    /// Authentication failed: the record was changed, or belongs to another
    /// volume or version.
    #[error("sealed key of volume {volume:?} version {version} does not authenticate: it was modified or belongs to another volume or version")]
    Unseal {
        /// Volume asked for.
        volume: String,
        /// Version asked for.
        version: u32,
    },
    /// The record has the wrong shape (ciphertext length).
    #[error("sealed key record is malformed: {what}")]
    Malformed {
        /// What is wrong.
        what: String,
    },
    /// The crypto library refused an operation that cannot fail with valid
    /// lengths (kept as an error rather than a panic).
    #[error("crypto failure: {0}")]
    Crypto(&'static str),
}

/// Public identifier of a master key: the first 16 bytes of
/// SHA-256("keybroker/master-key-id/v1" || key). Safe to store and print.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MasterKeyId([u8; MASTER_KEY_ID_LEN]);

impl MasterKeyId {
    /// From raw bytes (as stored).
    pub fn from_bytes(b: [u8; MASTER_KEY_ID_LEN]) -> Self {
        MasterKeyId(b)
    }

    /// From a byte slice, if it has the right length.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        b.try_into().ok().map(MasterKeyId)
    }

    /// From 32 hex characters.
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut b = [0u8; MASTER_KEY_ID_LEN];
        hex::decode_to_slice(s, &mut b).ok()?;
        Some(MasterKeyId(b))
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; MASTER_KEY_ID_LEN] {
        &self.0
    }

    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for MasterKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for MasterKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKeyId({})", self.to_hex())
    }
}

/// The broker's master key (32 bytes). Never stored in the database.
pub struct MasterKey {
    bytes: Box<[u8; MASTER_KEY_LEN]>,
    id: MasterKeyId,
}

impl Drop for MasterKey {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

fn fill_random(buf: &mut [u8]) -> Result<(), KeyError> {
    SystemRandom::new()
        .fill(buf)
        .map_err(|_| KeyError::Crypto("the OS random number generator failed"))
}

impl MasterKey {
    fn from_box(bytes: Box<[u8; MASTER_KEY_LEN]>) -> Self {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(MASTER_ID_LABEL);
        ctx.update(&bytes[..]);
        let d = ctx.finish();
        let mut id = [0u8; MASTER_KEY_ID_LEN];
        id.copy_from_slice(&d.as_ref()[..MASTER_KEY_ID_LEN]);
        MasterKey {
            bytes,
            id: MasterKeyId(id),
        }
    }

    /// A fresh random master key, in memory only (tests, rotation).
    pub fn generate() -> Result<Self, KeyError> {
        let mut bytes = Box::new([0u8; MASTER_KEY_LEN]);
        fill_random(&mut bytes[..])?;
        Ok(Self::from_box(bytes))
    }

    /// Generates a master key and writes it to a new file `path`, created
    /// with `O_EXCL` and mode 0600 (an existing file is never overwritten),
    /// flushed to disk before returning.
    pub fn generate_to_file(path: &Path) -> Result<Self, KeyError> {
        let key = Self::generate()?;
        let io = |source| KeyError::Io {
            path: path.to_owned(),
            source,
        };
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    KeyError::AlreadyExists {
                        path: path.to_owned(),
                    }
                } else {
                    io(e)
                }
            })?;
        f.write_all(&key.bytes[..]).map_err(io)?;
        f.sync_all().map_err(io)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Persist the directory entry too; failure here is not fatal to
            // correctness of the key, only to durability on power loss.
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(key)
    }

    /// Loads the master key from `path`, refusing a file that group or others
    /// may read, that is not a regular file, or that is not exactly 32 bytes.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_owned(),
            source,
        };
        let mut f = std::fs::File::open(path).map_err(io)?;
        // Checked on the opened file, so there is no window between check
        // and read.
        let meta = f.metadata().map_err(io)?;
        if !meta.is_file() {
            return Err(KeyError::NotAFile {
                path: path.to_owned(),
            });
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(KeyError::InsecurePermissions {
                path: path.to_owned(),
                mode,
            });
        }
        if meta.len() != MASTER_KEY_LEN as u64 {
            return Err(KeyError::WrongLength {
                path: path.to_owned(),
                len: meta.len(),
            });
        }
        let mut bytes = Box::new([0u8; MASTER_KEY_LEN]);
        f.read_exact(&mut bytes[..]).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                KeyError::WrongLength {
                    path: path.to_owned(),
                    len: 0,
                }
            } else {
                io(e)
            }
        })?;
        let mut extra = [0u8; 1];
        if f.read(&mut extra).map_err(io)? != 0 {
            bytes.zeroize();
            return Err(KeyError::WrongLength {
                path: path.to_owned(),
                len: MASTER_KEY_LEN as u64 + 1,
            });
        }
        Ok(Self::from_box(bytes))
    }

    /// The public id of this key.
    pub fn id(&self) -> MasterKeyId {
        self.id
    }

    /// The key bytes. Only for deriving keys; never log or store them.
    pub fn expose_secret(&self) -> &[u8; MASTER_KEY_LEN] {
        &self.bytes
    }
}

/// A volume key version: 64 random bytes (the LUKS2 keyslot passphrase).
pub struct VolumeKey {
    bytes: Box<[u8; VOLUME_KEY_LEN]>,
}

impl Drop for VolumeKey {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

impl VolumeKey {
    /// A fresh random key from the OS RNG, filled in place on the heap.
    ///
    /// # Panics
    /// If the OS random number generator fails, which aws-lc treats as
    /// fatal anyway (it aborts rather than return weak randomness).
    pub fn generate() -> Self {
        let mut bytes = Box::new([0u8; VOLUME_KEY_LEN]);
        fill_random(&mut bytes[..]).expect("OS random number generator failed");
        VolumeKey { bytes }
    }

    /// The key bytes, for wrapping to an attested guest. Never log them.
    pub fn expose_secret(&self) -> &[u8; VOLUME_KEY_LEN] {
        &self.bytes
    }

    /// Constant-time equality, for tests and checks.
    pub fn ct_eq(&self, other: &VolumeKey) -> bool {
        self.bytes[..].ct_eq(&other.bytes[..]).into()
    }
}

/// A key-encryption key for one (volume, version), derived by HKDF-SHA256
/// from the master key. Its bytes live only inside aws-lc's AEAD context.
pub struct Kek {
    key: LessSafeKey,
}

impl Kek {
    /// HKDF-SHA256(salt = label, ikm = master key, info = label ||
    /// len(volume) u32 BE || volume || version u32 BE) → AES-256-GCM key.
    pub fn derive(master: &MasterKey, volume: &str, version: u32) -> Result<Kek, KeyError> {
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, KEK_SALT);
        let prk = salt.extract(master.expose_secret());
        let vlen = len_u32(volume.len())?;
        let ver = version.to_be_bytes();
        let info: [&[u8]; 4] = [KEK_INFO_LABEL, &vlen, volume.as_bytes(), &ver];
        let okm = prk
            .expand(&info, &AES_256_GCM)
            .map_err(|_| KeyError::Crypto("HKDF expand"))?;
        let unbound = UnboundKey::from(okm);
        Ok(Kek {
            key: LessSafeKey::new(unbound),
        })
    }
}

fn len_u32(n: usize) -> Result<[u8; 4], KeyError> {
    u32::try_from(n)
        .map(u32::to_be_bytes)
        .map_err(|_| KeyError::Malformed {
            what: "volume id longer than 4 GiB".into(),
        })
}

/// A volume key version sealed under the master key. Not secret: this is
/// what the store keeps.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedKey {
    /// Master key the record was sealed under.
    pub master_key_id: MasterKeyId,
    /// Random 96-bit AES-GCM nonce.
    pub nonce: [u8; NONCE_LEN],
    /// Ciphertext followed by the 16-byte tag (80 bytes for a 64-byte key).
    pub ciphertext: Vec<u8>,
}

impl fmt::Debug for SealedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedKey")
            .field("master_key_id", &self.master_key_id)
            .field("nonce", &hex::encode(self.nonce))
            .field("ciphertext_len", &self.ciphertext.len())
            .finish()
    }
}

fn aad(volume: &str, version: u32, master: MasterKeyId) -> Result<Vec<u8>, KeyError> {
    let mut a = Vec::with_capacity(SEAL_AAD_LABEL.len() + 4 + volume.len() + 4 + 16);
    a.extend_from_slice(SEAL_AAD_LABEL);
    a.extend_from_slice(&len_u32(volume.len())?);
    a.extend_from_slice(volume.as_bytes());
    a.extend_from_slice(&version.to_be_bytes());
    a.extend_from_slice(master.as_bytes());
    Ok(a)
}

/// Refuses `sealed` before it is opened: sealed under another master key
/// than `master`, or a ciphertext that is not `plain_len` bytes and a tag.
/// `what` names the record in the error.
fn check_sealed(
    master: &MasterKey,
    sealed: &SealedKey,
    plain_len: usize,
    what: &str,
) -> Result<(), KeyError> {
    if sealed.master_key_id != master.id() {
        return Err(KeyError::WrongMasterKey {
            sealed_with: sealed.master_key_id,
            loaded: master.id(),
        });
    }
    if sealed.ciphertext.len() != plain_len + TAG_LEN {
        return Err(KeyError::Malformed {
            what: format!(
                "{what}'s ciphertext is {} bytes, expected {}",
                sealed.ciphertext.len(),
                plain_len + TAG_LEN
            ),
        });
    }
    Ok(())
}

/// Seals `key` as version `version` of `volume` under `master`.
pub fn seal(
    master: &MasterKey,
    volume: &str,
    version: u32,
    key: &VolumeKey,
) -> Result<SealedKey, KeyError> {
    let kek = Kek::derive(master, volume, version)?;
    let mut nonce = [0u8; NONCE_LEN];
    fill_random(&mut nonce)?;
    let aad = aad(volume, version, master.id())?;
    let mut buf = Vec::with_capacity(VOLUME_KEY_LEN + TAG_LEN);
    buf.extend_from_slice(key.expose_secret());
    kek.key
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&aad),
            &mut buf,
        )
        .map_err(|_| KeyError::Crypto("AES-GCM seal"))?;
    Ok(SealedKey {
        master_key_id: master.id(),
        nonce,
        ciphertext: buf,
    })
}

/// Opens a sealed key version of `volume`. Refuses a record sealed under
/// another master key, for another volume or version, or modified.
pub fn unseal(
    master: &MasterKey,
    volume: &str,
    version: u32,
    sealed: &SealedKey,
) -> Result<VolumeKey, KeyError> {
    check_sealed(master, sealed, VOLUME_KEY_LEN, "the sealed volume key")?;
    let kek = Kek::derive(master, volume, version)?;
    let aad = aad(volume, version, master.id())?;
    let mut buf = Zeroizing::new(sealed.ciphertext.clone());
    let plain = kek
        .key
        .open_in_place(
            Nonce::assume_unique_for_key(sealed.nonce),
            Aad::from(&aad),
            &mut buf,
        )
        .map_err(|_| KeyError::Unseal {
            volume: volume.to_owned(),
            version,
        })?;
    let mut bytes = Box::new([0u8; VOLUME_KEY_LEN]);
    bytes.copy_from_slice(plain);
    Ok(VolumeKey { bytes })
}

#[cfg(test)]
mod tests;
