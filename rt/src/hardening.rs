//! Process hardening for a program that holds keys: no core dump may carry
//! one, no unprivileged process may ptrace it, and its pages must not reach
//! swap.

use rustix::mm::{mlockall, MlockAllFlags};
use rustix::process::{
    geteuid, getrlimit, set_dumpable_behavior, setrlimit, DumpableBehavior, Resource, Rlimit,
};

/// What [`harden`] achieved, for a start-up log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hardening {
    /// Core dumps are disabled (RLIMIT_CORE = 0 and not dumpable).
    pub no_core_dumps: bool,
    /// All memory is locked (mlockall), so keys never reach swap.
    pub memory_locked: bool,
}

/// Disables core dumps (RLIMIT_CORE 0, not dumpable, which also stops
/// ptrace by unprivileged processes) and, where the process may lock
/// unlimited memory (root, or an unlimited RLIMIT_MEMLOCK), locks all
/// current and future pages. Never fails: what could not be done is
/// reported. Call it before any key exists in the process.
pub fn harden() -> Hardening {
    let core = setrlimit(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    )
    .is_ok();
    let dumpable = set_dumpable_behavior(DumpableBehavior::NotDumpable).is_ok();
    // With a finite RLIMIT_MEMLOCK, MCL_FUTURE would make later allocations
    // fail once the limit is reached; only lock when that cannot happen.
    let may_lock = geteuid().is_root() || getrlimit(Resource::Memlock).current.is_none();
    let memory_locked = may_lock
        && mlockall(MlockAllFlags::CURRENT | MlockAllFlags::FUTURE | MlockAllFlags::ONFAULT)
            .is_ok();
    Hardening {
        no_core_dumps: core && dumpable,
        memory_locked,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn core_dumps_are_disabled_in_a_child() {
        // Run in a child process so the test runner keeps its own limits.
        if std::env::var_os("KB_HARDEN_CHILD").is_some() {
            let h = super::harden();
            assert!(h.no_core_dumps);
            let lim = rustix::process::getrlimit(rustix::process::Resource::Core);
            assert_eq!((lim.current, lim.maximum), (Some(0), Some(0)));
            return;
        }
        let exe = std::env::current_exe().unwrap();
        let st = std::process::Command::new(exe)
            .args([
                "--exact",
                "hardening::tests::core_dumps_are_disabled_in_a_child",
            ])
            .env("KB_HARDEN_CHILD", "1")
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
    }
}
