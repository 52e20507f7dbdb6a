//! The libcryptsetup token plugin (`token-plugin/`), loaded by the real
//! `cryptsetup` from its token directory, on LUKS2 images in files bound by
//! `guest-unlock bind` against a real broker on loopback (simulated SEV-SNP
//! platform). The host has no device-mapper, so keys are checked with
//! `cryptsetup open --test-passphrase`, which opens a keyslot without
//! activating; the VM harness activates for real.
//!
//! libcryptsetup 2.6 loads plugins only from its compiled-in directory, so
//! each `cryptsetup` runs in a private mount namespace where a read-only
//! overlay adds the plugin to /usr/lib/x86_64-linux-gnu/cryptsetup and the
//! guest configuration to /etc/guest-unlock (as tests/vm does for images):
//! nothing on the host changes. That needs root; as another user the tests
//! say so and pass without checking anything.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use guest_unlock::luks::{Device, Pbkdf};
use keybroker_tests::exe::Exe;
use keybroker_tests::{default_guest, policy_for, BrokerDir, BrokerOptions, RunningBroker};

const PASSPHRASE: &[u8] = b"correct horse battery staple";

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

struct Env {
    server_rt: tokio::runtime::Runtime,
    broker: Option<RunningBroker>,
    dir: BrokerDir,
    work: tempfile::TempDir,
    /// Layers for the namespace: `lib` over /usr/lib, `etc` over /etc.
    lib: PathBuf,
    etc: PathBuf,
}

fn env() -> Env {
    let dir = BrokerDir::create(&BrokerOptions::default()).unwrap();
    let good = policy_for(&default_guest().measurement, "");
    dir.set_policy("ok", &good).unwrap();
    dir.set_policy("later", &good).unwrap();
    dir.add_volume("root", "ok").unwrap();
    dir.add_volume("data", "later").unwrap();
    let server_rt = tokio::runtime::Runtime::new().unwrap();
    let broker = server_rt.block_on(RunningBroker::start(&dir)).unwrap();
    let work = tempfile::tempdir().unwrap();
    let lib = work.path().join("lib");
    let plugins = lib.join("x86_64-linux-gnu/cryptsetup");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::copy(
        Exe::TokenPlugin.path(),
        plugins.join("libcryptsetup-token-sev-keybroker.so"),
    )
    .unwrap();
    let etc = work.path().join("etc");
    std::fs::create_dir_all(etc.join("guest-unlock")).unwrap();
    // What the plugin reads: the evidence and time limits (the brokers and
    // pins come from the token).
    std::fs::write(
        etc.join("guest-unlock/config.toml"),
        format!(
            "evidence = \"sim:{}\"\ntimeout_secs = 10\nconnect_timeout_secs = 2\n",
            dir.sim.dir().display()
        ),
    )
    .unwrap();
    // `bind` reads brokers and pins from its own file.
    std::fs::write(
        work.path().join("bind.toml"),
        format!(
            "brokers = [\"{}\"]\npins = [\"{}\"]\nevidence = \"sim:{}\"\ntimeout_secs = 20\n",
            broker.url(),
            dir.pin,
            dir.sim.dir().display()
        ),
    )
    .unwrap();
    Env {
        server_rt,
        broker: Some(broker),
        dir,
        work,
        lib,
        etc,
    }
}

impl Env {
    /// A LUKS2 image with [`PASSPHRASE`] in keyslot 0, bound to `volume`
    /// (keyslot 1) by the `guest-unlock` binary.
    fn bound_image(&self, volume: &str) -> PathBuf {
        let path = self.work.path().join(format!("{volume}.img"));
        std::fs::File::create(&path)
            .unwrap()
            .set_len(32 << 20)
            .unwrap();
        let mut d = Device::format(&path).unwrap();
        d.add_keyslot_after_format(PASSPHRASE, Pbkdf::MinimalPbkdf2)
            .unwrap();
        drop(d);
        let pass = self.work.path().join("passphrase");
        std::fs::write(&pass, PASSPHRASE).unwrap();
        let out = Command::new(Exe::GuestUnlock.path())
            .args([
                "bind",
                path.to_str().unwrap(),
                "--volume",
                volume,
                "--config",
            ])
            .arg(self.work.path().join("bind.toml"))
            .arg("--key-file")
            .arg(&pass)
            .output()
            .unwrap();
        assert!(out.status.success(), "bind {volume}: {out:?}");
        path
    }

    /// `cryptsetup ARGS` with the plugin installed and the guest config in
    /// place (a private mount namespace), `stdin` on its standard input.
    fn cryptsetup(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut child = Command::new("unshare")
            .args(["-m", "sh", "-euc"])
            .arg(
                r#"mount --make-rprivate /
                   mount -t overlay -o "ro,lowerdir=$1:/usr/lib" keybroker-test-lib /usr/lib
                   mount -t overlay -o "ro,lowerdir=$2:/etc" keybroker-test-etc /etc
                   shift 2
                   exec cryptsetup "$@""#,
            )
            .arg("sh")
            .arg(&self.lib)
            .arg(&self.etc)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("unshare and cryptsetup (cryptsetup-bin, util-linux)");
        {
            use std::io::Write as _;
            let mut i = child.stdin.take().unwrap();
            i.write_all(stdin).unwrap();
        }
        child.wait_with_output().unwrap()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn skip_unless_root(test: &str) -> bool {
    if is_root() {
        return false;
    }
    eprintln!("{test}: skipped: needs root (a mount namespace for the plugin directory)");
    true
}

#[test]
fn luks_dump_shows_the_token_and_validate_refuses_malformed_json() {
    if skip_unless_root("luks_dump") {
        return;
    }
    let env = env();
    let img = env.bound_image("root");
    let p = img.to_str().unwrap();

    let out = env.cryptsetup(&["luksDump", p], b"");
    assert!(out.status.success(), "{out:?}");
    let dump = text(&out.stdout);
    let url = env.broker.as_ref().unwrap().url();
    for want in [
        "sev-keybroker".to_owned(),
        "\tvolume:     root\n".to_owned(),
        "\tkeyslot 1:  key version 1\n".to_owned(),
        format!("\tbroker:     {}\n", url.trim_start_matches("https://")),
        format!("\tpin:        {}\n", env.dir.pin),
    ] {
        assert!(dump.contains(&want), "luksDump lacks {want:?}:\n{dump}");
    }

    // `cryptsetup token import` asks the plugin's validate hook: malformed
    // tokens of our type are refused and the header stays as it was.
    let before = std::fs::read(&img).unwrap();
    for (bad, why) in [
        (r#"{"type":"sev-keybroker","keyslots":["0"]}"#, "version"),
        (
            r#"{"type":"sev-keybroker","keyslots":["0"],"version":2,"brokers":["ftp://x"],"volume":"v","slots":[{"keyslot":0,"key_version":1}],"spki_pins":["sha256:00"]}"#,
            "brokers",
        ),
        (
            r#"{"type":"sev-keybroker","keyslots":["0"],"version":3,"brokers":[],"volume":"v","spki_pins":[]}"#,
            "unsupported token version 3",
        ),
    ] {
        let file = env.work.path().join("bad.json");
        std::fs::write(&file, bad).unwrap();
        let out = env.cryptsetup(
            &["token", "import", "--json-file", file.to_str().unwrap(), p],
            b"",
        );
        assert!(!out.status.success(), "imported {bad}: {out:?}");
        let err = text(&out.stderr);
        assert!(
            err.contains("invalid sev-keybroker token") && err.contains(why),
            "{bad}: {err}"
        );
        assert!(
            std::fs::read(&img).unwrap() == before,
            "{bad}: the header changed"
        );
    }
}

#[test]
fn token_only_opens_through_the_broker_and_a_refusal_falls_back_to_the_passphrase() {
    if skip_unless_root("token_only") {
        return;
    }
    let mut env = env();
    let root = env.bound_image("root");
    let data = env.bound_image("data");

    // The plugin attests and the broker's key opens keyslot 1.
    let out = env.cryptsetup(
        &[
            "open",
            "--test-passphrase",
            "--token-only",
            root.to_str().unwrap(),
        ],
        b"",
    );
    assert!(out.status.success(), "token-only open failed: {out:?}");

    // The broker now refuses `data`: --token-only fails with the reason
    // and the decision, plain `open` moves on to the passphrase.
    let broker = env.broker.as_ref().unwrap();
    env.server_rt
        .block_on(broker.admin_set_policy("later", &policy_for(&[0x5a; 48], "")))
        .unwrap();
    let d = data.to_str().unwrap();
    let out = env.cryptsetup(&["open", "--test-passphrase", "--token-only", d], b"");
    assert!(!out.status.success(), "a refused volume opened: {out:?}");
    let err = text(&out.stderr);
    assert!(
        err.contains("the broker refused volume data")
            && err.contains("POLICY_MEASUREMENT_NOT_ALLOWED")
            && err.contains("decision"),
        "{err}"
    );
    let out = env.cryptsetup(&["open", "--test-passphrase", "-v", d], PASSPHRASE);
    assert!(
        out.status.success(),
        "no fallback to the passphrase: {out:?}"
    );
    assert!(text(&out.stdout).contains("Key slot 0 unlocked"), "{out:?}");
    let out = env.cryptsetup(&["open", "--test-passphrase", "-v", d], b"wrong");
    assert!(!out.status.success(), "a wrong passphrase opened: {out:?}");

    // The broker is gone: --token-only fails, the passphrase still works.
    let broker = env.broker.take().unwrap();
    env.server_rt.block_on(broker.stop()).unwrap();
    let r = root.to_str().unwrap();
    let out = env.cryptsetup(&["open", "--test-passphrase", "--token-only", r], b"");
    assert!(
        !out.status.success(),
        "opened with the broker down: {out:?}"
    );
    assert!(text(&out.stderr).contains("sev-keybroker token"), "{out:?}");
    let out = env.cryptsetup(&["open", "--test-passphrase", r], PASSPHRASE);
    assert!(
        out.status.success(),
        "no fallback with the broker down: {out:?}"
    );
}
