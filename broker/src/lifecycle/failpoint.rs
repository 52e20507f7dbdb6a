//! Crash-test hook: `KEYBROKER_CRASH_AT=<point>` makes the process kill
//! itself with SIGKILL when it reaches `<point>`, so tests can prove that
//! rotation survives a crash at the worst moments.
//!
//! **This is a test hook, not a feature.** It exists only in builds with
//! the `failpoints` cargo feature (off by default): the test kit's builds
//! and the VM harness's `cargo build -p broker --features failpoints`. A
//! broker built without it has no crash points and never reads the
//! variable. With it, the variable is read once, on first use (the broker
//! calls [`init`] at start), so changing the environment later has no
//! effect.
//!
//! Points:
//!
//! | point | where |
//! | --- | --- |
//! | `attest-after-session-recorded` | Attest recorded a rotation session, before replying |
//! | `confirm-before-promote` | ConfirmRotation verified the proof, before promoting |
//! | `confirm-after-promote` | the promotion committed, before replying |
//! | `master-after-batch-<n>` | master rotation committed its n-th batch (1-based, per run) |
//! | `master-before-retire` | every record is under the new key, before the files change |
//! | `master-after-link` | the old key file is linked to its retired name, before the rename |
//! | `master-after-retire` | the new key is in place, before the rotation returns |

use std::sync::OnceLock;

/// The environment variable naming the crash point.
pub const ENV: &str = "KEYBROKER_CRASH_AT";

static POINT: OnceLock<Option<String>> = OnceLock::new();

fn configured() -> Option<&'static str> {
    POINT
        .get_or_init(|| std::env::var(ENV).ok().filter(|s| !s.is_empty()))
        .as_deref()
}

/// Reads the variable now (at start), so later changes are ignored; logs a
/// warning when a crash point is armed.
pub fn init() {
    if let Some(p) = configured() {
        tracing::warn!("{ENV}={p}: crash-test hook armed; this process will SIGKILL itself there");
    }
}

/// Whether any crash point is armed (so callers can skip formatting a
/// point's name).
pub fn armed() -> bool {
    configured().is_some()
}

/// Kills this process with SIGKILL if `point` is the armed crash point.
pub fn hit(point: &str) {
    if configured() == Some(point) {
        eprintln!(
            "keybroker: crash-test hook: {ENV}={point} reached; killing this process (SIGKILL)"
        );
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        // SIGKILL cannot be caught; this is never reached.
        std::process::abort();
    }
}
