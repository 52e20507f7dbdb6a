//! `broker platforms`: the platform inventory of [`broker::inventory`],
//! computed by the broker from its audit log and policies and fetched
//! through the admin API: every chip seen, its generation, TCB and SNP
//! firmware, and whether it meets each policy.

use clap::Args;
use keybroker_proto::admin_pb as pb;
use serde_json::Value;

use super::admin_conn::AdminConn;
use super::audit::rfc3339;
use super::Outcome;

/// `broker platforms` arguments.
#[derive(Debug, Args)]
pub struct PlatformsArgs {
    #[command(flatten)]
    conn: AdminConn,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `broker platforms`.
pub fn run(args: PlatformsArgs) -> anyhow::Result<Outcome> {
    let s = args.conn.connect()?;
    let Some(r) = s.run(s.client().platforms(pb::PlatformsRequest {}))? else {
        return Ok(Outcome::Refused);
    };
    for skipped in &r.skipped_policies {
        eprintln!("broker: {skipped}");
    }
    let found: Value = serde_json::from_str(&r.inventory_json)
        .map_err(|e| anyhow::anyhow!("the broker sent an unreadable inventory: {e}"))?;
    let list = found.as_array().cloned().unwrap_or_default();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&found)?);
    } else {
        for p in &list {
            print_platform(p);
        }
        if list.is_empty() {
            eprintln!("broker: no verified attestation in the audit log yet");
        }
    }
    Ok(Outcome::Success)
}

fn opt_text(v: &Value, f: impl Fn(&Value) -> String) -> String {
    if v.is_null() {
        "-".into()
    } else {
        f(v)
    }
}

fn num(v: &Value, k: &str) -> String {
    v.get(k).map_or_else(|| "-".into(), |x| x.to_string())
}

fn firmware_text(f: &Value) -> String {
    opt_text(f, |f| {
        format!(
            "{}.{}.{}",
            num(f, "major"),
            num(f, "minor"),
            num(f, "build")
        )
    })
}

fn tcb_text(t: &Value) -> String {
    opt_text(t, |t| {
        let fmc = match t.get("fmc") {
            Some(v) if !v.is_null() => format!("fmc={v} "),
            _ => String::new(),
        };
        format!(
            "{fmc}bootloader={} tee={} snp={} microcode={}",
            num(t, "bootloader"),
            num(t, "tee"),
            num(t, "snp"),
            num(t, "microcode")
        )
    })
}

fn str_or_dash(v: &Value, k: &str) -> String {
    v.get(k).and_then(Value::as_str).unwrap_or("-").to_owned()
}

fn int(v: &Value, k: &str) -> i64 {
    v.get(k).and_then(Value::as_i64).unwrap_or(0)
}

fn print_platform(p: &Value) {
    let null = Value::Null;
    println!(
        "chip {}{}",
        str_or_dash(p, "chip_id"),
        if p.get("masked").and_then(Value::as_bool) == Some(true) {
            " (masked: guests launched with MASK_CHIP_ID, several chips may share it)"
        } else {
            ""
        }
    );
    println!("  generation:   {}", str_or_dash(p, "generation"));
    println!("  signer:       {}", str_or_dash(p, "signer"));
    println!(
        "  firmware:     {}",
        firmware_text(p.get("firmware").unwrap_or(&null))
    );
    println!(
        "  reported_tcb: {}",
        tcb_text(p.get("reported_tcb").unwrap_or(&null))
    );
    let n = int(p, "attestations");
    println!(
        "  seen:         {} .. {} ({} attestation{})",
        rfc3339(int(p, "first_seen")),
        rfc3339(int(p, "last_seen")),
        n,
        if n == 1 { "" } else { "s" }
    );
    let versions = p
        .get("versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if versions.len() > 1 {
        println!("  history:");
        for v in &versions {
            println!(
                "    firmware {} tcb {}: {} .. {}",
                firmware_text(v.get("firmware").unwrap_or(&null)),
                tcb_text(v.get("reported_tcb").unwrap_or(&null)),
                rfc3339(int(v, "first_seen")),
                rfc3339(int(v, "last_seen"))
            );
        }
    }
    for f in p
        .get("policies")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
    {
        let name = str_or_dash(&f, "policy");
        if f.get("meets").and_then(Value::as_bool) == Some(true) {
            println!("  policy {name}: meets min_tcb and min_firmware");
        } else {
            let shortfalls: Vec<&str> = f
                .get("shortfalls")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            println!("  policy {name}: BELOW: {}", shortfalls.join("; "));
        }
    }
}
