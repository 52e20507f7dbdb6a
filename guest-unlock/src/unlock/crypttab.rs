//! crypttab: the names and options of the devices to open (`crypttab(5)`
//! as systemd and Debian's cryptsetup read it), and the device a
//! command-line item names.

use std::path::{Path, PathBuf};

use crate::luks::ActivateFlags;

/// Default crypttab (initramfs-tools keeps its copy at `/cryptroot/crypttab`).
pub const DEFAULT_CRYPTTAB: &str = "/etc/crypttab";

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
