//! `broker policy ...`: release policies, through the broker's admin API:
//! set (validated first), show, list, diff against a file, and in-place
//! edits of the measurement and blocked-chip lists.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Subcommand;
use keybroker_proto::admin_pb as pb;

use super::admin_conn::{AdminConn, Session};
use super::Outcome;
use broker::policy::Policy;

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
