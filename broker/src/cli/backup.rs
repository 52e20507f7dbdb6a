//! `broker backup`, `broker restore` and `broker store migrate`: a whole
//! store as a snapshot file, back into an empty store, or moved from one
//! store to another (SQLite to PostgreSQL). Never the master key.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};

use super::{ConfigArg, Outcome};
use broker::config::{Config, PostgresConfig, StoreConfig};
use broker::store::{Snapshot, Store, StoreUrl};

const NO_MASTER_KEY: &str = "it holds sealed keys only, NOT the master key: without master.key \
     (kept offline, apart from this file) nothing in it can be unsealed";

/// Arguments of `broker backup`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The snapshot file to write (created with mode 0600; must not exist).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

/// Arguments of `broker restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// A snapshot written by `broker backup`.
    #[arg(value_name = "FILE")]
    file: PathBuf,
}

/// `broker store ...`.
#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Move a whole store into another, empty one (SQLite to PostgreSQL):
    /// sealed keys, policies and the audit chain as they are. Stop the
    /// brokers first. Afterwards the SQLite file is renamed so no broker
    /// can serve it again; point `[store] url` at the new store. Running it
    /// again after an interruption finishes it.
    Migrate(MigrateArgs),
}

/// Arguments of `broker store migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The store to move: `sqlite:PATH` (or a path) or `postgres://...`.
    #[arg(long, value_name = "URL")]
    from: String,
    /// The empty store to move it into.
    #[arg(long, value_name = "URL")]
    to: String,
    /// Password file (mode 0600) for a PostgreSQL `--to`.
    #[arg(long, value_name = "FILE")]
    to_password_file: Option<PathBuf>,
    /// The store's master key file: it unseals the audit chain key, so the
    /// keyed chain is verified before and after the move (needed unless
    /// the source's chain has no key yet).
    #[arg(long, value_name = "FILE")]
    master_key: Option<PathBuf>,
}

fn open_config_store(config: &Path) -> anyhow::Result<Arc<dyn Store>> {
    let cfg = Config::load(config)?;
    Ok(broker::wiring::keyed_store(&cfg)?)
}

fn open_url(
    url: &str,
    password_file: Option<PathBuf>,
    must_exist: bool,
) -> anyhow::Result<Arc<dyn Store>> {
    let store = match StoreUrl::parse(url).map_err(anyhow::Error::msg)? {
        StoreUrl::Sqlite(path) => {
            if must_exist && !path.exists() {
                bail!(
                    "{} does not exist; name the broker's SQLite file",
                    path.display()
                );
            }
            StoreConfig::Sqlite { path }
        }
        StoreUrl::Postgres(url) => StoreConfig::Postgres(PostgresConfig {
            url,
            password_file,
            ca_cert: None,
            pool_size: 2,
            timeout: Duration::from_secs(30),
        }),
    };
    Ok(broker::wiring::open_store(&store)?)
}

fn counts(s: &Snapshot) -> String {
    format!(
        "{} volumes, {} key versions, {} policy revisions, {} audit entries",
        s.volumes.len(),
        s.keys.len(),
        s.policies.len(),
        s.audit.len()
    )
}

/// `broker backup --out FILE`.
pub fn run_backup(a: BackupArgs) -> anyhow::Result<Outcome> {
    let store = open_config_store(&a.config.config)?;
    store.verify_audit_chain().context(
        "the audit chain does not verify; back up the database with its own tools and investigate",
    )?;
    let snap = store.export_snapshot()?;
    let json = serde_json::to_vec(&snap)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&a.out)
        .with_context(|| format!("cannot create {} (it must not exist)", a.out.display()))?;
    f.write_all(&json)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", a.out.display()))?;
    println!("backup written to {}: {}", a.out.display(), counts(&snap));
    eprintln!("broker: {} {NO_MASTER_KEY}", a.out.display());
    Ok(Outcome::Success)
}

fn read_snapshot(path: &Path) -> anyhow::Result<Snapshot> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "{} is not a snapshot written by `broker backup`",
            path.display()
        )
    })
}

/// `broker restore FILE`.
pub fn run_restore(a: RestoreArgs) -> anyhow::Result<Outcome> {
    let snap = read_snapshot(&a.file)?;
    // A restore may create the (empty) database it fills.
    let cfg = Config::load(&a.config.config)?;
    let store = broker::wiring::create_store(&cfg)?;
    store.import_snapshot(&snap)?;
    // The restored chain key must unseal with this master key.
    broker::audit_key::load(store.as_ref(), &broker::wiring::keyring(&cfg)?, false)?;
    let n = store.verify_audit_chain()?;
    println!(
        "restored {}; the audit chain of {n} entries verifies",
        counts(&snap)
    );
    Ok(Outcome::Success)
}

/// `broker store ...`.
pub fn run_store(c: StoreCommand) -> anyhow::Result<Outcome> {
    match c {
        StoreCommand::Migrate(a) => run_migrate(a),
    }
}

fn run_migrate(a: MigrateArgs) -> anyhow::Result<Outcome> {
    let from_url = StoreUrl::parse(&a.from).map_err(anyhow::Error::msg)?;
    let from = open_url(&a.from, None, true)?;
    let keyring = match &a.master_key {
        Some(path) => Some(
            broker::keys::Keyring::load(path)
                .with_context(|| format!("cannot load the master key {}", path.display()))?,
        ),
        None => None,
    };
    match &keyring {
        Some(k) => {
            broker::audit_key::load(from.as_ref(), k, false)?;
        }
        None => {
            if from.audit_key_record()?.is_some() {
                bail!(
                    "the source's audit chain is keyed: give --master-key FILE (the broker's \
                     master.key) so it is verified before and after the move"
                );
            }
        }
    }
    from.verify_audit_chain()
        .context("the source's audit chain does not verify; not moving it")?;
    let snap = from.export_snapshot()?;
    let to = open_url(&a.to, a.to_password_file.clone(), false)?;
    match to.import_snapshot(&snap) {
        Ok(()) => {}
        // Resuming: an earlier run imported it all (one transaction) and
        // stopped before retiring the source.
        Err(broker::store::StoreError::Conflict(_)) if to.export_snapshot()? == snap => {
            eprintln!(
                "broker: the target already holds exactly this store (an earlier run); finishing"
            );
        }
        Err(e) => {
            return Err(e).context("the target store is not empty; migrate only into a new one")
        }
    }
    // The copy must be exact before the source is retired.
    if to.export_snapshot()? != snap {
        bail!("the target does not read back as the source; the source is left as it was");
    }
    if let Some(k) = &keyring {
        broker::audit_key::load(to.as_ref(), k, false)?;
    }
    let n = to.verify_audit_chain()?;
    println!(
        "moved {} from {from_url} to {}; the audit chain of {n} entries verifies",
        counts(&snap),
        broker::store::redact_url(&a.to)
    );
    match from_url {
        StoreUrl::Sqlite(path) => {
            from.sync_durable()?;
            drop(from);
            let retired = PathBuf::from(format!("{}.migrated", path.display()));
            std::fs::rename(&path, &retired)
                .with_context(|| format!("cannot rename {}", path.display()))?;
            for ext in ["-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{ext}", path.display()));
            }
            println!(
                "{} is now {}: no broker can serve it; set [store] url = {:?} in every broker's config",
                path.display(),
                retired.display(),
                broker::store::redact_url(&a.to)
            );
        }
        StoreUrl::Postgres(_) => eprintln!(
            "broker: the source database still holds everything: make sure no broker serves it, then drop it"
        ),
    }
    Ok(Outcome::Success)
}
