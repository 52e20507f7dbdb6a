//! `ha`: the fault scenarios of `tests/ha/run`. It starts its own
//! PostgreSQL cluster in a temporary directory (the test kit's
//! [`PgCluster`]), two `broker serve` replicas on one database, and HAProxy
//! (TCP mode, health checks) in front, then drives simulated guests
//! (`guest-unlock`'s own flow, with its retries) through the balancer while
//! it breaks things:
//!
//! 1. `kill9-replica`: SIGKILL one replica under load, restart it: no
//!    unlock fails, and the restarted replica serves again;
//! 2. `pg-restart`: restart PostgreSQL under load: a request meanwhile
//!    fails fast with UNAVAILABLE, no unlock fails, the brokers reconnect
//!    by themselves, every release is audited once and the chain verifies;
//! 3. `pg-down-past-timeout`: stop PostgreSQL longer than a guest's
//!    timeout: the guest gives up with the broker's reason (it would fall
//!    back to its passphrase), and the brokers recover once it is back;
//! 4. `held-row-lock`: a session holds the audit chain head's row lock:
//!    100 guests at once all get an answer within a bound (refused with
//!    UNAVAILABLE, none queued past the store timeout), and releases resume
//!    when the lock goes.
//!
//! Prints `PASS name (...)` or `FAIL name: why` per scenario and
//! `N passed, N failed`; exits 1 if any failed.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use broker::store::{AuditFilter, AuditStore, PgOptions, PgStore};
use clap::Parser;
use guest_unlock::evidence::EvidenceProvider;
use guest_unlock::flow::fetch_keys;
use keybroker_proto::VolumeIds;
use keybroker_tests::haproxy::Haproxy;
use keybroker_tests::pg::PgCluster;
use keybroker_tests::sim::{SimPlatform, SimProvider};
use keybroker_tests::{default_guest, guest_config, policy_for, BrokerDir, BrokerOptions};

/// Fault scenarios for broker replicas on PostgreSQL behind HAProxy.
#[derive(Debug, Parser)]
struct Args {
    /// The `broker` binary.
    #[arg(long, default_value = "target/debug/broker")]
    broker_bin: PathBuf,
    /// Run only these scenarios (default: all).
    scenarios: Vec<String>,
}

const STORE_TIMEOUT_MS: u64 = 1000;
const WORKERS: usize = 3;
/// Guests sent at once at one broker while a row lock is held.
const GUESTS_AT_ONCE: usize = 100;

struct Replica {
    dir: BrokerDir,
    port: u16,
    child: Mutex<Option<Child>>,
}

impl Replica {
    /// Starts `broker serve` for this replica (after a kill: on its port).
    fn start(&self, bin: &Path) -> anyhow::Result<()> {
        let mut child = Command::new(bin)
            .args(["serve", "--config"])
            .arg(&self.dir.config_path)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let out = child.stdout.take().context("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if line.starts_with("listening on ") {
                    let _ = tx.send(());
                }
            }
        });
        if rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let _ = child.kill();
            let _ = child.wait();
            bail!("broker on port {} did not start within 30 s", self.port);
        }
        *self.child.lock().unwrap_or_else(|p| p.into_inner()) = Some(child);
        Ok(())
    }

    /// SIGKILL, and reap.
    fn kill9(&self) {
        if let Some(mut c) = self.child.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

struct Env {
    pg: PgCluster,
    db: String,
    replicas: Vec<Replica>,
    haproxy: Haproxy,
    bin: PathBuf,
    provider: Arc<dyn EvidenceProvider>,
    vols: VolumeIds,
}

impl Env {
    fn setup(bin: &Path) -> anyhow::Result<Env> {
        let pg = PgCluster::start().map_err(anyhow::Error::msg)?;
        let db = pg.fresh_database();
        let first = BrokerDir::create_with_store(&BrokerOptions::default(), &pg.socket_url(&db))?;
        let text = std::fs::read_to_string(&first.config_path)?;
        std::fs::write(
            &first.config_path,
            text.replacen(
                "\n[keys]",
                &format!("timeout_ms = {STORE_TIMEOUT_MS}\n\n[keys]"),
                1,
            ),
        )?;
        first.set_policy("prod", &policy_for(&default_guest().measurement, ""))?;
        first.add_volume("root", "prod")?;
        let second = first.replica()?;
        let mut replicas = Vec::new();
        for dir in [first, second] {
            let port = free_port()?;
            let text = std::fs::read_to_string(&dir.config_path)?.replace(
                "listen = \"127.0.0.1:0\"",
                &format!("listen = \"127.0.0.1:{port}\""),
            );
            std::fs::write(&dir.config_path, text)?;
            let r = Replica {
                dir,
                port,
                child: Mutex::new(None),
            };
            r.start(bin)?;
            replicas.push(r);
        }
        let haproxy = Haproxy::start(&replicas.iter().map(|r| r.port).collect::<Vec<_>>())?;
        let provider: Arc<dyn EvidenceProvider> = Arc::new(SimProvider::new(
            SimPlatform::load(replicas[0].dir.sim.dir())?,
            default_guest(),
        ));
        Ok(Env {
            pg,
            db,
            replicas,
            haproxy,
            bin: bin.to_owned(),
            provider,
            vols: VolumeIds::parse(["root"])?,
        })
    }

    fn balancer_url(&self) -> String {
        self.haproxy.url()
    }

    /// One guest unlock through `urls` with `timeout_secs`: the decision id,
    /// or why it failed.
    async fn unlock(&self, urls: &[String], timeout_secs: u64) -> Result<String, String> {
        let d = &self.replicas[0].dir;
        let cfg =
            guest_config(urls, &d.pin, d.sim.dir(), timeout_secs).map_err(|e| e.to_string())?;
        match fetch_keys(&cfg, self.provider.as_ref(), &self.vols).await {
            Ok(out) if out.all_granted() => Ok(out.decision_id),
            Ok(out) => Err(format!("refused: {out:?}")),
            Err(e) => Err(format!("{e:#}")),
        }
    }

    /// Guests unlocking through the balancer until `stop`; each worker's
    /// decision ids and failures.
    async fn load(self: &Arc<Self>, stop: Arc<AtomicBool>) -> (Vec<String>, Vec<String>) {
        let (ok, failed, _) = self.load_timed(stop).await;
        (ok, failed)
    }

    /// [`Env::load`], also returning the longest single unlock (the gap a
    /// guest saw, its retries included).
    async fn load_timed(
        self: &Arc<Self>,
        stop: Arc<AtomicBool>,
    ) -> (Vec<String>, Vec<String>, Duration) {
        let mut tasks = Vec::new();
        for _ in 0..WORKERS {
            let (env, stop) = (self.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let (mut ok, mut failed) = (Vec::new(), Vec::new());
                let mut longest = Duration::ZERO;
                let url = env.balancer_url();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    match env.unlock(std::slice::from_ref(&url), 20).await {
                        Ok(id) => ok.push(id),
                        Err(e) => failed.push(e),
                    }
                    longest = longest.max(t.elapsed());
                }
                (ok, failed, longest)
            }));
        }
        let (mut ok, mut failed, mut longest) = (Vec::new(), Vec::new(), Duration::ZERO);
        for t in tasks {
            if let Ok((o, f, l)) = t.await {
                ok.extend(o);
                failed.extend(f);
                longest = longest.max(l);
            }
        }
        (ok, failed, longest)
    }

    /// Every released decision is an `allow` entry of its own, and the
    /// chain verifies.
    fn check_audit(&self, released: &[String]) -> anyhow::Result<u64> {
        let store = PgStore::open(PgOptions::new(self.pg.socket_url(&self.db)))?;
        // The keyed chain verifies with the key the master key unseals.
        let ring = broker::wiring::keyring(&self.replicas[0].dir.config()?)?;
        broker::audit_key::load(&store, &ring, false)?;
        let n = store.verify_audit_chain()?;
        let allowed: std::collections::HashSet<String> = store
            .audit_entries(&AuditFilter {
                kind: Some("attest".into()),
                verdict: Some("allow".into()),
                ..Default::default()
            })?
            .into_iter()
            .map(|e| e.id.to_string())
            .collect();
        let mut seen = std::collections::HashSet::new();
        for id in released {
            if !seen.insert(id) {
                bail!("decision {id} was returned to two unlocks");
            }
            if !allowed.contains(id) {
                bail!("released decision {id} has no allow entry in the audit log");
            }
        }
        Ok(n)
    }
}

type Outcome = anyhow::Result<String>;

/// The `(N attempts)` of a guest's error.
fn attempts_of(guest_error: &str) -> String {
    guest_error
        .split_once(" attempts)")
        .and_then(|(head, _)| head.rsplit_once('(').map(|(_, n)| n.to_owned()))
        .unwrap_or_else(|| "?".into())
}

/// The guest's error names the broker's reason: its store is unavailable
/// (`UNAVAILABLE` with `STORE_UNAVAILABLE`, which the guest prints as the
/// broker's message).
fn store_unavailable(guest_error: &str) -> bool {
    guest_error.contains("STORE_UNAVAILABLE")
        || guest_error.contains("store is unavailable")
        || guest_error.contains("store slot")
}

async fn kill9_replica(env: &Arc<Env>) -> Outcome {
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (env, stop) = (env.clone(), stop.clone());
        tokio::spawn(async move { env.load_timed(stop).await })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let killed_at = Instant::now();
    {
        let env = env.clone();
        tokio::task::spawn_blocking(move || env.replicas[1].kill9()).await?;
    }
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let restarted = {
        let env = env.clone();
        tokio::task::spawn_blocking(move || env.replicas[1].start(&env.bin)).await?
    };
    tokio::time::sleep(Duration::from_millis(2000)).await;
    stop.store(true, Ordering::Relaxed);
    let (ok, failed, gap) = load.await?;
    restarted?;
    if !failed.is_empty() {
        bail!(
            "{} of {} unlocks failed: {}",
            failed.len(),
            ok.len() + failed.len(),
            failed[0]
        );
    }
    // It rejoined: an unlock through it alone works.
    if let Err(e) = env.unlock(&[env.replicas[1].url()], 10).await {
        bail!("the restarted replica does not serve: {e}");
    }
    env.check_audit(&ok)?;
    Ok(format!(
        "{} unlocks through the balancer, 0 failed; longest unlock (fail-over gap) {} ms; the replica restarted {:.1} s after the kill serves again",
        ok.len(),
        gap.as_millis(),
        killed_at.elapsed().as_secs_f64()
    ))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let code = rt.block_on(run(args))?;
    std::process::exit(code)
}

async fn run(args: Args) -> anyhow::Result<i32> {
    let t = Instant::now();
    let env = Arc::new(
        tokio::task::spawn_blocking({
            let bin = args.broker_bin.clone();
            move || Env::setup(&bin)
        })
        .await??,
    );
    println!("ha: set up in {:.1} s", t.elapsed().as_secs_f64());
    let wanted = |name: &str| args.scenarios.is_empty() || args.scenarios.iter().any(|s| s == name);
    let (mut passed, mut failed) = (0, 0);
    let mut report = |name: &str, r: Outcome| match r {
        Ok(details) => {
            passed += 1;
            println!("PASS {name} ({details})");
        }
        Err(e) => {
            failed += 1;
            println!("FAIL {name}: {e:#}");
        }
    };
    if wanted("kill9-replica") {
        report("kill9-replica", kill9_replica(&env).await);
    }
    if wanted("pg-restart") {
        report("pg-restart", pg_restart(&env).await);
    }
    if wanted("pg-down-past-timeout") {
        report("pg-down-past-timeout", pg_down_past_timeout(&env).await);
    }
    if wanted("held-row-lock") {
        report("held-row-lock", held_row_lock(&env).await);
    }
    println!("{passed} passed, {failed} failed");
    Ok(if failed == 0 { 0 } else { 1 })
}

async fn pg_restart(env: &Arc<Env>) -> Outcome {
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (env, stop) = (env.clone(), stop.clone());
        tokio::spawn(async move { env.load(stop).await })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    pg_ctl(env, "stop").await?;
    // Meanwhile a request fails fast with UNAVAILABLE.
    let t = Instant::now();
    let probe = env.unlock(&[env.replicas[0].url()], 2).await;
    let probe_took = t.elapsed();
    pg_ctl(env, "start").await?;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = load.await?;
    let attempts = match probe {
        Ok(_) => bail!("a release succeeded while PostgreSQL was down"),
        Err(e) if !store_unavailable(&e) => {
            bail!("the request during the outage failed otherwise: {e}")
        }
        Err(e) => attempts_of(&e),
    };
    if !failed.is_empty() {
        bail!(
            "{} of {} unlocks failed: {}",
            failed.len(),
            ok.len() + failed.len(),
            failed[0]
        );
    }
    let entries = env.check_audit(&ok)?;
    Ok(format!(
        "{} unlocks, 0 failed; during the outage a guest got UNAVAILABLE on each of {} attempts in {:.1} s; chain of {entries} verifies, each release audited once",
        ok.len(),
        attempts,
        probe_took.as_secs_f64()
    ))
}

async fn pg_down_past_timeout(env: &Arc<Env>) -> Outcome {
    pg_ctl(env, "stop").await?;
    let t = Instant::now();
    let guest = env.unlock(&[env.balancer_url()], 3).await;
    let took = t.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    pg_ctl(env, "start").await?;
    let reason = match guest {
        Ok(_) => bail!("a release succeeded while PostgreSQL was down"),
        Err(e) => e,
    };
    if !store_unavailable(&reason) {
        bail!("the guest gave up without the broker's reason: {reason}");
    }
    if took > Duration::from_secs(6) {
        bail!("the guest took {took:?} to give up (timeout 3 s)");
    }
    // The brokers recover by themselves.
    let t = Instant::now();
    loop {
        match env.unlock(&[env.balancer_url()], 5).await {
            Ok(_) => break,
            Err(e) if t.elapsed() > Duration::from_secs(20) => {
                bail!("no recovery 20 s after PostgreSQL returned: {e}")
            }
            Err(_) => {}
        }
    }
    Ok(format!(
        "guest gave up after {:.1} s with STORE_UNAVAILABLE; brokers served again {:.1} s after PostgreSQL returned",
        took.as_secs_f64(),
        t.elapsed().as_secs_f64()
    ))
}

async fn held_row_lock(env: &Arc<Env>) -> Outcome {
    let holder = {
        let env = env.clone();
        tokio::task::spawn_blocking(move || {
            env.pg.psql(
                &env.db,
                "BEGIN; SELECT * FROM audit_head FOR UPDATE; SELECT pg_sleep(6); COMMIT;",
            )
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = env.replicas[0]
        .child
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .map(|c| c.id())
        .context("replica 0 is not running")?;
    let threads_before = threads_of(pid)?;
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        tokio::spawn(async move {
            let mut most = 0;
            while sampling.load(Ordering::Relaxed) {
                most = most.max(threads_of(pid).unwrap_or(0));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            most
        })
    };
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..GUESTS_AT_ONCE {
        let env = env.clone();
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = env.unlock(&[env.replicas[0].url()], 2).await;
            (r, t.elapsed())
        }));
    }
    let (mut refused, mut timed_out) = (0, 0);
    let mut slowest = Duration::ZERO;
    for task in tasks {
        let (r, took) = task.await?;
        slowest = slowest.max(took);
        match r {
            Err(e) if store_unavailable(&e) => refused += 1,
            // Its last attempt cut by its own timeout: still bounded.
            Err(e)
                if ["Timeout expired", "overall timeout", "deadline has elapsed"]
                    .iter()
                    .any(|t| e.contains(t)) =>
            {
                timed_out += 1
            }
            Err(e) => bail!("a guest failed otherwise: {e}"),
            Ok(_) => {}
        }
    }
    let all = t.elapsed();
    sampling.store(false, Ordering::Relaxed);
    let threads_most = sampler.await?;
    holder.await?.map_err(anyhow::Error::msg)?;
    // Bounded: every guest had the broker's answer within its own 2 s
    // timeout (each attempt refused after at most one store timeout), well
    // before the 6 s lock ends; nothing queued behind it.
    let bound = Duration::from_millis(2000 + STORE_TIMEOUT_MS);
    if slowest > bound {
        bail!("a guest waited {slowest:?} (bound {bound:?}): work piled up behind the lock");
    }
    if refused == 0 {
        bail!("no guest got the broker's UNAVAILABLE: requests queued behind the lock");
    }
    // The broker's store-bound work is bounded (2 x pool_size = 16 at once
    // on the blocking pools, the rest refused), so its threads are too:
    // at most 16 per serving thread's pool (2 here), far below the 100
    // requests in flight.
    let thread_bound = threads_before + 2 * 16 + 4;
    if threads_most > thread_bound {
        bail!("the broker grew to {threads_most} threads (from {threads_before}; bound {thread_bound})");
    }
    if let Err(e) = env.unlock(&[env.replicas[0].url()], 10).await {
        bail!("no release after the lock was released: {e}");
    }
    Ok(format!(
        "{GUESTS_AT_ONCE} guests done within {:.1} s (slowest {:.1} s; {refused} refused with UNAVAILABLE, {timed_out} cut by their 2 s timeout) while the lock was held 6 s; broker threads {threads_before} -> at most {threads_most}; releases resumed",
        all.as_secs_f64(),
        slowest.as_secs_f64()
    ))
}

/// The number of threads of process `pid`.
fn threads_of(pid: u32) -> anyhow::Result<usize> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .context("no Threads: line")
}

async fn pg_ctl(env: &Arc<Env>, what: &'static str) -> anyhow::Result<()> {
    let env = env.clone();
    tokio::task::spawn_blocking(move || match what {
        "stop" => env.pg.stop_server(),
        _ => env.pg.start_server(),
    })
    .await?
    .map_err(anyhow::Error::msg)
}
