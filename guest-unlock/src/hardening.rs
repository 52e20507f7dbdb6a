//! Process hardening for the guest side: no core dump may carry an
//! unwrapped volume key, and key pages must not reach swap.
//!
//! `guest-unlock` runs briefly, usually as root in the initramfs, so it
//! locks all its memory when it may (root or an unlimited RLIMIT_MEMLOCK).

use rustix::mm::{mlockall, MlockAllFlags};
use rustix::process::{
    geteuid, getrlimit, set_dumpable_behavior, setrlimit, DumpableBehavior, Resource, Rlimit,
};

/// Disables core dumps and ptrace by unprivileged processes, then locks
/// memory where that cannot make later allocations fail. Returns whether
/// memory is locked.
pub fn harden() -> bool {
    let no_core = setrlimit(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    )
    .is_ok()
        && set_dumpable_behavior(DumpableBehavior::NotDumpable).is_ok();
    if !no_core {
        tracing::warn!("could not disable core dumps");
    }
    let may_lock = geteuid().is_root() || getrlimit(Resource::Memlock).current.is_none();
    may_lock
        && mlockall(MlockAllFlags::CURRENT | MlockAllFlags::FUTURE | MlockAllFlags::ONFAULT).is_ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn core_limit_is_zero_after_hardening_in_a_child() {
        if std::env::var_os("GU_HARDEN_CHILD").is_some() {
            super::harden();
            let lim = rustix::process::getrlimit(rustix::process::Resource::Core);
            assert_eq!((lim.current, lim.maximum), (Some(0), Some(0)));
            return;
        }
        let st = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "hardening::tests::core_limit_is_zero_after_hardening_in_a_child",
            ])
            .env("GU_HARDEN_CHILD", "1")
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
    }
}
