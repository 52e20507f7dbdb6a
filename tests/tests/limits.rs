//! The guest port under hostile load (issue #9): what a stranger can hold
//! is bounded, and the admin plane keeps answering.

use std::path::Path;
use std::time::Duration;

use keybroker_proto::VolumeIds;
use keybroker_tests::exe::{init, run_in, tempdir, Server};
use keybroker_tests::sim::{SimGuest, SimParams, SimPlatform, SimProvider};

/// A broker directory made with the CLI, trusting a simulated platform,
/// and a policy file admitting its default guest. Returns the pin.
fn broker_dir(d: &Path) -> (String, SimPlatform) {
    let (_, pin) = init(d, "kb", "127.0.0.1:0");
    let kb = d.join("kb");
    let sim = SimPlatform::generate(&kb.join("sim"), &SimParams::default()).unwrap();
    let mut config = std::fs::read_to_string(kb.join("config.toml")).unwrap();
    config.push_str(&format!(
        "\n[attestation.simulated]\nark = \"sim/ark.pem\"\ngeneration = \"{}\"\n",
        sim.generation().name().to_lowercase()
    ));
    std::fs::write(kb.join("config.toml"), config).unwrap();
    let measurement = hex::encode(SimGuest::default().measurement);
    std::fs::write(
        d.join("sim.toml"),
        format!(
            "version = 1\nmeasurements = [\"{measurement}\"]\n\n\
             [min_tcb.milan]\nbootloader = 0\ntee = 0\nsnp = 0\nmicrocode = 0\n\n\
             [min_tcb.genoa]\nbootloader = 0\ntee = 0\nsnp = 0\nmicrocode = 0\n\n\
             [min_tcb.turin]\nfmc = 0\nbootloader = 0\ntee = 0\nsnp = 0\nmicrocode = 0\n"
        ),
    )
    .unwrap();
    (pin, sim)
}

const CFG: [&str; 2] = ["--config", "kb/config.toml"];

fn enroll(d: &Path) {
    run_in(
        d,
        &[&["policy", "set", "sim", "sim.toml"][..], &CFG].concat(),
    )
    .expect_code(0);
    run_in(
        d,
        &[&["volume", "add", "root", "--policy", "sim"][..], &CFG].concat(),
    )
    .expect_code(0);
}

/// 1,000 idle connections from one stranger, against a broker whose
/// RLIMIT_NOFILE is 1,024: a guest's release still goes through (its
/// whole budget is 5 s) and the admin CLI answers.
#[test]
fn a_thousand_idle_connections_leave_room_for_a_release_and_the_admin() {
    // This process holds the 1,000 client sockets: lift its own soft limit.
    let lim = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        },
    )
    .unwrap();
    let tmp = tempdir();
    let d = tmp.path();
    let (pin, sim) = broker_dir(d);
    let server = Server::start_with_nofile(d, "kb/config.toml", 1024);
    enroll(d);
    let addr: std::net::SocketAddr = server.guest_addr.parse().unwrap();

    // The stranger: 1,000 TCP connections from 127.0.0.2 that never speak.
    let mut idle = Vec::new();
    for _ in 0..1000 {
        let s = socket2_connect("127.0.0.2", addr);
        idle.push(s);
    }
    std::thread::sleep(Duration::from_millis(300));

    let status = run_in(d, &[&["status"][..], &CFG].concat());
    status.expect_code(0);

    let guest_cfg = guest_unlock::config::resolve(guest_unlock::config::RawConfig {
        brokers: vec![format!("https://{addr}")],
        pins: vec![pin],
        connect_timeout_secs: Some(5),
        timeout_secs: Some(5),
        evidence: Some(format!("sim:{}", d.join("kb/sim").display())),
        vmpl: None,
    })
    .unwrap();
    let provider = SimProvider::open(&d.join("kb/sim")).unwrap();
    let volumes = VolumeIds::parse(["root"]).unwrap();
    let outcome = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(guest_unlock::flow::fetch_keys(
            &guest_cfg, &provider, &volumes,
        ))
        .unwrap_or_else(|e| panic!("no release under load: {e:#}\n{}", server.log()));
    assert!(outcome.all_granted(), "{outcome:?}");
    drop(sim);
    // Still holding them: the admin plane answers again.
    run_in(d, &[&["status"][..], &CFG].concat()).expect_code(0);
    assert!(
        !server.log().contains("Too many open files"),
        "{}",
        server.log()
    );
    drop(idle);
}

/// A TCP connection to `to` from the loopback address `from`.
fn socket2_connect(from: &str, to: std::net::SocketAddr) -> std::net::TcpStream {
    use rustix::net::{bind, connect, socket, AddressFamily, SocketType};
    let fd = socket(AddressFamily::INET, SocketType::STREAM, None).unwrap();
    let local: std::net::SocketAddr = format!("{from}:0").parse().unwrap();
    bind(&fd, &local).unwrap();
    connect(&fd, &to).unwrap();
    std::net::TcpStream::from(fd)
}

/// A policy larger than `[limits] max_policy_bytes`, and descriptions too
/// long or holding terminal escapes, are refused with what to do; nothing
/// is stored.
#[test]
fn oversize_policies_and_descriptions_are_refused() {
    let tmp = tempdir();
    let d = tmp.path();
    broker_dir(d);
    let _server = Server::start(d, "kb/config.toml");
    let text = std::fs::read_to_string(d.join("sim.toml")).unwrap();
    // 4 MiB: beyond even the admin API's message limit.
    std::fs::write(
        d.join("huge.toml"),
        format!("{text}# {}\n", "x".repeat(4 * 1024 * 1024)),
    )
    .unwrap();
    run_in(
        d,
        &[&["policy", "set", "huge", "huge.toml"][..], &CFG].concat(),
    )
    .expect_code(1);
    // 100 KiB: a valid policy, over [limits] max_policy_bytes.
    std::fs::write(
        d.join("big.toml"),
        format!("{text}# {}\n", "x".repeat(100 * 1024)),
    )
    .unwrap();
    let r = run_in(
        d,
        &[&["policy", "set", "big", "big.toml"][..], &CFG].concat(),
    );
    r.expect_code(1);
    assert!(
        r.stderr.contains("max_policy_bytes") && r.stderr.contains("more than the 65536 allowed"),
        "{}",
        r.stderr
    );
    run_in(
        d,
        &[&["policy", "set", "sim", "sim.toml"][..], &CFG].concat(),
    )
    .expect_code(0);
    let long = "d".repeat(120 * 1024);
    for (desc, want) in [
        (long.as_str(), "max_description_bytes"),
        ("disk \u{1b}[31mRED\u{1b}[0m", "control character"),
        ("two\nlines", "control character"),
    ] {
        let r = run_in(
            d,
            &[
                &[
                    "volume",
                    "add",
                    "root",
                    "--policy",
                    "sim",
                    "--description",
                    desc,
                ][..],
                &CFG,
            ]
            .concat(),
        );
        r.expect_code(1);
        assert!(r.stderr.contains(want), "{desc:?}: {}", r.stderr);
    }
    let list = run_in(d, &[&["volume", "list"][..], &CFG].concat());
    list.expect_code(0);
    assert!(!list.stdout.contains("root"), "{}", list.stdout);
    run_in(
        d,
        &[
            &[
                "volume",
                "add",
                "root",
                "--policy",
                "sim",
                "--description",
                "the root disk",
            ][..],
            &CFG,
        ]
        .concat(),
    )
    .expect_code(0);
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                dir_bytes(&e.path())
            } else {
                m.len()
            }
        })
        .sum()
}

/// Five seconds of Challenges naming 64 made-up 128-byte volume ids,
/// interleaved with Attests carrying random nonces (and a genuine report),
/// grow the broker's state directory by at most 1 MiB: a Challenge writes
/// nothing, and the refused Attests are counted, then audited as one
/// aggregate entry.
#[test]
fn a_challenge_and_random_nonce_flood_grows_the_state_by_at_most_1_mib() {
    use broker::release::AttestInput;
    use broker::verify::Evidence;
    use keybroker_tests::local_broker::{BrokerDir, BrokerOptions};

    let dir = BrokerDir::create(&BrokerOptions::default()).unwrap();
    let service = broker::wiring::broker(&dir.config().unwrap()).unwrap();
    let client: std::net::SocketAddr = "198.51.100.7:40000".parse().unwrap();
    let names: Vec<String> = (0..64).map(|i| format!("{i:0>128}")).collect();
    let vols = VolumeIds::parse(&names).unwrap();
    let report = dir.sim.report(&[7; 64], &SimGuest::default()).unwrap();
    let key = keybroker_proto::GuestKeyPair::generate().unwrap();
    let before = dir_bytes(dir.dir.path());
    let started = std::time::Instant::now();
    let mut n = 0u64;
    while started.elapsed() < Duration::from_secs(5) {
        service.challenge(&vols, Some(client)).unwrap();
        let mut nonce = [0u8; 32];
        aws_lc_rs::rand::fill(&mut nonce).unwrap();
        let input = AttestInput {
            nonce: keybroker_proto::Nonce::from_bytes(nonce),
            evidence: Evidence::SnpReport {
                report: report.clone(),
                cert_table: dir.sim.cert_table(),
            },
            guest_public_key: key.public(),
            volumes: vols.clone(),
        };
        let (err, decision) = service.attest(input, Some(client)).unwrap_err();
        assert!(decision.is_none(), "{err}");
        n += 1;
    }
    service.audit_noise(time::OffsetDateTime::now_utc().unix_timestamp());
    service.store().maintain(i64::MAX / 2).unwrap();
    let grown = dir_bytes(dir.dir.path()).saturating_sub(before);
    assert!(n > 100, "only {n} rounds");
    assert!(
        grown <= 1024 * 1024,
        "{n} Challenges and Attests grew the state by {grown} bytes"
    );
    let noise = service
        .store()
        .audit_entries(&broker::store::AuditFilter {
            kind: Some("noise".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(noise.len(), 1);
    assert!(noise[0].event.details_json.contains(&format!("\"{n}\"")));
}
