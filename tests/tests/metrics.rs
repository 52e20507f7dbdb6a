//! Prometheus metrics after real decisions: one release, one refusal, one
//! malformed request, over loopback. Its own test binary, so the
//! process-wide counters hold exactly what this test did.

use std::sync::Arc;

use guest_unlock::flow::fetch_keys;
use keybroker_proto::VolumeIds;
use keybroker_tests::sim::{SimGuest, SimPlatform, SimProvider};
use keybroker_tests::{
    default_guest, guest_config, policy_for, BrokerDir, BrokerOptions, RunningBroker,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn scrape(addr: std::net::SocketAddr) -> String {
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    out
}

fn value(text: &str, sample: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_latency_and_reasons_are_counted() {
    let dir = BrokerDir::create(&BrokerOptions::default()).unwrap();
    dir.set_policy("prod", &policy_for(&default_guest().measurement, ""))
        .unwrap();
    dir.add_volume("root", "prod").unwrap();
    let broker = RunningBroker::start(&dir).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let maddr = listener.local_addr().unwrap();
    let served = tokio::spawn(broker::metrics::serve(listener));

    let cfg = guest_config(&[broker.url()], &dir.pin, dir.sim.dir(), 20).unwrap();
    let provider = |guest: SimGuest| {
        Arc::new(SimProvider::new(
            SimPlatform::load(dir.sim.dir()).unwrap(),
            guest,
        ))
    };
    let root = VolumeIds::parse(["root"]).unwrap();
    let ok = fetch_keys(&cfg, provider(default_guest()).as_ref(), &root)
        .await
        .unwrap();
    assert!(ok.all_granted());
    let debug_guest = SimGuest {
        policy: 0x30000 | (1 << 19),
        ..default_guest()
    };
    let refused = fetch_keys(&cfg, provider(debug_guest).as_ref(), &root)
        .await
        .unwrap();
    assert!(refused.keys.is_empty());

    let text = scrape(maddr).await;
    let d = |kind: &str, verdict: &str, reason: &str| {
        value(
            &text,
            &format!(
                "keybroker_decisions_total{{kind=\"{kind}\",verdict=\"{verdict}\",reason=\"{reason}\"}}"
            ),
        )
    };
    assert_eq!(d("challenge", "allow", ""), 2, "{text}");
    assert_eq!(d("attest", "allow", ""), 1, "{text}");
    assert_eq!(d("attest", "deny", "POLICY_DEBUG_ALLOWED"), 1, "{text}");
    assert_eq!(d("attest", "deny", "POLICY_MEASUREMENT_NOT_ALLOWED"), 0);
    assert_eq!(
        value(&text, "keybroker_release_duration_seconds_count"),
        2,
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "keybroker_release_duration_seconds_bucket{le=\"+Inf\"}"
        ),
        2
    );
    assert_eq!(value(&text, "keybroker_store_errors_total"), 0);
    // Volume names and key material never appear.
    assert!(!text.contains("root"), "{text}");
    served.abort();
    broker.stop().await.unwrap();
}
