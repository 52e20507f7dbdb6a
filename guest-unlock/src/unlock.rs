//! `guest-unlock unlock`: find LUKS2 devices bound to a broker, attest once
//! per distinct broker list for all their volumes, open each device with
//! its released key, zeroize.
//!
//! The steps are separate functions so that each is testable without
//! device-mapper: [`parse_crypttab`] and [`crypttab_entry_for`] (names and
//! options), [`scan_block_devices`] (`--all`), [`probe`] (is this a LUKS2
//! device with a `sev-keybroker` token?), [`group_targets`] (one
//! attestation per broker list and per [`MAX_VOLUMES`] volumes), and
//! [`unlock_targets`], which takes the
//! attestation as a function and can check keyslots instead of activating
//! (`--dry-run`).

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use keybroker_proto::pb::KeyState;
use keybroker_proto::{VolumeId, VolumeIds, MAX_VOLUMES};

use keybroker_proto::SpkiPin;

use crate::config::BrokerUrl;
use crate::flow::{FetchOutcome, UnlockError, UnreachableCause, UnwrappedKey};
use crate::luks::{mapping_active, read_tokens, ActivateFlags, BindError, Device, LuksError};
use crate::rotation::{
    cleanup, enroll, pending_key, Confirmer, Enrolled, NotConfirmed, Opened, RotationError,
    RotationStep, StepDone,
};
use crate::token::BrokerToken;

/// Default crypttab (initramfs-tools keeps its copy at `/cryptroot/crypttab`).
pub const DEFAULT_CRYPTTAB: &str = "/etc/crypttab";
/// Where `--all` looks for block devices.
pub const SYS_CLASS_BLOCK: &str = "/sys/class/block";

// ---------------------------------------------------------------- crypttab

/// The device column of a crypttab line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSpec {
    /// `UUID=…`: the LUKS UUID.
    Uuid(String),
    /// `PARTUUID=…`.
    PartUuid(String),
    /// `LABEL=…`.
    Label(String),
    /// `PARTLABEL=…`.
    PartLabel(String),
    /// An absolute path, `/dev/…`.
    Path(PathBuf),
}

/// One crypttab line: `name device [keyfile [options]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrypttabEntry {
    /// 1-based line number.
    pub line: usize,
    /// The mapping name.
    pub name: String,
    /// The device.
    pub device: DeviceSpec,
    /// The key file column (`none` or `-` when absent), unused here.
    pub keyfile: String,
    /// Options, comma-separated in the file.
    pub options: Vec<String>,
}

/// A crypttab line that could not be used (it is skipped, with a warning).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("crypttab line {line}: {reason}")]
pub struct CrypttabLineError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

/// Whether `s` can name a device-mapper device.
pub fn valid_mapping_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() < 128
        && s != "."
        && s != ".."
        && s.bytes().all(|b| b.is_ascii_graphic() && b != b'/')
}

/// Parses crypttab text. Lines that cannot be used are returned as errors
/// beside the good entries, so one bad line does not block the others.
pub fn parse_crypttab(text: &str) -> (Vec<CrypttabEntry>, Vec<CrypttabLineError>) {
    let mut entries = Vec::new();
    let mut errors = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = l.split_whitespace().collect();
        let bad = |reason: String| CrypttabLineError { line, reason };
        if fields.len() < 2 {
            errors.push(bad("expected `name device [keyfile [options]]`".into()));
            continue;
        }
        if fields.len() > 4 {
            errors.push(bad(format!(
                "{} fields, at most 4 (`name device keyfile options`; options are comma-separated without spaces)",
                fields.len()
            )));
            continue;
        }
        let name = fields[0];
        if !valid_mapping_name(name) {
            errors.push(bad(format!(
                "{:?} is not a usable mapping name",
                crate::flow::printable(name)
            )));
            continue;
        }
        let dev = fields[1];
        let spec = if let Some(v) = dev.strip_prefix("UUID=") {
            Some(DeviceSpec::Uuid(v.to_ascii_lowercase()))
        } else if let Some(v) = dev.strip_prefix("PARTUUID=") {
            Some(DeviceSpec::PartUuid(v.to_ascii_lowercase()))
        } else if let Some(v) = dev.strip_prefix("LABEL=") {
            Some(DeviceSpec::Label(v.to_owned()))
        } else if let Some(v) = dev.strip_prefix("PARTLABEL=") {
            Some(DeviceSpec::PartLabel(v.to_owned()))
        } else if dev.starts_with('/') {
            Some(DeviceSpec::Path(PathBuf::from(dev)))
        } else {
            None
        };
        let spec = match spec {
            Some(
                DeviceSpec::Uuid(v)
                | DeviceSpec::PartUuid(v)
                | DeviceSpec::Label(v)
                | DeviceSpec::PartLabel(v),
            ) if v.is_empty() || v.contains('/') => {
                errors.push(bad(format!(
                    "device {:?}: empty or invalid value",
                    crate::flow::printable(dev)
                )));
                continue;
            }
            Some(s) => s,
            None => {
                errors.push(bad(format!(
                    "device {:?}: expected UUID=…, PARTUUID=…, LABEL=…, PARTLABEL=… or /dev/…",
                    crate::flow::printable(dev)
                )));
                continue;
            }
        };
        let options = fields
            .get(3)
            .map(|o| {
                o.split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        entries.push(CrypttabEntry {
            line,
            name: name.to_owned(),
            device: spec,
            keyfile: fields.get(2).unwrap_or(&"none").to_string(),
            options,
        });
    }
    (entries, errors)
}

/// The activation flags a crypttab entry's options ask for (unknown options
/// are ignored: they concern other tools).
pub fn activate_flags(options: &[String]) -> ActivateFlags {
    let mut f = ActivateFlags::default();
    for o in options {
        match o.as_str() {
            "readonly" | "read-only" => f.read_only = true,
            "discard" => f.allow_discards = true,
            "same-cpu-crypt" => f.same_cpu_crypt = true,
            "submit-from-crypt-cpus" => f.submit_from_crypt_cpus = true,
            "no-read-workqueue" => f.no_read_workqueue = true,
            "no-write-workqueue" => f.no_write_workqueue = true,
            _ => {}
        }
    }
    f
}

/// What is known of a candidate device for crypttab matching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceIdentity {
    /// The canonical path (symlinks resolved).
    pub canonical: PathBuf,
    /// The LUKS UUID, lower case.
    pub luks_uuid: String,
}

/// The crypttab entry for a device: `UUID=` compares with the LUKS UUID;
/// other forms are resolved by `resolve` (to a canonical path) and compared
/// with the device's canonical path. The first matching line wins.
pub fn crypttab_entry_for<'a>(
    entries: &'a [CrypttabEntry],
    dev: &DeviceIdentity,
    resolve: &dyn Fn(&DeviceSpec) -> Option<PathBuf>,
) -> Option<&'a CrypttabEntry> {
    entries.iter().find(|e| match &e.device {
        DeviceSpec::Uuid(u) => u.eq_ignore_ascii_case(&dev.luks_uuid),
        other => resolve(other).is_some_and(|p| p == dev.canonical),
    })
}

/// Resolves a device spec through `/dev/disk/by-*` symlinks (what udev
/// makes) or, for a path, by canonicalising it.
pub fn resolve_spec(spec: &DeviceSpec) -> Option<PathBuf> {
    let link = match spec {
        DeviceSpec::Path(p) => p.clone(),
        DeviceSpec::Uuid(u) => Path::new("/dev/disk/by-uuid").join(u),
        DeviceSpec::PartUuid(u) => Path::new("/dev/disk/by-partuuid").join(u),
        DeviceSpec::Label(l) => Path::new("/dev/disk/by-label").join(l),
        DeviceSpec::PartLabel(l) => Path::new("/dev/disk/by-partlabel").join(l),
    };
    std::fs::canonicalize(link).ok()
}

/// Why a command-line item names no device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceLookupError {
    /// Neither a path nor a crypttab name.
    #[error("{name:?} is neither a device path nor a crypttab name")]
    Unknown {
        /// The item (control characters escaped).
        name: String,
    },
    /// A crypttab name whose device does not exist (yet).
    #[error("crypttab line {line} ({name}): its device was not found")]
    NotFound {
        /// The crypttab line.
        line: usize,
        /// Its mapping name.
        name: String,
    },
}

/// The device a command-line item names: a path (it contains `/`), else
/// the name of a crypttab entry, whose device is resolved with `resolve`,
/// else an existing file of that name.
pub fn device_for(
    item: &std::ffi::OsStr,
    crypttab: &[CrypttabEntry],
    resolve: &dyn Fn(&DeviceSpec) -> Option<PathBuf>,
) -> Result<PathBuf, DeviceLookupError> {
    let text = item.to_string_lossy();
    if text.contains('/') {
        return Ok(PathBuf::from(item));
    }
    if !crypttab.iter().any(|e| e.name == text) && Path::new(item).exists() {
        return Ok(PathBuf::from(item));
    }
    let entry =
        crypttab
            .iter()
            .find(|e| e.name == text)
            .ok_or_else(|| DeviceLookupError::Unknown {
                name: crate::flow::printable(&text),
            })?;
    resolve(&entry.device).ok_or_else(|| DeviceLookupError::NotFound {
        line: entry.line,
        name: entry.name.clone(),
    })
}

// ---------------------------------------------------------------- discovery

/// Block devices under `sys_class_block` (normally `/sys/class/block`), as
/// `/dev/NAME`, sorted, skipping those of size 0 (empty loop devices,
/// absent media).
pub fn scan_block_devices(sys_class_block: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(sys_class_block) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = rd
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let size = std::fs::read_to_string(e.path().join("size")).ok()?;
            let sectors: u64 = size.trim().parse().ok()?;
            (sectors > 0 && !name.contains('/')).then(|| Path::new("/dev").join(name))
        })
        .collect();
    out.sort();
    out
}

/// A device to unlock: its header's bindings and where to map it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The device path.
    pub device: PathBuf,
    /// LUKS UUID.
    pub uuid: String,
    /// Its `sev-keybroker` tokens (id, token), validated.
    pub tokens: Vec<(u32, BrokerToken)>,
    /// The mapping name (set by [`name_targets`]).
    pub name: String,
    /// Activation flags (from crypttab).
    pub flags: ActivateFlags,
}

impl Target {
    /// The volume names of its tokens, comma-separated (for messages).
    pub fn volumes(&self) -> String {
        let mut v: Vec<&str> = self.tokens.iter().map(|(_, t)| t.volume.as_str()).collect();
        v.dedup();
        if v.is_empty() {
            "?".into()
        } else {
            v.join(",")
        }
    }
}

/// What probing a device found.
#[derive(Debug)]
pub enum Probe {
    /// Not a LUKS2 device (or unreadable).
    NotLuks2(LuksError),
    /// LUKS2 without a `sev-keybroker` token.
    NoToken,
    /// A device with valid tokens.
    Bound(Target),
    /// A `sev-keybroker` token that does not validate, or a header that
    /// cannot be read.
    Invalid(BindError),
}

/// Probes one device.
pub fn probe(path: &Path) -> Probe {
    let mut dev = match Device::open(path) {
        Ok(d) => d,
        Err(e) => return Probe::NotLuks2(e),
    };
    let tokens = match read_tokens(&mut dev) {
        Ok(t) => t,
        Err(e) => return Probe::Invalid(e),
    };
    if tokens.is_empty() {
        return Probe::NoToken;
    }
    let uuid = match dev.uuid() {
        Ok(u) => u,
        Err(e) => return Probe::Invalid(e.into()),
    };
    Probe::Bound(Target {
        device: path.to_owned(),
        uuid,
        tokens,
        name: String::new(),
        flags: ActivateFlags::default(),
    })
}

/// Sets each target's mapping name and flags: `name` when given (one
/// device only), else the matching crypttab entry's, else `luks-<UUID>`.
pub fn name_targets(
    targets: &mut [Target],
    name: Option<&str>,
    crypttab: &[CrypttabEntry],
    resolve: &dyn Fn(&DeviceSpec) -> Option<PathBuf>,
) {
    for t in targets.iter_mut() {
        let id = DeviceIdentity {
            canonical: std::fs::canonicalize(&t.device).unwrap_or_else(|_| t.device.clone()),
            luks_uuid: t.uuid.to_ascii_lowercase(),
        };
        let entry = crypttab_entry_for(crypttab, &id, resolve);
        t.flags = entry
            .map(|e| activate_flags(&e.options))
            .unwrap_or_default();
        t.name = match (name, entry) {
            (Some(n), _) => n.to_owned(),
            (None, Some(e)) => e.name.clone(),
            (None, None) => format!("luks-{}", t.uuid),
        };
    }
}

// ---------------------------------------------------------------- grouping

/// Targets sharing one broker list and pin set, at most [`MAX_VOLUMES`]
/// volumes: one attestation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// Brokers, in token order.
    pub brokers: Vec<BrokerUrl>,
    /// Pins (sorted, deduplicated).
    pub pins: Vec<SpkiPin>,
    /// Distinct volumes to ask for, in first-seen order (1 to
    /// [`MAX_VOLUMES`], what one `Attest` may name).
    pub volumes: Vec<VolumeId>,
}

/// Groups the targets' tokens by (broker list, pin set), so that each
/// distinct broker configuration gets one attestation for all its volumes;
/// a configuration with more than [`MAX_VOLUMES`] volumes (the protocol's
/// limit per `Attest`) gets one attestation per [`MAX_VOLUMES`] of them,
/// in first-seen order, each its own session.
pub fn group_targets(targets: &[Target]) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    for (_, tok) in targets.iter().flat_map(|t| t.tokens.iter()) {
        let mut pins = tok.spki_pins.clone();
        pins.sort_by_key(|p| *p.as_bytes());
        pins.dedup();
        let g = match groups
            .iter_mut()
            .position(|g| g.brokers == tok.brokers && g.pins == pins)
        {
            Some(i) => &mut groups[i],
            None => {
                groups.push(Group {
                    brokers: tok.brokers.clone(),
                    pins,
                    volumes: Vec::new(),
                });
                groups.last_mut().expect("just pushed")
            }
        };
        if !g.volumes.contains(&tok.volume) {
            g.volumes.push(tok.volume.clone());
        }
    }
    groups
        .into_iter()
        .flat_map(|g| {
            g.volumes
                .chunks(MAX_VOLUMES)
                .map(|vs| Group {
                    brokers: g.brokers.clone(),
                    pins: g.pins.clone(),
                    volumes: vs.to_vec(),
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

// ---------------------------------------------------------------- unlocking

/// A device opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unlocked {
    /// The device.
    pub device: PathBuf,
    /// The mapping name.
    pub name: String,
    /// The volume.
    pub volume: String,
    /// The keyslot that opened (None when the mapping already existed).
    pub keyslot: Option<u32>,
    /// The key version used.
    pub key_version: Option<u32>,
    /// The broker's audit decision id of the attestation that released the
    /// key (None when the mapping already existed, or the broker sent none).
    pub decision_id: Option<String>,
}

/// Why a device stays locked, in one stable kebab-case word: the `reason=`
/// of the `event=failed` line (`docs/operations.md`, "Event lines").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureKind {
    /// No broker could be reached (refused, no route, broker faults).
    BrokerUnreachable,
    /// The overall timeout ended the attempt.
    Timeout,
    /// A broker presented a TLS key that no pin matches.
    PinMismatch,
    /// The evidence provider failed.
    Evidence,
    /// The device could not be opened or activated.
    OpenFailed,
    /// Keys were released but none opens a keyslot.
    NoKeyOpens,
    /// The broker released no key for the device's volume, and said nothing else.
    NoKeyReleased,
    /// The device named on the command line was not found.
    NotFound,
    /// Not a LUKS2 device.
    NotLuks2,
    /// A LUKS2 device without a `sev-keybroker` token.
    NoToken,
    /// A `sev-keybroker` token or header that does not validate.
    InvalidToken,
    /// The settings recorded in the token are unusable.
    Config,
    /// The broker speaks another major protocol version.
    VersionMismatch,
    /// The broker rejected the request as malformed.
    Rejected,
    /// The broker's answer breaks the protocol.
    BadResponse,
    /// A released key did not open with this attempt's key.
    KeyDidNotOpen,
    /// The broker failed in a way another attempt may not.
    BrokerFault,
    /// TLS or the attempt's key pair could not be set up.
    Setup,
}

impl FailureKind {
    /// The stable word.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BrokerUnreachable => "broker-unreachable",
            Self::Timeout => "timeout",
            Self::PinMismatch => "pin-mismatch",
            Self::Evidence => "evidence",
            Self::OpenFailed => "open-failed",
            Self::NoKeyOpens => "no-key-opens",
            Self::NoKeyReleased => "no-key-released",
            Self::NotFound => "not-found",
            Self::NotLuks2 => "not-luks2",
            Self::NoToken => "no-token",
            Self::InvalidToken => "invalid-token",
            Self::Config => "config",
            Self::VersionMismatch => "version-mismatch",
            Self::Rejected => "rejected",
            Self::BadResponse => "bad-response",
            Self::KeyDidNotOpen => "key-did-not-open",
            Self::BrokerFault => "broker-fault",
            Self::Setup => "setup",
        }
    }
}

impl From<&UnlockError> for FailureKind {
    fn from(e: &UnlockError) -> Self {
        match e {
            UnlockError::Tls(_) | UnlockError::KeyPair(_) | UnlockError::Runtime(_) => Self::Setup,
            UnlockError::Evidence { .. } | UnlockError::EvidenceMismatch { .. } => Self::Evidence,
            UnlockError::VersionMismatch { .. } => Self::VersionMismatch,
            // A refusal becomes an outcome before it gets here; it is the
            // broker rejecting the request all the same.
            UnlockError::Refused { .. } | UnlockError::Rejected { .. } => Self::Rejected,
            UnlockError::BrokerFault { .. } => Self::BrokerFault,
            UnlockError::BadResponse { .. } => Self::BadResponse,
            UnlockError::KeyDidNotOpen { .. } => Self::KeyDidNotOpen,
            UnlockError::Config(_) => Self::Config,
            UnlockError::Unreachable { cause, .. } => match cause {
                UnreachableCause::PinMismatch => Self::PinMismatch,
                UnreachableCause::Timeout => Self::Timeout,
                UnreachableCause::NoConnection => Self::BrokerUnreachable,
            },
        }
    }
}

/// Why a device stays locked, as data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockCause {
    /// The broker refused the volume.
    Refused {
        /// Its reason codes (`docs/protocol.md`, "Reason codes").
        reason_codes: Vec<String>,
        /// Its audit decision id (empty when it sent none).
        decision_id: String,
    },
    /// No decision could be had, or the released keys did not open it.
    Failed(FailureKind),
}

/// A device that stays locked, with the reason (one line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StillLocked {
    /// The volume(s).
    pub volume: String,
    /// The device.
    pub device: PathBuf,
    /// Why.
    pub reason: String,
    /// Why, as data.
    pub cause: LockCause,
}

impl std::fmt::Display for StillLocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.volume,
            self.device.display(),
            self.reason
        )
    }
}

/// One line about key rotation on an open device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationNote {
    /// The volume.
    pub volume: String,
    /// The device.
    pub device: PathBuf,
    /// Whether the steps went through (else the line is a warning; the
    /// device stays open either way).
    pub ok: bool,
    /// What was done, or what failed and what happens next.
    pub message: String,
}

impl std::fmt::Display for RotationNote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.volume,
            self.device.display(),
            self.message
        )
    }
}

/// The result of [`unlock_targets`].
#[derive(Debug, Default)]
pub struct UnlockReport {
    /// Devices opened (or found already open).
    pub unlocked: Vec<Unlocked>,
    /// Devices still locked.
    pub locked: Vec<StillLocked>,
    /// Key rotation on the opened devices (nothing when none was under way).
    pub rotation: Vec<RotationNote>,
    /// The progress observer stopped the rotation after this step (see
    /// [`Progress::rotation_step`]).
    pub stopped: Option<RotationStep>,
}

/// Whether to activate or only to check that a key opens its keyslot, and
/// whether key rotation follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Create the device-mapper mapping, then do any key rotation.
    Activate,
    /// Check the keyslot only (`--dry-run`; no device-mapper needed); the
    /// header is never changed.
    CheckOnly,
    /// Check the keyslot (the device is open already), then do any key
    /// rotation (`guest-unlock rotate`).
    Rotate,
}

/// What one group's attestation gave: the outcome, and the session in
/// which an enrolled pending key is confirmed.
pub struct Fetched<'a> {
    /// Keys and denials.
    pub outcome: FetchOutcome,
    /// `ConfirmRotation` in the same session (none after a refusal).
    pub confirmer: Option<Box<dyn Confirmer + 'a>>,
}

impl From<FetchOutcome> for Fetched<'_> {
    fn from(outcome: FetchOutcome) -> Self {
        Self {
            outcome,
            confirmer: None,
        }
    }
}

/// The outcome of one group's attestation.
pub type GroupResult<'a> = Result<Fetched<'a>, UnlockError>;

/// What [`unlock_targets`] tells as it goes, before its [`UnlockReport`]:
/// the command line prints event lines from it, so that a step is on the
/// console even if the process dies right after it. Every method does
/// nothing by default; `()` observes nothing.
pub trait Progress {
    /// A device was opened with a released key (or, in [`Mode::Activate`],
    /// found already open: `keyslot` is then `None`).
    fn opened(&mut self, unlocked: &Unlocked) {
        let _ = unlocked;
    }

    /// Key rotation starts on an opened device (it is usable whatever
    /// happens to the rotation).
    fn rotation_starts(&mut self, unlocked: &Unlocked) {
        let _ = unlocked;
    }

    /// A rotation step completed. [`ControlFlow::Break`] stops the rotation
    /// right there, leaving the header exactly as a crash at that point
    /// would (tests); [`UnlockReport::stopped`] then names the step.
    fn rotation_step(&mut self, step: &StepDone) -> ControlFlow<()> {
        let _ = step;
        ControlFlow::Continue(())
    }
}

impl Progress for () {}

/// Attests once per group (through `fetch`), then opens each target with
/// the keys released for its volumes, then (unless [`Mode::CheckOnly`])
/// carries out any key rotation (see [`crate::rotation`]), telling
/// `progress` as it goes. For each volume the current key is tried first,
/// on the keyslots its token records for that version and then on any
/// keyslot; then the other released keys likewise. All keys are zeroized
/// when this returns.
pub fn unlock_targets<'a>(
    targets: &[Target],
    mode: Mode,
    fetch: &mut dyn FnMut(&Group, &VolumeIds) -> GroupResult<'a>,
    progress: &mut dyn Progress,
) -> UnlockReport {
    let mut report = UnlockReport::default();
    // Keys released, each with the index of the group (session) that released it.
    let mut keys: Vec<(usize, UnwrappedKey)> = Vec::new();
    let mut confirmers: Vec<Option<Box<dyn Confirmer + 'a>>> = Vec::new();
    // The broker's decision id per group.
    let mut decisions: Vec<String> = Vec::new();
    let mut reasons: BTreeMap<String, (String, LockCause)> = BTreeMap::new();
    let pending: Vec<&Target> = targets
        .iter()
        .filter(|t| {
            if mode == Mode::Activate && mapping_active(&t.name) {
                let u = Unlocked {
                    device: t.device.clone(),
                    name: t.name.clone(),
                    volume: t.volumes(),
                    keyslot: None,
                    key_version: None,
                    decision_id: None,
                };
                progress.opened(&u);
                report.unlocked.push(u);
                false
            } else {
                true
            }
        })
        .collect();
    let owned: Vec<Target> = pending.iter().map(|t| (*t).clone()).collect();
    for group in group_targets(&owned) {
        let gi = confirmers.len();
        confirmers.push(None);
        decisions.push(String::new());
        let ids = match VolumeIds::new(group.volumes.clone()) {
            Ok(v) => v,
            Err(e) => {
                for v in &group.volumes {
                    reasons.insert(
                        v.to_string(),
                        (
                            format!("cannot ask for the volumes: {e}"),
                            LockCause::Failed(FailureKind::InvalidToken),
                        ),
                    );
                }
                continue;
            }
        };
        match fetch(&group, &ids) {
            Ok(Fetched { outcome, confirmer }) => {
                for d in &outcome.denied {
                    let codes = if d.reason_codes.is_empty() {
                        "UNSPECIFIED".to_owned()
                    } else {
                        d.reason_codes.join(",")
                    };
                    reasons.insert(
                        d.volume.to_string(),
                        (
                            format!("broker {} refused: {codes}", outcome.broker),
                            LockCause::Refused {
                                reason_codes: d.reason_codes.clone(),
                                decision_id: outcome.decision_id.clone(),
                            },
                        ),
                    );
                }
                keys.extend(outcome.keys.into_iter().map(|k| (gi, k)));
                confirmers[gi] = confirmer;
                decisions[gi] = outcome.decision_id;
            }
            Err(e) => {
                let kind = FailureKind::from(&e);
                for v in &group.volumes {
                    reasons.insert(v.to_string(), (e.to_string(), LockCause::Failed(kind)));
                }
            }
        }
    }
    let all_keys: Vec<(&UnwrappedKey, &str)> = keys
        .iter()
        .map(|(gi, k)| (k, decisions[*gi].as_str()))
        .collect();
    let mut opened: Vec<(&Target, Unlocked)> = Vec::new();
    for t in pending {
        match open_target(t, &all_keys, mode) {
            Ok(u) => {
                progress.opened(&u);
                opened.push((t, u));
            }
            Err(why) => {
                let (reason, cause) = why.unwrap_or_else(|| {
                    t.tokens
                        .iter()
                        .find_map(|(_, tok)| reasons.get(tok.volume.as_str()).cloned())
                        .unwrap_or_else(|| {
                            (
                                "no key was released for this volume".into(),
                                LockCause::Failed(FailureKind::NoKeyReleased),
                            )
                        })
                });
                report.locked.push(StillLocked {
                    volume: t.volumes(),
                    device: t.device.clone(),
                    reason,
                    cause,
                });
            }
        }
    }
    if mode != Mode::CheckOnly {
        rotate_opened(&opened, &keys, &mut confirmers, progress, &mut report);
    }
    report.unlocked.extend(opened.into_iter().map(|(_, u)| u));
    // `keys` (Zeroizing) are wiped here.
    drop(keys);
    report
}

/// One opened device whose volume may need rotation work.
struct Work<'t> {
    target: &'t Target,
    volume: VolumeId,
    opened: Opened,
    /// Step 1's result (`None`: not run, or failed).
    enrolled: Option<Enrolled>,
    /// What was done, for the device's line.
    done: Vec<String>,
    /// A failure, for the device's line.
    failed: Option<String>,
}

/// Whether the device needs rotation work: a pending key was released, or
/// its tokens record a keyslot for a version no longer released, hold
/// stale entries, or do not record the keyslot that opened it.
fn needs_rotation(t: &Target, volume: &VolumeId, keys: &[&UnwrappedKey], opened: Opened) -> bool {
    if pending_key(keys).is_some() {
        return true;
    }
    let toks: Vec<&BrokerToken> = t
        .tokens
        .iter()
        .filter(|(_, tok)| &tok.volume == volume)
        .map(|(_, tok)| tok)
        .collect();
    let released = |v: u32| keys.iter().any(|k| k.version == v);
    let recorded = toks
        .iter()
        .any(|tok| tok.version_of(opened.keyslot) == Some(opened.version));
    !recorded
        || toks
            .iter()
            .any(|tok| !tok.stale.is_empty() || tok.slots.iter().any(|e| !released(e.key_version)))
}

/// The three rotation steps over all opened devices: enroll on every device
/// of a volume, confirm once per volume (only when every device of it
/// enrolled), then clean up each device. Failures become warning lines.
fn rotate_opened<'a>(
    opened: &[(&Target, Unlocked)],
    keys: &[(usize, UnwrappedKey)],
    confirmers: &mut [Option<Box<dyn Confirmer + 'a>>],
    progress: &mut dyn Progress,
    report: &mut UnlockReport,
) {
    let volume_keys = |v: &VolumeId| -> Vec<&UnwrappedKey> {
        keys.iter()
            .map(|(_, k)| k)
            .filter(|k| &k.volume == v)
            .collect()
    };
    let mut works: Vec<Work<'_>> = Vec::new();
    for (t, u) in opened {
        let (Some(keyslot), Some(version)) = (u.keyslot, u.key_version) else {
            continue;
        };
        let Ok(volume) = VolumeId::new(u.volume.as_str()) else {
            continue;
        };
        let opened = Opened { keyslot, version };
        if needs_rotation(t, &volume, &volume_keys(&volume), opened) {
            // Told before the rotation steps start: the device is usable
            // whatever happens to them (the final report follows at the end).
            progress.rotation_starts(u);
            works.push(Work {
                target: t,
                volume,
                opened,
                enrolled: None,
                done: Vec::new(),
                failed: None,
            });
        }
    }

    // 1. Enroll.
    for w in works.iter_mut() {
        match enroll(
            &w.target.device,
            &w.volume,
            &volume_keys(&w.volume),
            w.opened,
            &mut |s| progress.rotation_step(s),
        ) {
            Ok(e) => {
                if let (true, Some(p)) = (e.added, e.pending) {
                    w.done.push(format!(
                        "added keyslot {} for pending key version {}",
                        p.keyslot, p.key_version
                    ));
                }
                let recorded: Vec<String> = e
                    .recorded
                    .iter()
                    .filter(|r| !(e.added && Some(**r) == e.pending))
                    .map(|r| format!("keyslot {} (key version {})", r.keyslot, r.key_version))
                    .collect();
                if !recorded.is_empty() {
                    w.done
                        .push(format!("recorded {} in the token", recorded.join(", ")));
                }
                w.enrolled = Some(e);
            }
            Err(RotationError::Stopped(p)) => {
                report.stopped = Some(p);
                return;
            }
            Err(e) => w.failed = Some(format!("key rotation: {e}")),
        }
    }

    // 2. Confirm, once per volume with a pending key.
    let mut confirmed: BTreeMap<VolumeId, u32> = BTreeMap::new();
    let mut volumes: Vec<VolumeId> = works.iter().map(|w| w.volume.clone()).collect();
    volumes.sort();
    volumes.dedup();
    for v in volumes {
        let vkeys = volume_keys(&v);
        let Some(p) = pending_key(&vkeys) else {
            continue;
        };
        let mine = || works.iter().filter(|w| w.volume == v);
        let result = if mine().any(|w| w.enrolled.is_none()) {
            Err(NotConfirmed::EnrollFailed)
        } else {
            let gi = keys
                .iter()
                .find(|(_, k)| k.volume == v && k.version == p.version)
                .map(|(gi, _)| *gi);
            match gi
                .and_then(|gi| confirmers.get_mut(gi))
                .and_then(Option::as_mut)
            {
                Some(c) => c.confirm(p).map_err(NotConfirmed::from),
                None => Err(NotConfirmed::NoSession),
            }
        };
        match result {
            Ok(current) => {
                confirmed.insert(v.clone(), current);
                let mut stop = false;
                for w in works.iter_mut().filter(|w| w.volume == v) {
                    w.done
                        .push(format!("broker confirmed key version {current}"));
                    let step = StepDone {
                        volume: v.clone(),
                        device: w.target.device.clone(),
                        step: RotationStep::Confirmed,
                        key_version: current,
                    };
                    stop |= progress.rotation_step(&step).is_break();
                }
                if stop {
                    report.stopped = Some(RotationStep::Confirmed);
                    return;
                }
            }
            Err(why) => {
                for w in works
                    .iter_mut()
                    .filter(|w| w.volume == v && w.failed.is_none())
                {
                    let slot = w
                        .enrolled
                        .as_ref()
                        .and_then(|e| e.pending)
                        .map(|p| format!(" is in keyslot {}", p.keyslot))
                        .unwrap_or_default();
                    w.failed = Some(format!(
                        "pending key version {}{slot} but was not confirmed: {why}; both keyslots kept, the next unlock tries again",
                        p.version
                    ));
                }
            }
        }
    }

    // 3. Clean up: versions the broker no longer releases.
    for w in works.iter_mut() {
        let Some(e) = &w.enrolled else { continue };
        let vkeys = volume_keys(&w.volume);
        let released: Vec<&UnwrappedKey> = match confirmed.get(&w.volume) {
            Some(c) => vkeys.into_iter().filter(|k| k.version == *c).collect(),
            None => vkeys,
        };
        match cleanup(
            &w.target.device,
            &w.volume,
            &released,
            &e.verified,
            &mut |s| progress.rotation_step(s),
        ) {
            Ok(c) => {
                if !c.removed.is_empty() {
                    let slots: Vec<String> = c
                        .removed
                        .iter()
                        .map(|r| format!("keyslot {} (key version {})", r.keyslot, r.key_version))
                        .collect();
                    w.done.push(format!("removed {}", slots.join(", ")));
                } else if !c.tokens_rewritten.is_empty() || !c.tokens_removed.is_empty() {
                    w.done
                        .push("dropped removed keyslots from the token".to_owned());
                }
            }
            Err(RotationError::Stopped(p)) => {
                report.stopped = Some(p);
                return;
            }
            Err(e) => {
                if w.failed.is_none() {
                    w.failed = Some(format!("key rotation: {e}"));
                }
            }
        }
    }

    for w in works {
        let device = w.target.device.clone();
        let volume = w.volume.to_string();
        if let Some(f) = w.failed {
            let mut message = w.done.join("; ");
            if !message.is_empty() {
                message.push_str("; ");
            }
            message.push_str(&f);
            report.rotation.push(RotationNote {
                volume,
                device,
                ok: false,
                message,
            });
        } else if !w.done.is_empty() {
            report.rotation.push(RotationNote {
                volume,
                device,
                ok: true,
                message: w.done.join("; "),
            });
        }
    }
}

/// Why the released keys did not open a target (the line and the cause).
type OpenFailure = (String, LockCause);

/// Tries the released keys (each with its broker decision id) on the
/// target. `Err(None)`: no key was released for it; `Err(Some(..))`: keys
/// were tried and failed.
fn open_target(
    t: &Target,
    keys: &[(&UnwrappedKey, &str)],
    mode: Mode,
) -> Result<Unlocked, Option<OpenFailure>> {
    let open_failed = |e: &dyn std::fmt::Display| {
        Some((e.to_string(), LockCause::Failed(FailureKind::OpenFailed)))
    };
    // Per volume of its tokens: current keys (newest first), then pending.
    let mut volumes: Vec<&VolumeId> = Vec::new();
    for (_, tok) in &t.tokens {
        if !volumes.contains(&&tok.volume) {
            volumes.push(&tok.volume);
        }
    }
    let mut order: Vec<(&VolumeId, &UnwrappedKey, &str)> = Vec::new();
    for v in volumes {
        let mut ks: Vec<(&UnwrappedKey, &str)> = keys
            .iter()
            .copied()
            .filter(|(k, _)| &k.volume == v)
            .collect();
        ks.sort_by_key(|(k, _)| (k.state != KeyState::Current, std::cmp::Reverse(k.version)));
        order.extend(ks.into_iter().map(|(k, d)| (v, k, d)));
    }
    if order.is_empty() {
        return Err(None);
    }
    let mut dev = Device::open(&t.device).map_err(|e| open_failed(&e))?;
    let mut tried = Vec::new();
    for (volume, k, decision) in order {
        let mut slots: Vec<u32> = Vec::new();
        for (_, tok) in t.tokens.iter().filter(|(_, tok)| &tok.volume == volume) {
            for s in tok.slots_for(k.version) {
                if !slots.contains(&s) {
                    slots.push(s);
                }
            }
        }
        // The recorded keyslots, then any keyslot.
        for slot in slots.into_iter().map(Some).chain(std::iter::once(None)) {
            let r = match mode {
                Mode::Activate => dev.activate(&t.name, slot, k.expose_secret(), t.flags),
                Mode::CheckOnly | Mode::Rotate => dev.check_passphrase(slot, k.expose_secret()),
            };
            match r {
                Ok(s) => {
                    return Ok(Unlocked {
                        device: t.device.clone(),
                        name: t.name.clone(),
                        volume: volume.to_string(),
                        keyslot: Some(s),
                        key_version: Some(k.version),
                        decision_id: (!decision.is_empty()).then(|| decision.to_owned()),
                    })
                }
                Err(LuksError::WrongPassphrase { .. }) => {
                    let state = match k.state {
                        KeyState::Pending => "pending",
                        _ => "current",
                    };
                    tried.push(match slot {
                        Some(s) => format!("v{} ({state}) on keyslot {s}", k.version),
                        None => format!("v{} ({state}) on any keyslot", k.version),
                    });
                }
                Err(e) => return Err(open_failed(&e)),
            }
        }
    }
    Err(Some((
        format!(
            "no released key opens a keyslot (tried {}); rebind with `guest-unlock bind`",
            tried.join(", ")
        ),
        LockCause::Failed(FailureKind::NoKeyOpens),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIN_A: &str = "sha256:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const PIN_B: &str = "sha256:1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100";

    #[test]
    fn crypttab_lines() {
        let text = "\
# comment
   # indented comment

root UUID=ABCDEF01-0000-0000-0000-000000000001 none luks,discard
data\t/dev/vdb\t/etc/key\tluks,readonly
swap PARTUUID=1234-5678
justname
a b c d e
bad/name /dev/vdc
x nodevice
y UUID=
z LABEL=a/b
l LABEL=secret none luks,same-cpu-crypt,,no-read-workqueue
";
        let (entries, errors) = parse_crypttab(text);
        assert_eq!(entries.len(), 4, "{entries:?}");
        assert_eq!(entries[0].name, "root");
        assert_eq!(
            entries[0].device,
            DeviceSpec::Uuid("abcdef01-0000-0000-0000-000000000001".into())
        );
        assert_eq!(entries[0].options, ["luks", "discard"]);
        assert_eq!(entries[1].device, DeviceSpec::Path("/dev/vdb".into()));
        assert_eq!(entries[1].keyfile, "/etc/key");
        assert_eq!(entries[2].device, DeviceSpec::PartUuid("1234-5678".into()));
        assert_eq!(entries[2].keyfile, "none");
        assert!(entries[2].options.is_empty());
        assert_eq!(entries[3].line, 13);
        let f = activate_flags(&entries[3].options);
        assert!(f.same_cpu_crypt && f.no_read_workqueue && !f.read_only);
        assert!(activate_flags(&entries[1].options).read_only);
        assert!(activate_flags(&entries[0].options).allow_discards);
        let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, [7, 8, 9, 10, 11, 12], "{errors:?}");
        assert!(errors[1].to_string().contains("at most 4"));
    }

    #[test]
    fn devices_by_path_or_crypttab_name() {
        let (entries, _) = parse_crypttab("root_crypt UUID=aaaa-1 none luks\n");
        let resolve = |s: &DeviceSpec| match s {
            DeviceSpec::Uuid(u) if u == "aaaa-1" => Some(PathBuf::from("/dev/vda2")),
            _ => None,
        };
        let dev = |s: &str| device_for(std::ffi::OsStr::new(s), &entries, &resolve);
        assert_eq!(dev("/dev/vdb"), Ok(PathBuf::from("/dev/vdb")));
        assert_eq!(dev("root_crypt"), Ok(PathBuf::from("/dev/vda2")));
        assert!(dev("other")
            .unwrap_err()
            .to_string()
            .contains("neither a device path"));
        let (missing, _) = parse_crypttab("data UUID=bbbb none luks\n");
        let e = device_for(std::ffi::OsStr::new("data"), &missing, &resolve).unwrap_err();
        assert!(
            matches!(e, DeviceLookupError::NotFound { line: 1, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("its device was not found"), "{e}");
    }

    #[test]
    fn crypttab_matching() {
        let (entries, _) =
            parse_crypttab("byuuid UUID=AAAA-1\nbypath /dev/disk/x\nbypart PARTUUID=p1\n");
        let resolve = |s: &DeviceSpec| match s {
            DeviceSpec::Path(p) if p == Path::new("/dev/disk/x") => Some(PathBuf::from("/dev/vdb")),
            DeviceSpec::PartUuid(p) if p == "p1" => Some(PathBuf::from("/dev/vdc1")),
            _ => None,
        };
        let id = |c: &str, u: &str| DeviceIdentity {
            canonical: c.into(),
            luks_uuid: u.into(),
        };
        let name =
            |d: &DeviceIdentity| crypttab_entry_for(&entries, d, &resolve).map(|e| e.name.as_str());
        assert_eq!(name(&id("/dev/vda", "aaaa-1")), Some("byuuid"));
        assert_eq!(name(&id("/dev/vdb", "other")), Some("bypath"));
        assert_eq!(name(&id("/dev/vdc1", "other")), Some("bypart"));
        assert_eq!(name(&id("/dev/vdd", "other")), None);
    }

    fn target(dev: &str, uuid: &str, toks: &[(&str, &[&str], &str, u32)]) -> Target {
        Target {
            device: dev.into(),
            uuid: uuid.into(),
            tokens: toks
                .iter()
                .enumerate()
                .map(|(i, (vol, brokers, pin, ver))| {
                    (
                        i as u32,
                        BrokerToken::new(
                            vec![crate::token::SlotVersion {
                                keyslot: i as u32 + 1,
                                key_version: *ver,
                            }],
                            brokers.iter().map(|b| b.parse().unwrap()).collect(),
                            VolumeId::new(*vol).unwrap(),
                            vec![pin.parse().unwrap()],
                        ),
                    )
                })
                .collect(),
            name: String::new(),
            flags: ActivateFlags::default(),
        }
    }

    #[test]
    fn one_attestation_per_broker_list() {
        let ab: &[&str] = &["https://a:1", "https://b:1"];
        let ba: &[&str] = &["https://b:1", "https://a:1"];
        let targets = vec![
            target("/dev/vda", "u1", &[("root", ab, PIN_A, 1)]),
            target(
                "/dev/vdb",
                "u2",
                &[("data", ab, PIN_A, 1), ("data", ab, PIN_A, 2)],
            ),
            target("/dev/vdc", "u3", &[("logs", ba, PIN_A, 1)]),
            target("/dev/vdd", "u4", &[("other", ab, PIN_B, 1)]),
            target("/dev/vde", "u5", &[("root", ab, PIN_A, 1)]),
        ];
        let groups = group_targets(&targets);
        assert_eq!(groups.len(), 3, "{groups:?}");
        let vols: Vec<Vec<&str>> = groups
            .iter()
            .map(|g| g.volumes.iter().map(VolumeId::as_str).collect())
            .collect();
        assert_eq!(vols, [vec!["root", "data"], vec!["logs"], vec!["other"]]);
        assert_eq!(groups[1].brokers[0].host(), "b");
        assert!(group_targets(&[]).is_empty());
    }

    #[test]
    fn more_volumes_than_one_attest_may_name_are_split() {
        let ab: &[&str] = &["https://a:1"];
        let n = 2 * MAX_VOLUMES + 6;
        let names: Vec<String> = (0..n).map(|i| format!("vol{i:03}")).collect();
        let mut targets: Vec<Target> = names
            .iter()
            .enumerate()
            .map(|(i, v)| target(&format!("/dev/x{i}"), "u", &[(v.as_str(), ab, PIN_A, 1)]))
            .collect();
        // A second device of an already seen volume adds nothing; another
        // pin set is grouped apart.
        targets.push(target("/dev/again", "u", &[("vol000", ab, PIN_A, 2)]));
        targets.push(target("/dev/other", "u", &[("other", ab, PIN_B, 1)]));
        let groups = group_targets(&targets);
        let sizes: Vec<usize> = groups.iter().map(|g| g.volumes.len()).collect();
        assert_eq!(sizes, [MAX_VOLUMES, MAX_VOLUMES, 6, 1], "{sizes:?}");
        // Every volume once, in first-seen order, and each group is a valid request.
        let flat: Vec<&str> = groups[..3]
            .iter()
            .flat_map(|g| g.volumes.iter().map(VolumeId::as_str))
            .collect();
        assert_eq!(flat, names.iter().map(String::as_str).collect::<Vec<_>>());
        for g in &groups {
            assert!(VolumeIds::new(g.volumes.clone()).is_ok());
        }
        assert!(groups[..3].iter().all(|g| g.pins == groups[0].pins));
        assert_eq!(groups[3].volumes[0].as_str(), "other");

        // unlock_targets attests once per group, with every volume asked for.
        let mut asked: Vec<usize> = Vec::new();
        let report = unlock_targets(
            &targets,
            Mode::CheckOnly,
            &mut |_, ids| {
                asked.push(ids.as_slice().len());
                Err(UnlockError::Unreachable {
                    timeout: std::time::Duration::from_secs(1),
                    attempts: 1,
                    last_errors: vec!["unreachable".into()],
                    cause: UnreachableCause::NoConnection,
                })
            },
            &mut (),
        );
        assert_eq!(asked, sizes);
        assert_eq!(report.locked.len(), targets.len());
        assert!(report
            .locked
            .iter()
            .all(|l| l.reason.starts_with("no broker answered")));
    }

    #[test]
    fn names_from_flag_crypttab_or_uuid() {
        let ab: &[&str] = &["https://a:1"];
        let mut targets = vec![
            target("/nonexistent/vda", "1111-aaaa", &[("root", ab, PIN_A, 1)]),
            target("/nonexistent/vdb", "2222-bbbb", &[("data", ab, PIN_A, 1)]),
        ];
        let (entries, _) = parse_crypttab("cryptroot UUID=1111-AAAA none luks,discard\n");
        name_targets(&mut targets, None, &entries, &|_| None);
        assert_eq!(targets[0].name, "cryptroot");
        assert!(targets[0].flags.allow_discards);
        assert_eq!(targets[1].name, "luks-2222-bbbb");
        name_targets(&mut targets[..1], Some("mine"), &entries, &|_| None);
        assert_eq!(targets[0].name, "mine");
    }

    #[test]
    fn scanning_skips_empty_devices() {
        let d = tempfile::tempdir().unwrap();
        for (name, size) in [("vda", "20971520\n"), ("loop0", "0\n"), ("vda1", "2048")] {
            std::fs::create_dir(d.path().join(name)).unwrap();
            std::fs::write(d.path().join(name).join("size"), size).unwrap();
        }
        std::fs::create_dir(d.path().join("nosize")).unwrap();
        assert_eq!(
            scan_block_devices(d.path()),
            [PathBuf::from("/dev/vda"), PathBuf::from("/dev/vda1")]
        );
        assert!(scan_block_devices(&d.path().join("missing")).is_empty());
    }

    #[test]
    fn denials_and_errors_become_one_line_per_device() {
        let ab: &[&str] = &["https://a:1"];
        let targets = vec![
            target("/nonexistent/vda", "u1", &[("root", ab, PIN_A, 1)]),
            target("/nonexistent/vdb", "u2", &[("data", ab, PIN_B, 1)]),
        ];
        let mut calls = 0;
        let report = unlock_targets(
            &targets,
            Mode::CheckOnly,
            &mut |g, ids| {
                calls += 1;
                if g.pins[0].to_string() == PIN_A {
                    Ok(Fetched::from(FetchOutcome {
                        broker: "https://a:1".parse().unwrap(),
                        keys: Vec::new(),
                        denied: ids
                            .iter()
                            .map(|v| crate::flow::Denied {
                                volume: v.clone(),
                                reason_codes: vec!["POLICY_MEASUREMENT_NOT_ALLOWED".into()],
                            })
                            .collect(),
                        decision_id: "d-9".into(),
                        refusal: None,
                    }))
                } else {
                    Err(UnlockError::Unreachable {
                        timeout: std::time::Duration::from_secs(1),
                        attempts: 1,
                        last_errors: vec!["https://a:1: connection refused".into()],
                        cause: UnreachableCause::NoConnection,
                    })
                }
            },
            &mut (),
        );
        assert_eq!(calls, 2);
        assert!(report.unlocked.is_empty());
        let lines: Vec<String> = report.locked.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines[0],
            "root (/nonexistent/vda): broker https://a:1 refused: POLICY_MEASUREMENT_NOT_ALLOWED"
        );
        assert!(
            lines[1].starts_with("data (/nonexistent/vdb): no broker answered"),
            "{}",
            lines[1]
        );
        // The same as data, for the event lines.
        assert_eq!(
            report.locked[0].cause,
            LockCause::Refused {
                reason_codes: vec!["POLICY_MEASUREMENT_NOT_ALLOWED".into()],
                decision_id: "d-9".into(),
            }
        );
        assert_eq!(
            report.locked[1].cause,
            LockCause::Failed(FailureKind::BrokerUnreachable)
        );
    }

    #[test]
    fn failure_kinds_of_unlock_errors() {
        let unreachable = |cause| UnlockError::Unreachable {
            timeout: std::time::Duration::from_secs(1),
            attempts: 1,
            last_errors: vec![],
            cause,
        };
        let kind = |e: &UnlockError| FailureKind::from(e).as_str();
        assert_eq!(
            kind(&unreachable(UnreachableCause::PinMismatch)),
            "pin-mismatch"
        );
        assert_eq!(kind(&unreachable(UnreachableCause::Timeout)), "timeout");
        assert_eq!(
            kind(&unreachable(UnreachableCause::NoConnection)),
            "broker-unreachable"
        );
        assert_eq!(
            kind(&UnlockError::EvidenceMismatch { provider: "sim" }),
            "evidence"
        );
        assert_eq!(
            kind(&UnlockError::BadResponse {
                broker: String::new(),
                problem: String::new()
            }),
            "bad-response"
        );
    }
}
