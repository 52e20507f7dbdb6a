//! SEV-SNP formats that both ends of keybroker read, with one owner each:
//!
//! - [`report`]: the layout of an attestation report (AMD's SEV-SNP ABI,
//!   `ATTESTATION_REPORT`): its length, field offsets, the signed range
//!   `0x000..0x2A0`, the signature fields, the versions;
//! - [`cert_table`]: the extended report's certificate table (GHCB
//!   specification, "SNP Extended Guest Request"): encoder and decoder,
//!   and the rule for its GUIDs.
//!
//! **Architecture Invariant:** this crate knows layouts only. It decides
//! nothing about trust (the broker's `verify` does) and holds no keys; it
//! has no I/O and no dependencies beyond `thiserror`.
#![forbid(unsafe_code)]

pub mod cert_table;
pub mod report;
