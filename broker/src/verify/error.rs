//! Why a piece of attestation evidence was refused.
//!
//! [`EvidenceRejected`] groups the causes the way the checks run: the report
//! framing, the certificates, the chain to a trusted root, the binding of the
//! VEK to the report, the report signature and the REPORT_DATA binding. Every
//! variant has a stable reason code (`EVIDENCE_*`, listed in
//! [`ALL_REASON_CODES`]) that guests and audit entries carry, and a `Display`
//! text for operators that says what failed and what to do about it.

use super::claims::{Generation, SignerKind};

/// Which certificate of the chain a message is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertRole {
    /// The AMD Root Key (self-signed).
    Ark,
    /// The AMD SEV Key (signs VCEKs).
    Ask,
    /// The AMD SEV VLEK Key (signs VLEKs).
    Asvk,
    /// The chip's Versioned Chip Endorsement Key.
    Vcek,
    /// A cloud provider's Versioned Loaded Endorsement Key.
    Vlek,
    /// A certificate revocation list.
    Crl,
}

impl CertRole {
    /// Short upper-case name used in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            CertRole::Ark => "ARK",
            CertRole::Ask => "ASK",
            CertRole::Asvk => "ASVK",
            CertRole::Vcek => "VCEK",
            CertRole::Vlek => "VLEK",
            CertRole::Crl => "CRL",
        }
    }
}

impl std::fmt::Display for CertRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Evidence could not be fully verified; nothing may be released on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EvidenceRejected {
    /// The report bytes themselves are unacceptable.
    #[error(transparent)]
    Report(#[from] ReportRejected),
    /// The certificates that came with the report (or from the offline
    /// directory) are missing or cannot be parsed.
    #[error(transparent)]
    Certificates(#[from] CertificatesRejected),
    /// The certificate chain does not lead to a trusted root, or a
    /// certificate in it is not valid now.
    #[error(transparent)]
    Chain(#[from] ChainRejected),
    /// The VEK certificate does not describe the platform in the report.
    #[error(transparent)]
    Binding(#[from] BindingRejected),
    /// The ECDSA P-384 signature over bytes 0x000..0x2A0 does not verify.
    #[error("report signature does not verify with the {signer:?} public key: {detail}; the report was altered or signed by another key: obtain a fresh report and the certificate of the key that signed it")]
    ReportSignature {
        /// The key the signature was checked against.
        signer: SignerKind,
        /// What exactly failed.
        detail: String,
    },
    /// REPORT_DATA is not the expected value.
    #[error("REPORT_DATA mismatch: expected {expected}, report carries {actual}; the report was made for another challenge or key: request a new challenge")]
    ReportDataMismatch {
        /// Expected value, hex.
        expected: String,
        /// Value in the report, hex.
        actual: String,
    },
    /// Azure vTPM evidence: the HCL report or the quote above the SNP
    /// report could not be verified (codes `EVIDENCE_HCL_*`,
    /// `EVIDENCE_TPM_*`, listed in [`VTPM_REASON_CODES`]).
    #[error(transparent)]
    Vtpm(#[from] keybroker_vtpm::VtpmRejected),
}

/// Problems with the raw report bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReportRejected {
    /// Not exactly 1184 bytes.
    #[error("attestation report is {actual} bytes, expected exactly {expected}; send the raw report from SNP_GET_REPORT or configfs-tsm outblob, unmodified")]
    Length {
        /// Required length.
        expected: usize,
        /// Length received.
        actual: usize,
    },
    /// A report format version this verifier does not accept.
    #[error("attestation report version {actual} is not supported (accepted: 2, 3, 5); update the guest's SNP firmware interface or the broker")]
    Version {
        /// Version in the report.
        actual: u32,
    },
    /// A signature algorithm other than ECDSA P-384 with SHA-384.
    #[error("attestation report signature algorithm {actual} is not supported (expected 1 = ECDSA P-384 with SHA-384)")]
    SigAlgo {
        /// Algorithm id in the report.
        actual: u32,
    },
    /// The processor generation could not be determined or is not supported.
    #[error("processor generation unknown: {detail}; supported: Milan, Genoa, Turin")]
    GenerationUnknown {
        /// Why.
        detail: String,
    },
    /// Bytes the AMD ABI reserves (must be zero) for this version are not zero.
    #[error("attestation report is malformed: {detail}")]
    Malformed {
        /// Which bytes.
        detail: String,
    },
    /// The report names no usable signing key (key_info SIGNING_KEY).
    #[error("attestation report key_info SIGNING_KEY is {actual}, which names no usable key (0 = VCEK, 1 = VLEK); the report is unsigned")]
    Unsigned {
        /// The SIGNING_KEY field.
        actual: u32,
    },
}

/// Problems with the certificates supplied for a report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertificatesRejected {
    /// The extended-report certificate table is malformed.
    #[error("certificate table malformed: {detail}; send the table exactly as the extended guest request returned it")]
    TableMalformed {
        /// What is wrong.
        detail: String,
    },
    /// A required certificate was not supplied and none is bundled.
    #[error("{role} certificate missing: {detail}")]
    Missing {
        /// Which certificate.
        role: CertRole,
        /// Where it was looked for and what to do.
        detail: String,
    },
    /// A certificate (or CRL) could not be parsed, or lacks a required field.
    #[error("{role} certificate malformed: {detail}")]
    Malformed {
        /// Which certificate.
        role: CertRole,
        /// What is wrong.
        detail: String,
    },
    /// A required certificate is held nowhere and the online source (AMD
    /// KDS) cannot deliver it now: it asked the broker to back off, is rate
    /// limited, or did not answer. Retrying later may succeed.
    #[error("{role} certificate unavailable: {detail}; retry later, or import it with `broker certs import`")]
    Unavailable {
        /// Which certificate.
        role: CertRole,
        /// Why, and for how long.
        detail: String,
    },
}

/// The chain does not lead to a trusted root or is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChainRejected {
    /// A supplied ARK is not the pinned AMD ARK of the report's generation.
    #[error("supplied ARK ({supplied}) is not the pinned AMD ARK for {generation}; remove ark.pem or supply the {generation} ARK")]
    ArkMismatch {
        /// Generation of the report.
        generation: Generation,
        /// Subject CN and SHA-256 of the supplied ARK.
        supplied: String,
    },
    /// The chain ends in a root that is neither pinned nor configured.
    #[error("chain ends in an untrusted root ({root}) for {generation}; only AMD's ARKs and explicitly configured roots are trusted")]
    UntrustedRoot {
        /// Generation of the report.
        generation: Generation,
        /// Subject CN and SHA-256 of the root.
        root: String,
    },
    /// The chain ends in a simulated platform's root that is not configured.
    #[error("evidence comes from a simulated SNP platform (root {root}) and this broker does not trust one for {generation}; configure that root explicitly to accept it (tests only)")]
    SimulatedPlatformNotTrusted {
        /// Generation of the report.
        generation: Generation,
        /// Subject CN and SHA-256 of the root.
        root: String,
    },
    /// A certificate signature in the chain does not verify.
    #[error("{subject} is not signed by {issuer}: {detail}")]
    Signature {
        /// The certificate whose signature failed.
        subject: CertRole,
        /// The certificate whose key was used.
        issuer: CertRole,
        /// What failed.
        detail: String,
    },
    /// A certificate or CRL is used for something its key usage forbids.
    #[error("{role} may not sign certificates: {detail}")]
    KeyUsage {
        /// Which certificate.
        role: CertRole,
        /// What is wrong.
        detail: String,
    },
    /// A certificate expired before the verification time.
    #[error("{role} certificate expired at {not_after} (verification time {now}); fetch a current certificate from AMD KDS")]
    Expired {
        /// Which certificate.
        role: CertRole,
        /// Its notAfter.
        not_after: String,
        /// The verification time.
        now: String,
    },
    /// A certificate is not valid yet at the verification time.
    #[error("{role} certificate is not valid before {not_before} (verification time {now}); check the broker's clock")]
    NotYetValid {
        /// Which certificate.
        role: CertRole,
        /// Its notBefore.
        not_before: String,
        /// The verification time.
        now: String,
    },
    /// A certificate is listed in the CRL held for its issuer.
    #[error("{role} certificate serial {serial} is revoked by its issuer's CRL")]
    Revoked {
        /// Which certificate.
        role: CertRole,
        /// Its serial, hex.
        serial: String,
    },
    /// A CRL held for the root (or an intermediate) does not verify under it.
    #[error("the CRL does not verify under its issuer: {detail}; replace crl.der/crl.pem with AMD KDS's current CRL")]
    CrlInvalid {
        /// What failed.
        detail: String,
    },
}

/// The VEK certificate and the report do not describe the same platform.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BindingRejected {
    /// The VCEK's hwID extension does not equal the report's chip_id.
    #[error(
        "VCEK hwID {expected} does not match report chip_id {actual}; supply the VCEK of this chip"
    )]
    HwidMismatch {
        /// hwID from the certificate, hex.
        expected: String,
        /// chip_id from the report, hex.
        actual: String,
    },
    /// A TCB extension of the VEK does not equal the report's reported_tcb.
    #[error("VEK {field} is {expected} but the report's reported_tcb.{field} is {actual}; fetch the VEK for the reported TCB")]
    TcbMismatch {
        /// Which TCB component.
        field: &'static str,
        /// Value in the certificate.
        expected: u8,
        /// Value in the report.
        actual: u8,
    },
    /// The report's key_info SIGNING_KEY and the certificate kind differ.
    #[error("report says it was signed by the {reported:?} but the certificate supplied is a {supplied:?}")]
    SigningKeyMismatch {
        /// Signer named by the report.
        reported: SignerKind,
        /// Kind of certificate supplied.
        supplied: SignerKind,
    },
    /// The VEK's productName names another generation than the report's CPUID.
    #[error("VEK is for {cert} but the report's CPUID says {report}")]
    GenerationMismatch {
        /// Generation from the certificate.
        cert: Generation,
        /// Generation from the report.
        report: Generation,
    },
}

/// The reason codes of [`EvidenceRejected::Vtpm`], in the order its checks
/// run (`keybroker_vtpm`'s).
pub const VTPM_REASON_CODES: &[&str] = keybroker_vtpm::ALL_REASON_CODES;

/// Every reason code [`EvidenceRejected::reason_code`] can return for SNP
/// evidence; those of Azure's vTPM layers are [`VTPM_REASON_CODES`].
pub const ALL_REASON_CODES: &[&str] = &[
    "EVIDENCE_REPORT_LENGTH",
    "EVIDENCE_REPORT_VERSION",
    "EVIDENCE_SIG_ALGO",
    "EVIDENCE_GENERATION_UNKNOWN",
    "EVIDENCE_REPORT_MALFORMED",
    "EVIDENCE_REPORT_UNSIGNED",
    "EVIDENCE_CERT_TABLE_MALFORMED",
    "EVIDENCE_CERT_MISSING",
    "EVIDENCE_CERT_MALFORMED",
    "EVIDENCE_CERT_UNAVAILABLE",
    "EVIDENCE_ARK_MISMATCH",
    "EVIDENCE_UNTRUSTED_ROOT",
    "EVIDENCE_SIMULATED_PLATFORM_NOT_TRUSTED",
    "EVIDENCE_CHAIN_SIGNATURE",
    "EVIDENCE_CERT_KEY_USAGE",
    "EVIDENCE_CERT_EXPIRED",
    "EVIDENCE_CERT_NOT_YET_VALID",
    "EVIDENCE_CERT_REVOKED",
    "EVIDENCE_CRL_INVALID",
    "EVIDENCE_HWID_MISMATCH",
    "EVIDENCE_TCB_MISMATCH",
    "EVIDENCE_SIGNING_KEY_MISMATCH",
    "EVIDENCE_GENERATION_MISMATCH",
    "EVIDENCE_REPORT_SIGNATURE",
    "EVIDENCE_REPORT_DATA_MISMATCH",
];

impl EvidenceRejected {
    /// The stable reason code (one of [`ALL_REASON_CODES`]).
    pub fn reason_code(&self) -> &'static str {
        match self {
            EvidenceRejected::Report(r) => match r {
                ReportRejected::Length { .. } => "EVIDENCE_REPORT_LENGTH",
                ReportRejected::Version { .. } => "EVIDENCE_REPORT_VERSION",
                ReportRejected::SigAlgo { .. } => "EVIDENCE_SIG_ALGO",
                ReportRejected::GenerationUnknown { .. } => "EVIDENCE_GENERATION_UNKNOWN",
                ReportRejected::Malformed { .. } => "EVIDENCE_REPORT_MALFORMED",
                ReportRejected::Unsigned { .. } => "EVIDENCE_REPORT_UNSIGNED",
            },
            EvidenceRejected::Certificates(c) => match c {
                CertificatesRejected::TableMalformed { .. } => "EVIDENCE_CERT_TABLE_MALFORMED",
                CertificatesRejected::Missing { .. } => "EVIDENCE_CERT_MISSING",
                CertificatesRejected::Malformed { .. } => "EVIDENCE_CERT_MALFORMED",
                CertificatesRejected::Unavailable { .. } => "EVIDENCE_CERT_UNAVAILABLE",
            },
            EvidenceRejected::Chain(c) => match c {
                ChainRejected::ArkMismatch { .. } => "EVIDENCE_ARK_MISMATCH",
                ChainRejected::UntrustedRoot { .. } => "EVIDENCE_UNTRUSTED_ROOT",
                ChainRejected::SimulatedPlatformNotTrusted { .. } => {
                    "EVIDENCE_SIMULATED_PLATFORM_NOT_TRUSTED"
                }
                ChainRejected::Signature { .. } => "EVIDENCE_CHAIN_SIGNATURE",
                ChainRejected::KeyUsage { .. } => "EVIDENCE_CERT_KEY_USAGE",
                ChainRejected::Expired { .. } => "EVIDENCE_CERT_EXPIRED",
                ChainRejected::NotYetValid { .. } => "EVIDENCE_CERT_NOT_YET_VALID",
                ChainRejected::Revoked { .. } => "EVIDENCE_CERT_REVOKED",
                ChainRejected::CrlInvalid { .. } => "EVIDENCE_CRL_INVALID",
            },
            EvidenceRejected::Binding(b) => match b {
                BindingRejected::HwidMismatch { .. } => "EVIDENCE_HWID_MISMATCH",
                BindingRejected::TcbMismatch { .. } => "EVIDENCE_TCB_MISMATCH",
                BindingRejected::SigningKeyMismatch { .. } => "EVIDENCE_SIGNING_KEY_MISMATCH",
                BindingRejected::GenerationMismatch { .. } => "EVIDENCE_GENERATION_MISMATCH",
            },
            EvidenceRejected::ReportSignature { .. } => "EVIDENCE_REPORT_SIGNATURE",
            EvidenceRejected::ReportDataMismatch { .. } => "EVIDENCE_REPORT_DATA_MISMATCH",
            EvidenceRejected::Vtpm(e) => e.reason_code(),
        }
    }
}

pub(crate) fn malformed(role: CertRole, detail: impl Into<String>) -> EvidenceRejected {
    CertificatesRejected::Malformed {
        role,
        detail: detail.into(),
    }
    .into()
}

pub(crate) fn table_malformed(detail: impl Into<String>) -> EvidenceRejected {
    CertificatesRejected::TableMalformed {
        detail: detail.into(),
    }
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_of_each() -> Vec<EvidenceRejected> {
        let s = String::new;
        vec![
            ReportRejected::Length {
                expected: 1184,
                actual: 0,
            }
            .into(),
            ReportRejected::Version { actual: 1 }.into(),
            ReportRejected::SigAlgo { actual: 2 }.into(),
            ReportRejected::GenerationUnknown { detail: s() }.into(),
            ReportRejected::Malformed { detail: s() }.into(),
            ReportRejected::Unsigned { actual: 7 }.into(),
            table_malformed(""),
            CertificatesRejected::Missing {
                role: CertRole::Vcek,
                detail: s(),
            }
            .into(),
            malformed(CertRole::Ask, ""),
            CertificatesRejected::Unavailable {
                role: CertRole::Vcek,
                detail: s(),
            }
            .into(),
            ChainRejected::ArkMismatch {
                generation: Generation::Milan,
                supplied: s(),
            }
            .into(),
            ChainRejected::UntrustedRoot {
                generation: Generation::Milan,
                root: s(),
            }
            .into(),
            ChainRejected::SimulatedPlatformNotTrusted {
                generation: Generation::Milan,
                root: s(),
            }
            .into(),
            ChainRejected::Signature {
                subject: CertRole::Vcek,
                issuer: CertRole::Ask,
                detail: s(),
            }
            .into(),
            ChainRejected::KeyUsage {
                role: CertRole::Ask,
                detail: s(),
            }
            .into(),
            ChainRejected::Expired {
                role: CertRole::Vlek,
                not_after: s(),
                now: s(),
            }
            .into(),
            ChainRejected::NotYetValid {
                role: CertRole::Vlek,
                not_before: s(),
                now: s(),
            }
            .into(),
            ChainRejected::Revoked {
                role: CertRole::Ask,
                serial: s(),
            }
            .into(),
            ChainRejected::CrlInvalid { detail: s() }.into(),
            BindingRejected::HwidMismatch {
                expected: s(),
                actual: s(),
            }
            .into(),
            BindingRejected::TcbMismatch {
                field: "snp",
                expected: 1,
                actual: 2,
            }
            .into(),
            BindingRejected::SigningKeyMismatch {
                reported: SignerKind::Vcek,
                supplied: SignerKind::Vlek,
            }
            .into(),
            BindingRejected::GenerationMismatch {
                cert: Generation::Milan,
                report: Generation::Genoa,
            }
            .into(),
            EvidenceRejected::ReportSignature {
                signer: SignerKind::Vcek,
                detail: s(),
            },
            EvidenceRejected::ReportDataMismatch {
                expected: s(),
                actual: s(),
            },
        ]
    }

    #[test]
    fn every_variant_has_a_distinct_listed_code() {
        let codes: Vec<&str> = one_of_each().iter().map(|e| e.reason_code()).collect();
        let mut dedup = codes.clone();
        dedup.sort_unstable();
        dedup.dedup();
        assert_eq!(dedup.len(), codes.len(), "duplicate reason codes");
        assert_eq!(codes, ALL_REASON_CODES, "ALL_REASON_CODES out of sync");
        for c in codes {
            assert!(
                c.starts_with("EVIDENCE_")
                    && c.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
            );
        }
    }

    #[test]
    fn vtpm_refusals_carry_the_vtpm_code() {
        let e = EvidenceRejected::from(keybroker_vtpm::VtpmRejected::QuoteExtraData {
            expected: "aa".into(),
            actual: "bb".into(),
        });
        assert_eq!(e.reason_code(), "EVIDENCE_TPM_QUOTE_EXTRA_DATA");
        assert!(VTPM_REASON_CODES.contains(&e.reason_code()));
        assert!(e.to_string().contains("aa") && e.to_string().contains("bb"));
        assert!(VTPM_REASON_CODES
            .iter()
            .all(|c| !ALL_REASON_CODES.contains(c)));
    }

    #[test]
    fn messages_say_expected_and_actual() {
        let e: EvidenceRejected = ReportRejected::Length {
            expected: 1184,
            actual: 1183,
        }
        .into();
        let m = e.to_string();
        assert!(m.contains("1183") && m.contains("1184"), "{m}");
        let e: EvidenceRejected = BindingRejected::TcbMismatch {
            field: "snp",
            expected: 8,
            actual: 9,
        }
        .into();
        let m = e.to_string();
        assert!(
            m.contains("snp") && m.contains('8') && m.contains('9'),
            "{m}"
        );
    }
}
