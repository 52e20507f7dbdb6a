//! `broker platforms`: the platform inventory of [`crate::inventory`]
//! printed from the store's audit log and policies: every chip seen, its
//! generation, TCB and SNP firmware, and whether it meets each policy.

use anyhow::Context as _;
use clap::Args;

use super::audit::{open_existing_store, rfc3339};
use super::{ConfigArg, Outcome};
use crate::inventory::{platforms, Platform};
use crate::policy::Policy;
use crate::store::AuditFilter;
use crate::verify::Tcb;

/// `broker platforms` arguments.
#[derive(Debug, Args)]
pub struct PlatformsArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `broker platforms`.
pub fn run(args: PlatformsArgs) -> anyhow::Result<Outcome> {
    let (_, store) = open_existing_store(&args.config.config)?;
    let filter = AuditFilter {
        kind: Some("attest".into()),
        ..AuditFilter::default()
    };
    let entries = store
        .audit_entries(&filter)
        .context("cannot read the audit log")?;
    let mut policies = Vec::new();
    for stored in store.list_policies()? {
        match Policy::from_toml(&stored.text) {
            Ok(p) => policies.push((stored.name, p)),
            Err(e) => eprintln!(
                "broker: policy {:?} is invalid and was skipped ({e}); fix it with `broker policy set`",
                stored.name
            ),
        }
    }
    let found = platforms(&entries, &policies);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&found)?);
    } else {
        for p in &found {
            print_platform(p);
        }
        if found.is_empty() {
            eprintln!("broker: no verified attestation in the audit log yet");
        }
    }
    Ok(Outcome::Success)
}

fn tcb_text(t: &Tcb) -> String {
    let fmc = t.fmc.map(|v| format!("fmc={v} ")).unwrap_or_default();
    format!(
        "{fmc}bootloader={} tee={} snp={} microcode={}",
        t.bootloader, t.tee, t.snp, t.microcode
    )
}

fn print_platform(p: &Platform) {
    let or_dash = |s: Option<String>| s.unwrap_or_else(|| "-".into());
    println!(
        "chip {}{}",
        p.chip_id,
        if p.masked {
            " (masked: guests launched with MASK_CHIP_ID, several chips may share it)"
        } else {
            ""
        }
    );
    println!(
        "  generation:   {}",
        or_dash(p.generation.map(|g| g.to_string()))
    );
    println!("  signer:       {}", or_dash(p.signer.clone()));
    println!(
        "  firmware:     {}",
        or_dash(p.firmware.map(|f| f.to_string()))
    );
    println!(
        "  reported_tcb: {}",
        or_dash(p.reported_tcb.as_ref().map(tcb_text))
    );
    println!(
        "  seen:         {} .. {} ({} attestation{})",
        rfc3339(p.first_seen),
        rfc3339(p.last_seen),
        p.attestations,
        if p.attestations == 1 { "" } else { "s" }
    );
    if p.versions.len() > 1 {
        println!("  history:");
        for v in &p.versions {
            println!(
                "    firmware {} tcb {}: {} .. {}",
                or_dash(v.firmware.map(|f| f.to_string())),
                or_dash(v.reported_tcb.as_ref().map(tcb_text)),
                rfc3339(v.first_seen),
                rfc3339(v.last_seen)
            );
        }
    }
    for f in &p.policies {
        if f.meets {
            println!("  policy {}: meets min_tcb and min_firmware", f.policy);
        } else {
            println!("  policy {}: BELOW: {}", f.policy, f.shortfalls.join("; "));
        }
    }
}
