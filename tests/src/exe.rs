//! The real executables of the workspace, `broker` and `guest-unlock`, run
//! in a temporary directory of real files (ripgrep `tests/util.rs` style):
//! [`Exe::path`] finds each one, [`run_in`] runs `broker` and collects what
//! it printed, [`Server`] keeps a `broker serve` running.
//!
//! Cargo gives a test the path of an executable only in the executable's
//! own package, so the kit finds them beside its own test binaries
//! (`target/<profile>/`). `cargo test --workspace` builds them before any
//! test runs; when one is missing or older than a file it is built from
//! (`cargo test -p keybroker-tests` alone, after an edit), it is built
//! first with `cargo build -p <package> --bin <name>`, once per test
//! process.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::SystemTime;

/// An executable of the workspace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exe {
    /// `broker` (package `broker`).
    Broker,
    /// `guest-unlock` (package `guest-unlock`).
    GuestUnlock,
}

impl Exe {
    /// The binary's name.
    pub fn name(self) -> &'static str {
        match self {
            Exe::Broker => "broker",
            Exe::GuestUnlock => "guest-unlock",
        }
    }

    /// Cargo features the tests need in this executable.
    fn features(self) -> &'static [&'static str] {
        match self {
            Exe::Broker => &[],
            // The simulated platform and the crash points of the tests.
            Exe::GuestUnlock => &["sim", "failpoints"],
        }
    }

    /// The executable, built first if it is missing or stale.
    pub fn path(self) -> &'static Path {
        static BROKER: OnceLock<PathBuf> = OnceLock::new();
        static GUEST_UNLOCK: OnceLock<PathBuf> = OnceLock::new();
        let cell = match self {
            Exe::Broker => &BROKER,
            Exe::GuestUnlock => &GUEST_UNLOCK,
        };
        cell.get_or_init(|| self.locate())
    }

    fn locate(self) -> PathBuf {
        let test_exe = std::env::current_exe().expect("the test binary's path");
        // target/<profile>/deps/<test> -> target/<profile>
        let profile_dir = test_exe
            .parent()
            .and_then(Path::parent)
            .expect("test binaries run from target/<profile>/deps/");
        let exe = profile_dir.join(self.name());
        if let Some(why) = self.stale(&exe) {
            self.build(profile_dir, &why);
        }
        assert!(
            exe.is_file(),
            "{} is missing after `cargo build`",
            exe.display()
        );
        exe
    }

    /// Why `exe` must be (re)built, if it must: it is missing, or a file
    /// it was built from changed since cargo last built or checked it.
    /// Cargo lists those files (the sources of the binary and of every
    /// workspace crate it links, build scripts, `.proto` files) in
    /// `<exe>.d`, and rewrites that list each time it finds the binary up
    /// to date, so the list's time is the one to compare with; the lock
    /// file and the manifests cover dependency and feature changes.
    fn stale(self, exe: &Path) -> Option<String> {
        let dep_info_path = exe.with_extension("d");
        let (Some(_), Some(built)) = (mtime(exe), mtime(&dep_info_path)) else {
            return Some("it is not built".into());
        };
        let Ok(dep_info) = std::fs::read_to_string(&dep_info_path) else {
            return Some("cargo's list of its sources is unreadable".into());
        };
        let root = workspace();
        let mut inputs = vec![
            root.join("Cargo.lock"),
            root.join("Cargo.toml"),
            root.join(self.name()).join("Cargo.toml"),
        ];
        // `TARGET: SOURCE SOURCE ...`, spaces in paths escaped as `\ `.
        let sources = dep_info.split_once(": ").map_or("", |(_, s)| s);
        inputs.extend(
            sources
                .replace("\\ ", "\0")
                .split_whitespace()
                .map(|p| PathBuf::from(p.replace('\0', " "))),
        );
        for input in inputs {
            match mtime(&input) {
                Some(t) if t <= built => {}
                Some(_) => return Some(format!("{} is newer", input.display())),
                None => return Some(format!("{} is gone", input.display())),
            }
        }
        None
    }

    fn build(self, profile_dir: &Path, why: &str) {
        let mut cmd = Command::new(env!("CARGO"));
        cmd.arg("build")
            .arg("--locked")
            .arg("--manifest-path")
            .arg(workspace().join("Cargo.toml"))
            .args(["-p", self.name(), "--bin", self.name()]);
        match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => {}
            Some("release") => {
                cmd.arg("--release");
            }
            Some(other) => {
                cmd.args(["--profile", other]);
            }
        }
        if !self.features().is_empty() {
            cmd.args(["--features", &self.features().join(",")]);
        }
        eprintln!("keybroker-tests: building {} ({why}): {cmd:?}", self.name());
        let status = cmd
            .status()
            .unwrap_or_else(|e| panic!("cannot run cargo to build {}: {e}", self.name()));
        assert!(
            status.success(),
            "building {} failed ({status}); build it with `cargo build -p {0} --bin {0}`, or run \
             `cargo test --workspace`",
            self.name()
        );
    }
}

/// The workspace root (the kit is its `tests/` member).
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the kit lives in the workspace")
        .to_owned()
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// A `broker` command with no inherited config or log settings.
pub fn broker_cmd() -> Command {
    let mut c = Command::new(Exe::Broker.path());
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
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", Exe::Broker.path().display()));
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
        let mut cmd = broker_cmd();
        cmd.args(["serve", "--config", config]);
        Self::start_cmd(cwd, config, cmd)
    }

    /// As [`Server::start`], with RLIMIT_NOFILE (soft and hard) set to
    /// `nofile` for the broker (through `sh -c 'ulimit -n N; exec ...'`).
    pub fn start_with_nofile(cwd: &Path, config: &str, nofile: u32) -> Server {
        let mut cmd = Command::new("sh");
        cmd.env_remove("KEYBROKER_CONFIG")
            .env_remove("KEYBROKER_ADMIN_SOCKET")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .args([
                "-c",
                &format!("ulimit -n {nofile} && exec \"$0\" serve --config \"$1\""),
            ])
            .arg(Exe::Broker.path())
            .arg(config);
        Self::start_cmd(cwd, config, cmd)
    }

    fn start_cmd(cwd: &Path, config: &str, mut cmd: Command) -> Server {
        use std::io::BufRead as _;
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = cwd.join(format!("serve-{n}.log"));
        let mut child = cmd
            .current_dir(cwd)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("create serve log"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {} serve: {e}", Exe::Broker.path().display()));
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
