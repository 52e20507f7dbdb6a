//! `guest-unlock status`: whether SEV, SEV-ES and SEV-SNP are active, and
//! whether this is an Azure confidential VM (exit 0 only when SEV-SNP is,
//! directly or behind Azure's paravisor); with `--report`, a report from
//! the configured provider, decoded; with `--report-out FILE`, that report
//! saved with its certificate table for `broker report verify` and `broker
//! explain`; with `--pcrs`, the TPM's SHA-256 PCRs and the policy entry
//! that admits them.

use std::path::{Path, PathBuf};

use clap::Args;
use guest_unlock::azure_detect::{self as azure, PcrList};
use guest_unlock::evidence::{open_provider_at_vmpl, Evidence, ProviderConfig, DEFAULT_TPM_DEVICE};
use guest_unlock::sev_detect::{self as detect, ReportError};
use serde::Serialize;

use super::settings::boot_raw_config;
use super::{eprint_err, EXIT_FAILED, EXIT_GRANTED};

/// Arguments of `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Also obtain a test report from the configured evidence provider.
    #[arg(long)]
    pub report: bool,
    /// Obtain a report (as --report does) and save it to FILE, with the
    /// platform's certificate table in FILE.certs when it gives one, for
    /// `broker report verify FILE --cert-table FILE.certs` and `broker
    /// explain --report FILE --cert-table FILE.certs` (bare SEV-SNP evidence).
    #[arg(long, value_name = "FILE")]
    pub report_out: Option<PathBuf>,
    /// Guest configuration (for the evidence provider) [default:
    /// /etc/guest-unlock/config.toml].
    #[arg(long, short = 'c', env = "GUEST_UNLOCK_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Evidence provider (overrides the configuration).
    #[arg(long, value_name = "PROVIDER")]
    pub evidence: Option<String>,
    /// Also print the TPM's SHA-256 PCRs (0-9 unless LIST, e.g. 0-23 or
    /// 0,2,4-7) and the `[[vtpm.pcr_sets]]` entry of a broker policy that
    /// admits them: run it on a reference VM of your image.
    #[arg(long, value_name = "LIST", num_args = 0..=1, require_equals = true,
          default_missing_value = "0-9")]
    pub pcrs: Option<PcrList>,
    /// The TPM to read the PCRs from.
    #[arg(long, value_name = "DEVICE", default_value = DEFAULT_TPM_DEVICE, requires = "pcrs")]
    pub tpm: PathBuf,
}

/// Runs `status`; returns the exit code.
pub fn run(args: StatusArgs) -> u8 {
    let mut st = detect::observe(Path::new("/"));
    let mut saved = None;
    if args.report || args.report_out.is_some() {
        match evidence(&args) {
            Ok(ev) => {
                st.report = Some(detect::summarize_evidence(&ev));
                saved = args.report_out.as_ref().map(|path| save(path, &ev));
            }
            Err(e) => {
                if args.report_out.is_some() {
                    saved = Some(Err(
                        "--report-out: nothing saved, no report was obtained (see `report:`)"
                            .to_owned(),
                    ));
                }
                st.report = Some(Err(e));
            }
        }
    }
    let pcrs = args
        .pcrs
        .as_ref()
        .map(|list| azure::read_pcrs(&args.tpm, list));
    if args.json {
        let mut v = serde_json::to_value(&st).unwrap_or_default();
        if let Some(obj) = v.as_object_mut() {
            obj.insert("snp_active".into(), serde_json::json!(st.snp_active()));
            if let Some(p) = &pcrs {
                obj.insert(
                    "pcrs".into(),
                    match p {
                        Ok(m) => serde_json::json!({"Ok": m
                            .iter()
                            .map(|(i, d)| (i.to_string(), serde_json::json!(hex::encode(d))))
                            .collect::<serde_json::Map<_, _>>()}),
                        Err(e) => serde_json::json!({ "Err": e }),
                    },
                );
            }
            if let Some(Ok(files)) = &saved {
                obj.insert("report_out".into(), serde_json::json!(files));
            }
        }
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        for l in st.lines() {
            println!("{l}");
        }
        if let Some(Ok(files)) = &saved {
            for l in files.lines() {
                println!("{l}");
            }
        }
        match &pcrs {
            None => {}
            Some(Err(e)) => println!("PCRs: unavailable: {e}"),
            Some(Ok(m)) => {
                println!("PCRs (SHA-256, {}):", args.tpm.display());
                for (i, d) in m {
                    println!("  pcr{i:02}: {}", hex::encode(d));
                }
                println!(
                    "# For the broker's policy: admits this image (docs/operations.md, \"Azure \
                     confidential VMs\"):"
                );
                print!("{}", azure::policy_snippet(m));
            }
        }
    }
    let pcrs_failed = matches!(pcrs, Some(Err(_)));
    let save_failed = match &saved {
        Some(Err(e)) => {
            eprint_err(e);
            true
        }
        _ => false,
    };
    if st.snp_active() && !pcrs_failed && !save_failed {
        EXIT_GRANTED
    } else {
        EXIT_FAILED
    }
}

/// Evidence from the configured provider, with the fixed REPORT_DATA of
/// `status`.
fn evidence(args: &StatusArgs) -> Result<Evidence, ReportError> {
    let raw = boot_raw_config(args.config.as_ref(), args.evidence.as_ref())?;
    let evidence: ProviderConfig = raw.evidence.as_deref().unwrap_or_default().parse()?;
    let provider = open_provider_at_vmpl(&evidence, raw.vmpl.unwrap_or(0))?;
    detect::sample_evidence(provider.as_ref())
}

/// What `--report-out` wrote.
#[derive(Debug, Serialize)]
struct Saved {
    /// The report.
    report: PathBuf,
    /// The certificate table, when the platform gave one.
    cert_table: Option<PathBuf>,
    /// The REPORT_DATA it carries, hex (for `--report-data`).
    report_data: String,
}

impl Saved {
    /// The lines `status` prints: what was saved, and how to check it.
    fn lines(&self) -> Vec<String> {
        let mut v = vec![format!("report saved: {}", self.report.display())];
        let mut verify = format!("broker report verify {}", self.report.display());
        if let Some(t) = &self.cert_table {
            v.push(format!("certificate table saved: {}", t.display()));
            verify.push_str(&format!(" --cert-table {}", t.display()));
        }
        v.push(format!(
            "check it with: {verify} --report-data {} [--policy FILE]",
            self.report_data
        ));
        v
    }
}

/// Saves bare SNP evidence: the report to `path`, the certificate table
/// (if any) beside it in `path.certs`.
fn save(path: &Path, ev: &Evidence) -> Result<Saved, String> {
    let Some(snp) = ev.snp() else {
        return Err(format!(
            "--report-out {}: this provider gives Azure vTPM evidence, which needs the VCEK from \
             outside the guest; save bare SEV-SNP evidence (sev-guest or configfs-tsm) instead",
            path.display()
        ));
    };
    let write = |p: &Path, bytes: &[u8]| {
        std::fs::write(p, bytes)
            .map_err(|e| format!("--report-out: cannot write {}: {e}", p.display()))
    };
    write(path, &snp.report)?;
    let cert_table = if snp.cert_table.is_empty() {
        None
    } else {
        let mut name = path.as_os_str().to_owned();
        name.push(".certs");
        let t = PathBuf::from(name);
        write(&t, &snp.cert_table)?;
        Some(t)
    };
    Ok(Saved {
        report: path.to_owned(),
        cert_table,
        report_data: hex::encode(detect::status_report_data()),
    })
}
