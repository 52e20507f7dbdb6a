//! The `broker` command line: parsing (clap derive; each doc comment is the
//! help text) and one function per command. `main.rs` only maps
//! [`run`]'s result to an exit code.
//!
//! Exit codes: 0 success, 1 refused / not found / failed, 2 usage error.

mod admin_conn;
mod audit;
mod audit_prune;
mod backup;
mod certs;
mod check_config;
mod explain;
mod init;
mod inspect;
mod keys;
mod measure;
mod pin;
mod platforms;
mod policy;
mod report;
mod serve;
mod volume;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Attested disk-key broker for AMD SEV-SNP guests.
///
/// Releases LUKS keys only to guests that prove, with an AMD-signed
/// attestation report, that they run the expected image on genuine AMD
/// hardware with a safe policy.
#[derive(Debug, Parser)]
#[command(name = "broker", version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Log lines (`broker serve`) and the final error as text or as one
    /// JSON object per line.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t,
        env = "KEYBROKER_LOG_FORMAT"
    )]
    pub log_format: crate::logging::LogFormat,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a broker directory: config, master key, TLS key and certificate.
    Init(init::InitArgs),
    /// Serve guests: gRPC over TLS on the configured guest port.
    Serve(ConfigArg),
    /// Check a config file without starting anything: exit 0 when `serve`
    /// could use it, 1 naming the line and field of the first problem.
    CheckConfig(ConfigArg),
    /// Print the pin of the broker's TLS key (`sha256:<hex>`, as `broker
    /// init` printed it), for guests' `--pin` and tokens.
    Pin(pin::PinArgs),
    /// Offline inspection of attestation reports.
    #[command(subcommand)]
    Report(report::ReportCommand),
    /// Enrolled volumes.
    #[command(subcommand)]
    Volume(volume::VolumeCommand),
    /// Release policies.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Compute the expected launch measurement of a SEV, SEV-ES or SEV-SNP
    /// guest from its firmware and boot inputs (offline; prints the hex
    /// digest for a policy's `measurements`).
    Measure(measure::MeasureArgs),
    /// The audit log: every Challenge, Attest and admin decision, filtered
    /// (`--volume`, `--since`, `--verdict`, ...); `audit verify` checks that
    /// its hash chain is intact.
    Audit(audit::AuditArgs),
    /// Platform inventory from the audit log: every chip seen, its
    /// generation, TCB and SNP firmware, first and last seen, and whether
    /// it meets each policy's minimum TCB and firmware.
    Platforms(platforms::PlatformsArgs),
    /// Which checks a report would fail for a volume (evidence, volume
    /// state, every policy check, with expected and actual values).
    /// Exit 0 if the volume would be released, 1 if not.
    Explain(explain::ExplainArgs),
    /// The certificate cache: `certs import` (verified against the pinned ARKs), `certs list`.
    #[command(subcommand)]
    Certs(certs::CertsCommand),
    /// Re-seal every key version under a new master key, in batches
    /// (progress on stderr); resumable: after an interruption, run it again.
    /// Exit 0 when done, 1 if refused.
    RotateMaster(keys::RotateMasterArgs),
    /// The broker's keys at a glance: master key and generation, records per
    /// master key, rotations under way, retired versions, listeners.
    Status(keys::StatusArgs),
    /// Write a consistent snapshot of the whole store (sealed keys,
    /// policies, audit log; never the master key) to a new file.
    Backup(backup::BackupArgs),
    /// Restore a `broker backup` snapshot into the configured store, which
    /// must be empty.
    Restore(backup::RestoreArgs),
    /// The store itself: `store migrate` moves it to another backend.
    #[command(subcommand)]
    Store(backup::StoreCommand),
}

/// `--config FILE`, shared by the commands that need a broker directory.
#[derive(Debug, Args)]
pub struct ConfigArg {
    /// The broker's config file (written by `broker init`).
    #[arg(long, short = 'c', env = "KEYBROKER_CONFIG", value_name = "FILE")]
    pub config: PathBuf,
}

/// How a command ended, for the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Exit 0.
    Success,
    /// Exit 1: a refusal, verification failure or missing object, already reported.
    Refused,
    /// Exit 2: a usage error, already reported (e.g. `volume delete` without `--yes`).
    Usage,
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<Outcome> {
    match cli.command {
        Command::Init(a) => init::run(a),
        Command::Serve(a) => serve::run(a, cli.log_format),
        Command::CheckConfig(a) => check_config::run(a),
        Command::Pin(a) => pin::run(a),
        Command::Report(c) => report::run(c),
        Command::Volume(c) => volume::run_volume(c),
        Command::Policy(c) => policy::run_policy(c),
        Command::Measure(a) => measure::run(a),
        Command::Audit(a) => audit::run(a),
        Command::Platforms(a) => platforms::run(a),
        Command::Explain(a) => explain::run(a),
        Command::Certs(c) => certs::run(c),
        Command::RotateMaster(a) => keys::run_rotate_master(a),
        Command::Status(a) => keys::run_status(a),
        Command::Backup(a) => backup::run_backup(a),
        Command::Restore(a) => backup::run_restore(a),
        Command::Store(c) => backup::run_store(c),
    }
}

/// Decodes a report that did not verify, for display only: the values it
/// claims, which nothing vouches for.
fn unverified_claims(bytes: &[u8]) -> Option<broker::verify::ReportClaims> {
    let d = broker::verify::decode_report(bytes).ok()?;
    // v2 reports name their generation only in the VEK; Milan and Genoa
    // share the TCB layout, so decoding as Milan shows the right numbers.
    let generation = d.generation.unwrap_or(broker::verify::Generation::Milan);
    Some(d.claims_for(
        generation,
        d.signer.unwrap_or(broker::verify::SignerKind::Vcek),
    ))
}
