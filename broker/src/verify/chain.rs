//! The certificate chain ARK → ASK (or ASVK) → VEK, and the roots it may end in.
//!
//! [`TrustStore`] holds the pinned AMD roots (and, only when told so
//! explicitly, one simulated root per generation). [`verify_chain`] picks the
//! root for the report's generation, checks every signature (RSA-PSS
//! SHA-384 as AMD signs, or ECDSA P-384 SHA-384), key usage, validity at the
//! caller's time and the ARK's CRL when one is held. [`ChainCache`] remembers
//! verified chains so the hot path only re-checks validity times.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ::time::OffsetDateTime;
use aws_lc_rs::digest;
use aws_lc_rs::signature::{self, ParsedPublicKey, UnparsedPublicKey};
use x509_parser::prelude::*;
use x509_parser::signature_algorithm::SignatureAlgorithm;

use super::amd;
use super::certs::{cn_of, parse_cert, CertSet, VekInfo};
use super::claims::{Generation, SignerKind};
use super::error::{malformed, CertRole, CertificatesRejected, ChainRejected, EvidenceRejected};

const OID_SHA384: &str = "2.16.840.1.101.3.4.2.2";
const OID_MGF1: &str = "1.2.840.113549.1.1.8";
const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_SECP384R1: &str = "1.3.132.0.34";
const OID_RSA_ENCRYPTION: &str = "1.2.840.113549.1.1.1";
const OID_ECDSA_SHA384: &str = "1.2.840.10045.4.3.3";

/// Subject CN prefix of a simulated platform's root.
pub const SIMULATED_ARK_PREFIX: &str = "ARK-Sim";

fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, data).as_ref());
    out
}

fn describe(der: &[u8]) -> String {
    let cn = super::certs::subject_cn(der).unwrap_or_else(|| "?".into());
    format!("CN={cn}, SHA-256 {}", hex::encode(sha256(der)))
}

#[derive(Clone, Debug)]
struct Root {
    generation: Generation,
    ark: Vec<u8>,
    ask: Option<Vec<u8>>,
    asvk: Option<Vec<u8>>,
    simulated: bool,
}

/// The roots a verifier trusts: AMD's pinned ARKs (with bundled ASKs and
/// ASVKs) and, only if configured, simulated roots.
#[derive(Clone, Debug)]
pub struct TrustStore {
    roots: Vec<Root>,
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
        let der = super::certs::certs_from_pem_or_der(ark)
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

    fn pinned(&self, g: Generation) -> Option<&Root> {
        self.roots
            .iter()
            .find(|r| !r.simulated && r.generation == g)
    }

    fn simulated(&self, g: Generation) -> Option<&Root> {
        self.roots.iter().find(|r| r.simulated && r.generation == g)
    }
}

/// Checks that the certificate `subject_der` is signed by the key of
/// `issuer_der` (RSA-PSS SHA-384 with MGF1-SHA-384 and a 48-byte salt, or
/// ECDSA P-384 SHA-384) and that the names chain.
pub fn verify_signed_by(
    subject_der: &[u8],
    subject: CertRole,
    issuer_der: &[u8],
    issuer: CertRole,
) -> Result<(), EvidenceRejected> {
    let s = parse_cert(subject_der, subject)?;
    let i = parse_cert(issuer_der, issuer)?;
    let fail = |detail: String| -> EvidenceRejected {
        ChainRejected::Signature {
            subject,
            issuer,
            detail,
        }
        .into()
    };
    if s.issuer().as_raw() != i.subject().as_raw() {
        return Err(fail(format!(
            "its issuer is \"{}\" but the {issuer} is \"{}\"",
            s.issuer(),
            i.subject()
        )));
    }
    if s.signature_algorithm != s.tbs_certificate.signature {
        return Err(malformed(
            subject,
            "outer and inner signature algorithms differ",
        ));
    }
    verify_raw(
        s.tbs_certificate.as_ref(),
        &s.signature_algorithm,
        &s.signature_value.data,
        i.public_key(),
    )
    .map_err(fail)
}

/// Verifies `sig` over `msg` with `spki` under the algorithm `alg`.
fn verify_raw(
    msg: &[u8],
    alg: &AlgorithmIdentifier<'_>,
    sig: &[u8],
    spki: &SubjectPublicKeyInfo<'_>,
) -> Result<(), String> {
    let key_alg = spki.algorithm.algorithm.to_id_string();
    let key = &spki.subject_public_key.data;
    match SignatureAlgorithm::try_from(alg) {
        Ok(SignatureAlgorithm::RSASSA_PSS(p)) => {
            if key_alg != OID_RSA_ENCRYPTION {
                return Err(format!("RSA-PSS signature but the issuer key is {key_alg}"));
            }
            let mgf = p
                .mask_gen_algorithm()
                .map_err(|e| format!("bad PSS parameters: {e}"))?;
            if p.hash_algorithm_oid().to_id_string() != OID_SHA384
                || mgf.mgf.to_id_string() != OID_MGF1
                || mgf.hash.to_id_string() != OID_SHA384
                || p.salt_length() != 48
                || p.trailer_field() != 1
            {
                return Err("RSA-PSS parameters are not SHA-384/MGF1-SHA-384/salt 48".into());
            }
            UnparsedPublicKey::new(&signature::RSA_PSS_2048_8192_SHA384, key)
                .verify(msg, sig)
                .map_err(|_| "RSA-PSS SHA-384 signature does not verify".to_string())
        }
        Ok(SignatureAlgorithm::ECDSA) if alg.algorithm.to_id_string() == OID_ECDSA_SHA384 => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string());
            if key_alg != OID_EC_PUBLIC_KEY || curve.as_deref() != Some(OID_SECP384R1) {
                return Err("ECDSA-SHA384 signature but the issuer key is not P-384".into());
            }
            UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_ASN1, key)
                .verify(msg, sig)
                .map_err(|_| "ECDSA P-384 SHA-384 signature does not verify".to_string())
        }
        _ => Err(format!(
            "unsupported signature algorithm {} (expected RSA-PSS SHA-384 or ECDSA P-384 SHA-384)",
            alg.algorithm.to_id_string()
        )),
    }
}

/// An issuer must be a CA and allowed to sign certificates, where it says.
fn check_ca(cert: &X509Certificate<'_>, role: CertRole) -> Result<(), EvidenceRejected> {
    let usage = |detail: &str| -> EvidenceRejected {
        ChainRejected::KeyUsage {
            role,
            detail: detail.into(),
        }
        .into()
    };
    match cert.basic_constraints() {
        Ok(Some(bc)) if !bc.value.ca => return Err(usage("basicConstraints says it is not a CA")),
        Ok(_) => {}
        Err(e) => return Err(malformed(role, format!("basicConstraints: {e}"))),
    }
    match cert.key_usage() {
        Ok(Some(ku)) if !ku.value.key_cert_sign() => Err(usage("keyUsage lacks keyCertSign")),
        Ok(_) => Ok(()),
        Err(e) => Err(malformed(role, format!("keyUsage: {e}"))),
    }
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
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .map(|o| o.to_id_string());
    if spki.algorithm.algorithm.to_id_string() != OID_EC_PUBLIC_KEY
        || curve.as_deref() != Some(OID_SECP384R1)
    {
        return Err(malformed(vek_role, "public key is not ECDSA P-384"));
    }
    let vek_key = ParsedPublicKey::new(
        &signature::ECDSA_P384_SHA384_FIXED,
        &spki.subject_public_key.data,
    )
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

/// Parses one DER CRL; trailing bytes are refused.
pub fn parse_crl(der: &[u8]) -> Result<CertificateRevocationList<'_>, EvidenceRejected> {
    match CertificateRevocationList::from_der(der) {
        Ok(([], crl)) => Ok(crl),
        Ok(_) => Err(malformed(CertRole::Crl, "trailing bytes after the CRL")),
        Err(e) => Err(malformed(
            CertRole::Crl,
            format!("not a DER X.509 CRL: {e}"),
        )),
    }
}

/// Verifies a CRL's signature with `issuer`'s key (the names must chain).
fn verify_crl_signature(
    crl: &CertificateRevocationList<'_>,
    issuer: &X509Certificate<'_>,
) -> Result<(), EvidenceRejected> {
    if crl.issuer().as_raw() != issuer.subject().as_raw() {
        return Err(ChainRejected::CrlInvalid {
            detail: format!(
                "its issuer is \"{}\" but the certificate is \"{}\"",
                crl.issuer(),
                issuer.subject()
            ),
        }
        .into());
    }
    if crl.signature_algorithm != crl.tbs_cert_list.signature {
        return Err(ChainRejected::CrlInvalid {
            detail: "outer and inner signature algorithms differ".into(),
        }
        .into());
    }
    verify_raw(
        crl.tbs_cert_list.as_ref(),
        &crl.signature_algorithm,
        &crl.signature_value.data,
        issuer.public_key(),
    )
    .map_err(|detail| ChainRejected::CrlInvalid { detail }.into())
}

/// What a CRL that verified under its issuer says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrlInfo {
    /// thisUpdate.
    pub this_update: OffsetDateTime,
    /// nextUpdate, when the CRL names one.
    pub next_update: Option<OffsetDateTime>,
    /// Number of revoked serials.
    pub revoked: usize,
}

/// Checks a CRL for import or after a fetch: it must parse, verify under
/// `issuer_der` (the ARK or an ASK/ASVK), be issued no later than `now` and
/// not be past its nextUpdate.
pub fn check_crl_for_import(
    crl_der: &[u8],
    issuer_der: &[u8],
    issuer_role: CertRole,
    now: OffsetDateTime,
) -> Result<CrlInfo, EvidenceRejected> {
    let crl = parse_crl(crl_der)?;
    let issuer = parse_cert(issuer_der, issuer_role)?;
    verify_crl_signature(&crl, &issuer)?;
    let this_update = crl.last_update().to_datetime();
    let next_update = crl.next_update().map(|t| t.to_datetime());
    let fmt = |t: OffsetDateTime| {
        t.format(&::time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| t.to_string())
    };
    if this_update > now {
        return Err(ChainRejected::CrlInvalid {
            detail: format!(
                "thisUpdate {} is after the verification time {}; check the clock",
                fmt(this_update),
                fmt(now)
            ),
        }
        .into());
    }
    if let Some(next) = next_update.filter(|n| *n < now) {
        return Err(ChainRejected::CrlInvalid {
            detail: format!(
                "it is stale: nextUpdate {} is before the verification time {}",
                fmt(next),
                fmt(now)
            ),
        }
        .into());
    }
    Ok(CrlInfo {
        this_update,
        next_update,
        revoked: crl.iter_revoked_certificates().count(),
    })
}

/// Applies every held CRL that speaks for this chain: one issued by the ARK
/// must verify under it and must not list the intermediate (ASK/ASVK); one
/// issued by the intermediate must verify under it and must not list the
/// VEK. CRLs issued by anything else do not apply and are ignored. A CRL
/// past its nextUpdate is still applied (a revocation is never forgotten)
/// and logged; `broker certs import` and the KDS source refuse stale CRLs.
/// (AMD's VCEKs all have serial 0, so an intermediate's CRL naming 0 would
/// revoke every VCEK it issued: X.509 semantics, applied as written.)
fn check_crls(
    crls: &[Vec<u8>],
    ark: &X509Certificate<'_>,
    inter: &X509Certificate<'_>,
    inter_role: CertRole,
    vek: &X509Certificate<'_>,
    vek_role: CertRole,
    now: OffsetDateTime,
) -> Result<(), EvidenceRejected> {
    for der in crls {
        let crl = parse_crl(der)?;
        let (issuer, subject, subject_role) = if crl.issuer().as_raw() == ark.subject().as_raw() {
            (ark, inter, inter_role)
        } else if crl.issuer().as_raw() == inter.subject().as_raw() {
            (inter, vek, vek_role)
        } else {
            continue;
        };
        verify_crl_signature(&crl, issuer)?;
        let serial = subject.raw_serial();
        if crl
            .iter_revoked_certificates()
            .any(|r| r.raw_serial() == serial)
        {
            return Err(ChainRejected::Revoked {
                role: subject_role,
                serial: hex::encode(serial),
            }
            .into());
        }
        if let Some(next) = crl.next_update().map(|t| t.to_datetime()) {
            if next < now {
                tracing::warn!(
                    issuer = %crl.issuer(),
                    next_update = %next,
                    "a held CRL is past its nextUpdate; it is still applied: import or fetch a current one"
                );
            }
        }
    }
    Ok(())
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

/// Bounded, thread-safe cache of verified chains, keyed by the SHA-256 of
/// the report generation, the signer kind and every supplied certificate
/// (VEK, intermediate, ARK, CRLs).
#[derive(Debug)]
pub struct ChainCache {
    capacity: usize,
    map: Mutex<HashMap<[u8; 32], VerifiedChain>>,
}

impl ChainCache {
    /// A cache holding at most `capacity` chains (0 disables caching).
    pub fn new(capacity: usize) -> Self {
        ChainCache {
            capacity,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// The cache key for one verification's inputs.
    pub fn key(generation: Option<Generation>, signer: SignerKind, certs: &CertSet) -> [u8; 32] {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(b"keybroker chain cache v1");
        ctx.update(&[generation.map_or(0, |g| g as u8 + 1), signer as u8]);
        let crls = certs.crls.iter().map(|c| Some(c.as_slice()));
        for part in [
            certs.vek(signer),
            certs.intermediate(signer),
            certs.ark.as_deref(),
        ]
        .into_iter()
        .chain(crls)
        {
            match part {
                Some(p) => {
                    ctx.update(&[1]);
                    ctx.update(&(p.len() as u64).to_le_bytes());
                    ctx.update(p);
                }
                None => ctx.update(&[0]),
            }
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }

    /// The cached chain for `key`, if any.
    pub fn get(&self, key: &[u8; 32]) -> Option<VerifiedChain> {
        self.map.lock().ok()?.get(key).cloned()
    }

    /// Stores a verified chain, evicting an arbitrary entry when full.
    pub fn insert(&self, key: [u8; 32], chain: VerifiedChain) {
        if self.capacity == 0 {
            return;
        }
        if let Ok(mut m) = self.map.lock() {
            if m.len() >= self.capacity && !m.contains_key(&key) {
                if let Some(k) = m.keys().next().copied() {
                    m.remove(&k);
                }
            }
            m.insert(key, chain);
        }
    }

    /// Number of cached chains.
    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }
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
