//! Helpers shared by the CLI integration tests (`cli.rs`, `logs.rs`),
//! ripgrep `tests/util.rs` style: a temporary directory of real files, the
//! real `broker` executable run in it, and snapshots of what it printed.
//!
//! Snapshots live in `tests/snapshots/NAME.txt`. Run the tests with
//! `KB_UPDATE_SNAPSHOTS=1` to (re)write them, then review the diff.

// Each test binary uses its own subset of these helpers.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The real `broker` executable built by cargo for these tests.
pub const BROKER: &str = env!("CARGO_BIN_EXE_broker");

/// The real AMD report sets.
pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/snp-real");

/// The five real report sets, by folder name.
pub const REAL_SETS: [&str; 5] = [
    "gosevguest-milan-v2-debug",
    "oak-genoa-v5",
    "oak-turin-v5",
    "trustee-aws-milan-vlek-v3",
    "virtee-milan-v2",
];

/// A fixture set's folder.
pub fn fixture(set: &str) -> PathBuf {
    Path::new(FIXTURES).join(set)
}

/// A `broker` command with no inherited config or log settings.
pub fn broker_cmd() -> Command {
    let mut c = Command::new(BROKER);
    c.env_remove("KEYBROKER_CONFIG")
        .env_remove("KEYBROKER_ADMIN_SOCKET")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    c
}

/// What one run of the executable did.
#[derive(Debug)]
pub struct Run {
    /// The arguments, as written in snapshots.
    pub args: Vec<String>,
    /// Exit code (`None` if killed by a signal).
    pub code: Option<i32>,
    /// Standard output, lossily decoded.
    pub stdout: String,
    /// Standard error, lossily decoded.
    pub stderr: String,
}

impl Run {
    /// Panics unless the exit code is `code`, showing everything printed.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            Some(code),
            "broker {:?}: wrong exit status\n--- stdout\n{}--- stderr\n{}",
            self.args,
            self.stdout,
            self.stderr
        );
        self
    }

    /// The transcript stored in snapshots.
    pub fn transcript(&self) -> String {
        let mut s = String::new();
        let args: Vec<String> = self
            .args
            .iter()
            .map(|a| {
                if a.is_empty() || a.contains(char::is_whitespace) {
                    format!("'{a}'")
                } else {
                    a.clone()
                }
            })
            .collect();
        let _ = writeln!(s, "$ broker {}", args.join(" "));
        match self.code {
            Some(c) => {
                let _ = writeln!(s, "status: {c}");
            }
            None => s.push_str("status: killed by a signal\n"),
        }
        s.push_str("--- stdout\n");
        s.push_str(&self.stdout);
        s.push_str("--- stderr\n");
        s.push_str(&self.stderr);
        s
    }

    /// The line of stdout starting with `prefix`, or a panic showing stdout.
    #[track_caller]
    pub fn stdout_line(&self, prefix: &str) -> &str {
        self.stdout
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line {prefix:?} in stdout:\n{}", self.stdout))
    }
}

/// Runs `broker ARGS` in `cwd` and collects its output.
pub fn run_in(cwd: &Path, args: &[&str]) -> Run {
    run_with(broker_cmd().current_dir(cwd), args)
}

/// Runs a prepared `broker` command with `args`.
pub fn run_with(cmd: &mut Command, args: &[&str]) -> Run {
    let out = cmd
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {BROKER}: {e}"));
    Run {
        args: args.iter().map(|a| a.to_string()).collect(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A fresh temporary directory.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temporary directory")
}

/// Copies a real set's report into `dir/report.bin` and its certificates
/// (the VEK as `vcek.der`/`vlek.der`, every PEM chain file) into
/// `dir/certs/`, the layout `broker report verify --certs` reads.
pub fn stage_real_set(set: &str, dir: &Path) {
    let src = fixture(set);
    std::fs::copy(src.join("report.bin"), dir.join("report.bin")).expect("copy report.bin");
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).expect("create certs dir");
    let mut vek = 0;
    for entry in std::fs::read_dir(&src).expect("read fixture dir") {
        let path = entry.expect("dir entry").path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let is_vek = name == "vcek.der" || name == "vlek.der";
        vek += usize::from(is_vek);
        if is_vek || name.ends_with(".pem") {
            std::fs::copy(&path, certs.join(&name)).expect("copy certificate");
        }
    }
    assert_eq!(vek, 1, "{set} must hold exactly one of vcek.der, vlek.der");
}

/// A field of a set's EXPECTED.md, written there as "- NAME: `VALUE`".
pub fn expected_field(set: &str, name: &str) -> String {
    let text = std::fs::read_to_string(fixture(set).join("EXPECTED.md")).expect("EXPECTED.md");
    let prefix = format!("- {name}: `");
    let line = text
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("{set}/EXPECTED.md has no {name}"));
    line[prefix.len()..]
        .split('`')
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Compares `actual` with `tests/snapshots/NAME.txt`, or writes it when
/// `KB_UPDATE_SNAPSHOTS=1`.
#[track_caller]
pub fn assert_snapshot(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(format!("{name}.txt"));
    if std::env::var_os("KB_UPDATE_SNAPSHOTS").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).expect("create snapshots dir");
        std::fs::write(&path, actual).expect("write snapshot");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read snapshot {}: {e}\nrun with KB_UPDATE_SNAPSHOTS=1 to create it; actual:\n{actual}",
            path.display()
        )
    });
    if expected != actual {
        let mut diff = String::new();
        let (e, a): (Vec<_>, Vec<_>) = (expected.lines().collect(), actual.lines().collect());
        for i in 0..e.len().max(a.len()) {
            match (e.get(i), a.get(i)) {
                (Some(x), Some(y)) if x == y => {}
                (x, y) => {
                    let _ = writeln!(
                        diff,
                        "line {}:\n  snapshot: {}\n  actual:   {}",
                        i + 1,
                        x.unwrap_or(&"<none>"),
                        y.unwrap_or(&"<none>")
                    );
                }
            }
        }
        panic!(
            "output differs from snapshot {} (KB_UPDATE_SNAPSHOTS=1 rewrites it; review the diff)\n{diff}--- actual\n{actual}",
            path.display()
        );
    }
}

/// Replaces every occurrence of `path` (as text) with `placeholder`.
pub fn redact_path(text: &str, path: &Path, placeholder: &str) -> String {
    text.replace(&path.display().to_string(), placeholder)
}

/// Length of the longest run of hex digits in `text`.
pub fn longest_hex_run(text: &str) -> usize {
    let (mut best, mut cur) = (0, 0);
    for c in text.chars() {
        if c.is_ascii_hexdigit() {
            cur += 1;
            best = best.max(cur);
        } else {
            cur = 0;
        }
    }
    best
}

/// Mode bits (permissions only) of a file.
pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// `broker init --dir DIR --listen LISTEN --admin-socket DIR/admin.sock`;
/// returns the run and the printed pin.
pub fn init(parent: &Path, dir: &str, listen: &str) -> (Run, String) {
    let socket = format!("{dir}/admin.sock");
    let r = run_in(
        parent,
        &[
            "init",
            "--dir",
            dir,
            "--listen",
            listen,
            "--admin-socket",
            &socket,
        ],
    );
    r.expect_code(0);
    let pin = r
        .stdout_line("spki pin: ")
        .trim_start_matches("spki pin: ")
        .to_string();
    (r, pin)
}

/// A `broker serve` child process, killed (by its own pid) when dropped.
pub struct Server {
    child: std::process::Child,
    log: PathBuf,
    /// The guest port's address, as printed.
    pub guest_addr: String,
    /// The lines printed before it (e.g. `admin tls on ADDR`).
    pub lines: Vec<String>,
}

impl Server {
    /// Runs `broker serve --config CONFIG` in `cwd` and waits until it
    /// prints its `listening on` line (the admin socket is bound by then).
    pub fn start(cwd: &Path, config: &str) -> Server {
        use std::io::BufRead as _;
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = cwd.join(format!("serve-{n}.log"));
        let mut child = broker_cmd()
            .current_dir(cwd)
            .args(["serve", "--config", config])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("create serve log"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {BROKER} serve: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = std::io::BufReader::new(stdout).lines();
        let mut before = Vec::new();
        let guest_addr = loop {
            match lines.next() {
                Some(Ok(l)) => {
                    if let Some(a) = l.strip_prefix("listening on ") {
                        break a.to_owned();
                    }
                    before.push(l);
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "broker serve --config {config} exited before listening:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
            }
        };
        // Keep reading stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server {
            child,
            log,
            guest_addr,
            lines: before,
        }
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `broker init` in `parent/dir` (guest port 0) and a server on it.
pub fn init_and_serve(parent: &Path, dir: &str) -> Server {
    init(parent, dir, "127.0.0.1:0");
    Server::start(parent, &format!("{dir}/config.toml"))
}
