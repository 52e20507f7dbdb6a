//! The machine-readable event lines `guest-unlock` prints on standard
//! error beside its human messages (`docs/operations.md`, "Event lines"):
//!
//! ```text
//! guest-unlock: event=<kind> v=1 <key>=<value> ...
//! ```
//!
//! One line per event, ASCII, space-separated `key=value`. Values never
//! contain spaces or `=`: bytes outside `[A-Za-z0-9._/:-]` are
//! percent-encoded, lists are comma-separated, a missing value is `-`.
//! Keys come in a fixed order per kind; later versions may append keys,
//! never reorder them. Tests (the VM harness) assert on these lines only,
//! never on the human wording.

use std::fmt::Write as _;
use std::path::Path;

use guest_unlock::rotation::StepDone;
use guest_unlock::unlock::{FailureKind, LockCause, StillLocked, Unlocked};

/// The version of the line format (`v=`).
pub const VERSION: u32 = 1;

/// One value, percent-encoded where needed; `-` when empty.
pub fn value(s: &str) -> String {
    if s.is_empty() {
        return "-".to_owned();
    }
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'/' | b':' | b'-') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A comma-separated list of values; `-` when empty.
pub fn list<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    let v: Vec<String> = items
        .into_iter()
        .filter(|s| !s.is_empty())
        .map(value)
        .collect();
    if v.is_empty() {
        "-".to_owned()
    } else {
        v.join(",")
    }
}

fn path(p: &Path) -> String {
    value(&p.to_string_lossy())
}

fn number(n: Option<u32>) -> String {
    n.map_or_else(|| "-".to_owned(), |n| n.to_string())
}

/// The volumes of a line: one id, or several joined by `,` (as
/// [`guest_unlock::unlock::Target::volumes`] writes them); `?` (unknown) is `-`.
fn volumes(v: &str) -> String {
    list(v.split(',').filter(|s| *s != "?"))
}

/// `event=<kind> v=1 ` followed by the pairs.
fn line(kind: &str, pairs: &[(&str, String)]) -> String {
    let mut out = format!("event={kind} v={VERSION}");
    for (k, v) in pairs {
        let _ = write!(out, " {k}={v}");
    }
    out
}

/// `event=unlocked volume= device= name= keyslot= key-version= decision=`.
pub fn unlocked(u: &Unlocked) -> String {
    line(
        "unlocked",
        &[
            ("volume", volumes(&u.volume)),
            ("device", path(&u.device)),
            ("name", value(&u.name)),
            ("keyslot", number(u.keyslot)),
            ("key-version", number(u.key_version)),
            ("decision", value(u.decision_id.as_deref().unwrap_or(""))),
        ],
    )
}

/// `event=refused volume= device= reasons= decision=`, or `event=failed
/// volume= device= reason=`.
pub fn locked(l: &StillLocked) -> String {
    match &l.cause {
        LockCause::Refused {
            reason_codes,
            decision_id,
        } => line(
            "refused",
            &[
                ("volume", volumes(&l.volume)),
                ("device", path(&l.device)),
                ("reasons", list(reason_codes.iter().map(String::as_str))),
                ("decision", value(decision_id)),
            ],
        ),
        LockCause::Failed(kind) => failed(&l.volume, &l.device, *kind),
    }
}

/// `event=failed volume= device= reason=`.
pub fn failed(volume: &str, device: &Path, kind: FailureKind) -> String {
    line(
        "failed",
        &[
            ("volume", volumes(volume)),
            ("device", path(device)),
            ("reason", kind.as_str().to_owned()),
        ],
    )
}

/// `event=rotation volume= device= step= key-version=`.
pub fn rotation(s: &StepDone) -> String {
    line(
        "rotation",
        &[
            ("volume", value(s.volume.as_str())),
            ("device", path(&s.device)),
            ("step", s.step.name().to_owned()),
            ("key-version", s.key_version.to_string()),
        ],
    )
}

/// `event=crash-point point=` (test builds with crash points only).
#[cfg(feature = "failpoints")]
pub fn crash_point(point: &str) -> String {
    line("crash-point", &[("point", value(point))])
}

/// `event=done unlocked= locked= secs=`.
pub fn done(unlocked: usize, locked: usize, secs: f64) -> String {
    line(
        "done",
        &[
            ("unlocked", unlocked.to_string()),
            ("locked", locked.to_string()),
            ("secs", format!("{secs:.1}")),
        ],
    )
}

/// Prints an event line on standard error, prefixed like every
/// diagnostic (in one write).
pub fn emit(line: &str) {
    // Always the text form, whatever `--log-format` says: scripts and the
    // VM harness read these lines.
    super::write_stderr(&format!("guest-unlock: {line}\n"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use guest_unlock::rotation::RotationStep;
    use keybroker_proto::VolumeId;
    use std::path::PathBuf;

    /// Every value is one token of the allowed alphabet.
    fn well_formed(l: &str) {
        assert!(l.is_ascii(), "{l}");
        let mut words = l.split(' ');
        assert!(words.next().unwrap().starts_with("event="), "{l}");
        assert_eq!(words.next(), Some("v=1"), "{l}");
        for w in words {
            let (k, v) = w.split_once('=').unwrap_or_else(|| panic!("{l}"));
            assert!(!k.is_empty() && !v.is_empty() && !v.contains('='), "{l}");
        }
    }

    #[test]
    fn values_are_encoded() {
        assert_eq!(
            value("/dev/disk/by-id/virtio-x_1:0"),
            "/dev/disk/by-id/virtio-x_1:0"
        );
        assert_eq!(value("/dev/a b"), "/dev/a%20b");
        assert_eq!(value("x=y%"), "x%3Dy%25");
        assert_eq!(value("é"), "%C3%A9");
        assert_eq!(value(""), "-");
        assert_eq!(list(["A", "B C"]), "A,B%20C");
        assert_eq!(list(["a,b"]), "a%2Cb");
        assert_eq!(list([]), "-");
        assert_eq!(volumes("?"), "-");
        assert_eq!(volumes("root,data"), "root,data");
    }

    #[test]
    fn lines_in_the_documented_order() {
        let u = Unlocked {
            device: "/dev/vda2".into(),
            name: "root_crypt".into(),
            volume: "root".into(),
            keyslot: Some(1),
            key_version: Some(3),
            decision_id: Some("d-7".into()),
        };
        let l = unlocked(&u);
        assert_eq!(
            l,
            "event=unlocked v=1 volume=root device=/dev/vda2 name=root_crypt keyslot=1 key-version=3 decision=d-7"
        );
        well_formed(&l);
        let already = Unlocked {
            keyslot: None,
            key_version: None,
            decision_id: None,
            ..u
        };
        assert!(unlocked(&already).ends_with("keyslot=- key-version=- decision=-"));

        let refused = StillLocked {
            volume: "data".into(),
            device: PathBuf::from("/dev/vdb"),
            reason: "broker https://kb:1 refused: A,B".into(),
            cause: LockCause::Refused {
                reason_codes: vec![
                    "POLICY_MEASUREMENT_NOT_ALLOWED".into(),
                    "TCB TOO=OLD".into(),
                ],
                decision_id: String::new(),
            },
        };
        let l = locked(&refused);
        assert_eq!(
            l,
            "event=refused v=1 volume=data device=/dev/vdb reasons=POLICY_MEASUREMENT_NOT_ALLOWED,TCB%20TOO%3DOLD decision=-"
        );
        well_formed(&l);
        let failed = StillLocked {
            volume: "?".into(),
            cause: LockCause::Failed(FailureKind::NotLuks2),
            ..refused
        };
        let l = locked(&failed);
        assert_eq!(
            l,
            "event=failed v=1 volume=- device=/dev/vdb reason=not-luks2"
        );
        well_formed(&l);

        let l = rotation(&StepDone {
            volume: VolumeId::new("root").unwrap(),
            device: "/dev/vda2".into(),
            step: RotationStep::OldSlotRemoved,
            key_version: 1,
        });
        assert_eq!(
            l,
            "event=rotation v=1 volume=root device=/dev/vda2 step=old-slot-removed key-version=1"
        );
        well_formed(&l);
        let l = done(2, 1, 3.04);
        assert_eq!(l, "event=done v=1 unlocked=2 locked=1 secs=3.0");
        well_formed(&l);
    }
}
