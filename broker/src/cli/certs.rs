//! `broker certs import|list`: the certificate cache, offline (files only,
//! no server). Import verifies every certificate and CRL against the pinned
//! ARKs before it stores it; see `broker::certsource::import`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::json;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::Outcome;
use broker::certsource::import::{import, items_from_file, Item};
use broker::certsource::CertCache;
use broker::config::Config;
use broker::verify::TrustStore;

/// `broker certs ...`
#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Import AMD certificates and CRLs (PEM or DER; VCEK, VLEK, ASK, ASVK,
    /// ARK, CRL) into the certificate cache, keyed by generation, hwID and
    /// TCB. Each is verified against the pinned ARK of its generation
    /// (signatures, validity, CRLs) and refused with a reason otherwise.
    /// Exit 0 if all were imported, 1 if any was refused.
    Import(ImportArgs),
    /// List the certificate cache.
    List(ListArgs),
}

/// Where the cache is and whom to trust.
#[derive(Debug, Args)]
pub struct CacheArgs {
    /// The broker's config: its `[attestation] cert_cache` and simulated root.
    #[arg(
        long,
        short = 'c',
        env = "KEYBROKER_CONFIG",
        value_name = "FILE",
        required_unless_present = "cache"
    )]
    pub config: Option<PathBuf>,
    /// The certificate cache directory (instead of the config's `cert_cache`).
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
}

/// `broker certs import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// A certificate or CRL file, or a directory: every file in it (not
    /// recursive). PEM files may hold several certificates and CRLs.
    pub path: PathBuf,
    /// Cache and trust.
    #[command(flatten)]
    pub cache: CacheArgs,
    /// Verify as of this time (RFC 3339, e.g. 2025-06-01T00:00:00Z) instead of now.
    #[arg(long, value_name = "RFC3339")]
    pub at: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `broker certs list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Cache and trust.
    #[command(flatten)]
    pub cache: CacheArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs a certs command.
pub fn run(cmd: CertsCommand) -> anyhow::Result<Outcome> {
    match cmd {
        CertsCommand::Import(a) => run_import(a),
        CertsCommand::List(a) => run_list(a),
    }
}

fn resolve(args: &CacheArgs) -> anyhow::Result<(CertCache, TrustStore)> {
    let config = match &args.config {
        Some(c) => Some(Config::load(c)?),
        None => None,
    };
    let trust = match &config {
        Some(c) => broker::wiring::trust(c)?,
        None => TrustStore::amd(),
    };
    let dir = match (&args.cache, &config) {
        (Some(d), _) => d.clone(),
        (None, Some(c)) => c.cert_cache.clone(),
        (None, None) => anyhow::bail!("no certificate cache: pass --config FILE or --cache DIR"),
    };
    Ok((CertCache::new(dir), trust))
}

/// Files that could not be read as certificates: (file, reason).
type Unreadable = Vec<(String, String)>;

fn read_inputs(path: &Path) -> anyhow::Result<(Vec<Item>, Unreadable)> {
    let meta = std::fs::metadata(path).with_context(|| {
        format!(
            "cannot read {}; give a certificate or CRL file, or a directory of them",
            path.display()
        )
    })?;
    let files: Vec<PathBuf> = if meta.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("cannot list {}", path.display()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        v.sort();
        if v.is_empty() {
            anyhow::bail!(
                "{} holds no files; put the certificates and CRLs (PEM or DER, e.g. KDS's vcek.der, cert_chain.pem, crl.der) in it",
                path.display()
            );
        }
        v
    } else {
        vec![path.to_owned()]
    };
    let mut items = Vec::new();
    let mut unreadable = Vec::new();
    for f in files {
        let origin = f.display().to_string();
        match std::fs::read(&f) {
            Ok(data) => match items_from_file(&origin, &data) {
                Ok(mut v) => items.append(&mut v),
                Err(reason) => unreadable.push((origin, reason.to_string())),
            },
            Err(e) => unreadable.push((origin, format!("cannot read it: {e}"))),
        }
    }
    Ok((items, unreadable))
}

fn run_import(a: ImportArgs) -> anyhow::Result<Outcome> {
    let now = match &a.at {
        Some(s) => OffsetDateTime::parse(s, &Rfc3339).map_err(|e| {
            anyhow::anyhow!(
                "--at {s:?} is not an RFC 3339 time ({e}); write it like 2025-06-01T00:00:00Z"
            )
        })?,
        None => OffsetDateTime::now_utc(),
    };
    let (cache, trust) = resolve(&a.cache)?;
    let (items, unreadable) = read_inputs(&a.path)?;
    let results = import(&cache, &trust, &items, now);
    let rel = |p: &Path| {
        p.strip_prefix(cache.root())
            .unwrap_or(p)
            .display()
            .to_string()
    };
    let mut refused: Vec<(String, String)> = unreadable;
    let mut imported = Vec::new();
    for r in results {
        match r {
            Ok(i) => imported.push(i),
            Err(e) => refused.push((e.origin, e.reason)),
        }
    }
    if a.json {
        let out = json!({
            "cache": cache.root().display().to_string(),
            "imported": imported.iter().map(|i| json!({
                "file": i.origin, "what": i.what, "path": i.path.as_deref().map(rel),
            })).collect::<Vec<_>>(),
            "refused": refused.iter().map(|(f, r)| json!({"file": f, "reason": r})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for i in &imported {
            match &i.path {
                Some(p) => println!("imported {}: {} -> {}", i.origin, i.what, rel(p)),
                None => println!("skipped  {}: {}", i.origin, i.what),
            }
        }
        for (f, r) in &refused {
            eprintln!("broker: refused {f}: {r}");
        }
        println!(
            "{} imported, {} refused (cache {})",
            imported.iter().filter(|i| i.path.is_some()).count(),
            refused.len(),
            cache.root().display()
        );
    }
    Ok(if refused.is_empty() {
        Outcome::Success
    } else {
        Outcome::Refused
    })
}

fn run_list(a: ListArgs) -> anyhow::Result<Outcome> {
    let (cache, _) = resolve(&a.cache)?;
    let entries = cache.list().with_context(|| {
        format!(
            "cannot list the certificate cache {}",
            cache.root().display()
        )
    })?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
    } else if entries.is_empty() {
        println!("certificate cache {} is empty", cache.root().display());
    } else {
        for e in &entries {
            let mut line = format!("{:<10} {:<16}", e.generation, e.kind);
            if let Some(h) = &e.hwid {
                line.push_str(&format!(" hwid {h}"));
            }
            if let Some(t) = &e.tcb {
                line.push_str(&format!(" tcb {t}"));
            }
            println!("{line}  {}", e.path);
        }
    }
    Ok(Outcome::Success)
}
