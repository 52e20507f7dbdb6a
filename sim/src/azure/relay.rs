//! The paravisor between a guest and the TPM: TPM 2.0 commands pass through
//! unchanged, one at a time; after a successful TPM2_NV_Write to the user
//! data index the paravisor refreshes the HCL report before the guest's
//! next command, as Azure's does.
//!
//! Two front ends:
//!
//! - [`serve_socket`]: a Unix socket speaking raw TPM commands, in front of
//!   swtpm's data socket (`swtpm socket --server type=unixio`). guest-unlock
//!   reaches it as `azure-vtpm:SOCKET` (tests without a VM);
//! - [`serve_qemu_ctrl`]: in front of swtpm's control socket, for qemu's
//!   `-tpmdev emulator`. qemu sends swtpm the data channel as a file
//!   descriptor (`CMD_SET_DATAFD`, SCM_RIGHTS) on the control socket; the
//!   relay keeps qemu's descriptor, hands swtpm one end of a socket pair
//!   instead, and relays between them. Every other control message passes
//!   through byte for byte.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use keybroker_vtpm::tpm::commands::cc;
use keybroker_vtpm::tpm::commands::MAX_RESPONSE;
use keybroker_vtpm::tpm::AZURE_USER_DATA_NV_INDEX;
use keybroker_vtpm::Tpm;
use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

use super::SimParavisor;

/// Size of a TPM command or response header (tag, size, code).
const HEADER: usize = 10;

/// Reads one command frame; `None` at a clean end of stream.
fn read_frame<R: Read>(r: &mut R) -> io::Result<Option<Vec<u8>>> {
    let mut header = [0u8; HEADER];
    let mut got = 0;
    while got < HEADER {
        match r.read(&mut header[got..])? {
            0 if got == 0 => return Ok(None),
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => got += n,
        }
    }
    let size = u32::from_be_bytes([header[2], header[3], header[4], header[5]]) as usize;
    if !(HEADER..=MAX_RESPONSE).contains(&size) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a TPM command of {size} bytes"),
        ));
    }
    let mut frame = vec![0u8; size];
    frame[..HEADER].copy_from_slice(&header);
    r.read_exact(&mut frame[HEADER..])?;
    Ok(Some(frame))
}

/// Whether `command` is a TPM2_NV_Write to the user data index and
/// `response` says it succeeded.
fn wrote_user_data(command: &[u8], response: &[u8]) -> bool {
    let u32_at = |b: &[u8], at: usize| {
        b.get(at..at + 4)
            .map(|x| u32::from_be_bytes([x[0], x[1], x[2], x[3]]))
    };
    // NV_Write: header, authHandle, nvIndex, ...
    u32_at(command, 6) == Some(cc::NV_WRITE)
        && u32_at(command, 14) == Some(AZURE_USER_DATA_NV_INDEX)
        && u32_at(response, 6) == Some(0)
}

impl SimParavisor {
    /// Relays the guest's commands to `tpm` until the guest closes its end.
    /// A refresh that fails is logged to stderr and the guest goes on with
    /// the old report (the broker then refuses it).
    pub fn relay<G: Read + Write, T: Read + Write>(
        &self,
        guest: &mut G,
        tpm: &mut Tpm<T>,
    ) -> io::Result<()> {
        while let Some(command) = read_frame(guest)? {
            let response = tpm
                .transact(&command)
                .map_err(|e| io::Error::other(e.to_string()))?;
            if wrote_user_data(&command, &response) {
                if let Err(e) = self.refresh(tpm) {
                    eprintln!("simulated paravisor: refreshing the HCL report failed: {e}");
                }
            }
            guest.write_all(&response)?;
            guest.flush()?;
        }
        Ok(())
    }
}

/// Serves guests on `listener`, one connection at a time, each relayed to
/// the TPM at `tpm` (swtpm's data socket, which serves one client at a
/// time: connected for each guest, closed after it). Returns when
/// accepting fails, or at the first connection after `stop` was set.
pub fn serve_socket(
    paravisor: &SimParavisor,
    listener: &UnixListener,
    tpm: &Path,
    stop: &AtomicBool,
) -> io::Result<()> {
    loop {
        let (mut guest, _) = listener.accept()?;
        if stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        let mut upstream = Tpm::new(UnixStream::connect(tpm)?);
        if let Err(e) = paravisor.relay(&mut guest, &mut upstream) {
            eprintln!("simulated paravisor: guest connection ended: {e}");
        }
    }
}

/// Serves qemu on `listener` (the control socket qemu's `-chardev socket`
/// names) in front of swtpm's control socket at `swtpm_ctrl`: one qemu
/// connection, until it closes.
pub fn serve_qemu_ctrl(
    paravisor: Arc<SimParavisor>,
    listener: &UnixListener,
    swtpm_ctrl: &Path,
) -> io::Result<()> {
    let (qemu, _) = listener.accept()?;
    let swtpm = UnixStream::connect(swtpm_ctrl)?;
    // swtpm's answers go back as they are.
    let mut answers = swtpm.try_clone()?;
    let mut to_qemu = qemu.try_clone()?;
    let back = std::thread::spawn(move || io::copy(&mut answers, &mut to_qemu));
    let result = forward_ctrl(paravisor, &qemu, &swtpm);
    let _ = swtpm.shutdown(std::net::Shutdown::Both);
    let _ = back.join();
    result
}

/// qemu → swtpm on the control channel, swapping the data channel's
/// descriptor for one end of a pair that the paravisor relays.
fn forward_ctrl(
    paravisor: Arc<SimParavisor>,
    qemu: &UnixStream,
    swtpm: &UnixStream,
) -> io::Result<()> {
    let mut buf = [0u8; 4096];
    loop {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut cmsg = RecvAncillaryBuffer::new(&mut space);
        let got = recvmsg(
            qemu.as_fd(),
            &mut [IoSliceMut::new(&mut buf)],
            &mut cmsg,
            RecvFlags::CMSG_CLOEXEC,
        )?;
        if got.bytes == 0 {
            return Ok(());
        }
        let mut data_fd = None;
        for msg in cmsg.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = msg {
                data_fd = fds.into_iter().next();
            }
        }
        let bytes = &buf[..got.bytes];
        match data_fd {
            None => (&*swtpm).write_all(bytes)?,
            Some(fd) => {
                let mut qemu_data = UnixStream::from(fd);
                let (ours, theirs) = UnixStream::pair()?;
                let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
                let mut out = SendAncillaryBuffer::new(&mut space);
                let fds = [theirs.as_fd()];
                out.push(SendAncillaryMessage::ScmRights(&fds));
                let sent = sendmsg(
                    swtpm.as_fd(),
                    &[IoSlice::new(bytes)],
                    &mut out,
                    SendFlags::empty(),
                )?;
                if sent < bytes.len() {
                    (&*swtpm).write_all(&bytes[sent..])?;
                }
                drop(theirs);
                let p = paravisor.clone();
                std::thread::spawn(move || {
                    let mut tpm = Tpm::new(ours);
                    if let Err(e) = p.relay(&mut qemu_data, &mut tpm) {
                        eprintln!("simulated paravisor: data channel ended: {e}");
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_read_whole_and_bounded() {
        let mut cmd = vec![0x80, 0x01, 0, 0, 0, 12, 0, 0, 1, 0x7a, 0xaa, 0xbb];
        let frame = read_frame(&mut cmd.as_slice()).unwrap().unwrap();
        assert_eq!(frame, cmd);
        assert!(read_frame(&mut [].as_slice()).unwrap().is_none());
        assert!(read_frame(&mut &cmd[..5]).is_err());
        assert!(read_frame(&mut &cmd[..11]).is_err());
        cmd[2..6].copy_from_slice(&9u32.to_be_bytes());
        assert!(read_frame(&mut cmd.as_slice()).is_err());
        cmd[2..6].copy_from_slice(&(MAX_RESPONSE as u32 + 1).to_be_bytes());
        assert!(read_frame(&mut cmd.as_slice()).is_err());
    }

    #[test]
    fn only_a_successful_write_of_user_data_refreshes() {
        let mut cmd = vec![0x80, 0x02, 0, 0, 0, 30];
        cmd.extend_from_slice(&cc::NV_WRITE.to_be_bytes());
        cmd.extend_from_slice(&0x4000_0001u32.to_be_bytes());
        cmd.extend_from_slice(&AZURE_USER_DATA_NV_INDEX.to_be_bytes());
        let ok = [0x80, 0x02, 0, 0, 0, 10, 0, 0, 0, 0];
        let failed = [0x80, 0x01, 0, 0, 0, 10, 0, 0, 0x01, 0x49];
        assert!(wrote_user_data(&cmd, &ok));
        assert!(!wrote_user_data(&cmd, &failed));
        let mut other = cmd.clone();
        other[14..18].copy_from_slice(&0x0140_0001u32.to_be_bytes());
        assert!(!wrote_user_data(&other, &ok));
        let mut read = cmd.clone();
        read[6..10].copy_from_slice(&cc::NV_READ.to_be_bytes());
        assert!(!wrote_user_data(&read, &ok));
        assert!(!wrote_user_data(&cmd[..12], &ok));
    }
}
