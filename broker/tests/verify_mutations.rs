//! One change at a time to real evidence, and the exact refusal it earns.
//!
//! Every byte of every fixture's signed area is flipped in turn and the
//! reason code asserted against a field map of the AMD report layout; then
//! the signature, certificates, roots, versions, lengths, certificate tables
//! and times are changed one by one. A small simulated chain (rcgen, ECDSA
//! P-384, AMD's extension OIDs) covers the simulated-root and CRL paths.

use std::path::{Path, PathBuf};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P384_SHA384_FIXED_SIGNING};
use broker::verify::{
    build_cert_table, Generation, TrustStore, Verifier, GUID_ARK, GUID_ASK, GUID_VCEK, GUID_VLEK,
    SIGNED_LEN,
};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CustomExtension,
    DistinguishedName, DnType, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SerialNumber, PKCS_ECDSA_P384_SHA384,
};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/snp-real")
}

fn read(p: &str) -> Vec<u8> {
    std::fs::read(fixtures().join(p)).unwrap()
}

fn at(s: &str) -> OffsetDateTime {
    OffsetDateTime::parse(s, &Rfc3339).unwrap()
}

fn today() -> OffsetDateTime {
    at("2026-11-26T00:00:00Z")
}

fn pem_ders(data: &[u8]) -> Vec<Vec<u8>> {
    let text = std::str::from_utf8(data).unwrap();
    text.split("-----BEGIN CERTIFICATE-----")
        .skip(1)
        .map(|c| {
            let body: String = c
                .split("-----END")
                .next()
                .unwrap()
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect();
            let mut out = Vec::new();
            let (mut acc, mut bits) = (0u32, 0);
            for ch in body.bytes().filter(|&b| b != b'=') {
                let v = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
                    .iter()
                    .position(|&a| a == ch)
                    .unwrap() as u32;
                acc = (acc << 6) | v;
                bits += 6;
                if bits >= 8 {
                    bits -= 8;
                    out.push((acc >> bits) as u8);
                    acc &= (1 << bits) - 1;
                }
            }
            out
        })
        .collect()
}

/// A real fixture: report, certificate table, verification time, layout facts.
struct Fixture {
    report: Vec<u8>,
    table: Vec<u8>,
    now: OffsetDateTime,
    turin: bool,
    vlek: bool,
}

fn fixture(name: &'static str) -> Fixture {
    let report = read(&format!("{name}/report.bin"));
    let (table, now, turin, vlek) = match name {
        "virtee-milan-v2" | "gosevguest-milan-v2-debug" => {
            let chain = pem_ders(&read(&format!("{name}/cert_chain_ask_ark.pem")));
            let vcek = read(&format!("{name}/vcek.der"));
            (
                build_cert_table(&[
                    (GUID_VCEK, &vcek),
                    (GUID_ASK, &chain[0]),
                    (GUID_ARK, &chain[1]),
                ]),
                today(),
                false,
                false,
            )
        }
        "oak-genoa-v5" | "oak-turin-v5" => {
            let vcek = read(&format!("{name}/vcek.der"));
            let ask = pem_ders(&read(&format!("{name}/ask.pem"))).remove(0);
            let ark = pem_ders(&read(&format!("{name}/ark.pem"))).remove(0);
            (
                build_cert_table(&[(GUID_VCEK, &vcek), (GUID_ASK, &ask), (GUID_ARK, &ark)]),
                today(),
                name == "oak-turin-v5",
                false,
            )
        }
        "trustee-aws-milan-vlek-v3" => {
            let b = pem_ders(&read(&format!("{name}/milan_ask_ark_asvk.pem")));
            let vlek = read(&format!("{name}/vlek.der"));
            (
                build_cert_table(&[(GUID_VLEK, &vlek), (GUID_ASK, &b[2]), (GUID_ARK, &b[1])]),
                at("2025-06-01T00:00:00Z"),
                false,
                true,
            )
        }
        _ => unreachable!(),
    };
    Fixture {
        report,
        table,
        now,
        turin,
        vlek,
    }
}

const ALL: [&str; 5] = [
    "virtee-milan-v2",
    "gosevguest-milan-v2-debug",
    "oak-genoa-v5",
    "oak-turin-v5",
    "trustee-aws-milan-vlek-v3",
];

fn code(v: &Verifier, report: &[u8], table: &[u8], now: OffsetDateTime) -> &'static str {
    match v.verify(report, table, None, now) {
        Ok(_) => "VERIFIED",
        Err(e) => e.reason_code(),
    }
}

/// Which check catches `report[off] ^= 0x80`, from the AMD report layout.
fn expected_for_flip(f: &Fixture, off: usize) -> &'static str {
    let version = u32::from_le_bytes(f.report[..4].try_into().unwrap());
    // Must-be-zero bytes of this version's layout (AMD SNP ABI, report table).
    let mut reserved = vec![0x4C..0x50, 0x1EB..0x1EC, 0x1EF..0x1F0];
    reserved.push(if version >= 3 {
        0x18B..0x1A0
    } else {
        0x188..0x1A0
    });
    reserved.push(if version >= 5 {
        0x208..0x2A0
    } else {
        0x1F8..0x2A0
    });
    if reserved.iter().any(|r| r.contains(&off)) {
        return "EVIDENCE_REPORT_MALFORMED";
    }
    match off {
        0x00..=0x03 => "EVIDENCE_REPORT_VERSION",
        0x34..=0x37 => "EVIDENCE_SIG_ALGO",
        // reported_tcb: the bytes bound to the VEK's SPL extensions.
        0x180..=0x187 => {
            let i = off - 0x180;
            let bound = if f.turin {
                [0, 1, 2, 3, 7].contains(&i)
            } else {
                [0, 1, 6, 7].contains(&i)
            };
            if bound {
                "EVIDENCE_TCB_MISMATCH"
            } else {
                "EVIDENCE_REPORT_SIGNATURE"
            }
        }
        // CPUID family and model pick the generation (v3 and later).
        0x188 | 0x189 if version >= 3 => "EVIDENCE_GENERATION_UNKNOWN",
        // chip_id is bound to the VCEK's hwID; a VLEK does not bind it.
        0x1A0..=0x1DF if !f.vlek => "EVIDENCE_HWID_MISMATCH",
        _ => "EVIDENCE_REPORT_SIGNATURE",
    }
}

#[test]
fn every_byte_of_the_signed_area_is_covered() {
    for name in ALL {
        let f = fixture(name);
        let v = Verifier::new(TrustStore::amd(), None);
        assert_eq!(
            code(&v, &f.report, &f.table, f.now),
            "VERIFIED",
            "{name} unmodified"
        );
        for off in 0..SIGNED_LEN {
            let mut m = f.report.clone();
            m[off] ^= 0x80;
            assert_eq!(
                code(&v, &m, &f.table, f.now),
                expected_for_flip(&f, off),
                "{name}: byte {off:#05x} flipped"
            );
        }
    }
}

#[test]
fn family_id_byte_0x15_breaks_the_signature() {
    // The sev crate's own negative test: report[21] ^= 0x80 (inside family_id).
    for name in ALL {
        let f = fixture(name);
        let mut m = f.report.clone();
        m[0x15] ^= 0x80;
        let v = Verifier::new(TrustStore::amd(), None);
        assert_eq!(
            code(&v, &m, &f.table, f.now),
            "EVIDENCE_REPORT_SIGNATURE",
            "{name}"
        );
    }
}

#[test]
fn signature_and_trailing_bytes() {
    for name in ALL {
        let f = fixture(name);
        let v = Verifier::new(TrustStore::amd(), None);
        // R and S significant bytes, their zero padding, and the reserved tail.
        for off in [
            0x2A0,
            0x2A0 + 47,
            0x2A0 + 48,
            0x2A0 + 71,
            0x2E8,
            0x2E8 + 47,
            0x2E8 + 48,
            0x2E8 + 71,
            0x330,
            0x4A0 - 1,
        ] {
            let mut m = f.report.clone();
            m[off] ^= 0x01;
            assert_eq!(
                code(&v, &m, &f.table, f.now),
                "EVIDENCE_REPORT_SIGNATURE",
                "{name} byte {off:#x}"
            );
        }
        // r and s swapped.
        let mut m = f.report.clone();
        let (r, s) = (
            f.report[0x2A0..0x2E8].to_vec(),
            f.report[0x2E8..0x330].to_vec(),
        );
        m[0x2A0..0x2E8].copy_from_slice(&s);
        m[0x2E8..0x330].copy_from_slice(&r);
        assert_eq!(
            code(&v, &m, &f.table, f.now),
            "EVIDENCE_REPORT_SIGNATURE",
            "{name} r/s swapped"
        );
    }
}

#[test]
fn report_versions_and_lengths() {
    let f = fixture("oak-genoa-v5");
    let v = Verifier::new(TrustStore::amd(), None);
    for version in [1u32, 4, 6] {
        let mut m = f.report.clone();
        m[..4].copy_from_slice(&version.to_le_bytes());
        assert_eq!(
            code(&v, &m, &f.table, f.now),
            "EVIDENCE_REPORT_VERSION",
            "version {version}"
        );
    }
    for len in [0, 1, 0x2A0, 1183] {
        assert_eq!(
            code(&v, &f.report[..len], &f.table, f.now),
            "EVIDENCE_REPORT_LENGTH",
            "len {len}"
        );
    }
    let mut long = f.report.clone();
    long.extend_from_slice(&[0; 16]);
    assert_eq!(code(&v, &long, &f.table, f.now), "EVIDENCE_REPORT_LENGTH");
}

#[test]
fn signing_key_field_must_match_the_certificate() {
    let v = Verifier::new(TrustStore::amd(), None);
    // VCEK-signed report claiming a VLEK.
    let f = fixture("virtee-milan-v2");
    let mut m = f.report.clone();
    m[0x48] = (m[0x48] & !0b11100) | (1 << 2);
    assert_eq!(
        code(&v, &m, &f.table, f.now),
        "EVIDENCE_SIGNING_KEY_MISMATCH"
    );
    // VLEK-signed report claiming a VCEK.
    let f = fixture("trustee-aws-milan-vlek-v3");
    let mut m = f.report.clone();
    m[0x48] &= !0b11100;
    assert_eq!(
        code(&v, &m, &f.table, f.now),
        "EVIDENCE_SIGNING_KEY_MISMATCH"
    );
    // "No key" (7) and MASK_CHIP_KEY: the report is unsigned.
    let mut m = f.report.clone();
    m[0x48] |= 0b11100;
    assert_eq!(code(&v, &m, &f.table, f.now), "EVIDENCE_REPORT_UNSIGNED");
    let mut m = f.report.clone();
    m[0x48] |= 0b10;
    assert_eq!(code(&v, &m, &f.table, f.now), "EVIDENCE_REPORT_UNSIGNED");
}

#[test]
fn tcb_mismatch_is_caught_by_the_binding_before_the_signature() {
    let v = Verifier::new(TrustStore::amd(), None);
    for name in ALL {
        let f = fixture(name);
        let mut m = f.report.clone();
        m[0x187] = m[0x187].wrapping_add(1); // microcode in every layout
        let e = v.verify(&m, &f.table, None, f.now).unwrap_err();
        assert_eq!(e.reason_code(), "EVIDENCE_TCB_MISMATCH", "{name}");
        assert!(e.to_string().contains("microcode"), "{e}");
    }
}

#[test]
fn vcek_der_changes() {
    let f = fixture("virtee-milan-v2");
    let vcek = read("virtee-milan-v2/vcek.der");
    let chain = pem_ders(&read("virtee-milan-v2/cert_chain_ask_ark.pem"));
    let v = Verifier::new(TrustStore::amd(), None);
    let with = |vcek: &[u8]| {
        let t = build_cert_table(&[
            (GUID_VCEK, vcek),
            (GUID_ASK, &chain[0]),
            (GUID_ARK, &chain[1]),
        ]);
        code(&v, &f.report, &t, f.now)
    };
    // Signature region (last byte of the signature BIT STRING).
    let mut m = vcek.clone();
    *m.last_mut().unwrap() ^= 1;
    assert_eq!(with(&m), "EVIDENCE_CHAIN_SIGNATURE");
    // TBS: a byte of the hwID extension value (which equals chip_id).
    let chip = &f.report[0x1A0..0x1E0];
    let pos = vcek
        .windows(64)
        .position(|w| w == chip)
        .expect("hwID in the VCEK");
    let mut m = vcek.clone();
    m[pos + 5] ^= 1;
    assert_eq!(with(&m), "EVIDENCE_CHAIN_SIGNATURE");
    // TBS: the public key point.
    let mut m = vcek.clone();
    let spki = vcek
        .windows(3)
        .position(|w| w == [0x00, 0x04, 0xa1])
        .expect("EC point")
        + 10;
    m[spki] ^= 1;
    assert_eq!(with(&m), "EVIDENCE_CHAIN_SIGNATURE");
    // Broken DER.
    let mut m = vcek.clone();
    m[0] = 0x31;
    assert_eq!(with(&m), "EVIDENCE_CERT_MALFORMED");
    assert_eq!(with(&vcek[..vcek.len() - 10]), "EVIDENCE_CERT_MALFORMED");
    // Intermediate changed.
    let mut ask = chain[0].clone();
    let n = ask.len();
    ask[n - 3] ^= 1;
    let t = build_cert_table(&[(GUID_VCEK, &vcek), (GUID_ASK, &ask), (GUID_ARK, &chain[1])]);
    assert_eq!(code(&v, &f.report, &t, f.now), "EVIDENCE_CHAIN_SIGNATURE");
}

#[test]
fn ark_of_another_generation_is_refused() {
    let v = Verifier::new(TrustStore::amd(), None);
    let f = fixture("virtee-milan-v2");
    let vcek = read("virtee-milan-v2/vcek.der");
    for other in ["oak-genoa-v5/ark.pem", "oak-turin-v5/ark.pem"] {
        let ark = pem_ders(&read(other)).remove(0);
        let t = build_cert_table(&[(GUID_VCEK, &vcek), (GUID_ARK, &ark)]);
        assert_eq!(
            code(&v, &f.report, &t, f.now),
            "EVIDENCE_ARK_MISMATCH",
            "{other}"
        );
    }
    let f = fixture("oak-turin-v5");
    let vcek = read("oak-turin-v5/vcek.der");
    let milan_ark = pem_ders(&read("virtee-milan-v2/cert_chain_ask_ark.pem")).remove(1);
    let t = build_cert_table(&[(GUID_VCEK, &vcek), (GUID_ARK, &milan_ark)]);
    assert_eq!(code(&v, &f.report, &t, f.now), "EVIDENCE_ARK_MISMATCH");
}

#[test]
fn vcek_of_another_chip_is_refused() {
    let v = Verifier::new(TrustStore::amd(), None);
    // Same generation, other chip: the chain verifies, hwID does not bind.
    let f = fixture("virtee-milan-v2");
    let other = read("gosevguest-milan-v2-debug/vcek.der");
    let t = build_cert_table(&[(GUID_VCEK, &other)]);
    assert_eq!(code(&v, &f.report, &t, f.now), "EVIDENCE_HWID_MISMATCH");
    // A Genoa report with a Milan VCEK: it does not chain to the Genoa ASK.
    let f = fixture("oak-genoa-v5");
    let t = build_cert_table(&[(GUID_VCEK, &read("virtee-milan-v2/vcek.der"))]);
    assert_eq!(code(&v, &f.report, &t, f.now), "EVIDENCE_CHAIN_SIGNATURE");
    // A Milan report with the Genoa VCEK (v2: generation from its productName).
    let f = fixture("virtee-milan-v2");
    let t = build_cert_table(&[(GUID_VCEK, &read("oak-genoa-v5/vcek.der"))]);
    assert_eq!(code(&v, &f.report, &t, f.now), "EVIDENCE_HWID_MISMATCH");
}

#[test]
fn malformed_certificate_tables() {
    let f = fixture("oak-genoa-v5");
    let v = Verifier::new(TrustStore::amd(), None);
    let t = &f.table;
    // Truncated anywhere: inside the entries or inside a certificate.
    for len in [1, 23, 24, 50, 96, t.len() / 2, t.len() - 1] {
        assert_eq!(
            code(&v, &f.report, &t[..len], f.now),
            "EVIDENCE_CERT_TABLE_MALFORMED",
            "len {len}"
        );
    }
    // An offset past the end.
    let mut m = t.clone();
    m[16..20].copy_from_slice(&(t.len() as u32).to_le_bytes());
    assert_eq!(
        code(&v, &f.report, &m, f.now),
        "EVIDENCE_CERT_TABLE_MALFORMED"
    );
    // Overlapping entries: the ASK entry starts inside the VCEK blob.
    let mut m = t.clone();
    let vcek_off = u32::from_le_bytes(t[16..20].try_into().unwrap());
    m[24 + 16..24 + 20].copy_from_slice(&(vcek_off + 4).to_le_bytes());
    assert_eq!(
        code(&v, &f.report, &m, f.now),
        "EVIDENCE_CERT_TABLE_MALFORMED"
    );
    // Garbage instead of a table.
    assert_eq!(
        code(&v, &f.report, &[0x5a; 100], f.now),
        "EVIDENCE_CERT_TABLE_MALFORMED"
    );
}

#[test]
fn validity_times() {
    let v = Verifier::new(TrustStore::amd(), None);
    let f = fixture("oak-turin-v5");
    assert_eq!(
        code(&v, &f.report, &f.table, at("2032-07-18T00:00:00Z")),
        "EVIDENCE_CERT_EXPIRED"
    );
    assert_eq!(
        code(&v, &f.report, &f.table, at("2025-07-01T00:00:00Z")),
        "EVIDENCE_CERT_NOT_YET_VALID"
    );
    let f = fixture("trustee-aws-milan-vlek-v3");
    assert_eq!(
        code(&v, &f.report, &f.table, at("2025-12-10T22:14:22Z")),
        "EVIDENCE_CERT_EXPIRED"
    );
    assert_eq!(
        code(&v, &f.report, &f.table, at("2025-12-10T22:14:20Z")),
        "VERIFIED"
    );
}

// ---- simulated platform ----

fn spl(n: u64, v: u8) -> CustomExtension {
    let content = if v >= 0x80 {
        vec![2, 2, 0, v]
    } else {
        vec![2, 1, v]
    };
    CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 3704, 1, 3, n], content)
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = at("2024-01-01T00:00:00Z");
    p.not_after = at("2040-01-01T00:00:00Z");
    p
}

struct Sim {
    ark_der: Vec<u8>,
    ask_der: Vec<u8>,
    report: Vec<u8>,
    table: Vec<u8>,
    crl_revoking_ask: Vec<u8>,
    crl_by_other_key: Vec<u8>,
    ask_serial: u64,
}

/// A simulated Milan chain (ARK-Sim-Milan → SEV-Sim-Milan → SEV-VCEK) and
/// the virtee v2 report re-signed by the simulated VCEK.
fn sim(root_cn: &str) -> Sim {
    let ark_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
    let ark_params = ca_params(root_cn);
    let ark_der = ark_params.self_signed(&ark_key).unwrap().der().to_vec();
    let ark = Issuer::from_params(&ark_params, &ark_key);

    let ask_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
    let mut ask_params = ca_params("SEV-Sim-Milan");
    let ask_serial = 0x1234u64;
    ask_params.serial_number = Some(SerialNumber::from(ask_serial));
    let ask_der = ask_params.signed_by(&ask_key, &ark).unwrap().der().to_vec();
    let ask = Issuer::from_params(&ask_params, &ask_key);

    let mut report = read("virtee-milan-v2/report.bin");
    let vcek_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
    let mut vp = CertificateParams::new(Vec::<String>::new()).unwrap();
    vp.distinguished_name = DistinguishedName::new();
    vp.distinguished_name.push(DnType::CommonName, "SEV-VCEK");
    vp.not_before = at("2024-01-01T00:00:00Z");
    vp.not_after = at("2040-01-01T00:00:00Z");
    let tcb = &report[0x180..0x188];
    vp.custom_extensions = vec![
        CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 3704, 1, 2], {
            let mut v = vec![0x16, 8];
            v.extend_from_slice(b"Milan-B0");
            v
        }),
        spl(1, tcb[0]),
        spl(2, tcb[1]),
        spl(3, tcb[6]),
        spl(8, tcb[7]),
        CustomExtension::from_oid_content(
            &[1, 3, 6, 1, 4, 1, 3704, 1, 4],
            report[0x1A0..0x1E0].to_vec(),
        ),
    ];
    let vcek_der = vp.signed_by(&vcek_key, &ask).unwrap().der().to_vec();

    let signer =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &vcek_key.serialize_der())
            .unwrap();
    let sig = signer
        .sign(&SystemRandom::new(), &report[..SIGNED_LEN])
        .unwrap();
    let sig = sig.as_ref();
    report[0x2A0..0x4A0].fill(0);
    for i in 0..48 {
        report[0x2A0 + i] = sig[47 - i];
        report[0x2E8 + i] = sig[95 - i];
    }
    let table = build_cert_table(&[
        (GUID_VCEK, &vcek_der),
        (GUID_ASK, &ask_der),
        (GUID_ARK, &ark_der),
    ]);

    let crl = |issuer: &Issuer<'_, &KeyPair>| {
        CertificateRevocationListParams {
            this_update: at("2026-01-01T00:00:00Z"),
            next_update: at("2027-01-01T00:00:00Z"),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: vec![RevokedCertParams {
                serial_number: SerialNumber::from(ask_serial),
                revocation_time: at("2026-01-01T00:00:00Z"),
                reason_code: None,
                invalidity_date: None,
            }],
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(issuer)
        .unwrap()
        .der()
        .to_vec()
    };
    let crl_revoking_ask = crl(&ark);
    let other_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
    let crl_by_other_key = crl(&Issuer::from_params(&ark_params, &other_key));
    Sim {
        ark_der,
        ask_der,
        report,
        table,
        crl_revoking_ask,
        crl_by_other_key,
        ask_serial,
    }
}

#[test]
fn simulated_platform_needs_its_root_configured() {
    let s = sim("ARK-Sim-Milan");
    let amd_only = Verifier::new(TrustStore::amd(), None);
    assert_eq!(
        code(&amd_only, &s.report, &s.table, today()),
        "EVIDENCE_SIMULATED_PLATFORM_NOT_TRUSTED"
    );
    // Without the ARK in the table too.
    let vcek_and_ask = {
        let full = broker::verify::parse_cert_table(&s.table).unwrap();
        build_cert_table(&[
            (GUID_VCEK, full.vcek.as_deref().unwrap()),
            (GUID_ASK, &s.ask_der),
        ])
    };
    assert_eq!(
        code(&amd_only, &s.report, &vcek_and_ask, today()),
        "EVIDENCE_SIMULATED_PLATFORM_NOT_TRUSTED"
    );

    let store = TrustStore::amd()
        .with_simulated_root(Generation::Milan, &s.ark_der)
        .unwrap();
    let v = Verifier::new(store.clone(), None);
    let ok = v.verify(&s.report, &s.table, None, today()).unwrap();
    assert!(ok.is_simulated());
    assert_eq!(ok.claims().generation, Generation::Milan);
    let ok = v.verify(&s.report, &vcek_and_ask, None, today()).unwrap();
    assert!(ok.is_simulated());
    // Configured for another generation only: still not trusted.
    let genoa_only = Verifier::new(
        TrustStore::amd()
            .with_simulated_root(Generation::Genoa, &s.ark_der)
            .unwrap(),
        None,
    );
    assert_eq!(
        code(&genoa_only, &s.report, &s.table, today()),
        "EVIDENCE_SIMULATED_PLATFORM_NOT_TRUSTED"
    );
    // Another simulated root than the configured one.
    let other = sim("ARK-Sim-Milan");
    assert_eq!(
        code(&v, &other.report, &other.table, today()),
        "EVIDENCE_SIMULATED_PLATFORM_NOT_TRUSTED"
    );
    // The simulated signature still covers every byte.
    let mut m = s.report.clone();
    m[0x90] ^= 1;
    assert_eq!(code(&v, &m, &s.table, today()), "EVIDENCE_REPORT_SIGNATURE");
}

#[test]
fn unknown_root_is_untrusted() {
    let s = sim("Some-Other-Root");
    let v = Verifier::new(TrustStore::amd(), None);
    assert_eq!(
        code(&v, &s.report, &s.table, today()),
        "EVIDENCE_UNTRUSTED_ROOT"
    );
}

#[test]
fn crl_in_the_certificate_directory() {
    let s = sim("ARK-Sim-Milan");
    let store = TrustStore::amd()
        .with_simulated_root(Generation::Milan, &s.ark_der)
        .unwrap();
    let v = Verifier::new(store, None);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("crl.der"), &s.crl_revoking_ask).unwrap();
    let e = v
        .verify(&s.report, &s.table, Some(dir.path()), today())
        .unwrap_err();
    assert_eq!(e.reason_code(), "EVIDENCE_CERT_REVOKED");
    assert!(
        e.to_string().contains(&format!("{:x}", s.ask_serial)),
        "{e}"
    );
    std::fs::write(dir.path().join("crl.der"), &s.crl_by_other_key).unwrap();
    assert_eq!(
        v.verify(&s.report, &s.table, Some(dir.path()), today())
            .unwrap_err()
            .reason_code(),
        "EVIDENCE_CRL_INVALID"
    );
    // A CRL issued by another root does not apply to this chain.
    let unrelated = sim("ARK-Sim-Other");
    std::fs::write(dir.path().join("crl.der"), &unrelated.crl_revoking_ask).unwrap();
    assert!(v
        .verify(&s.report, &s.table, Some(dir.path()), today())
        .is_ok());
}
