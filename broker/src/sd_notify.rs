//! systemd's readiness protocol (`Type=notify`): one datagram to the Unix
//! socket named by `$NOTIFY_SOCKET`, without libsystemd.
//!
//! `broker serve` sends `READY=1` only once the store is open and every
//! listener (guest, admin socket, admin TLS, metrics) is bound, so that a
//! unit ordered `After=keybroker.service` finds them all; `STOPPING=1` when
//! a shutdown starts. Without `$NOTIFY_SOCKET` (not under systemd) nothing
//! is sent.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Sends `state` (e.g. `"READY=1"`) to the socket named by
/// `$NOTIFY_SOCKET`. `Ok(false)` when the variable is unset.
pub fn notify(state: &str) -> io::Result<bool> {
    match std::env::var_os("NOTIFY_SOCKET") {
        None => Ok(false),
        Some(path) => send_to(path.as_encoded_bytes(), state).map(|()| true),
    }
}

/// Sends `state` to the socket `path` (a file path, or `@NAME` for an
/// abstract socket, as systemd writes `$NOTIFY_SOCKET`).
pub fn send_to(path: &[u8], state: &str) -> io::Result<()> {
    let addr = match path {
        [] => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "NOTIFY_SOCKET is empty",
            ))
        }
        [b'@', name @ ..] => {
            use std::os::linux::net::SocketAddrExt as _;
            SocketAddr::from_abstract_name(name)?
        }
        _ => {
            use std::os::unix::ffi::OsStrExt as _;
            SocketAddr::from_pathname(std::ffi::OsStr::from_bytes(path))?
        }
    };
    let sock = UnixDatagram::unbound()?;
    let sent = sock.send_to_addr(state.as_bytes(), &addr)?;
    if sent != state.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short write to NOTIFY_SOCKET",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_one_datagram_to_a_path_and_an_abstract_socket() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("notify");
        let rx = UnixDatagram::bind(&p).unwrap();
        send_to(p.as_os_str().as_encoded_bytes(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        use std::os::linux::net::SocketAddrExt as _;
        let name = format!("keybroker-test-{}", std::process::id());
        let rx = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
        send_to(format!("@{name}").as_bytes(), "STOPPING=1").unwrap();
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }

    #[test]
    fn a_missing_or_empty_socket_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("nobody-listens");
        assert!(send_to(p.as_os_str().as_encoded_bytes(), "READY=1").is_err());
        assert!(send_to(b"", "READY=1").is_err());
    }
}
