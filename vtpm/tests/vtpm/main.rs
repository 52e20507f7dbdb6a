//! keybroker-vtpm's integration tests, one binary:
//!
//! - `fixtures`: the real Azure captures of `tests/fixtures/azure-snp-vtpm/`
//!   verify with their expected report data and PCR0, and every single-byte
//!   change to them is refused;
//! - `synthetic`: evidence made with a test attestation key reaches each
//!   check past the signature, in order.

mod common;
mod fixtures;
mod synthetic;
