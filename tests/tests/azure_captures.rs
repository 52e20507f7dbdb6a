//! The real Azure captures of `tests/fixtures/azure-snp-vtpm/` through the
//! broker's whole chain, as a release verifies them: AMD's pinned ARK, the
//! VCEK, the SNP report, the HCL report bound to it, the quote by its
//! attestation key, the PCRs.
//!
//! - each capture verifies with its expected report data and yields its
//!   expected PCR 0 (library, and `broker report verify` with snapshots);
//! - a wrong report data is refused with `EVIDENCE_TPM_QUOTE_EXTRA_DATA`,
//!   and so is each capture bound to a protocol transcript: their quotes
//!   carry 9 and 48 bytes, never a transcript hash;
//! - every single-byte change to the HCL report (header, SNP report,
//!   request data, variable data, padding), the quote, its signature and
//!   each PCR value is refused, and none panics; the one unsigned field,
//!   the HCL header's version (1 or 2), is the exception the docs name;
//! - a policy's `[vtpm]` section is judged on the verified PCRs, by
//!   `report verify --policy` and by `broker explain` against a running
//!   broker.

use std::path::Path;

use broker::verify::{
    AzureVtpmEvidence, Evidence, EvidenceRejected, TrustStore, VerifiedEvidence, Verifier,
};
use keybroker_tests::exe::{init, run_in, tempdir, Run, Server};
use keybroker_tests::fixtures::{azure_captures, AzureCapture};
use keybroker_tests::snapshot::assert_snapshot;
use keybroker_vtpm::EvidenceFile;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Inside the validity of every capture's VCEK (2025-01 .. 2032-01).
const AT: &str = "2025-06-01T00:00:00Z";

fn at() -> OffsetDateTime {
    OffsetDateTime::parse(AT, &Rfc3339).unwrap()
}

fn evidence(c: &AzureCapture) -> AzureVtpmEvidence {
    let file = EvidenceFile::parse(&std::fs::read(c.path()).unwrap()).unwrap();
    AzureVtpmEvidence::from_file(&file)
}

/// Every check of a release but the transcript: the quote's qualifying
/// data is `report_data`.
fn verify(
    verifier: &Verifier,
    e: &AzureVtpmEvidence,
    report_data: &[u8],
) -> Result<keybroker_vtpm::VerifiedVtpmQuote, EvidenceRejected> {
    match verifier.verify_evidence(&Evidence::AzureVtpm(e.clone()), None, at())? {
        VerifiedEvidence::AzureVtpm(h) => Ok(h.inspect_quote(Some(report_data), None)?),
        VerifiedEvidence::SnpReport(_) => unreachable!("Azure evidence verifies as Azure"),
    }
}

#[test]
fn each_capture_verifies_from_amds_root_and_yields_its_pcr0() {
    let verifier = Verifier::new(TrustStore::amd(), None);
    for c in azure_captures() {
        let e = evidence(&c);
        let v = verifier
            .verify_evidence(&Evidence::AzureVtpm(e.clone()), None, at())
            .unwrap_or_else(|err| panic!("{}: {err}", c.file));
        let claims = v.claims();
        assert_eq!(claims.vmpl, 0, "{}: the paravisor's VMPL", c.file);
        assert!(!v.report().is_simulated());
        let q = verify(&verifier, &e, &hex::decode(&c.report_data).unwrap())
            .unwrap_or_else(|err| panic!("{}: {err}", c.file));
        assert_eq!(hex::encode(q.pcrs()[&0]), c.pcr0, "{}", c.file);
        assert_eq!(q.pcrs().len(), 24, "{}", c.file);
        assert_eq!(
            q.variable_data_sha256()[..],
            claims.report_data[..32],
            "{}",
            c.file
        );
        // The generation the report's CPUID and VCEK name.
        let want = if c.file.contains("genoa") {
            "genoa"
        } else {
            "milan"
        };
        assert_eq!(claims.generation.as_str(), want, "{}", c.file);
    }
}

#[test]
fn a_wrong_report_data_is_refused_with_its_code() {
    let verifier = Verifier::new(TrustStore::amd(), None);
    for c in azure_captures() {
        let e = evidence(&c);
        let good = hex::decode(&c.report_data).unwrap();
        let mut flipped = good.clone();
        flipped[0] ^= 1;
        for wrong in [flipped, good[1..].to_vec(), [&good[..], &[0]].concat()] {
            let err = verify(&verifier, &e, &wrong).unwrap_err();
            assert_eq!(
                err.reason_code(),
                "EVIDENCE_TPM_QUOTE_EXTRA_DATA",
                "{}",
                c.file
            );
        }
        // Bound to a protocol transcript, as a release binds: the quote's
        // extraData is no transcript hash.
        let v = verifier
            .verify_evidence(&Evidence::AzureVtpm(e), None, at())
            .unwrap();
        let mut padded = [0u8; 64];
        padded[..good.len()].copy_from_slice(&good);
        let err = v.bind(&padded).unwrap_err();
        assert_eq!(
            err.reason_code(),
            "EVIDENCE_TPM_QUOTE_EXTRA_DATA",
            "{}",
            c.file
        );
    }
}

/// Changes one byte of `part` (of the capture's evidence) at every offset
/// in `range` and expects each changed evidence refused.
fn every_byte_refused(
    verifier: &Verifier,
    c: &AzureCapture,
    part: &str,
    bytes: fn(&mut AzureVtpmEvidence) -> &mut [u8],
    range: std::ops::Range<usize>,
) -> usize {
    let original = evidence(c);
    let rd = hex::decode(&c.report_data).unwrap();
    let mut refused = 0;
    for at in range {
        let mut e = original.clone();
        bytes(&mut e)[at] ^= 0x01;
        let result = verify(verifier, &e, &rd);
        assert!(
            result.is_err(),
            "{}: {part} byte {at} changed, accepted",
            c.file
        );
        refused += 1;
    }
    refused
}

#[test]
fn every_changed_byte_of_the_evidence_is_refused() {
    let verifier = Verifier::new(TrustStore::amd(), None);
    for c in azure_captures() {
        let e = evidence(&c);
        let hcl_len = e.hcl_report.len();
        // Byte 4 is the unsigned header version: 1 xor 1 = 0 and 2 xor 1 = 3
        // are refused as unknown versions, but 1 <-> 2 is accepted (below).
        let n = every_byte_refused(
            &verifier,
            &c,
            "hcl_report",
            |e| &mut e.hcl_report,
            0..hcl_len,
        );
        assert_eq!(n, hcl_len);
        every_byte_refused(&verifier, &c, "quote", |e| &mut e.quote, 0..e.quote.len());
        every_byte_refused(
            &verifier,
            &c,
            "signature",
            |e| &mut e.signature,
            0..e.signature.len(),
        );
        for i in 0..e.pcr_values.len() {
            let original = evidence(&c);
            let rd = hex::decode(&c.report_data).unwrap();
            for at in 0..32 {
                let mut m = original.clone();
                m.pcr_values[i][at] ^= 0x80;
                let err = verify(&verifier, &m, &rd).unwrap_err();
                assert_eq!(
                    err.reason_code(),
                    "EVIDENCE_TPM_PCR_DIGEST",
                    "{} pcr{i}",
                    c.file
                );
            }
        }
    }
}

#[test]
fn the_hcl_header_version_is_unsigned_and_either_is_accepted() {
    let verifier = Verifier::new(TrustStore::amd(), None);
    for c in azure_captures() {
        let mut e = evidence(&c);
        let version = e.hcl_report[4];
        e.hcl_report[4] = 3 - version;
        let rd = hex::decode(&c.report_data).unwrap();
        assert!(verify(&verifier, &e, &rd).is_ok(), "{}", c.file);
    }
}

#[test]
fn another_chips_vcek_is_refused() {
    // The Genoa capture's VCEK with a Milan report: it chains to the
    // Genoa ASK, not to the Milan one the report's CPUID selects.
    let verifier = Verifier::new(TrustStore::amd(), None);
    let all = azure_captures();
    let (milan, genoa) = (&all[0], &all[2]);
    let mut e = evidence(milan);
    e.cert_table = evidence(genoa).cert_table;
    let err = verify(&verifier, &e, &hex::decode(&milan.report_data).unwrap()).unwrap_err();
    assert!(
        matches!(
            err.reason_code(),
            "EVIDENCE_CHAIN_SIGNATURE" | "EVIDENCE_GENERATION_MISMATCH" | "EVIDENCE_HWID_MISMATCH"
        ),
        "{err}"
    );
}

// ------------------------------------------------------------ the CLI

fn report_verify(dir: &Path, c: &AzureCapture, extra: &[&str]) -> Run {
    std::fs::copy(c.path(), dir.join(&c.file)).unwrap();
    run_in(
        dir,
        &[
            &["report", "verify", c.file.as_str(), "--at", AT][..],
            extra,
        ]
        .concat(),
    )
}

#[test]
fn report_verify_accepts_each_capture_with_its_report_data() {
    let tmp = tempdir();
    for c in azure_captures() {
        let r = report_verify(tmp.path(), &c, &["--report-data", &c.report_data]);
        r.expect_code(0);
        assert_eq!(
            r.stdout_line("  pcr00:"),
            format!("  pcr00:       {}", c.pcr0)
        );
        assert_eq!(
            r.stdout_line("binding:"),
            "binding:       ok (the quote's qualifying data is --report-data)"
        );
        assert_eq!(r.stdout_line("verdict:"), "verdict:       accepted");
        assert!(!r.stdout.contains("UNVERIFIED"), "{}", r.stdout);
        assert_eq!(r.stderr, "");
        if c.file == "evidence-v0.json" {
            assert_snapshot("report_verify_azure_v0", &r.transcript());
        }
        // Without --report-data everything else is checked.
        let r = report_verify(tmp.path(), &c, &["--json"]);
        r.expect_code(0);
        let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        assert_eq!(v["evidence_kind"], "azure-vtpm");
        assert_eq!(v["binding"], "not checked");
        assert_eq!(v["vtpm"]["pcrs_verified"], true);
        assert_eq!(v["vtpm"]["pcrs"]["0"], c.pcr0);
        assert_eq!(v["vtpm"]["hcl"]["attestation_key_bits"], 2048);
    }
}

#[test]
fn report_verify_refuses_a_wrong_report_data_and_bad_input() {
    let tmp = tempdir();
    let c = &azure_captures()[0];
    let r = report_verify(tmp.path(), c, &["--report-data", "6368616c6c656e6766"]);
    r.expect_code(1);
    assert!(
        r.stdout_line("authenticity:")
            .starts_with("authenticity:  REFUSED EVIDENCE_TPM_QUOTE_EXTRA_DATA: TPM quote extraData is 6368616c6c656e6765 but 6368616c6c656e6766 was expected"),
        "{}",
        r.stdout
    );
    assert_snapshot("report_verify_azure_wrong_report_data", &r.transcript());
    for bad in ["zz", "", &"00".repeat(65)] {
        report_verify(tmp.path(), c, &["--report-data", bad]).expect_code(2);
    }
    // A changed PCR value: the quote's digest no longer matches, and the
    // values are shown as unverified.
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(c.path()).unwrap()).unwrap();
    json["quote"]["pcrs"][0][0] = serde_json::json!(0);
    std::fs::write(tmp.path().join("changed.json"), json.to_string()).unwrap();
    let r = run_in(
        tmp.path(),
        &[
            "report",
            "verify",
            "changed.json",
            "--at",
            AT,
            "--report-data",
            &c.report_data,
        ],
    );
    r.expect_code(1);
    assert!(
        r.stdout.contains("REFUSED EVIDENCE_TPM_PCR_DIGEST"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("(UNVERIFIED: the quote did not verify)"),
        "{}",
        r.stdout
    );
    std::fs::write(tmp.path().join("bad.json"), "{\"quote\": 1}").unwrap();
    let r = run_in(tmp.path(), &["report", "verify", "bad.json"]);
    r.expect_code(1);
    assert!(
        r.stderr.contains("bad.json is JSON but no evidence file"),
        "{}",
        r.stderr
    );
}

/// A policy for the capture's paravisor and PCRs 0 and 7 (`pcr0`).
fn capture_policy(paravisor: &str, pcr0: &str, pcr7: &str) -> String {
    format!(
        r#"version = 1

[min_tcb.milan]
bootloader = 0
tee = 0
snp = 0
microcode = 0

[vtpm]
accept = true
paravisor_measurements = ["{paravisor}"]

[[vtpm.pcr_sets]]
name = "reference"
pcrs = {{ 0 = "{pcr0}", 7 = "{pcr7}" }}
"#
    )
}

/// The paravisor measurement and PCR 7 of capture `c`, as `report verify`
/// prints them.
fn paravisor_and_pcr7(dir: &Path, c: &AzureCapture) -> (String, String) {
    let r = report_verify(dir, c, &["--json"]);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    (
        v["claims"]["measurement"].as_str().unwrap().to_owned(),
        v["vtpm"]["pcrs"]["7"].as_str().unwrap().to_owned(),
    )
}

#[test]
fn report_verify_judges_a_vtpm_policy_on_the_verified_pcrs() {
    let tmp = tempdir();
    let d = tmp.path();
    let c = &azure_captures()[0];
    let (paravisor, pcr7) = paravisor_and_pcr7(d, c);
    std::fs::write(
        d.join("good.toml"),
        capture_policy(&paravisor, &c.pcr0, &pcr7),
    )
    .unwrap();
    std::fs::write(
        d.join("other.toml"),
        capture_policy(&paravisor, &"00".repeat(32), &pcr7),
    )
    .unwrap();
    report_verify(
        d,
        c,
        &["--report-data", &c.report_data, "--policy", "good.toml"],
    )
    .expect_code(0);
    let r = report_verify(
        d,
        c,
        &["--report-data", &c.report_data, "--policy", "other.toml"],
    );
    r.expect_code(1);
    assert_eq!(
        r.stdout_line("  POLICY_PCRS_NOT_ALLOWED"),
        format!(
            "  POLICY_PCRS_NOT_ALLOWED  vtpm.pcr_sets: expected PCR set \"reference\": pcr0 = {}, actual pcr0 = {}",
            "00".repeat(32),
            c.pcr0
        )
    );
    assert_snapshot("report_verify_azure_pcrs_refused", &r.transcript());
}

#[test]
fn explain_evaluates_the_vtpm_section_of_a_volumes_policy() {
    let tmp = tempdir();
    let d = tmp.path();
    let c = &azure_captures()[0];
    let (paravisor, pcr7) = paravisor_and_pcr7(d, c);
    init(d, "kb", "127.0.0.1:0");
    let _server = Server::start(d, "kb/config.toml");
    let cfg = ["--config", "kb/config.toml"];
    for (name, pcr0) in [("good", c.pcr0.clone()), ("other", "11".repeat(32))] {
        std::fs::write(
            d.join(format!("{name}.toml")),
            capture_policy(&paravisor, &pcr0, &pcr7),
        )
        .unwrap();
        run_in(
            d,
            &[&["policy", "set", name, &format!("{name}.toml")][..], &cfg].concat(),
        )
        .expect_code(0);
        run_in(
            d,
            &[&["volume", "add", name, "--policy", name][..], &cfg].concat(),
        )
        .expect_code(0);
    }
    let explain = |volume: &str| {
        run_in(
            d,
            &[
                &[
                    "explain",
                    "--report",
                    c.file.as_str(),
                    "--volume",
                    volume,
                    "--at",
                    AT,
                ][..],
                &cfg,
            ]
            .concat(),
        )
    };
    let r = explain("good");
    r.expect_code(0);
    assert_eq!(
        r.stdout_line("vtpm:"),
        "vtpm:      Azure vTPM evidence, 24 PCRs verified by the quote"
    );
    assert_eq!(r.stdout_line("verdict:"), "verdict:   would be released");
    let r = explain("other");
    r.expect_code(1);
    assert!(
        r.stdout_line("  POLICY_PCRS_NOT_ALLOWED")
            .contains(&format!("actual pcr0 = {}", c.pcr0)),
        "{}",
        r.stdout
    );
}
