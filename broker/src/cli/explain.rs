//! `broker explain`: which checks a given report would fail for a volume,
//! against the volume's state and policy (fetched through the admin API)
//! and the trust anchors of `--config` (AMD's alone without it); the
//! report is verified here, not by the broker. Evidence first (the verifier stops at the
//! first failing evidence check, as a release does), then the volume's
//! state, then every failing policy check with expected and actual values.
//! Exit 0 when the volume would be released, 1 when not.
//!
//! The report may be an Azure vTPM evidence file (JSON): then the HCL
//! report and the quote are verified too, and the policy's `[vtpm]`
//! section is evaluated against the quoted PCRs.
//!
//! REPORT_DATA (on Azure, the quote's qualifying data and the HCL user
//! data) cannot be checked here: it binds a Challenge nonce and the guest's
//! ephemeral key, which only exist during a real release.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use serde::Serialize;
use serde_json::json;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use keybroker_proto::admin_pb as pb;

use super::admin_conn::AdminConn;
use super::inspect::{inspect, EvidenceInput};
use super::Outcome;
use broker::config::Config;
use broker::error::{RefusalCause, VolumeRefusal};
use broker::policy::Policy;
use broker::verify::{EvidenceKind, SignerKind, Verifier};

/// `broker explain` arguments.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The report file (raw 1184 bytes, as from /dev/sev-guest or
    /// configfs-tsm outblob), or an Azure vTPM evidence file (JSON).
    #[arg(long, value_name = "FILE")]
    report: PathBuf,
    /// Certificate directory (vcek.der or vlek.der, ask/asvk/ark PEM, crl.der),
    /// used before the config's `certs_dir`.
    #[arg(long, value_name = "DIR")]
    certs: Option<PathBuf>,
    /// The extended report's certificate table (GUID table), if you have it.
    #[arg(long, value_name = "FILE")]
    cert_table: Option<PathBuf>,
    /// Check certificate validity at this time (RFC 3339) instead of now.
    #[arg(long, value_name = "RFC3339", value_parser = parse_rfc3339)]
    at: Option<OffsetDateTime>,
    /// The volume whose policy and state to check against.
    #[arg(long, value_name = "NAME")]
    volume: String,
    /// Where the broker's admin API is; `--config` also gives the trust
    /// anchors (a simulated root) and `certs_dir`.
    #[command(flatten)]
    conn: AdminConn,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn parse_rfc3339(s: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(s, &Rfc3339).map_err(|e| {
        format!("{s:?} is not an RFC 3339 time ({e}); write it like 2025-06-01T00:00:00Z")
    })
}

/// One failing check.
#[derive(Debug, Serialize)]
struct Failure {
    /// "evidence", "volume" or "policy".
    stage: &'static str,
    /// Stable reason code.
    code: String,
    /// What was checked.
    check: String,
    /// What passes.
    expected: String,
    /// What the report (or the store) has.
    actual: String,
}

/// Runs `broker explain`.
pub fn run(args: ExplainArgs) -> anyhow::Result<Outcome> {
    let at = args.at.unwrap_or_else(OffsetDateTime::now_utc);
    let cfg = args.conn.config.as_deref().map(Config::load).transpose()?;
    let trust = match &cfg {
        Some(cfg) => broker::wiring::trust(cfg)?,
        None => broker::verify::TrustStore::amd(),
    };
    let certs_dir = cfg.as_ref().and_then(|c| c.certs_dir.clone());
    let input = EvidenceInput::read(&args.report)?;
    let table = match &args.cert_table {
        Some(t) => Some(
            std::fs::read(t)
                .with_context(|| format!("cannot read certificate table {}", t.display()))?,
        ),
        None => None,
    };
    let s = args.conn.connect()?;
    let req = pb::GetVolumePolicyRequest {
        name: args.volume.clone(),
    };
    let Some(view) = s.run(s.client().get_volume_policy(req))? else {
        return Ok(Outcome::Refused);
    };
    let volume = view.volume.unwrap_or_default();

    let mut failures = Vec::new();
    // 1. Evidence, as a release verifies it.
    let verifier = Verifier::new(trust, certs_dir);
    let found = inspect(&verifier, &input, table, args.certs.as_deref(), at, None);
    let (verified, simulated) = (found.authentic(), found.simulated);
    if let Some(e) = &found.error {
        failures.push(Failure {
            stage: "evidence",
            code: e.reason_code().to_owned(),
            check: "evidence".into(),
            expected: match found.kind {
                EvidenceKind::SnpReport => {
                    "a genuine report: AMD chain to the pinned ARK, VEK \
                                            bound to chip and TCB, valid signature"
                }
                EvidenceKind::AzureVtpm => {
                    "genuine Azure vTPM evidence: the SNP report as \
                                            above, the HCL report bound to it, the quote signed \
                                            by its attestation key over the PCRs sent"
                }
            }
            .into(),
            actual: e.to_string(),
        });
    }
    let claims = found.claims.clone();

    // 2. The volume's state.
    let refusal = |cause| VolumeRefusal {
        volume: args.volume.clone(),
        cause,
    };
    let volume_failure = |cause, check: &str, expected: &str, actual: String| Failure {
        stage: "volume",
        code: refusal(cause).reason_codes().join(","),
        check: check.into(),
        expected: expected.into(),
        actual,
    };
    if !volume.enabled {
        failures.push(volume_failure(
            RefusalCause::Disabled,
            "volume.enabled",
            "enabled",
            "disabled by an administrator".into(),
        ));
    }
    if view.releasable_keys.is_empty() {
        failures.push(volume_failure(
            RefusalCause::NoKey,
            "volume.keys",
            "a current or pending key version",
            "none".into(),
        ));
    }

    // 3. Every policy check, on the claims (unverified ones if the evidence failed).
    let policy_name = volume.policy.clone();
    let policy = match &view.policy {
        None => Err(format!("policy {policy_name:?} does not exist")),
        Some(p) => Policy::from_toml(&p.text)
            .map_err(|e| format!("policy {policy_name:?} is invalid: {e}")),
    };
    let mut policy_evaluated = false;
    match (&policy, &claims) {
        (Err(why), _) => failures.push(volume_failure(
            RefusalCause::PolicyUnavailable(why.clone()),
            "policy",
            "a valid policy in the store",
            why.clone(),
        )),
        (Ok(p), Some(_)) => {
            policy_evaluated = true;
            for f in found.verdict(p).map(|v| v.failures).unwrap_or_default() {
                failures.push(Failure {
                    stage: "policy",
                    code: f.code.to_owned(),
                    check: f.check.to_owned(),
                    expected: f.expected,
                    actual: f.actual,
                });
            }
        }
        (Ok(_), None) => {}
    }
    let released = failures.is_empty();

    if args.json {
        let out = json!({
            "volume": args.volume,
            "policy": policy_name,
            "enabled": volume.enabled,
            "report": args.report.display().to_string(),
            "at": at.format(&Rfc3339).unwrap_or_default(),
            "authentic": verified,
            "simulated": simulated,
            "claims_verified": verified,
            "policy_evaluated": policy_evaluated,
            "evidence_kind": found.kind.as_str(),
            "claims": claims,
            "vtpm": found.vtpm_json(),
            "failures": failures,
            "released": released,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        let key_versions: Vec<String> = view
            .releasable_keys
            .iter()
            .map(|k| format!("{} {}", k.version, k.state))
            .collect();
        println!(
            "volume:    {} (policy {policy_name}, {}, key versions: {})",
            args.volume,
            if volume.enabled {
                "enabled"
            } else {
                "disabled"
            },
            if key_versions.is_empty() {
                "none".to_owned()
            } else {
                key_versions.join(", ")
            }
        );
        match &claims {
            Some(c) => {
                let signer = match c.signer {
                    SignerKind::Vcek => "vcek",
                    SignerKind::Vlek => "vlek",
                };
                println!(
                    "report:    {} ({}, {signer}-signed, measurement {}){}",
                    args.report.display(),
                    c.generation,
                    hex::encode(&c.measurement),
                    if verified {
                        ""
                    } else {
                        " UNVERIFIED: its values are what it claims"
                    }
                );
            }
            None => println!(
                "report:    {} does not decode; no policy check was possible",
                args.report.display()
            ),
        }
        if found.kind == EvidenceKind::AzureVtpm {
            println!(
                "vtpm:      Azure vTPM evidence, {} PCRs{}",
                found.pcrs.len(),
                if found.quote.is_some() {
                    " verified by the quote"
                } else {
                    " UNVERIFIED"
                }
            );
        }
        println!("as of:     {}", at.format(&Rfc3339).unwrap_or_default());
        println!(
            "evidence:  {}",
            match (verified, simulated) {
                (true, true) =>
                    "ok (SIMULATED platform, trusted because the config names its root)",
                (true, false) => "ok",
                (false, _) => "FAILS",
            }
        );
        if failures.is_empty() {
            println!("checks:    all pass");
        } else {
            println!("failing checks ({}):", failures.len());
            for f in &failures {
                if f.stage == "evidence" {
                    println!("  {}  {}", f.code, f.actual);
                } else {
                    println!(
                        "  {}  {}: expected {}, actual {}",
                        f.code, f.check, f.expected, f.actual
                    );
                }
            }
        }
        println!("note:      REPORT_DATA is checked only during a release (it binds the Challenge nonce)");
        if released {
            println!("verdict:   would be released");
        } else {
            println!(
                "verdict:   would be refused ({} failing check{})",
                failures.len(),
                if failures.len() == 1 { "" } else { "s" }
            );
        }
    }
    Ok(if released {
        Outcome::Success
    } else {
        Outcome::Refused
    })
}
