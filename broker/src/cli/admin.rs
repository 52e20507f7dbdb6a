//! Volume and policy administration. Until the admin API exists these
//! commands open the store named in the config directly (SQLite allows a
//! running `broker serve` beside them); they never print key bytes.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;

use super::{ConfigArg, Outcome};
use crate::config::Config;
use crate::keys::{self, MasterKey, VolumeKey};
use crate::policy::Policy;
use crate::store::NewVolume;

/// `broker volume ...`
#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Enroll a volume: generate its first 64-byte key, sealed under the master key.
    Add {
        #[command(flatten)]
        config: ConfigArg,
        /// Volume name (what guests ask for): [A-Za-z0-9._-], at most 128 bytes.
        name: String,
        /// Name of the policy that guests must satisfy (see `broker policy set`).
        #[arg(long)]
        policy: String,
        /// Free-text description.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List enrolled volumes.
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a volume with its key versions and states (never key bytes).
    Show {
        #[command(flatten)]
        config: ConfigArg,
        /// Volume name.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `broker policy ...`
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Create or replace a policy from a TOML file (validated first).
    Set {
        #[command(flatten)]
        config: ConfigArg,
        /// Policy name.
        name: String,
        /// Policy file (TOML, `version = 1`).
        file: PathBuf,
    },
    /// Print a policy's TOML.
    Show {
        #[command(flatten)]
        config: ConfigArg,
        /// Policy name.
        name: String,
    },
    /// List policies.
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn open(config: &ConfigArg) -> anyhow::Result<(Config, std::sync::Arc<dyn crate::store::Store>)> {
    let cfg = Config::load(&config.config)?;
    let store = crate::assemble::store(&cfg)?;
    Ok((cfg, store))
}

/// Runs a volume command.
pub fn run_volume(cmd: VolumeCommand) -> anyhow::Result<Outcome> {
    match cmd {
        VolumeCommand::Add {
            config,
            name,
            policy,
            description,
        } => {
            keybroker_proto::VolumeId::new(name.as_str())
                .map_err(|e| anyhow::anyhow!("invalid volume name: {e}"))?;
            let (cfg, store) = open(&config)?;
            if store.get_policy(&policy)?.is_none() {
                eprintln!(
                    "broker: policy {policy:?} does not exist; create it first with `broker policy set {policy} FILE`"
                );
                return Ok(Outcome::Refused);
            }
            if store.get_volume(&name)?.is_some() {
                eprintln!(
                    "broker: volume {name:?} already exists; `broker volume show {name}` shows it"
                );
                return Ok(Outcome::Refused);
            }
            let master = MasterKey::load(&cfg.master_key).with_context(|| {
                format!("cannot load the master key {}", cfg.master_key.display())
            })?;
            let key = VolumeKey::generate();
            let sealed = keys::seal(&master, &name, 1, &key)?;
            store.create_volume(
                &NewVolume {
                    name: name.clone(),
                    policy: policy.clone(),
                    description,
                },
                &sealed,
            )?;
            println!("added volume {name} (policy {policy}, key version 1)");
            Ok(Outcome::Success)
        }
        VolumeCommand::List { config, json } => {
            let (_, store) = open(&config)?;
            let volumes = store.list_volumes()?;
            if json {
                let v: Vec<_> = volumes
                    .iter()
                    .map(|v| {
                        serde_json::json!({
                            "name": v.name, "policy": v.policy,
                            "enabled": v.enabled, "description": v.description,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for v in &volumes {
                    println!(
                        "{}\tpolicy={}\t{}\t{}",
                        v.name,
                        v.policy,
                        if v.enabled { "enabled" } else { "disabled" },
                        v.description
                    );
                }
            }
            Ok(Outcome::Success)
        }
        VolumeCommand::Show { config, name, json } => {
            let (_, store) = open(&config)?;
            let Some(v) = store.get_volume(&name)? else {
                eprintln!("broker: no volume named {name:?}; `broker volume list` shows the enrolled ones");
                return Ok(Outcome::Refused);
            };
            let versions = store.key_versions(&name)?;
            if json {
                let vs: Vec<_> = versions
                    .iter()
                    .map(|k| serde_json::json!({"version": k.version, "state": k.state.as_str(), "created_at": k.created_at}))
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "name": v.name, "policy": v.policy, "enabled": v.enabled,
                        "description": v.description, "key_versions": vs,
                    }))?
                );
            } else {
                println!("volume:      {}", v.name);
                println!("policy:      {}", v.policy);
                println!("enabled:     {}", v.enabled);
                println!("description: {}", v.description);
                for k in &versions {
                    println!("key version {}: {}", k.version, k.state.as_str());
                }
            }
            Ok(Outcome::Success)
        }
    }
}

/// Runs a policy command.
pub fn run_policy(cmd: PolicyCommand) -> anyhow::Result<Outcome> {
    match cmd {
        PolicyCommand::Set { config, name, file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read policy file {}", file.display()))?;
            if let Err(e) = Policy::from_toml(&text) {
                eprintln!("broker: {}: {e}", file.display());
                return Ok(Outcome::Refused);
            }
            let (_, store) = open(&config)?;
            let rev = store.put_policy(&name, &text)?;
            println!("policy {name} set (revision {rev})");
            Ok(Outcome::Success)
        }
        PolicyCommand::Show { config, name } => {
            let (_, store) = open(&config)?;
            match store.get_policy(&name)? {
                Some(p) => {
                    print!("{}", p.text);
                    Ok(Outcome::Success)
                }
                None => {
                    eprintln!("broker: no policy named {name:?}; `broker policy list` shows them");
                    Ok(Outcome::Refused)
                }
            }
        }
        PolicyCommand::List { config, json } => {
            let (_, store) = open(&config)?;
            let policies = store.list_policies()?;
            if json {
                let v: Vec<_> = policies
                    .iter()
                    .map(|p| serde_json::json!({"name": p.name, "revision": p.revision}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for p in &policies {
                    println!("{}\trevision={}", p.name, p.revision);
                }
            }
            Ok(Outcome::Success)
        }
    }
}
