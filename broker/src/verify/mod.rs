//! SEV-SNP evidence verification: design.md step 4, every check.
//!
//! [`Verifier::verify`] runs, in this order, and refuses on the first
//! failure: the report parses (exact length, version 2/3/5, ECDSA P-384);
//! the chain (ARK equals the pinned AMD ARK of the report's generation,
//! ARK → ASK or ASVK → VEK signatures, validity at the given time, the ARK's
//! CRL where one is held); the VEK binds to the report (signing-key kind,
//! hwID = chip_id, TCB extensions = reported_tcb); the report signature over
//! the raw bytes 0x000..0x2A0. The result is a [`VerifiedReport`], which
//! [`VerifiedReport::bind`] turns into a [`BoundReport`] once REPORT_DATA
//! equals the transcript hash. Only this module can construct either, so key
//! release cannot be written against unverified evidence.
//!
//! Certificates the guest's table lacks come from the offline directory
//! (`certs_dir`, re-read only when it changes) and then from each
//! [`CertSource`] given with [`Verifier::with_source`] (the certificate
//! cache and AMD KDS, in `crate::certsource`), in that order.
//!
//! Evidence of every kind ([`Evidence`]: a bare report, or Azure's HCL
//! report and vTPM quote) goes through [`Verifier::verify_evidence`] and
//! [`VerifiedEvidence::bind`] to a [`BoundEvidence`], what key release
//! takes (`evidence`).
//!
//! Modules by concern: `report` (framing, decoding), `certs` (certificate
//! table, offline directory, AMD extensions), `chain` (roots, signatures,
//! validity, CRL, cache), `amd` (pinned certificates), `evidence` (the
//! evidence kinds and their proofs), `error`.

mod amd;
mod certs;
mod chain;
pub mod claims;
mod error;
mod evidence;
mod report;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use subtle::ConstantTimeEq;
use time::OffsetDateTime;

pub use certs::oid as vek_oids;
pub use certs::{
    build_cert_table, certs_from_pem_or_der, classify, generation_from_product_name, load_cert_dir,
    parse_cert, parse_cert_table, subject_cn, CertDirCache, CertSet, VekInfo, GUID_ARK, GUID_ASK,
    GUID_VCEK, GUID_VLEK,
};
pub use chain::{
    check_crl_for_import, parse_crl, verify_chain, CrlInfo, IssuingRoot, TrustStore, VerifiedChain,
    SIMULATED_ARK_PREFIX,
};
pub use claims::*;
pub use error::{
    BindingRejected, CertRole, CertificatesRejected, ChainRejected, EvidenceRejected,
    ReportRejected, ALL_REASON_CODES, VTPM_REASON_CODES,
};
pub use evidence::{
    AzureVtpmEvidence, BoundEvidence, BoundVtpmReport, Evidence, EvidenceKind, VerifiedEvidence,
    VerifiedHcl, MAX_HCL_REPORT_LEN, MAX_PCR_VALUES, MAX_QUOTE_PART_LEN,
};
pub use report::{
    decode_report, decode_tcb, reserved_ranges, Cpuid, DecodedReport, RawTcbs, REPORT_LEN,
    SIGNED_LEN,
};

use chain::ChainCache;

/// PEM blocks labelled `label` in `data`, decoded (for `X509 CRL` files).
pub fn pem_blocks(data: &[u8], label: &str) -> Vec<Vec<u8>> {
    certs::pem_blocks(data, label)
}

/// What the verifier knows about a report when it asks a [`CertSource`]
/// for the certificates the guest did not send. Nothing here is verified
/// yet: a source only finds certificates, which are then checked like any
/// other.
#[derive(Clone, Copy, Debug)]
pub struct CertQuery<'a> {
    /// Generation from the report's CPUID; `None` for a version 2 report
    /// (Milan or Genoa: a source tries both).
    pub generation: Option<Generation>,
    /// The key the report says signed it.
    pub signer: SignerKind,
    /// CHIP_ID (all zero when MASK_CHIP_ID was set; on Turin only the first
    /// 8 bytes are the hwID).
    pub chip_id: &'a [u8; 64],
    /// REPORTED_TCB, raw: the TCB the VEK was derived for.
    pub reported_tcb: [u8; 8],
    /// The verification time.
    pub now: OffsetDateTime,
}

/// Somewhere the verifier finds certificates the guest did not send: the
/// certificate cache, AMD KDS. Sources are asked in the order they were
/// added, each after the guest's table and the offline directory.
pub trait CertSource: Send + Sync + std::fmt::Debug {
    /// Adds to `certs` what it lacks and this source holds for `query`
    /// (the VEK, intermediates, CRLs). Returns `Ok` when it has nothing; an
    /// error only when it cannot answer now
    /// ([`CertificatesRejected::Unavailable`]) or what it holds is broken.
    fn fill(&self, query: &CertQuery<'_>, certs: &mut CertSet) -> Result<(), EvidenceRejected>;
}

/// Default number of verified chains kept per verifier.
pub const DEFAULT_CHAIN_CACHE: usize = 1024;

/// Verifies attestation reports against a [`TrustStore`].
#[derive(Debug)]
pub struct Verifier {
    store: TrustStore,
    certs_dir: Option<CertDirCache>,
    sources: Vec<Arc<dyn CertSource>>,
    cache: ChainCache,
}

impl Verifier {
    /// A verifier trusting `store`, with an optional offline certificate
    /// directory that fills in certificates the guest's table lacks.
    pub fn new(store: TrustStore, certs_dir: Option<PathBuf>) -> Self {
        Self::with_cache_capacity(store, certs_dir, DEFAULT_CHAIN_CACHE)
    }

    /// As [`Verifier::new`] with a chain cache of `capacity` entries (0 disables it).
    pub fn with_cache_capacity(
        store: TrustStore,
        certs_dir: Option<PathBuf>,
        capacity: usize,
    ) -> Self {
        Verifier {
            store,
            certs_dir: certs_dir.map(CertDirCache::new),
            sources: Vec::new(),
            cache: ChainCache::new(capacity),
        }
    }

    /// Also asks `source` for certificates the guest's table and the
    /// offline directory lack (after the sources added before it).
    pub fn with_source(mut self, source: Arc<dyn CertSource>) -> Self {
        self.sources.push(source);
        self
    }

    /// The trust store in use.
    pub fn trust_store(&self) -> &TrustStore {
        &self.store
    }

    /// Number of verified chains currently cached.
    pub fn cached_chains(&self) -> usize {
        self.cache.len()
    }

    /// Verifies a report. `cert_table` is the extended-report certificate
    /// table (empty when the platform gave none); certificates it lacks come
    /// from `certs_dir_override` (or the verifier's directory), then from
    /// each [`CertSource`], then from the bundled AMD certificates (ASK,
    /// ASVK, ARK only). `now` is the time at which every certificate must be
    /// valid.
    pub fn verify(
        &self,
        report: &[u8],
        cert_table: &[u8],
        certs_dir_override: Option<&Path>,
        now: OffsetDateTime,
    ) -> Result<VerifiedReport, EvidenceRejected> {
        // 1. The report parses.
        let decoded = decode_report(report)?;
        let signer = decoded.signer.ok_or(ReportRejected::Unsigned {
            actual: (decoded.key_info >> 2) & 0x7,
        })?;
        if decoded.key_info & 0b10 != 0 {
            // MASK_CHIP_KEY: the firmware wrote zeros instead of a signature.
            return Err(ReportRejected::Unsigned {
                actual: (decoded.key_info >> 2) & 0x7,
            }
            .into());
        }

        // 2. The chain.
        let mut certs = parse_cert_table(cert_table)?;
        match (certs_dir_override, &self.certs_dir) {
            (Some(dir), _) => certs.fill_from(load_cert_dir(dir)?),
            (None, Some(cached)) => certs.fill_from(cached.load()?),
            (None, None) => {}
        }
        let query = CertQuery {
            generation: decoded.generation,
            signer,
            chip_id: &decoded.chip_id,
            reported_tcb: decoded.tcbs.reported,
            now,
        };
        for source in &self.sources {
            source.fill(&query, &mut certs)?;
        }
        if certs.vek(signer).is_none() {
            let other = match signer {
                SignerKind::Vcek => SignerKind::Vlek,
                SignerKind::Vlek => SignerKind::Vcek,
            };
            if certs.vek(other).is_some() {
                return Err(BindingRejected::SigningKeyMismatch {
                    reported: signer,
                    supplied: other,
                }
                .into());
            }
        }
        let key = ChainCache::key(decoded.generation, signer, &certs);
        let chain = match self.cache.get(&key) {
            Some(c) => {
                c.check_validity(now)?;
                c
            }
            None => {
                let generation = match decoded.generation {
                    Some(g) => g,
                    None => generation_from_vek(&certs, signer)?,
                };
                let c = chain::verify_chain(&self.store, generation, signer, &certs, now)?;
                self.cache.insert(key, c.clone());
                c
            }
        };

        // 3. The VEK binds to the report.
        check_binding(&decoded, signer, &chain)?;

        // 4. The signature over the raw bytes 0x000..0x2A0.
        let sig = decoded
            .signature_fixed()
            .map_err(|e| EvidenceRejected::ReportSignature {
                signer,
                detail: e.to_string(),
            })?;
        chain.verify_report_signature(decoded.signed_bytes(), &sig)?;

        Ok(VerifiedReport {
            claims: decoded.claims_for(chain.generation, signer),
            decoded,
            simulated: chain.simulated,
            vek_fingerprint: chain.vek_fingerprint,
            vek: chain.vek,
            _proof: (),
        })
    }
}

/// A v2 report has no CPUID: the VEK's productName names the generation.
fn generation_from_vek(
    certs: &CertSet,
    signer: SignerKind,
) -> Result<Generation, EvidenceRejected> {
    let role = match signer {
        SignerKind::Vcek => CertRole::Vcek,
        SignerKind::Vlek => CertRole::Vlek,
    };
    let der = certs.vek(signer).ok_or_else(|| CertificatesRejected::Missing {
        role,
        detail: format!(
            "the report is signed by a {role}; include it in the certificate table or put {}.der in the certificate directory",
            role.as_str().to_ascii_lowercase()
        ),
    })?;
    let info = VekInfo::from_der(der, role)?;
    info.generation.ok_or_else(|| {
        ReportRejected::GenerationUnknown {
            detail: format!(
                "version 2 report carries no CPUID and the {role}'s productName is {:?}",
                info.product_name
            ),
        }
        .into()
    })
}

fn check_binding(
    decoded: &DecodedReport,
    signer: SignerKind,
    chain: &VerifiedChain,
) -> Result<(), EvidenceRejected> {
    let vek = &chain.vek;
    if vek.kind != signer {
        return Err(BindingRejected::SigningKeyMismatch {
            reported: signer,
            supplied: vek.kind,
        }
        .into());
    }
    if let (Some(report), Some(cert)) = (decoded.generation, vek.generation) {
        if report != cert {
            return Err(BindingRejected::GenerationMismatch { cert, report }.into());
        }
    }
    let generation = chain.generation;
    if signer == SignerKind::Vcek {
        let role = CertRole::Vcek;
        let hwid = vek
            .hwid
            .as_deref()
            .ok_or_else(|| error::malformed(role, "hwID extension missing"))?;
        let chip = &decoded.chip_id[..];
        let ok = match generation {
            Generation::Milan | Generation::Genoa => hwid.len() == 64 && hwid == chip,
            Generation::Turin => {
                hwid.len() == 8 && hwid == &chip[..8] && chip[8..].iter().all(|&b| b == 0)
            }
        };
        if !ok {
            return Err(BindingRejected::HwidMismatch {
                expected: hex::encode(hwid),
                actual: hex::encode(chip),
            }
            .into());
        }
    }
    let tcb = decode_tcb(decoded.tcbs.reported, generation);
    let mut pairs = vec![
        ("bootloader", vek.bl_spl, tcb.bootloader),
        ("tee", vek.tee_spl, tcb.tee),
        ("snp", vek.snp_spl, tcb.snp),
        ("microcode", vek.ucode_spl, tcb.microcode),
    ];
    if generation == Generation::Turin {
        let role = match signer {
            SignerKind::Vcek => CertRole::Vcek,
            SignerKind::Vlek => CertRole::Vlek,
        };
        let fmc = vek.fmc_spl.ok_or_else(|| {
            error::malformed(
                role,
                "fmcSPL extension (1.3.6.1.4.1.3704.1.3.9) missing on Turin",
            )
        })?;
        pairs.push(("fmc", fmc, tcb.fmc.unwrap_or_default()));
    }
    for (field, expected, actual) in pairs {
        if expected != actual {
            return Err(BindingRejected::TcbMismatch {
                field,
                expected,
                actual,
            }
            .into());
        }
    }
    Ok(())
}

/// A report whose chain, binding and signature verified. Only
/// [`Verifier::verify`] constructs one. REPORT_DATA is not yet checked: key
/// release takes a [`BoundReport`] from [`VerifiedReport::bind`].
#[derive(Debug, Clone)]
pub struct VerifiedReport {
    claims: ReportClaims,
    decoded: DecodedReport,
    simulated: bool,
    vek_fingerprint: [u8; 32],
    vek: VekInfo,
    _proof: (),
}

impl VerifiedReport {
    /// The verified claims.
    pub fn claims(&self) -> &ReportClaims {
        &self.claims
    }

    /// Every decoded field (CPUID, mitigation vectors, raw TCBs, ...).
    pub fn decoded(&self) -> &DecodedReport {
        &self.decoded
    }

    /// The VEK's AMD extensions (productName, SPLs, hwID or csp_id).
    pub fn vek(&self) -> &VekInfo {
        &self.vek
    }

    /// True when the chain ends in a configured simulated root.
    pub fn is_simulated(&self) -> bool {
        self.simulated
    }

    /// SHA-256 of the VEK certificate's DER.
    pub fn vek_fingerprint(&self) -> [u8; 32] {
        self.vek_fingerprint
    }

    /// Checks, in constant time, that REPORT_DATA equals `expected` (the
    /// recomputed transcript hash) and returns the proof key release takes.
    pub fn bind(self, expected: &[u8; 64]) -> Result<BoundReport, EvidenceRejected> {
        if bool::from(self.decoded.report_data.ct_eq(expected)) {
            Ok(BoundReport {
                report: self,
                _proof: (),
            })
        } else {
            Err(EvidenceRejected::ReportDataMismatch {
                expected: hex::encode(expected),
                actual: hex::encode(self.decoded.report_data),
            })
        }
    }
}

/// A verified report whose REPORT_DATA equals the expected transcript hash:
/// the only evidence key release accepts. Only [`VerifiedReport::bind`]
/// constructs one.
#[derive(Debug, Clone)]
pub struct BoundReport {
    report: VerifiedReport,
    _proof: (),
}

impl BoundReport {
    /// The verified claims.
    pub fn claims(&self) -> &ReportClaims {
        self.report.claims()
    }

    /// Every decoded field.
    pub fn decoded(&self) -> &DecodedReport {
        self.report.decoded()
    }

    /// The VEK's AMD extensions.
    pub fn vek(&self) -> &VekInfo {
        self.report.vek()
    }

    /// True when the chain ends in a configured simulated root.
    pub fn is_simulated(&self) -> bool {
        self.report.is_simulated()
    }

    /// SHA-256 of the VEK certificate's DER.
    pub fn vek_fingerprint(&self) -> [u8; 32] {
        self.report.vek_fingerprint()
    }
}
