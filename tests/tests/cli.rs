//! The `broker` command line, run as the real executable in temporary
//! directories (ripgrep / rage style): exit status (0 ok, 1 refused or not
//! found, 2 usage), stdout and stderr. Outputs whose wording matters are
//! compared with snapshots in `tests/tests/snapshots/` (`KB_UPDATE_SNAPSHOTS=1`
//! rewrites them); every command runs with relative paths in its temporary
//! directory so the snapshots hold no machine-specific text.

use std::path::Path;

use keybroker_tests::exe::{
    self, broker_cmd, init, init_and_serve, mode, run_in, run_with, tempdir, Run, Server,
};
use keybroker_tests::fixtures::{expected_field, fixture, stage_real_set, REAL_SETS};
use keybroker_tests::snapshot::{assert_snapshot, longest_hex_run};

/// A time inside every VCEK's validity (the Genoa VCEK starts 2025-08-07).
const AT_VCEK: &str = "2025-09-01T00:00:00Z";
/// A time inside the VLEK's validity (2024-12-10 .. 2025-12-10).
const AT_VLEK: &str = "2025-06-01T00:00:00Z";

fn at_for(set: &str) -> &'static str {
    if set.contains("vlek") {
        AT_VLEK
    } else {
        AT_VCEK
    }
}

/// A policy admitting exactly the debug-allowing Milan report's measurement
/// and TCB, with `allow_debug` as given: one change between accept and refuse.
fn gosev_measurement() -> String {
    expected_field("gosevguest-milan-v2-debug", "measurement")
}

fn gosev_policy(allow_debug: bool) -> String {
    format!(
        r#"version = 1
measurements = ["{m}"]
allow_debug = {allow_debug}

[min_tcb.milan]
bootloader = 2
tee = 0
snp = 5
microcode = 68
"#,
        m = expected_field("gosevguest-milan-v2-debug", "measurement")
    )
}

/// Stages `set` in a fresh directory and runs `report verify` on it.
fn verify_set(set: &str, extra: &[&str]) -> (tempfile::TempDir, Run) {
    let tmp = tempdir();
    stage_real_set(set, tmp.path());
    let mut args = vec!["report", "verify", "report.bin", "--certs", "certs"];
    args.extend_from_slice(extra);
    let r = run_in(tmp.path(), &args);
    (tmp, r)
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

fn json(r: &Run) -> serde_json::Value {
    serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", r.stdout))
}

// ---------------------------------------------------------------- report verify

#[test]
fn report_verify_accepts_each_real_set() {
    for set in REAL_SETS {
        let (_tmp, r) = verify_set(set, &["--at", at_for(set)]);
        r.expect_code(0);
        assert_eq!(
            r.stdout_line("measurement:"),
            format!("measurement:   {}", expected_field(set, "measurement")),
            "{set}"
        );
        assert_eq!(
            r.stdout_line("chip_id:"),
            format!("chip_id:       {}", expected_field(set, "chip_id")),
            "{set}"
        );
        assert_eq!(
            r.stdout_line("report_data:"),
            format!("report_data:   {}", expected_field(set, "report_data")),
            "{set}"
        );
        assert_eq!(r.stdout_line("verdict:"), "verdict:       accepted");
        assert!(!r.stdout.contains("UNVERIFIED"), "{}", r.stdout);
        assert_eq!(r.stderr, "", "{set}");
        assert_snapshot(&format!("report_verify_{set}"), &r.transcript());
    }
}

#[test]
fn report_verify_json_has_verdict_and_claims() {
    for set in REAL_SETS {
        let (_tmp, r) = verify_set(set, &["--at", at_for(set), "--json"]);
        r.expect_code(0);
        let v = json(&r);
        assert_eq!(v["verdict"], "accepted", "{set}");
        assert_eq!(v["authentic"], true, "{set}");
        assert_eq!(v["simulated"], false, "{set}");
        assert!(v["evidence_error"].is_null(), "{set}");
        assert!(v["policy"].is_null(), "{set}: no --policy given");
        assert_eq!(v["at"], at_for(set));
        assert_eq!(v["report"], "report.bin");
        let claims = &v["claims"];
        for field in [
            "measurement",
            "report_data",
            "chip_id",
            "report_id",
            "host_data",
        ] {
            assert_eq!(
                claims[field].as_str(),
                Some(expected_field(set, field).as_str()),
                "{set}: claims.{field}"
            );
        }
        let signer = if set.contains("vlek") { "vlek" } else { "vcek" };
        assert_eq!(claims["signer"], signer, "{set}");
    }
}

#[test]
fn vlek_set_without_at_is_refused_as_expired() {
    let (_tmp, r) = verify_set("trustee-aws-milan-vlek-v3", &[]);
    r.expect_code(1);
    let line = r.stdout_line("authenticity:");
    assert!(
        line.starts_with(
            "authenticity:  REFUSED EVIDENCE_CERT_EXPIRED: VLEK certificate expired at 2025-12-10T22:14:21Z"
        ),
        "{line}"
    );
    assert!(
        r.stdout
            .starts_with("(decoded from an UNVERIFIED report: do not trust these values)\n"),
        "{}",
        r.stdout
    );
    assert_eq!(r.stdout_line("verdict:"), "verdict:       refused");

    let (_tmp, r) = verify_set("trustee-aws-milan-vlek-v3", &["--json"]);
    r.expect_code(1);
    let v = json(&r);
    assert_eq!(v["verdict"], "refused");
    assert_eq!(v["authentic"], false);
    assert_eq!(v["evidence_error"]["code"], "EVIDENCE_CERT_EXPIRED");
}

#[test]
fn debug_report_is_refused_by_a_policy_that_forbids_debug() {
    let set = "gosevguest-milan-v2-debug";
    // The same policy with debug allowed accepts: debug is the only difference.
    let tmp = tempdir();
    stage_real_set(set, tmp.path());
    write(tmp.path(), "debug-ok.toml", &gosev_policy(true));
    write(tmp.path(), "no-debug.toml", &gosev_policy(false));
    let base = ["report", "verify", "report.bin", "--certs", "certs"];
    let at = ["--at", AT_VCEK];

    let ok = run_in(
        tmp.path(),
        &[&base[..], &at, &["--policy", "debug-ok.toml"]].concat(),
    );
    ok.expect_code(0);
    assert_eq!(ok.stdout_line("policy:        ok"), "policy:        ok");

    let r = run_in(
        tmp.path(),
        &[&base[..], &at, &["--policy", "no-debug.toml"]].concat(),
    );
    r.expect_code(1);
    assert_eq!(
        r.stdout_line("policy:        REFUSED"),
        "policy:        REFUSED (1 failing check)"
    );
    assert_eq!(
        r.stdout_line("  POLICY_DEBUG_ALLOWED"),
        "  POLICY_DEBUG_ALLOWED  allow_debug: expected guest policy DEBUG bit 0 (allow_debug = false), actual DEBUG bit 1: the hypervisor may debug the guest"
    );
    assert_eq!(r.stdout_line("verdict:"), "verdict:       refused");
    assert_snapshot("report_verify_debug_refused", &r.transcript());

    let r = run_in(
        tmp.path(),
        &[&base[..], &at, &["--policy", "no-debug.toml", "--json"]].concat(),
    );
    r.expect_code(1);
    let v = json(&r);
    assert_eq!(v["authentic"], true);
    assert_eq!(v["verdict"], "refused");
    assert_eq!(v["policy"]["allowed"], false);
    let failures = v["policy"]["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0]["code"], "POLICY_DEBUG_ALLOWED");
    assert_eq!(failures[0]["check"], "allow_debug");
    assert!(
        failures[0]["expected"]
            .as_str()
            .unwrap()
            .contains("allow_debug = false"),
        "{failures:?}"
    );
    assert!(
        failures[0]["actual"]
            .as_str()
            .unwrap()
            .contains("DEBUG bit 1"),
        "{failures:?}"
    );
}

#[test]
fn documented_example_policy_admits_the_reports_it_names() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/policy.toml");
    for set in ["oak-genoa-v5", "oak-turin-v5"] {
        let tmp = tempdir();
        stage_real_set(set, tmp.path());
        std::fs::copy(&example, tmp.path().join("policy.toml")).unwrap();
        let r = run_in(
            tmp.path(),
            &[
                "report",
                "verify",
                "report.bin",
                "--certs",
                "certs",
                "--at",
                AT_VCEK,
                "--policy",
                "policy.toml",
            ],
        );
        r.expect_code(0);
        assert_eq!(r.stdout_line("policy:        ok"), "policy:        ok");
    }
    // A Milan report it does not name: every failing check, each with its code.
    let tmp = tempdir();
    stage_real_set("virtee-milan-v2", tmp.path());
    std::fs::copy(&example, tmp.path().join("policy.toml")).unwrap();
    let r = run_in(
        tmp.path(),
        &[
            "report",
            "verify",
            "report.bin",
            "--certs",
            "certs",
            "--at",
            AT_VCEK,
            "--policy",
            "policy.toml",
        ],
    );
    r.expect_code(1);
    for code in [
        "POLICY_MEASUREMENT_NOT_ALLOWED",
        "POLICY_GENERATION_NOT_ALLOWED",
        "POLICY_FIRMWARE_BELOW_MINIMUM",
    ] {
        r.stdout_line(&format!("  {code}  "));
    }
    assert_snapshot("report_verify_example_policy_milan", &r.transcript());
}

#[test]
fn one_flipped_byte_in_the_signed_area_breaks_the_signature() {
    let set = "virtee-milan-v2";
    let original = std::fs::read(fixture(set).join("report.bin")).unwrap();
    // family_id (the sev crate's own negative test), report_data,
    // measurement, host_data, report_id, a reserved-but-signed byte of a v2
    // report, and the signature itself.
    for offset in [0x15usize, 0x50, 0x90, 0xC0, 0x140, 0x1F0, 0x2A0] {
        let tmp = tempdir();
        stage_real_set(set, tmp.path());
        let mut bytes = original.clone();
        bytes[offset] ^= 0x01;
        std::fs::write(tmp.path().join("report.bin"), &bytes).unwrap();
        let r = run_in(
            tmp.path(),
            &[
                "report",
                "verify",
                "report.bin",
                "--certs",
                "certs",
                "--at",
                AT_VCEK,
            ],
        );
        r.expect_code(1);
        let line = r.stdout_line("authenticity:");
        assert!(
            line.starts_with("authenticity:  REFUSED EVIDENCE_REPORT_SIGNATURE: "),
            "offset {offset:#x}: {line}"
        );
        assert_eq!(r.stdout_line("verdict:"), "verdict:       refused");
        if offset == 0x15 {
            assert_snapshot("report_verify_flipped_byte", &r.transcript());
            let r = run_in(
                tmp.path(),
                &[
                    "report",
                    "verify",
                    "report.bin",
                    "--certs",
                    "certs",
                    "--at",
                    AT_VCEK,
                    "--json",
                ],
            );
            r.expect_code(1);
            let v = json(&r);
            assert_eq!(v["verdict"], "refused");
            assert_eq!(v["evidence_error"]["code"], "EVIDENCE_REPORT_SIGNATURE");
        }
    }
}

#[test]
fn truncated_oversized_and_empty_reports_are_refused_for_their_length() {
    let original = std::fs::read(fixture("virtee-milan-v2").join("report.bin")).unwrap();
    let mut oversized = original.clone();
    oversized.push(0);
    for (name, bytes) in [
        ("truncated", original[..1000].to_vec()),
        ("oversized", oversized),
        ("empty", Vec::new()),
    ] {
        let tmp = tempdir();
        stage_real_set("virtee-milan-v2", tmp.path());
        std::fs::write(tmp.path().join("report.bin"), &bytes).unwrap();
        let r = run_in(
            tmp.path(),
            &[
                "report",
                "verify",
                "report.bin",
                "--certs",
                "certs",
                "--at",
                AT_VCEK,
            ],
        );
        r.expect_code(1);
        let line = r.stdout_line("authenticity:");
        assert!(
            line.starts_with(&format!(
                "authenticity:  REFUSED EVIDENCE_REPORT_LENGTH: attestation report is {} bytes, expected exactly 1184",
                bytes.len()
            )),
            "{name}: {line}"
        );
        if name == "truncated" {
            assert_snapshot("report_verify_truncated", &r.transcript());
        }
    }
}

#[test]
fn report_verify_bad_input() {
    let tmp = tempdir();
    stage_real_set("virtee-milan-v2", tmp.path());
    let d = tmp.path();

    // A missing report file: exit 1, says which file.
    let r = run_in(d, &["report", "verify", "missing.bin", "--certs", "certs"]);
    r.expect_code(1);
    assert_eq!(r.stdout, "");
    assert_eq!(
        r.stderr,
        "broker: error: cannot read report missing.bin: No such file or directory (os error 2)\n"
    );

    // A time that is not RFC 3339: exit 1, with an example of the format.
    let r = run_in(
        d,
        &[
            "report",
            "verify",
            "report.bin",
            "--certs",
            "certs",
            "--at",
            "yesterday",
        ],
    );
    r.expect_code(1);
    assert_eq!(r.stdout, "");
    assert!(
        r.stderr
            .starts_with("broker: error: --at \"yesterday\" is not an RFC 3339 time"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("2025-06-01T00:00:00Z"), "{}", r.stderr);
    assert_eq!(
        r.stderr.matches("could not be parsed").count(),
        1,
        "the cause is printed once: {}",
        r.stderr
    );

    // An invalid policy file: exit 1 before any verification, naming line and field.
    write(
        d,
        "policy.toml",
        "version = 1\nmeasurements = [\"zz\"]\n\n[min_tcb.milan]\nbootloader = 0\ntee = 0\nsnp = 0\nmicrocode = 0\n",
    );
    let r = run_in(
        d,
        &[
            "report",
            "verify",
            "report.bin",
            "--certs",
            "certs",
            "--policy",
            "policy.toml",
        ],
    );
    r.expect_code(1);
    assert_eq!(r.stdout, "");
    assert!(r.stderr.contains("line 2"), "{}", r.stderr);
    assert!(r.stderr.contains("field `measurements[0]`"), "{}", r.stderr);
    assert_snapshot("report_verify_invalid_policy", &r.transcript());

    // A missing policy file.
    let r = run_in(
        d,
        &[
            "report",
            "verify",
            "report.bin",
            "--certs",
            "certs",
            "--policy",
            "nope.toml",
        ],
    );
    r.expect_code(1);
    assert!(
        r.stderr
            .starts_with("broker: error: cannot read policy file nope.toml: "),
        "{}",
        r.stderr
    );

    // Usage errors: exit 2, clap's usage on stderr, nothing on stdout.
    let r = run_in(d, &["report", "verify", "report.bin", "--frobnicate"]);
    r.expect_code(2);
    assert_eq!(r.stdout, "");
    assert!(r.stderr.contains("'--frobnicate'"), "{}", r.stderr);
    assert!(
        r.stderr.contains("Usage: broker report verify"),
        "{}",
        r.stderr
    );
    assert_snapshot("report_verify_unknown_flag", &r.transcript());

    let r = run_in(d, &["report", "verify"]);
    r.expect_code(2);
    assert!(r.stderr.contains("<REPORT>"), "{}", r.stderr);

    // --help is not an error.
    let r = run_in(d, &["report", "verify", "--help"]);
    r.expect_code(0);
    assert!(r.stdout.contains("--certs <DIR>"), "{}", r.stdout);
    assert!(r.stdout.contains("--at <RFC3339>"), "{}", r.stdout);
}

// ---------------------------------------------------------------- pin, check-config, log format

#[test]
fn pin_prints_the_pin_init_printed() {
    let tmp = tempdir();
    let (_r, pin) = init(tmp.path(), "kb", "127.0.0.1:8443");
    for args in [
        &["pin", "-c", "kb/config.toml"][..],
        &["pin", "--config", "kb/config.toml"],
        &["pin", "--cert", "kb/tls/cert.pem"],
    ] {
        let r = run_in(tmp.path(), args);
        r.expect_code(0);
        assert_eq!(r.stdout, format!("{pin}\n"), "{args:?}");
    }
    // KEYBROKER_CONFIG, as for every command taking --config.
    let r = run_with(
        broker_cmd()
            .current_dir(tmp.path())
            .env("KEYBROKER_CONFIG", "kb/config.toml"),
        &["pin"],
    );
    r.expect_code(0);
    assert_eq!(r.stdout, format!("{pin}\n"));
    // A new certificate's pin, before the broker uses it.
    let new = broker::tls::self_signed(&["localhost".into()]).unwrap();
    write(tmp.path(), "new.pem", &new.cert_pem);
    let r = run_in(tmp.path(), &["pin", "--cert", "new.pem"]);
    r.expect_code(0);
    assert_eq!(r.stdout.trim_end(), new.spki_pin.to_string());
    // Bad input: nothing named, a missing file, not a certificate, a
    // config that does not parse.
    run_in(tmp.path(), &["pin"]).expect_code(2);
    let r = run_in(tmp.path(), &["pin", "--cert", "missing.pem"]);
    r.expect_code(1);
    assert_eq!(
        r.stderr,
        "broker: error: cannot read TLS certificate missing.pem: No such file or directory (os error 2)\n"
    );
    let r = run_in(tmp.path(), &["pin", "--cert", "kb/config.toml"]);
    r.expect_code(1);
    assert!(
        r.stderr.contains("kb/config.toml holds no certificate"),
        "{}",
        r.stderr
    );
    write(tmp.path(), "bad.toml", "[server\n");
    run_in(tmp.path(), &["pin", "-c", "bad.toml"]).expect_code(1);
    // Not root: the broker directory (0700) is not readable, and the
    // message says whom to run it as.
    if let Some(r) = as_nobody(tmp.path(), &["pin", "-c", "kb/config.toml"]) {
        r.expect_code(1);
        assert!(
            r.stderr.contains(
                "Permission denied (os error 13); run this as root or as the broker's user"
            ),
            "{}",
            r.stderr
        );
    }
}

/// Runs `broker ARGS` in `cwd` as user nobody, when the tests run as root
/// and `setpriv` exists.
fn as_nobody(cwd: &Path, args: &[&str]) -> Option<Run> {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .is_some_and(|l| l.split_whitespace().nth(1) == Some("0"));
    if !root || !Path::new("/usr/bin/setpriv").exists() {
        return None;
    }
    let mut cmd = std::process::Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(exe::Exe::Broker.path())
        .current_dir(cwd)
        .env_remove("KEYBROKER_CONFIG")
        .env_remove("KEYBROKER_LOG_FORMAT");
    let out = cmd.args(args).output().ok()?;
    Some(Run {
        args: args.iter().map(|a| a.to_string()).collect(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

#[test]
fn check_config_names_the_line_and_field_of_a_bad_config() {
    let tmp = tempdir();
    init(tmp.path(), "kb", "127.0.0.1:8443");
    let d = tmp.path();
    let good = std::fs::read_to_string(d.join("kb/config.toml")).unwrap();
    let variant = |name: &str, from: &str, to: &str| {
        assert!(good.contains(from), "{from}");
        write(d, &format!("kb/{name}"), &good.replacen(from, to, 1));
        format!("kb/{name}")
    };
    let mut transcript = String::new();
    let mut check = |args: &[&str], code: i32| {
        let r = run_in(d, args);
        r.expect_code(code);
        transcript.push_str(&r.transcript());
        transcript.push('\n');
        r
    };
    let r = check(&["check-config", "-c", "kb/config.toml"], 0);
    assert_eq!(r.stdout, "config ok: kb/config.toml\n");
    // A value out of range: its line and field.
    let ttl = variant("ttl.toml", "nonce_ttl_secs = 60", "nonce_ttl_secs = 9999");
    let r = check(&["check-config", "-c", &ttl], 1);
    assert!(
        r.stderr.starts_with(&format!(
            "broker: error: {ttl}:10: server.nonce_ttl_secs: must be"
        )),
        "{}",
        r.stderr
    );
    // Not TOML for this schema: toml's line, column and caret diagram,
    // on several lines, printed once.
    let listen = variant(
        "listen.toml",
        "listen = \"127.0.0.1:8443\"",
        "listen = 8443",
    );
    let r = check(&["check-config", "-c", &listen], 1);
    assert!(r.stderr.contains("at line 6, column 10\n"), "{}", r.stderr);
    assert!(r.stderr.contains("6 | listen = 8443\n"), "{}", r.stderr);
    assert!(r.stderr.contains("^"), "{}", r.stderr);
    assert_eq!(
        r.stderr.matches("TOML parse error").count(),
        1,
        "{}",
        r.stderr
    );
    let unknown = variant("unknown.toml", "[store]", "[store]\nflavour = \"x\"");
    let r = check(&["check-config", "-c", &unknown], 1);
    assert!(r.stderr.contains("unknown field `flavour`"), "{}", r.stderr);
    // A file it names is missing.
    let key = variant(
        "key.toml",
        "master_key = \"master.key\"",
        "master_key = \"nokey\"",
    );
    let r = check(&["check-config", "-c", &key], 1);
    // The line of the changed field, wherever `broker init` puts it.
    let line = 1 + std::fs::read_to_string(d.join(&key))
        .unwrap()
        .lines()
        .position(|l| l == "master_key = \"nokey\"")
        .unwrap();
    assert!(
        r.stderr.contains(&format!(
            "{key}:{line}: keys.master_key: cannot read kb/nokey"
        )),
        "{}",
        r.stderr
    );
    let cert = variant(
        "cert.toml",
        "tls_cert = \"tls/cert.pem\"",
        "tls_cert = \"tls/none.pem\"",
    );
    check(&["check-config", "-c", &cert], 1);
    // No such config; no config named (a usage error).
    check(&["check-config", "-c", "kb/missing.toml"], 1);
    check(&["check-config"], 2);
    if let Some(r) = as_nobody(d, &["check-config", "-c", "kb/config.toml"]) {
        r.expect_code(1);
        assert!(
            r.stderr
                .contains("run this as root or as the broker's user"),
            "{}",
            r.stderr
        );
    }
    // `serve` says the same about the same file.
    let r = run_in(d, &["serve", "-c", &listen]);
    r.expect_code(1);
    assert_eq!(
        r.stderr.matches("TOML parse error").count(),
        1,
        "{}",
        r.stderr
    );
    assert_snapshot("check_config", &transcript);
}

#[test]
fn log_format_json_writes_one_object_per_line() {
    let tmp = tempdir();
    init(tmp.path(), "kb", "127.0.0.1:0");
    // The final error.
    write(tmp.path(), "bad.toml", "[server\n");
    let r = run_in(
        tmp.path(),
        &["--log-format", "json", "check-config", "-c", "bad.toml"],
    );
    r.expect_code(1);
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(v["level"], "ERROR");
    assert!(
        v["message"].as_str().unwrap().contains("TOML parse error"),
        "{v}"
    );
    // The service's log lines, until it listens.
    let log = {
        use std::io::BufRead as _;
        let log_path = tmp.path().join("serve-json.log");
        let mut child = broker_cmd()
            .current_dir(tmp.path())
            .args(["--log-format", "json", "serve", "-c", "kb/config.toml"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let listening = std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|l| l.starts_with("listening on "));
        let _ = child.kill();
        let _ = child.wait();
        let log = std::fs::read_to_string(&log_path).unwrap();
        assert!(listening, "serve did not start:\n{log}");
        log
    };
    let mut messages = Vec::new();
    for l in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}\n{log}"));
        assert!(v["timestamp"].is_string() && v["level"].is_string(), "{l}");
        messages.push(v["message"].as_str().unwrap_or_default().to_owned());
    }
    assert!(
        messages
            .iter()
            .any(|m| m == "serving keybroker.v1 over TLS"),
        "{log}"
    );
    run_in(
        tmp.path(),
        &["--log-format", "yaml", "pin", "-c", "kb/config.toml"],
    )
    .expect_code(2);
}

// ---------------------------------------------------------------- init

#[test]
fn init_creates_a_broker_directory() {
    let tmp = tempdir();
    let (r, pin) = init(tmp.path(), "kb", "127.0.0.1:8443");
    let d = tmp.path().join("kb");
    for f in ["config.toml", "master.key", "tls/key.pem", "tls/cert.pem"] {
        assert!(d.join(f).is_file(), "{f} missing");
    }
    assert_eq!(mode(&d.join("master.key")), 0o600);
    assert_eq!(mode(&d.join("tls/key.pem")), 0o600);
    assert_eq!(mode(&d), 0o700);
    assert_eq!(std::fs::read(d.join("master.key")).unwrap().len(), 32);

    // The printed pin is the certificate's.
    let hex = pin
        .strip_prefix("sha256:")
        .expect("pin starts with sha256:");
    assert_eq!(hex.len(), 64, "{pin}");
    assert!(
        hex.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{pin}"
    );
    let (certs, _key) = broker::tls::load(&d.join("tls/cert.pem"), &d.join("tls/key.pem")).unwrap();
    assert_eq!(broker::tls::spki_pin(&certs[0]).unwrap().to_string(), pin);

    // The config it wrote is usable as is, with the admin socket asked for.
    let cfg = broker::config::Config::load(&d.join("config.toml")).unwrap();
    assert_eq!(cfg.admin.socket, d.join("admin.sock"));
    assert!(cfg.admin.tcp.is_none() && cfg.admin.allowed_uids.is_none());

    let shown = r.transcript().replace(hex, "[PIN]");
    assert_snapshot("init", &shown);
}

#[test]
fn init_refuses_a_non_empty_directory_and_overwrites_nothing() {
    let tmp = tempdir();
    init(tmp.path(), "kb", "127.0.0.1:8443");
    let d = tmp.path().join("kb");
    let files = ["config.toml", "master.key", "tls/key.pem", "tls/cert.pem"];
    let before: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(d.join(f)).unwrap())
        .collect();

    let r = run_in(tmp.path(), &["init", "--dir", "kb"]);
    r.expect_code(1);
    assert_eq!(r.stdout, "");
    assert_eq!(
        r.stderr,
        "broker: error: kb exists and is not empty; choose a new directory so no existing key is overwritten\n"
    );
    for (f, b) in files.iter().zip(&before) {
        assert_eq!(&std::fs::read(d.join(f)).unwrap(), b, "{f} changed");
    }

    // A directory holding anything at all is refused the same way.
    std::fs::create_dir(tmp.path().join("other")).unwrap();
    write(&tmp.path().join("other"), "notes.txt", "keep me");
    let r = run_in(tmp.path(), &["init", "--dir", "other"]);
    r.expect_code(1);
    assert!(
        r.stderr.contains("other exists and is not empty"),
        "{}",
        r.stderr
    );
    assert!(!tmp.path().join("other/master.key").exists());
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("other/notes.txt")).unwrap(),
        "keep me"
    );
}

#[test]
fn init_accepts_an_existing_empty_directory() {
    let tmp = tempdir();
    std::fs::create_dir(tmp.path().join("empty")).unwrap();
    init(tmp.path(), "empty", "127.0.0.1:8443");
    assert!(tmp.path().join("empty/master.key").is_file());
}

/// The packaged layout: the config in one directory (/etc/keybroker), the
/// keys and database in another (/var/lib/keybroker), named by absolute
/// paths; `serve` from it tells systemd it is ready (`READY=1` on
/// `$NOTIFY_SOCKET`) only once its guest port and admin socket are bound.
#[test]
fn init_with_the_config_elsewhere_and_serve_notifies_systemd_when_ready() {
    use std::os::unix::net::{UnixDatagram, UnixStream};
    let tmp = tempdir();
    let d = tmp.path();
    let r = run_in(
        d,
        &[
            "init",
            "--dir",
            "state",
            "--config",
            "etc/config.toml",
            "--listen",
            "127.0.0.1:0",
            "--admin-socket",
            "run/admin.sock",
        ],
    );
    r.expect_code(0);
    assert!(!d.join("state/config.toml").exists());
    let text = std::fs::read_to_string(d.join("etc/config.toml")).unwrap();
    let state = d.join("state");
    for f in [
        "master.key",
        "tls/cert.pem",
        "tls/key.pem",
        "broker.db",
        "cert-cache",
    ] {
        // The database is named by the store URL (`sqlite:PATH`).
        let scheme = if f == "broker.db" { "sqlite:" } else { "" };
        let want = format!("\"{scheme}{}\"", state.join(f).display());
        assert!(text.contains(&want), "{want} not in the config:\n{text}");
    }
    // A second init overwrites no config.
    std::fs::create_dir(d.join("state2")).unwrap();
    let again = run_in(
        d,
        &["init", "--dir", "state2", "--config", "etc/config.toml"],
    );
    again.expect_code(1);
    assert!(
        again.stderr.contains("etc/config.toml exists"),
        "{}",
        again.stderr
    );
    assert!(!d.join("state2/master.key").exists());

    std::fs::create_dir(d.join("run")).unwrap();
    let notify = d.join("notify.sock");
    let rx = UnixDatagram::bind(&notify).unwrap();
    rx.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    let mut child = keybroker_tests::exe::broker_cmd()
        .current_dir(d)
        .args(["serve", "--config", "etc/config.toml"])
        .env("NOTIFY_SOCKET", &notify)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let got = rx.recv(&mut buf);
    // Ready means connectable: the admin socket and the guest port.
    let admin = UnixStream::connect(d.join("run/admin.sock"));
    let mut line = String::new();
    {
        use std::io::BufRead as _;
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        out.read_line(&mut line).unwrap();
    }
    let guest = line
        .trim()
        .strip_prefix("listening on ")
        .map(std::net::TcpStream::connect);
    let _ = child.kill();
    let _ = child.wait();
    let n = got.expect("no READY=1 from broker serve within 60 s");
    assert_eq!(&buf[..n], b"READY=1");
    admin.expect("READY=1 before the admin socket accepts connections");
    guest
        .unwrap_or_else(|| panic!("no `listening on` line: {line:?}"))
        .expect("READY=1 before the guest port accepts connections");
}

#[test]
fn init_as_root_gives_the_keys_to_the_owner_of_the_directory() {
    use std::os::unix::fs::MetadataExt as _;
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root (chown)");
        return;
    }
    let tmp = tempdir();
    let state = tmp.path().join("state");
    std::fs::create_dir(&state).unwrap();
    // The package's /var/lib/keybroker: owned by the service user.
    std::os::unix::fs::chown(&state, Some(65534), Some(65534)).unwrap();
    run_in(
        tmp.path(),
        &["init", "--dir", "state", "--config", "etc/config.toml"],
    )
    .expect_code(0);
    for f in ["master.key", "tls", "tls/key.pem", "tls/cert.pem"] {
        let m = std::fs::metadata(state.join(f)).unwrap();
        assert_eq!((m.uid(), m.gid()), (65534, 65534), "{f}");
    }
    assert_eq!(mode(&state.join("master.key")), 0o600);
    // The config stays root's.
    assert_eq!(
        std::fs::metadata(tmp.path().join("etc/config.toml"))
            .unwrap()
            .uid(),
        0
    );
}

// ---------------------------------------------------------------- policy and volume

/// Runs an admin command against `kb/config.toml` in `dir`.
fn admin(dir: &Path, args: &[&str]) -> Run {
    let mut all = args.to_vec();
    all.extend_from_slice(&["--config", "kb/config.toml"]);
    run_in(dir, &all)
}

/// Replaces the value of each `"created_at": N` line (a clock reading).
fn redact_created_at(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("\"created_at\": ") {
            Some(i) => {
                let (head, tail) = l.split_at(i + "\"created_at\": ".len());
                let rest = tail.trim_start_matches(|c: char| c.is_ascii_digit());
                format!("{head}[TIME]{rest}\n")
            }
            None => format!("{l}\n"),
        })
        .collect()
}

#[test]
fn policy_and_volume_happy_path() {
    let tmp = tempdir();
    let d = tmp.path();
    let _server = init_and_serve(d, "kb");
    let policy = gosev_policy(false);
    write(d, "prod.toml", &policy);
    let mut transcript = String::new();
    let mut step = |args: &[&str]| -> Run {
        let r = admin(d, args);
        r.expect_code(0);
        assert_eq!(r.stderr, "", "{args:?}");
        transcript.push_str(&redact_created_at(&r.transcript()));
        transcript.push('\n');
        r
    };

    let r = step(&["policy", "set", "prod", "prod.toml"]);
    assert_eq!(r.stdout, "policy prod set (revision 1)\n");
    let r = step(&["policy", "set", "prod", "prod.toml"]);
    assert_eq!(r.stdout, "policy prod set (revision 2)\n");
    let r = step(&["policy", "list"]);
    assert_eq!(r.stdout, "prod\trevision=2\n");
    let r = step(&["policy", "list", "--json"]);
    assert_eq!(
        json(&r),
        serde_json::json!([{"name": "prod", "revision": 2}])
    );
    let r = step(&["policy", "show", "prod"]);
    assert_eq!(r.stdout, policy, "policy show prints the stored text");

    let r = step(&[
        "volume",
        "add",
        "data",
        "--policy",
        "prod",
        "--description",
        "data disk",
    ]);
    assert_eq!(r.stdout, "added volume data (policy prod, key version 1)\n");
    step(&["volume", "add", "root.v2_x-1", "--policy", "prod"]);
    let r = step(&["volume", "list"]);
    assert_eq!(
        r.stdout,
        "data\tpolicy=prod\tenabled\trotation=none\tdata disk\n\
         root.v2_x-1\tpolicy=prod\tenabled\trotation=none\t\n"
    );
    let r = step(&["volume", "list", "--json"]);
    let v = json(&r);
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert_eq!(v[0]["name"], "data");
    assert_eq!(v[0]["policy"], "prod");
    assert_eq!(v[0]["enabled"], true);
    assert_eq!(v[0]["description"], "data disk");
    assert_eq!(
        v[0]["rotation"],
        serde_json::json!({
            "current_version": 1, "pending_version": null, "retired_versions": 0,
            "state": "no rotation (current v1)",
        })
    );
    let r = step(&["volume", "show", "data"]);
    assert_eq!(r.stdout_line("key version 1:"), "key version 1: current");
    assert_eq!(
        r.stdout_line("rotation:"),
        "rotation:    no rotation (current v1)"
    );
    assert!(longest_hex_run(&r.stdout) < 128, "{}", r.stdout);
    let r = step(&["volume", "show", "data", "--json"]);
    let v = json(&r);
    assert_eq!(v["name"], "data");
    assert_eq!(v["key_versions"].as_array().unwrap().len(), 1);
    assert_eq!(v["key_versions"][0]["version"], 1);
    assert_eq!(v["key_versions"][0]["state"], "current");
    assert_eq!(v["key_versions"][0]["retired_at"], serde_json::Value::Null);
    assert_eq!(v["rotation"]["state"], "no rotation (current v1)");
    assert!(longest_hex_run(&r.stdout) < 128, "{}", r.stdout);
    // Only these fields: nothing that could hold key material.
    let mut keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "description",
            "enabled",
            "key_versions",
            "name",
            "policy",
            "rotation"
        ]
    );
    let mut kv: Vec<_> = v["key_versions"][0]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    kv.sort();
    assert_eq!(kv, ["created_at", "retired_at", "state", "version"]);

    assert_snapshot("admin_happy_path", &transcript);
}

#[test]
fn policy_and_volume_refusals() {
    let tmp = tempdir();
    let d = tmp.path();
    let _server = init_and_serve(d, "kb");
    write(d, "prod.toml", &gosev_policy(false));
    admin(d, &["policy", "set", "prod", "prod.toml"]).expect_code(0);
    admin(d, &["volume", "add", "data", "--policy", "prod"]).expect_code(0);
    let mut transcript = String::new();
    let mut refused = |args: &[&str]| -> Run {
        let r = admin(d, args);
        r.expect_code(1);
        assert_eq!(r.stdout, "", "{args:?}");
        transcript.push_str(&r.transcript());
        transcript.push('\n');
        r
    };

    let r = refused(&["volume", "add", "logs", "--policy", "nope"]);
    assert!(
        r.stderr.contains("`broker policy set nope FILE`"),
        "{}",
        r.stderr
    );
    let r = refused(&["volume", "add", "data", "--policy", "prod"]);
    assert!(
        r.stderr.contains("volume \"data\" already exists"),
        "{}",
        r.stderr
    );
    let r = refused(&["volume", "show", "nope"]);
    assert!(
        r.stderr.contains("no volume named \"nope\""),
        "{}",
        r.stderr
    );
    let r = refused(&["volume", "add", "bad name/x", "--policy", "prod"]);
    assert!(r.stderr.contains("invalid volume name"), "{}", r.stderr);
    assert!(r.stderr.contains("[A-Za-z0-9._-]"), "{}", r.stderr);
    let r = refused(&["policy", "show", "nope"]);
    assert!(
        r.stderr.contains("no policy named \"nope\""),
        "{}",
        r.stderr
    );
    write(
        d,
        "bad.toml",
        "version = 1\nmeasurements = [\"zz\"]\n\n[min_tcb.milan]\nbootloader = 0\ntee = 0\nsnp = 0\nmicrocode = 0\n",
    );
    let r = refused(&["policy", "set", "bad", "bad.toml"]);
    assert!(r.stderr.contains("line 2"), "{}", r.stderr);
    assert!(r.stderr.contains("field `measurements[0]`"), "{}", r.stderr);
    write(
        d,
        "unknown.toml",
        &gosev_policy(false).replace("allow_debug", "allow_debugging"),
    );
    let r = refused(&["policy", "set", "bad", "unknown.toml"]);
    assert!(r.stderr.contains("line 3"), "{}", r.stderr);
    assert!(r.stderr.contains("allow_debugging"), "{}", r.stderr);
    // Unknown volumes and policies.
    for args in [
        &["volume", "disable", "nope"][..],
        &["volume", "enable", "nope"],
        &["volume", "delete", "nope", "--yes"],
    ] {
        let r = refused(args);
        assert!(
            r.stderr.contains("no volume named \"nope\""),
            "{args:?}: {}",
            r.stderr
        );
    }
    let m = "ab".repeat(48);
    let r = refused(&["policy", "allow-measurement", "nope", &m]);
    assert!(
        r.stderr.contains("no policy named \"nope\""),
        "{}",
        r.stderr
    );
    // Wrong hex: not hex, wrong length.
    let r = refused(&["policy", "allow-measurement", "prod", "zz"]);
    assert!(
        r.stderr.contains("is not a launch measurement"),
        "{}",
        r.stderr
    );
    let r = refused(&["policy", "revoke-measurement", "prod", "abcd"]);
    assert!(
        r.stderr.contains("2 bytes (4 hex characters)") && r.stderr.contains("48-byte"),
        "{}",
        r.stderr
    );
    let r = refused(&["policy", "block-chip", "prod", &"11".repeat(48)]);
    assert!(
        r.stderr.contains("is not a chip id") && r.stderr.contains("64-byte chip id"),
        "{}",
        r.stderr
    );
    let r = refused(&["policy", "unblock-chip", "prod", "x"]);
    assert!(r.stderr.contains("is not a chip id"), "{}", r.stderr);
    // The only measurement cannot be revoked.
    let only = gosev_measurement();
    let r = refused(&["policy", "revoke-measurement", "prod", &only]);
    assert!(
        r.stderr
            .contains("cannot revoke the only allowed measurement"),
        "{}",
        r.stderr
    );
    // An enabled volume cannot be deleted.
    let r = refused(&["volume", "delete", "data", "--yes"]);
    assert!(
        r.stderr
            .contains("disable it first with `broker volume disable data`"),
        "{}",
        r.stderr
    );
    assert_snapshot("admin_refusals", &transcript);

    // Without --yes, delete is a usage error and asks for it.
    let r = admin(d, &["volume", "delete", "data"]);
    r.expect_code(2);
    assert_eq!(r.stdout, "");
    assert!(r.stderr.contains("Re-run with --yes"), "{}", r.stderr);

    // Nothing above changed the store: one policy, one volume at version 1.
    let r = admin(d, &["policy", "list"]);
    assert_eq!(r.stdout, "prod\trevision=1\n");
    let r = admin(d, &["volume", "list"]);
    assert_eq!(r.stdout, "data\tpolicy=prod\tenabled\trotation=none\t\n");
    let r = admin(d, &["volume", "show", "data"]);
    let versions: Vec<_> = r
        .stdout
        .lines()
        .filter(|l| l.starts_with("key version"))
        .collect();
    assert_eq!(versions, ["key version 1: current"]);
}

#[test]
fn admin_commands_need_a_running_broker() {
    let tmp = tempdir();
    let d = tmp.path();
    init(d, "kb", "127.0.0.1:0");

    // No server on the config's socket: exit 1, saying what to do.
    for args in [
        &["volume", "list"][..],
        &["volume", "show", "data"],
        &["volume", "add", "data", "--policy", "prod"],
        &["volume", "disable", "data"],
        &["volume", "delete", "data", "--yes"],
        &["policy", "list"],
        &["policy", "show", "prod"],
        &["policy", "allow-measurement", "prod", "00"],
        &["audit"],
        &["audit", "verify"],
        &["platforms"],
        &["volume", "rotate", "data"],
        &["volume", "cancel-rotation", "data"],
        &["volume", "purge-retired"],
        &[
            "volume",
            "purge-retired",
            "data",
            "--older-than-days",
            "7",
            "--json",
        ],
        &["rotate-master"],
        &["rotate-master", "--batch", "10"],
        &["status"],
        &["status", "--json"],
    ] {
        let r = run_in(d, &[args, &["--config", "kb/config.toml"][..]].concat());
        r.expect_code(1);
        assert_eq!(r.stdout, "", "{args:?}");
        let sock = d.join("kb/admin.sock");
        assert_eq!(
            r.stderr,
            format!(
                "broker: error: cannot connect to the admin socket {}: No such file or directory \
                 (os error 2); the broker is not running, or its socket is elsewhere: start \
                 `broker serve`, or point --socket (or KEYBROKER_ADMIN_SOCKET, or the [admin] \
                 socket of --config) at it\n",
                sock.display()
            ),
            "{args:?}"
        );
    }
    // --socket names the socket directly.
    let r = run_in(d, &["volume", "list", "--socket", "no/such.sock"]);
    r.expect_code(1);
    assert!(
        r.stderr
            .contains("cannot connect to the admin socket no/such.sock: "),
        "{}",
        r.stderr
    );
    // Without --socket or --config: the default socket.
    if !Path::new("/run/keybroker/admin.sock").exists() {
        let r = run_in(d, &["policy", "list"]);
        r.expect_code(1);
        assert!(
            r.stderr.contains("/run/keybroker/admin.sock")
                && r.stderr.contains("the broker is not running"),
            "{}",
            r.stderr
        );
    }

    // A config file that does not exist: exit 1, naming that file.
    let r = run_in(d, &["volume", "list", "--config", "nowhere/config.toml"]);
    r.expect_code(1);
    assert_eq!(r.stdout, "");
    assert!(
        r.stderr
            .starts_with("broker: error: cannot read config nowhere/config.toml: "),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("broker init"), "{}", r.stderr);
    assert!(
        !d.join("nowhere").exists(),
        "nothing created for a bad path"
    );

    // With the broker running: KEYBROKER_CONFIG and KEYBROKER_ADMIN_SOCKET
    // stand in for --config and --socket.
    let _server = Server::start(d, "kb/config.toml");
    let r = run_with(
        exe::broker_cmd()
            .current_dir(d)
            .env("KEYBROKER_CONFIG", "kb/config.toml"),
        &["policy", "list"],
    );
    r.expect_code(0);
    let r = run_with(
        exe::broker_cmd()
            .current_dir(d)
            .env("KEYBROKER_ADMIN_SOCKET", "kb/admin.sock"),
        &["volume", "list"],
    );
    r.expect_code(0);
}

#[test]
fn volume_lifecycle_policy_edits_and_diff() {
    let tmp = tempdir();
    let d = tmp.path();
    let _server = init_and_serve(d, "kb");
    let m1 = gosev_measurement();
    let m2 = "cd".repeat(48);
    let chip = "11".repeat(64);
    let text = format!(
        "# production images\nversion = 1\nmeasurements = [\n    \"{m1}\", # image 2025-06\n]\nallow_debug = false\n\n[min_tcb.milan]\nbootloader = 2\ntee = 0\nsnp = 5\nmicrocode = 68\n"
    );
    write(d, "prod.toml", &text);
    let ok = |args: &[&str]| -> Run {
        let r = admin(d, args);
        r.expect_code(0);
        r
    };
    ok(&["policy", "set", "prod", "prod.toml"]);
    ok(&["volume", "add", "data", "--policy", "prod"]);

    // diff: same text, exit 0 and no output.
    let r = ok(&["policy", "diff", "prod", "prod.toml"]);
    assert_eq!(r.stdout, "");

    // allow-measurement keeps comments and layout; a second time is a no-op.
    let r = ok(&["policy", "allow-measurement", "prod", &m2.to_uppercase()]);
    assert_eq!(
        r.stdout,
        format!("policy prod: measurement {m2} allowed (revision 2)\n")
    );
    assert_eq!(r.stderr, "");
    let r = ok(&["policy", "allow-measurement", "prod", &m2]);
    assert_eq!(
        r.stdout,
        format!("policy prod: measurement {m2} was already allowed; unchanged (revision 2)\n")
    );
    let r = ok(&["policy", "show", "prod"]);
    assert_eq!(
        r.stdout,
        text.replace(
            " # image 2025-06\n",
            &format!(" # image 2025-06\n    \"{}\",\n", m2.to_lowercase())
        )
    );
    // diff against the file: exit 1 with a unified diff.
    let r = admin(d, &["policy", "diff", "prod", "prod.toml"]);
    r.expect_code(1);
    assert_eq!(
        r.stdout,
        format!(
            "--- prod (revision 2)\n+++ prod.toml\n@@ -2,7 +2,6 @@\n version = 1\n measurements = [\n     \"{m1}\", # image 2025-06\n-    \"{m2}\",\n ]\n allow_debug = false\n \n"
        )
    );
    let r = admin(d, &["policy", "diff", "nope", "prod.toml"]);
    r.expect_code(2);
    assert!(
        r.stderr.contains("no policy named \"nope\""),
        "{}",
        r.stderr
    );

    // revoke the first one: its line (and comment) goes.
    ok(&["policy", "revoke-measurement", "prod", &m1]);
    let r = ok(&["policy", "show", "prod"]);
    assert!(!r.stdout.contains(&m1) && r.stdout.contains("# production images"));
    assert!(r.stdout.contains(&m2), "{}", r.stdout);

    // block-chip / unblock-chip.
    let r = ok(&["policy", "block-chip", "prod", &chip]);
    assert_eq!(
        r.stdout,
        format!("policy prod: chip {chip} blocked (revision 4)\n")
    );
    let r = ok(&["policy", "show", "prod"]);
    assert!(
        r.stdout
            .contains(&format!("blocked_chip_ids = [\"{chip}\"]\n")),
        "{}",
        r.stdout
    );
    ok(&["policy", "unblock-chip", "prod", &chip]);
    let r = ok(&["policy", "list", "--json"]);
    assert_eq!(
        json(&r),
        serde_json::json!([{"name": "prod", "revision": 5}])
    );

    // disable, enable, disable, delete.
    let r = ok(&["volume", "disable", "data"]);
    assert_eq!(
        r.stdout,
        "volume data disabled: no guest receives its key from now on\n"
    );
    let r = ok(&["volume", "disable", "data"]);
    assert_eq!(r.stdout, "volume data was already disabled\n");
    let r = ok(&["volume", "list"]);
    assert_eq!(r.stdout, "data\tpolicy=prod\tdisabled\trotation=none\t\n");
    ok(&["volume", "enable", "data"]);
    ok(&["volume", "disable", "data"]);
    let r = ok(&["volume", "delete", "data", "--yes"]);
    assert_eq!(r.stdout, "deleted volume data and all its key versions\n");
    let r = ok(&["volume", "list", "--json"]);
    assert_eq!(json(&r), serde_json::json!([]));

    // Every change is in the audit log, with its caller; the chain holds.
    let r = ok(&["audit", "--kind", "admin", "--json"]);
    let v = json(&r);
    let actions: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["details"]["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "policy.set",
            "volume.add",
            "policy.allow_measurement",
            "policy.allow_measurement",
            "policy.revoke_measurement",
            "policy.block_chip",
            "policy.unblock_chip",
            "volume.disable",
            "volume.disable",
            "volume.enable",
            "volume.disable",
            "volume.delete",
        ]
    );
    let me = rustix::process::geteuid().as_raw();
    for e in v.as_array().unwrap() {
        assert_eq!(e["verdict"], "allow");
        assert!(
            e["client"]
                .as_str()
                .unwrap()
                .starts_with(&format!("uid={me},pid=")),
            "{e}"
        );
    }
    assert_eq!(v[1]["volumes"], serde_json::json!(["data"]));
    let r = ok(&["audit", "verify"]);
    assert_eq!(r.stdout, "audit chain ok: 12 entries\n");
}

// ---------------------------------------------------------------- key lifecycle

#[test]
fn volume_rotation_cancel_and_purge() {
    let tmp = tempdir();
    let d = tmp.path();
    let _server = init_and_serve(d, "kb");
    write(d, "prod.toml", &gosev_policy(false));
    admin(d, &["policy", "set", "prod", "prod.toml"]).expect_code(0);
    admin(d, &["volume", "add", "data", "--policy", "prod"]).expect_code(0);
    admin(d, &["volume", "add", "logs", "--policy", "prod"]).expect_code(0);
    let mut transcript = String::new();
    let mut run = |args: &[&str], code: i32| -> Run {
        let r = admin(d, args);
        r.expect_code(code);
        if code == 0 {
            assert_eq!(r.stderr, "", "{args:?}");
        } else {
            assert_eq!(r.stdout, "", "{args:?}");
        }
        transcript.push_str(&redact_created_at(&r.transcript()));
        transcript.push('\n');
        r
    };

    // rotate: a pending version, and what happens next.
    let r = run(&["volume", "rotate", "data"], 0);
    assert_eq!(
        r.stdout.lines().next().unwrap(),
        "volume data: key version 2 is pending (current v1)"
    );
    for want in [
        "v2 becomes current once the guest proves it enrolled it",
        "next unlock",
        "`guest-unlock rotate`",
        "`broker volume cancel-rotation data`",
    ] {
        assert!(r.stdout.contains(want), "{want:?} in {}", r.stdout);
    }
    // show and list say it is pending.
    let r = run(&["volume", "show", "data"], 0);
    assert_eq!(
        r.stdout_line("rotation:"),
        "rotation:    pending v2 awaiting the guest's proof (current v1)"
    );
    let versions: Vec<_> = r
        .stdout
        .lines()
        .filter(|l| l.starts_with("key version"))
        .collect();
    assert_eq!(
        versions,
        ["key version 1: current", "key version 2: pending"]
    );
    let r = run(&["volume", "show", "data", "--json"], 0);
    let v = json(&r);
    assert_eq!(v["rotation"]["pending_version"], 2);
    assert_eq!(v["rotation"]["current_version"], 1);
    assert_eq!(v["key_versions"][1]["state"], "pending");
    assert_eq!(v["key_versions"][1]["retired_at"], serde_json::Value::Null);
    assert!(longest_hex_run(&r.stdout) < 128, "{}", r.stdout);
    let r = run(&["volume", "list"], 0);
    assert_eq!(
        r.stdout,
        "data\tpolicy=prod\tenabled\trotation=pending-v2\t\n\
         logs\tpolicy=prod\tenabled\trotation=none\t\n"
    );
    let r = run(&["volume", "list", "--json"], 0);
    let v = json(&r);
    assert_eq!(v[0]["rotation"]["pending_version"], 2);
    assert_eq!(v[1]["rotation"]["pending_version"], serde_json::Value::Null);

    // A second rotation is refused, saying what to do.
    let r = run(&["volume", "rotate", "data"], 1);
    assert_eq!(
        r.stderr,
        "broker: volume \"data\" already has pending key version 2 awaiting the guest's proof; \
         it becomes current when the guest confirms it (at its next unlock, or `guest-unlock \
         rotate` in the guest), or cancel that rotation first with `broker volume \
         cancel-rotation data` (safe: the guest keeps opening the volume with the current key)\n"
    );
    // status lists it (JSON: its text holds a time).
    let st = json(&admin(d, &["status", "--json"]));
    assert_eq!(st["pending_rotations"][0]["volume"], "data");
    assert_eq!(st["pending_rotations"][0]["pending_version"], 2);
    assert_eq!(st["pending_rotations"][0]["current_version"], 1);
    assert_eq!(st["pending_rotations"].as_array().unwrap().len(), 1);

    // cancel; then nothing to cancel.
    let r = run(&["volume", "cancel-rotation", "data"], 0);
    assert_eq!(
        r.stdout,
        "volume data: rotation cancelled; pending key version 2 deleted (the current version \
         is unchanged; 2 is never reused)\n"
    );
    let r = run(&["volume", "cancel-rotation", "data"], 1);
    assert_eq!(
        r.stderr,
        "broker: volume \"data\" has no pending key version; there is no rotation to cancel \
         (`broker volume show data` shows its key versions)\n"
    );
    let r = run(&["volume", "show", "data"], 0);
    assert_eq!(
        r.stdout_line("rotation:"),
        "rotation:    no rotation (current v1)"
    );
    // Unknown volumes.
    for args in [
        &["volume", "rotate", "nope"][..],
        &["volume", "cancel-rotation", "nope"],
        &["volume", "purge-retired", "nope"],
    ] {
        let r = run(args, 1);
        assert_eq!(
            r.stderr,
            "broker: no volume named \"nope\"; `broker volume list` shows the enrolled ones\n",
            "{args:?}"
        );
    }

    // purge-retired with nothing retired.
    let r = run(&["volume", "purge-retired"], 0);
    assert_eq!(
        r.stdout,
        "no retired key version retired more than 30 days ago; nothing purged\n"
    );
    let r = run(
        &["volume", "purge-retired", "data", "--older-than-days", "0"],
        0,
    );
    assert_eq!(
        r.stdout,
        "no retired key version of volume data retired more than 0 days ago; nothing purged\n"
    );
    let r = run(&["volume", "purge-retired", "--json"], 0);
    assert_eq!(
        json(&r),
        serde_json::json!({"older_than_days": 30, "purged": []})
    );
    // The cancelled number is not handed out again.
    let r = run(&["volume", "rotate", "data"], 0);
    assert_eq!(
        r.stdout.lines().next().unwrap(),
        "volume data: key version 3 is pending (current v1)"
    );
    assert_snapshot("volume_rotation", &transcript);

    // Bad input is a usage error (exit 2).
    let r = admin(d, &["volume", "purge-retired", "--older-than-days", "soon"]);
    r.expect_code(2);
    assert!(
        r.stderr
            .contains("invalid value 'soon' for '--older-than-days <N>'"),
        "{}",
        r.stderr
    );
    let r = admin(d, &["volume", "rotate"]);
    r.expect_code(2);
    assert!(r.stderr.contains("<NAME>"), "{}", r.stderr);

    // Every call above that changes something is audited, refusals too.
    let r = admin(d, &["audit", "--kind", "admin", "--json"]);
    let v = json(&r);
    let actions: Vec<(&str, &str)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["details"]["action"].as_str().unwrap(),
                e["verdict"].as_str().unwrap(),
            )
        })
        .filter(|(a, _)| !a.starts_with("policy.") && *a != "volume.add")
        .collect();
    assert_eq!(
        actions,
        [
            ("volume.rotate", "allow"),
            ("volume.rotate", "deny"),
            ("volume.cancel_rotation", "allow"),
            ("volume.cancel_rotation", "deny"),
            ("volume.rotate", "deny"),
            ("volume.cancel_rotation", "deny"),
            ("volume.purge_retired", "deny"),
            ("volume.purge_retired", "allow"),
            ("volume.purge_retired", "allow"),
            ("volume.purge_retired", "allow"),
            ("volume.rotate", "allow"),
        ]
    );
}

#[test]
fn rotate_master_and_status() {
    let tmp = tempdir();
    let d = tmp.path();
    let _server = init_and_serve(d, "kb");
    write(d, "prod.toml", &gosev_policy(false));
    admin(d, &["policy", "set", "prod", "prod.toml"]).expect_code(0);
    for v in ["a", "b", "c"] {
        admin(d, &["volume", "add", v, "--policy", "prod"]).expect_code(0);
    }
    admin(d, &["volume", "rotate", "b"]).expect_code(0);

    let before = json(admin(d, &["status", "--json"]).expect_code(0));
    let old = before["master_key_id"].as_str().unwrap().to_owned();
    assert_eq!(before["master_key_generation"], 1);
    assert_eq!(before["master_rotation_under_way"], false);
    assert_eq!(
        before["master_keys"],
        serde_json::json!([{"id": old, "role": "current", "records": 4, "retired": 0}])
    );

    // Batches of 3 for 4 records (3 volumes, one with a pending version):
    // progress on stderr, one line on stdout.
    let r = admin(d, &["rotate-master", "--batch", "3"]);
    r.expect_code(0);
    let progress: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(progress.len(), 2, "{}", r.stderr);
    assert!(
        progress[0].starts_with("re-sealed 3/4 key versions (batch 1: 3 in "),
        "{}",
        r.stderr
    );
    assert!(
        progress[1].starts_with("re-sealed 4/4 key versions (batch 2: 1 in "),
        "{}",
        r.stderr
    );
    assert_eq!(r.stdout.lines().count(), 1, "{}", r.stdout);
    let prefix = format!("master key rotated: {old} -> ");
    assert!(r.stdout.starts_with(&prefix), "{}", r.stdout);
    let new = r.stdout[prefix.len()..]
        .split(',')
        .next()
        .unwrap()
        .to_owned();
    assert_ne!(new, old);
    assert!(
        r.stdout
            .contains(", 4 key versions re-sealed in 2 batches ("),
        "{}",
        r.stdout
    );
    let retired = d.join(format!("kb/master.key.retired-{old}"));
    assert!(
        r.stdout.contains(&format!(
            "kb/master.key.retired-{old} until you remove it (once no database backup"
        )),
        "{}",
        r.stdout
    );
    assert_eq!(mode(&retired), 0o600);
    assert!(!d.join("kb/master.key.next").exists());

    // Status: every record under the new key, no rotation under way.
    let st = json(admin(d, &["status", "--json"]).expect_code(0));
    assert_eq!(st["master_key_id"], new.as_str());
    assert_eq!(st["master_key_generation"], 2);
    assert_eq!(st["master_rotation_under_way"], false);
    assert_eq!(st["next_master_key_id"], serde_json::Value::Null);
    assert_eq!(
        st["master_keys"],
        serde_json::json!([{"id": new, "role": "current", "records": 4, "retired": 0}])
    );
    assert_eq!(st["pending_rotations"][0]["volume"], "b");
    assert_eq!(st["retired_versions"], serde_json::json!([]));
    assert_eq!(st["retired_retention_days"], 30);
    let listeners = st["listeners"].as_array().unwrap();
    assert!(
        listeners.iter().any(|l| l["kind"] == "admin-unix"
            && l["address"].as_str().unwrap().ends_with("kb/admin.sock")),
        "{listeners:?}"
    );
    let r = admin(d, &["status"]);
    r.expect_code(0);
    assert_eq!(r.stderr, "");
    assert_eq!(
        r.stdout_line("master key:"),
        format!("master key:      {new} (generation 2)")
    );
    assert_eq!(
        r.stdout_line("master rotation:"),
        "master rotation: none under way"
    );
    assert!(
        r.stdout
            .contains(&format!("\n  {new}  current: 4 records (0 retired)\n")),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("\n  b  v2 since "), "{}", r.stdout);
    assert_eq!(
        r.stdout_line("retired key versions:"),
        "retired key versions: none (kept 30 days before `broker volume purge-retired` destroys them)"
    );
    assert!(r.stdout.contains("\n  admin-unix  "), "{}", r.stdout);
    assert!(longest_hex_run(&r.stdout) < 128, "{}", r.stdout);

    // The volumes are still served (their keys unseal under the new key:
    // the broker re-reads nothing, it holds both keys).
    let r = admin(d, &["volume", "show", "b"]);
    r.expect_code(0);
    assert_eq!(
        r.stdout_line("rotation:"),
        "rotation:    pending v2 awaiting the guest's proof (current v1)"
    );

    // Bad input: --batch 0 or not a number is a usage error.
    let r = admin(d, &["rotate-master", "--batch", "0"]);
    r.expect_code(2);
    assert!(
        r.stderr.contains(
            "invalid value '0' for '--batch <N>': must be at least 1 (key versions re-sealed \
             per transaction)"
        ),
        "{}",
        r.stderr
    );
    let r = admin(d, &["rotate-master", "--batch", "many"]);
    r.expect_code(2);
    assert!(r.stderr.contains("e.g. 500"), "{}", r.stderr);

    // A second rotation right after: a new key again, generation 3.
    let r = admin(d, &["rotate-master"]);
    r.expect_code(0);
    assert!(
        r.stdout
            .starts_with(&format!("master key rotated: {new} -> ")),
        "{}",
        r.stdout
    );
    let st = json(admin(d, &["status", "--json"]).expect_code(0));
    assert_eq!(st["master_key_generation"], 3);
    let r = admin(d, &["audit", "--kind", "admin", "--json"]);
    let n = json(&r)
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["details"]["action"] == "master.rotate" && e["verdict"] == "allow")
        .count();
    assert_eq!(n, 2);
}

/// `broker serve` hands the admin plane its config: the retention of
/// `[keys] retired_retention_days` and the listeners, the guest port as bound.
#[test]
fn status_reports_the_configured_retention_and_listeners() {
    let tmp = tempdir();
    let d = tmp.path();
    init(d, "kb", "127.0.0.1:0");
    let cfg = d.join("kb/config.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains("retired_retention_days = 30\n"), "{text}");
    std::fs::write(
        &cfg,
        text.replace(
            "retired_retention_days = 30\n",
            "retired_retention_days = 7\n",
        ),
    )
    .unwrap();
    let server = Server::start(d, "kb/config.toml");
    let st = json(admin(d, &["status", "--json"]).expect_code(0));
    assert_eq!(st["retired_retention_days"], 7);
    let listeners = st["listeners"].as_array().unwrap();
    assert!(
        listeners.contains(&serde_json::json!({"kind": "guest", "address": server.guest_addr})),
        "{listeners:?}"
    );
    let r = admin(d, &["volume", "purge-retired", "--json"]);
    assert_eq!(
        json(r.expect_code(0)),
        serde_json::json!({"older_than_days": 7, "purged": []})
    );
    let r = admin(d, &["status"]);
    assert!(
        r.stdout
            .contains(&format!("\n  guest       {}\n", server.guest_addr)),
        "{}",
        r.stdout
    );
}
