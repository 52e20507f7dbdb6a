//! A real broker in this process: a broker directory (config, master key,
//! TLS identity, SQLite file) with a simulated SEV-SNP platform beside it,
//! and the guest port and admin socket served on loopback.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use broker::config::Config;
use broker::keys::{self, MasterKey, VolumeKey};
use broker::store::NewVolume;
use keybroker_proto::admin_pb::{self, admin_client::AdminClient};
use tonic::transport::Channel;

use crate::sim::{SimParams, SimPlatform};

/// Minimum TCB tables at zero for every generation, so any simulated
/// platform's TCB passes.
const ANY_TCB: &str = r#"
[min_tcb.milan]
bootloader = 0
tee = 0
snp = 0
microcode = 0

[min_tcb.genoa]
bootloader = 0
tee = 0
snp = 0
microcode = 0

[min_tcb.turin]
fmc = 0
bootloader = 0
tee = 0
snp = 0
microcode = 0
"#;

/// A policy that admits exactly `measurement` on the simulated platform's
/// generation (minimum TCB at the platform's own values).
pub fn policy_for(measurement: &[u8; 48], extra: &str) -> String {
    format!(
        "version = 1\nmeasurements = [\"{m}\"]\n{extra}\n{ANY_TCB}",
        m = hex::encode(measurement)
    )
}

/// A policy that admits only Azure vTPM guests: the simulated `paravisor`
/// measurement and PCR set `pcr_set` (a `[[vtpm.pcr_sets]]` entry, as
/// `guest-unlock status --pcrs` prints it), on any simulated platform.
pub fn vtpm_policy_for(paravisor: &[u8; 48], pcr_set: &str) -> String {
    format!(
        "version = 1\n{ANY_TCB}\n[vtpm]\naccept = true\nparavisor_measurements = [\"{p}\"]\n\n{pcr_set}",
        p = hex::encode(paravisor)
    )
}

/// How to set up a broker.
#[derive(Debug, Clone)]
pub struct BrokerOptions {
    /// Name the simulated ARK in the config (else simulated evidence is refused).
    pub trust_simulated: bool,
    /// Use the simulated platform's directory as the offline certificate
    /// directory (`certs_dir`), as an Azure owner imports the VCEKs: the
    /// simulated Azure guest, like a real one, sends none.
    pub sim_certs_dir: bool,
    /// Nonce lifetime.
    pub nonce_ttl_secs: u32,
    /// Rotation session lifetime (`ConfirmRotation` after an Attest).
    pub rotation_session_ttl_secs: u32,
    /// `[limits] requests_per_sec_per_address`: 0 (off) by default, since
    /// tests send many requests from one loopback address; the limit's own
    /// test sets it.
    pub requests_per_sec: u32,
}

impl Default for BrokerOptions {
    fn default() -> Self {
        BrokerOptions {
            trust_simulated: true,
            sim_certs_dir: false,
            nonce_ttl_secs: 60,
            rotation_session_ttl_secs: broker::config::DEFAULT_ROTATION_SESSION_TTL_SECS,
            requests_per_sec: 0,
        }
    }
}

/// A broker directory with a simulated platform beside it.
pub struct BrokerDir {
    /// Temporary directory holding everything.
    pub dir: tempfile::TempDir,
    /// `config.toml`.
    pub config_path: PathBuf,
    /// The simulated platform (guest side).
    pub sim: SimPlatform,
    /// SPKI pin of the broker's TLS certificate.
    pub pin: String,
}

impl BrokerDir {
    /// Creates config, master key, TLS identity and a simulated platform.
    pub fn create(opts: &BrokerOptions) -> anyhow::Result<BrokerDir> {
        let dir = tempfile::tempdir()?;
        let root = dir.path();
        std::fs::create_dir_all(root.join("tls"))?;
        MasterKey::generate_to_file(&root.join("master.key"))?;
        let tls = broker::tls::self_signed(&["localhost".into(), "127.0.0.1".into()])?;
        write_mode(&root.join("tls/key.pem"), tls.key_pem.as_bytes(), 0o600)?;
        write_mode(&root.join("tls/cert.pem"), tls.cert_pem.as_bytes(), 0o644)?;
        let sim = SimPlatform::generate(&root.join("sim"), &SimParams::default())?;
        let mut text =
            broker::config::config_text("127.0.0.1:0".parse()?, &root.join("admin.sock"))
                .replace(
                    "\nnonce_ttl_secs = 60",
                    &format!("\nnonce_ttl_secs = {}", opts.nonce_ttl_secs),
                )
                .replace(
                    &format!(
                        "rotation_session_ttl_secs = {}",
                        broker::config::DEFAULT_ROTATION_SESSION_TTL_SECS
                    ),
                    &format!(
                        "rotation_session_ttl_secs = {}",
                        opts.rotation_session_ttl_secs
                    ),
                );
        text.push_str(&format!(
            "\n[limits]\nrequests_per_sec_per_address = {0}\nrequest_burst_per_address = {0}\n",
            opts.requests_per_sec
        ));
        if opts.sim_certs_dir {
            text = text.replace("# certs_dir = \"certs\"", "certs_dir = \"sim\"");
        }
        if opts.trust_simulated {
            text.push_str(&format!(
                "\n[attestation.simulated]\nark = \"sim/ark.pem\"\ngeneration = \"{}\"\n",
                sim.generation().name().to_lowercase()
            ));
        }
        let config_path = root.join("config.toml");
        std::fs::write(&config_path, text)?;
        // As `broker init` does: the database, created once.
        broker::wiring::create_store(&Config::load(&config_path)?)?;
        Ok(BrokerDir {
            dir,
            config_path,
            sim,
            pin: tls.spki_pin.to_string(),
        })
    }

    /// [`BrokerDir::create`], with `[store] url = store_url` (for example
    /// a PostgreSQL database of [`crate::pg::PgCluster`]).
    pub fn create_with_store(opts: &BrokerOptions, store_url: &str) -> anyhow::Result<BrokerDir> {
        let dir = BrokerDir::create(opts)?;
        let text = std::fs::read_to_string(&dir.config_path)?;
        let replaced = text.replace(
            "url = \"sqlite:broker.db\"",
            &format!("url = {}", serde_json::Value::from(store_url)),
        );
        anyhow::ensure!(
            replaced != text,
            "the config names no sqlite:broker.db store"
        );
        std::fs::write(&dir.config_path, replaced)?;
        Ok(dir)
    }

    /// A replica of this broker, provisioned as docs/operations.md says: a
    /// new directory with a copy of the config (its own admin socket), the
    /// master key, the TLS identity and the simulated root; the store is
    /// the same database (meaningful for a PostgreSQL store only).
    pub fn replica(&self) -> anyhow::Result<BrokerDir> {
        let dir = tempfile::tempdir()?;
        let status = std::process::Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", self.dir.path().display()))
            .arg(dir.path())
            .status()?;
        anyhow::ensure!(status.success(), "cp -a failed");
        let _ = std::fs::remove_file(dir.path().join("admin.sock"));
        let config_path = dir.path().join("config.toml");
        let text = std::fs::read_to_string(&config_path)?.replace(
            &self.admin_socket().display().to_string(),
            &dir.path().join("admin.sock").display().to_string(),
        );
        std::fs::write(&config_path, text)?;
        let sim = SimPlatform::load(&dir.path().join("sim"))?;
        Ok(BrokerDir {
            dir,
            config_path,
            sim,
            pin: self.pin.clone(),
        })
    }

    /// The resolved config.
    pub fn config(&self) -> anyhow::Result<Config> {
        Ok(Config::load(&self.config_path)?)
    }

    /// The admin socket a [`RunningBroker`] of this directory serves.
    pub fn admin_socket(&self) -> PathBuf {
        self.dir.path().join("admin.sock")
    }

    /// Sets policy `name` from TOML text, directly in the store (before or
    /// beside a running broker; [`RunningBroker::admin`] goes through the API).
    pub fn set_policy(&self, name: &str, text: &str) -> anyhow::Result<()> {
        broker::policy::Policy::from_toml(text).context("test policy is invalid")?;
        let store = broker::wiring::store(&self.config()?)?;
        store.put_policy(name, text)?;
        Ok(())
    }

    /// Enrolls `volume` under `policy` and returns its key (for comparison in tests).
    pub fn add_volume(&self, volume: &str, policy: &str) -> anyhow::Result<Vec<u8>> {
        let cfg = self.config()?;
        let store = broker::wiring::store(&cfg)?;
        let master = MasterKey::load(&cfg.master_key)?;
        let key = VolumeKey::generate();
        let sealed = keys::seal(&master, volume, 1, &key)?;
        store.create_volume(
            &NewVolume {
                name: volume.into(),
                policy: policy.into(),
                description: String::new(),
            },
            &sealed,
        )?;
        Ok(key.expose_secret().to_vec())
    }
}

fn write_mode(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    f.write_all(bytes)?;
    Ok(())
}

/// A broker serving on loopback inside this process: the guest port and,
/// beside it, the admin API on [`BrokerDir::admin_socket`].
pub struct RunningBroker {
    /// Bound address.
    pub addr: SocketAddr,
    /// The admin socket.
    pub admin_socket: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    admin_stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), broker::grpc::ServeError>>>,
    admin_task: Option<tokio::task::JoinHandle<Result<(), broker::admin::listen::ListenError>>>,
}

impl RunningBroker {
    /// Starts `broker serve` logic for `dir` on 127.0.0.1, port 0.
    pub async fn start(dir: &BrokerDir) -> anyhow::Result<RunningBroker> {
        let cfg = dir.config()?;
        let service = Arc::new(broker::wiring::broker(&cfg)?);
        let admin = Arc::new(
            broker::admin::Admin::new(service.store().clone(), service.keyring().clone())
                .with_settings(broker::admin::AdminSettings::from_config(&cfg)),
        );
        let socket = broker::admin::listen::bind_socket(&cfg.admin.socket)?;
        let (admin_tx, admin_rx) = tokio::sync::oneshot::channel::<()>();
        let admin_task = tokio::spawn(broker::admin::listen::serve_unix(
            socket,
            admin.clone(),
            cfg.admin
                .allowed_uids
                .clone()
                .unwrap_or_else(broker::admin::listen::default_allowed_uids),
            async move {
                let _ = admin_rx.await;
            },
        ));
        let (certs, key) = broker::tls::load(&cfg.tls_cert, &cfg.tls_key)?;
        let tls = broker::grpc::tls_server_config(certs, key)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        admin.set_listener("guest", addr.to_string());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(broker::grpc::serve(
            listener,
            tls,
            service,
            broker::grpc::ServeOptions {
                drain_timeout: Duration::from_secs(2),
                ..broker::grpc::ServeOptions::from_config(&cfg, None)
            },
            async move {
                let _ = rx.await;
            },
        ));
        Ok(RunningBroker {
            addr,
            admin_socket: cfg.admin.socket.clone(),
            stop: Some(tx),
            admin_stop: Some(admin_tx),
            task: Some(task),
            admin_task: Some(admin_task),
        })
    }

    /// A client of this broker's admin API (over its Unix socket).
    pub async fn admin(&self) -> anyhow::Result<AdminClient<Channel>> {
        let target = broker::admin::connect::Target::Socket(self.admin_socket.clone());
        Ok(broker::admin::connect::connect(&target).await?)
    }

    /// `broker policy set NAME` through the admin API; returns the revision.
    pub async fn admin_set_policy(&self, name: &str, text: &str) -> anyhow::Result<i64> {
        let r = self
            .admin()
            .await?
            .policy_set(admin_pb::PolicySetRequest {
                name: name.into(),
                text: text.into(),
            })
            .await?;
        Ok(r.into_inner().revision)
    }

    /// `broker volume add NAME --policy POLICY` through the admin API (the
    /// broker generates the key; tests that need its bytes use
    /// [`BrokerDir::add_volume`]).
    pub async fn admin_add_volume(&self, name: &str, policy: &str) -> anyhow::Result<()> {
        self.admin()
            .await?
            .volume_add(admin_pb::VolumeAddRequest {
                name: name.into(),
                policy: policy.into(),
                description: String::new(),
            })
            .await?;
        Ok(())
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Stops the server and waits for it.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(tx) = self.admin_stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.await??;
        }
        if let Some(t) = self.admin_task.take() {
            t.await??;
        }
        Ok(())
    }
}

impl Drop for RunningBroker {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(tx) = self.admin_stop.take() {
            let _ = tx.send(());
        }
    }
}
