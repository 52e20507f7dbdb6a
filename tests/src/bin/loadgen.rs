//! `loadgen`: measures what one key release costs the broker, against one
//! P-384 signature verification on the same machine, in one run.
//!
//! It builds a broker directory with a simulated platform, starts the real
//! `broker serve` binary as a child process, and drives complete releases
//! (new TCP+TLS connection, Challenge, evidence, Attest, unwrap) from
//! simulated guests over loopback:
//!
//! 1. one P-384 ECDSA verify (aws-lc-rs), timed on one thread's CPU clock;
//! 2. closed loop at `--concurrency` to find the peak rate, with the broker
//!    process's CPU time (from /proc) per release;
//! 3. open loop at half the peak rate, for the latency distribution.
//!
//! `--deployment pg` puts the broker on PostgreSQL (a throwaway cluster of
//! the test kit), `--deployment pg2` two such replicas behind HAProxy.
//!
//! Every request goes to 127.0.0.1 only; loops are bounded in count and time.

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use guest_unlock::evidence::EvidenceProvider;
use keybroker_proto::VolumeIds;
use keybroker_tests::haproxy::Haproxy;
use keybroker_tests::pg::PgCluster;
use keybroker_tests::sim::{SimPlatform, SimProvider};
use keybroker_tests::{default_guest, guest_config, policy_for, BrokerDir, BrokerOptions};

/// Load generator for the key broker (loopback only).
#[derive(Debug, Parser)]
struct Args {
    /// The `broker` binary to start (build it with --release first).
    #[arg(long, default_value = "target/release/broker")]
    broker_bin: PathBuf,
    /// Releases in the closed-loop (peak) phase.
    #[arg(long, default_value_t = 2000)]
    releases: usize,
    /// Concurrent guests in the closed-loop phase.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Seconds of the open-loop phase at half the peak rate.
    #[arg(long, default_value_t = 5)]
    open_loop_secs: u64,
    /// P-384 verifications to time.
    #[arg(long, default_value_t = 3000)]
    verifies: usize,
    /// Broker serving threads (`server.threads`); default: the broker's default.
    #[arg(long)]
    threads: Option<usize>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// What serves the guests: one broker on SQLite (the default), one on
    /// PostgreSQL (a throwaway cluster), or two PostgreSQL replicas behind
    /// HAProxy (broker CPU is summed over both; PostgreSQL's and HAProxy's
    /// own CPU is not counted).
    #[arg(long, value_enum, default_value_t = Deployment::Sqlite)]
    deployment: Deployment,
}

/// `--deployment`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Deployment {
    /// One broker, SQLite file.
    Sqlite,
    /// One broker, PostgreSQL.
    Pg,
    /// Two brokers on one PostgreSQL database, behind HAProxy.
    Pg2,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.releases == 0 || args.concurrency == 0 || args.releases > 1_000_000 {
        bail!("--releases must be 1..=1000000 and --concurrency at least 1");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

struct BrokerProcess {
    child: Child,
    addr: String,
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl BrokerProcess {
    fn start(bin: &PathBuf, dir: &BrokerDir) -> anyhow::Result<BrokerProcess> {
        let mut child = Command::new(bin)
            .args(["serve", "--config"])
            .arg(&dir.config_path)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {}; build it with `cargo build --release -p broker`",
                    bin.display()
                )
            })?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .with_context(|| format!("unexpected first line from broker: {line:?}"))?
            .to_owned();
        Ok(BrokerProcess { child, addr })
    }

    /// User+system CPU seconds of the broker process so far.
    fn cpu_secs(&self) -> anyhow::Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))?;
        // Fields after the parenthesised command name; utime and stime are
        // fields 14 and 15 of the whole line.
        let rest = &stat[stat.rfind(')').context("bad /proc stat")? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
        Ok(ticks as f64 / rustix::param::clock_ticks_per_second() as f64)
    }
}

/// The broker processes of a deployment.
struct Brokers(Vec<BrokerProcess>);

impl Brokers {
    /// User+system CPU seconds of every broker process so far.
    fn cpu_secs(&self) -> anyhow::Result<f64> {
        self.0.iter().map(BrokerProcess::cpu_secs).sum()
    }
}

fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// CPU time of one aws-lc-rs P-384 ECDSA (SHA-384) verification of a report signature.
fn p384_verify_cost(sim: &SimPlatform, n: usize) -> anyhow::Result<Duration> {
    use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P384_SHA384_FIXED};
    let report = sim.report(&[7u8; 64], &default_guest())?;
    use keybroker_snp::report::{signature, SIGNED_RANGE};
    let sig = signature::to_fixed(&report)?;
    let key = UnparsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, sim.vcek_public_key().to_vec());
    key.verify(&report[SIGNED_RANGE], &sig)
        .map_err(|_| anyhow::anyhow!("simulated report does not verify"))?;
    let start = thread_cpu();
    for _ in 0..n {
        key.verify(std::hint::black_box(&report[SIGNED_RANGE]), &sig)
            .map_err(|_| anyhow::anyhow!("verify failed"))?;
    }
    Ok((thread_cpu() - start) / n as u32)
}

async fn one_release(
    cfg: &guest_unlock::config::GuestConfig,
    provider: &dyn EvidenceProvider,
    volumes: &VolumeIds,
) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let out = guest_unlock::flow::fetch_keys(cfg, provider, volumes).await?;
    if !out.all_granted() || out.keys.len() != 1 {
        bail!("release refused: {:?}", out.denied);
    }
    Ok(t.elapsed())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn run(args: Args) -> anyhow::Result<()> {
    let pg = match args.deployment {
        Deployment::Sqlite => None,
        _ => Some(PgCluster::start().map_err(anyhow::Error::msg)?),
    };
    let dir = match &pg {
        None => BrokerDir::create(&BrokerOptions::default())?,
        Some(pg) => BrokerDir::create_with_store(
            &BrokerOptions::default(),
            &pg.socket_url(&pg.fresh_database()),
        )?,
    };
    dir.set_policy("bench", &policy_for(&default_guest().measurement, ""))?;
    dir.add_volume("root", "bench")?;
    if let Some(t) = args.threads {
        let text = std::fs::read_to_string(&dir.config_path)?;
        std::fs::write(
            &dir.config_path,
            text.replacen("[server]\n", &format!("[server]\nthreads = {t}\n"), 1),
        )?;
    }
    let mut brokers = vec![BrokerProcess::start(&args.broker_bin, &dir)?];
    let mut _replica = None;
    let mut _haproxy = None;
    let url = if args.deployment == Deployment::Pg2 {
        let replica = dir.replica()?;
        brokers.push(BrokerProcess::start(&args.broker_bin, &replica)?);
        _replica = Some(replica);
        let ports = brokers
            .iter()
            .map(|b| Ok(b.addr.parse::<std::net::SocketAddr>()?.port()))
            .collect::<anyhow::Result<Vec<u16>>>()?;
        let h = Haproxy::start(&ports)?;
        let url = h.url();
        _haproxy = Some(h);
        url
    } else {
        format!("https://{}", brokers[0].addr)
    };
    let broker = Brokers(brokers);
    let cfg = Arc::new(guest_config(&[url], &dir.pin, dir.sim.dir(), 30)?);
    let provider: Arc<dyn EvidenceProvider> = Arc::new(SimProvider::new(
        SimPlatform::load(dir.sim.dir())?,
        default_guest(),
    ));
    let volumes = Arc::new(VolumeIds::parse(["root"])?);

    // 1. One P-384 verification, on this machine, now.
    let verify = p384_verify_cost(&dir.sim, args.verifies)?;

    // Warm-up (connections, caches, page faults).
    for _ in 0..50 {
        one_release(&cfg, provider.as_ref(), &volumes).await?;
    }

    // 2. Closed loop.
    let cpu0 = broker.cpu_secs()?;
    let t0 = Instant::now();
    let remaining = Arc::new(std::sync::atomic::AtomicUsize::new(args.releases));
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (cfg, provider, volumes, remaining) = (
            cfg.clone(),
            provider.clone(),
            volumes.clone(),
            remaining.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while remaining
                .fetch_update(
                    std::sync::atomic::Ordering::SeqCst,
                    std::sync::atomic::Ordering::SeqCst,
                    |n| n.checked_sub(1),
                )
                .is_ok()
            {
                lat.push(one_release(&cfg, provider.as_ref(), &volumes).await?);
            }
            anyhow::Ok(lat)
        }));
    }
    let mut closed = Vec::new();
    for t in tasks {
        closed.extend(t.await??);
    }
    let wall = t0.elapsed();
    let cpu = broker.cpu_secs()? - cpu0;
    let peak_rate = args.releases as f64 / wall.as_secs_f64();
    let cpu_per_release = Duration::from_secs_f64(cpu / args.releases as f64);
    closed.sort();

    // 3. Open loop at half the peak rate.
    let rate = (peak_rate / 2.0).max(1.0);
    let interval = Duration::from_secs_f64(1.0 / rate);
    let total = ((args.open_loop_secs as f64) * rate).ceil() as usize;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::with_capacity(total);
    let cpu1 = broker.cpu_secs()?;
    for _ in 0..total {
        ticker.tick().await;
        let (cfg, provider, volumes) = (cfg.clone(), provider.clone(), volumes.clone());
        tasks.push(tokio::spawn(async move {
            one_release(&cfg, provider.as_ref(), &volumes).await
        }));
    }
    let mut open = Vec::with_capacity(total);
    for t in tasks {
        open.push(t.await??);
    }
    let open_cpu = Duration::from_secs_f64((broker.cpu_secs()? - cpu1) / total as f64);
    open.sort();

    let ratio = cpu_per_release.as_secs_f64() / verify.as_secs_f64();
    let report = serde_json::json!({
        "deployment": format!("{:?}", args.deployment).to_lowercase(),
        "p384_verify_us": verify.as_secs_f64() * 1e6,
        "closed_loop": {
            "releases": args.releases, "concurrency": args.concurrency,
            "wall_s": wall.as_secs_f64(), "rate_per_s": peak_rate,
            "broker_cpu_per_release_us": cpu_per_release.as_secs_f64() * 1e6,
            "p50_ms": percentile(&closed, 0.5).as_secs_f64() * 1e3,
            "p99_ms": percentile(&closed, 0.99).as_secs_f64() * 1e3,
        },
        "open_loop": {
            "rate_per_s": rate, "releases": total,
            "broker_cpu_per_release_us": open_cpu.as_secs_f64() * 1e6,
            "p50_ms": percentile(&open, 0.5).as_secs_f64() * 1e3,
            "p99_ms": percentile(&open, 0.99).as_secs_f64() * 1e3,
            "max_ms": open.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        },
        "broker_cpu_per_release_over_p384_verify": ratio,
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("deployment:                          {:?}", args.deployment);
        println!(
            "one P-384 verify (aws-lc-rs):        {:>9.1} us",
            verify.as_secs_f64() * 1e6
        );
        println!(
            "closed loop, {} guests:              {:>9.0} releases/s ({} releases, p50 {:.2} ms, p99 {:.2} ms)",
            args.concurrency,
            peak_rate,
            args.releases,
            percentile(&closed, 0.5).as_secs_f64() * 1e3,
            percentile(&closed, 0.99).as_secs_f64() * 1e3
        );
        println!(
            "broker CPU per release (TLS incl.):  {:>9.1} us  = {:.2} x one P-384 verify",
            cpu_per_release.as_secs_f64() * 1e6,
            ratio
        );
        println!(
            "open loop at {:.0}/s (half peak):     p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} releases, broker CPU {:.1} us each)",
            rate,
            percentile(&open, 0.5).as_secs_f64() * 1e3,
            percentile(&open, 0.99).as_secs_f64() * 1e3,
            open.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
            total,
            open_cpu.as_secs_f64() * 1e6
        );
    }
    drop(broker);
    Ok(())
}
