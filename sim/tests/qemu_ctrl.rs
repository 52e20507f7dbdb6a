//! The simulated paravisor in front of swtpm's control channel, driven as
//! qemu's `-tpmdev emulator` drives it: the data channel handed over as a
//! file descriptor (`CMD_SET_DATAFD`), `CMD_INIT`, then TPM commands on
//! the data channel. A write of user data must come back in a refreshed
//! HCL report whose SNP report binds it.
//!
//! Needs swtpm; skipped (with a message) without it unless
//! `KEYBROKER_REQUIRE_SWTPM=1`.

use std::io::{IoSlice, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keybroker_sim::azure::swtpm::Swtpm;
use keybroker_sim::azure::{relay, SimParavisor};
use keybroker_sim::{SimParams, SimPlatform};
use keybroker_vtpm::hcl::report_data_for;
use keybroker_vtpm::{guest, HclReport, RuntimeClaims, Tpm};
use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};

const CMD_INIT: u32 = 2;
const CMD_SHUTDOWN: u32 = 3;
const CMD_SET_DATAFD: u32 = 16;

fn wait_for(path: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A control command and its 4-byte result.
fn ctrl(c: &mut UnixStream, cmd: u32, payload: &[u8]) -> u32 {
    let mut msg = cmd.to_be_bytes().to_vec();
    msg.extend_from_slice(payload);
    c.write_all(&msg).unwrap();
    let mut res = [0u8; 4];
    c.read_exact(&mut res).unwrap();
    u32::from_be_bytes(res)
}

#[test]
fn qemus_data_channel_reaches_the_paravisor() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let platform =
        SimPlatform::generate(&dir.path().join("platform"), &SimParams::default()).unwrap();
    let paravisor = Arc::new(SimParavisor::new(platform));

    // Provisioned once, as the VM harness does, then run for "qemu".
    {
        let Some(sw) = Swtpm::start(&state).unwrap() else {
            return;
        };
        let mut tpm = Tpm::new(UnixStream::connect(sw.data_socket()).unwrap());
        paravisor.provision(&mut tpm).unwrap();
    }
    let swtpm_ctrl = state.join("qemu-ctrl.sock");
    let mut swtpm = Command::new("swtpm")
        .args(["socket", "--tpm2"])
        .arg("--tpmstate")
        .arg(format!("dir={}", state.display()))
        .arg("--ctrl")
        .arg(format!("type=unixio,path={}", swtpm_ctrl.display()))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&swtpm_ctrl);
    let front = dir.path().join("front.sock");
    let listener = UnixListener::bind(&front).unwrap();
    let p = paravisor.clone();
    let ctrl_path = swtpm_ctrl.clone();
    let proxy = std::thread::spawn(move || relay::serve_qemu_ctrl(p, &listener, &ctrl_path));

    // qemu: hand over the data channel, initialise, start the TPM up.
    let mut c = UnixStream::connect(&front).unwrap();
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut anc = SendAncillaryBuffer::new(&mut space);
    let fds = [theirs.as_fd()];
    anc.push(SendAncillaryMessage::ScmRights(&fds));
    let cmd = CMD_SET_DATAFD.to_be_bytes();
    sendmsg(
        c.as_fd(),
        &[IoSlice::new(&cmd)],
        &mut anc,
        SendFlags::empty(),
    )
    .unwrap();
    drop(theirs);
    let mut res = [0u8; 4];
    c.read_exact(&mut res).unwrap();
    assert_eq!(u32::from_be_bytes(res), 0, "CMD_SET_DATAFD");
    assert_eq!(ctrl(&mut c, CMD_INIT, &0u32.to_be_bytes()), 0, "CMD_INIT");
    let mut tpm = Tpm::new(ours);
    // TPM2_Startup(TPM_SU_CLEAR), as the firmware sends it.
    let startup = tpm
        .transact(&[0x80, 0x01, 0, 0, 0, 12, 0, 0, 0x01, 0x44, 0, 0])
        .unwrap();
    assert_eq!(&startup[6..10], &[0, 0, 0, 0], "TPM2_Startup");

    // The guest's side: user data in, a report binding it out.
    let binding = [0x5au8; 64];
    guest::write_user_data(&mut tpm, &binding).unwrap();
    let hcl = HclReport::parse(&guest::read_hcl_report(&mut tpm).unwrap()).unwrap();
    let claims = RuntimeClaims::parse(hcl.variable_data()).unwrap();
    assert_eq!(claims.user_data, binding);
    assert_eq!(
        &hcl.snp_report()[0x50..0x90],
        &report_data_for(hcl.variable_data())[..],
        "REPORT_DATA binds the refreshed variable data"
    );
    let q = guest::quote(&mut tpm, &binding).unwrap();
    assert_eq!(q.pcr_values.len(), 24);

    assert_eq!(ctrl(&mut c, CMD_SHUTDOWN, &[]), 0, "CMD_SHUTDOWN");
    drop(tpm);
    drop(c);
    let _ = proxy.join();
    let _ = swtpm.kill();
    let _ = swtpm.wait();
}
