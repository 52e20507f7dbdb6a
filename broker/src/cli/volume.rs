//! `broker volume ...`: enrolled volumes and their key rotation, through the
//! broker's admin API (`keybroker.admin.v1`, see [`broker::admin`]): these
//! commands need a running `broker serve` and never open the store
//! themselves. They never print key bytes.

use clap::Subcommand;
use keybroker_proto::admin_pb as pb;

use super::admin_conn::AdminConn;
use super::Outcome;

/// `broker volume ...`
#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Enroll a volume: the broker generates its first 64-byte key, sealed under the master key.
    Add {
        #[command(flatten)]
        conn: AdminConn,
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
        conn: AdminConn,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a volume with its key versions and states (never key bytes).
    Show {
        #[command(flatten)]
        conn: AdminConn,
        /// Volume name.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop releasing a volume's key (from the next attestation on).
    Disable {
        #[command(flatten)]
        conn: AdminConn,
        /// Volume name.
        name: String,
    },
    /// Release a disabled volume's key again.
    Enable {
        #[command(flatten)]
        conn: AdminConn,
        /// Volume name.
        name: String,
    },
    /// Start a rotation of a volume's key: a new key version is created as
    /// pending and released beside the current one; it becomes current when
    /// the guest proves it enrolled it (at its next unlock, or
    /// `guest-unlock rotate` in the guest).
    Rotate {
        #[command(flatten)]
        conn: AdminConn,
        /// Volume name.
        name: String,
    },
    /// Abandon a volume's pending rotation: the pending key version is
    /// deleted, the current one keeps opening the volume.
    CancelRotation {
        #[command(flatten)]
        conn: AdminConn,
        /// Volume name.
        name: String,
    },
    /// Destroy retired key versions kept longer than the retention (the
    /// broker's `[keys] retired_retention_days`, or --older-than-days), for
    /// good: a header backup that only they open stops opening.
    PurgeRetired {
        #[command(flatten)]
        conn: AdminConn,
        /// Only this volume [default: every volume].
        name: Option<String>,
        /// Destroy versions retired more than N days ago [default: the
        /// broker's `[keys] retired_retention_days`].
        #[arg(long, value_name = "N")]
        older_than_days: Option<u32>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a disabled volume and every key version it has, for good:
    /// disks that only this broker can open stay locked forever.
    Delete {
        #[command(flatten)]
        conn: AdminConn,
        /// Volume name.
        name: String,
        /// Confirm the deletion.
        #[arg(long)]
        yes: bool,
    },
}

/// A key version number, `null` for 0 (none).
pub(super) fn opt_version(v: u32) -> serde_json::Value {
    if v == 0 {
        serde_json::Value::Null
    } else {
        v.into()
    }
}

fn volume_json(v: &pb::Volume) -> serde_json::Value {
    serde_json::json!({
        "name": v.name, "policy": v.policy,
        "enabled": v.enabled, "description": v.description,
    })
}

/// The rotation fields of a volume from VolumeList or VolumeShow.
fn rotation_json(v: &pb::Volume) -> serde_json::Value {
    serde_json::json!({
        "current_version": opt_version(v.current_version),
        "pending_version": opt_version(v.pending_version),
        "retired_versions": v.retired_versions,
        "state": v.rotation_state,
    })
}

/// The `volume list` column: `none`, or `pending-vN`.
fn rotation_column(v: &pb::Volume) -> String {
    if v.pending_version != 0 {
        format!("pending-v{}", v.pending_version)
    } else {
        "none".into()
    }
}

/// Runs a volume command.
pub fn run_volume(cmd: VolumeCommand) -> anyhow::Result<Outcome> {
    match cmd {
        VolumeCommand::Add {
            conn,
            name,
            policy,
            description,
        } => {
            let s = conn.connect()?;
            let req = pb::VolumeAddRequest {
                name: name.clone(),
                policy: policy.clone(),
                description,
            };
            let Some(r) = s.run(s.client().volume_add(req))? else {
                return Ok(Outcome::Refused);
            };
            println!(
                "added volume {name} (policy {policy}, key version {})",
                r.key_version
            );
            Ok(Outcome::Success)
        }
        VolumeCommand::List { conn, json } => {
            let s = conn.connect()?;
            let Some(r) = s.run(s.client().volume_list(pb::VolumeListRequest {}))? else {
                return Ok(Outcome::Refused);
            };
            if json {
                let v: Vec<_> = r
                    .volumes
                    .iter()
                    .map(|v| {
                        let mut out = volume_json(v);
                        out["rotation"] = rotation_json(v);
                        out
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for v in &r.volumes {
                    println!(
                        "{}\tpolicy={}\t{}\trotation={}\t{}",
                        v.name,
                        v.policy,
                        if v.enabled { "enabled" } else { "disabled" },
                        rotation_column(v),
                        v.description
                    );
                }
            }
            Ok(Outcome::Success)
        }
        VolumeCommand::Show { conn, name, json } => {
            let s = conn.connect()?;
            let req = pb::VolumeShowRequest { name };
            let Some(r) = s.run(s.client().volume_show(req))? else {
                return Ok(Outcome::Refused);
            };
            let v = r.volume.unwrap_or_default();
            if json {
                let vs: Vec<_> = r
                    .key_versions
                    .iter()
                    .map(|k| {
                        serde_json::json!({
                            "version": k.version, "state": k.state,
                            "created_at": k.created_at, "retired_at": k.retired_at,
                        })
                    })
                    .collect();
                let mut out = volume_json(&v);
                out["key_versions"] = serde_json::Value::Array(vs);
                out["rotation"] = rotation_json(&v);
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                println!("volume:      {}", v.name);
                println!("policy:      {}", v.policy);
                println!("enabled:     {}", v.enabled);
                println!("description: {}", v.description);
                println!("rotation:    {}", v.rotation_state);
                for k in &r.key_versions {
                    match k.retired_at {
                        Some(at) => println!(
                            "key version {}: {} (retired {})",
                            k.version,
                            k.state,
                            super::audit::rfc3339(at)
                        ),
                        None => println!("key version {}: {}", k.version, k.state),
                    }
                }
            }
            Ok(Outcome::Success)
        }
        VolumeCommand::Rotate { conn, name } => {
            let s = conn.connect()?;
            let req = pb::VolumeRotateRequest { name: name.clone() };
            let Some(r) = s.run(s.client().volume_rotate(req))? else {
                return Ok(Outcome::Refused);
            };
            match r.current_version {
                0 => println!(
                    "volume {name}: key version {} is pending",
                    r.pending_version
                ),
                c => println!(
                    "volume {name}: key version {} is pending (current v{c})",
                    r.pending_version
                ),
            }
            println!("{}", r.message);
            Ok(Outcome::Success)
        }
        VolumeCommand::CancelRotation { conn, name } => {
            let s = conn.connect()?;
            let req = pb::VolumeCancelRotationRequest { name: name.clone() };
            let Some(r) = s.run(s.client().volume_cancel_rotation(req))? else {
                return Ok(Outcome::Refused);
            };
            println!(
                "volume {name}: rotation cancelled; pending key version {v} deleted (the current \
                 version is unchanged; {v} is never reused)",
                v = r.cancelled_version
            );
            Ok(Outcome::Success)
        }
        VolumeCommand::PurgeRetired {
            conn,
            name,
            older_than_days,
            json,
        } => {
            let s = conn.connect()?;
            let req = pb::VolumePurgeRetiredRequest {
                name: name.clone(),
                older_than_days,
            };
            let Some(r) = s.run(s.client().volume_purge_retired(req))? else {
                return Ok(Outcome::Refused);
            };
            if json {
                let purged: Vec<_> = r
                    .purged
                    .iter()
                    .map(|p| {
                        serde_json::json!({
                            "volume": p.volume, "version": p.version, "retired_at": p.retired_at,
                        })
                    })
                    .collect();
                let out = serde_json::json!({
                    "older_than_days": r.older_than_days,
                    "purged": purged,
                });
                println!("{}", serde_json::to_string_pretty(&out)?);
                return Ok(Outcome::Success);
            }
            let scope = match &name {
                Some(n) => format!(" of volume {n}"),
                None => String::new(),
            };
            if r.purged.is_empty() {
                println!(
                    "no retired key version{scope} retired more than {} days ago; nothing purged",
                    r.older_than_days
                );
            } else {
                for p in &r.purged {
                    println!(
                        "purged {} key version {} (retired {})",
                        p.volume,
                        p.version,
                        super::audit::rfc3339(p.retired_at)
                    );
                }
                println!(
                    "{} retired key version{} destroyed (retired more than {} days ago)",
                    r.purged.len(),
                    if r.purged.len() == 1 { "" } else { "s" },
                    r.older_than_days
                );
            }
            Ok(Outcome::Success)
        }
        VolumeCommand::Disable { conn, name } => set_enabled(&conn, name, false),
        VolumeCommand::Enable { conn, name } => set_enabled(&conn, name, true),
        VolumeCommand::Delete { conn, name, yes } => {
            if !yes {
                eprintln!(
                    "broker: `volume delete` destroys every key version of {name:?}: a disk that \
                     only this broker can open stays locked forever. Re-run with --yes to delete it."
                );
                return Ok(Outcome::Usage);
            }
            let s = conn.connect()?;
            let req = pb::VolumeDeleteRequest { name: name.clone() };
            if s.run(s.client().volume_delete(req))?.is_none() {
                return Ok(Outcome::Refused);
            }
            println!("deleted volume {name} and all its key versions");
            Ok(Outcome::Success)
        }
    }
}

fn set_enabled(conn: &AdminConn, name: String, enabled: bool) -> anyhow::Result<Outcome> {
    let s = conn.connect()?;
    let req = pb::VolumeSetEnabledRequest {
        name: name.clone(),
        enabled,
    };
    let Some(r) = s.run(s.client().volume_set_enabled(req))? else {
        return Ok(Outcome::Refused);
    };
    let state = if enabled { "enabled" } else { "disabled" };
    if r.changed {
        if enabled {
            println!("volume {name} enabled");
        } else {
            println!("volume {name} disabled: no guest receives its key from now on");
        }
    } else {
        println!("volume {name} was already {state}");
    }
    Ok(Outcome::Success)
}
