//! Tests of the simulated platform: signatures, byte-exact encoding, the certificate chain,
//! AMD extension encodings against real VCEKs, and refusal of broken platform directories.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P384_SHA384_ASN1, ECDSA_P384_SHA384_FIXED};
use sev::firmware::guest::AttestationReport;
use sev::parser::ByteParser;

use super::certs::{amd_oid, AMD_OID_PREFIX};
use super::der::{self, oid_contents};
use super::*;
use keybroker_snp::cert_table::{self, CertKind};
use keybroker_snp::report::signature;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/snp-real")
        .join(rel)
}

fn gen(params: &SimParams) -> (tempfile::TempDir, SimPlatform) {
    let dir = tempfile::tempdir().unwrap();
    let p = SimPlatform::generate(dir.path(), params).unwrap();
    (dir, p)
}

/// Verifies the report signature the way the broker must: over the raw signed range,
/// with R and S converted from their 72-byte little-endian fields.
fn verify_report(report: &[u8], vcek_der: &[u8]) -> bool {
    let cert = der::parse_cert(vcek_der).unwrap();
    let Ok(sig) = signature::to_fixed(report) else {
        return false;
    };
    UnparsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, cert.public_key)
        .verify(&report[SIGNED_RANGE], &sig)
        .is_ok()
}

fn signed_by(issuer_der: &[u8], cert_der: &[u8]) -> bool {
    let issuer = der::parse_cert(issuer_der).unwrap();
    let cert = der::parse_cert(cert_der).unwrap();
    issuer.subject == cert.issuer
        && UnparsedPublicKey::new(&ECDSA_P384_SHA384_ASN1, issuer.public_key)
            .verify(cert.tbs, cert.signature)
            .is_ok()
}

/// The AMD extensions of a certificate, in order: (OID contents, value, critical).
fn amd_exts(cert_der: &[u8]) -> Vec<(Vec<u8>, Vec<u8>, bool)> {
    let prefix = oid_contents(&AMD_OID_PREFIX);
    der::parse_cert(cert_der)
        .unwrap()
        .extensions
        .iter()
        .filter(|e| e.oid.starts_with(&prefix))
        .map(|e| (e.oid.to_vec(), e.value.to_vec(), e.critical))
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn reports_verify_decode_and_round_trip_for_every_generation_and_version() {
    for generation in [Generation::Milan, Generation::Genoa, Generation::Turin] {
        let (_dir, p) = gen(&SimParams::new(generation));
        for version in [2u32, 3, 5] {
            let guest = SimGuest {
                version,
                vmpl: 1,
                guest_svn: 7,
                host_data: [0x11; 32],
                family_id: [0x22; 16],
                image_id: [0x33; 16],
                id_key_digest: [0x44; 48],
                author_key_digest: [0x55; 48],
                ..SimGuest::default()
            };
            let data: [u8; 64] = std::array::from_fn(|i| i as u8);
            let bytes = p.report(&data, &guest).unwrap();
            assert_eq!(bytes.len(), REPORT_LEN);
            assert!(
                verify_report(&bytes, p.vcek_der()),
                "{generation} v{version}"
            );

            let decoded = AttestationReport::from_bytes(&bytes).unwrap();
            assert_eq!(
                decoded.to_bytes().unwrap().as_slice(),
                bytes.as_slice(),
                "{generation} v{version}"
            );
            assert_eq!(decoded.version, version);
            assert_eq!(u64::from(decoded.policy), DEFAULT_POLICY);
            assert!(!decoded.policy.debug_allowed() && !decoded.policy.migrate_ma_allowed());
            assert!(decoded.policy.smt_allowed());
            assert_eq!(
                (decoded.vmpl, decoded.guest_svn, decoded.sig_algo),
                (1, 7, 1)
            );
            assert_eq!(decoded.key_info.signing_key(), 0);
            assert_eq!(decoded.report_data, data);
            assert_eq!(decoded.measurement, guest.measurement);
            assert_eq!(decoded.host_data, guest.host_data);
            assert_eq!(
                (decoded.family_id, decoded.image_id),
                (guest.family_id, guest.image_id)
            );
            assert_eq!(decoded.id_key_digest, guest.id_key_digest);
            assert_eq!(decoded.author_key_digest, guest.author_key_digest);
            assert_eq!(decoded.report_id_ma, [0xff; 32]);
            assert_ne!(decoded.report_id, [0; 32]);
            assert_eq!(&decoded.chip_id, p.chip_id());
            let tcb = p.reported_tcb();
            for t in [
                decoded.reported_tcb,
                decoded.current_tcb,
                decoded.committed_tcb,
                decoded.launch_tcb,
            ] {
                assert_eq!(
                    (t.bootloader, t.tee, t.snp, t.microcode),
                    (tcb.bootloader, tcb.tee, tcb.snp, tcb.microcode)
                );
            }
            let fw = p.firmware();
            assert_eq!(
                (
                    decoded.current.major,
                    decoded.current.minor,
                    decoded.current.build
                ),
                (fw.major, fw.minor, fw.build)
            );
            assert_eq!(decoded.committed, decoded.current);
            let (fam, model, step) = generation.cpuid();
            if version == 2 {
                assert_eq!(decoded.cpuid_fam_id, None);
            } else {
                assert_eq!(
                    (
                        decoded.cpuid_fam_id,
                        decoded.cpuid_mod_id,
                        decoded.cpuid_step
                    ),
                    (Some(fam), Some(model), Some(step))
                );
            }
            assert_eq!(decoded.launch_mit_vector.is_some(), version == 5);
            if generation == Generation::Turin {
                assert_eq!(decoded.reported_tcb.fmc, tcb.fmc);
                assert!(p.chip_id()[8..].iter().all(|b| *b == 0));
            }

            // Any change to the signed area breaks the signature.
            for offset in [0x00, 0x08, 0x30, 0x50, 0x90, 0x1A0, 0x29F] {
                let mut m = bytes.clone();
                m[offset] ^= 1;
                assert!(!verify_report(&m, p.vcek_der()), "flip at {offset:#x}");
            }
        }
    }
}

#[test]
fn guest_fields_and_tcb_override_reach_the_report() {
    let (_dir, p) = gen(&SimParams::default());
    let override_tcb = Tcb {
        bootloader: 1,
        tee: 1,
        snp: 1,
        microcode: 1,
        fmc: None,
    };
    let guest = SimGuest {
        policy: DEFAULT_POLICY | 1 << 19,
        vmpl: 2,
        measurement: [9; 48],
        reported_tcb: Some(override_tcb),
        ..SimGuest::default()
    };
    let bytes = p.report(&[0; 64], &guest).unwrap();
    assert!(verify_report(&bytes, p.vcek_der()));
    let r = AttestationReport::from_bytes(&bytes).unwrap();
    assert!(r.policy.debug_allowed());
    assert_eq!(r.vmpl, 2);
    assert_eq!(r.measurement, [9; 48]);
    assert_eq!(
        (r.reported_tcb.bootloader, r.reported_tcb.microcode),
        (1, 1)
    );
    assert_eq!(
        r.current_tcb.microcode,
        p.reported_tcb().microcode,
        "only REPORTED_TCB is overridden"
    );
    // The report no longer matches the VCEK's TCB extensions.
    let exts = amd_exts(p.vcek_der());
    let ucode = exts
        .iter()
        .find(|e| e.0 == oid_contents(&amd_oid(&[3, 8])))
        .unwrap();
    assert_ne!(ucode.1, super::certs::der_integer(1));

    // Version 1: still encoded and signed (v5 layout), refused by the sev crate's decoder.
    let v1 = p
        .report(
            &[0; 64],
            &SimGuest {
                version: 1,
                ..SimGuest::default()
            },
        )
        .unwrap();
    assert_eq!(&v1[..4], &1u32.to_le_bytes());
    assert!(verify_report(&v1, p.vcek_der()));
    assert!(AttestationReport::from_bytes(&v1).is_err());
}

#[test]
fn chain_is_signed_and_named_as_specified() {
    let (dir, p) = gen(&SimParams::new(Generation::Genoa));
    assert!(signed_by(p.ark_der(), p.ark_der()), "ARK self-signed");
    assert!(signed_by(p.ark_der(), p.ask_der()), "ASK under ARK");
    assert!(signed_by(p.ask_der(), p.vcek_der()), "VCEK under ASK");
    assert!(!signed_by(p.ark_der(), p.vcek_der()));
    let ark = der::parse_cert(p.ark_der()).unwrap();
    let ask = der::parse_cert(p.ask_der()).unwrap();
    let vcek = der::parse_cert(p.vcek_der()).unwrap();
    assert!(
        contains(ark.subject, b"ARK-Sim-Genoa")
            && contains(ark.subject, b"keybroker simulated platform")
    );
    assert!(contains(ask.subject, b"SEV-Genoa"));
    assert!(contains(vcek.subject, b"SEV-VCEK"));
    assert_eq!(vcek.public_key, p.vcek_public_key());
    assert_eq!(vcek.public_key.len(), 97, "uncompressed P-384 point");
    // Basic constraints: ARK and ASK are CAs, the VCEK carries only AMD's extensions.
    let bc = [2, 5, 29, 19];
    assert!(ark.extension(&bc).unwrap().critical && ask.extension(&bc).is_some());
    assert!(vcek.extension(&bc).is_none());
    assert_eq!(amd_exts(p.vcek_der()).len(), vcek.extensions.len());
    // The files on disk.
    let mode = std::fs::metadata(dir.path().join(KEY_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        std::fs::read(dir.path().join(VCEK_FILE)).unwrap(),
        p.vcek_der()
    );
    let toml = std::fs::read_to_string(dir.path().join(PLATFORM_FILE)).unwrap();
    assert!(toml.contains("generation = \"Genoa\""), "{toml}");
}

#[test]
fn cert_table_holds_vcek_ask_ark() {
    let (_dir, p) = gen(&SimParams::default());
    let table = cert_table::decode(&p.cert_table()).unwrap();
    let kinds: Vec<_> = table.iter().map(|e| e.kind()).collect();
    assert_eq!(
        kinds,
        [
            Some(CertKind::Vcek),
            Some(CertKind::Ask),
            Some(CertKind::Ark)
        ]
    );
    assert_eq!(table[0].data, p.vcek_der());
    assert_eq!(table[1].data, p.ask_der());
    assert_eq!(table[2].data, p.ark_der());
}

/// Builds a simulated VCEK with the chip id and TCB of a real one and compares AMD's
/// extensions byte for byte, order included.
fn assert_extensions_match_real(folder: &str, generation: Generation, tcb: Tcb) {
    let real = std::fs::read(fixture(&format!("{folder}/vcek.der"))).unwrap();
    let real_exts = amd_exts(&real);
    let hwid = &real_exts
        .iter()
        .find(|e| e.0 == oid_contents(&amd_oid(&[4])))
        .unwrap()
        .1;
    let mut chip_id = [0u8; 64];
    chip_id[..hwid.len()].copy_from_slice(hwid);
    let params = SimParams {
        chip_id: Some(chip_id),
        reported_tcb: Some(tcb),
        ..SimParams::new(generation)
    };
    let (_dir, p) = gen(&params);
    assert_eq!(amd_exts(p.vcek_der()), real_exts, "{folder}");
}

#[test]
fn amd_extensions_match_real_vceks() {
    assert_extensions_match_real(
        "virtee-milan-v2",
        Generation::Milan,
        Tcb {
            bootloader: 3,
            tee: 0,
            snp: 8,
            microcode: 115,
            fmc: None,
        },
    );
    assert_extensions_match_real(
        "gosevguest-milan-v2-debug",
        Generation::Milan,
        Tcb {
            bootloader: 2,
            tee: 0,
            snp: 5,
            microcode: 68,
            fmc: None,
        },
    );
    assert_extensions_match_real(
        "oak-genoa-v5",
        Generation::Genoa,
        Tcb {
            bootloader: 10,
            tee: 0,
            snp: 25,
            microcode: 84,
            fmc: None,
        },
    );
    assert_extensions_match_real(
        "oak-turin-v5",
        Generation::Turin,
        Tcb {
            bootloader: 1,
            tee: 0,
            snp: 2,
            microcode: 71,
            fmc: Some(0),
        },
    );
}

#[test]
fn large_spl_values_are_positive_der_integers() {
    let tcb = Tcb {
        bootloader: 0x80,
        tee: 0xff,
        snp: 0x7f,
        microcode: 0xdb,
        fmc: None,
    };
    let (dir, p) = gen(&SimParams {
        reported_tcb: Some(tcb),
        ..SimParams::default()
    });
    let exts = amd_exts(p.vcek_der());
    let ucode = exts
        .iter()
        .find(|e| e.0 == oid_contents(&amd_oid(&[3, 8])))
        .unwrap();
    assert_eq!(ucode.1, vec![0x02, 0x02, 0x00, 0xdb]);
    // And load accepts what generate wrote.
    assert_eq!(SimPlatform::load(dir.path()).unwrap().reported_tcb(), tcb);
}

#[test]
fn invalid_params_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut turin_chip = [0u8; 64];
    turin_chip[0] = 1;
    turin_chip[9] = 1;
    let mut short_chip = [0u8; 64];
    short_chip[0] = 1;
    let now = time::OffsetDateTime::now_utc();
    for params in [
        SimParams {
            chip_id: Some([0; 64]),
            ..SimParams::default()
        },
        SimParams {
            chip_id: Some(turin_chip),
            ..SimParams::new(Generation::Turin)
        },
        SimParams {
            chip_id: Some(short_chip),
            ..SimParams::new(Generation::Milan)
        },
        SimParams {
            reported_tcb: Some(Tcb {
                fmc: Some(1),
                ..Generation::Milan.default_tcb()
            }),
            ..SimParams::default()
        },
        SimParams {
            not_before: now,
            not_after: now,
            ..SimParams::default()
        },
    ] {
        let err = SimPlatform::generate(dir.path(), &params).unwrap_err();
        assert!(matches!(err, SimError::InvalidParams(_)), "{err}");
    }
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing written on refusal"
    );
    assert!("Turin".parse::<Generation>().is_ok() && "genoa".parse::<Generation>().is_ok());
    assert!("rome".parse::<Generation>().is_err());
}

#[test]
fn generate_refuses_to_overwrite() {
    let (dir, _p) = gen(&SimParams::default());
    let err = SimPlatform::generate(dir.path(), &SimParams::default()).unwrap_err();
    assert!(matches!(err, SimError::AlreadyExists { .. }), "{err}");
}

#[test]
fn load_refuses_missing_and_garbled_directories() {
    let empty = tempfile::tempdir().unwrap();
    let err = SimPlatform::load(&empty.path().join("nope")).unwrap_err();
    assert!(matches!(err, SimError::Missing { .. }), "{err}");
    let err = SimPlatform::load(empty.path()).unwrap_err();
    assert!(
        matches!(err, SimError::Missing { ref path } if path.ends_with(PLATFORM_FILE)),
        "{err}"
    );
    assert!(err.to_string().contains("generate"));

    let (other_dir, _other) = gen(&SimParams::default());
    let fresh = || gen(&SimParams::default()).0;
    type Damage = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Damage)> = vec![
        (
            "missing key",
            Box::new(|d| std::fs::remove_file(d.join(KEY_FILE)).unwrap()),
        ),
        (
            "missing ark",
            Box::new(|d| std::fs::remove_file(d.join(ARK_FILE)).unwrap()),
        ),
        (
            "garbled toml",
            Box::new(|d| std::fs::write(d.join(PLATFORM_FILE), "generation = [").unwrap()),
        ),
        (
            "unknown toml key",
            Box::new(|d| {
                let t = std::fs::read_to_string(d.join(PLATFORM_FILE)).unwrap();
                std::fs::write(d.join(PLATFORM_FILE), format!("extra = 1\n{t}")).unwrap()
            }),
        ),
        (
            "other chip id",
            Box::new(|d| {
                let t = std::fs::read_to_string(d.join(PLATFORM_FILE)).unwrap();
                let line = t
                    .lines()
                    .find(|l| l.starts_with("chip_id"))
                    .unwrap()
                    .to_string();
                std::fs::write(
                    d.join(PLATFORM_FILE),
                    t.replace(&line, &format!("chip_id = \"{}\"", "ab".repeat(64))),
                )
                .unwrap()
            }),
        ),
        (
            "garbled key",
            Box::new(|d| {
                std::fs::remove_file(d.join(KEY_FILE)).unwrap();
                std::fs::write(d.join(KEY_FILE), b"not a key").unwrap();
                std::fs::set_permissions(d.join(KEY_FILE), std::fs::Permissions::from_mode(0o600))
                    .unwrap();
            }),
        ),
        ("key of another platform", {
            let other = other_dir.path().to_path_buf();
            Box::new(move |d| {
                std::fs::remove_file(d.join(KEY_FILE)).unwrap();
                std::fs::copy(other.join(KEY_FILE), d.join(KEY_FILE)).unwrap();
            })
        }),
        ("ask of another platform", {
            let other = other_dir.path().to_path_buf();
            Box::new(move |d| {
                std::fs::copy(other.join(ASK_FILE), d.join(ASK_FILE)).unwrap();
            })
        }),
        (
            "garbled vcek",
            Box::new(|d| {
                let mut v = std::fs::read(d.join(VCEK_FILE)).unwrap();
                v.truncate(v.len() - 1);
                std::fs::write(d.join(VCEK_FILE), v).unwrap()
            }),
        ),
        (
            "ark not pem",
            Box::new(|d| std::fs::write(d.join(ARK_FILE), b"hello").unwrap()),
        ),
    ];
    for (name, damage) in cases {
        let dir = fresh();
        damage(dir.path());
        let err = SimPlatform::load(dir.path()).unwrap_err();
        assert!(
            matches!(err, SimError::Missing { .. } | SimError::Malformed { .. }),
            "{name}: {err:?}"
        );
    }

    let dir = fresh();
    std::fs::set_permissions(
        dir.path().join(KEY_FILE),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let err = SimPlatform::load(dir.path()).unwrap_err();
    assert!(
        matches!(err, SimError::KeyPermissions { mode: 0o644, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("chmod 600"));
}

#[test]
fn debug_output_holds_no_private_key() {
    let (dir, p) = gen(&SimParams::default());
    let key = std::fs::read(dir.path().join(KEY_FILE)).unwrap();
    let shown = format!("{p:?}");
    assert!(shown.contains("Milan"));
    for window in key.windows(8) {
        assert!(
            !shown.contains(&hex::encode(window)),
            "key bytes in Debug output"
        );
        assert!(!contains(shown.as_bytes(), window));
    }
}

#[test]
fn guest_toml_round_trips_and_refuses_garbage() {
    let g = SimGuest {
        version: 3,
        policy: 0xb0000,
        vmpl: 3,
        measurement: [7; 48],
        host_data: [1; 32],
        reported_tcb: Some(Tcb {
            bootloader: 1,
            tee: 2,
            snp: 3,
            microcode: 4,
            fmc: Some(5),
        }),
        ..SimGuest::default()
    };
    assert_eq!(SimGuest::from_toml(&g.to_toml()).unwrap(), g);
    assert_eq!(SimGuest::from_toml("").unwrap(), SimGuest::default());
    for bad in [
        "measurement = \"00\"",
        "host_data = \"xyz\"",
        "vmpl = \"1\"",
        "colour = 1",
        "policy = -1",
    ] {
        assert!(
            matches!(SimGuest::from_toml(bad), Err(SimError::InvalidGuest(_))),
            "{bad}"
        );
    }
}

#[test]
fn signature_check_used_here_accepts_real_amd_reports() {
    // The same verification, applied to real AMD reports, shows that the simulated signature
    // layout (LE R at 0x2A0, LE S at 0x2E8, over raw 0..0x2A0) is AMD's.
    for folder in ["virtee-milan-v2", "oak-genoa-v5", "oak-turin-v5"] {
        let report = std::fs::read(fixture(&format!("{folder}/report.bin"))).unwrap();
        let vcek = std::fs::read(fixture(&format!("{folder}/vcek.der"))).unwrap();
        assert!(verify_report(&report, &vcek), "{folder}");
        let mut m = report.clone();
        m[0x50] ^= 1;
        assert!(!verify_report(&m, &vcek), "{folder}");
    }
}
