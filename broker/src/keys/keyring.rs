//! The broker's keyring: the master key file and, during a master key
//! rotation, the next one.
//!
//! Files, for `keys.master_key = K`:
//!
//! | file | holds | present |
//! | --- | --- | --- |
//! | `K` | the current master key | always |
//! | `K.next` | the key a rotation re-seals to | from the start of a master rotation until its end |
//! | `K.retired-<id hex>` | a former master key | after a rotation; never read by the broker |
//!
//! Every sealed record names the id of its master key, so unsealing picks
//! the key by id. A record under a key this process has not loaded (a
//! rotation started by another process after this one loaded its keys)
//! makes the keyring re-read `K` and `K.next` once before giving up, so a
//! running broker keeps releasing keys while another process re-seals.
//!
//! **Crash safety of the file changes** (the argument in full is in
//! `docs/operations.md`, "Rotating the master key"): the rotation only ever
//! (1) creates `K.next` with `O_EXCL` and fsyncs it, (2) re-seals records
//! from `K`'s key to `K.next`'s key in committed transactions, (3) once no
//! record is under `K`'s key and the store is durable, hard-links `K` to
//! `K.retired-<id>`, and (4) renames `K.next` over `K`. Links and renames are
//! atomic. Before (4) `K` and `K.next` both exist and between them hold
//! every key a record can name; after (4) `K` holds the only key any record
//! names. So at every instant the files that [`Keyring::load`] reads can
//! unseal every record.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use super::{seal, unseal, KeyError, MasterKey, MasterKeyId, SealedKey, VolumeKey};

/// The current master key, the next one during a rotation, and the paths
/// they came from.
pub struct Keyring {
    path: Option<PathBuf>,
    state: RwLock<State>,
}

struct State {
    current: Arc<MasterKey>,
    next: Option<Arc<MasterKey>>,
    /// Every key loaded in this process, by id (current, next, and a
    /// former current key until the process forgets it).
    by_id: HashMap<MasterKeyId, Arc<MasterKey>>,
}

impl State {
    fn new(current: MasterKey, next: Option<MasterKey>) -> State {
        let current = Arc::new(current);
        let next = next.map(Arc::new);
        let mut by_id = HashMap::new();
        by_id.insert(current.id(), current.clone());
        if let Some(n) = &next {
            by_id.insert(n.id(), n.clone());
        }
        State {
            current,
            next,
            by_id,
        }
    }
}

/// `K.next` for a master key file `K`.
pub fn next_path(master_key: &Path) -> PathBuf {
    let mut s = master_key.as_os_str().to_owned();
    s.push(".next");
    PathBuf::from(s)
}

/// `K.retired-<id hex>` for a master key file `K` and a retired key's id.
pub fn retired_path(master_key: &Path, id: MasterKeyId) -> PathBuf {
    let mut s = master_key.as_os_str().to_owned();
    s.push(format!(".retired-{}", id.to_hex()));
    PathBuf::from(s)
}

fn sync_dir(path: &Path) -> Result<(), KeyError> {
    let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(d) => d.to_owned(),
        None => PathBuf::from("."),
    };
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| KeyError::Io { path: dir, source })
}

fn load_optional(path: &Path) -> Result<Option<MasterKey>, KeyError> {
    match MasterKey::load(path) {
        Ok(k) => Ok(Some(k)),
        Err(KeyError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

impl Keyring {
    /// Loads `K` (required) and `K.next` (if a master rotation is under way).
    pub fn load(master_key: &Path) -> Result<Keyring, KeyError> {
        let current = MasterKey::load(master_key)?;
        let next = load_optional(&next_path(master_key))?;
        if next.as_ref().is_some_and(|n| n.id() == current.id()) {
            // The rename of step 4 happened but a stale hard link remained:
            // impossible with rename(2), but harmless; treat as finished.
            return Ok(Keyring {
                path: Some(master_key.to_owned()),
                state: RwLock::new(State::new(current, None)),
            });
        }
        Ok(Keyring {
            path: Some(master_key.to_owned()),
            state: RwLock::new(State::new(current, next)),
        })
    }

    /// A keyring of one in-memory key and no files (tests, tools).
    pub fn from_key(current: MasterKey) -> Keyring {
        Keyring {
            path: None,
            state: RwLock::new(State::new(current, None)),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The master key file `K`, if this keyring was loaded from one.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Id of the key in `K`.
    pub fn current_id(&self) -> MasterKeyId {
        self.read().current.id()
    }

    /// Id of the key in `K.next`, while a master rotation is under way.
    pub fn next_id(&self) -> Option<MasterKeyId> {
        self.read().next.as_ref().map(|k| k.id())
    }

    /// Every key this process holds, the current one first (checking a MAC
    /// made under any of them: a nonce issued just before a master rotation
    /// finished still verifies).
    pub fn all_keys(&self) -> Vec<Arc<MasterKey>> {
        let s = self.read();
        let mut out = vec![s.current.clone()];
        out.extend(
            s.by_id
                .values()
                .filter(|k| k.id() != s.current.id())
                .cloned(),
        );
        out
    }

    /// The key in `K` (what challenge nonces are issued under).
    pub fn current_key(&self) -> Arc<MasterKey> {
        self.read().current.clone()
    }

    /// Whether this keyring holds the key with this id.
    pub fn has(&self, id: MasterKeyId) -> bool {
        self.read().by_id.contains_key(&id)
    }

    /// The loaded key with this id, if any (master rotation keeps the old
    /// key in hand across the file swap).
    pub fn key(&self, id: MasterKeyId) -> Option<Arc<MasterKey>> {
        self.read().by_id.get(&id).cloned()
    }

    /// The key new records are sealed under: `K.next` during a rotation (so
    /// they need no re-sealing), `K` otherwise.
    pub fn sealing_key(&self) -> Arc<MasterKey> {
        let s = self.read();
        s.next.clone().unwrap_or_else(|| s.current.clone())
    }

    /// Seals a volume key under [`Keyring::sealing_key`].
    pub fn seal(&self, volume: &str, version: u32, key: &VolumeKey) -> Result<SealedKey, KeyError> {
        seal(&self.sealing_key(), volume, version, key)
    }

    /// Unseals a record with the key its master key id names, re-reading the
    /// key files once if this process does not hold that key yet.
    pub fn unseal(
        &self,
        volume: &str,
        version: u32,
        sealed: &SealedKey,
    ) -> Result<VolumeKey, KeyError> {
        let key = self.read().by_id.get(&sealed.master_key_id).cloned();
        let key = match key {
            Some(k) => k,
            None => {
                self.refresh()?;
                let s = self.read();
                match s.by_id.get(&sealed.master_key_id) {
                    Some(k) => k.clone(),
                    None => {
                        return Err(KeyError::WrongMasterKey {
                            sealed_with: sealed.master_key_id,
                            loaded: s.current.id(),
                        })
                    }
                }
            }
        };
        unseal(&key, volume, version, sealed)
    }

    /// Re-reads `K` and `K.next` and adds any key not held yet (keys already
    /// held stay, so records re-sealed a moment ago and records not yet
    /// re-sealed both open).
    pub fn refresh(&self) -> Result<(), KeyError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let current = MasterKey::load(path)?;
        let next = load_optional(&next_path(path))?;
        let mut s = self.write();
        let current = s
            .by_id
            .entry(current.id())
            .or_insert_with(|| Arc::new(current))
            .clone();
        s.current = current;
        s.next = match next {
            Some(n) if n.id() != s.current.id() => {
                Some(s.by_id.entry(n.id()).or_insert_with(|| Arc::new(n)).clone())
            }
            _ => None,
        };
        Ok(())
    }

    /// Step 1 of a master rotation: creates `K.next` (`O_EXCL`, mode 0600,
    /// fsynced with its directory) or, if a crashed run left one, loads it,
    /// so a rotation resumes with the same next key. Returns its id.
    pub fn begin_rotation(&self) -> Result<MasterKeyId, KeyError> {
        if let Some(id) = self.next_id() {
            return Ok(id);
        }
        let next = match &self.path {
            None => MasterKey::generate()?,
            Some(path) => {
                let np = next_path(path);
                match MasterKey::generate_to_file(&np) {
                    Ok(k) => {
                        sync_dir(&np)?;
                        k
                    }
                    Err(KeyError::AlreadyExists { .. }) => MasterKey::load(&np)?,
                    Err(e) => return Err(e),
                }
            }
        };
        let id = next.id();
        let mut s = self.write();
        let next = Arc::new(next);
        s.by_id.insert(id, next.clone());
        s.next = Some(next);
        Ok(id)
    }

    /// Steps 3 and 4 of a master rotation, to be called only once no record
    /// is sealed under the current key and the store is durable: hard-links
    /// `K` to `K.retired-<old id>` (same inode, so mode 0600), renames
    /// `K.next` over `K`, fsyncing the directory after each. Both steps are
    /// idempotent, so a crash anywhere here is finished by running it again.
    ///
    /// `after_link` runs between the two steps (a crash-test hook).
    pub fn finish_rotation(&self, after_link: &dyn Fn()) -> Result<RetiredKey, KeyError> {
        let (old, next) = {
            let s = self.read();
            match &s.next {
                Some(n) => (s.current.clone(), n.clone()),
                None => {
                    return Err(KeyError::Malformed {
                        what: "no master key rotation is under way".into(),
                    })
                }
            }
        };
        let retired_file = match &self.path {
            None => None,
            Some(path) => {
                let retired = retired_path(path, old.id());
                match std::fs::hard_link(path, &retired) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        // A previous run linked it; make sure it is that key.
                        let there = MasterKey::load(&retired)?;
                        if there.id() != old.id() {
                            return Err(KeyError::Malformed {
                                what: format!(
                                    "{} exists but holds master key {}, not {}",
                                    retired.display(),
                                    there.id(),
                                    old.id()
                                ),
                            });
                        }
                    }
                    Err(source) => {
                        return Err(KeyError::Io {
                            path: retired,
                            source,
                        })
                    }
                }
                sync_dir(path)?;
                after_link();
                let np = next_path(path);
                std::fs::rename(&np, path).map_err(|source| KeyError::Io {
                    path: np.clone(),
                    source,
                })?;
                sync_dir(path)?;
                Some(retired)
            }
        };
        let mut s = self.write();
        s.by_id.remove(&old.id());
        s.current = next;
        s.next = None;
        Ok(RetiredKey {
            id: old.id(),
            file: retired_file,
        })
    }
}

/// The outcome of [`Keyring::finish_rotation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetiredKey {
    /// Id of the former current key.
    pub id: MasterKeyId,
    /// Where it now lives (`K.retired-<id>`), for a file-backed keyring.
    pub file: Option<PathBuf>,
}
