//! The certificate chain ARK → ASK (or ASVK) → VEK, and the roots it may end in.
//!
//! [`TrustStore`] holds the pinned AMD roots (and, only when told so
//! explicitly, one simulated root per generation). [`verify_chain`] picks the
//! root for the report's generation, checks every signature (RSA-PSS
//! SHA-384 as AMD signs, or ECDSA P-384 SHA-384), key usage, validity at the
//! caller's time and the ARK's CRL when one is held. [`ChainCache`] remembers
//! verified chains so the hot path only re-checks validity times.
//!
//! Modules by concern: `trust` (the roots, and which issued what),
//! `signature` (certificate signatures, CA checks), `crl` (revocation
//! lists), `cache` (verified chains); this module selects the root and
//! verifies one chain.

use std::sync::Arc;

use ::time::OffsetDateTime;
use aws_lc_rs::digest;
use aws_lc_rs::signature::{ParsedPublicKey, ECDSA_P384_SHA384_FIXED};
use x509_parser::prelude::*;

use super::amd;
use super::certs::{cn_of, parse_cert, CertSet, VekInfo};
use super::claims::{Generation, SignerKind};
use super::error::{malformed, CertRole, CertificatesRejected, ChainRejected, EvidenceRejected};

mod cache;
mod crl;
mod signature;
mod trust;

pub use cache::ChainCache;
pub use crl::{check_crl_for_import, parse_crl, CrlInfo};
pub use signature::verify_signed_by;
pub use trust::{IssuingRoot, TrustStore, SIMULATED_ARK_PREFIX};

use crl::check_crls;
use signature::{check_ca, is_p384};
use trust::Root;

fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, data).as_ref());
    out
}

fn describe(der: &[u8]) -> String {
    let cn = super::certs::subject_cn(der).unwrap_or_else(|| "?".into());
    format!("CN={cn}, SHA-256 {}", hex::encode(sha256(der)))
}

/// A certificate's validity window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    role: CertRole,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
}

impl Window {
    fn of(cert: &X509Certificate<'_>, role: CertRole) -> Self {
        Window {
            role,
            not_before: cert.validity().not_before.to_datetime(),
            not_after: cert.validity().not_after.to_datetime(),
        }
    }

    fn check(&self, now: OffsetDateTime) -> Result<(), EvidenceRejected> {
        let fmt = |t: OffsetDateTime| {
            t.format(&::time::format_description::well_known::Rfc3339)
                .unwrap_or_else(|_| t.to_string())
        };
        if now < self.not_before {
            return Err(ChainRejected::NotYetValid {
                role: self.role,
                not_before: fmt(self.not_before),
                now: fmt(now),
            }
            .into());
        }
        if now > self.not_after {
            return Err(ChainRejected::Expired {
                role: self.role,
                not_after: fmt(self.not_after),
                now: fmt(now),
            }
            .into());
        }
        Ok(())
    }
}

/// A chain that verified: what the rest of verification needs from it.
#[derive(Clone)]
pub struct VerifiedChain {
    /// Generation of the root the chain ends in.
    pub generation: Generation,
    /// VCEK or VLEK.
    pub signer: SignerKind,
    /// The VEK's AMD extensions.
    pub vek: VekInfo,
    /// SHA-256 of the VEK certificate DER.
    pub vek_fingerprint: [u8; 32],
    /// True when the root is a configured simulated root.
    pub simulated: bool,
    windows: Vec<Window>,
    vek_key: Arc<ParsedPublicKey>,
}

impl std::fmt::Debug for VerifiedChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedChain")
            .field("generation", &self.generation)
            .field("signer", &self.signer)
            .field("vek_fingerprint", &hex::encode(self.vek_fingerprint))
            .field("simulated", &self.simulated)
            .finish_non_exhaustive()
    }
}

impl VerifiedChain {
    /// Re-checks every certificate's validity window at `now`.
    pub fn check_validity(&self, now: OffsetDateTime) -> Result<(), EvidenceRejected> {
        self.windows.iter().try_for_each(|w| w.check(now))
    }

    /// Verifies a fixed-size big-endian `r || s` ECDSA P-384 SHA-384
    /// signature over `msg` with the VEK's public key.
    pub fn verify_report_signature(
        &self,
        msg: &[u8],
        sig: &[u8; 96],
    ) -> Result<(), EvidenceRejected> {
        self.vek_key
            .verify_sig(msg, sig)
            .map_err(|_| EvidenceRejected::ReportSignature {
                signer: self.signer,
                detail: "ECDSA P-384 SHA-384 over bytes 0x000..0x2A0 does not verify".into(),
            })
    }
}

/// Selects the root for `generation` given a supplied ARK (if any), deciding
/// between pinned, configured-simulated, mismatched and untrusted roots.
fn select_root<'a>(
    store: &'a TrustStore,
    generation: Generation,
    supplied_ark: Option<&[u8]>,
    intermediate: Option<&[u8]>,
) -> Result<&'a Root, EvidenceRejected> {
    let pinned = store.pinned(generation);
    let sim = store.simulated(generation);
    let Some(ark) = supplied_ark else {
        // No ARK supplied: an intermediate issued by a simulated root uses
        // the configured simulated root, anything else AMD's pinned ARK.
        if let Some(inter) = intermediate {
            let cert = parse_cert(inter, CertRole::Ask)?;
            let issuer_cn = cn_of(cert.issuer()).unwrap_or_default();
            if issuer_cn.starts_with(SIMULATED_ARK_PREFIX) {
                return match sim {
                    Some(r)
                        if parse_cert(&r.ark, CertRole::Ark)?.subject().as_raw()
                            == cert.issuer().as_raw() =>
                    {
                        Ok(r)
                    }
                    _ => Err(ChainRejected::SimulatedPlatformNotTrusted {
                        generation,
                        root: format!("CN={issuer_cn} (not supplied)"),
                    }
                    .into()),
                };
            }
        }
        return pinned.ok_or_else(|| {
            ChainRejected::UntrustedRoot {
                generation,
                root: "none pinned for this generation".into(),
            }
            .into()
        });
    };
    if let Some(r) = pinned.filter(|r| r.ark == ark) {
        return Ok(r);
    }
    if let Some(r) = sim.filter(|r| r.ark == ark) {
        return Ok(r);
    }
    let cn = super::certs::subject_cn(ark).unwrap_or_default();
    if cn.starts_with(SIMULATED_ARK_PREFIX) {
        return Err(ChainRejected::SimulatedPlatformNotTrusted {
            generation,
            root: describe(ark),
        }
        .into());
    }
    let amd_named = amd::GENERATIONS.iter().any(|g| {
        let c = g.as_str();
        let mut cap = c[..1].to_ascii_uppercase();
        cap.push_str(&c[1..]);
        cn == format!("ARK-{cap}")
    });
    if amd_named || store.roots.iter().any(|r| !r.simulated && r.ark == ark) {
        return Err(ChainRejected::ArkMismatch {
            generation,
            supplied: describe(ark),
        }
        .into());
    }
    Err(ChainRejected::UntrustedRoot {
        generation,
        root: describe(ark),
    }
    .into())
}

/// Verifies the chain for a report of `generation` signed by `signer`, using
/// the certificates in `certs` and the store's bundled ones where missing.
pub fn verify_chain(
    store: &TrustStore,
    generation: Generation,
    signer: SignerKind,
    certs: &CertSet,
    now: OffsetDateTime,
) -> Result<VerifiedChain, EvidenceRejected> {
    let (vek_role, inter_role) = match signer {
        SignerKind::Vcek => (CertRole::Vcek, CertRole::Ask),
        SignerKind::Vlek => (CertRole::Vlek, CertRole::Asvk),
    };
    let vek_der = certs.vek(signer).ok_or_else(|| CertificatesRejected::Missing {
        role: vek_role,
        detail: format!(
            "the report is signed by a {vek_role}; include it in the certificate table or put {}.der in the certificate directory",
            vek_role.as_str().to_ascii_lowercase()
        ),
    })?;
    let vek = parse_cert(vek_der, vek_role)?;
    let vek_info = VekInfo::from_cert(&vek, vek_role)?;

    let supplied_inter = certs.intermediate(signer);
    let root = select_root(store, generation, certs.ark.as_deref(), supplied_inter)?;
    let bundled_inter = match signer {
        SignerKind::Vcek => root.ask.as_deref(),
        SignerKind::Vlek => root.asvk.as_deref(),
    };
    let inter_der = supplied_inter.or(bundled_inter).ok_or_else(|| CertificatesRejected::Missing {
        role: inter_role,
        detail: "the simulated root has no bundled intermediate; include it in the certificate table".into(),
    })?;

    let ark = parse_cert(&root.ark, CertRole::Ark)?;
    let inter = parse_cert(inter_der, inter_role)?;
    check_ca(&ark, CertRole::Ark)?;
    check_ca(&inter, inter_role)?;
    verify_signed_by(&root.ark, CertRole::Ark, &root.ark, CertRole::Ark)?;
    verify_signed_by(inter_der, inter_role, &root.ark, CertRole::Ark)?;
    verify_signed_by(vek_der, vek_role, inter_der, inter_role)?;

    // Only a key the chain vouches for is parsed for use.
    let spki = vek.public_key();
    if !is_p384(spki) {
        return Err(malformed(vek_role, "public key is not ECDSA P-384"));
    }
    let vek_key = ParsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, &spki.subject_public_key.data)
        .map_err(|e| malformed(vek_role, format!("public key rejected: {e}")))?;

    let windows = vec![
        Window::of(&ark, CertRole::Ark),
        Window::of(&inter, inter_role),
        Window::of(&vek, vek_role),
    ];
    for w in &windows {
        w.check(now)?;
    }

    check_crls(&certs.crls, &ark, &inter, inter_role, &vek, vek_role, now)?;

    Ok(VerifiedChain {
        generation: root.generation,
        signer,
        vek: vek_info,
        vek_fingerprint: sha256(vek_der),
        simulated: root.simulated,
        windows,
        vek_key: Arc::new(vek_key),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::certs::certs_from_pem_or_der;

    const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/snp-real/");

    fn read(p: &str) -> Vec<u8> {
        std::fs::read(format!("{FIX}{p}")).expect("fixture")
    }

    fn at(s: &str) -> OffsetDateTime {
        OffsetDateTime::parse(s, &::time::format_description::well_known::Rfc3339).unwrap()
    }

    fn milan_set() -> CertSet {
        CertSet {
            vcek: Some(read("virtee-milan-v2/vcek.der")),
            ..CertSet::default()
        }
    }

    #[test]
    fn milan_chain_from_bundled_roots() {
        let c = verify_chain(
            &TrustStore::amd(),
            Generation::Milan,
            SignerKind::Vcek,
            &milan_set(),
            at("2026-11-26T00:00:00Z"),
        )
        .unwrap();
        assert_eq!(c.generation, Generation::Milan);
        assert!(!c.simulated);
        assert!(c.check_validity(at("2031-01-01T00:00:00Z")).is_err());
    }

    #[test]
    fn wrong_generation_bundled_ask_fails_signature() {
        let e = verify_chain(
            &TrustStore::amd(),
            Generation::Genoa,
            SignerKind::Vcek,
            &milan_set(),
            at("2026-11-26T00:00:00Z"),
        )
        .unwrap_err();
        assert_eq!(e.reason_code(), "EVIDENCE_CHAIN_SIGNATURE");
    }

    #[test]
    fn root_selection() {
        let store = TrustStore::amd();
        let genoa_ark = certs_from_pem_or_der(&read("oak-genoa-v5/ark.pem")).remove(0);
        let mut s = milan_set();
        s.ark = Some(genoa_ark);
        let e = verify_chain(
            &store,
            Generation::Milan,
            SignerKind::Vcek,
            &s,
            at("2026-11-26T00:00:00Z"),
        )
        .unwrap_err();
        assert_eq!(e.reason_code(), "EVIDENCE_ARK_MISMATCH");
        // The VCEK presented as an ARK: a root that is neither pinned nor AMD-named.
        s.ark = Some(read("virtee-milan-v2/vcek.der"));
        let e = verify_chain(
            &store,
            Generation::Milan,
            SignerKind::Vcek,
            &s,
            at("2026-11-26T00:00:00Z"),
        )
        .unwrap_err();
        assert_eq!(e.reason_code(), "EVIDENCE_UNTRUSTED_ROOT");
    }

    #[test]
    fn simulated_root_must_be_self_signed() {
        let ask = certs_from_pem_or_der(&read("oak-genoa-v5/ask.pem")).remove(0);
        assert!(TrustStore::amd()
            .with_simulated_root(Generation::Genoa, &ask)
            .is_err());
        let ark = read("oak-genoa-v5/ark.pem");
        assert!(
            TrustStore::amd()
                .with_simulated_root(Generation::Genoa, &ark)
                .is_err(),
            "AMD ARK is not a simulated root"
        );
        assert!(!TrustStore::amd().trusts_simulated());
    }

    #[test]
    fn cache_is_bounded() {
        let c = verify_chain(
            &TrustStore::amd(),
            Generation::Milan,
            SignerKind::Vcek,
            &milan_set(),
            at("2026-11-26T00:00:00Z"),
        )
        .unwrap();
        let cache = ChainCache::new(2);
        for i in 0..5u8 {
            cache.insert([i; 32], c.clone());
        }
        assert_eq!(cache.len(), 2);
        let k1 = ChainCache::key(Some(Generation::Milan), SignerKind::Vcek, &milan_set());
        let k2 = ChainCache::key(Some(Generation::Genoa), SignerKind::Vcek, &milan_set());
        let k3 = ChainCache::key(Some(Generation::Milan), SignerKind::Vlek, &milan_set());
        assert!(k1 != k2 && k1 != k3 && k2 != k3);
        assert!(ChainCache::new(0).get(&k1).is_none());
    }

    #[test]
    fn malformed_crl_is_refused() {
        let mut s = milan_set();
        s.crls = vec![b"garbage".to_vec()];
        let e = verify_chain(
            &TrustStore::amd(),
            Generation::Milan,
            SignerKind::Vcek,
            &s,
            at("2026-11-26T00:00:00Z"),
        )
        .unwrap_err();
        assert_eq!(e.reason_code(), "EVIDENCE_CERT_MALFORMED");
    }
}
