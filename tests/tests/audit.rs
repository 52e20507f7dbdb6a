//! The operator's view of past decisions, through the real `broker`
//! executable: `broker audit` (listing and filters), `broker audit verify`
//! against a database tampered with through a raw SQLite connection (as an
//! attacker with file access would: triggers dropped first), the promise
//! that audit entries never hold key material, `broker platforms`, and
//! `broker explain` on each real AMD report set.
//!
//! The decisions are real: a broker directory made with the CLI (`init`,
//! `policy set`, `volume add`) trusting a simulated SEV-SNP platform, and
//! the library's `Broker` running Challenge and Attest in this process with
//! reports the simulated platform signs; the guest unwraps its key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use broker::release::{AttestInput, Release};
use broker::verify::Evidence;
use keybroker_proto::{report_data, GuestKeyPair, VolumeIds};
use keybroker_tests::exe::{init, run_in, tempdir, Run, Server};
use keybroker_tests::fixtures::{expected_field, stage_real_set, REAL_SETS};
use keybroker_tests::sim::{SimGuest, SimParams, SimPlatform};
use keybroker_tests::snapshot::assert_snapshot;
use serde_json::Value;

const GUEST_A: &str = "127.0.0.1:40001";
const GUEST_B: &str = "127.0.0.1:40002";

/// A broker directory `kb` in a temporary directory, trusting a simulated
/// platform, with policy `sim` (admits the default simulated guest),
/// policy `strict` (a TCB and firmware floor above the platform's) and
/// volumes `root` (policy `sim`) and `other` (policy `strict`).
struct Setup {
    /// `broker serve` on `kb` (dropped, so stopped, before the directory goes).
    _server: Server,
    tmp: tempfile::TempDir,
    sim: SimPlatform,
}

impl Setup {
    fn new() -> Setup {
        let tmp = tempdir();
        let d = tmp.path();
        init(d, "kb", "127.0.0.1:0");
        let kb = d.join("kb");
        let sim = SimPlatform::generate(&kb.join("sim"), &SimParams::default()).unwrap();
        let mut config = std::fs::read_to_string(kb.join("config.toml")).unwrap();
        config.push_str(&format!(
            "\n[attestation.simulated]\nark = \"sim/ark.pem\"\ngeneration = \"{}\"\n",
            sim.generation().name().to_lowercase()
        ));
        std::fs::write(kb.join("config.toml"), config).unwrap();
        let server = Server::start(d, "kb/config.toml");
        let m = hex::encode(SimGuest::default().measurement);
        std::fs::write(d.join("sim.toml"), sim_policy(&m, "", 0)).unwrap();
        std::fs::write(
            d.join("strict.toml"),
            sim_policy(&m, "min_firmware = \"9.0\"", 250),
        )
        .unwrap();
        for args in [
            &["policy", "set", "sim", "sim.toml"][..],
            &["policy", "set", "strict", "strict.toml"],
            &["volume", "add", "root", "--policy", "sim"],
            &["volume", "add", "other", "--policy", "strict"],
        ] {
            run_in(d, &[args, &CFG[..]].concat()).expect_code(0);
        }
        Setup {
            _server: server,
            tmp,
            sim,
        }
    }

    fn dir(&self) -> &Path {
        self.tmp.path()
    }

    fn kb(&self) -> PathBuf {
        self.dir().join("kb")
    }

    fn run(&self, args: &[&str]) -> Run {
        run_in(self.dir(), args)
    }

    fn service(&self) -> broker::release::Broker {
        let cfg = broker::config::Config::load(&self.kb().join("config.toml")).unwrap();
        broker::wiring::broker(&cfg).unwrap()
    }
}

const CFG: [&str; 2] = ["--config", "kb/config.toml"];

/// Audit entries of the setup's admin calls (2 policies, 2 volumes), before
/// any decision.
const ADMIN: usize = 4;

/// A policy for the simulated platform's generations, each TCB component
/// at least `floor`.
fn sim_policy(measurement: &str, extra: &str, floor: u8) -> String {
    let mut t = format!("version = 1\nmeasurements = [\"{measurement}\"]\n{extra}\n");
    for (g, fmc) in [("milan", false), ("genoa", false), ("turin", true)] {
        t.push_str(&format!("\n[min_tcb.{g}]\n"));
        if fmc {
            t.push_str(&format!("fmc = {floor}\n"));
        }
        t.push_str(&format!(
            "bootloader = {floor}\ntee = {floor}\nsnp = {floor}\nmicrocode = {floor}\n"
        ));
    }
    t
}

/// One Challenge and Attest for `volumes` from `client`, with a report the
/// simulated platform signs for `guest`. Returns the outcome and the
/// volume keys the guest unwrapped.
fn release(
    service: &broker::release::Broker,
    sim: &SimPlatform,
    guest: &SimGuest,
    volumes: &[&str],
    client: &str,
) -> (Result<Release, String>, Vec<Vec<u8>>) {
    let client: SocketAddr = client.parse().unwrap();
    let vols = VolumeIds::parse(volumes.iter().copied()).unwrap();
    let grant = service.challenge(&vols, Some(client)).unwrap();
    let keys = GuestKeyPair::generate().unwrap();
    let rd = report_data(&grant.nonce, &keys.public(), &vols);
    let report = sim.report(rd.as_bytes(), guest).unwrap();
    let input = AttestInput {
        nonce: grant.nonce,
        evidence: Evidence::SnpReport {
            report,
            cert_table: sim.cert_table(),
        },
        guest_public_key: keys.public(),
        volumes: vols,
    };
    match service.attest(input, Some(client)) {
        Ok(r) => {
            let unwrapped = r
                .keys
                .iter()
                .map(|k| {
                    keys.unwrap_volume_key(
                        &rd,
                        &k.volume,
                        k.version,
                        &k.wrapped.enc,
                        &k.wrapped.ciphertext,
                    )
                    .unwrap()
                    .to_vec()
                })
                .collect();
            (Ok(r), unwrapped)
        }
        Err((e, _)) => (Err(e.to_string()), Vec::new()),
    }
}

/// Releases `root` (allow), asks for `root` with another image (deny),
/// asks for `other` (deny: TCB and firmware floor), uses a nonce (allow)
/// and replays it (counted, not audited), then lets upkeep append the
/// aggregate entry of the unauthenticated failures. Returns the released
/// root key.
fn decisions(s: &Setup) -> Vec<u8> {
    let service = s.service();
    let (ok, keys) = release(&service, &s.sim, &SimGuest::default(), &["root"], GUEST_A);
    ok.expect("root is released");
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].len(), 64);
    let other_image = SimGuest {
        measurement: [0x42; 48],
        ..SimGuest::default()
    };
    let (denied, _) = release(&service, &s.sim, &other_image, &["root"], GUEST_B);
    assert!(denied.is_err());
    let (denied, _) = release(&service, &s.sim, &SimGuest::default(), &["other"], GUEST_B);
    assert!(denied.is_err());
    // A nonce used, then replayed: the replay writes nothing.
    let vols = VolumeIds::parse(["root"]).unwrap();
    let grant = service
        .challenge(&vols, Some(GUEST_A.parse().unwrap()))
        .unwrap();
    let kp = GuestKeyPair::generate().unwrap();
    let rd = report_data(&grant.nonce, &kp.public(), &vols);
    for _ in 0..2 {
        let input = AttestInput {
            nonce: grant.nonce,
            evidence: Evidence::SnpReport {
                report: s.sim.report(rd.as_bytes(), &SimGuest::default()).unwrap(),
                cert_table: s.sim.cert_table(),
            },
            guest_public_key: kp.public(),
            volumes: vols.clone(),
        };
        let _ = service.attest(input, Some(GUEST_A.parse().unwrap()));
    }
    service.audit_noise(time::OffsetDateTime::now_utc().unix_timestamp());
    keys.into_iter().next().unwrap()
}

fn json(r: &Run) -> Value {
    serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", r.stdout))
}

fn codes(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect()
}

// ------------------------------------------------------------------ broker audit

#[test]
fn audit_lists_every_decision_with_its_fields_and_filters() {
    let s = Setup::new();
    decisions(&s);
    // 4 attests (allow, deny, deny, allow) and the aggregate of the
    // unauthenticated failures (the replay). Challenges write nothing.
    let all = s.run(&[&["audit", "--json"][..], &CFG].concat());
    all.expect_code(0);
    let all = json(&all);
    let entries = all.as_array().unwrap();
    assert_eq!(entries.len(), ADMIN + 5, "{all:#}");
    // First the setup's admin calls, each naming its caller.
    let actions: Vec<&str> = entries[..ADMIN]
        .iter()
        .map(|e| e["details"]["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["policy.set", "policy.set", "volume.add", "volume.add"]
    );
    assert!(entries[..ADMIN].iter().all(|e| e["kind"] == "admin"
        && e["verdict"] == "allow"
        && e["client"].as_str().unwrap().starts_with("uid=")));
    assert_eq!(entries[2]["volumes"], serde_json::json!(["root"]));
    let entries = &entries[ADMIN..];
    let kinds: Vec<&str> = entries
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["attest", "attest", "attest", "attest", "noise"]);
    let ids: Vec<i64> = entries.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, (5..=9).collect::<Vec<_>>());

    // The allowed attest: claims as structured JSON.
    let a = &entries[0];
    assert_eq!(a["client"], GUEST_A);
    assert_eq!(
        (a["kind"].as_str(), a["verdict"].as_str()),
        (Some("attest"), Some("allow"))
    );
    let d = &a["details"];
    let measurement = hex::encode(SimGuest::default().measurement);
    assert_eq!(d["measurement"], measurement.as_str());
    assert_eq!(d["chip_id"], hex::encode(s.sim.chip_id()).as_str());
    assert_eq!(
        d["generation"],
        s.sim.generation().name().to_lowercase().as_str()
    );
    assert_eq!(d["signer"], "vcek");
    let fw = s.sim.firmware();
    assert_eq!(
        d["firmware"],
        format!("{}.{}.{}", fw.major, fw.minor, fw.build).as_str()
    );
    let tcb = s.sim.reported_tcb();
    assert_eq!(d["reported_tcb"]["bootloader"], tcb.bootloader);
    assert_eq!(d["reported_tcb"]["snp"], tcb.snp);
    assert_eq!(d["reported_tcb"]["microcode"], tcb.microcode);
    assert_eq!(
        a["time"].as_str().unwrap().len(),
        "2025-06-01T00:00:00Z".len()
    );
    assert_eq!(a["hash"].as_str().unwrap().len(), 64);
    assert_eq!(entries[1]["prev_hash"], entries[0]["hash"]);
    // The other image: every code, expected and actual in the details.
    let denied = &entries[1];
    assert_eq!(denied["verdict"], "deny");
    assert_eq!(
        codes(&denied["reason_codes"]),
        ["POLICY_MEASUREMENT_NOT_ALLOWED"]
    );
    assert_eq!(denied["client"], GUEST_B);
    let refusals = denied["details"]["refusals"].as_str().unwrap();
    assert!(
        refusals.contains(&measurement) && refusals.contains("4242"),
        "{refusals}"
    );
    // The strict policy: each TCB component and the firmware.
    let strict = codes(&entries[2]["reason_codes"]);
    assert!(
        strict.contains(&"POLICY_TCB_BELOW_MINIMUM".to_owned()),
        "{strict:?}"
    );
    assert!(
        strict.contains(&"POLICY_FIRMWARE_BELOW_MINIMUM".to_owned()),
        "{strict:?}"
    );
    // The replay: only counted, in the aggregate entry, with no claims
    // and nothing the request named.
    let noise = &entries[4];
    assert_eq!(codes(&noise["reason_codes"]), ["NONCE_REPLAYED"]);
    assert_eq!(noise["details"]["count.attest/NONCE_REPLAYED"], "1");
    assert_eq!(noise["details"]["total"], "1");
    assert!(noise["details"].get("measurement").is_none());
    assert_eq!(noise["volumes"], serde_json::json!([]));
    assert!(noise["client"].is_null());

    // The text form: one line per entry with every column.
    let text = s.run(&[&["audit"][..], &CFG].concat());
    text.expect_code(0);
    let lines: Vec<&str> = text.stdout.lines().collect();
    assert_eq!(lines.len(), ADMIN + 5, "{}", text.stdout);
    assert!(
        lines[0].contains(
            " admin allow policy.set sim volumes=- reasons=- measurement=- chip=- client=uid="
        ),
        "{}: admin lines say what was done, and to what",
        lines[0]
    );
    assert!(
        lines[2].contains(" admin allow volume.add root volumes=root reasons=-"),
        "{}",
        lines[2]
    );
    let lines = &lines[ADMIN..];
    let chip16 = &hex::encode(s.sim.chip_id())[..16];
    assert!(lines[0].starts_with("5 "), "{}", lines[0]);
    for part in [
        " attest allow volumes=root reasons=- ",
        &format!("measurement={measurement} chip={chip16} client={GUEST_A}"),
    ] {
        assert!(lines[0].contains(part), "{part:?} not in {}", lines[0]);
    }
    assert!(
        lines[1].contains(" attest deny volumes=root reasons=POLICY_MEASUREMENT_NOT_ALLOWED "),
        "{}",
        lines[1]
    );
    assert!(
        lines[4].contains(" noise deny volumes=- reasons=NONCE_REPLAYED measurement=- chip=- "),
        "{}",
        lines[4]
    );

    // Filters.
    let count = |extra: &[&str]| {
        let r = s.run(&[&["audit", "--json"][..], &CFG, extra].concat());
        r.expect_code(0);
        json(&r).as_array().unwrap().len()
    };
    assert_eq!(count(&["--verdict", "deny"]), 3);
    assert_eq!(count(&["--verdict", "allow"]), ADMIN + 2);
    assert_eq!(count(&["--verdict", "error"]), 0);
    assert_eq!(count(&["--kind", "noise"]), 1);
    assert_eq!(count(&["--kind", "attest", "--verdict", "deny"]), 2);
    assert_eq!(count(&["--volume", "other"]), 1 + 1);
    assert_eq!(count(&["--kind", "admin"]), ADMIN);
    assert_eq!(count(&["--volume", "nothing"]), 0);
    assert_eq!(count(&["--since", "1h"]), ADMIN + 5);
    assert_eq!(count(&["--since", "2999-01-01T00:00:00Z"]), 0);
    assert_eq!(count(&["--until", "2000-01-01T00:00:00Z"]), 0);
    assert_eq!(count(&["--until", "2999-01-01T00:00:00+02:00"]), ADMIN + 5);
    assert_eq!(
        count(&["--since", "2000-01-01T00:00:00Z", "--until", "1w"]),
        0
    );
    let last2 = s.run(&[&["audit", "--json", "--limit", "2"][..], &CFG].concat());
    let last2 = json(&last2);
    let ids: Vec<i64> = last2
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [8, 9], "--limit keeps the most recent, oldest first");
    let none = s.run(&[&["audit", "--volume", "nothing"][..], &CFG].concat());
    none.expect_code(0);
    assert_eq!(none.stdout, "");
    assert_eq!(none.stderr, "broker: no audit entries match\n");
}

#[test]
fn audit_refuses_bad_input_with_what_to_do() {
    let s = Setup::new();
    let bad_since = s.run(&[&["audit", "--since", "yesterday"][..], &CFG].concat());
    bad_since.expect_code(2);
    assert!(
        bad_since
            .stderr
            .contains("invalid value 'yesterday' for '--since <TIME>'")
            && bad_since.stderr.contains("an age like 30m, 1h, 2d, 1w"),
        "{}",
        bad_since.stderr
    );
    let bad_until = s.run(&[&["audit", "--until", "2025-13-01T00:00:00Z"][..], &CFG].concat());
    bad_until.expect_code(2);
    assert!(
        bad_until.stderr.contains("RFC 3339"),
        "{}",
        bad_until.stderr
    );
    let bad_verdict = s.run(&[&["audit", "--verdict", "maybe"][..], &CFG].concat());
    bad_verdict.expect_code(2);
    assert!(
        bad_verdict
            .stderr
            .contains("invalid value 'maybe' for '--verdict <VERDICT>'")
            && bad_verdict
                .stderr
                .contains("[possible values: allow, deny, error]"),
        "{}",
        bad_verdict.stderr
    );
    let bad_kind = s.run(&[&["audit", "--kind", "unlock"][..], &CFG].concat());
    bad_kind.expect_code(2);
    assert!(bad_kind
        .stderr
        .contains("[possible values: challenge, attest, admin, noise, prune]"));

    // A config whose broker is not running: the commands say so, and never
    // open (or create) its database themselves.
    std::fs::create_dir(s.dir().join("empty")).unwrap();
    let text = std::fs::read_to_string(s.kb().join("config.toml")).unwrap();
    let text = text.replace(
        &s.kb().join("admin.sock").display().to_string(),
        &s.dir().join("empty/admin.sock").display().to_string(),
    );
    std::fs::write(s.dir().join("empty/config.toml"), text).unwrap();
    for args in [
        &["audit", "--config", "empty/config.toml"][..],
        &["audit", "verify", "--config", "empty/config.toml"],
        &["platforms", "--config", "empty/config.toml"],
    ] {
        let r = s.run(args);
        r.expect_code(1);
        assert!(
            r.stderr
                .starts_with("broker: error: cannot connect to the admin socket ")
                && r.stderr.contains("empty/admin.sock")
                && r.stderr.contains("the broker is not running"),
            "{args:?}: {}",
            r.stderr
        );
        assert!(
            !s.dir().join("empty/broker.db").exists(),
            "{args:?} created a database"
        );
    }
    let missing = s.run(&["audit", "--config", "nope/config.toml"]);
    missing.expect_code(1);
    assert!(
        missing
            .stderr
            .contains("cannot read config nope/config.toml"),
        "{}",
        missing.stderr
    );
}

// ------------------------------------------------------------ broker audit verify

/// Copies the broker directory to `name`, serves the copy, and applies
/// `sql` to its database through a raw connection while it runs (the
/// append-only triggers dropped first): a broker refuses to start on an
/// audit log whose tail does not verify, so the change is made under a
/// running one, as an intruder would.
fn tampered(s: &Setup, name: &str, sql: &str) -> Run {
    let dst = s.dir().join(name);
    std::fs::create_dir(&dst).unwrap();
    std::fs::create_dir(dst.join("tls")).unwrap();
    std::fs::create_dir(dst.join("sim")).unwrap();
    for f in [
        "config.toml",
        "broker.db",
        "broker.db-wal",
        "master.key",
        "tls/key.pem",
        "tls/cert.pem",
        "sim/ark.pem",
    ] {
        if s.kb().join(f).exists() {
            std::fs::copy(s.kb().join(f), dst.join(f)).unwrap();
        }
    }
    // A broker of its own serves the copy, on its own socket.
    let cfg = dst.join("config.toml");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        &s.kb().join("admin.sock").display().to_string(),
        &dst.join("admin.sock").display().to_string(),
    );
    std::fs::write(&cfg, text).unwrap();
    let _server = Server::start(s.dir(), &format!("{name}/config.toml"));
    let conn = rusqlite::Connection::open(dst.join("broker.db")).unwrap();
    conn.execute_batch("DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete;")
        .unwrap();
    conn.execute_batch(sql).unwrap();
    drop(conn);
    s.run(&[
        "audit",
        "verify",
        "--config",
        &format!("{name}/config.toml"),
    ])
}

#[test]
fn audit_verify_finds_each_changed_removed_or_reordered_entry() {
    let s = Setup::new();
    decisions(&s);
    let ok = s.run(&[&["audit", "verify"][..], &CFG].concat());
    ok.expect_code(0);
    assert_eq!(ok.stdout, "audit chain ok: 9 entries\n");
    assert_eq!(ok.stderr, "");

    let cases: [(&str, &str, &str); 7] = [
        ("untouched", "SELECT 1;", ""),
        (
            "deny-to-allow",
            "UPDATE audit SET verdict = 'allow', reason_codes = '[]' WHERE id = 6;",
            "audit chain BROKEN at entry 6: its content does not match its MAC under the audit chain key (the entry was changed, or its hash recomputed without the key)\n",
        ),
        (
            "details",
            "UPDATE audit SET details_json = replace(details_json, 'POLICY', 'XOLICY') WHERE id = 7;",
            "audit chain BROKEN at entry 7: its content does not match its MAC under the audit chain key (the entry was changed, or its hash recomputed without the key)\n",
        ),
        (
            "client",
            "UPDATE audit SET client_addr = '10.0.0.1:1' WHERE id = 5;",
            "audit chain BROKEN at entry 5: its content does not match its MAC under the audit chain key (the entry was changed, or its hash recomputed without the key)\n",
        ),
        (
            "delete",
            "DELETE FROM audit WHERE id = 7;",
            "audit chain BROKEN at entry 7: entries 7..7 are missing (removed); next present entry is 8\n",
        ),
        (
            "swap",
            "UPDATE audit SET id = -1 WHERE id = 7; UPDATE audit SET id = 7 WHERE id = 8; \
             UPDATE audit SET id = 8 WHERE id = -1;",
            "audit chain BROKEN at entry 7: its link to the previous entry does not match (an earlier entry was changed, removed or reordered)\n",
        ),
        (
            "delete-last",
            "DELETE FROM audit WHERE id = 9;",
            "audit chain BROKEN at entry 9: the chain head records 9 entries but 8 are present (entries at the end were removed or the head was changed)\n",
        ),
    ];
    for (name, sql, want) in cases {
        let r = tampered(&s, name, sql);
        if want.is_empty() {
            r.expect_code(0);
            assert_eq!(r.stdout, "audit chain ok: 9 entries\n", "{name}");
        } else {
            r.expect_code(1);
            assert_eq!(r.stdout, want, "{name}");
            assert!(
                r.stderr.contains("modified outside the broker"),
                "{name}: {}",
                r.stderr
            );
        }
    }
    // Renumbering both swapped rows' contents (ids kept) is caught too.
    let r = tampered(
        &s,
        "swap-contents",
        "CREATE TEMP TABLE t AS SELECT * FROM audit WHERE id IN (6, 7);
         UPDATE audit SET kind = (SELECT kind FROM t WHERE id = 7),
             verdict = (SELECT verdict FROM t WHERE id = 7),
             details_json = (SELECT details_json FROM t WHERE id = 7),
             prev_hash = (SELECT prev_hash FROM t WHERE id = 7),
             hash = (SELECT hash FROM t WHERE id = 7) WHERE id = 6;
         UPDATE audit SET kind = (SELECT kind FROM t WHERE id = 6),
             verdict = (SELECT verdict FROM t WHERE id = 6),
             details_json = (SELECT details_json FROM t WHERE id = 6),
             prev_hash = (SELECT prev_hash FROM t WHERE id = 6),
             hash = (SELECT hash FROM t WHERE id = 6) WHERE id = 7;",
    );
    r.expect_code(1);
    assert!(
        r.stdout.starts_with("audit chain BROKEN at entry 6: "),
        "{}",
        r.stdout
    );
}

// ------------------------------------------------------------- no key material

/// Text forms of `key` that an audit row could hold.
fn encodings(key: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = vec![
        ("raw".to_owned(), key.to_vec()),
        ("hex".to_owned(), hex::encode(key).into_bytes()),
        ("HEX".to_owned(), hex::encode_upper(key).into_bytes()),
        ("Debug".to_owned(), format!("{key:?}").into_bytes()),
        (
            "hex of first half".to_owned(),
            hex::encode(&key[..32]).into_bytes(),
        ),
        (
            "hex of second half".to_owned(),
            hex::encode(&key[32..]).into_bytes(),
        ),
    ];
    for (name, engine) in [
        ("base64", &base64::engine::general_purpose::STANDARD),
        ("base64url", &base64::engine::general_purpose::URL_SAFE),
    ] {
        for shift in 0..3usize {
            let mut buf = vec![0u8; shift];
            buf.extend_from_slice(key);
            let text = engine.encode(&buf);
            // Only the characters that depend on key bytes alone.
            let start = (shift * 8).div_ceil(6);
            let end = (buf.len() / 3) * 4 - 1;
            out.push((
                format!("{name}+{shift}"),
                text.as_bytes()[start..end].to_vec(),
            ));
        }
    }
    out
}

#[track_caller]
fn assert_no_key(what: &str, key: &[u8], haystack: &[u8]) {
    let found: Vec<String> = encodings(key)
        .into_iter()
        .filter(|(_, n)| haystack.windows(n.len()).any(|w| w == &n[..]))
        .map(|(f, _)| f)
        .collect();
    assert!(found.is_empty(), "{what} holds the volume key as {found:?}");
}

#[test]
fn audit_entries_never_hold_the_released_key() {
    let s = Setup::new();
    let key = decisions(&s);
    // The key the guest unwrapped is the enrolled one.
    let cfg = broker::config::Config::load(&s.kb().join("config.toml")).unwrap();
    let store = broker::wiring::store(&cfg).unwrap();
    let master = broker::keys::MasterKey::load(&cfg.master_key).unwrap();
    let sealed = store.releasable_keys("root").unwrap();
    let enrolled = broker::keys::unseal(&master, "root", 1, &sealed[0].sealed).unwrap();
    assert_eq!(enrolled.expose_secret(), &key[..]);
    // Sanity of the search itself.
    assert_no_key("nothing", &key, b"nothing");
    let planted = format!("x{}y", hex::encode(&key));
    assert!(
        std::panic::catch_unwind(|| assert_no_key("planted", &key, planted.as_bytes())).is_err()
    );

    let entries = store
        .audit_entries(&broker::store::AuditFilter::default())
        .unwrap();
    assert_eq!(entries.len(), ADMIN + 5);
    for e in &entries {
        assert_no_key(
            &format!("audit entry {}", e.id),
            &key,
            format!("{e:?}").as_bytes(),
        );
        assert_no_key(
            &format!("audit entry {} details", e.id),
            &key,
            e.event.details_json.as_bytes(),
        );
    }
    drop(store);
    for args in [
        &["audit", "--json"][..],
        &["audit"],
        &["platforms", "--json"],
    ] {
        let r = s.run(&[args, &CFG[..]].concat());
        r.expect_code(0);
        assert_no_key(&format!("broker {args:?}"), &key, r.stdout.as_bytes());
    }
    // The audit table's raw bytes, straight from SQLite.
    let conn = rusqlite::Connection::open(s.kb().join("broker.db")).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT CAST(id AS TEXT) || kind || verdict || volumes || reason_codes || \
             details_json || COALESCE(client_addr, ''), prev_hash, hash FROM audit",
        )
        .unwrap();
    let rows: Vec<(String, Vec<u8>, Vec<u8>)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows.len(), ADMIN + 5);
    for (text, prev, hash) in rows {
        assert_no_key("an audit row", &key, text.as_bytes());
        assert_no_key("an audit row's hashes", &key, &[prev, hash].concat());
    }
}

// ------------------------------------------------------------- broker platforms

#[test]
fn platforms_lists_the_chip_with_firmware_and_policy_fit() {
    let s = Setup::new();
    decisions(&s);
    let r = s.run(&[&["platforms", "--json"][..], &CFG].concat());
    r.expect_code(0);
    let v = json(&r);
    let p = v.as_array().unwrap();
    assert_eq!(p.len(), 1, "{v:#}");
    let p = &p[0];
    assert_eq!(p["chip_id"], hex::encode(s.sim.chip_id()).as_str());
    assert_eq!(p["masked"], false);
    assert_eq!(
        p["generation"],
        s.sim.generation().name().to_lowercase().as_str()
    );
    assert_eq!(p["signer"], "vcek");
    // Four attests verified their evidence (the replayed nonce did not).
    assert_eq!(p["attestations"], 4);
    assert!(p["first_seen"].as_i64().unwrap() <= p["last_seen"].as_i64().unwrap());
    let fw = s.sim.firmware();
    assert_eq!(
        (
            p["firmware"]["major"].as_u64(),
            p["firmware"]["minor"].as_u64(),
            p["firmware"]["build"].as_u64()
        ),
        (
            Some(fw.major.into()),
            Some(fw.minor.into()),
            Some(fw.build.into())
        )
    );
    let tcb = s.sim.reported_tcb();
    assert_eq!(p["reported_tcb"]["snp"], tcb.snp);
    assert_eq!(p["reported_tcb"]["microcode"], tcb.microcode);
    assert_eq!(p["versions"].as_array().unwrap().len(), 1);
    let fits = p["policies"].as_array().unwrap();
    assert_eq!(fits.len(), 2);
    assert_eq!(
        (fits[0]["policy"].as_str(), fits[0]["meets"].as_bool()),
        (Some("sim"), Some(true))
    );
    assert_eq!(
        (fits[1]["policy"].as_str(), fits[1]["meets"].as_bool()),
        (Some("strict"), Some(false))
    );
    let shortfalls: Vec<&str> = fits[1]["shortfalls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    assert!(
        shortfalls.contains(&format!("min_tcb.snp >= 250, reported {}", tcb.snp).as_str()),
        "{shortfalls:?}"
    );
    assert!(
        shortfalls.contains(
            &format!(
                "min_firmware >= 9.0, running {}.{}.{}",
                fw.major, fw.minor, fw.build
            )
            .as_str()
        ),
        "{shortfalls:?}"
    );

    let text = s.run(&[&["platforms"][..], &CFG].concat());
    text.expect_code(0);
    let out = &text.stdout;
    assert!(
        out.starts_with(&format!("chip {}\n", hex::encode(s.sim.chip_id()))),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "  firmware:     {}.{}.{}\n",
            fw.major, fw.minor, fw.build
        )),
        "{out}"
    );
    assert!(out.contains("(4 attestations)"), "{out}");
    assert!(
        out.contains("  policy sim: meets min_tcb and min_firmware\n"),
        "{out}"
    );
    assert!(out.contains("  policy strict: BELOW: "), "{out}");
}

// --------------------------------------------------------------- broker explain

const AT_VCEK: &str = "2025-09-01T00:00:00Z";
const AT_VLEK: &str = "2025-06-01T00:00:00Z";

/// A policy each real report fails in several ways: another measurement,
/// TCB floors at 200 (microcode 255), firmware 9.0, debug, VMPL 0 and VLEK refused
/// (the defaults).
const FAILING_POLICY: &str = r#"version = 1
measurements = ["000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"]
min_firmware = "9.0"

[min_tcb.milan]
bootloader = 200
tee = 200
snp = 200
microcode = 255

[min_tcb.genoa]
bootloader = 200
tee = 200
snp = 200
microcode = 255

[min_tcb.turin]
fmc = 200
bootloader = 200
tee = 200
snp = 200
microcode = 255
"#;

/// A broker directory (no simulated platform) with volume `data` under
/// the failing policy.
fn explain_setup() -> ExplainDir {
    let tmp = tempdir();
    let d = tmp.path();
    init(d, "kb", "127.0.0.1:0");
    let server = Server::start(d, "kb/config.toml");
    std::fs::write(d.join("failing.toml"), FAILING_POLICY).unwrap();
    run_in(
        d,
        &[&["policy", "set", "failing", "failing.toml"][..], &CFG].concat(),
    )
    .expect_code(0);
    run_in(
        d,
        &[&["volume", "add", "data", "--policy", "failing"][..], &CFG].concat(),
    )
    .expect_code(0);
    ExplainDir {
        _server: server,
        tmp,
    }
}

/// The directory of [`explain_setup`] and its running broker.
struct ExplainDir {
    _server: Server,
    tmp: tempfile::TempDir,
}

impl ExplainDir {
    fn path(&self) -> &Path {
        self.tmp.path()
    }
}

/// `broker explain` for volume `data` of the report staged in `dir/sub`.
fn explain(dir: &Path, sub: &str, at: &str, extra: &[&str]) -> Run {
    let report = format!("{sub}/report.bin");
    let certs = format!("{sub}/certs");
    run_in(
        dir,
        &[
            &[
                "explain", "--report", &report, "--certs", &certs, "--volume", "data", "--at", at,
            ][..],
            &CFG,
            extra,
        ]
        .concat(),
    )
}

#[test]
fn explain_lists_every_failing_check_of_each_real_report() {
    let tmp = explain_setup();
    let d = tmp.path();
    for set in REAL_SETS {
        std::fs::create_dir(d.join(set)).unwrap();
        stage_real_set(set, &d.join(set));
        let vlek = set.contains("vlek");
        let at = if vlek { AT_VLEK } else { AT_VCEK };
        let r = explain(d, set, at, &["--json"]);
        r.expect_code(1);
        let v = json(&r);
        assert_eq!(v["authentic"], true, "{set}: {v:#}");
        assert_eq!(v["released"], false);
        assert_eq!(v["policy"], "failing");
        let failures = v["failures"].as_array().unwrap();
        let got: Vec<(&str, &str)> = failures
            .iter()
            .map(|f| (f["code"].as_str().unwrap(), f["check"].as_str().unwrap()))
            .collect();
        let mut want = vec![("POLICY_MEASUREMENT_NOT_ALLOWED", "measurements")];
        if set.contains("debug") {
            want.push(("POLICY_DEBUG_ALLOWED", "allow_debug"));
        }
        if vlek {
            want.push(("POLICY_VMPL_TOO_HIGH", "max_vmpl"));
        }
        if set.contains("turin") {
            want.push(("POLICY_TCB_BELOW_MINIMUM", "min_tcb.fmc"));
        }
        for c in ["bootloader", "tee", "snp", "microcode"] {
            want.push((
                "POLICY_TCB_BELOW_MINIMUM",
                match c {
                    "bootloader" => "min_tcb.bootloader",
                    "tee" => "min_tcb.tee",
                    "snp" => "min_tcb.snp",
                    _ => "min_tcb.microcode",
                },
            ));
        }
        if vlek {
            want.push(("POLICY_VLEK_NOT_ACCEPTED", "accept_vlek"));
        }
        want.push(("POLICY_FIRMWARE_BELOW_MINIMUM", "min_firmware"));
        assert_eq!(got, want, "{set}");
        // Expected and actual values come from the policy and the report.
        let m = &failures[0];
        assert_eq!(
            m["actual"],
            expected_field(set, "measurement").as_str(),
            "{set}"
        );
        assert!(
            m["expected"].as_str().unwrap().starts_with("one of [0000"),
            "{set}"
        );
        let snp = failures
            .iter()
            .find(|f| f["check"] == "min_tcb.snp")
            .unwrap();
        assert_eq!(snp["expected"], ">= 200");
        let fw = failures
            .iter()
            .find(|f| f["check"] == "min_firmware")
            .unwrap();
        assert_eq!(fw["expected"], ">= 9.0");
        if vlek {
            let vmpl = failures.iter().find(|f| f["check"] == "max_vmpl").unwrap();
            assert_eq!(
                (vmpl["expected"].as_str(), vmpl["actual"].as_str()),
                (Some("<= 0"), Some("1"))
            );
        }

        // The text form lists the same checks, one line each.
        let t = explain(d, set, at, &[]);
        t.expect_code(1);
        assert!(t.stdout.contains("evidence:  ok\n"), "{set}: {}", t.stdout);
        assert!(
            t.stdout
                .contains(&format!("failing checks ({}):\n", want.len())),
            "{set}: {}",
            t.stdout
        );
        for (code, check) in &want {
            assert!(
                t.stdout.contains(&format!("  {code}  {check}: expected ")),
                "{set}: {code} {check} missing:\n{}",
                t.stdout
            );
        }
        assert!(t.stdout.ends_with(&format!(
            "verdict:   would be refused ({} failing checks)\n",
            want.len()
        )));
        if set == "gosevguest-milan-v2-debug" {
            assert_snapshot("audit_explain_gosevguest", &t.transcript());
        }
    }
}

#[test]
fn explain_puts_evidence_first_and_admits_a_matching_report() {
    let tmp = explain_setup();
    let d = tmp.path();
    // The VLEK expired on 2025-12-10: the evidence fails first, then the
    // policy checks still show, from the claims the report makes.
    std::fs::create_dir(d.join("vlek")).unwrap();
    stage_real_set("trustee-aws-milan-vlek-v3", &d.join("vlek"));
    let r = explain(d, "vlek", "2030-01-01T00:00:00Z", &["--json"]);
    r.expect_code(1);
    let v = json(&r);
    assert_eq!(v["authentic"], false);
    assert_eq!(v["claims_verified"], false);
    let failures = v["failures"].as_array().unwrap();
    assert_eq!(failures[0]["stage"], "evidence");
    assert_eq!(failures[0]["code"], "EVIDENCE_CERT_EXPIRED");
    assert!(failures[1..].iter().all(|f| f["stage"] == "policy"));
    assert!(failures
        .iter()
        .any(|f| f["code"] == "POLICY_VLEK_NOT_ACCEPTED"));
    let t = explain(d, "vlek", "2030-01-01T00:00:00Z", &[]);
    t.expect_code(1);
    assert!(t.stdout.contains("UNVERIFIED"), "{}", t.stdout);
    assert!(t.stdout.contains("evidence:  FAILS\n"), "{}", t.stdout);
    let first = t
        .stdout
        .lines()
        .skip_while(|l| !l.starts_with("failing checks"))
        .nth(1)
        .unwrap();
    assert!(first.starts_with("  EVIDENCE_CERT_EXPIRED  "), "{first}");

    // A policy the debug-allowing Milan report meets: released, exit 0.
    let m = expected_field("gosevguest-milan-v2-debug", "measurement");
    std::fs::write(
        d.join("ok.toml"),
        format!(
            "version = 1\nmeasurements = [\"{m}\"]\nallow_debug = true\n\n[min_tcb.milan]\n\
             bootloader = 2\ntee = 0\nsnp = 5\nmicrocode = 68\n"
        ),
    )
    .unwrap();
    run_in(d, &[&["policy", "set", "ok", "ok.toml"][..], &CFG].concat()).expect_code(0);
    run_in(
        d,
        &[&["volume", "add", "fine", "--policy", "ok"][..], &CFG].concat(),
    )
    .expect_code(0);
    let ok_dir = d.join("ok");
    std::fs::create_dir(&ok_dir).unwrap();
    stage_real_set("gosevguest-milan-v2-debug", &ok_dir);
    let r = run_in(
        d,
        &[
            &[
                "explain",
                "--report",
                "ok/report.bin",
                "--certs",
                "ok/certs",
                "--volume",
                "fine",
                "--at",
                AT_VCEK,
            ][..],
            &CFG,
        ]
        .concat(),
    );
    r.expect_code(0);
    assert!(r.stdout.contains("checks:    all pass\n"), "{}", r.stdout);
    assert!(
        r.stdout.ends_with("verdict:   would be released\n"),
        "{}",
        r.stdout
    );
}

#[test]
fn explain_refuses_bad_input_with_what_to_do() {
    let tmp = explain_setup();
    let d = tmp.path();
    std::fs::create_dir(d.join("virtee")).unwrap();
    stage_real_set("virtee-milan-v2", &d.join("virtee"));
    let unknown = run_in(
        d,
        &[
            &[
                "explain",
                "--report",
                "virtee/report.bin",
                "--certs",
                "virtee/certs",
                "--volume",
                "nope",
            ][..],
            &CFG,
        ]
        .concat(),
    );
    unknown.expect_code(1);
    assert_eq!(
        unknown.stderr,
        "broker: no volume named \"nope\"; `broker volume list` shows the enrolled ones\n"
    );
    let bad_at = explain(d, "virtee", "June 2025", &[]);
    bad_at.expect_code(2);
    assert!(
        bad_at
            .stderr
            .contains("invalid value 'June 2025' for '--at <RFC3339>'")
            && bad_at.stderr.contains("write it like 2025-06-01T00:00:00Z"),
        "{}",
        bad_at.stderr
    );
    let no_report = run_in(
        d,
        &[
            &["explain", "--report", "missing.bin", "--volume", "data"][..],
            &CFG,
        ]
        .concat(),
    );
    no_report.expect_code(1);
    assert!(
        no_report.stderr.contains("cannot read report missing.bin"),
        "{}",
        no_report.stderr
    );
    let no_volume = run_in(
        d,
        &[&["explain", "--report", "virtee/report.bin"][..], &CFG].concat(),
    );
    no_volume.expect_code(2);
    assert!(
        no_volume.stderr.contains("--volume <NAME>"),
        "{}",
        no_volume.stderr
    );
    // Not a report at all: nothing decodes, the evidence code says why.
    std::fs::write(d.join("short.bin"), [0u8; 100]).unwrap();
    let short = run_in(
        d,
        &[
            &[
                "explain",
                "--report",
                "short.bin",
                "--volume",
                "data",
                "--json",
            ][..],
            &CFG,
        ]
        .concat(),
    );
    short.expect_code(1);
    let v = json(&short);
    assert_eq!(v["failures"][0]["code"], "EVIDENCE_REPORT_LENGTH");
    assert_eq!(v["policy_evaluated"], false);
    assert_eq!(v["claims"], Value::Null);
}

/// `broker audit --json | head -c 300` (issue #9: a panic on the closed
/// pipe): the listing ends quietly with status 0. The log is made larger
/// than a pipe's buffer so the reader really goes away mid-write.
#[test]
fn audit_into_a_closed_pipe_ends_quietly() {
    let tmp = keybroker_tests::exe::tempdir();
    let d = tmp.path();
    let _server = keybroker_tests::exe::init_and_serve(d, "kb");
    let cfg = broker::config::Config::load(&d.join("kb/config.toml")).unwrap();
    let store = broker::wiring::keyed_store(&cfg).unwrap();
    for i in 0..600 {
        store
            .append_audit(&broker::store::AuditEvent {
                at_unix: 1_700_000_000 + i,
                kind: "attest".into(),
                verdict: "deny".into(),
                volumes: vec!["root".into()],
                reason_codes: vec!["POLICY_MEASUREMENT_NOT_ALLOWED".into()],
                details_json: format!("{{\"measurement\":\"{}\"}}", "ab".repeat(48)),
                client_addr: Some("192.0.2.1:1".into()),
            })
            .unwrap();
    }
    drop(store);
    for json in [true, false] {
        let flag = if json { "--json" } else { "" };
        let out = std::process::Command::new("bash")
            .current_dir(d)
            .args([
                "-c",
                &format!(
                    "set -o pipefail; \"$0\" audit {flag} --config kb/config.toml 2>err.txt | head -c 300 >/dev/null"
                ),
            ])
            .arg(keybroker_tests::exe::Exe::Broker.path())
            .output()
            .unwrap();
        let err = std::fs::read_to_string(d.join("err.txt")).unwrap();
        assert!(out.status.success(), "json={json}: {:?} {err}", out.status);
        assert!(
            !err.contains("panicked") && err.is_empty(),
            "json={json}: {err}"
        );
    }

    // Read to the end, the listing spans two pages of the admin API (500
    // entries each) and is still one JSON array, in id order, each entry once.
    let ids = |args: &[&str]| -> Vec<i64> {
        let r = run_in(
            d,
            &[
                &["audit", "--json"][..],
                args,
                &["--config", "kb/config.toml"],
            ]
            .concat(),
        );
        r.expect_code(0);
        json(&r)
            .as_array()
            .expect("one JSON array")
            .iter()
            .map(|e| e["id"].as_i64().unwrap())
            .collect()
    };
    let all = ids(&[]);
    assert!(all.len() >= 600, "{}", all.len());
    assert_eq!(all, (1..=all.len() as i64).collect::<Vec<_>>());
    let last = ids(&["--limit", "550"]);
    assert_eq!(last, all[all.len() - 550..], "--limit across pages");
    let denied = ids(&["--verdict", "deny"]);
    assert!(denied.len() >= 600, "{}", denied.len());
    let last_denied = ids(&["--verdict", "deny", "--limit", "520"]);
    assert_eq!(
        last_denied,
        denied[denied.len() - 520..],
        "--limit with a filter"
    );
}
