//! `broker report verify`: offline verification of a report file or an
//! Azure vTPM evidence file, with the decoded fields and the verdict with
//! every reason.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use serde_json::json;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::inspect::{inspect, Binding, EvidenceInput};
use super::Outcome;
use broker::config::Config;
use broker::policy::{Policy, Verdict};
use broker::verify::{EvidenceKind, ReportClaims, SignerKind, TrustStore, Verifier};

/// `broker report ...`
#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// Verify a raw 1184-byte SEV-SNP report (AMD chain, VEK binding and
    /// signature), or an Azure vTPM evidence file (also the HCL report, the
    /// quote's signature by its attestation key, the PCR digest); with
    /// --report-data also the binding, with --policy also that policy.
    /// Exit 0 accepted, 1 refused.
    Verify {
        /// The report file (raw binary, as from /dev/sev-guest or
        /// configfs-tsm outblob), or an Azure vTPM evidence file (JSON: the
        /// HCL report, quote, PCRs and VCEK, byte arrays or base64url).
        report: PathBuf,
        /// The expected binding value, hex: REPORT_DATA of a raw report
        /// (64 bytes); the quote's qualifying data of Azure evidence (and
        /// its HCL user data, in file layout 2). Unchecked when absent.
        #[arg(long, value_name = "HEX", value_parser = parse_hex)]
        report_data: Option<HexBytes>,
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
        #[arg(long, short = 'c', env = "KEYBROKER_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Bytes given in hex on the command line.
#[derive(Debug, Clone)]
pub struct HexBytes(Vec<u8>);

fn parse_hex(s: &str) -> Result<HexBytes, String> {
    match hex::decode(s.trim()) {
        Ok(b) if !b.is_empty() && b.len() <= 64 => Ok(HexBytes(b)),
        Ok(b) => Err(format!("{} bytes; give 1 to 64 bytes in hex", b.len())),
        Err(e) => Err(format!(
            "not hex ({e}); give the bytes in hex, e.g. 6368616c6c656e6765"
        )),
    }
}

/// Runs a report command.
pub fn run(cmd: ReportCommand) -> anyhow::Result<Outcome> {
    let ReportCommand::Verify {
        report,
        report_data,
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
    let input = EvidenceInput::read(&report)?;
    let table = match &cert_table {
        Some(t) => Some(
            std::fs::read(t)
                .with_context(|| format!("cannot read certificate table {}", t.display()))?,
        ),
        None => None,
    };

    let mut verifier = Verifier::new(trust.clone(), None);
    if let Some(c) = &config {
        let cache = std::sync::Arc::new(broker::certsource::CertCache::new(c.cert_cache.clone()));
        verifier = verifier.with_source(std::sync::Arc::new(broker::certsource::CacheSource::new(
            cache, &trust,
        )));
    }
    let found = inspect(
        &verifier,
        &input,
        table,
        certs.as_deref(),
        now,
        report_data.as_ref().map(|h| h.0.as_slice()),
    );
    let verdict: Option<Verdict> = match &policy {
        Some(p) if found.authentic() => found.verdict(p),
        _ => None,
    };
    let accepted = found.authentic() && verdict.as_ref().is_none_or(Verdict::is_allowed);
    let azure = found.kind == EvidenceKind::AzureVtpm;

    if json {
        let out = json!({
            "report": report.display().to_string(),
            "evidence_kind": found.kind.as_str(),
            "at": now.format(&Rfc3339).unwrap_or_default(),
            "claims": found.claims,
            "authentic": found.authentic(),
            "simulated": found.simulated,
            "binding": match found.binding {
                Binding::NotChecked => "not checked",
                Binding::Ok => "ok",
                Binding::Refused => "not established",
            },
            "vtpm": found.vtpm_json(),
            "evidence_error": found.error.as_ref().map(|e| json!({"code": e.reason_code(), "message": e.to_string()})),
            "policy": verdict.as_ref().map(|v| json!({"allowed": v.is_allowed(), "failures": v.failures})),
            "verdict": if accepted { "accepted" } else { "refused" },
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        if azure {
            println!("evidence:      Azure vTPM (the SNP report below is the paravisor's)");
        }
        match &found.claims {
            Some(c) => print_claims(c, found.authentic()),
            None => println!("report:        undecodable"),
        }
        for line in found.vtpm_lines() {
            println!("{line}");
        }
        let what = if azure {
            "AMD chain to the pinned ARK, VEK bound to chip and TCB, SNP signature valid; HCL \
             variable data bound to REPORT_DATA, quote signed by HCLAkPub, PCR digest matches"
        } else {
            "AMD chain to the pinned ARK, VEK bound to chip and TCB, signature valid"
        };
        match &found.error {
            None if found.simulated => println!(
                "authenticity:  ok (SIMULATED platform, trusted only because the config names its root)"
            ),
            None => println!("authenticity:  ok ({what})"),
            Some(e) => println!("authenticity:  REFUSED {}: {e}", e.reason_code()),
        }
        match found.binding {
            // As before 1.2, a raw report's output says nothing of it.
            Binding::NotChecked if !azure => {}
            Binding::NotChecked => println!("binding:       not checked (give --report-data HEX)"),
            Binding::Ok if azure => {
                println!("binding:       ok (the quote's qualifying data is --report-data)")
            }
            Binding::Ok => println!("binding:       ok (REPORT_DATA is --report-data)"),
            Binding::Refused => {}
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
