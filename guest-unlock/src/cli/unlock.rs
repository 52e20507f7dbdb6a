//! `guest-unlock unlock` and `guest-unlock rotate`: find the bound devices,
//! attest once per broker list, open (or check) each device, carry out any
//! key rotation; one human line and one event line per device.

use std::ffi::OsString;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use clap::Args;
use guest_unlock::config::{self, GuestConfig};
use guest_unlock::evidence::open_provider_at_vmpl;
use guest_unlock::flow::fetch_keys_session;
use guest_unlock::rotation::{Confirmer, SessionConfirmer, StepDone};
use guest_unlock::unlock::{
    self as u, FailureKind, Group, LockCause, Mode, Probe, StillLocked, Unlocked,
};
use keybroker_proto::VolumeIds;

use super::events;
use super::settings::boot_raw_config;
use super::{eprint_err, runtime, EXIT_FAILED, EXIT_GRANTED, EXIT_USAGE};

/// Arguments of `unlock`.
#[derive(Debug, Args)]
pub struct UnlockArgs {
    /// Devices to open.
    #[arg(value_name = "DEVICE", conflicts_with = "all")]
    pub devices: Vec<PathBuf>,
    /// Open every block device whose LUKS2 header has a sev-keybroker token.
    #[arg(long)]
    pub all: bool,
    /// Mapping name (one DEVICE only); default: crypttab's name, else luks-<UUID>.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Configuration, crypttab and timeout.
    #[command(flatten)]
    pub common: DeviceArgs,
    /// Attest and check that the keys open their keyslots; activate nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Settings shared by `unlock` and `rotate`.
#[derive(Debug, Args)]
pub struct DeviceArgs {
    /// Overall timeout of each attestation, in seconds (overrides the configuration).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// Per-connection timeout (TCP connect and TLS handshake), in seconds
    /// (overrides the configuration).
    #[arg(long, value_name = "SECS")]
    pub connect_timeout: Option<u64>,
    /// Guest configuration (evidence provider, time limits) [default:
    /// /etc/guest-unlock/config.toml].
    #[arg(long, short = 'c', env = "GUEST_UNLOCK_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Evidence provider (overrides the configuration).
    #[arg(long, value_name = "PROVIDER")]
    pub evidence: Option<String>,
    /// crypttab to take mapping names and options from (default /etc/crypttab).
    #[arg(long, value_name = "FILE")]
    pub crypttab: Option<PathBuf>,
}

/// Arguments of `rotate`.
#[derive(Debug, Args)]
pub struct RotateArgs {
    /// Devices (paths) or crypttab names; default: every block device with a sev-keybroker token.
    #[arg(value_name = "DEVICE|NAME")]
    pub targets: Vec<OsString>,
    /// Configuration, crypttab and timeout.
    #[command(flatten)]
    pub common: DeviceArgs,
}

/// Runs `unlock`; returns the exit code. Ends with the `done` event line.
pub fn run_unlock(args: UnlockArgs) -> u8 {
    if !args.all && args.devices.is_empty() {
        eprint_err("unlock needs --all or at least one DEVICE");
        return EXIT_USAGE;
    }
    if args.name.is_some() && (args.all || args.devices.len() != 1) {
        eprint_err("--name needs exactly one DEVICE");
        return EXIT_USAGE;
    }
    if let Some(n) = &args.name {
        if !u::valid_mapping_name(n) {
            eprint_err(format_args!("--name {n:?}: not a usable mapping name"));
            return EXIT_USAGE;
        }
    }
    let mode = if args.dry_run {
        Mode::CheckOnly
    } else {
        Mode::Activate
    };
    let selection = (!args.all).then(|| {
        args.devices
            .iter()
            .map(|d| d.as_os_str().to_owned())
            .collect()
    });
    let started = std::time::Instant::now();
    let (code, counts) = open_devices(&args.common, selection, args.name.as_deref(), mode);
    if let Some((unlocked, locked)) = counts {
        events::emit(&events::done(
            unlocked,
            locked,
            started.elapsed().as_secs_f64(),
        ));
    }
    code
}

/// Runs `rotate`; returns the exit code.
pub fn run_rotate(args: RotateArgs) -> u8 {
    let selection = (!args.targets.is_empty()).then(|| args.targets.clone());
    open_devices(&args.common, selection, None, Mode::Rotate).0
}

/// The command line's [`u::Progress`]: event lines as things happen, the
/// human line before a rotation, and (test builds) the crash points.
struct Console {
    mode: Mode,
    #[cfg(feature = "failpoints")]
    failpoint: super::failpoint::Failpoint,
}

impl u::Progress for Console {
    fn opened(&mut self, unlocked: &Unlocked) {
        if self.mode == Mode::Activate {
            events::emit(&events::unlocked(unlocked));
        }
    }

    fn rotation_starts(&mut self, unlocked: &Unlocked) {
        eprint_err(format_args!(
            "{} ({}) is open with keyslot {}, key version {}; key rotation follows",
            unlocked.volume,
            unlocked.device.display(),
            unlocked.keyslot.unwrap_or_default(),
            unlocked.key_version.unwrap_or_default()
        ));
    }

    fn rotation_step(&mut self, step: &StepDone) -> ControlFlow<()> {
        events::emit(&events::rotation(step));
        #[cfg(feature = "failpoints")]
        self.failpoint.after(step.step);
        ControlFlow::Continue(())
    }
}

/// A device that stays locked before any attestation. Its line names the
/// device once: a `DEVICE: ` prefix of `reason` is dropped.
fn not_attempted(volume: &str, device: PathBuf, reason: String, kind: FailureKind) -> StillLocked {
    let prefix = format!("{}: ", device.display());
    let reason = reason
        .strip_prefix(&prefix)
        .map(str::to_owned)
        .unwrap_or(reason);
    StillLocked {
        volume: volume.to_owned(),
        device,
        reason,
        cause: LockCause::Failed(kind),
    }
}

/// The crypttab's entries (its bad lines are warnings); none when it cannot
/// be read (a warning only when it was named).
fn read_crypttab(named: Option<&PathBuf>) -> Vec<u::CrypttabEntry> {
    let path = named
        .cloned()
        .unwrap_or_else(|| PathBuf::from(u::DEFAULT_CRYPTTAB));
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let (entries, errors) = u::parse_crypttab(&text);
            for e in errors {
                eprint_err(format_args!("warning: {}: {e}", path.display()));
            }
            entries
        }
        Err(e) => {
            if named.is_some() {
                eprint_err(format_args!(
                    "warning: cannot read {}: {e}; using default names",
                    path.display()
                ));
            }
            Vec::new()
        }
    }
}

/// `unlock` and `rotate`: `selection` is `None` for every bound block
/// device, else device paths (and, for `rotate`, crypttab names). Returns
/// the exit code and, once devices were looked at, how many are open and
/// how many stay locked.
fn open_devices(
    args: &DeviceArgs,
    selection: Option<Vec<OsString>>,
    name: Option<&str>,
    mode: Mode,
) -> (u8, Option<(usize, usize)>) {
    let all = selection.is_none();
    let mut raw = match boot_raw_config(args.config.as_ref(), args.evidence.as_ref()) {
        Ok(r) => r,
        Err(e) => {
            eprint_err(e);
            return (EXIT_USAGE, None);
        }
    };
    if args.timeout.is_some() {
        raw.timeout_secs = args.timeout;
    }
    if args.connect_timeout.is_some() {
        raw.connect_timeout_secs = args.connect_timeout;
    }
    // Everything but the brokers and pins, which come from the tokens.
    let settings = match config::resolve_settings(&raw) {
        Ok(s) => s,
        Err(e) => {
            eprint_err(e);
            return (EXIT_USAGE, None);
        }
    };
    let crypttab = read_crypttab(args.crypttab.as_ref());

    let mut locked: Vec<StillLocked> = Vec::new();
    let mut targets = Vec::new();
    let candidates = match &selection {
        None => u::scan_block_devices(Path::new(u::SYS_CLASS_BLOCK)),
        Some(items) => {
            let mut out = Vec::new();
            for item in items {
                // `unlock` takes device paths only, as it always did.
                let found = if mode == Mode::Rotate {
                    u::device_for(item, &crypttab, &u::resolve_spec)
                } else {
                    Ok(PathBuf::from(item))
                };
                match found {
                    Ok(p) => out.push(p),
                    Err(e) => locked.push(not_attempted(
                        "?",
                        PathBuf::from(item),
                        e.to_string(),
                        FailureKind::NotFound,
                    )),
                }
            }
            out
        }
    };
    for dev in candidates {
        match u::probe(&dev) {
            Probe::Bound(t) => targets.push(t),
            Probe::NotLuks2(e) if !all => {
                let kind = if e.errno() == Some(libc::ENOENT) {
                    FailureKind::NotFound
                } else {
                    FailureKind::NotLuks2
                };
                locked.push(not_attempted("?", dev, e.to_string(), kind))
            }
            Probe::NoToken if !all => locked.push(not_attempted(
                "?",
                dev,
                "no sev-keybroker token: bind it first with `guest-unlock bind`".into(),
                FailureKind::NoToken,
            )),
            Probe::NotLuks2(_) | Probe::NoToken => {}
            Probe::Invalid(e) => locked.push(not_attempted(
                "?",
                dev,
                e.to_string(),
                FailureKind::InvalidToken,
            )),
        }
    }
    u::name_targets(&mut targets, name, &crypttab, &u::resolve_spec);
    if targets.is_empty() && locked.is_empty() {
        eprint_err("no LUKS2 device bound to a broker was found");
        return (EXIT_GRANTED, Some((0, 0)));
    }
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return (code, None),
    };
    let provider = if targets.is_empty() {
        None
    } else {
        match open_provider_at_vmpl(&settings.evidence, settings.vmpl) {
            Ok(p) => Some(p),
            Err(e) => {
                for t in &targets {
                    locked.push(not_attempted(
                        &t.volumes(),
                        t.device.clone(),
                        format!("evidence provider {}: {e}", settings.evidence),
                        FailureKind::Evidence,
                    ));
                }
                targets.clear();
                None
            }
        }
    };
    let rt = &rt;
    let mut console = Console {
        mode,
        #[cfg(feature = "failpoints")]
        failpoint: super::failpoint::Failpoint::from_process(),
    };
    let fetch = &mut |group: &Group, ids: &VolumeIds| {
        let cfg = GuestConfig::new(group.brokers.clone(), group.pins.clone(), &settings)?;
        let provider = provider.as_ref().expect("targets imply a provider");
        let (outcome, session) = rt.block_on(fetch_keys_session(&cfg, provider.as_ref(), ids))?;
        let confirmer = match (mode, session) {
            (Mode::CheckOnly, _) | (_, None) => None,
            (_, Some(s)) => Some(Box::new(SessionConfirmer::new(rt, s)) as Box<dyn Confirmer + '_>),
        };
        Ok(u::Fetched { outcome, confirmer })
    };
    let report = u::unlock_targets(&targets, mode, fetch, &mut console);
    let verb = match mode {
        Mode::Activate => "unlocked",
        Mode::CheckOnly | Mode::Rotate => "checked",
    };
    for ok in &report.unlocked {
        match (ok.keyslot, ok.key_version) {
            (Some(slot), Some(v)) => println!(
                "{verb} {} ({}) as {}, keyslot {slot}, key version {v}",
                ok.volume,
                ok.device.display(),
                ok.name
            ),
            _ => println!(
                "already active: {} ({}) as {}",
                ok.volume,
                ok.device.display(),
                ok.name
            ),
        }
    }
    let mut rotation_failed = false;
    for n in &report.rotation {
        if n.ok {
            println!("rotated {n}");
        } else {
            rotation_failed = true;
            eprint_err(n);
        }
    }
    locked.extend(report.locked);
    for l in &locked {
        eprint_err(l);
        events::emit(&events::locked(l));
    }
    let counts = Some((report.unlocked.len(), locked.len()));
    // A rotation that did not complete never fails an unlock (the volume
    // is open); it fails `rotate`.
    if locked.is_empty() && !(mode == Mode::Rotate && rotation_failed) {
        (EXIT_GRANTED, counts)
    } else {
        (EXIT_FAILED, counts)
    }
}
