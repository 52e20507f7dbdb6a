//! `guest-unlock sim-platform` (test builds only, cargo feature `sim`):
//! create and describe a simulated SEV-SNP platform for tests and demos. A
//! broker trusts it only when its config names the platform's `ark.pem`
//! under `[attestation.simulated]`.

use std::path::PathBuf;

use clap::Subcommand;

use keybroker_sim::{Generation, SimError, SimGuest, SimParams, SimPlatform, GUEST_FILE};

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
    /// the ARK path, generation, and the guest's launch measurement.
    Show {
        /// The platform's directory.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
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
            Ok(())
        }
    }
}
