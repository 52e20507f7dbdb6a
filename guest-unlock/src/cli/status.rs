//! `guest-unlock status`: whether SEV, SEV-ES and SEV-SNP are active, and
//! whether this is an Azure confidential VM (exit 0 only when SEV-SNP is,
//! directly or behind Azure's paravisor); with `--report`, a report from
//! the configured provider, decoded; with `--pcrs`, the TPM's SHA-256 PCRs
//! and the policy entry that admits them.

use std::path::{Path, PathBuf};

use clap::Args;
use guest_unlock::azure_detect::{self as azure, PcrList};
use guest_unlock::evidence::{open_provider_at_vmpl, ProviderConfig, DEFAULT_TPM_DEVICE};
use guest_unlock::sev_detect::{self as detect, ReportError, ReportSummary};

use super::settings::boot_raw_config;
use super::{EXIT_FAILED, EXIT_GRANTED};

/// Arguments of `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Also obtain a test report from the configured evidence provider.
    #[arg(long)]
    pub report: bool,
    /// Guest configuration (for the evidence provider); default /etc/guest-unlock/config.toml.
    #[arg(long, value_name = "FILE", requires = "report")]
    pub config: Option<PathBuf>,
    /// Evidence provider (overrides the configuration).
    #[arg(long, value_name = "PROVIDER", requires = "report")]
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
    if args.report {
        st.report = Some(report(&args));
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
        }
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        for l in st.lines() {
            println!("{l}");
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
    if st.snp_active() && !pcrs_failed {
        EXIT_GRANTED
    } else {
        EXIT_FAILED
    }
}

fn report(args: &StatusArgs) -> Result<ReportSummary, ReportError> {
    let raw = boot_raw_config(args.config.as_ref(), args.evidence.as_ref())?;
    let evidence: ProviderConfig = raw.evidence.as_deref().unwrap_or_default().parse()?;
    let provider = open_provider_at_vmpl(&evidence, raw.vmpl.unwrap_or(0))?;
    detect::sample_report(provider.as_ref())
}
