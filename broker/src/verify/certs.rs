//! Where a report's certificates come from, and what AMD's certificates say.
//!
//! Three sources, in this order of precedence: the guest's extended-report
//! certificate table ([`parse_cert_table`]), an offline certificate
//! directory ([`load_cert_dir`]), and (for ASK, ASVK and ARK only) the
//! bundled AMD certificates in [`super::amd`]. [`VekInfo::from_der`]
//! decodes AMD's VCEK/VLEK X.509 extensions (OID arc 1.3.6.1.4.1.3704.1).
//! Parsers only: nothing here decides whether anything is trusted.

use std::path::Path;

use x509_parser::prelude::*;

use super::claims::{Generation, SignerKind};
use super::error::{malformed, table_malformed, CertRole, CertificatesRejected, EvidenceRejected};

use keybroker_snp::cert_table::{self as table, CertEntry, CertKind};
pub use keybroker_snp::cert_table::{GUID_ARK, GUID_ASK, GUID_VCEK, GUID_VLEK};

/// Certificates (DER) gathered for one report, each with where it came from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CertSet {
    /// VCEK.
    pub vcek: Option<Vec<u8>>,
    /// VLEK.
    pub vlek: Option<Vec<u8>>,
    /// ASK (signs VCEKs).
    pub ask: Option<Vec<u8>>,
    /// ASVK (signs VLEKs).
    pub asvk: Option<Vec<u8>>,
    /// ARK.
    pub ark: Option<Vec<u8>>,
    /// CRLs (DER) issued by the ARK (revoking ASKs/ASVKs) or by an ASK/ASVK
    /// (revoking VEKs); from the offline directory, the certificate cache or
    /// AMD KDS, never from the guest. CRLs of other issuers are ignored.
    pub crls: Vec<Vec<u8>>,
}

impl CertSet {
    /// Fills every certificate this set lacks from `other`, and adds the
    /// CRLs it does not hold yet.
    pub fn fill_from(&mut self, other: CertSet) {
        fn f(a: &mut Option<Vec<u8>>, b: Option<Vec<u8>>) {
            if a.is_none() {
                *a = b;
            }
        }
        f(&mut self.vcek, other.vcek);
        f(&mut self.vlek, other.vlek);
        f(&mut self.ask, other.ask);
        f(&mut self.asvk, other.asvk);
        f(&mut self.ark, other.ark);
        for crl in other.crls {
            if !self.crls.contains(&crl) {
                self.crls.push(crl);
            }
        }
    }

    /// The VEK certificate of the given kind.
    pub fn vek(&self, kind: SignerKind) -> Option<&[u8]> {
        match kind {
            SignerKind::Vcek => self.vcek.as_deref(),
            SignerKind::Vlek => self.vlek.as_deref(),
        }
    }

    /// The intermediate that signs the given kind of VEK (ASK or ASVK).
    pub fn intermediate(&self, kind: SignerKind) -> Option<&[u8]> {
        match kind {
            SignerKind::Vcek => self.ask.as_deref(),
            SignerKind::Vlek => self.asvk.as_deref(),
        }
    }

    fn put(&mut self, role: CertRole, der: Vec<u8>, source: &str) -> Result<(), EvidenceRejected> {
        let slot = match role {
            CertRole::Crl => {
                if !self.crls.contains(&der) {
                    self.crls.push(der);
                }
                return Ok(());
            }
            CertRole::Ark => &mut self.ark,
            CertRole::Ask => &mut self.ask,
            CertRole::Asvk => &mut self.asvk,
            CertRole::Vcek => &mut self.vcek,
            CertRole::Vlek => &mut self.vlek,
        };
        match slot {
            Some(existing) if *existing != der => Err(malformed(
                role,
                format!("{source} holds two different {role} certificates; keep one"),
            )),
            Some(_) => Ok(()),
            None => {
                *slot = Some(der);
                Ok(())
            }
        }
    }
}

/// Reads the guest's extended-report certificate table
/// ([`keybroker_snp::cert_table`]: layout, GUID byte order and what is
/// refused) into a [`CertSet`]. Entries with GUIDs other than AMD's are
/// checked like the others and then ignored; so are CRLs, which the broker
/// takes only from its own sources. The ASK entry carries the ASVK when
/// the report is VLEK-signed: it is classified by its subject. An empty
/// buffer means "no table".
pub fn parse_cert_table(bytes: &[u8]) -> Result<CertSet, EvidenceRejected> {
    let mut set = CertSet::default();
    let source = "the certificate table";
    for entry in table::decode(bytes).map_err(|e| table_malformed(e.to_string()))? {
        let role = match entry.kind() {
            Some(CertKind::Vcek) => CertRole::Vcek,
            Some(CertKind::Vlek) => CertRole::Vlek,
            Some(CertKind::Ark) => CertRole::Ark,
            Some(CertKind::Ask) => match classify(&entry.data) {
                Some(CertRole::Asvk) => CertRole::Asvk,
                _ => CertRole::Ask,
            },
            Some(CertKind::Crl) | None => continue,
        };
        set.put(role, entry.data, source)?;
    }
    Ok(set)
}

/// Builds a certificate table from `(GUID, certificate)` pairs (tests and
/// tools; [`keybroker_snp::cert_table::encode`]).
///
/// # Panics
///
/// On entries no table may hold (a malformed or repeated GUID, an empty
/// certificate): the input is the caller's own.
pub fn build_cert_table(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let entries: Vec<CertEntry> = entries
        .iter()
        .map(|(guid, data)| CertEntry {
            guid: guid.parse().expect("a GUID"),
            data: data.to_vec(),
        })
        .collect();
    table::encode(&entries).expect("a valid certificate table")
}

/// The subject common name of a DER certificate, if it parses.
pub fn subject_cn(der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    cn_of(cert.subject())
}

pub(crate) fn cn_of(name: &X509Name<'_>) -> Option<String> {
    name.iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned)
}

/// Classifies an AMD (or simulated) certificate by subject CN: `ARK-*` is an
/// ARK, `SEV-VCEK` a VCEK, `SEV-VLEK` a VLEK, `SEV-VLEK-<Gen>` an ASVK and
/// any other `SEV-*` an ASK.
pub fn classify(der: &[u8]) -> Option<CertRole> {
    let cn = subject_cn(der)?;
    Some(if cn.starts_with("ARK-") {
        CertRole::Ark
    } else if cn == "SEV-VCEK" {
        CertRole::Vcek
    } else if cn == "SEV-VLEK" {
        CertRole::Vlek
    } else if cn.starts_with("SEV-VLEK-") {
        CertRole::Asvk
    } else if cn.starts_with("SEV-") {
        CertRole::Ask
    } else {
        return None;
    })
}

/// The decoded bodies of every `label` PEM block in `data` (empty when
/// `data` is not UTF-8 text).
pub(crate) fn pem_blocks(data: &[u8], label: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let Ok(text) = std::str::from_utf8(data) else {
        return out;
    };
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let mut rest = text;
    while let Some(b) = rest.find(&begin) {
        let after = &rest[b + begin.len()..];
        let Some(e) = after.find(&end) else { break };
        let body: String = after[..e].chars().filter(|c| !c.is_whitespace()).collect();
        out.push(decode_base64(&body).unwrap_or_default());
        rest = &after[e + end.len()..];
    }
    out
}

fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    let mut padding = 0;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => {
                padding += 1;
                continue;
            }
            _ => return None,
        };
        if padding > 0 {
            return None;
        }
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    (padding <= 2).then_some(out)
}

/// DER certificates from PEM text (every `CERTIFICATE` block), or the input
/// itself when it is not PEM. An empty or undecodable block yields an empty
/// entry, which the X.509 parser then refuses with a clear message.
pub fn certs_from_pem_or_der(data: &[u8]) -> Vec<Vec<u8>> {
    if data.starts_with(b"-----") || data.windows(11).any(|w| w == b"-----BEGIN ") {
        pem_blocks(data, "CERTIFICATE")
    } else {
        vec![data.to_vec()]
    }
}

/// Loads an offline certificate directory: `vcek.der`/`vcek.pem`,
/// `vlek.der`/`vlek.pem`, an optional `crl.der`/`crl.pem` (X509 CRL issued by
/// the ARK), and every other `*.pem` file, whose certificates are classified
/// by subject CN (so `ask.pem`, `asvk.pem`, `ark.pem` and KDS bundles such as
/// `cert_chain.pem` all work). A certificate that cannot be classified, or two
/// different certificates for one role, are refused.
pub fn load_cert_dir(dir: &Path) -> Result<CertSet, EvidenceRejected> {
    let mut set = CertSet::default();
    let rd = std::fs::read_dir(dir).map_err(|e| CertificatesRejected::Missing {
        role: CertRole::Vcek,
        detail: format!("cannot read certificate directory {}: {e}", dir.display()),
    })?;
    let mut names: Vec<_> = rd
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    names.sort();
    for path in names {
        let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
            continue;
        };
        let lower = name.to_ascii_lowercase();
        let fixed_role = match lower.as_str() {
            "vcek.der" | "vcek.pem" | "vcek.crt" => Some(CertRole::Vcek),
            "vlek.der" | "vlek.pem" | "vlek.crt" => Some(CertRole::Vlek),
            "crl.der" | "crl.pem" => Some(CertRole::Crl),
            _ if lower.ends_with(".pem") => None,
            _ => continue,
        };
        let data = std::fs::read(&path).map_err(|e| {
            malformed(
                fixed_role.unwrap_or(CertRole::Ask),
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        let source = format!("{}", path.display());
        match fixed_role {
            Some(CertRole::Crl) => {
                let ders = if data.starts_with(b"-----") {
                    pem_blocks(&data, "X509 CRL")
                } else {
                    vec![data]
                };
                if ders.is_empty() {
                    return Err(malformed(
                        CertRole::Crl,
                        format!("{source} holds no X509 CRL PEM block"),
                    ));
                }
                for der in ders {
                    set.put(CertRole::Crl, der, &source)?;
                }
            }
            Some(role) => {
                let mut certs = certs_from_pem_or_der(&data);
                if certs.len() != 1 {
                    return Err(malformed(
                        role,
                        format!(
                            "{source} must hold exactly one certificate, holds {}",
                            certs.len()
                        ),
                    ));
                }
                set.put(role, certs.remove(0), &source)?;
            }
            None => {
                for der in certs_from_pem_or_der(&data) {
                    let role = classify(&der).ok_or_else(|| {
                        malformed(
                            CertRole::Ask,
                            format!(
                                "{source}: a certificate that is not an AMD ARK, ASK, ASVK, VCEK or VLEK (subject CN {:?})",
                                subject_cn(&der)
                            ),
                        )
                    })?;
                    set.put(role, der, &source)?;
                }
            }
        }
    }
    Ok(set)
}

/// What identifies one state of a certificate directory: for the directory
/// and each regular file in it, name, size, mtime and inode. A file replaced
/// (rename) or rewritten changes at least one of them.
type DirStamp = Vec<(std::ffi::OsString, u64, Option<std::time::SystemTime>, u64)>;

fn dir_stamp(dir: &Path) -> std::io::Result<DirStamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(dir)?;
    let mut stamp: DirStamp = vec![(
        std::ffi::OsString::new(),
        meta.len(),
        meta.modified().ok(),
        meta.ino(),
    )];
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Ok(m) = std::fs::metadata(entry.path()) else {
            continue;
        };
        if m.is_file() {
            stamp.push((entry.file_name(), m.len(), m.modified().ok(), m.ino()));
        }
    }
    stamp.sort();
    Ok(stamp)
}

/// The offline certificate directory ([`load_cert_dir`]), parsed once and
/// parsed again only when the directory changes (a file added, removed,
/// replaced or rewritten: see [`DirStamp`]). Checking costs one `readdir`
/// and one `stat` per file, not a read and parse of every certificate.
#[derive(Debug)]
pub struct CertDirCache {
    dir: std::path::PathBuf,
    state: std::sync::Mutex<Option<(DirStamp, CertSet)>>,
}

impl CertDirCache {
    /// A cache over `dir` (read on first use).
    pub fn new(dir: std::path::PathBuf) -> Self {
        CertDirCache {
            dir,
            state: std::sync::Mutex::new(None),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directory's certificates, re-read only if it changed.
    pub fn load(&self) -> Result<CertSet, EvidenceRejected> {
        let stamp = dir_stamp(&self.dir).map_err(|e| CertificatesRejected::Missing {
            role: CertRole::Vcek,
            detail: format!(
                "cannot read certificate directory {}: {e}",
                self.dir.display()
            ),
        })?;
        if let Ok(guard) = self.state.lock() {
            if let Some((s, set)) = guard.as_ref() {
                if *s == stamp {
                    return Ok(set.clone());
                }
            }
        }
        let set = load_cert_dir(&self.dir)?;
        if let Ok(mut guard) = self.state.lock() {
            *guard = Some((stamp, set.clone()));
        }
        Ok(set)
    }
}

/// AMD VEK extension OIDs (arc 1.3.6.1.4.1.3704.1).
pub mod oid {
    /// structVersion.
    pub const STRUCT_VERSION: &str = "1.3.6.1.4.1.3704.1.1";
    /// productName1 (IA5String, e.g. "Milan-B0").
    pub const PRODUCT_NAME: &str = "1.3.6.1.4.1.3704.1.2";
    /// blSPL.
    pub const BL_SPL: &str = "1.3.6.1.4.1.3704.1.3.1";
    /// teeSPL.
    pub const TEE_SPL: &str = "1.3.6.1.4.1.3704.1.3.2";
    /// snpSPL.
    pub const SNP_SPL: &str = "1.3.6.1.4.1.3704.1.3.3";
    /// ucodeSPL.
    pub const UCODE_SPL: &str = "1.3.6.1.4.1.3704.1.3.8";
    /// fmcSPL (Turin).
    pub const FMC_SPL: &str = "1.3.6.1.4.1.3704.1.3.9";
    /// hwID (raw chip id bytes, VCEK only).
    pub const HWID: &str = "1.3.6.1.4.1.3704.1.4";
    /// csp_id (VLEK only).
    pub const CSP_ID: &str = "1.3.6.1.4.1.3704.1.5";
}

/// What a VCEK or VLEK certificate says about its platform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VekInfo {
    /// VCEK (has hwID) or VLEK (has csp_id).
    pub kind: SignerKind,
    /// productName1, e.g. "Milan-B0".
    pub product_name: Option<String>,
    /// Generation named by productName.
    pub generation: Option<Generation>,
    /// blSPL.
    pub bl_spl: u8,
    /// teeSPL.
    pub tee_spl: u8,
    /// snpSPL.
    pub snp_spl: u8,
    /// ucodeSPL.
    pub ucode_spl: u8,
    /// fmcSPL (Turin VCEKs).
    pub fmc_spl: Option<u8>,
    /// hwID (64 bytes Milan/Genoa, 8 bytes Turin).
    pub hwid: Option<Vec<u8>>,
    /// csp_id of a VLEK, as text when printable.
    pub csp_id: Option<String>,
}

/// Generation from a productName such as "Milan-B0", "Genoa" or "Turin".
pub fn generation_from_product_name(name: &str) -> Option<Generation> {
    let base = name.split('-').next().unwrap_or(name);
    [Generation::Milan, Generation::Genoa, Generation::Turin]
        .into_iter()
        .find(|g| base.eq_ignore_ascii_case(g.as_str()))
}

/// Decodes a DER INTEGER holding 0..=255 in one byte, or in two bytes with a
/// leading zero (as AMD writes values of 128 and more, e.g. `02 02 00 d9`).
pub fn der_small_uint(v: &[u8]) -> Option<u8> {
    match v {
        [0x02, 0x01, x] => Some(*x),
        [0x02, 0x02, 0x00, x] if *x >= 0x80 => Some(*x),
        _ => None,
    }
}

fn der_string(v: &[u8]) -> Option<String> {
    // IA5String (0x16), UTF8String (0x0c) or PrintableString (0x13), short form.
    match v {
        [tag, len, rest @ ..]
            if matches!(tag, 0x16 | 0x0c | 0x13)
                && usize::from(*len) == rest.len()
                && *len < 0x80 =>
        {
            std::str::from_utf8(rest).ok().map(str::to_owned)
        }
        _ => None,
    }
}

impl VekInfo {
    /// Decodes the AMD extensions of a VCEK/VLEK certificate. The kind is
    /// decided by the subject CN (`SEV-VCEK` / `SEV-VLEK`) or, failing that,
    /// by the presence of hwID (VCEK) or csp_id (VLEK).
    pub fn from_cert(cert: &X509Certificate<'_>, role: CertRole) -> Result<Self, EvidenceRejected> {
        let mut product_name = None;
        let mut spl = [None::<u8>; 10];
        let mut hwid = None;
        let mut csp_id = None;
        for ext in cert.extensions() {
            let id = ext.oid.to_id_string();
            let v = ext.value;
            let int = |what: &str| {
                der_small_uint(v).ok_or_else(|| {
                    malformed(
                        role,
                        format!(
                            "{what} extension is not a DER INTEGER 0..255: {}",
                            hex::encode(v)
                        ),
                    )
                })
            };
            match id.as_str() {
                oid::PRODUCT_NAME => {
                    product_name =
                        Some(der_string(v).ok_or_else(|| {
                            malformed(role, "productName extension is not a string")
                        })?)
                }
                oid::HWID => hwid = Some(v.to_vec()),
                oid::CSP_ID => csp_id = Some(der_string(v).unwrap_or_else(|| hex::encode(v))),
                _ => {
                    if let Some(n) = id.strip_prefix("1.3.6.1.4.1.3704.1.3.") {
                        if let Ok(n) = n.parse::<usize>() {
                            if n < spl.len() {
                                spl[n] = Some(int(&format!("SPL 1.3.6.1.4.1.3704.1.3.{n}"))?);
                            }
                        }
                    }
                }
            }
        }
        let need = |n: usize, name: &str| {
            spl[n].ok_or_else(|| {
                malformed(
                    role,
                    format!("{name} extension (1.3.6.1.4.1.3704.1.3.{n}) missing"),
                )
            })
        };
        let cn = cn_of(cert.subject());
        let kind = match (cn.as_deref(), &hwid, &csp_id) {
            (Some("SEV-VCEK"), _, _) => SignerKind::Vcek,
            (Some("SEV-VLEK"), _, _) => SignerKind::Vlek,
            (_, Some(_), None) => SignerKind::Vcek,
            (_, None, Some(_)) => SignerKind::Vlek,
            _ => match role {
                CertRole::Vlek => SignerKind::Vlek,
                _ => SignerKind::Vcek,
            },
        };
        let generation = product_name
            .as_deref()
            .and_then(generation_from_product_name);
        Ok(VekInfo {
            kind,
            generation,
            product_name,
            bl_spl: need(1, "blSPL")?,
            tee_spl: need(2, "teeSPL")?,
            snp_spl: need(3, "snpSPL")?,
            ucode_spl: need(8, "ucodeSPL")?,
            fmc_spl: spl[9],
            hwid,
            csp_id,
        })
    }

    /// Parses a DER certificate and decodes its AMD extensions.
    pub fn from_der(der: &[u8], role: CertRole) -> Result<Self, EvidenceRejected> {
        let cert = parse_cert(der, role)?;
        Self::from_cert(&cert, role)
    }
}

/// Parses one DER certificate; trailing bytes are refused.
pub fn parse_cert(der: &[u8], role: CertRole) -> Result<X509Certificate<'_>, EvidenceRejected> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok((rest, _)) => Err(malformed(
            role,
            format!("{} trailing bytes after the certificate", rest.len()),
        )),
        Err(e) => Err(malformed(role, format!("not a DER X.509 certificate: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/snp-real/");

    fn read(p: &str) -> Vec<u8> {
        std::fs::read(format!("{FIX}{p}")).expect("fixture")
    }

    #[test]
    fn table_roundtrip() {
        let vcek = read("virtee-milan-v2/vcek.der");
        let t = build_cert_table(&[(GUID_VCEK, &vcek)]);
        let s = parse_cert_table(&t).unwrap();
        assert_eq!(s.vcek.as_deref(), Some(&vcek[..]));
        assert_eq!(parse_cert_table(&[]).unwrap(), CertSet::default());
    }

    #[test]
    fn table_ignores_unknown_guids_and_crls_but_checks_bounds() {
        let t = build_cert_table(&[
            ("11111111-2222-3333-4444-555555555555", b"xyz"),
            (keybroker_snp::cert_table::GUID_CRL, b"crl"),
        ]);
        assert_eq!(parse_cert_table(&t).unwrap(), CertSet::default());
        let mut bad = t.clone();
        bad[20..24].copy_from_slice(&1000u32.to_le_bytes());
        assert_eq!(
            parse_cert_table(&bad).unwrap_err().reason_code(),
            "EVIDENCE_CERT_TABLE_MALFORMED"
        );
    }

    /// Every table the codec refuses is refused as malformed evidence, with
    /// the codec's reason (the cases themselves: `keybroker_snp`'s tests).
    #[test]
    fn malformed_tables_are_refused() {
        let vcek = read("virtee-milan-v2/vcek.der");
        let ok = build_cert_table(&[(GUID_VCEK, &vcek), (GUID_ARK, b"ark-bytes")]);
        let refused = |t: &[u8]| {
            let e = parse_cert_table(t).map(|_| ()).unwrap_err();
            assert_eq!(e.reason_code(), "EVIDENCE_CERT_TABLE_MALFORMED", "{e}");
            e.to_string()
        };
        refused(&ok[..30]);
        refused(&ok[..ok.len() - 1]);
        refused(&[0xAA; 24 * 3]);
        // The VCEK GUID in the EFI mixed-endian byte order.
        let mut m = ok.clone();
        m[..16].copy_from_slice(&CertKind::Vcek.guid().mixed_endian().0);
        assert!(refused(&m).contains("mixed-endian"));
    }

    #[test]
    fn ask_slot_holding_asvk_is_classified() {
        let bundle = read("trustee-aws-milan-vlek-v3/milan_ask_ark_asvk.pem");
        let certs = certs_from_pem_or_der(&bundle);
        assert_eq!(certs.len(), 3);
        let roles: Vec<_> = certs.iter().map(|c| classify(c)).collect();
        assert_eq!(
            roles,
            vec![
                Some(CertRole::Ask),
                Some(CertRole::Ark),
                Some(CertRole::Asvk)
            ]
        );
        let t = build_cert_table(&[(GUID_ASK, &certs[2])]);
        let s = parse_cert_table(&t).unwrap();
        assert!(s.ask.is_none());
        assert_eq!(s.asvk.as_deref(), Some(&certs[2][..]));
    }

    #[test]
    fn vek_extensions_decode() {
        let v = VekInfo::from_der(&read("virtee-milan-v2/vcek.der"), CertRole::Vcek).unwrap();
        assert_eq!(v.kind, SignerKind::Vcek);
        assert_eq!(v.product_name.as_deref(), Some("Milan-B0"));
        assert_eq!(v.generation, Some(Generation::Milan));
        assert_eq!(
            (v.bl_spl, v.tee_spl, v.snp_spl, v.ucode_spl, v.fmc_spl),
            (3, 0, 8, 115, None)
        );
        assert_eq!(v.hwid.as_ref().map(Vec::len), Some(64));
        let t = VekInfo::from_der(&read("oak-turin-v5/vcek.der"), CertRole::Vcek).unwrap();
        assert_eq!(t.generation, Some(Generation::Turin));
        assert_eq!(t.fmc_spl, Some(0));
        assert_eq!(
            t.hwid.as_deref().map(hex::encode).as_deref(),
            Some("3b42092f69c656d3")
        );
        let l =
            VekInfo::from_der(&read("trustee-aws-milan-vlek-v3/vlek.der"), CertRole::Vlek).unwrap();
        assert_eq!(l.kind, SignerKind::Vlek);
        assert_eq!(l.ucode_spl, 217);
        assert!(l.hwid.is_none());
        assert!(l.csp_id.as_deref().unwrap_or("").contains("amazonaws.com"));
    }

    #[test]
    fn der_integers() {
        assert_eq!(der_small_uint(&[2, 1, 0]), Some(0));
        assert_eq!(der_small_uint(&[2, 1, 0x7f]), Some(0x7f));
        assert_eq!(der_small_uint(&[2, 2, 0, 0xd9]), Some(0xd9));
        assert_eq!(der_small_uint(&[2, 2, 0, 0x05]), None, "non-minimal");
        assert_eq!(der_small_uint(&[2, 2, 1, 0]), None, "too large");
        assert_eq!(der_small_uint(&[4, 1, 0]), None, "not an INTEGER");
        assert_eq!(der_small_uint(&[2, 1]), None, "truncated");
        assert_eq!(der_small_uint(&[2, 1, 0, 0]), None, "trailing");
        assert_eq!(der_small_uint(&[]), None);
    }

    #[test]
    fn product_names() {
        assert_eq!(
            generation_from_product_name("Milan-B0"),
            Some(Generation::Milan)
        );
        assert_eq!(
            generation_from_product_name("Genoa"),
            Some(Generation::Genoa)
        );
        assert_eq!(
            generation_from_product_name("Turin"),
            Some(Generation::Turin)
        );
        assert_eq!(generation_from_product_name("Venice"), None);
        assert_eq!(generation_from_product_name(""), None);
    }

    #[test]
    fn malformed_certificates_are_refused() {
        let der = read("virtee-milan-v2/vcek.der");
        for bad in [
            &der[..10],
            &der[..der.len() - 1],
            b"not a cert".as_slice(),
            &[],
        ] {
            assert_eq!(
                parse_cert(bad, CertRole::Vcek).unwrap_err().reason_code(),
                "EVIDENCE_CERT_MALFORMED"
            );
        }
        let mut trailing = der.clone();
        trailing.push(0);
        assert_eq!(
            parse_cert(&trailing, CertRole::Vcek)
                .unwrap_err()
                .reason_code(),
            "EVIDENCE_CERT_MALFORMED"
        );
    }

    #[test]
    fn pem_decoding() {
        assert_eq!(decode_base64("aGVsbG8="), Some(b"hello".to_vec()));
        assert_eq!(decode_base64("aGVsbG8h"), Some(b"hello!".to_vec()));
        assert_eq!(decode_base64("a*"), None);
        assert_eq!(decode_base64("aG=Vs"), None);
        let pem = read("oak-genoa-v5/ark.pem");
        let certs = certs_from_pem_or_der(&pem);
        assert_eq!(certs.len(), 1);
        assert_eq!(classify(&certs[0]), Some(CertRole::Ark));
    }

    #[test]
    fn cert_dir_loading() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            format!("{FIX}virtee-milan-v2/vcek.der"),
            dir.path().join("vcek.der"),
        )
        .unwrap();
        std::fs::copy(
            format!("{FIX}virtee-milan-v2/cert_chain_ask_ark.pem"),
            dir.path().join("cert_chain.pem"),
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let s = load_cert_dir(dir.path()).unwrap();
        assert!(s.vcek.is_some() && s.ask.is_some() && s.ark.is_some());
        assert!(s.vlek.is_none() && s.asvk.is_none() && s.crls.is_empty());
        // A second, different ARK is ambiguous.
        std::fs::copy(
            format!("{FIX}oak-genoa-v5/ark.pem"),
            dir.path().join("ark.pem"),
        )
        .unwrap();
        assert_eq!(
            load_cert_dir(dir.path()).unwrap_err().reason_code(),
            "EVIDENCE_CERT_MALFORMED"
        );
        // Missing directory.
        assert_eq!(
            load_cert_dir(&dir.path().join("nope"))
                .unwrap_err()
                .reason_code(),
            "EVIDENCE_CERT_MISSING"
        );
    }
}
