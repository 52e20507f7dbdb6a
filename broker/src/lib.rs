//! The attested disk-key broker: the library behind the `broker` binary.
//!
//! Modules by concern: [`grpc`] (the wire boundary), [`release`] (Challenge
//! and Attest), [`verify`] (SEV-SNP evidence), [`policy`], [`keys`] (keys at
//! rest), [`store`], [`audit`], plus configuration. The command line lives
//! in the `broker` binary (`src/main.rs` and its `cli` modules), not here.
//! See `docs/architecture.md` for the code map and invariants.
#![deny(unsafe_code)]
#![warn(missing_docs, rustdoc::broken_intra_doc_links)]

pub mod admin;
pub mod audit;
pub mod audit_anchor;
pub mod audit_key;
pub mod certsource;
pub mod config;
pub mod error;
pub mod grpc;
pub mod hardening;
pub mod inventory;
pub mod keys;
pub mod lifecycle;
pub mod measure;
pub mod metrics;
pub mod noise;
pub mod nonce;
pub mod policy;
pub mod release;
pub mod sd_notify;
pub mod startup;
pub mod store;
pub mod tls;
pub mod verify;
pub mod wiring;

pub use error::Error;
