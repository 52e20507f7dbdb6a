//! `guest-unlock status`: whether SEV, SEV-ES and SEV-SNP are active (exit
//! 0 only when SEV-SNP is); with `--report`, a report from the configured
//! provider, decoded.

use std::path::{Path, PathBuf};

use clap::Args;
use guest_unlock::evidence::{open_provider_at_vmpl, ProviderConfig};
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
}

/// Runs `status`; returns the exit code.
pub fn run(args: StatusArgs) -> u8 {
    let mut st = detect::observe(Path::new("/"));
    if args.report {
        st.report = Some(report(&args));
    }
    if args.json {
        let mut v = serde_json::to_value(&st).unwrap_or_default();
        if let Some(obj) = v.as_object_mut() {
            obj.insert("snp_active".into(), serde_json::json!(st.snp_active()));
        }
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        for l in st.lines() {
            println!("{l}");
        }
    }
    if st.snp_active() {
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
