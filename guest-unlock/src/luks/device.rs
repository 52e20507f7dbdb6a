//! [`Device`]: one LUKS2 header opened through libcryptsetup, with the few
//! operations guest-unlock needs, each returning a [`LuksError`] that names
//! the device and the operation. Passphrases and keys are borrowed, never
//! copied or printed.

use std::fmt;
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

use libcryptsetup_rs::consts::flags::{CryptActivate, CryptPbkdf, CryptVolumeKey};
use libcryptsetup_rs::consts::vals::{
    CryptKdf, CryptStatusInfo, EncryptionFormat, KeyslotInfo, LuksType,
};
use libcryptsetup_rs::{
    CryptDevice, CryptInit, CryptParamsLuks2Ref, CryptPbkdfType, CryptSettingsHandle,
    CryptTokenInfo, Either, LibcryptErr, TokenInput,
};
use serde_json::Value;

use super::log;

/// LUKS2 has 32 keyslots and 32 tokens.
pub const LUKS2_SLOTS: u32 = 32;
/// Size of the volume key `format` generates (AES-256-XTS: two 256-bit keys).
pub const VOLUME_KEY_BYTES: usize = 64;
/// Cipher of devices made by `format`.
pub const CIPHER: (&str, &str) = ("aes", "xts-plain64");
/// PBKDF2 iterations of keyslots whose secret is a random broker key:
/// libcryptsetup's minimum. The secret has 512 bits of entropy, so key
/// stretching adds nothing, and argon2's defaults can need more memory than
/// a small guest has.
pub const MIN_PBKDF2_ITERATIONS: u32 = 1000;

/// How a new keyslot's passphrase is stretched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pbkdf {
    /// PBKDF2-SHA256 with [`MIN_PBKDF2_ITERATIONS`]: for random keys only.
    MinimalPbkdf2,
    /// libcryptsetup's default for LUKS2 (argon2id, benchmarked): for
    /// passphrases that people choose.
    Default,
}

/// A failed LUKS2 operation. Messages name the device and the operation;
/// they never hold passphrases or keys.
#[derive(Debug, thiserror::Error)]
pub enum LuksError {
    /// The device has no (valid) LUKS2 header.
    #[error("{}: not a LUKS2 device ({reason})", device.display())]
    NotLuks2 {
        /// The device.
        device: PathBuf,
        /// What libcryptsetup said.
        reason: String,
    },
    /// `--format` on a device that already carries a LUKS header.
    #[error("{}: already a LUKS device; refusing to format over it (wipe it first with `cryptsetup erase` and `wipefs -a` if you mean it, or bind without --format)", device.display())]
    AlreadyLuks {
        /// The device.
        device: PathBuf,
    },
    /// No keyslot opens with the given passphrase.
    #[error("{}: no keyslot opens with the given passphrase", device.display())]
    WrongPassphrase {
        /// The device.
        device: PathBuf,
    },
    /// Any other libcryptsetup failure.
    #[error("{}: {op} failed: {reason}", device.display())]
    Op {
        /// The device.
        device: PathBuf,
        /// The operation.
        op: &'static str,
        /// errno, when libcryptsetup gave one.
        errno: Option<i32>,
        /// What went wrong.
        reason: String,
    },
}

impl LuksError {
    /// The errno of a failed operation, if any.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Op { errno, .. } => *errno,
            _ => None,
        }
    }
}

fn op_err(device: &Path, op: &'static str, e: LibcryptErr) -> LuksError {
    let (errno, reason) = match &e {
        LibcryptErr::IOError(io) => (io.raw_os_error(), io.to_string()),
        other => (None, other.to_string()),
    };
    LuksError::Op {
        device: device.to_owned(),
        op,
        errno,
        reason,
    }
}

/// An open LUKS2 device (or a file holding a LUKS2 header).
pub struct Device {
    cd: CryptDevice,
    path: PathBuf,
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Device").field("path", &self.path).finish()
    }
}

fn init(path: &Path) -> Result<CryptDevice, LuksError> {
    // libcryptsetup calls a missing path "Block device required".
    if let Err(e) = std::fs::metadata(path) {
        return Err(LuksError::Op {
            device: path.to_owned(),
            op: "opening the device",
            errno: e.raw_os_error(),
            reason: e.to_string(),
        });
    }
    log::install();
    CryptInit::init(path).map_err(|e| op_err(path, "opening the device", e))
}

impl Device {
    /// Opens `path` and loads its LUKS2 header.
    pub fn open(path: &Path) -> Result<Self, LuksError> {
        let mut cd = init(path)?;
        cd.context_handle()
            .load::<CryptParamsLuks2Ref<'_>>(Some(EncryptionFormat::Luks2), None)
            .map_err(|e| LuksError::NotLuks2 {
                device: path.to_owned(),
                reason: match e {
                    LibcryptErr::IOError(io) => io.to_string(),
                    other => other.to_string(),
                },
            })?;
        Ok(Self {
            cd,
            path: path.to_owned(),
        })
    }

    /// Whether `path` carries a LUKS header of any version (nothing is
    /// changed; errors opening the device count as "no").
    pub fn has_luks_header(path: &Path) -> bool {
        let Ok(mut cd) = init(path) else {
            return false;
        };
        cd.context_handle()
            .load::<CryptParamsLuks2Ref<'_>>(None, None)
            .is_ok()
    }

    /// Formats `path` as a new LUKS2 device with a random 512-bit volume key
    /// (aes-xts-plain64, libcryptsetup's default header and sector sizes) and
    /// no keyslot yet. Refuses a device that already carries a LUKS header.
    pub fn format(path: &Path) -> Result<Self, LuksError> {
        if Self::has_luks_header(path) {
            return Err(LuksError::AlreadyLuks {
                device: path.to_owned(),
            });
        }
        let mut cd = init(path)?;
        cd.context_handle()
            .format::<CryptParamsLuks2Ref<'_>>(
                EncryptionFormat::Luks2,
                CIPHER,
                None,
                Either::Right(VOLUME_KEY_BYTES),
                None,
            )
            .map_err(|e| op_err(path, "formatting as LUKS2", e))?;
        Ok(Self {
            cd,
            path: path.to_owned(),
        })
    }

    /// The device path as given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The LUKS UUID (lower case, hyphenated).
    pub fn uuid(&mut self) -> Result<String, LuksError> {
        let path = self.path.clone();
        self.cd
            .status_handle()
            .get_uuid()
            .map(|u| u.hyphenated().to_string())
            .map_err(|e| op_err(&path, "reading the UUID", e))
    }

    /// Active keyslots, ascending.
    pub fn active_keyslots(&mut self) -> Vec<u32> {
        (0..LUKS2_SLOTS)
            .filter(|&n| {
                matches!(
                    self.cd.keyslot_handle().status(n),
                    Ok(KeyslotInfo::Active | KeyslotInfo::ActiveLast)
                )
            })
            .collect()
    }

    /// Whether keyslot `slot` stretches its passphrase with PBKDF2 (as every
    /// keyslot guest-unlock adds does), so that trying a key on it is cheap;
    /// `false` for argon2 keyslots and on any error.
    pub fn keyslot_is_pbkdf2(&mut self, slot: u32) -> bool {
        matches!(
            self.cd.keyslot_handle().get_pbkdf(slot),
            Ok(p) if p.type_ == CryptKdf::Pbkdf2
        )
    }

    fn set_pbkdf(&mut self, pbkdf: Pbkdf) -> Result<(), LuksError> {
        let path = self.path.clone();
        let params = match pbkdf {
            Pbkdf::MinimalPbkdf2 => CryptPbkdfType {
                type_: CryptKdf::Pbkdf2,
                hash: Some("sha256".into()),
                time_ms: 0,
                iterations: MIN_PBKDF2_ITERATIONS,
                max_memory_kb: 0,
                parallel_threads: 0,
                flags: CryptPbkdf::NO_BENCHMARK,
            },
            Pbkdf::Default => CryptSettingsHandle::get_pbkdf_default(&LuksType::Luks2)
                .map_err(|e| op_err(&path, "reading the default PBKDF", e))?,
        };
        self.cd
            .settings_handle()
            .set_pbkdf_type(&params)
            .map_err(|e| op_err(&path, "setting the PBKDF", e))
    }

    /// Checks that `passphrase` opens a keyslot (any, or `slot`) without
    /// activating anything; returns the keyslot.
    pub fn check_passphrase(
        &mut self,
        slot: Option<u32>,
        passphrase: &[u8],
    ) -> Result<u32, LuksError> {
        self.activate_inner(None, slot, passphrase, CryptActivate::empty())
    }

    /// Activates the device as `/dev/mapper/NAME` with the keyslot that
    /// `passphrase` opens (any, or `slot`). Needs device-mapper.
    pub fn activate(
        &mut self,
        name: &str,
        slot: Option<u32>,
        passphrase: &[u8],
        flags: ActivateFlags,
    ) -> Result<u32, LuksError> {
        self.activate_inner(Some(name), slot, passphrase, flags.to_crypt())
    }

    fn activate_inner(
        &mut self,
        name: Option<&str>,
        slot: Option<u32>,
        passphrase: &[u8],
        flags: CryptActivate,
    ) -> Result<u32, LuksError> {
        let path = self.path.clone();
        self.cd
            .activate_handle()
            .activate_by_passphrase(name, slot, passphrase, flags)
            .map_err(|e| match &e {
                LibcryptErr::IOError(io) if io.raw_os_error() == Some(libc::EPERM) => {
                    LuksError::WrongPassphrase { device: path }
                }
                _ => op_err(
                    &path,
                    if name.is_some() {
                        "activation"
                    } else {
                        "checking the passphrase"
                    },
                    e,
                ),
            })
    }

    /// Adds a keyslot for `new_passphrase`, authorised by
    /// `existing_passphrase`; returns its id.
    pub fn add_keyslot(
        &mut self,
        existing_passphrase: &[u8],
        new_passphrase: &[u8],
        pbkdf: Pbkdf,
    ) -> Result<u32, LuksError> {
        self.set_pbkdf(pbkdf)?;
        let path = self.path.clone();
        self.cd
            .keyslot_handle()
            .add_by_passphrase(None, existing_passphrase, new_passphrase)
            .map_err(|e| match &e {
                LibcryptErr::IOError(io) if io.raw_os_error() == Some(libc::EPERM) => {
                    LuksError::WrongPassphrase { device: path }
                }
                _ => op_err(&path, "adding a keyslot", e),
            })
    }

    /// Adds a keyslot for `new_passphrase` with the volume key still held
    /// by this context: only right after [`Device::format`].
    pub fn add_keyslot_after_format(
        &mut self,
        new_passphrase: &[u8],
        pbkdf: Pbkdf,
    ) -> Result<u32, LuksError> {
        self.set_pbkdf(pbkdf)?;
        let path = self.path.clone();
        self.cd
            .keyslot_handle()
            .add_by_key(None, None, new_passphrase, CryptVolumeKey::empty())
            .map_err(|e| op_err(&path, "adding a keyslot", e))
    }

    /// Destroys keyslot `slot` (its key material is wiped).
    pub fn destroy_keyslot(&mut self, slot: u32) -> Result<(), LuksError> {
        let path = self.path.clone();
        self.cd
            .keyslot_handle()
            .destroy(slot)
            .map_err(|e| op_err(&path, "destroying the keyslot", e))
    }

    /// Every active token: id and JSON.
    pub fn tokens(&mut self) -> Result<Vec<(u32, Value)>, LuksError> {
        let path = self.path.clone();
        let mut out = Vec::new();
        for id in 0..LUKS2_SLOTS {
            let active = match self.cd.token_handle().status(id) {
                Ok(CryptTokenInfo::Inactive | CryptTokenInfo::Invalid) => false,
                Ok(_) => true,
                Err(e) => return Err(op_err(&path, "reading the token status", e)),
            };
            if active {
                let json = self
                    .cd
                    .token_handle()
                    .json_get(id)
                    .map_err(|e| op_err(&path, "reading a token", e))?;
                out.push((id, json));
            }
        }
        Ok(out)
    }

    /// Writes a token: a new one (`id` `None`, returns the id chosen) or a
    /// replacement. libcryptsetup checks the JSON's `type` and `keyslots`.
    /// Raw: callers validate our own token format before writing.
    pub fn set_token(&mut self, id: Option<u32>, json: &Value) -> Result<u32, LuksError> {
        let path = self.path.clone();
        let input = match id {
            Some(id) => TokenInput::ReplaceToken(id, json),
            None => TokenInput::AddToken(json),
        };
        self.cd
            .token_handle()
            .json_set(input)
            .map_err(|e| op_err(&path, "writing a token", e))
    }

    /// Removes token `id`.
    pub fn remove_token(&mut self, id: u32) -> Result<(), LuksError> {
        let path = self.path.clone();
        self.cd
            .token_handle()
            .json_set(TokenInput::RemoveToken(id))
            .map(|_| ())
            .map_err(|e| op_err(&path, "removing a token", e))
    }

    /// Saves the header and keyslot areas to `file` (which must not exist).
    pub fn header_backup(&mut self, file: &Path) -> Result<(), LuksError> {
        let path = self.path.clone();
        self.cd
            .backup_handle()
            .header_backup(Some(EncryptionFormat::Luks2), file)
            .map_err(|e| op_err(&path, "backing up the header", e))
    }

    /// Writes back a header saved by [`Device::header_backup`] and reloads it.
    pub fn header_restore(&mut self, file: &Path) -> Result<(), LuksError> {
        let path = self.path.clone();
        self.cd
            .backup_handle()
            .header_restore(Some(EncryptionFormat::Luks2), file)
            .map_err(|e| op_err(&path, "restoring the header backup", e))?;
        self.cd
            .context_handle()
            .load::<CryptParamsLuks2Ref<'_>>(Some(EncryptionFormat::Luks2), None)
            .map_err(|e| op_err(&path, "reloading the restored header", e))
    }
}

/// Whether a device-mapper device `name` exists (e.g. already unlocked).
pub fn mapping_active(name: &str) -> bool {
    log::install();
    matches!(
        libcryptsetup_rs::status(None, name),
        Ok(CryptStatusInfo::Active | CryptStatusInfo::Busy)
    )
}

/// Activation options, from crypttab.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ActivateFlags {
    /// `readonly` / `read-only`.
    pub read_only: bool,
    /// `discard`.
    pub allow_discards: bool,
    /// `same-cpu-crypt`.
    pub same_cpu_crypt: bool,
    /// `submit-from-crypt-cpus`.
    pub submit_from_crypt_cpus: bool,
    /// `no-read-workqueue`.
    pub no_read_workqueue: bool,
    /// `no-write-workqueue`.
    pub no_write_workqueue: bool,
}

impl ActivateFlags {
    fn to_crypt(self) -> CryptActivate {
        let mut f = CryptActivate::empty();
        for (on, flag) in [
            (self.read_only, CryptActivate::READONLY),
            (self.allow_discards, CryptActivate::ALLOW_DISCARDS),
            (self.same_cpu_crypt, CryptActivate::SAME_CPU_CRYPT),
            (
                self.submit_from_crypt_cpus,
                CryptActivate::SUBMIT_FROM_CRYPT_CPUS,
            ),
            (self.no_read_workqueue, CryptActivate::NO_READ_WORKQUEUE),
            (self.no_write_workqueue, CryptActivate::NO_WRITE_WORKQUEUE),
        ] {
            if on {
                f |= flag;
            }
        }
        f
    }
}

/// The first bytes of a device, saved before `--format` overwrites them so
/// that a failed bind can put them back. Held in a 0600 temporary file.
pub struct RawHeadBackup {
    file: tempfile::NamedTempFile,
    len: u64,
}

/// Bytes saved by [`RawHeadBackup`]: LUKS2's default metadata and keyslot
/// area (the data offset of a default format).
pub const RAW_HEAD_BYTES: u64 = 16 << 20;

impl RawHeadBackup {
    /// Copies the first [`RAW_HEAD_BYTES`] (or the whole device if smaller).
    pub fn save(device: &Path, dir: &Path) -> std::io::Result<Self> {
        let mut src = std::fs::File::open(device)?;
        let size = src.seek(SeekFrom::End(0))?;
        src.seek(SeekFrom::Start(0))?;
        let len = size.min(RAW_HEAD_BYTES);
        let mut file = tempfile::NamedTempFile::new_in(dir)?;
        let copied = std::io::copy(&mut (&mut src).take(len), file.as_file_mut())?;
        if copied != len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the device ended early",
            ));
        }
        file.as_file_mut().sync_all()?;
        Ok(Self { file, len })
    }

    /// Writes the saved bytes back to the start of `device`.
    pub fn restore(&mut self, device: &Path) -> std::io::Result<()> {
        let mut dst = std::fs::OpenOptions::new().write(true).open(device)?;
        let src = self.file.as_file_mut();
        src.seek(SeekFrom::Start(0))?;
        let copied = std::io::copy(&mut src.take(self.len), &mut dst)?;
        if copied != self.len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the backup is short",
            ));
        }
        dst.flush()?;
        dst.sync_all()
    }
}
