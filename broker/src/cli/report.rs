//! `broker report verify`: offline verification of a report file, with the
//! decoded report and the verdict with every reason.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use serde_json::json;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::Outcome;
use broker::config::Config;
use broker::policy::{Policy, Verdict};
use broker::verify::{ReportClaims, SignerKind, TrustStore, Verifier};

/// `broker report ...`
#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// Verify a raw 1184-byte SEV-SNP report: AMD chain, VEK binding and
    /// signature; with --policy also that policy. Exit 0 accepted, 1 refused.
    Verify {
        /// The report file (raw binary, as from /dev/sev-guest or configfs-tsm outblob).
        report: PathBuf,
        /// Certificate directory: vcek.der/vcek.pem or vlek.der/vlek.pem, and
        /// optionally ask.pem, asvk.pem, ark.pem (or a PEM bundle), crl.der.
        #[arg(long, value_name = "DIR")]
        certs: Option<PathBuf>,
        /// The extended report's certificate table (GUID table), if you have it.
        #[arg(long, value_name = "FILE")]
        cert_table: Option<PathBuf>,
        /// Also evaluate this policy file (TOML).
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
        /// Verify as of this time (RFC 3339, e.g. 2025-06-01T00:00:00Z) instead of now.
        #[arg(long, value_name = "RFC3339")]
        at: Option<String>,
        /// Take trust settings (a configured simulated root) and the
        /// certificate cache (`cert_cache`) from this broker config; AMD KDS
        /// is never asked (this command is offline).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a report command.
pub fn run(cmd: ReportCommand) -> anyhow::Result<Outcome> {
    let ReportCommand::Verify {
        report,
        certs,
        cert_table,
        policy,
        at,
        config,
        json,
    } = cmd;
    // Resolve every input before doing any work, so a usage mistake costs nothing.
    let now = match &at {
        Some(s) => OffsetDateTime::parse(s, &Rfc3339).map_err(|e| {
            anyhow::anyhow!(
                "--at {s:?} is not an RFC 3339 time ({e}); write it like 2025-06-01T00:00:00Z"
            )
        })?,
        None => OffsetDateTime::now_utc(),
    };
    let policy = match &policy {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read policy file {}", p.display()))?;
            Some(Policy::from_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?)
        }
        None => None,
    };
    let config = match &config {
        Some(c) => Some(Config::load(c)?),
        None => None,
    };
    let trust = match &config {
        Some(c) => broker::wiring::trust(c)?,
        None => TrustStore::amd(),
    };
    let bytes = std::fs::read(&report)
        .with_context(|| format!("cannot read report {}", report.display()))?;
    let table = match &cert_table {
        Some(t) => std::fs::read(t)
            .with_context(|| format!("cannot read certificate table {}", t.display()))?,
        None => Vec::new(),
    };

    let mut verifier = Verifier::new(trust.clone(), None);
    if let Some(c) = &config {
        let cache = std::sync::Arc::new(broker::certsource::CertCache::new(c.cert_cache.clone()));
        verifier = verifier.with_source(std::sync::Arc::new(broker::certsource::CacheSource::new(
            cache, &trust,
        )));
    }
    let result = verifier.verify(&bytes, &table, certs.as_deref(), now);
    let (claims, evidence_error, simulated) = match &result {
        Ok(v) => (Some(v.claims().clone()), None, v.is_simulated()),
        Err(e) => (super::unverified_claims(&bytes), Some(e), false),
    };
    let verdict: Option<Verdict> = match (&policy, &result) {
        (Some(p), Ok(v)) => Some(p.evaluate(v.claims())),
        _ => None,
    };
    let accepted = result.is_ok() && verdict.as_ref().is_none_or(Verdict::is_allowed);

    if json {
        let out = json!({
            "report": report.display().to_string(),
            "at": now.format(&Rfc3339).unwrap_or_default(),
            "claims": claims,
            "authentic": result.is_ok(),
            "simulated": simulated,
            "evidence_error": evidence_error.map(|e| json!({"code": e.reason_code(), "message": e.to_string()})),
            "policy": verdict.as_ref().map(|v| json!({"allowed": v.is_allowed(), "failures": v.failures})),
            "verdict": if accepted { "accepted" } else { "refused" },
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        match &claims {
            Some(c) => print_claims(c, result.is_ok()),
            None => println!("report:        undecodable"),
        }
        match &result {
            Ok(_) if simulated => println!(
                "authenticity:  ok (SIMULATED platform, trusted only because the config names its root)"
            ),
            Ok(_) => println!(
                "authenticity:  ok (AMD chain to the pinned ARK, VEK bound to chip and TCB, signature valid)"
            ),
            Err(e) => println!("authenticity:  REFUSED {}: {e}", e.reason_code()),
        }
        if let Some(v) = &verdict {
            if v.is_allowed() {
                println!("policy:        ok");
            } else {
                let n = v.failures.len();
                let plural = if n == 1 { "" } else { "s" };
                println!("policy:        REFUSED ({n} failing check{plural})");
                for f in &v.failures {
                    println!(
                        "  {}  {}: expected {}, actual {}",
                        f.code, f.check, f.expected, f.actual
                    );
                }
            }
        } else if policy.is_some() {
            println!("policy:        not evaluated (evidence not authentic)");
        }
        println!(
            "verdict:       {}",
            if accepted { "accepted" } else { "refused" }
        );
    }
    Ok(if accepted {
        Outcome::Success
    } else {
        Outcome::Refused
    })
}

fn print_claims(c: &ReportClaims, verified: bool) {
    let tcb = |t: &broker::verify::Tcb| match t.fmc {
        Some(fmc) => format!(
            "fmc={fmc} bootloader={} tee={} snp={} microcode={}",
            t.bootloader, t.tee, t.snp, t.microcode
        ),
        None => format!(
            "bootloader={} tee={} snp={} microcode={}",
            t.bootloader, t.tee, t.snp, t.microcode
        ),
    };
    if !verified {
        println!("(decoded from an UNVERIFIED report: do not trust these values)");
    }
    println!("version:       {}", c.version);
    println!("generation:    {}", c.generation);
    let signer = match c.signer {
        SignerKind::Vcek => "vcek",
        SignerKind::Vlek => "vlek",
    };
    println!("signer:        {signer}");
    println!(
        "guest_policy:  {:#x} (debug={} migrate_ma={} smt={} abi>={}.{})",
        c.policy.raw,
        c.policy.debug,
        c.policy.migrate_ma,
        c.policy.smt_allowed,
        c.policy.abi_major,
        c.policy.abi_minor
    );
    println!("vmpl:          {}", c.vmpl);
    println!("guest_svn:     {}", c.guest_svn);
    println!("measurement:   {}", hex::encode(&c.measurement));
    println!("host_data:     {}", hex::encode(&c.host_data));
    println!("id_key_digest: {}", hex::encode(&c.id_key_digest));
    println!("chip_id:       {}", hex::encode(&c.chip_id));
    println!("reported_tcb:  {}", tcb(&c.reported_tcb));
    println!("current_tcb:   {}", tcb(&c.current_tcb));
    println!("committed_tcb: {}", tcb(&c.committed_tcb));
    println!("launch_tcb:    {}", tcb(&c.launch_tcb));
    println!(
        "firmware:      {} (committed {})",
        c.current_firmware, c.committed_firmware
    );
    println!("report_data:   {}", hex::encode(&c.report_data));
    println!("report_id:     {}", hex::encode(&c.report_id));
}
