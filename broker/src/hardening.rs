//! Process hardening for a program that holds keys: no core dumps, no
//! ptrace by unprivileged peers, and key memory kept out of swap
//! ([`keybroker_rt::hardening`], shared with guest-unlock).

pub use keybroker_rt::hardening::{harden, Hardening};

/// Descriptors kept back from guest connections for the admin socket and
/// its clients, the metrics listener, the database and its WAL, key files,
/// logs and the runtime.
pub const RESERVED_FDS: usize = 128;

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the limit in
/// force afterwards (`None` if it cannot be read, or is unlimited).
pub fn raise_nofile() -> Option<usize> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current != lim.maximum {
        let raised = rustix::process::Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => lim = getrlimit(Resource::Nofile),
            Err(e) => tracing::warn!("cannot raise RLIMIT_NOFILE to its hard limit: {e}"),
        }
    }
    lim.current.and_then(|n| usize::try_from(n).ok())
}
