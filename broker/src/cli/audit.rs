//! `broker audit` (list decisions, filtered) and `broker audit verify`
//! (recompute the hash chain). Both only read the store named in the
//! config; entries never hold key material, so their output is safe to
//! archive or paste into a ticket.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::Outcome;
use crate::config::{Config, StoreConfig};
use crate::store::{AuditEntry, AuditFilter, Store, StoreError};

/// `broker audit ...`: list entries (the default) or verify the chain.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct AuditArgs {
    /// `verify`, or nothing to list entries.
    #[command(subcommand)]
    pub command: Option<AuditCommand>,
    /// Filters and output of the listing.
    #[command(flatten)]
    pub list: ListArgs,
}

/// `broker audit verify`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Recompute the hash chain of the whole audit log: exit 0 when intact,
    /// 1 naming the first entry that was changed, removed or reordered.
    Verify {
        #[command(flatten)]
        config: super::ConfigArg,
    },
}

/// Filters of `broker audit`. Every given filter must match.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// The broker's config file (written by `broker init`).
    #[arg(
        long,
        short = 'c',
        env = "KEYBROKER_CONFIG",
        value_name = "FILE",
        required = true
    )]
    pub config: Option<PathBuf>,
    /// Only entries naming this volume.
    #[arg(long, value_name = "NAME")]
    pub volume: Option<String>,
    /// Only entries at or after this time: RFC 3339
    /// (2025-06-01T00:00:00Z) or an age such as 30m, 1h, 2d, 1w.
    #[arg(long, value_name = "TIME", value_parser = parse_time_arg)]
    pub since: Option<TimeArg>,
    /// Only entries before this time (same forms as --since).
    #[arg(long, value_name = "TIME", value_parser = parse_time_arg)]
    pub until: Option<TimeArg>,
    /// Only entries with this verdict.
    #[arg(long, value_enum)]
    pub verdict: Option<VerdictArg>,
    /// Only entries of this kind.
    #[arg(long, value_enum)]
    pub kind: Option<KindArg>,
    /// Only the N most recent matching entries (still printed oldest first).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Print JSON: every field, details parsed.
    #[arg(long)]
    pub json: bool,
}

/// A decision's verdict, as `--verdict` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VerdictArg {
    /// Keys released (Attest), or nonce issued (Challenge).
    Allow,
    /// Refused.
    Deny,
    /// The broker failed (store, key unsealing).
    Error,
}

/// A decision's kind, as `--kind` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KindArg {
    /// Nonce requests.
    Challenge,
    /// Evidence and key release.
    Attest,
}

/// A time bound as written: absolute, or an age resolved against "now"
/// when the command runs (parsing does no I/O and reads no clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeArg {
    /// Unix seconds.
    At(i64),
    /// This many seconds before now.
    Ago(i64),
}

impl TimeArg {
    /// Unix seconds, with ages counted back from `now_unix`.
    pub fn resolve(self, now_unix: i64) -> i64 {
        match self {
            TimeArg::At(t) => t,
            TimeArg::Ago(s) => now_unix.saturating_sub(s),
        }
    }
}

/// Parses `--since`/`--until`: RFC 3339, or a positive number followed by
/// `s`, `m`, `h`, `d` or `w`.
pub fn parse_time_arg(s: &str) -> Result<TimeArg, String> {
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Ok(TimeArg::At(t.unix_timestamp()));
    }
    let hint = "write an RFC 3339 time (2025-06-01T00:00:00Z) or an age like 30m, 1h, 2d, 1w";
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return Err(format!("{s:?} is not a time: {hint}")),
    };
    let n: i64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a time: {hint}"))?;
    n.checked_mul(unit_secs)
        .map(TimeArg::Ago)
        .ok_or_else(|| format!("{s:?} is too far back: {hint}"))
}

/// Loads the config and opens its store, refusing to create a database
/// that does not exist: these commands only read, and a mistyped path
/// would otherwise show an empty log.
pub(crate) fn open_existing_store(
    config: &Path,
) -> anyhow::Result<(Config, std::sync::Arc<dyn Store>)> {
    let cfg = Config::load(config)?;
    let StoreConfig::Sqlite { path } = &cfg.store;
    if !path.exists() {
        anyhow::bail!(
            "the store {} named by {} does not exist, so nothing was recorded there; check \
             --config (the database appears with the first `broker policy set`, `volume add` \
             or `serve`)",
            path.display(),
            config.display()
        );
    }
    let store = crate::assemble::store(&cfg)?;
    Ok((cfg, store))
}

/// Runs `broker audit`.
pub fn run(args: AuditArgs) -> anyhow::Result<Outcome> {
    match args.command {
        Some(AuditCommand::Verify { config }) => verify(&config.config),
        None => list(args.list),
    }
}

fn verify(config: &Path) -> anyhow::Result<Outcome> {
    let (_, store) = open_existing_store(config)?;
    match store.verify_audit_chain() {
        Ok(n) => {
            println!("audit chain ok: {n} entries");
            Ok(Outcome::Success)
        }
        Err(StoreError::AuditChain(e)) => {
            println!("audit chain BROKEN at entry {}: {}", e.at_id, e.what);
            eprintln!(
                "broker: the audit log was modified outside the broker; keep a copy of the \
                 database for investigation and compare it with your backups"
            );
            Ok(Outcome::Refused)
        }
        Err(e) => Err(e).context("cannot verify the audit chain"),
    }
}

fn list(args: ListArgs) -> anyhow::Result<Outcome> {
    let config = args
        .config
        .as_deref()
        .context("--config FILE is required")?;
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let filter = AuditFilter {
        volume: args.volume.clone(),
        since_unix: args.since.map(|t| t.resolve(now)),
        until_unix: args.until.map(|t| t.resolve(now)),
        verdict: args.verdict.map(|v| verdict_str(v).to_owned()),
        kind: args.kind.map(|k| kind_str(k).to_owned()),
        after_id: None,
        limit: None,
    };
    let (_, store) = open_existing_store(config)?;
    let mut entries = store
        .audit_entries(&filter)
        .context("cannot read the audit log")?;
    if let Some(n) = args.limit {
        let skip = entries.len().saturating_sub(n);
        entries.drain(..skip);
    }
    if args.json {
        let v: Vec<Value> = entries.iter().map(entry_json).collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for e in &entries {
            println!("{}", entry_line(e));
        }
        if entries.is_empty() {
            eprintln!("broker: no audit entries match");
        }
    }
    Ok(Outcome::Success)
}

fn verdict_str(v: VerdictArg) -> &'static str {
    match v {
        VerdictArg::Allow => "allow",
        VerdictArg::Deny => "deny",
        VerdictArg::Error => "error",
    }
}

fn kind_str(k: KindArg) -> &'static str {
    match k {
        KindArg::Challenge => "challenge",
        KindArg::Attest => "attest",
    }
}

/// RFC 3339 (UTC) of Unix seconds; the raw number if out of range.
pub(crate) fn rfc3339(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| unix.to_string())
}

fn details(e: &AuditEntry) -> Value {
    serde_json::from_str(&e.event.details_json)
        .unwrap_or_else(|_| Value::String(e.event.details_json.clone()))
}

/// One line: id, time, kind, verdict, volumes, reason codes, measurement,
/// chip id (first 8 bytes), client. `-` marks an absent value.
fn entry_line(e: &AuditEntry) -> String {
    let d = details(e);
    let field = |k: &str| d.get(k).and_then(Value::as_str).unwrap_or("-").to_owned();
    let list = |l: &[String]| {
        if l.is_empty() {
            "-".to_owned()
        } else {
            l.join(",")
        }
    };
    let chip = field("chip_id");
    let chip = chip.get(..16).unwrap_or(&chip);
    format!(
        "{} {} {} {} volumes={} reasons={} measurement={} chip={} client={}",
        e.id,
        rfc3339(e.event.at_unix),
        e.event.kind,
        e.event.verdict,
        list(&e.event.volumes),
        list(&e.event.reason_codes),
        field("measurement"),
        chip,
        e.event.client_addr.as_deref().unwrap_or("-"),
    )
}

/// Every field of an entry, details parsed as JSON.
fn entry_json(e: &AuditEntry) -> Value {
    json!({
        "id": e.id.0,
        "time": rfc3339(e.event.at_unix),
        "at_unix": e.event.at_unix,
        "kind": e.event.kind,
        "verdict": e.event.verdict,
        "volumes": e.event.volumes,
        "reason_codes": e.event.reason_codes,
        "details": details(e),
        "client": e.event.client_addr,
        "prev_hash": hex::encode(e.prev_hash),
        "hash": hex::encode(e.hash),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_or_ages() {
        assert_eq!(
            parse_time_arg("2025-06-01T00:00:00Z"),
            Ok(TimeArg::At(1_748_736_000))
        );
        assert_eq!(
            parse_time_arg("2025-06-01T02:00:00+02:00"),
            Ok(TimeArg::At(1_748_736_000))
        );
        assert_eq!(parse_time_arg("30m"), Ok(TimeArg::Ago(1800)));
        assert_eq!(parse_time_arg("1h"), Ok(TimeArg::Ago(3600)));
        assert_eq!(parse_time_arg("2d"), Ok(TimeArg::Ago(172_800)));
        assert_eq!(parse_time_arg("1w"), Ok(TimeArg::Ago(604_800)));
        assert_eq!(parse_time_arg("45s"), Ok(TimeArg::Ago(45)));
        assert_eq!(TimeArg::Ago(3600).resolve(10_000), 6400);
        assert_eq!(TimeArg::At(5).resolve(10_000), 5);
    }

    #[test]
    fn bad_times_say_what_to_write() {
        for bad in [
            "",
            "h",
            "1",
            "-1h",
            "1.5h",
            "1y",
            "yesterday",
            "2025-06-01",
            "1 h",
        ] {
            let e = parse_time_arg(bad).unwrap_err();
            assert!(e.contains("RFC 3339"), "{bad:?}: {e}");
        }
        assert!(parse_time_arg("99999999999999999w")
            .unwrap_err()
            .contains("too far back"));
    }
}
