//! A throwaway PostgreSQL cluster for the tests: `initdb` and `postgres`
//! from Debian's packages (`/usr/lib/postgresql/N/bin`), in a temporary
//! directory, listening on a Unix socket in that directory and on a
//! loopback port. Root cannot run PostgreSQL, so as root the cluster runs
//! as the `postgres` user (the package creates it) and the directory is
//! handed to it.
//!
//! The server runs under a small shell that waits on a pipe from this
//! process: when the test process ends, however it ends, the pipe closes
//! and the shell stops the server and removes the directory. So a cluster
//! shared by a test binary ([`PgCluster::shared`]) needs no teardown.
//!
//! Missing binaries are an error, never a skip: the store tests must run
//! wherever README's test command runs, and `scripts/setup` installs them.

use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The login role the brokers of the tests use.
pub const ROLE: &str = "keybroker";
/// Its password (for TCP logins; Unix-socket logins are trusted).
pub const PASSWORD: &str = "kb-test-password";

/// A running PostgreSQL cluster in a temporary directory.
pub struct PgCluster {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    run_as: Option<&'static str>,
    watchdog: Mutex<Option<(Child, ChildStdin)>>,
}

/// Runs the server while this pipe is open, then stops it and removes its
/// directory; the lines `stop` and `start` on the pipe stop and start it
/// meanwhile. Arguments: bin dir, cluster dir, port.
const WATCHDOG: &str = r#"
start() {
    "$1/postgres" -D "$2/data" -k "$2" -p "$3" -c listen_addresses=127.0.0.1 \
        -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
        -c max_connections=200 -c shared_buffers=16MB >>"$2/server.log" 2>&1 &
    pid=$!
}
start "$1" "$2" "$3"
while read -r cmd; do
    case $cmd in
        stop) kill -INT "$pid" 2>/dev/null; wait "$pid" ;;
        start) start "$1" "$2" "$3" ;;
    esac
done
kill -INT "$pid" 2>/dev/null
wait "$pid"
rm -rf "$2"
"#;

/// Where the server binaries are: `$KEYBROKER_PG_BIN`, or the newest
/// `/usr/lib/postgresql/N/bin` holding `initdb` and `postgres`.
pub fn bin_dir() -> Result<PathBuf, String> {
    let has = |d: &Path| d.join("initdb").is_file() && d.join("postgres").is_file();
    if let Some(d) = std::env::var_os("KEYBROKER_PG_BIN") {
        let d = PathBuf::from(d);
        return if has(&d) {
            Ok(d)
        } else {
            Err(format!(
                "KEYBROKER_PG_BIN={} holds no initdb and postgres",
                d.display()
            ))
        };
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let d = e.path().join("bin");
            has(&d).then_some((v, d))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, d)| d).ok_or_else(|| {
        "the PostgreSQL server binaries (initdb, postgres) are not installed in \
         /usr/lib/postgresql/N/bin; the PostgreSQL store tests need them: run \
         `scripts/setup build test` as root (Debian package postgresql)"
            .to_owned()
    })
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

impl PgCluster {
    /// One cluster per test process, started on first use. Panics (the
    /// test fails) if it cannot start, saying why.
    pub fn shared() -> &'static PgCluster {
        static SHARED: OnceLock<PgCluster> = OnceLock::new();
        SHARED.get_or_init(|| PgCluster::start().unwrap_or_else(|e| panic!("{e}")))
    }

    /// Initialises and starts a new cluster with the role [`ROLE`].
    pub fn start() -> Result<PgCluster, String> {
        let bin = bin_dir()?;
        let root = rustix::process::geteuid().is_root();
        let run_as = root.then_some("postgres");
        let dir = tempfile::Builder::new()
            .prefix("keybroker-pg.")
            .tempdir()
            .map_err(|e| format!("cannot create a temporary directory: {e}"))?
            .keep();
        if root {
            let out = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&dir)
                .output()
                .map_err(|e| format!("chown: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "cannot hand {} to the postgres user (does it exist? the Debian package \
                     postgresql creates it: run `scripts/setup build test`): {}",
                    dir.display(),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        let c = PgCluster {
            dir,
            bin,
            port: free_port()?,
            run_as,
            watchdog: Mutex::new(None),
        };
        let data = c.dir.join("data");
        let out = c
            .command("initdb")
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ])
            .output()
            .map_err(|e| format!("cannot run initdb: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        c.launch()?;
        c.psql(
            "postgres",
            &format!("CREATE ROLE {ROLE} LOGIN CREATEDB PASSWORD '{PASSWORD}'"),
        )?;
        Ok(c)
    }

    fn command(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        match self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(exe);
                c
            }
            None => Command::new(exe),
        }
    }

    /// Starts the server (under its watchdog) and waits until it answers.
    fn launch(&self) -> Result<(), String> {
        let mut cmd = match self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--", "sh", "-c", WATCHDOG, "sh"]);
                c
            }
            None => {
                let mut c = Command::new("sh");
                c.args(["-c", WATCHDOG, "sh"]);
                c
            }
        };
        cmd.arg(&self.bin)
            .arg(&self.dir)
            .arg(self.port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start postgres: {e}"))?;
        let stdin = child.stdin.take().ok_or("no stdin pipe")?;
        *self.watchdog.lock().unwrap_or_else(|p| p.into_inner()) = Some((child, stdin));
        self.wait_ready()
    }

    fn wait_ready(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.psql("postgres", "SELECT 1").is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
                return Err(format!(
                    "PostgreSQL did not start within 60 s; its log:\n{log}"
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn tell(&self, line: &str) -> Result<(), String> {
        let mut w = self.watchdog.lock().unwrap_or_else(|p| p.into_inner());
        let (_, stdin) = w.as_mut().ok_or("the cluster is not running")?;
        writeln!(stdin, "{line}").map_err(|e| format!("cannot reach the watchdog: {e}"))
    }

    /// Stops the server (fast shutdown: sessions are ended) and waits until
    /// it no longer answers.
    pub fn stop_server(&self) -> Result<(), String> {
        self.tell("stop")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.psql("postgres", "SELECT 1").is_ok() {
            if Instant::now() > deadline {
                return Err("PostgreSQL did not stop within 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Starts the server again after [`PgCluster::stop_server`] and waits
    /// until it answers.
    pub fn start_server(&self) -> Result<(), String> {
        self.tell("start")?;
        self.wait_ready()
    }

    /// The directory of the Unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// The loopback TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL for `db` over the Unix socket, as [`ROLE`] (no password).
    pub fn socket_url(&self, db: &str) -> String {
        let host: String = self
            .dir
            .to_str()
            .expect("a UTF-8 temporary path")
            .bytes()
            .map(|b| match b {
                b'/' => "%2F".to_owned(),
                b => (b as char).to_string(),
            })
            .collect();
        format!("postgres://{ROLE}@{host}:{}/{db}", self.port)
    }

    /// A URL for `db` over loopback TCP, as [`ROLE`], without a password
    /// (give it with `password_file`, or [`PgCluster::tcp_url_with`]).
    pub fn tcp_url(&self, db: &str) -> String {
        format!(
            "postgres://{ROLE}@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }

    /// A URL for `db` over loopback TCP with `password` in it.
    pub fn tcp_url_with(&self, db: &str, password: &str) -> String {
        format!(
            "postgres://{ROLE}:{password}@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }

    /// Creates a new, empty database owned by [`ROLE`] and returns its
    /// name (`kb_<pid>_<n>`).
    pub fn fresh_database(&self) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "kb_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        self.psql("postgres", &format!("CREATE DATABASE {name} OWNER {ROLE}"))
            .unwrap_or_else(|e| panic!("{e}"));
        name
    }

    /// Runs `sql` in `db` as the superuser through `psql`; its output.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let mut c = self.command("psql");
        c.arg("-h")
            .arg(&self.dir)
            .args(["-p", &self.port.to_string(), "-U", "postgres", "-d", db])
            .args(["-v", "ON_ERROR_STOP=1", "-qAtX", "-c", sql])
            .stdin(Stdio::null());
        let out = c.output().map_err(|e| format!("cannot run psql: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "psql {sql:?} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Turns TLS on, with the server certificate and key given as PEM
    /// (`ALTER SYSTEM` and a restart), and makes `db` refuse
    /// TCP connections without it (`hostnossl … reject` in pg_hba.conf,
    /// ahead of every other line), so that a test of TLS cannot pass over a
    /// plain connection.
    pub fn require_tls(&self, db: &str, cert_pem: &str, key_pem: &str) -> Result<(), String> {
        use std::os::unix::fs::PermissionsExt as _;
        let data = self.dir.join("data");
        let write = |name: &str, text: &str, mode: u32| -> Result<(), String> {
            let path = data.join(name);
            std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .map_err(|e| format!("{}: {e}", path.display()))?;
            if self.run_as.is_some() {
                let out = Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(&path)
                    .output()
                    .map_err(|e| format!("chown: {e}"))?;
                if !out.status.success() {
                    return Err(format!("chown {}: failed", path.display()));
                }
            }
            Ok(())
        };
        write("server.crt", cert_pem, 0o644)?;
        write("server.key", key_pem, 0o600)?;
        let hba_path = data.join("pg_hba.conf");
        let hba = std::fs::read_to_string(&hba_path)
            .map_err(|e| format!("{}: {e}", hba_path.display()))?;
        write(
            "pg_hba.conf",
            &format!(
                "hostssl {db} all 127.0.0.1/32 scram-sha-256\n\
                 hostnossl {db} all 127.0.0.1/32 reject\n{hba}"
            ),
            0o600,
        )?;
        self.psql("postgres", "ALTER SYSTEM SET ssl = on")?;
        // A restart, not a reload: after a reload the server's settings say
        // `ssl = on` a moment before it has loaded its certificate.
        self.stop_server()?;
        self.start_server()
    }

    /// Writes a password file (mode 0600) for [`ROLE`] into `dir`.
    pub fn password_file(dir: &Path) -> PathBuf {
        use std::os::unix::fs::OpenOptionsExt as _;
        let path = dir.join("pg.password");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .expect("password file");
        writeln!(f, "{PASSWORD}").expect("password file");
        path
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let w = self.watchdog.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Some((mut child, stdin)) = w.take() {
            drop(stdin);
            let _ = child.wait();
        }
    }
}
