//! The secrets promise of docs/architecture.md, "Secrets": the broker's
//! logs are safe to archive (in the spirit of rustls's `KeyLog`, which is
//! the only way key material may leave rustls).
//!
//! The real `broker serve` runs with `RUST_LOG=trace` on loopback, over a
//! broker directory made with the CLI (`init`, `policy set`, `volume add`)
//! that trusts a simulated SEV-SNP platform. One simulated guest releases
//! its volume key in this process; then the broker is stopped with SIGTERM
//! (it must exit 0) and everything it printed, plus its SQLite database
//! files, is searched for the released key (raw, hex in both cases, base64
//! in both alphabets at every alignment, Rust's `Debug` of the bytes) and
//! for the master key. Nothing may be found.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use base64::Engine as _;
use keybroker_proto::VolumeIds;
use keybroker_tests::exe::{broker_cmd, init, run_in, tempdir};
use keybroker_tests::sim::{SimGuest, SimParams, SimPlatform, SimProvider};

/// Every text form of `secret` a careless log line or row could hold.
fn encodings(secret: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = vec![
        ("raw bytes".to_string(), secret.to_vec()),
        ("hex".to_string(), hex::encode(secret).into_bytes()),
        ("HEX".to_string(), hex::encode_upper(secret).into_bytes()),
        ("Debug".to_string(), format!("{secret:?}").into_bytes()),
    ];
    // Base64 of the key inside a longer encoded buffer depends on where the
    // key starts modulo 3: encode it after 0, 1 and 2 leading bytes and
    // keep the characters that depend on key bytes only.
    for (alphabet, engine) in [
        ("base64", &base64::engine::general_purpose::STANDARD),
        ("base64url", &base64::engine::general_purpose::URL_SAFE),
    ] {
        for shift in 0..3usize {
            let mut buf = vec![0u8; shift];
            buf.extend_from_slice(secret);
            let text = engine.encode(&buf);
            let start = (shift * 8).div_ceil(6);
            let end = (buf.len() / 3) * 4 - 1;
            out.push((
                format!("{alphabet} at offset {shift}"),
                text.as_bytes()[start..end].to_vec(),
            ));
        }
    }
    // Half of the key, in case it is split or truncated somewhere.
    let half = &secret[..secret.len() / 2];
    out.push(("raw first half".to_string(), half.to_vec()));
    out.push(("hex first half".to_string(), hex::encode(half).into_bytes()));
    let half = &secret[secret.len() / 2..];
    out.push((
        "hex second half".to_string(),
        hex::encode(half).into_bytes(),
    ));
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// The forms of `secret` that `haystack` holds.
fn found_forms(secret: &[u8], haystack: &[u8]) -> Vec<String> {
    encodings(secret)
        .into_iter()
        .filter(|(_, needle)| contains(haystack, needle))
        .map(|(form, _)| form)
        .collect()
}

/// Panics naming each form of `secret` found in `haystack`.
#[track_caller]
fn assert_absent(what: &str, secret_name: &str, secret: &[u8], haystack: &[u8]) {
    let found = found_forms(secret, haystack);
    assert!(
        found.is_empty(),
        "{what} holds the {secret_name} as {found:?}"
    );
}

/// Reads all of a child's stream on a thread.
fn drain(mut r: impl std::io::Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

/// Kills the broker if the test fails before stopping it.
struct Guard(Option<Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn logs_and_database_never_hold_key_material() {
    let tmp = tempdir();
    let d = tmp.path();
    // A broker directory, made with the CLI, listening on a free loopback port.
    let (_, pin) = init(d, "kb", "127.0.0.1:0");
    let kb = d.join("kb");
    let sim_dir = kb.join("sim");
    let sim = SimPlatform::generate(&sim_dir, &SimParams::default()).unwrap();
    let mut config = std::fs::read_to_string(kb.join("config.toml")).unwrap();
    config.push_str(&format!(
        "\n[attestation.simulated]\nark = \"sim/ark.pem\"\ngeneration = \"{}\"\n",
        sim.generation().name().to_lowercase()
    ));
    std::fs::write(kb.join("config.toml"), config).unwrap();
    let measurement = hex::encode(SimGuest::default().measurement);
    std::fs::write(
        d.join("sim.toml"),
        format!(
            "version = 1\nmeasurements = [\"{measurement}\"]\n\n\
             [min_tcb.milan]\nbootloader = 0\ntee = 0\nsnp = 0\nmicrocode = 0\n\n\
             [min_tcb.genoa]\nbootloader = 0\ntee = 0\nsnp = 0\nmicrocode = 0\n\n\
             [min_tcb.turin]\nfmc = 0\nbootloader = 0\ntee = 0\nsnp = 0\nmicrocode = 0\n"
        ),
    )
    .unwrap();
    let cfg = ["--config", "kb/config.toml"];

    // `broker serve`, tracing everything.
    let mut child = broker_cmd()
        .current_dir(d)
        .env("RUST_LOG", "trace")
        .args(["serve", "--config", "kb/config.toml"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start broker serve");
    let stderr = drain(child.stderr.take().unwrap());
    let stdout = child.stdout.take().unwrap();
    let mut guard = Guard(Some(child));
    let (tx, rx) = mpsc::channel();
    let stdout = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut lines = BufReader::new(stdout);
        let mut line = String::new();
        while lines.read_line(&mut line).unwrap_or(0) > 0 {
            if let Some(addr) = line.trim_end().strip_prefix("listening on ") {
                let _ = tx.send(addr.to_string());
            }
            all.extend_from_slice(line.as_bytes());
            line.clear();
        }
        all
    });
    // A hang guard only: the broker either listens, or exits (closing stdout).
    let addr = match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(addr) => addr,
        Err(e) => {
            drop(guard);
            panic!(
                "broker serve printed no `listening on` line ({e}); stderr:\n{}",
                String::from_utf8_lossy(&stderr.join().unwrap())
            )
        }
    };
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");

    // Enrollment goes through the running broker's admin socket.
    run_in(
        d,
        &[&["policy", "set", "sim", "sim.toml"][..], &cfg].concat(),
    )
    .expect_code(0);
    run_in(
        d,
        &[&["volume", "add", "root", "--policy", "sim"][..], &cfg].concat(),
    )
    .expect_code(0);

    // One full release from a simulated guest, in this process.
    let guest_cfg = guest_unlock::config::resolve(guest_unlock::config::RawConfig {
        brokers: vec![format!("https://{addr}")],
        pins: vec![pin],
        connect_timeout_secs: Some(10),
        timeout_secs: Some(60),
        evidence: Some(format!("sim:{}", sim_dir.display())),
        vmpl: None,
    })
    .unwrap();
    let provider = SimProvider::open(&sim_dir).unwrap();
    let volumes = VolumeIds::parse(["root"]).unwrap();
    let outcome = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(guest_unlock::flow::fetch_keys(
            &guest_cfg, &provider, &volumes,
        ))
        .expect("release");
    assert!(outcome.all_granted(), "{outcome:?}");
    assert_eq!(outcome.keys.len(), 1);
    let key: Vec<u8> = outcome.keys[0].expose_secret().to_vec();
    assert_eq!(key.len(), 64);
    assert_ne!(key, vec![0u8; 64]);
    let decision_id = outcome.decision_id.clone();
    drop(outcome);

    // SIGTERM: a graceful stop with exit status 0.
    let mut child = guard.0.take().unwrap();
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::TERM,
    )
    .expect("send SIGTERM");
    let status = child.wait().unwrap();
    let stdout = stdout.join().unwrap();
    let stderr = stderr.join().unwrap();
    let stderr_text = String::from_utf8_lossy(&stderr);
    assert_eq!(
        status.code(),
        Some(0),
        "broker serve must exit 0 on SIGTERM ({status}); stderr:\n{stderr_text}"
    );

    // The logs are real: trace level, the decision with its audit id, the stop.
    assert!(
        stderr_text.contains("TRACE"),
        "no trace lines:\n{stderr_text}"
    );
    assert!(!decision_id.is_empty());
    assert!(
        stderr_text
            .lines()
            .any(|l| l.contains("attest allowed") && l.contains(&format!("\"{decision_id}\""))),
        "no decision line with audit id {decision_id}:\n{stderr_text}"
    );
    assert!(stderr_text.contains("stopped"), "{stderr_text}");

    let master = std::fs::read(kb.join("master.key")).unwrap();
    assert_eq!(master.len(), 32);
    let mut logs = stdout.clone();
    logs.extend_from_slice(&stderr);
    assert_absent("broker serve's output", "volume key", &key, &logs);
    assert_absent("broker serve's output", "master key", &master, &logs);

    // The database (and any WAL or journal beside it): audit rows, sealed keys.
    let mut db_files = 0;
    for entry in std::fs::read_dir(&kb).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("broker.db") {
            db_files += 1;
            let bytes = std::fs::read(&path).unwrap();
            assert_absent(&name, "volume key", &key, &bytes);
            assert_absent(&name, "master key", &master, &bytes);
        }
    }
    assert!(db_files >= 1, "no broker.db in {}", kb.display());
    audit_rows_are_clean(&kb.join("config.toml"), &key, &decision_id);
}

/// The audit rows as the store returns them (text that SQLite may have
/// split across pages in the file).
fn audit_rows_are_clean(config: &Path, key: &[u8], decision_id: &str) {
    let cfg = broker::config::Config::load(config).unwrap();
    let store = broker::wiring::store(&cfg).unwrap();
    let entries = store
        .audit_entries(&broker::store::AuditFilter::default())
        .unwrap();
    assert!(
        entries
            .iter()
            .any(|e| e.event.kind == "attest" && e.event.verdict == "allow"),
        "no allowed attest in the audit log: {entries:?}"
    );
    assert!(
        entries.iter().any(|e| e.id.to_string() == decision_id),
        "decision {decision_id} not in the audit log"
    );
    for e in &entries {
        let text = format!("{e:?}");
        assert_absent("an audit entry", "volume key", key, text.as_bytes());
        assert_absent(
            "an audit entry's details",
            "volume key",
            key,
            e.event.details_json.as_bytes(),
        );
    }
}

/// The search itself finds each form, wherever it sits in a longer text.
#[test]
fn the_search_finds_every_encoding() {
    let key: Vec<u8> = (0u8..64)
        .map(|i| i.wrapping_mul(37).wrapping_add(11))
        .collect();
    let e = &base64::engine::general_purpose::STANDARD;
    let u = &base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let around = |inner: &[u8]| [&b"INFO x=1 "[..], inner, b" y=2\n"].concat();
    let mut cases = vec![
        ("raw", around(&key)),
        ("hex", around(hex::encode(&key).as_bytes())),
        ("HEX", around(hex::encode_upper(&key).as_bytes())),
        ("Debug", around(format!("key={key:?}").as_bytes())),
        ("hex prefix", around(hex::encode(&key[..32]).as_bytes())),
    ];
    for shift in 0..3 {
        let mut framed = vec![0xA5u8; shift];
        framed.extend_from_slice(&key);
        framed.extend_from_slice(b"tail");
        cases.push(("base64", around(e.encode(&framed).as_bytes())));
        cases.push(("base64url", around(u.encode(&framed).as_bytes())));
    }
    for (name, haystack) in cases {
        assert!(!found_forms(&key, &haystack).is_empty(), "{name} not found");
    }
    assert!(found_forms(&key, b"nothing secret here").is_empty());
}
