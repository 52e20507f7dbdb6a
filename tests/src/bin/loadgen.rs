//! `loadgen`: measures what one key release costs the broker, against one
//! P-384 signature verification and against the floor (a minimal TLS server
//! doing one verification) on the same machine, in one run.
//!
//! It builds a broker directory with a simulated platform, starts the real
//! `broker serve` binary and the `floor-server` binary as child processes,
//! and drives complete releases (new TCP+TLS connection, Challenge,
//! evidence, Attest, unwrap) from simulated guests over loopback:
//!
//! 1. one P-384 ECDSA verify (aws-lc-rs), timed on one thread's CPU clock;
//! 2. closed loop at `--concurrency` to find the peak rate, with the broker
//!    process's CPU time (from /proc) per release; in the same rounds, the
//!    same pattern against the floor server (`keybroker_tests::floor`: the
//!    broker's TLS configuration, one report in, one verification, one byte
//!    out), with its CPU time per connection;
//! 3. open loop at half the peak rate, for the latency distribution;
//! 4. `--guest-runs` runs of the real `guest-unlock probe` (simulated
//!    provider) against the broker, one at a time, with each process's CPU
//!    time from start to exit (wait4), and the simulated provider's own
//!    loading and signing timed in this process, reported apart.
//!
//! The closed loop alternates between broker and floor in `--rounds`
//! rounds, so that both see the same machine (its speed drifts).
//!
//! `--deployment pg` puts the broker on PostgreSQL (a throwaway cluster of
//! the test kit), `--deployment pg2` two such replicas behind HAProxy.
//!
//! Every request goes to 127.0.0.1 only; loops are bounded in count and time.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use guest_unlock::evidence::EvidenceProvider;
use keybroker_proto::VolumeIds;
use keybroker_tests::haproxy::Haproxy;
use keybroker_tests::pg::PgCluster;
use keybroker_tests::sim::{SimEvidence, SimPlatform, SimProvider};
use keybroker_tests::{default_guest, floor, guest_config, policy_for, BrokerDir, BrokerOptions};

/// Load generator for the key broker (loopback only).
#[derive(Debug, Parser)]
struct Args {
    /// The `broker` binary to start (build it with --release first).
    #[arg(long, default_value = "target/release/broker")]
    broker_bin: PathBuf,
    /// The `floor-server` binary (package keybroker-tests).
    #[arg(long, default_value = "target/release/floor-server")]
    floor_bin: PathBuf,
    /// The `guest-unlock` binary, built with the `sim` feature (as
    /// `cargo build --release -p keybroker-tests -p guest-unlock` does).
    #[arg(long, default_value = "target/release/guest-unlock")]
    guest_bin: PathBuf,
    /// Releases in the closed-loop (peak) phase, and as many floor connections.
    #[arg(long, default_value_t = 2000)]
    releases: usize,
    /// Concurrent guests in the closed-loop phase.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Closed-loop rounds, each broker then floor, `--releases / --rounds` each.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds of the open-loop phase at half the peak rate.
    #[arg(long, default_value_t = 5)]
    open_loop_secs: u64,
    /// P-384 verifications to time (in each round).
    #[arg(long, default_value_t = 3000)]
    verifies: usize,
    /// `guest-unlock probe` processes to run one after another (0: none).
    #[arg(long, default_value_t = 30)]
    guest_runs: usize,
    /// Broker (and floor) serving threads (`server.threads`); default: the broker's default.
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
    if args.rounds == 0 || args.rounds > args.releases || args.guest_runs > 10_000 {
        bail!("--rounds must be 1..=--releases and --guest-runs at most 10000");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

/// A child process that serves on loopback and prints `listening on ADDR`
/// first: `broker serve` or `floor-server`.
struct ServerProcess {
    child: Child,
    addr: String,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServerProcess {
    fn start(mut cmd: Command, what: &str) -> anyhow::Result<ServerProcess> {
        let mut child = cmd
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {what}"))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .with_context(|| format!("unexpected first line from {what}: {line:?}"))?
            .to_owned();
        Ok(ServerProcess { child, addr })
    }

    fn broker(bin: &Path, dir: &BrokerDir) -> anyhow::Result<ServerProcess> {
        let mut cmd = Command::new(bin);
        cmd.args(["serve", "--config"]).arg(&dir.config_path);
        Self::start(
            cmd,
            &format!(
                "{}; build it with `cargo build --release -p broker`",
                bin.display()
            ),
        )
    }

    fn floor(bin: &Path, dir: &BrokerDir, threads: Option<usize>) -> anyhow::Result<ServerProcess> {
        let root = dir.dir.path();
        let mut cmd = Command::new(bin);
        cmd.arg("--cert")
            .arg(root.join("tls/cert.pem"))
            .arg("--key")
            .arg(root.join("tls/key.pem"))
            .arg("--vcek")
            .arg(dir.sim.dir().join("vcek.der"));
        if let Some(t) = threads {
            cmd.arg("--threads").arg(t.to_string());
        }
        Self::start(
            cmd,
            &format!(
                "{}; build it with `cargo build --release -p keybroker-tests`",
                bin.display()
            ),
        )
    }

    /// User+system CPU seconds of the process so far.
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

/// The server processes of one target (the brokers of a deployment, or the floor).
struct Servers(Vec<ServerProcess>);

impl Servers {
    /// User+system CPU seconds of every process so far.
    fn cpu_secs(&self) -> anyhow::Result<f64> {
        self.0.iter().map(ServerProcess::cpu_secs).sum()
    }
}

fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// CPU time of one aws-lc-rs P-384 ECDSA (SHA-384) verification of a report
/// signature, as the floor server makes it.
fn p384_verify_cost(vcek_der: &[u8], report: &[u8], n: usize) -> anyhow::Result<Duration> {
    let key = floor::vcek_key(vcek_der)?;
    if !floor::verify_report(&key, report) {
        bail!("simulated report does not verify");
    }
    let start = thread_cpu();
    for _ in 0..n {
        if !floor::verify_report(&key, std::hint::black_box(report)) {
            bail!("verify failed");
        }
    }
    Ok((thread_cpu() - start) / n as u32)
}

/// What the simulated guests need, for the broker and for the floor.
struct Guests {
    cfg: guest_unlock::config::GuestConfig,
    provider: Box<dyn EvidenceProvider>,
    volumes: VolumeIds,
    floor_addr: std::net::SocketAddr,
    floor_tls: Arc<rustls::ClientConfig>,
    floor_report: Vec<u8>,
}

/// Which server a closed loop drives.
#[derive(Debug, Clone, Copy)]
enum Target {
    Broker,
    Floor,
}

impl Guests {
    /// One release (or one floor connection); its wall time.
    async fn once(&self, target: Target) -> anyhow::Result<Duration> {
        let t = Instant::now();
        match target {
            Target::Broker => {
                let out = guest_unlock::flow::fetch_keys(
                    &self.cfg,
                    self.provider.as_ref(),
                    &self.volumes,
                )
                .await?;
                if !out.all_granted() || out.keys.len() != 1 {
                    bail!("release refused: {:?}", out.denied);
                }
            }
            Target::Floor => {
                floor::connect_once(self.floor_addr, self.floor_tls.clone(), &self.floor_report)
                    .await?
            }
        }
        Ok(t.elapsed())
    }
}

/// `n` requests from `concurrency` guests, each starting its next as soon
/// as its last is answered; their latencies.
async fn closed_loop(
    guests: &Arc<Guests>,
    target: Target,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<Vec<Duration>> {
    let remaining = Arc::new(AtomicUsize::new(n));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (guests, remaining) = (guests.clone(), remaining.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while remaining
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                lat.push(guests.once(target).await?);
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(all)
}

/// What a closed loop cost: wall time, server CPU seconds, latencies.
#[derive(Default)]
struct Tally {
    n: usize,
    wall: Duration,
    cpu: f64,
    lat: Vec<Duration>,
}

impl Tally {
    async fn add(
        &mut self,
        servers: &Servers,
        guests: &Arc<Guests>,
        target: Target,
        n: usize,
        concurrency: usize,
    ) -> anyhow::Result<()> {
        let cpu0 = servers.cpu_secs()?;
        let t0 = Instant::now();
        self.lat
            .extend(closed_loop(guests, target, n, concurrency).await?);
        self.wall += t0.elapsed();
        self.cpu += servers.cpu_secs()? - cpu0;
        self.n += n;
        Ok(())
    }

    fn rate(&self) -> f64 {
        self.n as f64 / self.wall.as_secs_f64()
    }

    fn cpu_each(&self) -> Duration {
        Duration::from_secs_f64(self.cpu / self.n as f64)
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Runs `cmd` to its end: whether it exited 0, and its user and system CPU
/// time from start to exit (the rusage that wait4 returns for it).
#[allow(unsafe_code)]
fn run_with_rusage(cmd: &mut Command) -> anyhow::Result<(bool, Duration)> {
    let child = cmd.spawn().context("cannot start guest-unlock")?;
    let pid = libc::pid_t::try_from(child.id())?;
    let mut status: libc::c_int = 0;
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    loop {
        // SAFETY: FFI. `pid` is our child, not yet reaped (std reaps only in
        // `wait`, which is never called on `child`; dropping it does not
        // wait); `status` and `usage` are valid, writable and live for the
        // call.
        let r = unsafe { libc::wait4(pid, &mut status, 0, usage.as_mut_ptr()) };
        if r == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e).context("wait4");
        }
    }
    // SAFETY: wait4 returned the child, so it filled `usage` (and it was
    // zeroed before, which is a valid rusage).
    let usage = unsafe { usage.assume_init() };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    Ok((ok, tv(usage.ru_utime) + tv(usage.ru_stime)))
}

/// The guest side, measured apart: `runs` real `guest-unlock probe`
/// processes (CPU from start to exit, sorted), and the simulated provider's
/// loading and its signing of one report, each on this thread's CPU clock
/// (medians).
struct GuestCost {
    probe: Vec<Duration>,
    sim_open: Duration,
    sim_sign: Duration,
}

fn guest_cost(bin: &Path, url: &str, dir: &BrokerDir, runs: usize) -> anyhow::Result<GuestCost> {
    let mut probe = Vec::with_capacity(runs);
    for _ in 0..runs {
        let mut cmd = Command::new(bin);
        cmd.args([
            "probe", "--broker", url, "--pin", &dir.pin, "--volume", "root",
        ])
        .arg("--evidence")
        .arg(format!("sim:{}", dir.sim.dir().display()))
        .env_remove("RUST_LOG")
        .env_remove("GUEST_UNLOCK_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let (ok, cpu) = run_with_rusage(&mut cmd)?;
        if !ok {
            bail!(
                "`{} probe` did not get the key (is it built with the sim feature? \
                 `cargo build --release -p keybroker-tests -p guest-unlock`)",
                bin.display()
            );
        }
        probe.push(cpu);
    }
    probe.sort();
    let (mut open, mut sign) = (Vec::new(), Vec::new());
    for i in 0..runs.max(1) {
        let t = thread_cpu();
        let sim = SimEvidence::open(dir.sim.dir())?;
        open.push(thread_cpu() - t);
        let t = thread_cpu();
        std::hint::black_box(sim.evidence(&[i as u8; 64])?);
        sign.push(thread_cpu() - t);
    }
    open.sort();
    sign.sort();
    Ok(GuestCost {
        probe,
        sim_open: percentile(&open, 0.5),
        sim_sign: percentile(&sign, 0.5),
    })
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
    let mut brokers = vec![ServerProcess::broker(&args.broker_bin, &dir)?];
    let mut _replica = None;
    let mut _haproxy = None;
    let url = if args.deployment == Deployment::Pg2 {
        let replica = dir.replica()?;
        brokers.push(ServerProcess::broker(&args.broker_bin, &replica)?);
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
    let broker = Servers(brokers);
    let floor_server = Servers(vec![ServerProcess::floor(
        &args.floor_bin,
        &dir,
        args.threads,
    )?]);
    let pin: keybroker_proto::SpkiPin = dir.pin.parse()?;
    let floor_report = dir.sim.report(&[7u8; 64], &default_guest())?;
    let guests = Arc::new(Guests {
        cfg: guest_config(std::slice::from_ref(&url), &dir.pin, dir.sim.dir(), 30)?,
        provider: Box::new(SimProvider::new(
            SimPlatform::load(dir.sim.dir())?,
            default_guest(),
        )),
        volumes: VolumeIds::parse(["root"])?,
        floor_addr: floor_server.0[0].addr.parse()?,
        floor_tls: guest_unlock::client::tls_config(&[pin])?,
        floor_report,
    });
    let vcek_der = dir.sim.vcek_der().to_vec();

    // Warm-up (connections, caches, page faults).
    for _ in 0..50 {
        guests.once(Target::Broker).await?;
        guests.once(Target::Floor).await?;
    }

    // 1 and 2. One P-384 verification, then broker and floor closed loops,
    // alternating in rounds.
    let (mut b, mut f) = (Tally::default(), Tally::default());
    let mut verify = Duration::ZERO;
    for round in 0..args.rounds {
        let n = args.releases / args.rounds + usize::from(round < args.releases % args.rounds);
        verify += p384_verify_cost(&vcek_der, &guests.floor_report, args.verifies)?;
        b.add(&broker, &guests, Target::Broker, n, args.concurrency)
            .await?;
        f.add(&floor_server, &guests, Target::Floor, n, args.concurrency)
            .await?;
    }
    let verify = verify / args.rounds as u32;
    b.lat.sort();
    f.lat.sort();
    let peak_rate = b.rate();

    // 3. Open loop at half the peak rate.
    let rate = (peak_rate / 2.0).max(1.0);
    let interval = Duration::from_secs_f64(1.0 / rate);
    let total = ((args.open_loop_secs as f64) * rate).ceil() as usize;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::with_capacity(total);
    let cpu1 = broker.cpu_secs()?;
    let open_start = Instant::now();
    for _ in 0..total {
        ticker.tick().await;
        let guests = guests.clone();
        let at = open_start.elapsed();
        tasks.push(tokio::spawn(async move {
            anyhow::Ok((at, guests.once(Target::Broker).await?))
        }));
    }
    let mut timed = Vec::with_capacity(total);
    for t in tasks {
        timed.push(t.await??);
    }
    let open_cpu = Duration::from_secs_f64((broker.cpu_secs()? - cpu1) / total as f64);
    // The slowest releases and when they started (to tell periodic stalls,
    // such as once-a-second upkeep, from queueing).
    timed.sort_by_key(|&(_, lat)| std::cmp::Reverse(lat));
    let slowest: Vec<serde_json::Value> = timed
        .iter()
        .take(10)
        .map(|&(at, lat)| serde_json::json!({"started_at_ms": ms(at), "latency_ms": ms(lat)}))
        .collect();
    let mut open: Vec<Duration> = timed.iter().map(|&(_, lat)| lat).collect();
    open.sort();

    // 4. The guest side.
    let guest = if args.guest_runs > 0 {
        let (bin, dir_ref) = (args.guest_bin.clone(), &dir);
        Some(tokio::task::block_in_place(|| {
            guest_cost(&bin, &url, dir_ref, args.guest_runs)
        })?)
    } else {
        None
    };

    let ratio = b.cpu_each().as_secs_f64() / verify.as_secs_f64();
    let floor_ratio = f.cpu_each().as_secs_f64() / verify.as_secs_f64();
    let over_floor = b.cpu_each().as_secs_f64() / f.cpu_each().as_secs_f64();
    let mut report = serde_json::json!({
        "deployment": format!("{:?}", args.deployment).to_lowercase(),
        "p384_verify_us": us(verify),
        "closed_loop": {
            "releases": args.releases, "concurrency": args.concurrency, "rounds": args.rounds,
            "wall_s": b.wall.as_secs_f64(), "rate_per_s": peak_rate,
            "broker_cpu_per_release_us": us(b.cpu_each()),
            "p50_ms": ms(percentile(&b.lat, 0.5)),
            "p99_ms": ms(percentile(&b.lat, 0.99)),
        },
        "floor": {
            "connections": f.n, "rate_per_s": f.rate(),
            "cpu_per_connection_us": us(f.cpu_each()),
            "p50_ms": ms(percentile(&f.lat, 0.5)),
            "p99_ms": ms(percentile(&f.lat, 0.99)),
        },
        "open_loop": {
            "rate_per_s": rate, "releases": total,
            "broker_cpu_per_release_us": us(open_cpu),
            "p50_ms": ms(percentile(&open, 0.5)),
            "p99_ms": ms(percentile(&open, 0.99)),
            "max_ms": ms(open.last().copied().unwrap_or_default()),
            "slowest": slowest,
        },
        "broker_cpu_per_release_over_p384_verify": ratio,
        "floor_cpu_per_connection_over_p384_verify": floor_ratio,
        "broker_over_floor": over_floor,
    });
    if let Some(g) = &guest {
        report["guest_unlock"] = serde_json::json!({
            "runs": g.probe.len(),
            "cpu_start_to_key_p50_ms": ms(percentile(&g.probe, 0.5)),
            "cpu_start_to_key_p90_ms": ms(percentile(&g.probe, 0.9)),
            "sim_provider_open_us": us(g.sim_open),
            "sim_provider_sign_us": us(g.sim_sign),
        });
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!("deployment:                          {:?}", args.deployment);
    println!(
        "one P-384 verify (aws-lc-rs):        {:>9.1} us",
        us(verify)
    );
    println!(
        "closed loop, {} guests, {} rounds:   {:>9.0} releases/s ({} releases, p50 {:.2} ms, p99 {:.2} ms)",
        args.concurrency,
        args.rounds,
        peak_rate,
        b.n,
        ms(percentile(&b.lat, 0.5)),
        ms(percentile(&b.lat, 0.99))
    );
    println!(
        "broker CPU per release (TLS incl.):  {:>9.1} us  = {:.2} x one P-384 verify",
        us(b.cpu_each()),
        ratio
    );
    println!(
        "floor CPU per connection:            {:>9.1} us  = {:.2} x one P-384 verify ({:.0} connections/s; TLS 1.3 + one verify)",
        us(f.cpu_each()),
        floor_ratio,
        f.rate()
    );
    println!("broker / floor:                      {over_floor:>9.2}");
    println!(
        "open loop at {:.0}/s (half peak):     p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} releases, broker CPU {:.1} us each)",
        rate,
        ms(percentile(&open, 0.5)),
        ms(percentile(&open, 0.99)),
        ms(open.last().copied().unwrap_or_default()),
        total,
        us(open_cpu)
    );
    if let Some(g) = &guest {
        println!(
            "guest-unlock probe CPU, start to key: p50 {:.2} ms, p90 {:.2} ms ({} runs; sim provider inside it: load {:.0} us, sign {:.0} us)",
            ms(percentile(&g.probe, 0.5)),
            ms(percentile(&g.probe, 0.9)),
            g.probe.len(),
            us(g.sim_open),
            us(g.sim_sign)
        );
    }
    Ok(())
}
