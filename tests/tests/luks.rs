//! LUKS2 header and token operations on 32 MiB image files, with keys from
//! a real broker on loopback (real TLS, SQLite, simulated SEV-SNP
//! platform). Activation needs device-mapper, which the host lacks: the
//! keyslots are checked with libcryptsetup's "check only" activation (no
//! name), and `unlock --dry-run` does the same; real activation runs in the
//! VM harness. `rotation_with_the_real_broker` runs a key rotation against
//! the broker, in process and as a process killed at each crash point
//! (the state machine in detail: `tests/rotation.rs`).

use std::path::{Path, PathBuf};

use guest_unlock::luks::{self, BindError, Device, LuksError, Pbkdf};
use keybroker_tests::exe::Exe;
use keybroker_tests::{default_guest, policy_for, BrokerDir, BrokerOptions, RunningBroker};
use serde_json::json;

const PASSPHRASE: &[u8] = b"correct horse battery staple";
/// guest-unlock's exit codes.
const EXIT_GRANTED: u8 = 0;
const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;

/// The crash point right after a rotation step, as `KEYBROKER_CRASH_AT`
/// names it (test builds with the `failpoints` feature).
fn crash_point(step: guest_unlock::rotation::RotationStep) -> &'static str {
    match step {
        guest_unlock::rotation::RotationStep::KeyslotAdded => "guest-after-keyslot-add",
        guest_unlock::rotation::RotationStep::TokenUpdated => "guest-after-token-update",
        guest_unlock::rotation::RotationStep::Confirmed => "guest-after-confirm",
        guest_unlock::rotation::RotationStep::OldSlotRemoved => "guest-after-old-slot-removed",
    }
}

struct Env {
    _server_rt: tokio::runtime::Runtime,
    _broker: RunningBroker,
    dir: BrokerDir,
    work: tempfile::TempDir,
    config: PathBuf,
    /// The broker's key for volume `root`, version 1.
    root_key: Vec<u8>,
    /// The broker's key for volume `data`, version 1.
    data_key: Vec<u8>,
}

fn env() -> Env {
    let dir = BrokerDir::create(&BrokerOptions::default()).unwrap();
    dir.set_policy("ok", &policy_for(&default_guest().measurement, ""))
        .unwrap();
    dir.set_policy("wrong", &policy_for(&[0x5a; 48], ""))
        .unwrap();
    let root_key = dir.add_volume("root", "ok").unwrap();
    let data_key = dir.add_volume("data", "ok").unwrap();
    dir.add_volume("refused", "wrong").unwrap();
    let server_rt = tokio::runtime::Runtime::new().unwrap();
    let broker = server_rt.block_on(RunningBroker::start(&dir)).unwrap();
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("guest.toml");
    std::fs::write(
        &config,
        format!(
            "brokers = [\"{}\"]\npins = [\"{}\"]\nevidence = \"sim:{}\"\ntimeout_secs = 20\n",
            broker.url(),
            dir.pin,
            dir.sim.dir().display()
        ),
    )
    .unwrap();
    Env {
        _server_rt: server_rt,
        _broker: broker,
        dir,
        work,
        config,
        root_key,
        data_key,
    }
}

impl Env {
    /// A 32 MiB file formatted as LUKS2 with [`PASSPHRASE`] in keyslot 0.
    fn luks_image(&self, name: &str) -> PathBuf {
        let path = self.blank(name);
        let mut d = Device::format(&path).unwrap();
        assert_eq!(
            d.add_keyslot_after_format(PASSPHRASE, Pbkdf::MinimalPbkdf2)
                .unwrap(),
            0
        );
        path
    }

    fn blank(&self, name: &str) -> PathBuf {
        let path = self.work.path().join(name);
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(32 << 20).unwrap();
        path
    }

    fn key_file(&self, bytes: &[u8]) -> PathBuf {
        let p = self.work.path().join(format!("key-{}", bytes.len()));
        std::fs::write(&p, bytes).unwrap();
        p
    }

    /// Runs the `guest-unlock` binary; returns its exit code.
    fn run(&self, args: &[&str]) -> u8 {
        let out = std::process::Command::new(keybroker_tests::exe::Exe::GuestUnlock.path())
            .args(args)
            .env_remove("KEYBROKER_CRASH_AT")
            .output()
            .unwrap();
        let code = out
            .status
            .code()
            .unwrap_or_else(|| panic!("{args:?} killed: {out:?}"));
        u8::try_from(code).unwrap()
    }

    fn bind(&self, dev: &Path, volume: &str, key_file: Option<&Path>) -> u8 {
        let mut args = vec![
            "bind",
            dev.to_str().unwrap(),
            "--volume",
            volume,
            "--config",
            self.config.to_str().unwrap(),
        ];
        match key_file {
            Some(k) => args.extend(["--key-file", k.to_str().unwrap()]),
            None => args.push("--format"),
        }
        self.run(&args)
    }

    /// Runs the `guest-unlock` binary; returns what it printed.
    fn output(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(Exe::GuestUnlock.path())
            .args(args)
            .env_remove("KEYBROKER_CRASH_AT")
            .env_remove("GUEST_UNLOCK_CONFIG")
            .env_remove("GUEST_UNLOCK_LOG_FORMAT")
            .output()
            .unwrap()
    }

    /// `unlock --dry-run` of `dev`; returns the exit code and standard error.
    fn dry_run(&self, dev: &Path) -> (u8, String) {
        let out = self.output(&[
            "unlock",
            "--dry-run",
            "--config",
            self.config.to_str().unwrap(),
            dev.to_str().unwrap(),
        ]);
        (
            u8::try_from(out.status.code().unwrap()).unwrap(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

fn bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

/// Asserts that `f` leaves the whole image byte-identical.
fn untouched<T>(p: &Path, what: &str, f: impl FnOnce() -> T) -> T {
    let before = bytes(p);
    let out = f();
    assert!(bytes(p) == before, "{what}: the image changed");
    out
}

#[test]
fn bind_list_unlock_unbind() {
    let env = env();
    let dev = env.luks_image("disk.img");
    let good = env.key_file(PASSPHRASE);
    let wrong = env.key_file(b"wrong");
    let d = dev.to_str().unwrap();

    // Refusals before any change: wrong passphrase, no passphrase, denied volume.
    untouched(&dev, "wrong passphrase", || {
        assert_eq!(env.bind(&dev, "root", Some(&wrong)), EXIT_FAILED)
    });
    untouched(&dev, "no passphrase", || {
        assert_eq!(
            env.run(&[
                "bind",
                d,
                "--volume",
                "root",
                "--config",
                env.config.to_str().unwrap()
            ]),
            EXIT_USAGE
        )
    });
    untouched(&dev, "broker refuses", || {
        assert_eq!(env.bind(&dev, "refused", Some(&good)), EXIT_FAILED)
    });
    untouched(&dev, "format over LUKS", || {
        assert_eq!(env.bind(&dev, "root", None), EXIT_FAILED)
    });

    // Bind.
    assert_eq!(env.bind(&dev, "root", Some(&good)), EXIT_GRANTED);
    let bindings = luks::list(&dev).unwrap();
    assert_eq!(bindings.len(), 1);
    let b = &bindings[0];
    assert_eq!((b.volume.as_str(), b.key_version), ("root", 1));
    assert_eq!(b.keyslots, [1]);
    assert_eq!(b.spki_pins, std::slice::from_ref(&env.dir.pin));

    // The token on disk, as documented.
    let mut opened = Device::open(&dev).unwrap();
    let tokens = opened.tokens().unwrap();
    assert_eq!(tokens.len(), 1);
    assert_eq!(
        tokens[0].1,
        json!({"type":"sev-keybroker","keyslots":["1"],"version":2,
               "brokers":[b.brokers[0]],"volume":"root",
               "slots":[{"keyslot":1,"key_version":1}],
               "spki_pins":[env.dir.pin]})
    );
    // The broker's key opens keyslot 1 (and only it); the passphrase still opens 0.
    assert_eq!(opened.check_passphrase(None, &env.root_key).unwrap(), 1);
    assert_eq!(opened.check_passphrase(Some(0), PASSPHRASE).unwrap(), 0);
    assert!(matches!(
        opened.check_passphrase(Some(1), &env.data_key),
        Err(LuksError::WrongPassphrase { .. })
    ));
    drop(opened);

    // Binding the same version again is refused, untouched.
    untouched(&dev, "already bound", || {
        assert_eq!(env.bind(&dev, "root", Some(&good)), EXIT_FAILED)
    });

    // list prints the line that recreates the binding (that it parses back
    // into the same bind arguments: the binary's own tests).
    let out = std::process::Command::new(keybroker_tests::exe::Exe::GuestUnlock.path())
        .args(["list", d])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), b.bind_line() + "\n");
    assert!(b
        .bind_line()
        .ends_with("  # keyslot 1, key version 1, token 0"));
    assert_eq!(env.run(&["list", d]), EXIT_GRANTED);
    assert_eq!(env.run(&["list", d, "--json"]), EXIT_GRANTED);

    // A second device bound to another volume of the same broker: unlock
    // --dry-run attests once for both and checks each keyslot.
    let dev2 = env.luks_image("disk2.img");
    assert_eq!(env.bind(&dev2, "data", Some(&good)), EXIT_GRANTED);
    let conf = env.config.to_str().unwrap();
    let d2 = dev2.to_str().unwrap();
    untouched(&dev, "unlock --dry-run", || {
        assert_eq!(
            env.run(&["unlock", "--dry-run", "--config", conf, d, d2]),
            EXIT_GRANTED
        )
    });
    // `rotate` with nothing under rotation checks the keys and changes
    // nothing, by path or by crypttab name.
    let crypttab = env.work.path().join("crypttab");
    std::fs::write(&crypttab, format!("root_crypt {d} none luks\n")).unwrap();
    let ct = crypttab.to_str().unwrap();
    untouched(&dev, "rotate with nothing to do", || {
        assert_eq!(env.run(&["rotate", "--config", conf, d]), EXIT_GRANTED);
        assert_eq!(
            env.run(&["rotate", "--config", conf, "--crypttab", ct, "root_crypt"]),
            EXIT_GRANTED
        );
    });
    assert_eq!(
        env.run(&["rotate", "--config", conf, "--crypttab", ct, "no_such_name"]),
        EXIT_FAILED
    );
    // A device without a token stays locked (exit 1), the others are checked.
    let plain = env.luks_image("plain.img");
    assert_eq!(
        env.run(&[
            "unlock",
            "--dry-run",
            "--config",
            conf,
            d,
            plain.to_str().unwrap()
        ]),
        EXIT_FAILED
    );

    // Unbind: a passphrase keyslot is not ours; the bound one goes with its token.
    untouched(&dev, "unbind a passphrase slot", || {
        assert_eq!(env.run(&["unbind", d, "--slot", "0"]), EXIT_FAILED)
    });
    untouched(&dev, "unbind a free slot", || {
        assert_eq!(env.run(&["unbind", d, "--slot", "5"]), EXIT_FAILED)
    });
    assert_eq!(env.run(&["unbind", d, "--slot", "1"]), EXIT_GRANTED);
    assert!(luks::list(&dev).unwrap().is_empty());
    let mut opened = Device::open(&dev).unwrap();
    assert_eq!(opened.active_keyslots(), [0]);
    assert!(opened.tokens().unwrap().is_empty());
    assert!(opened.check_passphrase(None, &env.root_key).is_err());
}

#[test]
fn format_and_the_last_keyslot() {
    let env = env();
    let dev = env.blank("new.img");
    assert_eq!(env.bind(&dev, "root", None), EXIT_GRANTED);
    let mut opened = Device::open(&dev).unwrap();
    assert_eq!(opened.active_keyslots(), [0]);
    assert_eq!(opened.check_passphrase(None, &env.root_key).unwrap(), 0);
    drop(opened);
    let d = dev.to_str().unwrap();
    untouched(&dev, "unbind the last keyslot", || {
        assert_eq!(env.run(&["unbind", d, "--slot", "0"]), EXIT_FAILED)
    });
    assert!(matches!(
        luks::unbind(&dev, 0, false),
        Err(BindError::LastKeyslot { slot: 0, .. })
    ));
    assert_eq!(
        env.run(&["unbind", d, "--slot", "0", "--force"]),
        EXIT_GRANTED
    );
    assert!(Device::open(&dev).unwrap().active_keyslots().is_empty());

    // A refused --format leaves the device as it was.
    let blank = env.blank("blank.img");
    std::fs::write(&blank, vec![0x42u8; 32 << 20]).unwrap();
    untouched(&blank, "format refused by the broker", || {
        assert_eq!(env.bind(&blank, "refused", None), EXIT_FAILED)
    });
}

#[test]
fn not_luks2() {
    let env = env();
    let dev = env.blank("zero.img");
    let d = dev.to_str().unwrap();
    let good = env.key_file(PASSPHRASE);
    untouched(&dev, "bind on a non-LUKS device", || {
        assert_eq!(env.bind(&dev, "root", Some(&good)), EXIT_FAILED)
    });
    assert!(matches!(
        luks::list(&dev),
        Err(BindError::Luks(LuksError::NotLuks2 { .. }))
    ));
    assert_eq!(env.run(&["list", d]), EXIT_FAILED);
    assert_eq!(env.run(&["unbind", d, "--slot", "0"]), EXIT_FAILED);
    assert_eq!(
        env.run(&[
            "unlock",
            "--dry-run",
            "--config",
            env.config.to_str().unwrap(),
            d
        ]),
        EXIT_FAILED
    );
}

#[test]
fn malformed_tokens_are_refused_untouched() {
    let env = env();
    let dev = env.luks_image("bad.img");
    let good = env.key_file(PASSPHRASE);
    let d = dev.to_str().unwrap();
    let conf = env.config.to_str().unwrap();
    // A second keyslot to point tokens at.
    {
        let mut dv = Device::open(&dev).unwrap();
        assert_eq!(
            dv.add_keyslot(PASSPHRASE, &[7u8; 64], Pbkdf::MinimalPbkdf2)
                .unwrap(),
            1
        );
    }
    let valid = json!({"type":"sev-keybroker","keyslots":["1"],"version":1,
        "brokers":["https://127.0.0.1:1"],"volume":"root","key_version":1,
        "spki_pins":[env.dir.pin]});
    let with = |k: &str, v: serde_json::Value| {
        let mut t = valid.clone();
        t[k] = v;
        t
    };
    let without = |k: &str| {
        let mut t = valid.clone();
        t.as_object_mut().unwrap().remove(k);
        t
    };
    let v2 = json!({"type":"sev-keybroker","keyslots":["1"],"version":2,
        "brokers":["https://127.0.0.1:1"],"volume":"root",
        "slots":[{"keyslot":1,"key_version":1}],
        "spki_pins":[env.dir.pin]});
    let with2 = |k: &str, v: serde_json::Value| {
        let mut t = v2.clone();
        t[k] = v;
        t
    };
    let cases = [
        ("version", with("version", json!(3))),
        // A version-1 token claiming version 2 lacks `slots`, has `key_version`.
        ("(token)", with("version", json!(2))),
        ("(token)", with2("key_version", json!(1))),
        ("slots", with2("slots", json!([]))),
        (
            "slots",
            with2("slots", json!([{"keyslot":0,"key_version":1}])),
        ),
        (
            "slots",
            with2("slots", json!([{"keyslot":1,"key_version":0}])),
        ),
        (
            "slots",
            with2("slots", json!([{"keyslot":1,"key_version":1,"x":1}])),
        ),
        ("slots", with2("slots", json!({"1":1}))),
        ("version", without("version")),
        ("version", with("version", json!("1"))),
        ("volume", without("volume")),
        ("brokers", with("brokers", json!("https://127.0.0.1:1"))),
        ("spki_pins", with("spki_pins", json!([1, 2]))),
        ("key_version", with("key_version", json!("one"))),
        ("brokers", with("brokers", json!(["http://plain:80"]))),
        ("(token)", with("extra", json!(true))),
    ];
    for (field, token) in cases {
        let id = Device::open(&dev).unwrap().set_token(None, &token).unwrap();
        untouched(&dev, field, || {
            match luks::list(&dev) {
                Err(BindError::BadToken { source, device, .. }) => {
                    assert_eq!(source.field, field, "{token}");
                    assert_eq!(device, dev);
                }
                other => panic!("{token}: {other:?}"),
            }
            assert_eq!(env.run(&["list", d]), EXIT_FAILED);
            assert_eq!(env.run(&["unbind", d, "--slot", "1"]), EXIT_FAILED);
            assert_eq!(env.bind(&dev, "root", Some(&good)), EXIT_FAILED);
            assert_eq!(
                env.run(&["unlock", "--dry-run", "--config", conf, d]),
                EXIT_FAILED
            );
        });
        Device::open(&dev).unwrap().remove_token(id).unwrap();
    }

    // A token naming a keyslot that does not exist: libcryptsetup itself
    // may refuse to write it; if it is written, guest-unlock refuses it.
    let ghost = with("keyslots", json!(["9"]));
    let written = Device::open(&dev).unwrap().set_token(None, &ghost);
    if let Ok(id) = written {
        untouched(&dev, "ghost keyslot", || match luks::list(&dev) {
            Err(BindError::BadToken { source, .. }) => assert_eq!(source.field, "keyslots"),
            other => panic!("{other:?}"),
        });
        Device::open(&dev).unwrap().remove_token(id).unwrap();
    }
    // Destroying the keyslot a valid token names leaves a token bound to
    // no existing keyslot: refused, naming `keyslots`.
    let id = Device::open(&dev).unwrap().set_token(None, &valid).unwrap();
    assert_eq!(luks::list(&dev).unwrap().len(), 1);
    Device::open(&dev).unwrap().destroy_keyslot(1).unwrap();
    untouched(&dev, "dangling token", || match luks::list(&dev) {
        Err(BindError::BadToken { source, .. }) => assert_eq!(source.field, "keyslots"),
        other => panic!("{other:?}"),
    });
    Device::open(&dev).unwrap().remove_token(id).unwrap();
}

#[test]
fn a_failed_token_write_restores_the_header() {
    let env = env();
    let dev = env.luks_image("full.img");
    let good = env.key_file(PASSPHRASE);
    // Occupy every token slot, so the keyslot is added and the token write fails.
    {
        let mut dv = Device::open(&dev).unwrap();
        for _ in 0..luks::LUKS2_SLOTS {
            dv.set_token(None, &json!({"type":"x-other","keyslots":[]}))
                .unwrap();
        }
    }
    untouched(&dev, "bind with no free token", || {
        let req = luks::BindRequest {
            device: &dev,
            volume: "root".parse().unwrap(),
            brokers: vec!["https://127.0.0.1:1".parse().unwrap()],
            pins: vec![env.dir.pin.parse().unwrap()],
            passphrase: Some(zeroize::Zeroizing::new(PASSPHRASE.to_vec())),
            format: false,
        };
        let key = guest_unlock::UnwrappedKey::new(
            "root".parse().unwrap(),
            1,
            keybroker_proto::pb::KeyState::Current,
            zeroize::Zeroizing::new(env.root_key.clone()),
        );
        let err = luks::bind(req, Box::new(move |_| Ok(vec![key]))).unwrap_err();
        assert!(matches!(err, BindError::Restored { .. }), "{err}");
        assert!(err.to_string().contains("restored"), "{err}");
        // And through the CLI with the real broker.
        assert_eq!(env.bind(&dev, "root", Some(&good)), EXIT_FAILED);
    });
    let mut dv = Device::open(&dev).unwrap();
    assert_eq!(dv.active_keyslots(), [0]);
}

/// `probe` end to end: the binary, the simulated platform, the real broker
/// over pinned TLS, and the exit codes (0 all granted, 1 a volume denied or
/// no broker, 2 a usage error); never a key byte on standard output.
#[test]
fn probe_exit_codes() {
    let env = env();
    let conf = env.config.to_str().unwrap();
    let probe = |args: &[&str]| {
        std::process::Command::new(keybroker_tests::exe::Exe::GuestUnlock.path())
            .arg("probe")
            .args(args)
            .output()
            .unwrap()
    };
    let out = probe(&["--config", conf, "--volume", "root", "--volume", "data"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        stdout,
        "granted root version 1 (current)\ngranted data version 1 (current)\n"
    );
    for key in [&env.root_key, &env.data_key] {
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        assert!(!stdout.contains(&hex[..16]), "a key on standard output");
    }
    let out = probe(&["--config", conf, "--volume", "root", "--volume", "refused"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains("denied refused: POLICY_MEASUREMENT_NOT_ALLOWED"));
    // No broker listening.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("https://127.0.0.1:{}", l.local_addr().unwrap().port());
    drop(l);
    let evidence = format!("sim:{}", env.dir.sim.dir().display());
    let out = probe(&[
        "--broker",
        &dead,
        "--pin",
        &env.dir.pin,
        "--evidence",
        &evidence,
        "--volume",
        "root",
        "--timeout",
        "2",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no broker answered"));
    // Usage: a bad volume name.
    let out = probe(&["--config", conf, "--volume", "../etc"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    // -c is --config; --log-format json makes each diagnostic one JSON object.
    let out = std::process::Command::new(keybroker_tests::exe::Exe::GuestUnlock.path())
        .args([
            "--log-format",
            "json",
            "probe",
            "-c",
            conf,
            "--volume",
            "../etc",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stderr).unwrap();
    assert_eq!(v["level"], "ERROR");
    assert!(
        v["message"].as_str().unwrap().starts_with("--volume: "),
        "{v}"
    );
    // A TOML error: the file, then toml's caret diagram on several lines, once.
    let bad = env.work.path().join("bad.toml");
    std::fs::write(&bad, "brokers = [1\n").unwrap();
    let out = probe(&["-c", bad.to_str().unwrap(), "--volume", "root"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!(
            "guest-unlock: invalid config: {}: TOML parse error at line 1, column 13\n",
            bad.display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("1 | brokers = [1\n"), "{stderr}");
    assert_eq!(stderr.matches("TOML parse error").count(), 1, "{stderr}");
}

/// The event lines of `unlock`, from the binary against the real broker:
/// one line per device, in the documented format, then `done`.
#[test]
fn unlock_prints_one_event_line_per_device() {
    let env = env();
    let good = env.key_file(PASSPHRASE);
    let ok = env.luks_image("ok.img");
    assert_eq!(env.bind(&ok, "root", Some(&good)), EXIT_GRANTED);
    // A device bound to a volume whose policy the guest fails (bound with
    // a key of our own: the broker would not have released one).
    let refused = env.luks_image("refused.img");
    let req = luks::BindRequest {
        device: &refused,
        volume: "refused".parse().unwrap(),
        brokers: vec![env._broker.url().parse().unwrap()],
        pins: vec![env.dir.pin.parse().unwrap()],
        passphrase: Some(zeroize::Zeroizing::new(PASSPHRASE.to_vec())),
        format: false,
    };
    let key = guest_unlock::UnwrappedKey::new(
        "refused".parse().unwrap(),
        1,
        keybroker_proto::pb::KeyState::Current,
        zeroize::Zeroizing::new(vec![0x77; 64]),
    );
    luks::bind(req, Box::new(move |_| Ok(vec![key]))).unwrap();
    let plain = env.luks_image("plain.img");
    let out = std::process::Command::new(keybroker_tests::exe::Exe::GuestUnlock.path())
        .args(["unlock", "--dry-run", "--config"])
        .arg(&env.config)
        .args([&ok, &refused, &plain])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(i32::from(EXIT_FAILED)), "{stderr}");
    let events: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("guest-unlock: event="))
        .collect();
    assert_eq!(events.len(), 3, "{stderr}");
    assert_eq!(
        events[0],
        format!(
            "failed v=1 volume=- device={} reason=no-token",
            plain.display()
        )
    );
    let prefix = format!(
        "refused v=1 volume=refused device={} reasons=POLICY_MEASUREMENT_NOT_ALLOWED decision=",
        refused.display()
    );
    assert!(events[1].starts_with(&prefix), "{stderr}");
    let decision = &events[1][prefix.len()..];
    assert_ne!(decision, "-", "the decision id: {stderr}");
    // The human line on the console names the same decision (issue #11),
    // and it is the id of the audit entry that `broker audit` shows.
    assert!(
        stderr.contains(&format!(
            "guest-unlock: refused ({}): broker {} refused: POLICY_MEASUREMENT_NOT_ALLOWED (decision {decision})\n",
            refused.display(),
            env._broker.url()
        )),
        "{stderr}"
    );
    let audit = keybroker_tests::exe::run_in(
        env.work.path(),
        &[
            "audit",
            "--config",
            env.dir.config_path.to_str().unwrap(),
            "--kind",
            "attest",
        ],
    );
    audit.expect_code(0);
    let line = audit
        .stdout
        .lines()
        .find(|l| l.starts_with(&format!("{decision} ")))
        .unwrap_or_else(|| panic!("no audit entry {decision}:\n{}", audit.stdout));
    // One attestation for both devices: `root` released, `refused` not.
    assert!(line.contains(" attest "), "{line}");
    assert!(
        line.contains(" reasons=POLICY_MEASUREMENT_NOT_ALLOWED "),
        "{line}"
    );
    assert!(line.contains("refused"), "{line}");
    assert!(
        events[2].starts_with("done v=1 unlocked=1 locked=2 secs="),
        "{stderr}"
    );
    // --dry-run activates nothing: no `unlocked` line for the checked device.
    assert!(!stderr.contains("event=unlocked"), "{stderr}");
    // --connect-timeout overrides the configuration (a value out of range
    // is refused as the setting would be), and -c is --config.
    let out = env.output(&[
        "unlock",
        "--dry-run",
        "-c",
        env.config.to_str().unwrap(),
        "--connect-timeout",
        "99999",
        ok.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(i32::from(EXIT_USAGE)), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("connect_timeout_secs"));
    let out = env.output(&[
        "unlock",
        "--dry-run",
        "-c",
        env.config.to_str().unwrap(),
        "--connect-timeout",
        "3",
        ok.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(i32::from(EXIT_GRANTED)), "{out:?}");
    // A device that does not exist: named once, reason not-found.
    let missing = env.work.path().join("missing.img");
    let (code, stderr) = env.dry_run(&missing);
    assert_eq!(code, EXIT_FAILED);
    assert_eq!(
        stderr.matches(&*missing.to_string_lossy()).count(),
        2,
        "{stderr}"
    );
    assert!(stderr.contains("reason=not-found"), "{stderr}");
    assert!(stderr.contains("No such file or directory"), "{stderr}");
}

/// `edit` (issue #11): a broker's TLS key rotated without a rebind, in
/// the documented order (new pin added, broker switched, old pin removed),
/// the broker list replaced; and each refusal leaves the header as it was.
#[test]
fn edit_changes_the_brokers_and_pins_of_bound_tokens() {
    let env = env();
    let dev = env.luks_image("edit.img");
    let good = env.key_file(PASSPHRASE);
    assert_eq!(env.bind(&dev, "root", Some(&good)), EXIT_GRANTED);
    let d = dev.to_str().unwrap();
    let old = env.dir.pin.clone();
    let new = broker::tls::self_signed(&["localhost".into()])
        .unwrap()
        .spki_pin
        .to_string();
    let url = env._broker.url();
    let edit = |args: &[&str]| {
        let mut all = vec!["edit", d];
        all.extend_from_slice(args);
        let out = env.output(&all);
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let pins = || luks::list(&dev).unwrap()[0].spki_pins.clone();
    // 1. The new pin beside the old one: the broker still answers.
    let (code, stdout, stderr) = edit(&["--add-pin", &new]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout,
        format!("edited {d} token 0: brokers {url}; pins {old},{new}\n")
    );
    assert_eq!(pins(), [old.clone(), new.clone()]);
    assert_eq!(env.dry_run(&dev).0, EXIT_GRANTED);
    // Adding it again changes nothing, and says so.
    let (code, stdout, _) = untouched(&dev, "adding a held pin", || edit(&["--add-pin", &new]));
    assert_eq!(code, 0);
    assert!(stdout.starts_with("unchanged "), "{stdout}");
    // 3. The old pin removed. The broker here still has the old key, so
    // the guest now refuses it: the token's pins are what unlock checks.
    let (code, _, stderr) = edit(&["--remove-pin", &old]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(pins(), std::slice::from_ref(&new));
    let (code, stderr) = env.dry_run(&dev);
    assert_eq!(code, EXIT_FAILED);
    assert!(stderr.contains("reason=pin-mismatch"), "{stderr}");
    // --pin replaces the list; --broker the broker list (tried in order).
    assert_eq!(edit(&["--pin", &old]).0, 0);
    assert_eq!(pins(), std::slice::from_ref(&old));
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("https://127.0.0.1:{}", l.local_addr().unwrap().port())
    };
    let (code, stdout, stderr) = edit(&["--broker", &format!("{dead},{url}")]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains(&format!("brokers {dead},{url};")),
        "{stdout}"
    );
    assert_eq!(env.dry_run(&dev).0, EXIT_GRANTED);
    // The keyslots were never touched.
    let mut dv = Device::open(&dev).unwrap();
    let mut active = dv.active_keyslots();
    active.sort_unstable();
    assert_eq!(active, [0, 1]);
    drop(dv);

    // Refusals, each leaving the image byte for byte as it was.
    let refused = |what: &str, args: &[&str], code: i32, says: &str| {
        let (c, _, stderr) = untouched(&dev, what, || edit(args));
        assert_eq!(c, code, "{what}: {stderr}");
        assert!(stderr.contains(says), "{what}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{what}: one message: {stderr}");
    };
    refused(
        "the last pin",
        &["--remove-pin", &old],
        1,
        "would be left without pins",
    );
    refused("a pin not held", &["--remove-pin", &new], 1, "has no pin");
    refused(
        "a malformed pin",
        &["--add-pin", "sha256:00"],
        2,
        "--add-pin \"sha256:00\"",
    );
    refused(
        "a malformed URL",
        &["--broker", "ftp://x"],
        2,
        "--broker \"ftp://x\"",
    );
    refused("nothing to change", &[], 2, "needs something to change");
    let other = Device::open(&dev)
        .unwrap()
        .set_token(None, &json!({"type":"x-other","keyslots":[]}))
        .unwrap();
    let other_s = other.to_string();
    refused(
        "a token that is not ours",
        &["--token", &other_s, "--add-pin", &new],
        1,
        "is not a sev-keybroker token (it is type \"x-other\")",
    );
    refused(
        "a token that does not exist",
        &["--token", "31", "--add-pin", &new],
        1,
        "token 31 is not a sev-keybroker token (it is absent)",
    );
    // The other token is left alone by an edit of every broker token.
    assert_eq!(edit(&["--add-pin", &new]).0, 0);
    let t = Device::open(&dev).unwrap().tokens().unwrap();
    assert!(t
        .iter()
        .any(|(id, j)| *id == other && j["type"] == "x-other"));
    // A device without a binding; no device at all.
    let plain = env.luks_image("plain.img");
    let out = env.output(&["edit", plain.to_str().unwrap(), "--add-pin", &new]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no sev-keybroker token to edit"));
    let missing = env.work.path().join("missing.img");
    let out = env.output(&["edit", missing.to_str().unwrap(), "--add-pin", &new]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("No such file or directory"));
    // Not root: the device cannot be written, nothing is changed, and the
    // message says why.
    if root_with_setpriv() {
        let third = broker::tls::self_signed(&["localhost".into()])
            .unwrap()
            .spki_pin
            .to_string();
        let out = untouched(&dev, "not root", || {
            std::process::Command::new("setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(Exe::GuestUnlock.path())
                .args(["edit", d, "--add-pin", &third])
                .output()
                .unwrap()
        });
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("opening the device for writing failed: Permission denied"),
            "{stderr}"
        );
        assert!(stderr.contains("nothing was changed"), "{stderr}");
        assert!(stderr.contains("run as root"), "{stderr}");
    }
}

/// Whether the tests run as root (the non-root cases then run as nobody).
fn root_with_setpriv() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
        && std::path::Path::new("/usr/bin/setpriv").exists()
}

/// `status --report-out` (issue #11): the simulated platform's report and
/// certificate table, saved in the guest, verify with `broker report
/// verify` and explain with `broker explain` against the real broker.
#[test]
fn status_report_out_round_trips_through_report_verify_and_explain() {
    let env = env();
    let evidence = format!("sim:{}", env.dir.sim.dir().display());
    let report = env.work.path().join("report.bin");
    let r = report.to_str().unwrap();
    let out = env.output(&["status", "--evidence", &evidence, "--report-out", r]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    // Exit 1: this host is no SEV-SNP guest; the report was still saved.
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stdout.contains(&format!("report saved: {r}\n")), "{stdout}");
    let table = format!("{r}.certs");
    assert!(
        stdout.contains(&format!("certificate table saved: {table}\n")),
        "{stdout}"
    );
    assert_eq!(bytes(&report).len(), 1184);
    let report_data = stdout
        .split("--report-data ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap()
        .to_owned();
    let cfg = env.dir.config_path.to_str().unwrap();
    let broker = |args: &[&str]| keybroker_tests::exe::run_in(env.work.path(), args);
    let policy = env.work.path().join("policy.toml");
    std::fs::write(&policy, policy_for(&default_guest().measurement, "")).unwrap();
    let v = broker(&[
        "report",
        "verify",
        r,
        "--cert-table",
        &table,
        "-c", // as every command taking a broker config
        cfg,
        "--report-data",
        &report_data,
        "--policy",
        policy.to_str().unwrap(),
    ]);
    v.expect_code(0);
    assert!(v.stdout.contains("verdict:       accepted"), "{}", v.stdout);
    // Another REPORT_DATA: refused, so the binding was checked.
    let mut other = report_data.clone();
    other.replace_range(0..2, "00");
    broker(&[
        "report",
        "verify",
        r,
        "--cert-table",
        &table,
        "--config",
        cfg,
        "--report-data",
        &other,
    ])
    .expect_code(1);
    // explain: admitted for root, refused for the volume whose policy wants another image.
    broker(&[
        "explain",
        "--report",
        r,
        "--cert-table",
        &table,
        "--volume",
        "root",
        "--config",
        cfg,
    ])
    .expect_code(0);
    let e = broker(&[
        "explain",
        "--report",
        r,
        "--cert-table",
        &table,
        "--volume",
        "refused",
        "--config",
        cfg,
    ]);
    e.expect_code(1);
    assert!(
        e.stdout.contains("POLICY_MEASUREMENT_NOT_ALLOWED"),
        "{}",
        e.stdout
    );
    // --json names the files.
    let out = env.output(&[
        "status",
        "--json",
        "--evidence",
        &evidence,
        "--report-out",
        r,
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["report_out"]["report"], r);
    assert_eq!(v["report_out"]["cert_table"], table.as_str());
    // Bad input: an unwritable place, no evidence provider, a missing one.
    let out = env.output(&[
        "status",
        "--evidence",
        &evidence,
        "--report-out",
        "/nonexistent/dir/r.bin",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot write /nonexistent/dir/r.bin"));
    let out = env.output(&[
        "status",
        "--evidence",
        "sev-guest:/nonexistent",
        "--report-out",
        r,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("nothing saved"), "{stderr}");
}

/// Key rotation against the real broker (issue #5): the broker's
/// `rotate_volume` adds a pending version; `guest-unlock rotate` enrolls it,
/// confirms it with its proof in the same session, and removes the old
/// keyslot. Then, for each crash point, the binary is killed there
/// (`KEYBROKER_CRASH_AT`) and the next `rotate` finishes the rotation.
#[test]
fn rotation_with_the_real_broker() {
    use broker::store::KeyState;
    use guest_unlock::rotation::RotationStep;
    use std::os::unix::process::ExitStatusExt as _;

    let env = env();
    let dev = env.luks_image("rotating.img");
    let good = env.key_file(PASSPHRASE);
    assert_eq!(env.bind(&dev, "root", Some(&good)), EXIT_GRANTED);
    let cfg = env.dir.config().unwrap();
    let store = broker::wiring::store(&cfg).unwrap();
    let keyring = broker::wiring::keyring(&cfg).unwrap();
    let versions = || {
        store
            .key_versions("root")
            .unwrap()
            .into_iter()
            .map(|k| (k.version, k.state))
            .collect::<Vec<_>>()
    };
    let key_of = |v: u32| -> Vec<u8> {
        let k = store
            .key_versions("root")
            .unwrap()
            .into_iter()
            .find(|k| k.version == v)
            .unwrap();
        keyring
            .unseal("root", v, &k.sealed)
            .unwrap()
            .expose_secret()
            .to_vec()
    };
    let current = || {
        versions()
            .into_iter()
            .find(|(_, s)| *s == KeyState::Current)
            .unwrap()
            .0
    };
    let opens = |key: &[u8]| match Device::open(&dev).unwrap().check_passphrase(None, key) {
        Ok(s) => Some(s),
        Err(LuksError::WrongPassphrase { .. }) => None,
        Err(e) => panic!("{e}"),
    };
    // Only version `v` is bound, in one keyslot beside the passphrase's.
    let assert_only = |v: u32| {
        let b = luks::list(&dev).unwrap();
        assert_eq!(b.len(), 1, "{b:?}");
        assert_eq!(b[0].slots.len(), 1, "{b:?}");
        let s = b[0].slots[0];
        assert_eq!(s.key_version, v);
        assert_eq!(opens(&key_of(v)), Some(s.keyslot));
        assert_eq!(opens(PASSPHRASE), Some(0));
        let mut active = Device::open(&dev).unwrap().active_keyslots();
        active.sort_unstable();
        assert_eq!(active, [0, s.keyslot]);
        assert_eq!(current(), v);
    };
    let conf = env.config.to_str().unwrap();
    let d = dev.to_str().unwrap();
    assert_only(1);

    // In process: the whole rotation in one run.
    let v = broker::lifecycle::rotate_volume(store.as_ref(), &keyring, "root").unwrap();
    assert_eq!(v, 2);
    assert_eq!(env.run(&["rotate", "--config", conf, d]), EXIT_GRANTED);
    assert_only(2);
    assert!(versions().contains(&(1, KeyState::Retired)));
    untouched(&dev, "rotate with the rotation done", || {
        assert_eq!(env.run(&["rotate", "--config", conf, d]), EXIT_GRANTED)
    });

    // The binary, killed after each step, then run again.
    for point in RotationStep::ALL {
        let v = broker::lifecycle::rotate_volume(store.as_ref(), &keyring, "root").unwrap();
        let out = std::process::Command::new(Exe::GuestUnlock.path())
            .args(["rotate", "--config", conf, d])
            .env("KEYBROKER_CRASH_AT", crash_point(point))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.signal(), Some(9), "{point:?}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "guest-unlock: crash point {} reached",
                crash_point(point)
            )),
            "{stderr}"
        );
        assert!(opens(&key_of(current())).is_some(), "{point:?}");
        assert_eq!(
            env.run(&["rotate", "--config", conf, d]),
            EXIT_GRANTED,
            "{point:?}"
        );
        assert_only(v);
    }
}
