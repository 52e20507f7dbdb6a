//! The roots a verifier trusts: AMD's pinned ARKs with their bundled ASKs
//! and ASVKs, and, only when configured, one simulated root per
//! generation; and which of them issued a given intermediate or CRL.

use ::time::OffsetDateTime;

use super::crl::{parse_crl, verify_crl_signature};
use super::signature::{check_ca, verify_signed_by};
use super::{describe, Window};
use crate::verify::amd;
use crate::verify::certs::parse_cert;
use crate::verify::claims::Generation;
use crate::verify::error::{malformed, CertRole, ChainRejected, EvidenceRejected};

/// Subject CN prefix of a simulated platform's root.
pub const SIMULATED_ARK_PREFIX: &str = "ARK-Sim";

#[derive(Clone, Debug)]
pub(super) struct Root {
    pub(super) generation: Generation,
    pub(super) ark: Vec<u8>,
    pub(super) ask: Option<Vec<u8>>,
    pub(super) asvk: Option<Vec<u8>>,
    pub(super) simulated: bool,
}

/// The roots a verifier trusts: AMD's pinned ARKs (with bundled ASKs and
/// ASVKs) and, only if configured, simulated roots.
#[derive(Clone, Debug)]
pub struct TrustStore {
    pub(super) roots: Vec<Root>,
}

impl TrustStore {
    /// AMD's pinned ARK, ASK and ASVK for Milan, Genoa and Turin; nothing else.
    pub fn amd() -> Self {
        let roots = amd::GENERATIONS
            .into_iter()
            .map(|g| Root {
                generation: g,
                ark: amd::ark_der(g),
                ask: Some(amd::ask_der(g)),
                asvk: Some(amd::asvk_der(g)),
                simulated: false,
            })
            .collect();
        TrustStore { roots }
    }

    /// Also trusts `ark_der` (a self-signed certificate, ECDSA P-384 or
    /// RSA-PSS SHA-384, DER or PEM) as the root of a simulated platform of
    /// `generation`. Reports verified under it are marked simulated. A second
    /// simulated root for the same generation replaces the first.
    pub fn with_simulated_root(
        mut self,
        generation: Generation,
        ark: &[u8],
    ) -> Result<Self, EvidenceRejected> {
        let der = crate::verify::certs::certs_from_pem_or_der(ark)
            .into_iter()
            .next()
            .unwrap_or_default();
        let cert = parse_cert(&der, CertRole::Ark)?;
        check_ca(&cert, CertRole::Ark)?;
        verify_signed_by(&der, CertRole::Ark, &der, CertRole::Ark)?;
        if self.roots.iter().any(|r| !r.simulated && r.ark == der) {
            return Err(malformed(CertRole::Ark, "the simulated root is an AMD ARK"));
        }
        self.roots
            .retain(|r| !(r.simulated && r.generation == generation));
        self.roots.push(Root {
            generation,
            ark: der,
            ask: None,
            asvk: None,
            simulated: true,
        });
        Ok(self)
    }

    /// True when a simulated root is configured for any generation.
    pub fn trusts_simulated(&self) -> bool {
        self.roots.iter().any(|r| r.simulated)
    }

    /// True when a simulated root is configured for `generation`.
    pub fn trusts_simulated_for(&self, generation: Generation) -> bool {
        self.simulated(generation).is_some()
    }

    pub(super) fn pinned(&self, g: Generation) -> Option<&Root> {
        self.roots
            .iter()
            .find(|r| !r.simulated && r.generation == g)
    }

    pub(super) fn simulated(&self, g: Generation) -> Option<&Root> {
        self.roots.iter().find(|r| r.simulated && r.generation == g)
    }
}

/// Which trusted root issued an intermediate (ASK/ASVK), and its chain facts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuingRoot {
    /// Generation of the root.
    pub generation: Generation,
    /// True for a configured simulated root.
    pub simulated: bool,
    /// The root's DER.
    pub ark: Vec<u8>,
}

impl TrustStore {
    /// The roots whose subject is `der`'s issuer name and whose key
    /// verifies its signature.
    fn issuers_of(&self, der: &[u8], role: CertRole) -> Vec<&Root> {
        self.roots
            .iter()
            .filter(|r| verify_signed_by(der, role, &r.ark, CertRole::Ark).is_ok())
            .collect()
    }

    /// Verifies an intermediate (ASK or ASVK) for import: signed by a
    /// trusted root, allowed to sign certificates, valid at `now`, and not
    /// listed in any of `crls` issued by that root.
    pub fn verify_intermediate(
        &self,
        der: &[u8],
        role: CertRole,
        crls: &[Vec<u8>],
        now: OffsetDateTime,
    ) -> Result<IssuingRoot, EvidenceRejected> {
        let cert = parse_cert(der, role)?;
        let Some(root) = self.issuers_of(der, role).into_iter().next() else {
            return Err(ChainRejected::Signature {
                subject: role,
                issuer: CertRole::Ark,
                detail: format!(
                    "no pinned (or configured) ARK issued it (its issuer is \"{}\"; {})",
                    cert.issuer(),
                    describe(der)
                ),
            }
            .into());
        };
        let ark = parse_cert(&root.ark, CertRole::Ark)?;
        check_ca(&cert, role)?;
        Window::of(&ark, CertRole::Ark).check(now)?;
        Window::of(&cert, role).check(now)?;
        for crl_der in crls {
            let crl = parse_crl(crl_der)?;
            if crl.issuer().as_raw() != ark.subject().as_raw() {
                continue;
            }
            verify_crl_signature(&crl, &ark)?;
            if crl
                .iter_revoked_certificates()
                .any(|r| r.raw_serial() == cert.raw_serial())
            {
                return Err(ChainRejected::Revoked {
                    role,
                    serial: hex::encode(cert.raw_serial()),
                }
                .into());
            }
        }
        Ok(IssuingRoot {
            generation: root.generation,
            simulated: root.simulated,
            ark: root.ark.clone(),
        })
    }

    /// The trusted root that issued the CRL `crl_der` itself, if any.
    pub fn root_issuing_crl(&self, crl_der: &[u8]) -> Option<IssuingRoot> {
        let crl = parse_crl(crl_der).ok()?;
        self.roots.iter().find_map(|r| {
            let ark = parse_cert(&r.ark, CertRole::Ark).ok()?;
            (verify_crl_signature(&crl, &ark).is_ok()).then(|| IssuingRoot {
                generation: r.generation,
                simulated: r.simulated,
                ark: r.ark.clone(),
            })
        })
    }

    /// The bundled intermediates (ASK, ASVK) of every root, with the root.
    pub fn bundled_intermediates(&self) -> Vec<(CertRole, Vec<u8>, IssuingRoot)> {
        let mut out = Vec::new();
        for r in &self.roots {
            let root = IssuingRoot {
                generation: r.generation,
                simulated: r.simulated,
                ark: r.ark.clone(),
            };
            if let Some(a) = &r.ask {
                out.push((CertRole::Ask, a.clone(), root.clone()));
            }
            if let Some(a) = &r.asvk {
                out.push((CertRole::Asvk, a.clone(), root.clone()));
            }
        }
        out
    }

    /// True when `der` is one of the trusted roots.
    pub fn is_root(&self, der: &[u8]) -> Option<IssuingRoot> {
        self.roots
            .iter()
            .find(|r| r.ark == der)
            .map(|r| IssuingRoot {
                generation: r.generation,
                simulated: r.simulated,
                ark: r.ark.clone(),
            })
    }
}
