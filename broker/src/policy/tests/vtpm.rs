//! The `[vtpm]` section: parsing, refusals with location, evaluation of
//! Azure vTPM guests (which checks apply, the PCR sets, the explanation of
//! a refusal).

use super::*;
use std::collections::BTreeMap;

const PARAVISOR: &str = M2;
const P0: &str = "e15c44796beabf46abcec7c57e590942041e47497e4ec27571c8b7664f48dced";
const P7: &str = "afd689d0bb1c5f36f023fbaf574135f555a28a10c1f6b938d2a25e70c7783338";

fn vtpm_section() -> String {
    format!(
        r#"
[vtpm]
accept = true
paravisor_measurements = ["{PARAVISOR}"]

[[vtpm.pcr_sets]]
name = "image-v1"
pcrs = {{ 0 = "{P0}", 7 = "{}" }}

[[vtpm.pcr_sets]]
name = "image-v2"
pcrs = {{ 0 = "{P0}", 7 = "{P7}" }}
"#,
        "11".repeat(32)
    )
}

/// A guest's verified PCRs: 0..24 zero but PCR 0 = P0, PCR 7 = P7.
fn pcrs() -> BTreeMap<u8, [u8; 32]> {
    let mut m: BTreeMap<u8, [u8; 32]> = (0..24).map(|i| (i, [0; 32])).collect();
    m.insert(0, hex::decode(P0).unwrap().try_into().unwrap());
    m.insert(7, hex::decode(P7).unwrap().try_into().unwrap());
    m
}

/// The paravisor's claims: Genoa, measurement PARAVISOR.
fn paravisor_claims() -> ReportClaims {
    let mut c = genoa_claims();
    c.measurement = hex::decode(PARAVISOR).unwrap();
    c
}

fn vtpm_policy(extra_top: &str) -> Policy {
    policy(extra_top, &vtpm_section())
}

#[test]
fn a_matching_set_admits_and_the_section_round_trips() {
    let p = vtpm_policy("");
    assert!(p.vtpm.accept);
    assert_eq!(p.vtpm.pcr_sets.len(), 2);
    assert_eq!(p.vtpm.pcr_sets[1].name.as_deref(), Some("image-v2"));
    let v = p.evaluate_vtpm(&paravisor_claims(), &pcrs());
    assert!(v.is_allowed(), "{v}");
    assert_eq!(Policy::from_toml(&p.to_toml()).unwrap(), p);
    assert!(p
        .to_toml()
        .contains("[[vtpm.pcr_sets]]\nname = \"image-v1\"\npcrs = { 0 = "));
    assert!(p
        .summary()
        .contains("azure vtpm: 1 paravisor measurement(s), 2 PCR set(s)"));
    // A policy without the section writes none and reads back without it.
    let plain = policy("", "");
    assert_eq!(plain.vtpm, VtpmPolicy::default());
    assert!(!plain.to_toml().contains("vtpm"));
}

#[test]
fn pcrs_matching_no_set_are_explained_against_the_closest() {
    let p = vtpm_policy("");
    let mut got = pcrs();
    got.insert(7, [0x22; 32]);
    let v = p.evaluate_vtpm(&paravisor_claims(), &got);
    assert_eq!(codes(&v), vec![(POLICY_PCRS_NOT_ALLOWED, "vtpm.pcr_sets")]);
    let f = &v.failures[0];
    // Both sets differ in PCR 7 only; the first is named.
    assert_eq!(
        f.expected,
        format!(
            "PCR set \"image-v1\" (the closest; 1 other set(s) differ more): pcr7 = {}",
            "11".repeat(32)
        )
    );
    assert_eq!(f.actual, format!("pcr7 = {}", "22".repeat(32)));
    // A PCR the quote did not cover matches nothing.
    let mut short = pcrs();
    short.remove(&0);
    let v = p.evaluate_vtpm(&paravisor_claims(), &short);
    assert!(v.failures[0].actual.contains("pcr0 not quoted"), "{v}");
    assert!(
        v.failures[0].expected.starts_with("PCR set \"image-v2\""),
        "{v}"
    );
    // One PCR off in the second set, two in the first: the second is closest.
    let mut one_off = pcrs();
    one_off.insert(0, [0x33; 32]);
    let v = p.evaluate_vtpm(&paravisor_claims(), &one_off);
    assert!(
        v.failures[0].expected.starts_with("PCR set \"image-v2\""),
        "{v}"
    );
    assert_eq!(v.failures[0].actual, format!("pcr0 = {}", "33".repeat(32)));
}

#[test]
fn vtpm_evidence_is_refused_unless_accepted() {
    let p = policy("", "");
    let v = p.evaluate_vtpm(&paravisor_claims(), &pcrs());
    assert_eq!(
        codes(&v),
        vec![(POLICY_EVIDENCE_KIND_NOT_ACCEPTED, "vtpm.accept")]
    );
    assert_eq!(v.failures[0].actual, "Azure vTPM evidence");
    // accept = false with lists keeps them, and still refuses.
    let off = policy(
        "",
        &vtpm_section().replace("accept = true", "accept = false"),
    );
    assert!(!off.vtpm.accept);
    assert_eq!(
        off.evaluate_vtpm(&paravisor_claims(), &pcrs())
            .reason_codes(),
        vec![POLICY_EVIDENCE_KIND_NOT_ACCEPTED]
    );
    assert_eq!(Policy::from_toml(&off.to_toml()).unwrap(), off);
}

#[test]
fn the_paravisor_measurement_is_checked_not_the_image_measurements() {
    let p = vtpm_policy("");
    let mut c = paravisor_claims();
    c.measurement = hex::decode(M1).unwrap();
    let v = p.evaluate_vtpm(&c, &pcrs());
    assert_eq!(
        codes(&v),
        vec![(POLICY_PARAVISOR_NOT_ALLOWED, "vtpm.paravisor_measurements")]
    );
    assert_eq!(v.failures[0].actual, M1);
    assert_eq!(v.failures[0].expected, format!("one of [{PARAVISOR}]"));
}

#[test]
fn platform_checks_apply_and_image_identity_checks_do_not() {
    // Host data, guest SVN and ID-key lists describe a bare guest's image.
    let p = vtpm_policy(&format!(
        "min_guest_svn = 9\nhost_data = [\"{}\"]\nid_key_digests = [\"{M1}\"]",
        "11".repeat(32)
    ));
    assert!(p.evaluate_vtpm(&paravisor_claims(), &pcrs()).is_allowed());
    assert!(!p.evaluate(&paravisor_claims()).is_allowed());
    // Everything about the platform and the guest policy bits applies, in
    // the order of a bare report, after the [vtpm] checks.
    let p = vtpm_policy(&format!("chip_ids = [\"{CHIP}\"]\nmin_firmware = \"9.0\""));
    let mut c = paravisor_claims();
    c.measurement = vec![0; 48];
    c.policy = GuestPolicyBits::from_raw(0x30000 | 1 << 18 | 1 << 19);
    c.vmpl = 2;
    c.reported_tcb.snp = 1;
    c.chip_id[0] ^= 1;
    c.signer = SignerKind::Vlek;
    let mut got = pcrs();
    got.insert(0, [0; 32]);
    let v = p.evaluate_vtpm(&c, &got);
    assert_eq!(
        v.reason_codes(),
        vec![
            POLICY_PARAVISOR_NOT_ALLOWED,
            POLICY_PCRS_NOT_ALLOWED,
            POLICY_DEBUG_ALLOWED,
            POLICY_MIGRATION_AGENT_ALLOWED,
            POLICY_VMPL_TOO_HIGH,
            POLICY_TCB_BELOW_MINIMUM,
            POLICY_CHIP_NOT_ALLOWED,
            POLICY_VLEK_NOT_ACCEPTED,
            POLICY_FIRMWARE_BELOW_MINIMUM,
        ]
    );
    let mut milan = paravisor_claims();
    milan.generation = Generation::Milan;
    assert_eq!(
        codes(&vtpm_policy("").evaluate_vtpm(&milan, &pcrs())),
        vec![(POLICY_GENERATION_NOT_ALLOWED, "min_tcb")]
    );
}

#[test]
fn a_policy_for_vtpm_guests_only_needs_no_measurements() {
    let text = base_toml().replace(&format!("measurements = [\"{M1}\"]\n"), "") + &vtpm_section();
    let p = Policy::from_toml(&text).unwrap();
    assert!(p.measurements.is_empty());
    let v = p.evaluate(&genoa_claims());
    assert_eq!(
        codes(&v),
        vec![(POLICY_MEASUREMENT_NOT_ALLOWED, "measurements")]
    );
    assert_eq!(
        v.failures[0].expected,
        "none: this policy admits Azure vTPM guests only"
    );
    assert!(p.evaluate_vtpm(&paravisor_claims(), &pcrs()).is_allowed());
    assert_eq!(Policy::from_toml(&p.to_toml()).unwrap(), p);
    // Without accept, measurements stay required, absent or empty.
    let off = text.replace("accept = true", "accept = false");
    let e = err(&off);
    assert_eq!(
        (e.kind, e.field.as_deref()),
        (PolicyErrorKind::MissingField, Some("measurements"))
    );
    assert!(e.message.contains("[vtpm] accept = true"), "{e}");
    let e = err(&off.replace("version = 1\n", "version = 1\nmeasurements = []\n"));
    assert_eq!(
        (e.kind, e.field.as_deref(), e.line),
        (PolicyErrorKind::InvalidValue, Some("measurements"), Some(2))
    );
}

#[test]
fn malformed_sections_are_refused_with_field_and_line() {
    let good = base_toml() + &vtpm_section();
    assert!(Policy::from_toml(&good).is_ok());
    let cases: Vec<(String, PolicyErrorKind, &str)> = vec![
        (
            good.replace(&format!("paravisor_measurements = [\"{PARAVISOR}\"]"), ""),
            PolicyErrorKind::MissingField,
            "vtpm.paravisor_measurements",
        ),
        (
            base_toml()
                + &format!("\n[vtpm]\naccept = true\nparavisor_measurements = [\"{PARAVISOR}\"]\n"),
            PolicyErrorKind::MissingField,
            "vtpm.pcr_sets",
        ),
        (
            good.replace(
                &format!("paravisor_measurements = [\"{PARAVISOR}\"]"),
                "paravisor_measurements = [\"abc\"]",
            ),
            PolicyErrorKind::InvalidValue,
            "vtpm.paravisor_measurements[0]",
        ),
        (
            good.replace("{ 0 = ", "{ 24 = "),
            PolicyErrorKind::InvalidValue,
            "vtpm.pcr_sets[0].pcrs.24",
        ),
        (
            good.replace("{ 0 = ", "{ 00 = "),
            PolicyErrorKind::InvalidValue,
            "vtpm.pcr_sets[0].pcrs.00",
        ),
        (
            good.replace("{ 0 = ", "{ pcr0 = "),
            PolicyErrorKind::InvalidValue,
            "vtpm.pcr_sets[0].pcrs.pcr0",
        ),
        (
            good.replace(&format!("7 = \"{P7}\""), &format!("7 = \"{P7}00\"")),
            PolicyErrorKind::InvalidValue,
            "vtpm.pcr_sets[1].pcrs.7",
        ),
        (
            good.replacen(
                &format!("pcrs = {{ 0 = \"{P0}\", 7 = \"{}\" }}", "11".repeat(32)),
                "pcrs = {}",
                1,
            ),
            PolicyErrorKind::InvalidValue,
            "vtpm.pcr_sets[0].pcrs",
        ),
        (
            good.replace("name = \"image-v1\"", "name = \"\""),
            PolicyErrorKind::InvalidValue,
            "vtpm.pcr_sets[0].name",
        ),
        (
            good.replace("accept = true", "accept = true\naccepted = true"),
            PolicyErrorKind::UnknownField,
            "accepted",
        ),
        (
            good.replace("name = \"image-v2\"", "name = \"image-v2\"\npcr = {}"),
            PolicyErrorKind::UnknownField,
            "pcr",
        ),
    ];
    for (text, kind, field) in cases {
        let e = err(&text);
        assert_eq!(
            (e.kind, e.field.as_deref()),
            (kind, Some(field)),
            "{e}\n{text}"
        );
        assert!(
            e.line.is_some() || kind == PolicyErrorKind::MissingField,
            "{e}"
        );
    }
    for garbage in [
        "version = 1\n[vtpm]\naccept = 1",
        "version = 1\nvtpm = 3",
        "version = 1\n[vtpm]\npcr_sets = 5",
        "version = 1\n[[vtpm.pcr_sets]]\npcrs = { 0 = 5 }",
    ] {
        assert!(Policy::from_toml(garbage).is_err(), "{garbage}");
    }
}

#[test]
fn the_example_files_vtpm_section_parses_when_uncommented() {
    let text = include_str!("../../../../docs/examples/policy.toml");
    let at = text.find("# [vtpm]").unwrap();
    let uncommented: String = text[at..]
        .lines()
        .map(|l| l.strip_prefix("# ").unwrap_or(l))
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let p = Policy::from_toml(&format!("{}\n{uncommented}\n", &text[..at])).unwrap();
    assert!(p.vtpm.accept);
    assert_eq!(p.vtpm.paravisor_measurements.len(), 1);
    assert_eq!(p.vtpm.pcr_sets[0].name.as_deref(), Some("image-2025-06"));
    assert_eq!(
        p.vtpm.pcr_sets[0].pcrs.keys().copied().collect::<Vec<_>>(),
        vec![0, 4, 7]
    );
    assert_eq!(Policy::from_toml(&p.to_toml()).unwrap(), p);
}
