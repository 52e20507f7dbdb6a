//! `broker pin`: the pin guests record for the broker's TLS key, as
//! `broker init` printed it: the configured certificate's, or that of a
//! certificate given with `--cert` (a new key, before the switch; see
//! docs/operations.md, "Changing the broker's TLS key").

use std::path::PathBuf;

use clap::{ArgGroup, Args};

use super::Outcome;
use broker::config::Config;

/// Arguments of `broker pin`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("source").required(true).multiple(true).args(["config", "cert"])))]
pub struct PinArgs {
    /// The broker's config file: prints the pin of its `tls_cert`.
    #[arg(long, short = 'c', env = "KEYBROKER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// A PEM certificate (chain): prints the pin of its first
    /// certificate's key (this wins over --config).
    #[arg(long, value_name = "FILE")]
    pub cert: Option<PathBuf>,
}

/// Prints `sha256:<hex>` on standard output.
pub fn run(args: PinArgs) -> anyhow::Result<Outcome> {
    let cert = match (&args.cert, &args.config) {
        (Some(c), _) => c.clone(),
        (None, Some(config)) => {
            let text = super::check_config::read_config_text(config)?;
            let base = config.parent().unwrap_or(std::path::Path::new("."));
            Config::parse(&text, config, base)?.tls_cert
        }
        (None, None) => unreachable!("clap requires --config or --cert"),
    };
    // The error names the file.
    let pin = broker::tls::pin_of_file(&cert)?;
    println!("{pin}");
    Ok(Outcome::Success)
}
