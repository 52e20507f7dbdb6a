//! keybroker-vtpm's integration tests, one binary:
//!
//! - `fixtures`: the real Azure captures of `tests/fixtures/azure-snp-vtpm/`
//!   verify with their expected report data and PCR0, and every single-byte
//!   change to them is refused;
//! - `synthetic`: evidence made with a test attestation key reaches each
//!   check past the signature, in order;
//! - `swtpm`: the TPM commands against a real software TPM (skipped, with a
//!   message, when `swtpm` is not installed).

mod common;
mod fixtures;
mod swtpm;
mod synthetic;
