//! The certificate cache directory and the [`CacheSource`] that reads it.
//!
//! Layout (every file verified against the pinned ARK before it is written;
//! `<gen>` is `milan`, `genoa` or `turin`, or `sim-<gen>` for material that
//! chains to a configured simulated root):
//!
//! ```text
//! <cache>/<gen>/vcek/<hwid-hex>/<tcb-hex>.der   VCEK of one chip at one TCB
//! <cache>/<gen>/vlek/<tcb-hex>.der              VLEK at one TCB (one per TCB)
//! <cache>/<gen>/cert_chain.pem                  ASK, then ARK (as KDS serves it)
//! <cache>/<gen>/vlek_cert_chain.pem             ASVK, then ARK
//! <cache>/<gen>/crl.der                         CRL issued by the ARK
//! <cache>/<gen>/crl-ask.der, crl-asvk.der       CRLs issued by the ASK / ASVK
//! ```
//!
//! `<hwid-hex>` is the VCEK's hwID in lower-case hex (64 bytes on Milan and
//! Genoa, 8 on Turin: the report's CHIP_ID, cut to 8 bytes on Turin).
//! `<tcb-hex>` is the TCB in the generation's REPORTED_TCB byte layout with
//! reserved bytes zero (Milan/Genoa `bl tee 0 0 0 0 snp ucode`, Turin
//! `fmc bl tee snp 0 0 0 ucode`), hex: the report's REPORTED_TCB for a
//! lookup, the VCEK's SPL extensions for a store.
//!
//! Files are written atomically (temporary file, then rename). Reads are
//! memoised per file and re-read only when its size, mtime or inode changes.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{CacheStats, Counter, Counters};
use crate::verify::{
    certs_from_pem_or_der, decode_tcb, CertQuery, CertRole, CertSet, CertSource, EvidenceRejected,
    Generation, SignerKind, Tcb, TrustStore, VekInfo,
};

/// Every generation, in the order a version 2 report (no CPUID) tries them.
pub const GENERATIONS: [Generation; 3] = [Generation::Milan, Generation::Genoa, Generation::Turin];

/// The generations a report may be of: its own, or Milan and Genoa for a
/// version 2 report (Turin reports always carry CPUID).
pub fn candidate_generations(g: Option<Generation>) -> Vec<Generation> {
    match g {
        Some(g) => vec![g],
        None => vec![Generation::Milan, Generation::Genoa],
    }
}

/// The hwID of a chip: CHIP_ID, or its first 8 bytes on Turin.
pub fn hwid_of(generation: Generation, chip_id: &[u8; 64]) -> &[u8] {
    match generation {
        Generation::Turin => &chip_id[..8],
        _ => &chip_id[..],
    }
}

/// A TCB in the REPORTED_TCB byte layout of `generation`, reserved bytes zero.
pub fn tcb_key(generation: Generation, tcb: &Tcb) -> [u8; 8] {
    match generation {
        Generation::Milan | Generation::Genoa => {
            [tcb.bootloader, tcb.tee, 0, 0, 0, 0, tcb.snp, tcb.microcode]
        }
        Generation::Turin => [
            tcb.fmc.unwrap_or(0),
            tcb.bootloader,
            tcb.tee,
            tcb.snp,
            0,
            0,
            0,
            tcb.microcode,
        ],
    }
}

/// The TCB a VEK certificate was issued for, as [`tcb_key`] lays it out.
pub fn vek_tcb_key(generation: Generation, vek: &VekInfo) -> [u8; 8] {
    tcb_key(
        generation,
        &Tcb {
            fmc: vek.fmc_spl,
            bootloader: vek.bl_spl,
            tee: vek.tee_spl,
            snp: vek.snp_spl,
            microcode: vek.ucode_spl,
        },
    )
}

/// The directory name of a generation's material.
pub fn gen_dir(generation: Generation, simulated: bool) -> String {
    if simulated {
        format!("sim-{}", generation.as_str())
    } else {
        generation.as_str().to_owned()
    }
}

type Stamp = (u64, Option<std::time::SystemTime>, u64);
/// A file's stamp and bytes as last read.
type Memo = HashMap<PathBuf, (Stamp, Arc<Vec<u8>>)>;

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    m.is_file().then(|| (m.len(), m.modified().ok(), m.ino()))
}

/// One file of the cache, for `broker certs list`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CacheEntry {
    /// `milan`, `genoa`, `turin` or `sim-<gen>`.
    pub generation: String,
    /// `vcek`, `vlek`, `cert_chain`, `vlek_cert_chain`, `crl`, `crl-ask`, `crl-asvk`.
    pub kind: String,
    /// hwID (VCEK), hex.
    pub hwid: Option<String>,
    /// TCB key (VCEK, VLEK), hex.
    pub tcb: Option<String>,
    /// The file, relative to the cache.
    pub path: String,
}

/// The certificate cache directory.
#[derive(Debug)]
pub struct CertCache {
    root: PathBuf,
    memo: Mutex<Memo>,
    counters: Counters,
}

impl CertCache {
    /// A cache rooted at `root` (created when the first file is stored).
    pub fn new(root: PathBuf) -> Self {
        CertCache {
            root,
            memo: Mutex::new(HashMap::new()),
            counters: Counters::new(),
        }
    }

    /// The cache directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// This cache's counters (lookups through [`CacheSource`], fetches by a
    /// [`super::KdsSource`] storing here).
    pub fn stats(&self) -> CacheStats {
        self.counters.snapshot()
    }

    pub(crate) fn bump(&self, c: Counter) {
        self.counters.bump(c);
    }

    /// Where the VCEK of `hwid` at `tcb` lives.
    pub fn vcek_path(
        &self,
        generation: Generation,
        simulated: bool,
        hwid: &[u8],
        tcb: [u8; 8],
    ) -> PathBuf {
        self.root
            .join(gen_dir(generation, simulated))
            .join("vcek")
            .join(hex::encode(hwid))
            .join(format!("{}.der", hex::encode(tcb)))
    }

    /// Where the VLEK at `tcb` lives.
    pub fn vlek_path(&self, generation: Generation, simulated: bool, tcb: [u8; 8]) -> PathBuf {
        self.root
            .join(gen_dir(generation, simulated))
            .join("vlek")
            .join(format!("{}.der", hex::encode(tcb)))
    }

    /// Where the chain of an intermediate (`Ask` or `Asvk`) lives.
    pub fn chain_path(&self, generation: Generation, simulated: bool, role: CertRole) -> PathBuf {
        let name = match role {
            CertRole::Asvk => "vlek_cert_chain.pem",
            _ => "cert_chain.pem",
        };
        self.root.join(gen_dir(generation, simulated)).join(name)
    }

    /// Where the CRL issued by `issuer` (`Ark`, `Ask` or `Asvk`) lives.
    pub fn crl_path(&self, generation: Generation, simulated: bool, issuer: CertRole) -> PathBuf {
        let name = match issuer {
            CertRole::Ask => "crl-ask.der",
            CertRole::Asvk => "crl-asvk.der",
            _ => "crl.der",
        };
        self.root.join(gen_dir(generation, simulated)).join(name)
    }

    /// A file's bytes, memoised until the file changes; `None` if absent.
    pub fn read(&self, path: &Path) -> Option<Arc<Vec<u8>>> {
        let st = stamp(path)?;
        if let Ok(memo) = self.memo.lock() {
            if let Some((s, data)) = memo.get(path) {
                if *s == st {
                    return Some(data.clone());
                }
            }
        }
        let data = Arc::new(std::fs::read(path).ok()?);
        if let Ok(mut memo) = self.memo.lock() {
            memo.insert(path.to_owned(), (st, data.clone()));
        }
        Some(data)
    }

    /// Writes `data` to `path` atomically (a temporary file in the same
    /// directory, synced, then renamed over it), creating directories.
    pub fn write(&self, path: &Path, data: &[u8]) -> std::io::Result<()> {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{name}.tmp-{}-{seq}", std::process::id()));
        let result = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(data)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// The intermediate (first certificate) of a stored chain file.
    pub fn intermediate(
        &self,
        generation: Generation,
        simulated: bool,
        role: CertRole,
    ) -> Option<Vec<u8>> {
        let data = self.read(&self.chain_path(generation, simulated, role))?;
        certs_from_pem_or_der(&data).into_iter().next()
    }

    /// Every stored CRL of a generation directory.
    pub fn crls(&self, generation: Generation, simulated: bool) -> Vec<Vec<u8>> {
        [CertRole::Ark, CertRole::Ask, CertRole::Asvk]
            .into_iter()
            .filter_map(|r| self.read(&self.crl_path(generation, simulated, r)))
            .map(|d| d.as_ref().clone())
            .collect()
    }

    /// Every file of the cache, sorted by path.
    pub fn list(&self) -> std::io::Result<Vec<CacheEntry>> {
        let mut out = Vec::new();
        let rd = match std::fs::read_dir(&self.root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        };
        for g in rd {
            let g = g?;
            if !g.file_type()?.is_dir() {
                continue;
            }
            let gen = g.file_name().to_string_lossy().into_owned();
            let mut files = Vec::new();
            walk(&g.path(), &mut files)?;
            for f in files {
                let rel = f.strip_prefix(g.path()).unwrap_or(&f);
                let parts: Vec<String> = rel
                    .iter()
                    .map(|p| p.to_string_lossy().into_owned())
                    .collect();
                let stem = |s: &str| s.trim_end_matches(".der").to_owned();
                let (kind, hwid, tcb) = match parts.as_slice() {
                    [k, h, t] if k == "vcek" => ("vcek".to_owned(), Some(h.clone()), Some(stem(t))),
                    [k, t] if k == "vlek" => ("vlek".to_owned(), None, Some(stem(t))),
                    [n] if n.starts_with('.') => continue,
                    [n] => (
                        n.trim_end_matches(".der")
                            .trim_end_matches(".pem")
                            .to_owned(),
                        None,
                        None,
                    ),
                    _ => ("unknown".to_owned(), None, None),
                };
                out.push(CacheEntry {
                    generation: gen.clone(),
                    kind,
                    hwid,
                    tcb,
                    path: Path::new(&gen).join(rel).display().to_string(),
                });
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let t = e.file_type()?;
        if t.is_dir() {
            walk(&e.path(), out)?;
        } else if t.is_file() {
            out.push(e.path());
        }
    }
    Ok(())
}

/// Reads the certificate cache for the verifier: the VEK of the report's
/// chip and TCB, the intermediate stored beside it, and every stored CRL of
/// the candidate generations.
#[derive(Debug)]
pub struct CacheSource {
    cache: Arc<CertCache>,
    simulated: Vec<Generation>,
}

impl CacheSource {
    /// Reads `cache`; `sim-<gen>` directories only for the generations for
    /// which `store` trusts a simulated root.
    pub fn new(cache: Arc<CertCache>, store: &TrustStore) -> Self {
        let simulated = GENERATIONS
            .into_iter()
            .filter(|g| store.trusts_simulated_for(*g))
            .collect();
        CacheSource { cache, simulated }
    }

    /// The generation directories to consult for `generation`, AMD first.
    pub(crate) fn dirs(&self, generation: Option<Generation>) -> Vec<(Generation, bool)> {
        let mut out = Vec::new();
        for g in candidate_generations(generation) {
            out.push((g, false));
            if self.simulated.contains(&g) {
                out.push((g, true));
            }
        }
        out
    }
}

impl CertSource for CacheSource {
    fn fill(&self, q: &CertQuery<'_>, certs: &mut CertSet) -> Result<(), EvidenceRejected> {
        let vek_missing = certs.vek(q.signer).is_none();
        let chip_masked = q.chip_id.iter().all(|&b| b == 0);
        let mut found = false;
        for (g, sim) in self.dirs(q.generation) {
            if vek_missing && !found {
                let tcb = tcb_key(g, &decode_tcb(q.reported_tcb, g));
                let path = match q.signer {
                    SignerKind::Vcek if chip_masked => None,
                    SignerKind::Vcek => {
                        Some(self.cache.vcek_path(g, sim, hwid_of(g, q.chip_id), tcb))
                    }
                    SignerKind::Vlek => Some(self.cache.vlek_path(g, sim, tcb)),
                };
                if let Some(der) = path.and_then(|p| self.cache.read(&p)) {
                    let der = der.as_ref().clone();
                    let role = match q.signer {
                        SignerKind::Vcek => {
                            certs.vcek = Some(der);
                            CertRole::Ask
                        }
                        SignerKind::Vlek => {
                            certs.vlek = Some(der);
                            CertRole::Asvk
                        }
                    };
                    if certs.intermediate(q.signer).is_none() {
                        if let Some(inter) = self.cache.intermediate(g, sim, role) {
                            match role {
                                CertRole::Asvk => certs.asvk = Some(inter),
                                _ => certs.ask = Some(inter),
                            }
                        }
                    }
                    found = true;
                }
            }
            certs.fill_from(CertSet {
                crls: self.cache.crls(g, sim),
                ..CertSet::default()
            });
        }
        if vek_missing {
            self.cache
                .bump(if found { Counter::Hit } else { Counter::Miss });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcb_keys_follow_the_report_layout() {
        let t = Tcb {
            fmc: Some(1),
            bootloader: 2,
            tee: 3,
            snp: 4,
            microcode: 5,
        };
        assert_eq!(tcb_key(Generation::Milan, &t), [2, 3, 0, 0, 0, 0, 4, 5]);
        assert_eq!(tcb_key(Generation::Turin, &t), [1, 2, 3, 4, 0, 0, 0, 5]);
        let raw = [2, 3, 9, 9, 9, 9, 4, 5];
        assert_eq!(
            tcb_key(Generation::Genoa, &decode_tcb(raw, Generation::Genoa)),
            [2, 3, 0, 0, 0, 0, 4, 5],
            "reserved bytes do not change the key"
        );
    }

    #[test]
    fn write_is_atomic_and_read_sees_changes() {
        let dir = tempfile::tempdir().unwrap();
        let c = CertCache::new(dir.path().join("cache"));
        let p = c.vcek_path(Generation::Turin, false, &[0xab; 8], [1; 8]);
        assert!(c.read(&p).is_none());
        c.write(&p, b"one").unwrap();
        assert_eq!(c.read(&p).unwrap().as_slice(), b"one");
        c.write(&p, b"second").unwrap();
        assert_eq!(c.read(&p).unwrap().as_slice(), b"second");
        let list = c.list().unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].kind, "vcek");
        assert_eq!(list[0].hwid.as_deref(), Some("abababababababab"));
        assert_eq!(list[0].tcb.as_deref(), Some("0101010101010101"));
        assert_eq!(
            list[0].path,
            "turin/vcek/abababababababab/0101010101010101.der"
        );
    }
}
