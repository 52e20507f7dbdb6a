//! Process hardening for a program that holds keys: no core dumps, no
//! ptrace by unprivileged peers, and key memory kept out of swap
//! ([`keybroker_rt::hardening`], shared with guest-unlock).

pub use keybroker_rt::hardening::{harden, Hardening};
