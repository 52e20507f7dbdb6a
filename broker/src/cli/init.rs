//! `broker init`: a new broker directory with secure defaults.

use std::fs;
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use clap::Args;

use super::Outcome;
use broker::config::config_text_in;
use broker::keys::MasterKey;
use broker::tls;

/// The packaged layout's data directory (the unit's StateDirectory).
pub const PACKAGED_DIR: &str = "/var/lib/keybroker";
/// The packaged layout's config file (in the unit's ConfigurationDirectory).
pub const PACKAGED_CONFIG: &str = "/etc/keybroker/config.toml";

/// Arguments of `broker init`.
///
/// With neither `--dir` nor `--config`, the layout of the `keybroker`
/// package: the keys, the TLS key and the database in /var/lib/keybroker
/// (created by the package, owned by the `keybroker` user: what `init`
/// writes there as root is given to that owner), the config in
/// /etc/keybroker/config.toml.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Directory to create (must not exist or be empty) for the master key,
    /// the TLS key and certificate and the database [default:
    /// /var/lib/keybroker].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Where to write the config file [default: DIR/config.toml with
    /// --dir, else /etc/keybroker/config.toml]. Outside DIR it names the
    /// broker's files by absolute paths.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Guest-facing listen address written into the config.
    #[arg(long, default_value = "127.0.0.1:8443", value_name = "ADDR")]
    pub listen: SocketAddr,
    /// DNS names and IP addresses for the TLS certificate (repeatable).
    #[arg(long = "san", value_name = "NAME", default_values_t = vec!["localhost".to_string(), "127.0.0.1".to_string()])]
    pub sans: Vec<String>,
    /// The admin socket written into the config's `[admin]` section
    /// (relative paths are taken from the current directory).
    #[arg(long, value_name = "PATH", default_value = broker::config::DEFAULT_ADMIN_SOCKET)]
    pub admin_socket: PathBuf,
    /// The store written into the config's `[store] url`: `sqlite:PATH`
    /// (relative to the directory) or `postgres://USER@HOST/DB`. Put a
    /// PostgreSQL password in `[store] password_file`, not here.
    #[arg(long, value_name = "URL", default_value = "sqlite:broker.db")]
    pub store_url: String,
}

/// Creates config.toml, master.key (0600), tls/key.pem (0600), tls/cert.pem
/// and prints the certificate's SPKI pin for guests.
pub fn run(args: InitArgs) -> anyhow::Result<Outcome> {
    let (dir, config) = match (&args.dir, &args.config) {
        (Some(d), Some(c)) => (d.clone(), c.clone()),
        (Some(d), None) => (d.clone(), d.join("config.toml")),
        (None, c) => (
            PathBuf::from(PACKAGED_DIR),
            c.clone().unwrap_or_else(|| PathBuf::from(PACKAGED_CONFIG)),
        ),
    };
    let dir = &dir;
    let admin_socket = if args.admin_socket.is_absolute() {
        args.admin_socket.clone()
    } else {
        std::env::current_dir()
            .context("cannot read the current directory")?
            .join(&args.admin_socket)
    };
    let store_url = broker::store::StoreUrl::parse(&args.store_url)
        .map_err(|e| anyhow::anyhow!("--store-url: {e}"))?;
    if let broker::store::StoreUrl::Postgres(url) = &store_url {
        if broker::store::redact_url(url) != *url {
            bail!(
                "--store-url holds a password; give the URL without it and write the password \
                 into a file (mode 0600) named by [store] password_file, so it never sits in the config"
            );
        }
    }
    if dir.exists()
        && fs::read_dir(dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .next()
            .is_some()
    {
        bail!(
            "{} exists and is not empty; choose a new directory so no existing key is overwritten",
            dir.display()
        );
    }
    if config.exists() {
        bail!(
            "{} exists; choose another --config (or remove it) so that no broker's config is overwritten",
            config.display()
        );
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir.join("tls"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    MasterKey::generate_to_file(&dir.join("master.key"))
        .with_context(|| format!("cannot write {}", dir.join("master.key").display()))?;
    let generated = tls::self_signed(&args.sans)?;
    write_new(
        &dir.join("tls/key.pem"),
        generated.key_pem.as_bytes(),
        0o600,
    )?;
    write_new(
        &dir.join("tls/cert.pem"),
        generated.cert_pem.as_bytes(),
        0o644,
    )?;
    // The config names the files relative to itself when it sits in DIR,
    // else by absolute paths.
    let abs_dir = absolute(dir)?;
    let data_dir =
        (absolute(&config)?.parent() != Some(abs_dir.as_path())).then_some(abs_dir.as_path());
    if let Some(parent) = config.parent() {
        fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    write_new(
        &config,
        config_text_in(args.listen, &admin_socket, data_dir, &args.store_url).as_bytes(),
        0o644,
    )?;
    // The database, with the master key's key-check value: `broker serve`
    // never creates one, so a lost database is noticed, not replaced.
    let loaded = broker::config::Config::load(&config)?;
    let store = broker::wiring::create_store(&loaded)?;
    let keyring = broker::wiring::keyring(&loaded)?;
    broker::startup::check_master_key(store.as_ref(), &keyring, &loaded.master_key)?;
    // A new database's audit chain is keyed from its first entry.
    broker::audit_key::load(store.as_ref(), &keyring, true)?;
    drop(store);
    let database = match &loaded.store {
        broker::config::StoreConfig::Sqlite { path } => Some(path.as_path()),
        broker::config::StoreConfig::Postgres(_) => None,
    };
    give_to_dir_owner(dir, database)?;
    println!("created broker directory {}", dir.display());
    println!("config:   {}", config.display());
    println!("store:    {store_url}");
    println!(
        "admin:    {} (created by `broker serve`)",
        args.admin_socket.display()
    );
    println!("spki pin: {}", generated.spki_pin);
    eprintln!(
        "broker: back up {} offline: without it no enrolled key can be recovered",
        dir.join("master.key").display()
    );
    Ok(Outcome::Success)
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// `path` made absolute against the current directory.
fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("cannot resolve {}", path.display()))
}

/// Run as root in a directory that another user owns (the package's
/// /var/lib/keybroker, the `keybroker` user's), hands what `init` wrote
/// there to that user, so that the service can read its keys.
fn give_to_dir_owner(dir: &Path, database: Option<&Path>) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let owner = fs::metadata(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    if rustix::process::geteuid().is_root() && owner.uid() != 0 {
        let files = ["master.key", "tls", "tls/key.pem", "tls/cert.pem"].map(|p| dir.join(p));
        // SQLite's -wal and -shm files are gone once the store is closed.
        for p in files.iter().map(PathBuf::as_path).chain(database) {
            std::os::unix::fs::chown(p, Some(owner.uid()), Some(owner.gid()))
                .with_context(|| format!("cannot give {} to uid {}", p.display(), owner.uid()))?;
        }
    }
    Ok(())
}
