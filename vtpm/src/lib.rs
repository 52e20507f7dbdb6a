//! Azure confidential VM evidence: SEV-SNP through the vTPM.
//!
//! On Azure, a paravisor (the HCL) owns the SEV-SNP guest interface; the
//! guest gets its evidence only through a virtual TPM:
//!
//! - the **HCL report** in vTPM NV index 0x01400001 ([`hcl`]): a header,
//!   the raw 1184-byte SNP report, and variable data (JSON) holding the
//!   vTPM's attestation key (`HCLAkPub`, RSA) and `user-data`. The SNP
//!   report's REPORT_DATA[0..32] is SHA-256 of that variable data;
//! - a **TPM2_Quote** by that attestation key (persistent handle
//!   0x81000003) over the PCRs, with the verifier's binding value as
//!   qualifying data ([`tpm::attest`], [`tpm::signature`]), and the PCR
//!   values.
//!
//! The SNP launch measurement covers the paravisor, not the guest's image;
//! the image is identified by the vTPM PCRs.
//!
//! This crate holds the layers above the SNP report, both ends:
//!
//! - [`hcl::HclReport::parse`] frames the HCL report and hands out the raw
//!   SNP report for the SNP verifier (which lives elsewhere);
//! - [`verify::verify_quote`] checks, in order, the variable data against
//!   the verified REPORT_DATA, the quote's signature by `HCLAkPub`, that it
//!   is a quote, its extraData, and its PCR digest; each failure has its
//!   own reason code ([`VtpmRejected::reason_code`]). Success is a
//!   [`VerifiedVtpmQuote`] carrying the verified PCRs, which nothing else
//!   can construct;
//! - [`evidence_file`] reads the JSON evidence files of Azure's tooling
//!   (`tests/fixtures/azure-snp-vtpm/`);
//! - [`tpm`] marshals and parses TPM 2.0 structures and commands by hand,
//!   and [`Tpm`] sends them over any `Read + Write` (`/dev/tpmrm0`, a
//!   swtpm socket); [`guest`] fetches the evidence with them.
//!
//! # The binding
//!
//! The verifier chooses one binding value (on bare SNP, what REPORT_DATA
//! holds: the transcript hash of nonce, guest key and volumes) and expects
//! it as the quote's extraData ([`verify::Expected::extra_data`]) and,
//! where the protocol asks for it, as the HCL `user-data`
//! ([`verify::Expected::user_data`]), which the guest puts there by
//! writing it to NV index 0x01400002 before reading the HCL report. The
//! quote's signature ties the PCRs and the binding value to the AK; the
//! SNP report ties the AK to AMD's hardware.
//!
//! Nothing here is secret, and nothing here decides policy.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod error;
pub mod evidence_file;
pub mod guest;
pub mod hcl;
pub mod tpm;
pub mod verify;

pub use error::{VtpmRejected, ALL_REASON_CODES};
pub use evidence_file::{EvidenceFile, EvidenceFileError};
pub use hcl::{HclReport, RuntimeClaims};
pub use tpm::{Tpm, TpmError};
pub use verify::{verify_quote, Expected, QuoteEvidence, VerifiedVtpmQuote};
