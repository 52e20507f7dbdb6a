//! Opening a TPM by path: the kernel's character device (`/dev/tpmrm0`,
//! the resource manager) or a Unix socket that speaks the same raw TPM 2.0
//! commands (swtpm's `--server type=unixio`, a simulated vTPM in tests).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::Tpm;

/// How long a socket TPM may take to answer one command (a TPM2_Quote of
/// a software TPM takes milliseconds; key creation up to seconds).
pub const SOCKET_TIMEOUT: Duration = Duration::from_secs(30);

/// The byte stream to a TPM.
#[derive(Debug)]
pub enum TpmStream {
    /// A character device: one write per command, reads of its response.
    Device(File),
    /// A connected Unix stream socket.
    Socket(UnixStream),
}

impl Read for TpmStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            TpmStream::Device(f) => f.read(buf),
            TpmStream::Socket(s) => s.read(buf),
        }
    }
}

impl Write for TpmStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            TpmStream::Device(f) => f.write(buf),
            TpmStream::Socket(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            TpmStream::Device(f) => f.flush(),
            TpmStream::Socket(s) => s.flush(),
        }
    }
}

/// Opens the TPM at `path`: a Unix socket is connected to (with
/// [`SOCKET_TIMEOUT`] on reads), anything else opened read-write.
pub fn open(path: &Path) -> io::Result<Tpm<TpmStream>> {
    let stream = if std::fs::metadata(path)?.file_type().is_socket() {
        let s = UnixStream::connect(path)?;
        s.set_read_timeout(Some(SOCKET_TIMEOUT))?;
        TpmStream::Socket(s)
    } else {
        TpmStream::Device(OpenOptions::new().read(true).write(true).open(path)?)
    };
    Ok(Tpm::new(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_path_is_not_found_and_a_file_opens_as_a_device() {
        let dir = tempfile::tempdir().unwrap();
        let err = open(&dir.path().join("tpmrm0")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        let tpm = open(&file).unwrap();
        assert!(matches!(tpm.into_inner(), TpmStream::Device(_)));
        let sock = dir.path().join("tpm.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        assert!(matches!(
            open(&sock).unwrap().into_inner(),
            TpmStream::Socket(_)
        ));
    }
}
