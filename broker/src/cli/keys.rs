//! `broker rotate-master` and `broker status`: the master key's rotation
//! and the broker's keys at a glance, through the broker's admin API.

use keybroker_proto::admin_pb as pb;

use super::admin_conn::AdminConn;
use super::volume::opt_version;
use super::Outcome;

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
                super::audit::rfc3339(p.since)
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
                super::audit::rfc3339(v.retired_at),
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
