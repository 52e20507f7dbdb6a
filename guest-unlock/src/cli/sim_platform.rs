//! `guest-unlock sim-platform` (test builds only, cargo feature `sim`):
//! create and describe a simulated SEV-SNP platform for tests and demos,
//! and run the simulated Azure paravisor in front of a swtpm. A broker
//! trusts it only when its config names the platform's `ark.pem` under
//! `[attestation.simulated]`.

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::Subcommand;

use keybroker_sim::azure::{paravisor_measurement, relay, SimParavisor};
use keybroker_sim::{Generation, SimError, SimGuest, SimParams, SimPlatform, GUEST_FILE};
use keybroker_vtpm::Tpm;

/// `guest-unlock sim-platform ...`
#[derive(Debug, Subcommand)]
pub enum SimCommand {
    /// Create a simulated platform (ARK, ASK, VCEK and its key) in DIR.
    Init {
        /// Directory to create it in (must not hold a platform yet).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Generation to imitate: milan, genoa or turin.
        #[arg(long, default_value = "milan")]
        generation: Generation,
    },
    /// Print what a broker needs to trust and admit this platform's guest:
    /// the ARK path, generation, the guest's launch measurement and the
    /// simulated Azure paravisor's.
    Show {
        /// The platform's directory.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
    /// Provision a swtpm as an Azure vTPM whose paravisor runs on this
    /// platform: attestation key at 0x81000003, NV indexes 0x01400001 (the
    /// HCL report) and 0x01400002 (user data). Start swtpm with
    /// `--server type=unixio,path=SOCKET --flags not-need-init,startup-clear`.
    AzureProvision {
        /// The platform's directory.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// swtpm's data socket.
        #[arg(long, value_name = "SOCKET")]
        tpm: PathBuf,
    },
    /// Run the simulated Azure paravisor between a guest and a provisioned
    /// swtpm, refreshing the HCL report when the guest writes user data.
    /// Either in front of swtpm's control socket for qemu's `-tpmdev
    /// emulator` (--qemu-ctrl, one VM run), or in front of its data socket
    /// for guest-unlock's `azure-vtpm:SOCKET` (--listen). Runs until killed
    /// (--qemu-ctrl: until qemu disconnects).
    Paravisor {
        /// The platform's directory.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Listen here for qemu's TPM control channel.
        #[arg(
            long,
            value_name = "SOCKET",
            requires = "swtpm_ctrl",
            conflicts_with = "listen"
        )]
        qemu_ctrl: Option<PathBuf>,
        /// swtpm's control socket (`--ctrl type=unixio,path=…`).
        #[arg(long, value_name = "SOCKET")]
        swtpm_ctrl: Option<PathBuf>,
        /// Listen here for guests speaking raw TPM commands.
        #[arg(long, value_name = "SOCKET", requires = "tpm")]
        listen: Option<PathBuf>,
        /// swtpm's data socket (`--server type=unixio,path=…`).
        #[arg(long, value_name = "SOCKET")]
        tpm: Option<PathBuf>,
    },
}

/// Runs a sim-platform command.
pub fn run(cmd: SimCommand) -> Result<(), SimError> {
    match cmd {
        SimCommand::Init { dir, generation } => {
            let p = SimPlatform::generate(&dir, &SimParams::new(generation))?;
            println!(
                "created simulated {} platform in {}",
                p.generation(),
                p.dir().display()
            );
            println!(
                "NOT real hardware: a broker must name {} explicitly to trust it",
                p.dir().join("ark.pem").display()
            );
            Ok(())
        }
        SimCommand::Show { dir } => {
            let p = SimPlatform::load(&dir)?;
            let guest_path = dir.join(GUEST_FILE);
            let guest = if guest_path.exists() {
                SimGuest::load(&guest_path)?
            } else {
                SimGuest::default()
            };
            println!("ark:         {}", dir.join("ark.pem").display());
            println!("generation:  {}", p.generation().name().to_lowercase());
            println!(
                "chip_id:     {}",
                hex::encode(&p.chip_id()[..p.generation().chip_id_len()])
            );
            println!("measurement: {}", hex::encode(guest.measurement));
            println!("paravisor:   {}", hex::encode(paravisor_measurement()));
            Ok(())
        }
        SimCommand::AzureProvision { dir, tpm } => {
            let paravisor = SimParavisor::new(SimPlatform::load(&dir)?);
            let conn = UnixStream::connect(&tpm).map_err(|source| SimError::Io {
                path: tpm.clone(),
                source,
            })?;
            paravisor.provision(&mut Tpm::new(conn))?;
            println!("provisioned {} as a simulated Azure vTPM", tpm.display());
            Ok(())
        }
        SimCommand::Paravisor {
            dir,
            qemu_ctrl,
            swtpm_ctrl,
            listen,
            tpm,
        } => {
            let paravisor = Arc::new(SimParavisor::new(SimPlatform::load(&dir)?));
            let (listen_at, upstream) =
                match (qemu_ctrl, swtpm_ctrl, listen, tpm) {
                    (Some(q), Some(c), None, _) => (q, Upstream::QemuCtrl(c)),
                    (None, _, Some(l), Some(t)) => (l, Upstream::Data(t)),
                    _ => return Err(SimError::InvalidParams(
                        "give --qemu-ctrl SOCKET --swtpm-ctrl SOCKET, or --listen SOCKET --tpm \
                         SOCKET"
                            .into(),
                    )),
                };
            let io = |path: &PathBuf| {
                let path = path.clone();
                move |source| SimError::Io { path, source }
            };
            let listener = UnixListener::bind(&listen_at).map_err(io(&listen_at))?;
            eprintln!(
                "simulated Azure paravisor listening on {}",
                listen_at.display()
            );
            match upstream {
                Upstream::QemuCtrl(c) => {
                    relay::serve_qemu_ctrl(paravisor, &listener, &c).map_err(io(&c))
                }
                Upstream::Data(t) => {
                    relay::serve_socket(&paravisor, &listener, &t, &AtomicBool::new(false))
                        .map_err(io(&t))
                }
            }
        }
    }
}

/// What the paravisor sits in front of.
enum Upstream {
    /// swtpm's control socket (qemu).
    QemuCtrl(PathBuf),
    /// swtpm's data socket.
    Data(PathBuf),
}
