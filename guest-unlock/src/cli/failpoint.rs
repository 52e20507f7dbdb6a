//! Crash points, for tests only: this module exists only in builds with the
//! cargo feature `failpoints` (the VM harness and the crash tests build
//! guest-unlock so). A shipped guest-unlock has no crash point and reads
//! nothing from the kernel command line.
//!
//! The point comes from `KEYBROKER_CRASH_AT=<point>` in the environment,
//! else from `keybroker.crash_at=<point>` on the kernel command line
//! (`/proc/cmdline`, the last occurrence). Right after the rotation step of
//! that name, guest-unlock prints `guest-unlock: crash point <point>
//! reached` and the event line `event=crash-point v=1 point=<point>` on
//! standard error and kills itself with `SIGKILL`, so that tests can prove
//! the next unlock recovers. Points: `guest-after-keyslot-add`,
//! `guest-after-token-update`, `guest-after-confirm`,
//! `guest-after-old-slot-removed`; any other name never fires.

use std::ffi::OsStr;

use guest_unlock::rotation::RotationStep;

/// The environment variable naming a crash point.
pub const ENV: &str = "KEYBROKER_CRASH_AT";
/// The kernel command line parameter naming a crash point.
pub const CMDLINE_KEY: &str = "keybroker.crash_at";
/// Where the kernel command line is read.
const CMDLINE: &str = "/proc/cmdline";

/// The crash point right after `step`.
pub fn point(step: RotationStep) -> &'static str {
    match step {
        RotationStep::KeyslotAdded => "guest-after-keyslot-add",
        RotationStep::TokenUpdated => "guest-after-token-update",
        RotationStep::Confirmed => "guest-after-confirm",
        RotationStep::OldSlotRemoved => "guest-after-old-slot-removed",
    }
}

/// The crash point armed for this process, if any.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Failpoint {
    armed: Option<String>,
}

impl Failpoint {
    /// Arms the point named in the environment, else on the kernel
    /// command line; says so on standard error.
    pub fn from_process() -> Self {
        let cmdline = std::fs::read_to_string(CMDLINE).unwrap_or_default();
        let fp = Self::from_sources(std::env::var_os(ENV).as_deref(), &cmdline);
        if let Some(p) = &fp.armed {
            super::eprint_err(format_args!("test hook: crash point {p} armed"));
        }
        fp
    }

    /// The point named by `env` (the variable's value), else by the last
    /// `keybroker.crash_at=` of `cmdline`. Names are `[a-z-]` only; another
    /// value is ignored with a warning.
    fn from_sources(env: Option<&OsStr>, cmdline: &str) -> Self {
        let key = format!("{CMDLINE_KEY}=");
        let name = match env {
            Some(v) => Some(v.to_string_lossy().into_owned()),
            None => cmdline
                .split_whitespace()
                .rev()
                .find_map(|w| w.strip_prefix(&key))
                .map(str::to_owned),
        };
        let armed = name.filter(|n| {
            let ok = !n.is_empty() && n.bytes().all(|b| b.is_ascii_lowercase() || b == b'-');
            if !ok {
                super::eprint_err(format_args!(
                    "ignoring crash point {n:?}: not a crash point name"
                ));
            }
            ok
        });
        Self { armed }
    }

    /// Kills the process if the armed point is the one right after `step`.
    pub fn after(&self, step: RotationStep) {
        let p = point(step);
        if self.armed.as_deref() == Some(p) {
            super::eprint_err(format_args!("crash point {p} reached"));
            super::events::emit(&super::events::crash_point(p));
            let _ = rustix::process::kill_process(
                rustix::process::getpid(),
                rustix::process::Signal::KILL,
            );
            // SIGKILL cannot be caught; should kill() itself fail, still stop here.
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn armed(env: Option<&str>, cmdline: &str) -> Option<String> {
        Failpoint::from_sources(env.map(OsStr::new), cmdline).armed
    }

    #[test]
    fn the_environment_then_the_last_cmdline_parameter() {
        let cmdline = "ro keybroker.crash_at=guest-after-confirm quiet \
                       keybroker.crash_at=guest-after-keyslot-add\n";
        assert_eq!(
            armed(None, cmdline).as_deref(),
            Some("guest-after-keyslot-add")
        );
        assert_eq!(
            armed(Some("guest-after-token-update"), cmdline).as_deref(),
            Some("guest-after-token-update")
        );
        assert_eq!(armed(None, "ro quiet"), None);
        assert_eq!(armed(None, "keybroker.crash_at"), None);
        assert_eq!(armed(None, "xkeybroker.crash_at=guest-after-confirm"), None);
    }

    #[test]
    fn names_outside_the_alphabet_are_ignored() {
        for bad in ["", "guest_after", "Guest-after-confirm", "a;b", "é"] {
            assert_eq!(armed(Some(bad), ""), None, "{bad:?}");
            assert_eq!(armed(None, &format!("keybroker.crash_at={bad}")), None);
        }
    }

    #[test]
    fn one_point_per_step() {
        let names: std::collections::BTreeSet<_> =
            RotationStep::ALL.into_iter().map(point).collect();
        assert_eq!(names.len(), RotationStep::ALL.len());
        // An armed name that is no point: `after` returns for every step.
        let fp = Failpoint::from_sources(Some(OsStr::new("guest-after-nothing")), "");
        for s in RotationStep::ALL {
            fp.after(s);
        }
    }
}
