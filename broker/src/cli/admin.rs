//! Volume, policy and key lifecycle administration through the broker's
//! admin API (`keybroker.admin.v1`, see [`broker::admin`]): these commands
//! need a running `broker serve` and never open the store themselves. They
//! never print key bytes.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Subcommand;
use keybroker_proto::admin_pb as pb;

use super::admin_client::{AdminConn, Session};
use super::Outcome;
use broker::policy::Policy;

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

/// `broker policy ...`
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Create or replace a policy from a TOML file (validated here and by the broker).
    Set {
        #[command(flatten)]
        conn: AdminConn,
        /// Policy name.
        name: String,
        /// Policy file (TOML, `version = 1`).
        file: PathBuf,
    },
    /// Print a policy's TOML.
    Show {
        #[command(flatten)]
        conn: AdminConn,
        /// Policy name.
        name: String,
    },
    /// List policies.
    List {
        #[command(flatten)]
        conn: AdminConn,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Unified diff of the stored policy against a file: exit 0 when they
    /// are the same, 1 when they differ, 2 on trouble (like diff(1)).
    Diff {
        #[command(flatten)]
        conn: AdminConn,
        /// Policy name.
        name: String,
        /// Policy file.
        file: PathBuf,
    },
    /// Allow a launch measurement (96 hex characters) in a policy: a new revision.
    AllowMeasurement {
        #[command(flatten)]
        conn: AdminConn,
        /// Policy name.
        name: String,
        /// The 48-byte measurement in hex (as `broker measure` prints it).
        hex: String,
    },
    /// Remove a launch measurement from a policy: a new revision.
    RevokeMeasurement {
        #[command(flatten)]
        conn: AdminConn,
        /// Policy name.
        name: String,
        /// The 48-byte measurement in hex.
        hex: String,
    },
    /// Refuse a chip (its 64-byte chip id in hex) under a policy: a new revision.
    BlockChip {
        #[command(flatten)]
        conn: AdminConn,
        /// Policy name.
        name: String,
        /// The 64-byte chip id in hex (16 hex characters: a Turin chip id).
        hex: String,
    },
    /// Remove a chip from a policy's `blocked_chip_ids`: a new revision.
    UnblockChip {
        #[command(flatten)]
        conn: AdminConn,
        /// Policy name.
        name: String,
        /// The chip id in hex.
        hex: String,
    },
}

/// `broker rotate-master`.
#[derive(Debug, clap::Args)]
pub struct RotateMasterArgs {
    #[command(flatten)]
    conn: AdminConn,
    /// Key versions re-sealed per transaction (at least 1).
    #[arg(long, value_name = "N", default_value_t = 500, value_parser = parse_batch)]
    batch: u32,
}

fn parse_batch(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(0) => Err("must be at least 1 (key versions re-sealed per transaction)".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!(
            "{e}; give a number of key versions per transaction, e.g. 500"
        )),
    }
}

/// `broker status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    conn: AdminConn,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// `YYYY-MM-DDTHH:MM:SSZ`.
fn rfc3339(unix: i64) -> String {
    super::audit::rfc3339(unix)
}

fn opt_version(v: u32) -> serde_json::Value {
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
                            rfc3339(at)
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
                        rfc3339(p.retired_at)
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

/// Runs `broker rotate-master`: progress on stderr, the result on stdout.
pub fn run_rotate_master(a: RotateMasterArgs) -> anyhow::Result<Outcome> {
    use pb::rotate_master_progress::Event;
    let s = a.conn.connect()?;
    let req = pb::RotateMasterRequest {
        batch_size: a.batch,
    };
    let mut done = None;
    let streamed = s
        .stream(s.client().rotate_master(req), |m| match m.event {
            Some(Event::Batch(b)) => eprintln!(
                "re-sealed {}/{} key versions (batch {}: {} in {} ms)",
                b.resealed_total, b.total, b.batch, b.resealed, b.elapsed_ms
            ),
            Some(Event::Done(d)) => done = Some(d),
            None => {}
        })
        .map_err(|e| {
            e.context(
                "the master key rotation may have stopped halfway, which is safe: run \
                 `broker rotate-master` again to finish it (`broker status` shows where it stands)",
            )
        })?;
    if streamed.is_none() {
        return Ok(Outcome::Refused);
    }
    let Some(d) = done else {
        anyhow::bail!(
            "the broker ended the stream before the master key rotation finished; run \
             `broker rotate-master` again to finish it (safe: it continues where it stopped)"
        );
    };
    let kept = if d.retired_file.is_empty() {
        String::new()
    } else {
        format!(
            "; the old key is kept in {} until you remove it (once no database backup from \
             before now needs it)",
            d.retired_file
        )
    };
    println!(
        "master key rotated: {} -> {}, {} key version{} re-sealed in {} batch{} ({} ms){kept}",
        d.old_master_key_id,
        d.new_master_key_id,
        d.resealed,
        if d.resealed == 1 { "" } else { "s" },
        d.batches,
        if d.batches == 1 { "" } else { "es" },
        d.elapsed_ms
    );
    Ok(Outcome::Success)
}

/// Runs `broker status`.
pub fn run_status(a: StatusArgs) -> anyhow::Result<Outcome> {
    let s = a.conn.connect()?;
    let Some(r) = s.run(s.client().status(pb::StatusRequest {}))? else {
        return Ok(Outcome::Refused);
    };
    if a.json {
        let out = serde_json::json!({
            "master_key_id": r.master_key_id,
            "master_key_generation": r.master_key_generation,
            "next_master_key_id": r.next_master_key_id,
            "master_rotation_under_way": r.master_rotation_under_way,
            "master_keys": r.master_keys.iter().map(|k| serde_json::json!({
                "id": k.id, "role": k.role, "records": k.records, "retired": k.retired,
            })).collect::<Vec<_>>(),
            "pending_rotations": r.pending_rotations.iter().map(|p| serde_json::json!({
                "volume": p.volume, "pending_version": p.pending_version,
                "current_version": opt_version(p.current_version), "since": p.since,
            })).collect::<Vec<_>>(),
            "retired_versions": r.retired_versions.iter().map(|v| serde_json::json!({
                "volume": v.volume, "version": v.version,
                "retired_at": v.retired_at, "kept_until": v.kept_until,
            })).collect::<Vec<_>>(),
            "retired_retention_days": r.retired_retention_days,
            "listeners": r.listeners.iter().map(|l| serde_json::json!({
                "kind": l.kind, "address": l.address,
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(Outcome::Success);
    }
    println!(
        "master key:      {} (generation {})",
        r.master_key_id, r.master_key_generation
    );
    match &r.next_master_key_id {
        Some(n) => {
            println!("master rotation: UNDER WAY to {n}; run `broker rotate-master` to finish it")
        }
        None => println!("master rotation: none under way"),
    }
    println!("master keys:");
    for k in &r.master_keys {
        let role = match k.role.as_str() {
            "not-loaded" => "NOT LOADED (its records cannot be unsealed)",
            other => other,
        };
        println!(
            "  {}  {role}: {} record{} ({} retired)",
            k.id,
            k.records,
            if k.records == 1 { "" } else { "s" },
            k.retired
        );
    }
    if r.pending_rotations.is_empty() {
        println!("pending volume rotations: none");
    } else {
        println!("pending volume rotations (awaiting the guest's proof):");
        for p in &r.pending_rotations {
            let current = match p.current_version {
                0 => String::new(),
                c => format!(", current v{c}"),
            };
            println!(
                "  {}  v{} since {}{current}",
                p.volume,
                p.pending_version,
                rfc3339(p.since)
            );
        }
    }
    if r.retired_versions.is_empty() {
        println!(
            "retired key versions: none (kept {} days before `broker volume purge-retired` \
             destroys them)",
            r.retired_retention_days
        );
    } else {
        println!(
            "retired key versions (kept {} days, then `broker volume purge-retired` destroys them):",
            r.retired_retention_days
        );
        for v in &r.retired_versions {
            println!(
                "  {}  v{} retired {}, kept until {}",
                v.volume,
                v.version,
                rfc3339(v.retired_at),
                broker::lifecycle::date(v.kept_until)
            );
        }
    }
    if r.listeners.is_empty() {
        println!("listeners: not reported by this broker");
    } else {
        println!("listeners:");
        for l in &r.listeners {
            println!("  {:<11} {}", l.kind, l.address);
        }
    }
    Ok(Outcome::Success)
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

fn read_policy_file(file: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(file)
        .with_context(|| format!("cannot read policy file {}", file.display()))
}

/// Runs a policy command.
pub fn run_policy(cmd: PolicyCommand) -> anyhow::Result<Outcome> {
    match cmd {
        PolicyCommand::Set { conn, name, file } => {
            let text = read_policy_file(&file)?;
            // Checked here first so the message names the file; the broker checks again.
            if let Err(e) = Policy::from_toml(&text) {
                eprintln!("broker: {}: {e}", file.display());
                return Ok(Outcome::Refused);
            }
            let s = conn.connect()?;
            let req = pb::PolicySetRequest {
                name: name.clone(),
                text,
            };
            let Some(r) = s.run(s.client().policy_set(req))? else {
                return Ok(Outcome::Refused);
            };
            println!("policy {name} set (revision {})", r.revision);
            Ok(Outcome::Success)
        }
        PolicyCommand::Show { conn, name } => {
            let s = conn.connect()?;
            let Some(r) = s.run(s.client().policy_get(pb::PolicyGetRequest { name }))? else {
                return Ok(Outcome::Refused);
            };
            print!("{}", r.policy.unwrap_or_default().text);
            Ok(Outcome::Success)
        }
        PolicyCommand::List { conn, json } => {
            let s = conn.connect()?;
            let Some(r) = s.run(s.client().policy_list(pb::PolicyListRequest {}))? else {
                return Ok(Outcome::Refused);
            };
            if json {
                let v: Vec<_> = r
                    .policies
                    .iter()
                    .map(|p| serde_json::json!({"name": p.name, "revision": p.revision}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for p in &r.policies {
                    println!("{}\trevision={}", p.name, p.revision);
                }
            }
            Ok(Outcome::Success)
        }
        PolicyCommand::Diff { conn, name, file } => diff(&conn, &name, &file),
        PolicyCommand::AllowMeasurement { conn, name, hex } => {
            edit(&conn, name, hex, Edit::AllowMeasurement)
        }
        PolicyCommand::RevokeMeasurement { conn, name, hex } => {
            edit(&conn, name, hex, Edit::RevokeMeasurement)
        }
        PolicyCommand::BlockChip { conn, name, hex } => edit(&conn, name, hex, Edit::BlockChip),
        PolicyCommand::UnblockChip { conn, name, hex } => edit(&conn, name, hex, Edit::UnblockChip),
    }
}

#[derive(Clone, Copy)]
enum Edit {
    AllowMeasurement,
    RevokeMeasurement,
    BlockChip,
    UnblockChip,
}

fn edit(conn: &AdminConn, name: String, hex: String, which: Edit) -> anyhow::Result<Outcome> {
    let s: Session = conn.connect()?;
    let req = pb::PolicyListEditRequest {
        name: name.clone(),
        value: hex.clone(),
    };
    let mut c = s.client();
    let r = match which {
        Edit::AllowMeasurement => s.run(c.allow_measurement(req))?,
        Edit::RevokeMeasurement => s.run(c.revoke_measurement(req))?,
        Edit::BlockChip => s.run(c.block_chip(req))?,
        Edit::UnblockChip => s.run(c.unblock_chip(req))?,
    };
    let Some(r) = r else {
        return Ok(Outcome::Refused);
    };
    let hex = hex.trim().to_ascii_lowercase();
    let (what, done, already) = match which {
        Edit::AllowMeasurement => ("measurement", "allowed", "already allowed"),
        Edit::RevokeMeasurement => ("measurement", "revoked", "not allowed"),
        Edit::BlockChip => ("chip", "blocked", "already blocked"),
        Edit::UnblockChip => ("chip", "unblocked", "not blocked"),
    };
    if r.changed {
        println!(
            "policy {name}: {what} {hex} {done} (revision {})",
            r.revision
        );
        if r.reformatted {
            eprintln!(
                "broker: note: the policy text could not be edited in place and was rewritten in \
                 canonical form; its comments are gone (`broker policy show {name}`)"
            );
        }
    } else {
        println!(
            "policy {name}: {what} {hex} was {already}; unchanged (revision {})",
            r.revision
        );
    }
    Ok(Outcome::Success)
}

fn diff(conn: &AdminConn, name: &str, file: &Path) -> anyhow::Result<Outcome> {
    let trouble = |e: anyhow::Error| {
        eprintln!("broker: error: {e:#}");
        Ok(Outcome::Usage)
    };
    let text = match read_policy_file(file) {
        Ok(t) => t,
        Err(e) => return trouble(e),
    };
    let s = match conn.connect() {
        Ok(s) => s,
        Err(e) => return trouble(e),
    };
    let req = pb::PolicyGetRequest {
        name: name.to_owned(),
    };
    let stored = match s.run(s.client().policy_get(req)) {
        Ok(Some(r)) => r.policy.unwrap_or_default(),
        Ok(None) => return Ok(Outcome::Usage),
        Err(e) => return trouble(e),
    };
    if stored.text == text {
        return Ok(Outcome::Success);
    }
    print!(
        "{}",
        unified_diff(
            &stored.text,
            &text,
            &format!("{name} (revision {})", stored.revision),
            &file.display().to_string(),
        )
    );
    Ok(Outcome::Refused)
}

/// A unified diff (3 lines of context) of two texts, line by line.
pub fn unified_diff(old: &str, new: &str, old_name: &str, new_name: &str) -> String {
    use std::fmt::Write as _;
    let a: Vec<&str> = old.split_inclusive('\n').collect();
    let b: Vec<&str> = new.split_inclusive('\n').collect();
    // Longest common subsequence table (policies are small).
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    // The edit script: (tag, old index, new index).
    let mut ops = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            ops.push((' ', i, j));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            ops.push(('-', i, j));
            i += 1;
        } else {
            ops.push(('+', i, j));
            j += 1;
        }
    }
    const CONTEXT: usize = 3;
    let mut out = format!("--- {old_name}\n+++ {new_name}\n");
    let mut k = 0;
    while k < ops.len() {
        if ops[k].0 == ' ' {
            k += 1;
            continue;
        }
        // A hunk: from CONTEXT lines before this change to CONTEXT after the
        // last change that is less than 2*CONTEXT equal lines away.
        let start = k.saturating_sub(CONTEXT);
        let mut end = k;
        let mut last_change = k;
        while end < ops.len() {
            if ops[end].0 != ' ' {
                last_change = end;
            } else if end - last_change > 2 * CONTEXT {
                break;
            }
            end += 1;
        }
        let end = (last_change + 1 + CONTEXT).min(ops.len());
        let hunk = &ops[start..end];
        let old_start = hunk[0].1;
        let new_start = hunk[0].2;
        let old_len = hunk.iter().filter(|o| o.0 != '+').count();
        let new_len = hunk.iter().filter(|o| o.0 != '-').count();
        let range = |s: usize, l: usize| {
            if l == 0 {
                format!("{s},0")
            } else if l == 1 {
                format!("{}", s + 1)
            } else {
                format!("{},{l}", s + 1)
            }
        };
        let _ = writeln!(
            out,
            "@@ -{} +{} @@",
            range(old_start, old_len),
            range(new_start, new_len)
        );
        for &(tag, oi, nj) in hunk {
            let line = if tag == '+' { b[nj] } else { a[oi] };
            out.push(tag);
            out.push_str(line);
            if !line.ends_with('\n') {
                out.push_str("\n\\ No newline at end of file\n");
            }
        }
        k = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::unified_diff;

    #[test]
    fn unified_diff_shows_changed_lines_with_context() {
        let old = "a\nb\nc\nd\ne\nf\ng\nh\n";
        let new = "a\nb\nc\nD\ne\nf\ng\nh\n";
        assert_eq!(
            unified_diff(old, new, "x", "y"),
            "--- x\n+++ y\n@@ -1,7 +1,7 @@\n a\n b\n c\n-d\n+D\n e\n f\n g\n"
        );
        assert_eq!(
            unified_diff("", "a\n", "x", "y"),
            "--- x\n+++ y\n@@ -0,0 +1 @@\n+a\n"
        );
        assert_eq!(unified_diff("a\n", "a\n", "x", "y"), "--- x\n+++ y\n");
    }
}
