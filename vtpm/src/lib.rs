//! Azure confidential VM evidence: SEV-SNP through the vTPM.
//!
//! On Azure, a paravisor (the HCL) owns the SEV-SNP guest interface; the
//! guest gets its evidence only through a virtual TPM: an HCL report (with
//! the SNP report inside) in an NV index, and a TPM2_Quote by the vTPM's
//! attestation key over the PCRs.
//!
//! - [`tpm`] marshals and parses the TPM 2.0 structures and commands by
//!   hand, and [`Tpm`] sends them over any `Read + Write` (`/dev/tpmrm0`, a
//!   swtpm socket).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod tpm;

pub use tpm::{Tpm, TpmError};
