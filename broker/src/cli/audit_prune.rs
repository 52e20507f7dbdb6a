//! `broker audit prune --before DATE`: audit retention through the
//! broker's admin API. The entries older than DATE are removed, the newest
//! is always kept, and the chain is verified from an anchor the broker
//! MACs under the audit chain key; the prune itself is an audit entry.

use clap::Args;
use keybroker_proto::admin_pb as pb;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Date, OffsetDateTime};

use super::admin_conn::AdminConn;
use super::audit::rfc3339;
use super::Outcome;

/// Arguments of `broker audit prune`.
#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Where the broker's admin API is.
    #[command(flatten)]
    pub conn: AdminConn,
    /// Remove the entries before this time: RFC 3339
    /// (2025-06-01T00:00:00Z) or a date (2025-06-01, midnight UTC). Never
    /// in the future; the newest entry is always kept.
    #[arg(long, value_name = "DATE", value_parser = parse_date)]
    pub before: i64,
}

/// Parses `--before`: RFC 3339, or `YYYY-MM-DD` as midnight UTC.
pub fn parse_date(s: &str) -> Result<i64, String> {
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Ok(t.unix_timestamp());
    }
    if let Ok(d) = Date::parse(s, format_description!("[year]-[month]-[day]")) {
        return Ok(d.midnight().assume_utc().unix_timestamp());
    }
    Err(format!(
        "{s:?} is not a date: write YYYY-MM-DD (2025-06-01, midnight UTC) or an RFC 3339 time \
         (2025-06-01T00:00:00Z)"
    ))
}

/// Runs `broker audit prune`.
pub fn run(args: PruneArgs) -> anyhow::Result<Outcome> {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    if args.before > now {
        anyhow::bail!(
            "--before {} is in the future; prune removes entries older than a time that has \
             passed: nothing was changed",
            rfc3339(args.before)
        );
    }
    let s = args.conn.connect()?;
    let Some(r) = s.run(s.client().audit_prune(pb::AuditPruneRequest {
        before_unix: args.before,
    }))?
    else {
        return Ok(Outcome::Refused);
    };
    if r.removed == 0 {
        println!(
            "nothing to prune: no entry before {} (the chain starts at entry {})",
            rfc3339(args.before),
            r.first_kept_id
        );
    } else {
        println!(
            "pruned {} audit entries before {}: the chain starts at entry {} (this prune is entry {})",
            r.removed,
            rfc3339(args.before),
            r.first_kept_id,
            r.prune_entry_id
        );
    }
    Ok(Outcome::Success)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_rfc3339_or_a_day() {
        assert_eq!(parse_date("2025-06-01"), Ok(1_748_736_000));
        assert_eq!(parse_date("2025-06-01T00:00:00Z"), Ok(1_748_736_000));
        assert_eq!(parse_date("2025-06-01T02:00:00+02:00"), Ok(1_748_736_000));
        assert_eq!(parse_date("1970-01-02"), Ok(86_400));
    }

    #[test]
    fn malformed_dates_say_what_to_write() {
        for bad in [
            "",
            "2025-6-1",
            "2025-06-31",
            "2025-13-01",
            "01/06/2025",
            "yesterday",
            "30d",
            "2025-06-01 00:00:00",
            "2025-06-01T00:00:00",
            " 2025-06-01",
        ] {
            let e = parse_date(bad).unwrap_err();
            assert!(
                e.contains("YYYY-MM-DD") && e.contains("RFC 3339"),
                "{bad:?}: {e}"
            );
        }
    }
}
