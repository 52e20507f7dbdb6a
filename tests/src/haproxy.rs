//! HAProxy from Debian's package in front of broker replicas, as an owner
//! would run it: TCP mode (TLS passes through, so guests' pins see the
//! brokers' own certificate), round robin, TCP health checks every 300 ms.
//! Stopped when dropped.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// A running HAProxy on a loopback port.
pub struct Haproxy {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    /// Starts HAProxy on a free loopback port in front of `backends`
    /// (`127.0.0.1:PORT` each) and waits until it listens.
    pub fn start(backends: &[u16]) -> anyhow::Result<Haproxy> {
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut cfg = format!(
            "global\n    maxconn 4000\n\
             defaults\n    mode tcp\n    timeout connect 1s\n    timeout client 30s\n    timeout server 30s\n    retries 2\n    option redispatch\n\
             frontend guests\n    bind 127.0.0.1:{port}\n    default_backend brokers\n\
             backend brokers\n    balance roundrobin\n    option tcp-check\n    default-server inter 300ms fall 2 rise 2\n"
        );
        for (i, p) in backends.iter().enumerate() {
            cfg.push_str(&format!("    server b{i} 127.0.0.1:{p} check\n"));
        }
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, cfg)?;
        let child = Command::new("haproxy")
            .arg("-f")
            .arg(&path)
            .arg("-db")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context(
                "cannot run haproxy: install it with `scripts/setup build test` as root (Debian package haproxy)",
            )?;
        let mut h = Haproxy {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = h.child.try_wait() {
                bail!("haproxy exited at start: {status}");
            }
            if Instant::now() > deadline {
                bail!("haproxy did not listen within 10 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(h)
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
