//! Finding the devices to unlock: block devices (`--all`), whether each is
//! a LUKS2 device with `sev-keybroker` tokens, and the mapping name and
//! activation flags of each.

use std::path::{Path, PathBuf};

use super::crypttab::{
    activate_flags, crypttab_entry_for, CrypttabEntry, DeviceIdentity, DeviceSpec,
};
use crate::luks::{read_tokens, ActivateFlags, BindError, Device, LuksError};
use crate::token::BrokerToken;

/// Where `--all` looks for block devices.
pub const SYS_CLASS_BLOCK: &str = "/sys/class/block";

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
