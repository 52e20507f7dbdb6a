//! A software TPM (Debian's `swtpm`) as the simulated Azure vTPM, for tests
//! without a VM: [`Swtpm`] runs one, [`SimVtpm`] provisions it with a
//! [`SimParavisor`] and serves it on a Unix socket through the paravisor's
//! relay, which guest-unlock reaches as `azure-vtpm:SOCKET`.
//!
//! Without swtpm, [`Swtpm::start`] says why on stderr and returns `None`
//! (the caller skips), unless `KEYBROKER_REQUIRE_SWTPM=1`, as CI sets,
//! which makes it an error.

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use keybroker_vtpm::Tpm;

use super::SimParavisor;
use crate::SimError;

/// The environment variable that forbids skipping when swtpm is absent.
pub const REQUIRE_SWTPM: &str = "KEYBROKER_REQUIRE_SWTPM";

/// A running `swtpm socket --tpm2`, killed when dropped.
#[derive(Debug)]
pub struct Swtpm {
    child: Child,
    data: PathBuf,
}

impl Swtpm {
    /// Starts swtpm with its state in `dir` (created if needed), its data
    /// socket at `dir/tpm.sock` and its control socket at `dir/ctrl.sock`,
    /// already started up (`--flags not-need-init,startup-clear`).
    /// `Ok(None)` when swtpm is not installed and skipping is allowed.
    pub fn start(dir: &Path) -> Result<Option<Swtpm>, SimError> {
        let installed = Command::new("swtpm")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !installed {
            let why = "swtpm is not installed; the simulated Azure vTPM needs it (Debian: \
                       apt-get install swtpm)";
            if std::env::var_os(REQUIRE_SWTPM).is_some_and(|v| v == "1") {
                return Err(SimError::Tpm(format!(
                    "{why}, and {REQUIRE_SWTPM}=1 forbids skipping"
                )));
            }
            eprintln!("SKIPPED: {why}");
            return Ok(None);
        }
        let io = |source| SimError::Io {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let data = dir.join("tpm.sock");
        let child = Command::new("swtpm")
            .args(["socket", "--tpm2"])
            .arg("--tpmstate")
            .arg(format!("dir={}", dir.display()))
            .arg("--server")
            .arg(format!("type=unixio,path={}", data.display()))
            .arg("--ctrl")
            .arg(format!(
                "type=unixio,path={}",
                dir.join("ctrl.sock").display()
            ))
            .args(["--flags", "not-need-init,startup-clear"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(io)?;
        let sw = Swtpm { child, data };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sw.data.exists() {
            if Instant::now() > deadline {
                return Err(SimError::Tpm("swtpm made no socket in 10 s".into()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Some(sw))
    }

    /// Its data socket (raw TPM commands).
    pub fn data_socket(&self) -> &Path {
        &self.data
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A simulated Azure vTPM: swtpm, provisioned by a paravisor, served on
/// [`SimVtpm::socket`] through the paravisor's relay. Stopped when dropped.
#[derive(Debug)]
pub struct SimVtpm {
    socket: PathBuf,
    stop: Arc<AtomicBool>,
    relay: Option<JoinHandle<()>>,
    // Dropped last, after the relay stopped.
    swtpm: Swtpm,
}

impl SimVtpm {
    /// Starts swtpm in `dir`, provisions it with `paravisor` and serves it
    /// at `dir/vtpm.sock`. `Ok(None)` when swtpm is absent and skipping is
    /// allowed.
    pub fn start(paravisor: Arc<SimParavisor>, dir: &Path) -> Result<Option<SimVtpm>, SimError> {
        let Some(swtpm) = Swtpm::start(dir)? else {
            return Ok(None);
        };
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SimError::Io { path, source }
        };
        let mut tpm = Tpm::new(UnixStream::connect(swtpm.data_socket()).map_err(io(dir))?);
        paravisor.provision(&mut tpm)?;
        drop(tpm);
        let socket = dir.join("vtpm.sock");
        let listener = UnixListener::bind(&socket).map_err(io(&socket))?;
        let stop = Arc::new(AtomicBool::new(false));
        let data = swtpm.data_socket().to_path_buf();
        let flag = stop.clone();
        let relay = std::thread::spawn(move || {
            if let Err(e) = super::relay::serve_socket(&paravisor, &listener, &data, &flag) {
                eprintln!("simulated paravisor: {e}");
            }
        });
        Ok(Some(SimVtpm {
            socket,
            stop,
            relay: Some(relay),
            swtpm,
        }))
    }

    /// Where guests connect (`azure-vtpm:SOCKET`).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// swtpm's own data socket, without the paravisor in front (a guest
    /// there writes user data that no HCL report ever carries).
    pub fn tpm_socket(&self) -> &Path {
        self.swtpm.data_socket()
    }
}

impl Drop for SimVtpm {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the relay's accept.
        let _ = UnixStream::connect(&self.socket);
        if let Some(t) = self.relay.take() {
            let _ = t.join();
        }
    }
}
