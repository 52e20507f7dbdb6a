//! `broker audit` (list decisions, filtered) and `broker audit verify`
//! (recompute the hash chain), through the broker's admin API. Entries
//! never hold key material, so their output is safe to archive or paste
//! into a ticket.

use anyhow::Context as _;
use clap::{Args, Subcommand, ValueEnum};
use keybroker_proto::admin_pb as pb;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::admin_conn::AdminConn;
use super::Outcome;

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
        conn: AdminConn,
    },
    /// Retention: remove the entries older than --before (the newest is
    /// always kept), leaving an anchor the chain is verified from; the
    /// prune is recorded as an entry of kind `prune`.
    Prune(super::audit_prune::PruneArgs),
}

/// Filters of `broker audit`. Every given filter must match.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Where the broker's admin API is.
    #[command(flatten)]
    pub conn: AdminConn,
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
    /// Nonce requests (none since challenges became stateless; kept for
    /// audit logs written before).
    Challenge,
    /// Evidence and key release.
    Attest,
    /// Administration through the admin API (volumes, policies).
    Admin,
    /// Counts of unauthenticated failures per interval (no entry each).
    Noise,
    /// Retention: what `broker audit prune` removed.
    Prune,
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

/// Runs `broker audit`.
pub fn run(args: AuditArgs) -> anyhow::Result<Outcome> {
    match args.command {
        Some(AuditCommand::Verify { conn }) => verify(&conn),
        Some(AuditCommand::Prune(a)) => super::audit_prune::run(a),
        None => list(args.list),
    }
}

fn verify(conn: &AdminConn) -> anyhow::Result<Outcome> {
    let s = conn.connect()?;
    let Some(r) = s.run(s.client().audit_verify(pb::AuditVerifyRequest {}))? else {
        return Ok(Outcome::Refused);
    };
    if r.intact {
        println!("audit chain ok: {} entries", r.entries);
        Ok(Outcome::Success)
    } else {
        println!("audit chain BROKEN at entry {}: {}", r.broken_at_id, r.what);
        eprintln!(
            "broker: the audit log was modified outside the broker; keep a copy of the \
             database for investigation and compare it with your backups"
        );
        Ok(Outcome::Refused)
    }
}

fn list(args: ListArgs) -> anyhow::Result<Outcome> {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let mut req = pb::AuditQueryRequest {
        volume: args.volume.clone(),
        since_unix: args.since.map(|t| t.resolve(now)),
        until_unix: args.until.map(|t| t.resolve(now)),
        verdict: args.verdict.map(|v| verdict_str(v).to_owned()),
        kind: args.kind.map(|k| kind_str(k).to_owned()),
        limit: args.limit.map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
        after_id: None,
    };
    let mut remaining = args.limit.unwrap_or(usize::MAX);
    let s = args.conn.connect()?;
    let mut out = EntryWriter::new(args.json);
    // Page by page, printing as each arrives: memory stays at one page
    // whatever the size of the log.
    loop {
        let Some(r) = s.run(s.client().audit_query(req.clone()))? else {
            return Ok(Outcome::Refused);
        };
        for e in r.entries.iter().take(remaining) {
            match out.entry(e) {
                Ok(()) => {}
                // `broker audit | head`: the reader has what it wanted.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                    return Ok(Outcome::Success)
                }
                Err(e) => return Err(e).context("cannot write the audit entries to stdout"),
            }
        }
        remaining = remaining.saturating_sub(r.entries.len());
        match r.next_after_id {
            Some(next) if remaining > 0 => {
                // The first page placed the window; later pages continue it.
                req.limit = None;
                req.after_id = Some(next);
            }
            _ => break,
        }
    }
    if out.count == 0 && !args.json {
        eprintln!("broker: no audit entries match");
    }
    match out.finish() {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(Outcome::Success),
        r => r
            .map(|()| Outcome::Success)
            .context("cannot write the audit entries to stdout"),
    }
}

/// Prints entries as they arrive: one line each, or (`--json`) one
/// pretty-printed JSON array written element by element.
struct EntryWriter {
    json: bool,
    count: usize,
    out: std::io::StdoutLock<'static>,
}

impl EntryWriter {
    fn new(json: bool) -> Self {
        EntryWriter {
            json,
            count: 0,
            out: std::io::stdout().lock(),
        }
    }

    fn entry(&mut self, e: &pb::AuditEntry) -> std::io::Result<()> {
        use std::io::Write as _;
        if self.json {
            let v = serde_json::to_string_pretty(&entry_json(e)).map_err(std::io::Error::other)?;
            let sep = if self.count == 0 { "[\n" } else { ",\n" };
            write!(self.out, "{sep}  {}", v.replace('\n', "\n  "))?;
        } else {
            writeln!(self.out, "{}", entry_line(e))?;
        }
        self.count += 1;
        Ok(())
    }

    fn finish(mut self) -> std::io::Result<()> {
        use std::io::Write as _;
        if self.json {
            let end = if self.count == 0 { "[]\n" } else { "\n]\n" };
            self.out.write_all(end.as_bytes())?;
        }
        self.out.flush()
    }
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
        KindArg::Admin => "admin",
        KindArg::Noise => "noise",
        KindArg::Prune => "prune",
    }
}

/// RFC 3339 (UTC) of Unix seconds; the raw number if out of range.
pub(crate) fn rfc3339(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| unix.to_string())
}

fn details(e: &pb::AuditEntry) -> Value {
    serde_json::from_str(&e.details_json).unwrap_or_else(|_| Value::String(e.details_json.clone()))
}

/// One line: id, time, kind, verdict, (admin entries) the action and
/// what it acted on, volumes, reason codes, measurement, chip id (first 8
/// bytes), client. `-` marks an absent value.
fn entry_line(e: &pb::AuditEntry) -> String {
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
        "{} {} {} {}{} volumes={} reasons={} measurement={} chip={} client={}",
        e.id,
        rfc3339(e.at_unix),
        e.kind,
        e.verdict,
        admin_action(e, &d),
        list(&e.volumes),
        list(&e.reason_codes),
        field("measurement"),
        chip,
        e.client.as_deref().unwrap_or("-"),
    )
}

/// What an admin entry did, ` ACTION OBJECT` (` volume.delete root`,
/// ` policy.set prod`, ` master.rotate -`); nothing for other kinds.
fn admin_action(e: &pb::AuditEntry, d: &Value) -> String {
    if e.kind != "admin" {
        return String::new();
    }
    let action = d.get("action").and_then(Value::as_str).unwrap_or("-");
    let object = if e.volumes.is_empty() {
        d.pointer("/change/policy")
            .and_then(Value::as_str)
            .unwrap_or("-")
            .to_owned()
    } else {
        e.volumes.join(",")
    };
    format!(" {action} {object}")
}

/// Every field of an entry, details parsed as JSON.
fn entry_json(e: &pb::AuditEntry) -> Value {
    json!({
        "id": e.id,
        "time": rfc3339(e.at_unix),
        "at_unix": e.at_unix,
        "kind": e.kind,
        "verdict": e.verdict,
        "volumes": e.volumes,
        "reason_codes": e.reason_codes,
        "details": details(e),
        "client": e.client,
        "prev_hash": hex::encode(&e.prev_hash),
        "hash": hex::encode(&e.hash),
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
