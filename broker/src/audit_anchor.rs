//! The audit chain's anchor outside the database: a checkpoint file beside
//! the master key (`<master_key>.audit-checkpoint`, mode 0600) holding the
//! id and hash of the newest audit entry the broker has seen, with an
//! HMAC under a key derived from the master key ([`Purpose::AuditChain`]).
//!
//! The chain in the database is keyed (`store/audit_hash.rs`): without the
//! master key nobody can change or recompute an entry unnoticed. What the
//! chain cannot show by itself is entries removed from its end with the
//! head row fixed up; the checkpoint shows it, since it cannot be written
//! without the master key's directory. So:
//!
//! - entries removed from the end (truncation, with the head row fixed up):
//!   the checkpoint's id is missing;
//! - an entry at or before the checkpoint replaced (say, by the entries of
//!   an older copy of the database): the entry at the checkpoint's id no
//!   longer has the checkpoint's hash.
//!
//! The broker updates the checkpoint once a second from store upkeep, so
//! what a database writer can still change undetected is the last second
//! of entries. `broker audit verify` compares, and `broker serve` refuses
//! to start on a database that does not match its checkpoint.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use aws_lc_rs::hmac;

use crate::keys::derived::{hmac_key, Purpose};
use crate::keys::{Keyring, MasterKey};
use crate::store::{AuditFilter, Store, StoreError};

const LABEL: &[u8] = b"keybroker/audit-checkpoint/v1";

/// The newest audit entry the broker vouches for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// Its id.
    pub id: i64,
    /// Its chain hash.
    pub hash: [u8; 32],
}

/// What is wrong with the checkpoint or the chain against it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AnchorError {
    /// The file cannot be read or written.
    #[error("audit checkpoint {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a checkpoint this broker's master key made.
    #[error("audit checkpoint {} is malformed or was not written with this master key; restore it from backup or move it aside (the audit log is then anchored anew from its current state)", path.display())]
    Forged {
        /// The file.
        path: PathBuf,
    },
    /// The database disagrees with the checkpoint.
    #[error("the audit log does not match its checkpoint {}: {what}; the database was changed outside the broker. Keep a copy for investigation and compare it with your backups; to serve anyway, move the checkpoint file aside", path.display())]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// What differs.
        what: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The checkpoint file of the master key file `master_key`.
pub fn checkpoint_path(master_key: &Path) -> PathBuf {
    let mut s = master_key.as_os_str().to_owned();
    s.push(".audit-checkpoint");
    PathBuf::from(s)
}

fn mac(keyring: &Keyring, c: &Checkpoint) -> Result<Vec<[u8; 32]>, AnchorError> {
    keyring.all_keys().iter().map(|k| mac_under(k, c)).collect()
}

fn mac_under(k: &MasterKey, c: &Checkpoint) -> Result<[u8; 32], AnchorError> {
    let key = hmac_key(k, Purpose::AuditChain).map_err(|e| {
        AnchorError::Store(StoreError::Backend(format!("deriving the audit key: {e}")))
    })?;
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(LABEL);
    ctx.update(&c.id.to_be_bytes());
    ctx.update(&c.hash);
    let mut t = [0u8; 32];
    t.copy_from_slice(ctx.sign().as_ref());
    Ok(t)
}

/// MACs of `c` under the retired keys kept beside the master key file
/// (`K.retired-<id>`): a broker that stopped right after a master rotation,
/// before upkeep rewrote the checkpoint under the new key, finds it made
/// under the key it just retired.
fn retired_macs(keyring: &Keyring, c: &Checkpoint) -> Vec<[u8; 32]> {
    let Some(k) = keyring.path() else {
        return Vec::new();
    };
    let (Some(dir), Some(name)) = (k.parent(), k.file_name()) else {
        return Vec::new();
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let mut prefix = name.to_owned();
    prefix.push(".retired-");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .as_encoded_bytes()
                .starts_with(prefix.as_encoded_bytes())
        })
        .filter_map(|e| MasterKey::load(&e.path()).ok())
        .filter_map(|key| mac_under(&key, c).ok())
        .collect()
}

/// Reads the checkpoint, if there is one, checking its MAC.
pub fn read(keyring: &Keyring, path: &Path) -> Result<Option<Checkpoint>, AnchorError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(AnchorError::Io {
                path: path.to_owned(),
                source,
            })
        }
    };
    let forged = || AnchorError::Forged {
        path: path.to_owned(),
    };
    let mut parts = text.split_whitespace();
    let (Some("v1"), Some(id), Some(hash), Some(tag), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(forged());
    };
    let id: i64 = id.parse().map_err(|_| forged())?;
    let mut h = [0u8; 32];
    hex::decode_to_slice(hash, &mut h).map_err(|_| forged())?;
    let mut t = [0u8; 32];
    hex::decode_to_slice(tag, &mut t).map_err(|_| forged())?;
    let c = Checkpoint { id, hash: h };
    let matches = |macs: &[[u8; 32]]| {
        macs.iter()
            .any(|m| bool::from(subtle::ConstantTimeEq::ct_eq(&m[..], &t[..])))
    };
    let ok = matches(&mac(keyring, &c)?) || matches(&retired_macs(keyring, &c));
    if !ok {
        return Err(forged());
    }
    Ok(Some(c))
}

/// Writes the checkpoint (a new file renamed over the old one, 0600).
pub fn write(keyring: &Keyring, path: &Path, c: &Checkpoint) -> Result<(), AnchorError> {
    let io = |source| AnchorError::Io {
        path: path.to_owned(),
        source,
    };
    let tag = mac(keyring, c)?[0];
    let tmp = {
        let mut s = path.as_os_str().to_owned();
        s.push(".tmp");
        PathBuf::from(s)
    };
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    writeln!(
        f,
        "v1 {} {} {}",
        c.id,
        hex::encode(c.hash),
        hex::encode(tag)
    )
    .and_then(|()| f.sync_all())
    .map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// The newest entry at or after `from` (paging, so memory stays bounded).
pub fn newest(
    store: &dyn Store,
    from: Option<Checkpoint>,
) -> Result<Option<Checkpoint>, StoreError> {
    let mut last = from;
    loop {
        let page = store.audit_entries(&AuditFilter {
            after_id: Some(last.map_or(0, |c| c.id)),
            limit: Some(1000),
            ..Default::default()
        })?;
        match page.last() {
            Some(e) => {
                last = Some(Checkpoint {
                    id: e.id.0,
                    hash: e.hash,
                })
            }
            None => return Ok(last),
        }
        if page.len() < 1000 {
            return Ok(last);
        }
    }
}

/// Checks the database against the checkpoint: the entry at its id must
/// exist with its hash, unless `broker audit prune` removed it (the chain
/// then starts after it, at an anchor MAC'd under the chain key, which
/// verification checks).
pub fn check(store: &dyn Store, path: &Path, c: &Checkpoint) -> Result<(), AnchorError> {
    if store
        .audit_prune_anchor()?
        .is_some_and(|a| c.id < a.first_id)
    {
        return Ok(());
    }
    let at = store.audit_entries(&AuditFilter {
        after_id: Some(c.id - 1),
        limit: Some(1),
        ..Default::default()
    })?;
    let mismatch = |what: String| AnchorError::Mismatch {
        path: path.to_owned(),
        what,
    };
    match at.first() {
        Some(e) if e.id.0 == c.id && e.hash == c.hash => Ok(()),
        Some(e) if e.id.0 == c.id => Err(mismatch(format!(
            "entry {} has another hash than the checkpoint recorded (it, or an entry before it, was changed and the chain recomputed)",
            c.id
        ))),
        _ => Err(mismatch(format!(
            "entry {} is missing (entries at the end were removed)",
            c.id
        ))),
    }
}

/// What the broker last wrote to the checkpoint file, and under which
/// master key.
#[derive(Debug, Default)]
pub struct AnchorState {
    /// The checkpoint written (or read at start).
    pub known: Option<Checkpoint>,
    /// The master key its MAC was made under (`None`: not written by this
    /// process yet).
    pub written_with: Option<crate::keys::MasterKeyId>,
}

/// Moves the checkpoint forward to the newest entry, and rewrites it after
/// a master key rotation (store upkeep).
pub fn advance(
    store: &dyn Store,
    keyring: &Keyring,
    path: &Path,
    state: &mut AnchorState,
) -> Result<(), AnchorError> {
    let newest = newest(store, state.known)?;
    let key = keyring.current_id();
    if newest != state.known || state.written_with != Some(key) {
        if let Some(c) = &newest {
            write(keyring, path, c)?;
            state.written_with = Some(key);
        }
        state.known = newest;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_made_under_the_key_just_retired_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("master.key");
        let old = MasterKey::generate_to_file(&k).unwrap();
        let c = Checkpoint {
            id: 7,
            hash: [3; 32],
        };
        let cp = checkpoint_path(&k);
        write(&Keyring::load(&k).unwrap(), &cp, &c).unwrap();
        // A master rotation: the old key is kept as K.retired-<id>, a new
        // one replaces K; the broker restarts before upkeep rewrote the
        // checkpoint.
        let retired = crate::keys::retired_path(&k, old.id());
        std::fs::rename(&k, &retired).unwrap();
        MasterKey::generate_to_file(&k).unwrap();
        let now = Keyring::load(&k).unwrap();
        let got = read(&now, &cp).unwrap().unwrap();
        assert_eq!((got.id, got.hash), (7, [3; 32]));
        // Without the retired key nothing vouches for it.
        std::fs::remove_file(&retired).unwrap();
        assert!(matches!(read(&now, &cp), Err(AnchorError::Forged { .. })));
    }
}
