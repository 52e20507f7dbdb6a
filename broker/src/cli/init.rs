//! `broker init`: a new broker directory with secure defaults.

use std::fs;
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use clap::Args;

use super::Outcome;
use broker::config::config_text_with_store;
use broker::keys::MasterKey;
use broker::tls;

/// Arguments of `broker init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Directory to create (must not exist or be empty).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
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
    let dir = &args.dir;
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
    write_new(
        &dir.join("config.toml"),
        config_text_with_store(args.listen, &admin_socket, &args.store_url).as_bytes(),
        0o644,
    )?;
    // The database, with the master key's key-check value: `broker serve`
    // never creates one, so a lost database is noticed, not replaced.
    let config = broker::config::Config::load(&dir.join("config.toml"))?;
    let store = broker::wiring::create_store(&config)?;
    let keyring = broker::wiring::keyring(&config)?;
    broker::startup::check_master_key(store.as_ref(), &keyring, &config.master_key)?;
    println!("created broker directory {}", dir.display());
    println!("config:   {}", dir.join("config.toml").display());
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
