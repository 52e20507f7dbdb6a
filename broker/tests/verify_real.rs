//! Real AMD SEV-SNP reports: every case in `tests/data/verify_real/` (one
//! file per case with an `expect:` line, age-testkit style) is verified and
//! must give exactly the expected outcome; verified reports must decode to
//! the values their fixture's EXPECTED.md records.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use broker::verify::{
    build_cert_table, classify, CertRole, Generation, SignerKind, Tcb, TrustStore, VerifiedReport,
    Verifier, GUID_ARK, GUID_ASK, GUID_VCEK, GUID_VLEK,
};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/snp-real")
}

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/verify_real")
}

/// PEM → DER list (or the DER itself).
fn ders(data: &[u8]) -> Vec<Vec<u8>> {
    let text = match std::str::from_utf8(data) {
        Ok(t) if t.contains("-----BEGIN CERTIFICATE-----") => t,
        _ => return vec![data.to_vec()],
    };
    text.split("-----BEGIN CERTIFICATE-----")
        .skip(1)
        .map(|chunk| {
            let body: String = chunk
                .split("-----END CERTIFICATE-----")
                .next()
                .unwrap()
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect();
            base64_decode(&body)
        })
        .collect()
}

fn base64_decode(s: &str) -> Vec<u8> {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = A.iter().position(|&a| a == c).expect("base64") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// Builds an extended-report certificate table from fixture files.
fn table_from(dir: &Path, files: &[&str]) -> Vec<u8> {
    let mut entries: Vec<(&str, Vec<u8>)> = Vec::new();
    for f in files {
        for der in ders(&std::fs::read(dir.join(f)).unwrap()) {
            let guid = match classify(&der).expect("classifiable") {
                CertRole::Vcek => GUID_VCEK,
                CertRole::Vlek => GUID_VLEK,
                CertRole::Ark => GUID_ARK,
                CertRole::Ask => GUID_ASK,
                // The ASK slot carries the ASVK for VLEK reports; the bundle
                // also holds the (unneeded) ASK, which is left out.
                CertRole::Asvk => GUID_ASK,
                CertRole::Crl => unreachable!(),
            };
            if matches!(classify(&der), Some(CertRole::Ask))
                && files.iter().any(|f| f.contains("asvk"))
            {
                continue;
            }
            entries.push((guid, der));
        }
    }
    let refs: Vec<(&str, &[u8])> = entries.iter().map(|(g, d)| (*g, d.as_slice())).collect();
    build_cert_table(&refs)
}

struct Case {
    name: String,
    fields: HashMap<String, String>,
}

fn cases() -> Vec<Case> {
    let mut v: Vec<Case> = std::fs::read_dir(cases_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "case"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let fields = text
                .lines()
                .filter_map(|l| l.split_once(": "))
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .collect();
            Case {
                name: p.file_name().unwrap().to_string_lossy().into_owned(),
                fields,
            }
        })
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

fn run(case: &Case) -> Result<VerifiedReport, broker::verify::EvidenceRejected> {
    let dir = fixtures().join(&case.fields["fixture"]);
    let report = std::fs::read(dir.join("report.bin")).unwrap();
    let at = OffsetDateTime::parse(&case.fields["at"], &Rfc3339).unwrap();
    let certs = &case.fields["certs"];
    let verifier = Verifier::new(TrustStore::amd(), None);
    if certs == "dir" {
        verifier.verify(&report, &[], Some(&dir), at)
    } else if certs == "none" {
        verifier.verify(&report, &[], None, at)
    } else {
        let files: Vec<&str> = certs
            .strip_prefix("table ")
            .expect("certs: table FILES")
            .split(' ')
            .collect();
        verifier.verify(&report, &table_from(&dir, &files), None, at)
    }
}

#[test]
fn every_case_gives_its_expected_outcome() {
    let all = cases();
    assert!(
        all.len() >= 10,
        "cases missing from {}",
        cases_dir().display()
    );
    let mut verified_fixtures = std::collections::BTreeSet::new();
    for case in &all {
        let expect = &case.fields["expect"];
        match (run(case), expect.as_str()) {
            (Ok(v), "verified") => {
                check_against_expected_md(&case.fields["fixture"], &v);
                verified_fixtures.insert(case.fields["fixture"].clone());
            }
            (Ok(_), other) => panic!("{}: verified, expected {other}", case.name),
            (Err(e), "verified") => panic!("{}: refused {}: {e}", case.name, e.reason_code()),
            (Err(e), code) => assert_eq!(e.reason_code(), code, "{}: {e}", case.name),
        }
    }
    // All five real sets verify somewhere in the suite.
    assert_eq!(verified_fixtures.len(), 5, "{verified_fixtures:?}");
}

/// `key: value` pairs from EXPECTED.md's bullet lines.
fn expected_md(fixture: &str) -> HashMap<String, String> {
    let text = std::fs::read_to_string(fixtures().join(fixture).join("EXPECTED.md")).unwrap();
    let mut m = HashMap::new();
    for line in text.lines() {
        let Some(line) = line.strip_prefix("- ") else {
            continue;
        };
        // "version: **2**; guest_svn: 0; vmpl: 0; sig_algo: 1 (...)" holds several.
        for part in line.split("; ") {
            if let Some((k, v)) = part.split_once(": ") {
                m.entry(k.trim().to_string())
                    .or_insert_with(|| v.trim().to_string());
            }
        }
    }
    m
}

fn strip(v: &str) -> &str {
    v.trim_matches(|c| c == '`' || c == '*')
}

fn first_word(v: &str) -> &str {
    strip(v.split([' ', ':', '(']).next().unwrap())
}

fn hex_u64(v: &str) -> u64 {
    u64::from_str_radix(first_word(v).trim_start_matches("0x"), 16).unwrap()
}

/// Parses "`0200000000000544` = {'bootloader': 2, 'tee': 0, 'snp': 5, 'microcode': 68}".
fn tcb(v: &str) -> Tcb {
    let dict = v.split_once('{').unwrap().1.trim_end_matches('}');
    let mut t = Tcb::default();
    for kv in dict.split(", ") {
        let (k, n) = kv.split_once(": ").unwrap();
        let n: u8 = n.parse().unwrap();
        match k.trim_matches('\'') {
            "fmc" => t.fmc = Some(n),
            "bootloader" => t.bootloader = n,
            "tee" => t.tee = n,
            "snp" => t.snp = n,
            "microcode" => t.microcode = n,
            other => panic!("unknown TCB key {other}"),
        }
    }
    t
}

fn check_against_expected_md(fixture: &str, v: &VerifiedReport) {
    let e = expected_md(fixture);
    let c = v.claims();
    let ctx = |f: &str| format!("{fixture}: {f}");
    assert_eq!(
        c.version.to_string(),
        strip(&e["version"]),
        "{}",
        ctx("version")
    );
    assert_eq!(
        c.guest_svn.to_string(),
        e["guest_svn"],
        "{}",
        ctx("guest_svn")
    );
    assert_eq!(c.vmpl.to_string(), e["vmpl"], "{}", ctx("vmpl"));
    assert_eq!(c.policy.raw, hex_u64(&e["policy"]), "{}", ctx("policy"));
    let md = std::fs::read_to_string(fixtures().join(fixture).join("EXPECTED.md")).unwrap();
    let policy_text = md.lines().find(|l| l.starts_with("- policy:")).unwrap();
    assert_eq!(
        c.policy.debug,
        policy_text.contains("**DEBUG=1**"),
        "{}",
        ctx("debug")
    );
    assert_eq!(
        c.policy.migrate_ma,
        policy_text.contains("**MIGRATE_MA=1**"),
        "{}",
        ctx("migrate_ma")
    );
    assert_eq!(
        c.platform_info,
        hex_u64(&e["platform_info"]),
        "{}",
        ctx("platform_info")
    );
    for (name, ours) in [
        ("measurement", &c.measurement),
        ("report_data", &c.report_data),
        ("host_data", &c.host_data),
        ("family_id", &c.family_id),
        ("image_id", &c.image_id),
        ("id_key_digest", &c.id_key_digest),
        ("author_key_digest", &c.author_key_digest),
        ("report_id", &c.report_id),
        ("chip_id", &c.chip_id),
    ] {
        assert_eq!(hex::encode(ours), strip(&e[name]), "{}", ctx(name));
    }
    assert_eq!(
        hex::encode(v.decoded().report_id_ma),
        strip(&e["report_id_ma"]),
        "{}",
        ctx("report_id_ma")
    );
    assert_eq!(
        c.reported_tcb,
        tcb(&e["reported_tcb"]),
        "{}",
        ctx("reported_tcb")
    );
    assert_eq!(
        c.current_tcb,
        tcb(&e["current_tcb"]),
        "{}",
        ctx("current_tcb")
    );
    assert_eq!(
        c.committed_tcb,
        tcb(&e["committed_tcb"]),
        "{}",
        ctx("committed_tcb")
    );
    assert_eq!(c.launch_tcb, tcb(&e["launch_tcb"]), "{}", ctx("launch_tcb"));
    // "firmware: current 1.49.3, committed 1.49.3"
    let fw = &e["firmware"];
    let (cur, com) = fw.split_once(", ").unwrap();
    assert_eq!(
        c.current_firmware.to_string(),
        cur.trim_start_matches("current "),
        "{}",
        ctx("fw")
    );
    assert_eq!(
        c.committed_firmware.to_string(),
        com.trim_start_matches("committed "),
        "{}",
        ctx("fw")
    );
    // Signer from key_info's SIGNING_KEY.
    let key_info = &e["key_info (0x48)"];
    let signer = if key_info.contains("SIGNING_KEY=1") {
        SignerKind::Vlek
    } else {
        assert!(key_info.contains("SIGNING_KEY=0"));
        SignerKind::Vcek
    };
    assert_eq!(c.signer, signer, "{}", ctx("signer"));
    // Generation from the VEK's productName ("productName1=Milan-B0").
    let text = std::fs::read_to_string(fixtures().join(fixture).join("EXPECTED.md")).unwrap();
    let product = text
        .split("productName1=")
        .nth(1)
        .unwrap()
        .split([',', ' '])
        .next()
        .unwrap();
    let generation = match product.split('-').next().unwrap() {
        "Milan" => Generation::Milan,
        "Genoa" => Generation::Genoa,
        "Turin" => Generation::Turin,
        other => panic!("unknown product {other}"),
    };
    assert_eq!(c.generation, generation, "{}", ctx("generation"));
    assert_eq!(
        v.vek().product_name.as_deref(),
        Some(product),
        "{}",
        ctx("productName")
    );
    // CPUID and mitigation vectors where EXPECTED.md records them.
    if let Some(cpuid) = e.get("cpuid") {
        let d = v.decoded().cpuid.expect("v3+ has CPUID");
        assert_eq!(
            format!(
                "family {:#04x}, model {:#04x}, stepping {:#04x}",
                d.family, d.model, d.stepping
            ),
            *cpuid,
            "{}",
            ctx("cpuid")
        );
    } else {
        assert!(v.decoded().cpuid.is_none(), "{}", ctx("cpuid"));
    }
    if let Some(m) = e.get("launch_mit_vector") {
        assert_eq!(
            v.decoded().launch_mit_vector,
            Some(hex_u64(m)),
            "{}",
            ctx("launch_mit_vector")
        );
        assert_eq!(
            v.decoded().current_mit_vector,
            Some(hex_u64(&e["current_mit_vector"])),
            "{}",
            ctx("current_mit_vector")
        );
    }
    // The VEK fingerprint is the SHA-256 of the certificate file recorded in EXPECTED.md.
    let vek_file = match signer {
        SignerKind::Vcek => "`vcek.der`",
        SignerKind::Vlek => "`vlek.der`",
    };
    assert_eq!(
        hex::encode(v.vek_fingerprint()),
        strip(&e[vek_file]),
        "{}",
        ctx("vek sha256")
    );
    assert!(!v.is_simulated());
}

#[test]
fn expected_md_parser_reads_what_it_claims() {
    // Guards the test's own parsing: a value it reads must be present verbatim.
    let e = expected_md("oak-turin-v5");
    assert_eq!(strip(&e["version"]), "5");
    assert_eq!(hex_u64(&e["platform_info"]), 0x67);
    assert_eq!(tcb(&e["reported_tcb"]).fmc, Some(0));
    assert_eq!(tcb(&e["reported_tcb"]).microcode, 71);
}

#[test]
fn report_data_binding() {
    let dir = fixtures().join("oak-genoa-v5");
    let report = std::fs::read(dir.join("report.bin")).unwrap();
    let at = OffsetDateTime::parse("2026-11-26T00:00:00Z", &Rfc3339).unwrap();
    let verifier = Verifier::new(TrustStore::amd(), Some(dir.clone()));
    let v = verifier.verify(&report, &[], None, at).unwrap();
    let mut expected = [0u8; 64];
    expected.copy_from_slice(&v.claims().report_data);
    let bound = v.clone().bind(&expected).unwrap();
    assert_eq!(bound.claims().measurement, v.claims().measurement);
    assert_eq!(bound.vek_fingerprint(), v.vek_fingerprint());
    for i in [0usize, 31, 32, 63] {
        let mut other = expected;
        other[i] ^= 1;
        let e = v.clone().bind(&other).unwrap_err();
        assert_eq!(e.reason_code(), "EVIDENCE_REPORT_DATA_MISMATCH");
    }
}

#[test]
fn chain_cache_serves_repeat_verifications_and_rechecks_time() {
    let dir = fixtures().join("trustee-aws-milan-vlek-v3");
    let report = std::fs::read(dir.join("report.bin")).unwrap();
    let table = table_from(&dir, &["vlek.der", "milan_ask_ark_asvk.pem"]);
    let verifier = Verifier::new(TrustStore::amd(), None);
    let before = OffsetDateTime::parse("2025-06-01T00:00:00Z", &Rfc3339).unwrap();
    let after = OffsetDateTime::parse("2026-11-26T00:00:00Z", &Rfc3339).unwrap();
    verifier.verify(&report, &table, None, before).unwrap();
    assert_eq!(verifier.cached_chains(), 1);
    verifier.verify(&report, &table, None, before).unwrap();
    assert_eq!(verifier.cached_chains(), 1);
    // A cached chain is still refused once its VLEK has expired.
    let e = verifier.verify(&report, &table, None, after).unwrap_err();
    assert_eq!(e.reason_code(), "EVIDENCE_CERT_EXPIRED");
    // And the cache never vouches for a changed report.
    let mut tampered = report.clone();
    tampered[0x90] ^= 1;
    let e = verifier
        .verify(&tampered, &table, None, before)
        .unwrap_err();
    assert_eq!(e.reason_code(), "EVIDENCE_REPORT_SIGNATURE");
}
