//! `broker certs import`'s work, as a library: read certificates and CRLs
//! (PEM or DER), classify each, verify it against the pinned ARKs and store
//! what verifies in the certificate cache. No I/O but the cache's.
//!
//! Order within one import, so that one batch can carry a whole chain and
//! its CRLs: CRLs issued by an ARK; ASKs/ASVKs (checked against those CRLs
//! and the cached ones); CRLs issued by an ASK/ASVK; VCEKs/VLEKs (full chain
//! with every CRL, as the verifier runs it). ARKs are pinned, never stored.

use std::path::PathBuf;

use time::OffsetDateTime;
use x509_parser::prelude::FromDer as _;

use super::cache::{gen_dir, vek_tcb_key, CertCache, GENERATIONS};
use crate::verify::{
    check_crl_for_import, classify, parse_cert, parse_crl, subject_cn, verify_chain, CertRole,
    CertSet, ChainRejected, CrlInfo, EvidenceRejected, IssuingRoot, SignerKind, TrustStore,
    VekInfo,
};

/// Whether an input is a certificate or a CRL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemKind {
    /// An X.509 certificate.
    Cert,
    /// An X.509 CRL.
    Crl,
}

/// One certificate or CRL read from a file.
#[derive(Debug, Clone)]
pub struct Item {
    /// The file (and block number in a PEM bundle) it came from.
    pub origin: String,
    /// Certificate or CRL.
    pub kind: ItemKind,
    /// DER.
    pub der: Vec<u8>,
}

/// A file that holds no certificate or CRL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotCertificates {
    /// PEM, but with no block of a label this reads.
    #[error("a PEM file without a CERTIFICATE or X509 CRL block")]
    NoPemBlock,
    /// Neither PEM nor one DER certificate or CRL.
    #[error("not a certificate or CRL (neither PEM nor DER X.509)")]
    Unrecognized,
}

/// The items of one file: every `CERTIFICATE` and `X509 CRL` block of a PEM
/// file, or one DER certificate or CRL.
pub fn items_from_file(origin: &str, data: &[u8]) -> Result<Vec<Item>, NotCertificates> {
    if data.windows(11).any(|w| w == b"-----BEGIN ") {
        let mut out = Vec::new();
        for (label, kind) in [("CERTIFICATE", ItemKind::Cert), ("X509 CRL", ItemKind::Crl)] {
            for der in crate::verify::pem_blocks(data, label) {
                out.push(Item {
                    origin: String::new(),
                    kind,
                    der,
                });
            }
        }
        if out.is_empty() {
            return Err(NotCertificates::NoPemBlock);
        }
        let n = out.len();
        for (i, item) in out.iter_mut().enumerate() {
            item.origin = if n == 1 {
                origin.to_owned()
            } else {
                format!("{origin} (block {})", i + 1)
            };
        }
        return Ok(out);
    }
    if let Ok(([], _)) = x509_parser::certificate::X509Certificate::from_der(data) {
        return Ok(vec![Item {
            origin: origin.to_owned(),
            kind: ItemKind::Cert,
            der: data.to_vec(),
        }]);
    }
    if parse_crl(data).is_ok() {
        return Ok(vec![Item {
            origin: origin.to_owned(),
            kind: ItemKind::Crl,
            der: data.to_vec(),
        }]);
    }
    Err(NotCertificates::Unrecognized)
}

/// What one item became.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    /// Where it came from.
    pub origin: String,
    /// What it is, e.g. `VCEK milan hwid d495… tcb 0300000000000873`.
    pub what: String,
    /// Where it was stored (`None` for a pinned ARK, which is not stored).
    pub path: Option<PathBuf>,
}

/// Why one item was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// Where it came from.
    pub origin: String,
    /// What failed and what to do.
    pub reason: String,
}

fn describe_root(root: &IssuingRoot) -> String {
    gen_dir(root.generation, root.simulated)
}

/// Checks a CRL for storing: issued by a trusted ARK, or by an ASK/ASVK
/// (from `extra`, the bundled ones or the cache) that chains to one; its
/// signature verifies; it is not past its nextUpdate at `now`. Returns the
/// root, the issuer's role and the CRL's dates.
pub fn validate_crl(
    store: &TrustStore,
    cache: &CertCache,
    der: &[u8],
    extra: &[(CertRole, Vec<u8>)],
    now: OffsetDateTime,
) -> Result<(IssuingRoot, CertRole, CrlInfo), EvidenceRejected> {
    if let Some(root) = store.root_issuing_crl(der) {
        let info = check_crl_for_import(der, &root.ark, CertRole::Ark, now)?;
        return Ok((root, CertRole::Ark, info));
    }
    let crl = parse_crl(der)?;
    let issuer = crl.issuer().as_raw().to_vec();
    let mut candidates: Vec<(CertRole, Vec<u8>)> = extra.to_vec();
    candidates.extend(
        store
            .bundled_intermediates()
            .into_iter()
            .map(|(role, d, _)| (role, d)),
    );
    for g in GENERATIONS {
        for sim in [false, true] {
            for role in [CertRole::Ask, CertRole::Asvk] {
                if let Some(d) = cache.intermediate(g, sim, role) {
                    candidates.push((role, d));
                }
            }
        }
    }
    for (role, inter) in &candidates {
        let Ok(cert) = parse_cert(inter, *role) else {
            continue;
        };
        if cert.subject().as_raw() != issuer.as_slice() {
            continue;
        }
        let root = store.verify_intermediate(inter, *role, &[], now)?;
        let info = check_crl_for_import(der, inter, *role, now)?;
        return Ok((root, *role, info));
    }
    Err(ChainRejected::CrlInvalid {
        detail: format!(
            "issued by \"{}\", which is neither a pinned ARK (with a matching signature) nor an ASK/ASVK that chains to one",
            crl.issuer()
        ),
    }
    .into())
}

fn refuse(origin: &str, e: &EvidenceRejected) -> Refused {
    Refused {
        origin: origin.to_owned(),
        reason: format!("{e} [{}]", e.reason_code()),
    }
}

/// Imports `items` into `cache`, verifying each against `store` at `now`.
/// One result per item, in input order.
pub fn import(
    cache: &CertCache,
    store: &TrustStore,
    items: &[Item],
    now: OffsetDateTime,
) -> Vec<Result<Imported, Refused>> {
    let mut results: Vec<Option<Result<Imported, Refused>>> = vec![None; items.len()];
    let mut accepted_crls: Vec<Vec<u8>> = Vec::new();
    let mut accepted_inters: Vec<(CertRole, Vec<u8>, IssuingRoot)> = Vec::new();
    let store_file =
        |path: PathBuf, data: &[u8], origin: &str, what: String| match cache.write(&path, data) {
            Ok(()) => Ok(Imported {
                origin: origin.to_owned(),
                what,
                path: Some(path),
            }),
            Err(e) => Err(Refused {
                origin: origin.to_owned(),
                reason: format!(
                    "cannot write {}: {e}; check that the certificate cache is writable",
                    path.display()
                ),
            }),
        };
    let store_crl = |i: usize,
                     root: IssuingRoot,
                     issuer: CertRole,
                     info: CrlInfo,
                     accepted: &mut Vec<Vec<u8>>| {
        let item = &items[i];
        let path = cache.crl_path(root.generation, root.simulated, issuer);
        if let Some(held) = cache.read(&path) {
            if let Ok(h) = parse_crl(&held) {
                if h.last_update().to_datetime() > info.this_update {
                    return Err(Refused {
                        origin: item.origin.clone(),
                        reason: format!(
                            "CRL is older than the one held in {} (thisUpdate {} < {}); nothing to do",
                            path.display(),
                            info.this_update,
                            h.last_update().to_datetime()
                        ),
                    });
                }
            }
        }
        accepted.push(item.der.clone());
        store_file(
            path,
            &item.der,
            &item.origin,
            format!(
                "CRL {} issued by the {issuer}, {} revoked, next update {}",
                describe_root(&root),
                info.revoked,
                info.next_update
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| "none".into())
            ),
        )
    };

    // Cached CRLs apply to everything imported.
    let mut held_crls: Vec<Vec<u8>> = Vec::new();
    for g in GENERATIONS {
        for sim in [false, true] {
            held_crls.extend(cache.crls(g, sim));
        }
    }

    // 1. CRLs issued by a root.
    for (i, item) in items.iter().enumerate() {
        if item.kind != ItemKind::Crl {
            continue;
        }
        if store.root_issuing_crl(&item.der).is_none() {
            continue;
        }
        results[i] = Some(
            validate_crl(store, cache, &item.der, &[], now)
                .map_err(|e| refuse(&item.origin, &e))
                .and_then(|(root, issuer, info)| {
                    store_crl(i, root, issuer, info, &mut accepted_crls)
                }),
        );
    }

    // 2. ARKs (pinned, not stored) and intermediates.
    let roles: Vec<Option<CertRole>> = items
        .iter()
        .map(|it| match it.kind {
            ItemKind::Cert => classify(&it.der),
            ItemKind::Crl => Some(CertRole::Crl),
        })
        .collect();
    for (i, item) in items.iter().enumerate() {
        let r = match roles[i] {
            Some(CertRole::Ark) => Some(match store.is_root(&item.der) {
                Some(root) => Ok(Imported {
                    origin: item.origin.clone(),
                    what: format!(
                        "ARK {} (pinned; nothing to store)",
                        describe_root(&root)
                    ),
                    path: None,
                }),
                None => Err(Refused {
                    origin: item.origin.clone(),
                    reason: format!(
                        "an ARK that is not pinned (CN {:?}): only AMD's ARKs and a configured simulated root are trusted; nothing imported",
                        subject_cn(&item.der).unwrap_or_default()
                    ),
                }),
            }),
            Some(role @ (CertRole::Ask | CertRole::Asvk)) => {
                let crls: Vec<Vec<u8>> = accepted_crls.iter().chain(&held_crls).cloned().collect();
                Some(
                    store
                        .verify_intermediate(&item.der, role, &crls, now)
                        .map_err(|e| refuse(&item.origin, &e))
                        .and_then(|root| {
                            accepted_inters.push((role, item.der.clone(), root.clone()));
                            let mut pem = super::pem_encode("CERTIFICATE", &item.der);
                            pem.push_str(&super::pem_encode("CERTIFICATE", &root.ark));
                            store_file(
                                cache.chain_path(root.generation, root.simulated, role),
                                pem.as_bytes(),
                                &item.origin,
                                format!("{role} {}", describe_root(&root)),
                            )
                        }),
                )
            }
            None if item.kind == ItemKind::Cert => Some(Err(Refused {
                origin: item.origin.clone(),
                reason: format!(
                    "not an AMD ARK, ASK, ASVK, VCEK or VLEK (subject CN {:?})",
                    subject_cn(&item.der).unwrap_or_default()
                ),
            })),
            _ => None,
        };
        if r.is_some() {
            results[i] = r;
        }
    }

    // 3. CRLs issued by an intermediate.
    let extra: Vec<(CertRole, Vec<u8>)> = accepted_inters
        .iter()
        .map(|(r, d, _)| (*r, d.clone()))
        .collect();
    for (i, item) in items.iter().enumerate() {
        if item.kind != ItemKind::Crl || results[i].is_some() {
            continue;
        }
        results[i] = Some(
            validate_crl(store, cache, &item.der, &extra, now)
                .map_err(|e| refuse(&item.origin, &e))
                .and_then(|(root, issuer, info)| {
                    store_crl(i, root, issuer, info, &mut accepted_crls)
                }),
        );
    }

    // 4. VEKs.
    for (i, item) in items.iter().enumerate() {
        let role = match roles[i] {
            Some(r @ (CertRole::Vcek | CertRole::Vlek)) => r,
            _ => continue,
        };
        results[i] = Some(
            import_vek(
                cache,
                store,
                item,
                role,
                &accepted_inters,
                &accepted_crls,
                &held_crls,
                now,
            )
            .and_then(|(path, what)| store_file(path, &item.der, &item.origin, what)),
        );
    }

    results
        .into_iter()
        .zip(items)
        .map(|(r, item)| {
            r.unwrap_or_else(|| {
                Err(Refused {
                    origin: item.origin.clone(),
                    reason: "not recognised".into(),
                })
            })
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn import_vek(
    cache: &CertCache,
    store: &TrustStore,
    item: &Item,
    role: CertRole,
    inters: &[(CertRole, Vec<u8>, IssuingRoot)],
    crls: &[Vec<u8>],
    held_crls: &[Vec<u8>],
    now: OffsetDateTime,
) -> Result<(PathBuf, String), Refused> {
    let fail = |e: EvidenceRejected| refuse(&item.origin, &e);
    let info = VekInfo::from_der(&item.der, role).map_err(fail)?;
    let g = info.generation.ok_or_else(|| Refused {
        origin: item.origin.clone(),
        reason: format!(
            "{role} productName {:?} names no known generation (Milan, Genoa, Turin)",
            info.product_name
        ),
    })?;
    let (signer, inter_role) = match info.kind {
        SignerKind::Vcek => (SignerKind::Vcek, CertRole::Ask),
        SignerKind::Vlek => (SignerKind::Vlek, CertRole::Asvk),
    };
    // Candidate intermediates: this batch's, the cache's, then the bundled one
    // (an empty slot in `verify_chain`).
    let mut candidates: Vec<Option<Vec<u8>>> = inters
        .iter()
        .filter(|(r, _, root)| *r == inter_role && root.generation == g)
        .map(|(_, d, _)| Some(d.clone()))
        .collect();
    for sim in [false, true] {
        if let Some(d) = cache.intermediate(g, sim, inter_role) {
            candidates.push(Some(d));
        }
    }
    candidates.push(None);
    let all_crls: Vec<Vec<u8>> = crls.iter().chain(held_crls).cloned().collect();
    let mut first_err = None;
    let mut chain = None;
    for inter in candidates {
        let mut set = CertSet {
            crls: all_crls.clone(),
            ..CertSet::default()
        };
        match signer {
            SignerKind::Vcek => {
                set.vcek = Some(item.der.clone());
                set.ask = inter;
            }
            SignerKind::Vlek => {
                set.vlek = Some(item.der.clone());
                set.asvk = inter;
            }
        }
        match verify_chain(store, g, signer, &set, now) {
            Ok(c) => {
                chain = Some(c);
                break;
            }
            Err(e) => {
                // A revocation or expiry is the answer, whatever the intermediate.
                let decisive = matches!(
                    e.reason_code(),
                    "EVIDENCE_CERT_REVOKED"
                        | "EVIDENCE_CERT_EXPIRED"
                        | "EVIDENCE_CERT_NOT_YET_VALID"
                );
                if first_err.is_none() || decisive {
                    first_err = Some(e);
                }
                if decisive {
                    break;
                }
            }
        }
    }
    let chain = match chain {
        Some(c) => c,
        None => {
            let e = first_err.unwrap_or_else(|| {
                crate::verify::CertificatesRejected::Missing {
                    role: inter_role,
                    detail: "no intermediate".into(),
                }
                .into()
            });
            let mut r = fail(e);
            if r.reason.contains("EVIDENCE_CHAIN_SIGNATURE")
                || r.reason.contains("EVIDENCE_CERT_MISSING")
            {
                r.reason.push_str(&format!(
                    "; it does not chain to the pinned {g} ARK: import its {inter_role} with it (e.g. KDS's cert_chain)"
                ));
            }
            return Err(r);
        }
    };
    let tcb = vek_tcb_key(g, &info);
    match signer {
        SignerKind::Vcek => {
            let hwid = info.hwid.clone().ok_or_else(|| Refused {
                origin: item.origin.clone(),
                reason: "VCEK without a hwID extension".into(),
            })?;
            Ok((
                cache.vcek_path(g, chain.simulated, &hwid, tcb),
                format!(
                    "VCEK {} hwid {} tcb {}",
                    gen_dir(g, chain.simulated),
                    hex::encode(&hwid),
                    hex::encode(tcb)
                ),
            ))
        }
        SignerKind::Vlek => Ok((
            cache.vlek_path(g, chain.simulated, tcb),
            format!(
                "VLEK {} tcb {} csp {}",
                gen_dir(g, chain.simulated),
                hex::encode(tcb),
                info.csp_id.as_deref().unwrap_or("?")
            ),
        )),
    }
}
