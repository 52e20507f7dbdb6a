//! Policy parsing and evaluation tests: each check refuses a violating claim
//! and passes a conforming one; malformed files are refused with location.

use super::*;
use crate::verify::{FirmwareVersion, GuestPolicyBits, Tcb};

const M1: &str = "c57729018b0a6fb90dc17bb138b0aa35e4401004283ff4a2c24d3739ff3750f52384370e77b7032862a08c440a9bc4dc";
const M2: &str = "f924dd18f168df60fbea937f0b086284d51b1b376de872bac43694f61134d57967c318018de7335503023dbb50dee624";
const CHIP: &str = "d2421d976f95ce0ba849b7cc5c789122f1e59c77a037272c137ae4d188bb102adbc7c53d0302bff82a432c94a305dec7a7a270ceb19a10f04a83316c6486968d";

fn base_toml() -> String {
    format!(
        r#"version = 1
measurements = ["{M1}"]

[min_tcb.genoa]
bootloader = 10
tee = 0
snp = 25
microcode = 84
"#
    )
}

/// Claims of a Genoa guest that satisfies `base_toml()`.
fn genoa_claims() -> ReportClaims {
    let tcb = Tcb {
        fmc: None,
        bootloader: 10,
        tee: 0,
        snp: 25,
        microcode: 84,
    };
    let fw = FirmwareVersion {
        major: 1,
        minor: 55,
        build: 43,
    };
    ReportClaims {
        version: 5,
        generation: Generation::Genoa,
        signer: SignerKind::Vcek,
        guest_svn: 0,
        policy: GuestPolicyBits::from_raw(0x30000),
        vmpl: 0,
        platform_info: 0x25,
        smt_enabled: true,
        measurement: hex::decode(M1).unwrap(),
        host_data: vec![0; 32],
        family_id: vec![0; 16],
        image_id: vec![0; 16],
        id_key_digest: vec![0; 48],
        author_key_digest: vec![0; 48],
        report_data: vec![0; 64],
        report_id: vec![7; 32],
        chip_id: hex::decode(CHIP).unwrap(),
        reported_tcb: tcb,
        current_tcb: tcb,
        committed_tcb: tcb,
        launch_tcb: tcb,
        current_firmware: fw,
        committed_firmware: fw,
    }
}

fn turin_claims() -> ReportClaims {
    let mut c = genoa_claims();
    c.generation = Generation::Turin;
    c.measurement = hex::decode(M2).unwrap();
    c.reported_tcb = Tcb {
        fmc: Some(2),
        bootloader: 1,
        tee: 0,
        snp: 2,
        microcode: 71,
    };
    let mut chip = vec![0u8; 64];
    chip[..8].copy_from_slice(&hex::decode("3b42092f69c656d3").unwrap());
    c.chip_id = chip;
    c
}

fn policy(extra_top: &str, extra_tables: &str) -> Policy {
    let text = format!(
        "version = 1\nmeasurements = [\"{M1}\", \"{M2}\"]\n{extra_top}\n\
         [min_tcb.genoa]\nbootloader = 10\ntee = 0\nsnp = 25\nmicrocode = 84\n{extra_tables}"
    );
    Policy::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn codes(v: &Verdict) -> Vec<(&'static str, &'static str)> {
    v.failures.iter().map(|f| (f.code, f.check)).collect()
}

/// Asserts `claims` passes `p`, and that `mutate(claims)` fails with exactly
/// `code` at `check`.
fn refuses(p: &Policy, mutate: impl FnOnce(&mut ReportClaims), code: &str, check: &str) {
    let mut c = genoa_claims();
    assert!(p.evaluate(&c).is_allowed(), "{}", p.evaluate(&c));
    mutate(&mut c);
    let v = p.evaluate(&c);
    assert_eq!(
        codes(&v),
        vec![(code_static(code), check_static(check))],
        "{v}"
    );
}

fn code_static(code: &str) -> &'static str {
    ALL_REASON_CODES
        .iter()
        .find(|c| **c == code)
        .copied()
        .expect("known code")
}

fn check_static(check: &str) -> &'static str {
    Box::leak(check.to_string().into_boxed_str())
}

#[test]
fn defaults_are_safe() {
    let p = Policy::from_toml(&base_toml()).unwrap();
    assert!(!p.allow_debug);
    assert!(!p.allow_migration_agent);
    assert!(p.allow_smt);
    assert_eq!(p.max_vmpl, 0);
    assert_eq!(p.min_guest_svn, 0);
    assert!(!p.accept_vlek);
    assert_eq!(p.min_firmware, None);
    assert!(p.chip_ids.is_empty() && p.host_data.is_empty());
    assert!(p.evaluate(&genoa_claims()).is_allowed());
}

#[test]
fn measurement_check() {
    let p = policy("", "");
    refuses(
        &p,
        |c| c.measurement[0] ^= 1,
        POLICY_MEASUREMENT_NOT_ALLOWED,
        "measurements",
    );
    let mut c = genoa_claims();
    c.measurement = hex::decode(M2).unwrap();
    assert!(p.evaluate(&c).is_allowed());
}

#[test]
fn debug_check_and_opt_in() {
    refuses(
        &policy("", ""),
        |c| c.policy = GuestPolicyBits::from_raw(0x30000 | 1 << 19),
        POLICY_DEBUG_ALLOWED,
        "allow_debug",
    );
    let mut c = genoa_claims();
    c.policy = GuestPolicyBits::from_raw(0x30000 | 1 << 19);
    assert!(policy("allow_debug = true", "").evaluate(&c).is_allowed());
}

#[test]
fn migration_agent_check_and_opt_in() {
    refuses(
        &policy("", ""),
        |c| c.policy = GuestPolicyBits::from_raw(0x30000 | 1 << 18),
        POLICY_MIGRATION_AGENT_ALLOWED,
        "allow_migration_agent",
    );
    let mut c = genoa_claims();
    c.policy.migrate_ma = true;
    assert!(policy("allow_migration_agent = true", "")
        .evaluate(&c)
        .is_allowed());
}

#[test]
fn smt_check() {
    let p = policy("allow_smt = false", "");
    let mut c = genoa_claims();
    let v = p.evaluate(&c);
    assert_eq!(codes(&v), vec![(POLICY_SMT_NOT_ALLOWED, "allow_smt")]);
    c.smt_enabled = false;
    assert!(p.evaluate(&c).is_allowed());
    c.smt_enabled = true;
    assert!(policy("", "").evaluate(&c).is_allowed());
}

#[test]
fn vmpl_check() {
    refuses(
        &policy("", ""),
        |c| c.vmpl = 1,
        POLICY_VMPL_TOO_HIGH,
        "max_vmpl",
    );
    let p = policy("max_vmpl = 2", "");
    refuses(&p, |c| c.vmpl = 3, POLICY_VMPL_TOO_HIGH, "max_vmpl");
    let mut c = genoa_claims();
    c.vmpl = 2;
    assert!(p.evaluate(&c).is_allowed());
}

#[test]
fn tcb_each_component_and_equal_passes() {
    let p = policy("", "");
    for (check, f) in [
        (
            "min_tcb.bootloader",
            (|t: &mut Tcb| t.bootloader = 9) as fn(&mut Tcb),
        ),
        ("min_tcb.tee", |t: &mut Tcb| t.tee = 0),
        ("min_tcb.snp", |t: &mut Tcb| t.snp = 24),
        ("min_tcb.microcode", |t: &mut Tcb| t.microcode = 83),
    ] {
        if check == "min_tcb.tee" {
            continue; // tee minimum is 0: cannot be below; covered below
        }
        refuses(
            &p,
            |c| f(&mut c.reported_tcb),
            POLICY_TCB_BELOW_MINIMUM,
            check,
        );
    }
    // tee, with a policy whose tee minimum is 1.
    let text = base_toml().replace("tee = 0", "tee = 1");
    let p2 = Policy::from_toml(&text).unwrap();
    let mut c = genoa_claims();
    c.reported_tcb.tee = 1;
    assert!(p2.evaluate(&c).is_allowed());
    c.reported_tcb.tee = 0;
    assert_eq!(
        codes(&p2.evaluate(&c)),
        vec![(POLICY_TCB_BELOW_MINIMUM, "min_tcb.tee")]
    );
    // Above the minimum passes; the current TCB is not what is compared.
    let mut c = genoa_claims();
    c.reported_tcb.snp = 200;
    c.current_tcb.snp = 0;
    assert!(p.evaluate(&c).is_allowed());
}

#[test]
fn tcb_all_components_reported_separately() {
    let p = policy("", "");
    let mut c = genoa_claims();
    c.reported_tcb = Tcb::default();
    let v = p.evaluate(&c);
    assert_eq!(
        codes(&v),
        vec![
            (POLICY_TCB_BELOW_MINIMUM, "min_tcb.bootloader"),
            (POLICY_TCB_BELOW_MINIMUM, "min_tcb.snp"),
            (POLICY_TCB_BELOW_MINIMUM, "min_tcb.microcode"),
        ]
    );
    assert_eq!(v.failures[1].expected, ">= 25");
    assert_eq!(v.failures[1].actual, "0");
}

#[test]
fn turin_fmc_and_generation() {
    let genoa_only = policy("", "");
    let v = genoa_only.evaluate(&turin_claims());
    assert_eq!(
        codes(&v),
        vec![(POLICY_GENERATION_NOT_ALLOWED, "min_tcb")],
        "{v}"
    );
    assert_eq!(v.failures[0].expected, "one of [genoa]");
    assert_eq!(v.failures[0].actual, "turin");

    let p = policy(
        "",
        "[min_tcb.turin]\nfmc = 2\nbootloader = 1\ntee = 0\nsnp = 2\nmicrocode = 71\n",
    );
    assert!(p.evaluate(&turin_claims()).is_allowed());
    let mut c = turin_claims();
    c.reported_tcb.fmc = Some(1);
    assert_eq!(
        codes(&p.evaluate(&c)),
        vec![(POLICY_TCB_BELOW_MINIMUM, "min_tcb.fmc")]
    );
    c.reported_tcb.fmc = None;
    let v = p.evaluate(&c);
    assert_eq!(codes(&v), vec![(POLICY_TCB_BELOW_MINIMUM, "min_tcb.fmc")]);
    assert_eq!(v.failures[0].actual, "absent");
}

#[test]
fn allowlists_each_refuse_and_pass() {
    let k = "ab".repeat(48);
    let f = "cd".repeat(16);
    let h = "ef".repeat(32);
    let p = policy(
        &format!(
            "id_key_digests = [\"{k}\"]\nauthor_key_digests = [\"{k}\"]\nfamily_ids = [\"{f}\"]\n\
             image_ids = [\"{}\"]\nhost_data = [\"{h}\"]",
            f.to_uppercase()
        ),
        "",
    );
    let good = |c: &mut ReportClaims| {
        c.id_key_digest = vec![0xab; 48];
        c.author_key_digest = vec![0xab; 48];
        c.family_id = vec![0xcd; 16];
        c.image_id = vec![0xcd; 16];
        c.host_data = vec![0xef; 32];
    };
    let mut c = genoa_claims();
    good(&mut c);
    assert!(p.evaluate(&c).is_allowed(), "{}", p.evaluate(&c));
    type Mut = fn(&mut ReportClaims);
    let cases: [(Mut, &str, &str); 5] = [
        (
            |c| c.id_key_digest[47] = 0,
            POLICY_ID_KEY_NOT_ALLOWED,
            "id_key_digests",
        ),
        (
            |c| c.author_key_digest[0] = 0,
            POLICY_AUTHOR_KEY_NOT_ALLOWED,
            "author_key_digests",
        ),
        (
            |c| c.family_id[3] = 0,
            POLICY_FAMILY_ID_NOT_ALLOWED,
            "family_ids",
        ),
        (
            |c| c.image_id[15] = 0,
            POLICY_IMAGE_ID_NOT_ALLOWED,
            "image_ids",
        ),
        (
            |c| c.host_data[1] = 0,
            POLICY_HOST_DATA_NOT_ALLOWED,
            "host_data",
        ),
    ];
    for (m, code, check) in cases {
        let mut c = genoa_claims();
        good(&mut c);
        m(&mut c);
        let v = p.evaluate(&c);
        assert_eq!(v.failures.len(), 1, "{v}");
        assert_eq!((v.failures[0].code, v.failures[0].check), (code, check));
        assert_eq!(
            v.failures[0].actual,
            hex::encode(match check {
                "id_key_digests" => &c.id_key_digest,
                "author_key_digests" => &c.author_key_digest,
                "family_ids" => &c.family_id,
                "image_ids" => &c.image_id,
                _ => &c.host_data,
            })
        );
    }
}

#[test]
fn guest_svn_check() {
    let p = policy("min_guest_svn = 3", "");
    let mut c = genoa_claims();
    c.guest_svn = 3;
    assert!(p.evaluate(&c).is_allowed());
    c.guest_svn = 2;
    let v = p.evaluate(&c);
    assert_eq!(
        codes(&v),
        vec![(POLICY_GUEST_SVN_BELOW_MINIMUM, "min_guest_svn")]
    );
    assert_eq!(
        (
            v.failures[0].expected.as_str(),
            v.failures[0].actual.as_str()
        ),
        (">= 3", "2")
    );
}

#[test]
fn chip_allowlist_genoa_full_bytes() {
    let p = policy(&format!("chip_ids = [\"{}\"]", CHIP.to_uppercase()), "");
    refuses(
        &p,
        |c| c.chip_id[63] ^= 1,
        POLICY_CHIP_NOT_ALLOWED,
        "chip_ids",
    );
    // An 8-byte (Turin-style) entry never matches a Genoa chip.
    let p8 = policy(&format!("chip_ids = [\"{}\"]", &CHIP[..16]), "");
    assert_eq!(
        codes(&p8.evaluate(&genoa_claims())),
        vec![(POLICY_CHIP_NOT_ALLOWED, "chip_ids")]
    );
    // A masked chip id never matches an allowlist.
    let mut c = genoa_claims();
    c.chip_id = vec![0; 64];
    let v = p.evaluate(&c);
    assert_eq!(codes(&v), vec![(POLICY_CHIP_NOT_ALLOWED, "chip_ids")]);
    assert!(v.failures[0].actual.contains("masked"));
}

#[test]
fn chip_allowlist_turin_significant_bytes() {
    let tables = "[min_tcb.turin]\nfmc = 0\nbootloader = 1\ntee = 0\nsnp = 2\nmicrocode = 71\n";
    let short = policy("chip_ids = [\"3B42092F69C656D3\"]", tables);
    assert!(short.evaluate(&turin_claims()).is_allowed());
    let full = format!("3b42092f69c656d3{}", "0".repeat(112));
    let long = policy(&format!("chip_ids = [\"{full}\"]"), tables);
    assert!(long.evaluate(&turin_claims()).is_allowed());
    let mut c = turin_claims();
    c.chip_id[7] ^= 0x80;
    let v = short.evaluate(&c);
    assert_eq!(codes(&v), vec![(POLICY_CHIP_NOT_ALLOWED, "chip_ids")]);
    assert_eq!(v.failures[0].actual, hex::encode(&c.chip_id[..8]));
    // Bytes past the 8 significant ones are not compared on Turin.
    let mut c = turin_claims();
    c.chip_id[20] = 1;
    assert!(short.evaluate(&c).is_allowed());
}

#[test]
fn chip_denylist() {
    let p = policy(&format!("blocked_chip_ids = [\"{CHIP}\"]"), "");
    let v = p.evaluate(&genoa_claims());
    assert_eq!(codes(&v), vec![(POLICY_CHIP_BLOCKED, "blocked_chip_ids")]);
    let mut c = genoa_claims();
    c.chip_id[0] ^= 1;
    assert!(p.evaluate(&c).is_allowed());
}

#[test]
fn vlek_check_and_opt_in() {
    refuses(
        &policy("", ""),
        |c| c.signer = SignerKind::Vlek,
        POLICY_VLEK_NOT_ACCEPTED,
        "accept_vlek",
    );
    let mut c = genoa_claims();
    c.signer = SignerKind::Vlek;
    assert!(policy("accept_vlek = true", "").evaluate(&c).is_allowed());
}

#[test]
fn firmware_check() {
    let p = policy("min_firmware = \"1.55\"", "");
    refuses(
        &p,
        |c| c.current_firmware.minor = 54,
        POLICY_FIRMWARE_BELOW_MINIMUM,
        "min_firmware",
    );
    let mut c = genoa_claims();
    c.current_firmware = FirmwareVersion {
        major: 2,
        minor: 0,
        build: 0,
    };
    assert!(p.evaluate(&c).is_allowed());
    c.current_firmware = FirmwareVersion {
        major: 0,
        minor: 99,
        build: 99,
    };
    let v = p.evaluate(&c);
    assert_eq!(v.failures[0].expected, ">= 1.55");
    assert_eq!(v.failures[0].actual, "0.99.99");
}

#[test]
fn every_failure_reported_together_in_stable_order() {
    let p = policy(
        &format!(
            "min_guest_svn = 1\nmin_firmware = \"9.0\"\nhost_data = [\"{}\"]\nchip_ids = [\"{CHIP}\"]",
            "11".repeat(32)
        ),
        "",
    );
    let mut c = genoa_claims();
    c.measurement = vec![0; 48];
    c.policy = GuestPolicyBits::from_raw(0x30000 | 1 << 18 | 1 << 19);
    c.vmpl = 3;
    c.reported_tcb.microcode = 1;
    c.chip_id[5] ^= 1;
    c.signer = SignerKind::Vlek;
    let v = p.evaluate(&c);
    assert!(!v.is_allowed());
    assert_eq!(
        v.reason_codes(),
        vec![
            POLICY_MEASUREMENT_NOT_ALLOWED,
            POLICY_DEBUG_ALLOWED,
            POLICY_MIGRATION_AGENT_ALLOWED,
            POLICY_VMPL_TOO_HIGH,
            POLICY_TCB_BELOW_MINIMUM,
            POLICY_HOST_DATA_NOT_ALLOWED,
            POLICY_GUEST_SVN_BELOW_MINIMUM,
            POLICY_CHIP_NOT_ALLOWED,
            POLICY_VLEK_NOT_ACCEPTED,
            POLICY_FIRMWARE_BELOW_MINIMUM,
        ]
    );
    let text = v.to_string();
    assert!(text.starts_with("denied (10 failing checks)"), "{text}");
    assert_eq!(text.lines().count(), 11);
    assert!(text.contains("POLICY_VMPL_TOO_HIGH: max_vmpl: expected <= 0, actual 3"));
    for code in v.reason_codes() {
        assert!(ALL_REASON_CODES.contains(&code));
    }
    assert_eq!(Verdict::default().to_string(), "allowed");
}

#[test]
fn reason_codes_are_unique_and_prefixed() {
    let mut seen = std::collections::HashSet::new();
    for c in ALL_REASON_CODES {
        assert!(c.starts_with("POLICY_"), "{c}");
        assert!(
            c.chars().all(|ch| ch.is_ascii_uppercase() || ch == '_'),
            "{c}"
        );
        assert!(seen.insert(c), "duplicate {c}");
    }
}

#[test]
fn example_file_parses_and_round_trips() {
    let text = include_str!("../../../docs/examples/policy.toml");
    let p = Policy::from_toml(text).unwrap();
    assert_eq!(p.measurements.len(), 2);
    assert_eq!(p.min_tcb.allowed(), vec!["genoa", "turin"]);
    assert_eq!(
        p.min_firmware,
        Some(MinFirmware {
            major: 1,
            minor: 55
        })
    );
    assert!(p.evaluate(&genoa_claims()).is_allowed());
    let canon = p.to_toml();
    let again = Policy::from_toml(&canon).unwrap();
    assert_eq!(again, p);
    assert_eq!(again.to_toml(), canon);
}

#[test]
fn canonical_form_sorts_dedups_lowercases() {
    let text = format!(
        "version = 1\nmeasurements = [\"{}\", \"{M1}\", \"{M1}\"]\nchip_ids = [\"{}\"]\n\
         [min_tcb.milan]\nbootloader = 1\ntee = 2\nsnp = 3\nmicrocode = 4\n",
        M2.to_uppercase(),
        CHIP.to_uppercase()
    );
    let p = Policy::from_toml(&text).unwrap();
    assert_eq!(p.measurements.len(), 2);
    let canon = p.to_toml();
    assert!(canon.find(M1).unwrap() < canon.find(M2).unwrap());
    assert!(canon.contains(CHIP));
    assert!(canon.contains("allow_smt = true"));
    assert_eq!(Policy::from_toml(&canon).unwrap(), p);
    assert!(p.summary().contains("2 measurements"), "{}", p.summary());
    assert!(p.summary().contains("milan(min bl 1 tee 2 snp 3 ucode 4)"));
    assert!(p.summary().contains("1 chips"));
}

#[test]
fn allow_and_revoke_measurement() {
    let mut p = Policy::from_toml(&base_toml()).unwrap();
    let m2 = parse_measurement_hex(&M2.to_uppercase()).unwrap();
    assert!(p.allow_measurement(m2));
    assert!(!p.allow_measurement(m2));
    let mut c = genoa_claims();
    c.measurement = m2.to_vec();
    assert!(p.evaluate(&c).is_allowed());
    let m1 = parse_measurement_hex(M1).unwrap();
    assert_eq!(p.revoke_measurement(&m1), Ok(true));
    assert_eq!(p.revoke_measurement(&m1), Ok(false));
    assert!(!p.evaluate(&genoa_claims()).is_allowed());
    let e = p.revoke_measurement(&m2).unwrap_err();
    assert!(e.message.contains("only allowed measurement"));
    assert_eq!(p.measurements, vec![m2]);
    assert!(parse_measurement_hex(&M1[..94]).is_err());
    let e = parse_measurement_hex(&format!("{}zz", &M1[..94])).unwrap_err();
    assert_eq!(e.field.as_deref(), Some("measurement"));
}

// ---- malformed input -------------------------------------------------------

fn err(text: &str) -> PolicyError {
    match Policy::from_toml(text) {
        Ok(p) => panic!("accepted: {p:?}"),
        Err(e) => e,
    }
}

#[test]
fn refuses_syntax_error_with_line() {
    let text = base_toml().replace("tee = 0", "tee = = 0");
    let e = err(&text);
    assert_eq!(e.kind, PolicyErrorKind::Syntax);
    assert_eq!(e.line, Some(6));
    assert!(e.to_string().contains("line 6"), "{e}");
}

#[test]
fn refuses_unknown_field_with_line_and_name() {
    let text = base_toml().replace("[min_tcb.genoa]", "alow_debug = true\n[min_tcb.genoa]");
    let e = err(&text);
    assert_eq!(e.kind, PolicyErrorKind::UnknownField);
    assert_eq!(e.field.as_deref(), Some("alow_debug"));
    assert_eq!(e.line, Some(4));
    let text = base_toml().replace("microcode = 84", "microcode = 84\nucode = 1");
    let e = err(&text);
    assert_eq!(e.kind, PolicyErrorKind::UnknownField);
    assert_eq!(e.field.as_deref(), Some("ucode"));
    assert_eq!(e.line, Some(9));
    // An unknown generation is an unknown field of min_tcb.
    let e = err(&base_toml().replace("genoa", "bergamo"));
    assert_eq!(e.kind, PolicyErrorKind::UnknownField);
    assert_eq!(e.field.as_deref(), Some("bergamo"));
}

#[test]
fn refuses_wrong_or_missing_version() {
    let e = err(&base_toml().replace("version = 1", "version = 2\nnew_field_of_v2 = 1"));
    assert_eq!(e.kind, PolicyErrorKind::UnsupportedVersion);
    assert_eq!((e.line, e.field.as_deref()), (Some(1), Some("version")));
    assert!(e.message.contains("version 2 is not supported"), "{e}");
    let e = err(&base_toml().replace("version = 1", "version = \"1\""));
    assert_eq!(e.kind, PolicyErrorKind::UnsupportedVersion);
    let e = err(&base_toml().replace("version = 1", ""));
    assert_eq!(e.kind, PolicyErrorKind::MissingField);
    assert_eq!(e.field.as_deref(), Some("version"));
    assert!(e.message.contains("version = 1"));
}

#[test]
fn refuses_bad_hex_with_field_and_line() {
    let short = &M1[..95];
    let e = err(&base_toml().replace(M1, short));
    assert_eq!(e.kind, PolicyErrorKind::InvalidValue);
    assert_eq!(e.field.as_deref(), Some("measurements[0]"));
    assert_eq!(e.line, Some(2));
    assert!(e.message.contains("expected 96 hex characters"), "{e}");
    assert!(e.message.contains("found 95"), "{e}");
    let bad = format!("{}g", &M1[..95]);
    let e = err(&base_toml().replace(M1, &bad));
    assert_eq!(e.field.as_deref(), Some("measurements[0]"));
    assert!(e.message.contains("'g'"), "{e}");
    // Other hex lists, each with its own length.
    for (field, value) in [
        ("host_data", "aa".repeat(31)),
        ("family_ids", "aa".repeat(17)),
        ("image_ids", "xx".repeat(16)),
        ("id_key_digests", "aa".repeat(32)),
        ("author_key_digests", "é".repeat(48)),
        ("chip_ids", "aa".repeat(32)),
        ("blocked_chip_ids", "aa".repeat(9)),
    ] {
        let text = base_toml().replace(
            "[min_tcb.genoa]",
            &format!(
                "{field} = [\"{}\", \"{value}\"]\n[min_tcb.genoa]",
                "ab".repeat(match field {
                    "host_data" => 32,
                    "family_ids" | "image_ids" => 16,
                    "chip_ids" | "blocked_chip_ids" => 64,
                    _ => 48,
                })
            ),
        );
        let e = err(&text);
        assert_eq!(e.kind, PolicyErrorKind::InvalidValue, "{field}: {e}");
        assert_eq!(
            e.field.as_deref(),
            Some(format!("{field}[1]").as_str()),
            "{e}"
        );
        assert_eq!(e.line, Some(4), "{field}: {e}");
    }
    let e = err(&base_toml().replace(
        "[min_tcb.genoa]",
        &format!("chip_ids = [\"{}\"]\n[min_tcb.genoa]", "0".repeat(128)),
    ));
    assert!(e.message.contains("all-zero"), "{e}");
}

#[test]
fn refuses_wrong_types_and_ranges() {
    let e = err(&base_toml().replace("bootloader = 10", "bootloader = 256"));
    assert_eq!(e.field.as_deref(), Some("min_tcb.genoa.bootloader"));
    assert_eq!(e.line, Some(5));
    let e = err(&base_toml().replace("snp = 25", "snp = -1"));
    assert_eq!(e.field.as_deref(), Some("min_tcb.genoa.snp"));
    let e = err(&base_toml().replace("snp = 25", "snp = \"25\""));
    assert_eq!(e.kind, PolicyErrorKind::InvalidValue);
    assert_eq!(e.field.as_deref(), Some("snp"));
    assert_eq!(e.line, Some(7));
    let e = err(&base_toml().replace(
        "[min_tcb.genoa]",
        "max_vmpl = 0\nmax_vmpl = 1\n[min_tcb.genoa]",
    ));
    assert_eq!((e.kind, e.line), (PolicyErrorKind::Syntax, Some(5)), "{e}");
    let e = err(&base_toml().replace("[min_tcb.genoa]", "max_vmpl = 4\n[min_tcb.genoa]"));
    assert_eq!((e.field.as_deref(), e.line), (Some("max_vmpl"), Some(4)));
    let e = err(&base_toml().replace("[min_tcb.genoa]", "allow_debug = \"no\"\n[min_tcb.genoa]"));
    assert_eq!((e.field.as_deref(), e.line), (Some("allow_debug"), Some(4)));
    for fw in [
        "\"1\"",
        "\"1.x\"",
        "\"1.256\"",
        "\"1.5.5\"",
        "\"+1.5\"",
        "155",
    ] {
        let e = err(&base_toml().replace(
            "[min_tcb.genoa]",
            &format!("min_firmware = {fw}\n[min_tcb.genoa]"),
        ));
        assert_eq!(e.field.as_deref(), Some("min_firmware"), "{fw}: {e}");
        assert_eq!(e.line, Some(4), "{fw}: {e}");
    }
}

#[test]
fn refuses_missing_measurements_or_generations() {
    let e = err(&base_toml().replace(&format!("[\"{M1}\"]"), "[]"));
    assert_eq!(
        (e.field.as_deref(), e.line),
        (Some("measurements"), Some(2))
    );
    let e = err(&base_toml().replace(&format!("measurements = [\"{M1}\"]"), ""));
    assert_eq!(e.kind, PolicyErrorKind::MissingField);
    assert_eq!(e.field.as_deref(), Some("measurements"));
    let e = err(&format!("version = 1\nmeasurements = [\"{M1}\"]\n"));
    assert_eq!(e.kind, PolicyErrorKind::MissingField);
    assert_eq!(e.field.as_deref(), Some("min_tcb"));
    assert!(e.message.contains("[min_tcb.milan]"));
    let e = err(&base_toml().replace("microcode = 84\n", ""));
    assert_eq!(e.kind, PolicyErrorKind::MissingField);
    assert_eq!(e.field.as_deref(), Some("microcode"));
}

#[test]
fn refuses_fmc_outside_turin_and_requires_it_on_turin() {
    let e = err(&base_toml().replace("tee = 0", "tee = 0\nfmc = 1"));
    assert_eq!(e.field.as_deref(), Some("min_tcb.genoa.fmc"));
    assert_eq!(e.line, Some(7));
    assert!(e.message.contains("Turin only"), "{e}");
    let e = err(&base_toml().replace("genoa", "turin"));
    assert_eq!(e.field.as_deref(), Some("min_tcb.turin.fmc"));
    assert!(e.message.contains("add `fmc"), "{e}");
}

#[test]
fn never_panics_on_garbage() {
    for text in [
        "",
        "\u{0}",
        "version = 1",
        "version = 1\nmeasurements = 5",
        "version = 1\nmeasurements = [5]",
        "version = 1\nmin_tcb = 3",
        "[[[",
        "version = 1\nmeasurements = [\"é\"]",
        "version = 99999999999999999999",
        "version = 1.0",
    ] {
        assert!(Policy::from_toml(text).is_err(), "{text:?}");
    }
}

mod vtpm;
