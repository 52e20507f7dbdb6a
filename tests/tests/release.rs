//! End to end over loopback: a real broker (TLS, SQLite file, master key
//! file) and simulated guests. Each test changes one thing and checks the
//! guest receives exactly the stored key, or a refusal with the right
//! reason code and no key.

use std::sync::Arc;

use guest_unlock::evidence::EvidenceProvider;
use guest_unlock::flow::fetch_keys;
use keybroker_proto::{pb, VolumeIds};
use keybroker_tests::sim::{SimGuest, SimPlatform, SimProvider};
use keybroker_tests::{
    default_guest, guest_config, policy_for, BrokerDir, BrokerOptions, RunningBroker,
};

fn sim_provider(dir: &BrokerDir, guest: SimGuest) -> Arc<dyn EvidenceProvider> {
    Arc::new(SimProvider::new(
        SimPlatform::load(dir.sim.dir()).unwrap(),
        guest,
    ))
}

fn vols(names: &[&str]) -> VolumeIds {
    VolumeIds::parse(names.iter().copied()).unwrap()
}

async fn setup(opts: BrokerOptions) -> (BrokerDir, RunningBroker) {
    let dir = BrokerDir::create(&opts).unwrap();
    dir.set_policy("prod", &policy_for(&default_guest().measurement, ""))
        .unwrap();
    let broker = RunningBroker::start(&dir).await.unwrap();
    (dir, broker)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_recovers_exactly_the_stored_key() {
    let (dir, broker) = setup(BrokerOptions::default()).await;
    let key_root = dir.add_volume("root", "prod").unwrap();
    let key_data = dir.add_volume("data", "prod").unwrap();
    let cfg = guest_config(&[broker.url()], &dir.pin, dir.sim.dir(), 20).unwrap();
    let provider = sim_provider(&dir, default_guest());
    let out = fetch_keys(&cfg, provider.as_ref(), &vols(&["root", "data"]))
        .await
        .unwrap();
    assert!(out.all_granted(), "{out:?}");
    assert_eq!(out.keys.len(), 2);
    assert_eq!(out.keys[0].volume.as_str(), "root");
    assert_eq!(out.keys[0].expose_secret(), key_root.as_slice());
    assert_eq!(out.keys[1].expose_secret(), key_data.as_slice());
    assert_eq!(out.keys[0].version, 1);
    assert!(!out.decision_id.is_empty());
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_failing_the_policy_gets_reasons_and_no_key() {
    let (dir, broker) = setup(BrokerOptions::default()).await;
    dir.add_volume("root", "prod").unwrap();
    let cfg = guest_config(&[broker.url()], &dir.pin, dir.sim.dir(), 20).unwrap();
    let guest = SimGuest {
        measurement: [0x42; 48],
        policy: 0x30000 | (1 << 19) | (1 << 18), // debug and migration agent allowed
        vmpl: 2,
        ..default_guest()
    };
    let out = fetch_keys(&cfg, sim_provider(&dir, guest).as_ref(), &vols(&["root"]))
        .await
        .unwrap();
    assert!(out.keys.is_empty());
    assert_eq!(out.denied.len(), 1);
    let codes = &out.denied[0].reason_codes;
    for want in [
        "POLICY_MEASUREMENT_NOT_ALLOWED",
        "POLICY_DEBUG_ALLOWED",
        "POLICY_MIGRATION_AGENT_ALLOWED",
        "POLICY_VMPL_TOO_HIGH",
    ] {
        assert!(
            codes.iter().any(|c| c == want),
            "missing {want} in {codes:?}"
        );
    }
    // The audit log has expected versus actual values for the operator.
    let store = broker::wiring::store(&dir.config().unwrap()).unwrap();
    let entries = store
        .audit_entries(&broker::store::AuditFilter::default())
        .unwrap();
    let last = entries.last().unwrap();
    assert_eq!(last.event.verdict, "deny");
    assert!(
        last.event.details_json.contains("expected"),
        "{}",
        last.event.details_json
    );
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_grant_releases_only_allowed_volumes() {
    let (dir, broker) = setup(BrokerOptions::default()).await;
    dir.set_policy("other", &policy_for(&[0x11; 48], ""))
        .unwrap();
    let key = dir.add_volume("root", "prod").unwrap();
    dir.add_volume("secret", "other").unwrap();
    let cfg = guest_config(&[broker.url()], &dir.pin, dir.sim.dir(), 20).unwrap();
    let out = fetch_keys(
        &cfg,
        sim_provider(&dir, default_guest()).as_ref(),
        &vols(&["root", "secret", "missing"]),
    )
    .await
    .unwrap();
    assert_eq!(out.keys.len(), 1);
    assert_eq!(out.keys[0].expose_secret(), key.as_slice());
    let codes: Vec<_> = out
        .denied
        .iter()
        .map(|d| (d.volume.as_str().to_owned(), d.reason_codes.clone()))
        .collect();
    assert_eq!(
        codes,
        vec![
            (
                "secret".to_owned(),
                vec!["POLICY_MEASUREMENT_NOT_ALLOWED".to_owned()]
            ),
            ("missing".to_owned(), vec!["VOLUME_UNKNOWN".to_owned()]),
        ]
    );
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_not_naming_the_simulated_root_refuses_simulated_evidence() {
    let (dir, broker) = setup(BrokerOptions {
        trust_simulated: false,
        ..Default::default()
    })
    .await;
    dir.add_volume("root", "prod").unwrap();
    let cfg = guest_config(&[broker.url()], &dir.pin, dir.sim.dir(), 20).unwrap();
    let out = fetch_keys(
        &cfg,
        sim_provider(&dir, default_guest()).as_ref(),
        &vols(&["root"]),
    )
    .await
    .unwrap();
    assert!(out.keys.is_empty());
    assert_eq!(
        out.denied[0].reason_codes,
        vec!["EVIDENCE_SIMULATED_PLATFORM_NOT_TRUSTED".to_owned()]
    );
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_volume_is_refused() {
    let (dir, broker) = setup(BrokerOptions::default()).await;
    dir.add_volume("root", "prod").unwrap();
    broker::wiring::store(&dir.config().unwrap())
        .unwrap()
        .set_volume_enabled("root", false)
        .unwrap();
    let cfg = guest_config(&[broker.url()], &dir.pin, dir.sim.dir(), 20).unwrap();
    let out = fetch_keys(
        &cfg,
        sim_provider(&dir, default_guest()).as_ref(),
        &vols(&["root"]),
    )
    .await
    .unwrap();
    assert!(out.keys.is_empty());
    assert_eq!(
        out.denied[0].reason_codes,
        vec!["VOLUME_DISABLED".to_owned()]
    );
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_pin_never_reaches_the_broker() {
    let (dir, broker) = setup(BrokerOptions::default()).await;
    dir.add_volume("root", "prod").unwrap();
    let wrong = format!("sha256:{}", "00".repeat(32));
    let cfg = guest_config(&[broker.url()], &wrong, dir.sim.dir(), 3).unwrap();
    let err = fetch_keys(
        &cfg,
        sim_provider(&dir, default_guest()).as_ref(),
        &vols(&["root"]),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("pin"), "{err}");
    broker.stop().await.unwrap();
}

// ---- Raw protocol tests: one broken field at a time. ----

struct Raw {
    client: pb::key_broker_client::KeyBrokerClient<tonic::transport::Channel>,
}

impl Raw {
    async fn connect(dir: &BrokerDir, broker: &RunningBroker) -> Raw {
        let cfg = guest_config(&[broker.url()], &dir.pin, dir.sim.dir(), 10).unwrap();
        let tls = guest_unlock::client::tls_config(&cfg.pins).unwrap();
        let client =
            guest_unlock::client::connect(&cfg.brokers[0], tls, std::time::Duration::from_secs(5))
                .await
                .unwrap();
        Raw { client }
    }

    async fn challenge(&mut self, volumes: &[&str]) -> Vec<u8> {
        self.client
            .challenge(pb::ChallengeRequest {
                version: Some(keybroker_proto::protocol_version()),
                volume_ids: volumes.iter().map(|s| s.to_string()).collect(),
            })
            .await
            .unwrap()
            .into_inner()
            .nonce
    }
}

/// An AttestRequest whose report binds `nonce`, `key` and `volumes`.
fn attest_request(
    dir: &BrokerDir,
    nonce: &[u8],
    key: &keybroker_proto::GuestKeyPair,
    volumes: &[&str],
    guest: &SimGuest,
) -> pb::AttestRequest {
    let n = keybroker_proto::Nonce::try_from(nonce).unwrap();
    let rd = keybroker_proto::report_data(&n, &key.public(), &vols(volumes));
    pb::AttestRequest {
        version: Some(keybroker_proto::protocol_version()),
        nonce: nonce.to_vec(),
        report: dir.sim.report(rd.as_bytes(), guest).unwrap(),
        cert_table: dir.sim.cert_table(),
        guest_public_key: key.public().as_bytes().to_vec(),
        volume_ids: volumes.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn reasons(status: &tonic::Status) -> Vec<String> {
    keybroker_proto::denial_from_status(status)
        .map(|d| d.reason_codes)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_nonce_is_refused() {
    let (dir, broker) = setup(BrokerOptions::default()).await;
    dir.add_volume("root", "prod").unwrap();
    let mut raw = Raw::connect(&dir, &broker).await;
    let nonce = raw.challenge(&["root"]).await;
    let key = keybroker_proto::GuestKeyPair::generate().unwrap();
    let req = attest_request(&dir, &nonce, &key, &["root"], &default_guest());
    let ok = raw.client.attest(req.clone()).await.unwrap().into_inner();
    assert_eq!(ok.keys.len(), 1);
    let err = raw.client.attest(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert_eq!(reasons(&err), vec!["NONCE_REPLAYED".to_owned()]);
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_unknown_nonces_are_refused() {
    let (dir, broker) = setup(BrokerOptions {
        nonce_ttl_secs: 1,
        ..Default::default()
    })
    .await;
    dir.add_volume("root", "prod").unwrap();
    let mut raw = Raw::connect(&dir, &broker).await;
    let nonce = raw.challenge(&["root"]).await;
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let key = keybroker_proto::GuestKeyPair::generate().unwrap();
    let err = raw
        .client
        .attest(attest_request(
            &dir,
            &nonce,
            &key,
            &["root"],
            &default_guest(),
        ))
        .await
        .unwrap_err();
    assert_eq!(reasons(&err), vec!["NONCE_EXPIRED".to_owned()]);
    let err = raw
        .client
        .attest(attest_request(
            &dir,
            &[7u8; 32],
            &key,
            &["root"],
            &default_guest(),
        ))
        .await
        .unwrap_err();
    assert_eq!(reasons(&err), vec!["NONCE_UNKNOWN".to_owned()]);
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_data_of_another_key_is_refused() {
    let (dir, broker) = setup(BrokerOptions::default()).await;
    dir.add_volume("root", "prod").unwrap();
    let mut raw = Raw::connect(&dir, &broker).await;
    let nonce = raw.challenge(&["root"]).await;
    let bound = keybroker_proto::GuestKeyPair::generate().unwrap();
    let other = keybroker_proto::GuestKeyPair::generate().unwrap();
    let mut req = attest_request(&dir, &nonce, &bound, &["root"], &default_guest());
    // Ask for the key to be wrapped to a key the report does not bind.
    req.guest_public_key = other.public().as_bytes().to_vec();
    let err = raw.client.attest(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert_eq!(
        reasons(&err),
        vec!["EVIDENCE_REPORT_DATA_MISMATCH".to_owned()]
    );
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_other_than_challenged_are_refused() {
    let (dir, broker) = setup(BrokerOptions::default()).await;
    dir.add_volume("root", "prod").unwrap();
    dir.add_volume("data", "prod").unwrap();
    let mut raw = Raw::connect(&dir, &broker).await;
    let nonce = raw.challenge(&["root"]).await;
    let key = keybroker_proto::GuestKeyPair::generate().unwrap();
    let req = attest_request(&dir, &nonce, &key, &["root", "data"], &default_guest());
    let err = raw.client.attest(req).await.unwrap_err();
    // The nonce's MAC binds the Challenge's volume ids: for other volumes
    // it is not a nonce this broker issued.
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert_eq!(reasons(&err), vec!["NONCE_UNKNOWN".to_owned()]);
    // Refused before verification, so not burnt: it still serves the
    // volumes it was issued for.
    let req = attest_request(&dir, &nonce, &key, &["root"], &default_guest());
    raw.client.attest(req).await.unwrap();
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_invalid_argument_and_no_key() {
    let (dir, broker) = setup(BrokerOptions::default()).await;
    dir.add_volume("root", "prod").unwrap();
    let mut raw = Raw::connect(&dir, &broker).await;
    let key = keybroker_proto::GuestKeyPair::generate().unwrap();
    let nonce = raw.challenge(&["root"]).await;
    let good = attest_request(&dir, &nonce, &key, &["root"], &default_guest());
    let mut cases: Vec<(&str, pb::AttestRequest)> = Vec::new();
    let mut r = good.clone();
    r.nonce.truncate(31);
    cases.push(("short nonce", r));
    let mut r = good.clone();
    r.guest_public_key = vec![1; 33];
    cases.push(("long public key", r));
    let mut r = good.clone();
    r.volume_ids = vec!["../etc".into()];
    cases.push(("bad volume id", r));
    let mut r = good.clone();
    r.volume_ids = vec![];
    cases.push(("no volumes", r));
    for (what, req) in cases {
        let err = raw.client.attest(req).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{what}: {err:?}");
        assert_eq!(reasons(&err), vec!["REQUEST_INVALID".to_owned()], "{what}");
    }
    // Other majors are refused with a clear precondition failure.
    let mut r = good.clone();
    r.version = Some(pb::ProtocolVersion { major: 2, minor: 0 });
    let err = raw.client.attest(r).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert_eq!(reasons(&err), vec!["VERSION_MISMATCH".to_owned()]);
    let mut r = good.clone();
    r.version = None;
    assert_eq!(
        raw.client.attest(r).await.unwrap_err().code(),
        tonic::Code::FailedPrecondition
    );
    // Truncated and garbage reports are evidence failures, not crashes.
    let mut r = good.clone();
    r.report.truncate(100);
    let err = raw.client.attest(r).await.unwrap_err();
    assert_eq!(reasons(&err), vec!["EVIDENCE_REPORT_LENGTH".to_owned()]);
    // Only evidence that verified burns a nonce: none of the above did, so
    // the good request is still released, once.
    raw.client.attest(good.clone()).await.unwrap();
    let err = raw.client.attest(good).await.unwrap_err();
    assert_eq!(reasons(&err), vec!["NONCE_REPLAYED".to_owned()]);
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_are_rejected_by_the_configured_limit() {
    let (dir, broker) = setup(BrokerOptions::default()).await;
    dir.add_volume("root", "prod").unwrap();
    let mut raw = Raw::connect(&dir, &broker).await;
    let key = keybroker_proto::GuestKeyPair::generate().unwrap();
    let nonce = raw.challenge(&["root"]).await;
    let mut req = attest_request(&dir, &nonce, &key, &["root"], &default_guest());
    req.cert_table = vec![0u8; 200 * 1024];
    let err = raw.client.attest(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err:?}");
    // The broker is still serving.
    raw.challenge(&["root"]).await;
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcb_below_minimum_is_refused_with_expected_and_actual() {
    let (dir, broker) = setup(BrokerOptions::default()).await;
    let tcb = dir.sim.reported_tcb();
    let strict = policy_for(&default_guest().measurement, "").replacen(
        "[min_tcb.milan]\nbootloader = 0",
        &format!("[min_tcb.milan]\nbootloader = {}", tcb.bootloader + 1),
        1,
    );
    dir.set_policy("strict", &strict).unwrap();
    dir.add_volume("root", "strict").unwrap();
    let cfg = guest_config(&[broker.url()], &dir.pin, dir.sim.dir(), 20).unwrap();
    let out = fetch_keys(
        &cfg,
        sim_provider(&dir, default_guest()).as_ref(),
        &vols(&["root"]),
    )
    .await
    .unwrap();
    assert_eq!(
        out.denied[0].reason_codes,
        vec!["POLICY_TCB_BELOW_MINIMUM".to_owned()]
    );
    broker.stop().await.unwrap();
}

/// Bad input never panics the broker and never releases a key: a few
/// hundred requests, each a valid one with random damage (byte flips,
/// truncation, extension, field swaps), all answered with a refusal that
/// carries a reason code; afterwards the broker still serves a good guest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_requests_never_release_a_key() {
    let (dir, broker) = setup(BrokerOptions::default()).await;
    let key = dir.add_volume("root", "prod").unwrap();
    let mut raw = Raw::connect(&dir, &broker).await;
    let guest_key = keybroker_proto::GuestKeyPair::generate().unwrap();
    // A deterministic xorshift stream drives the damage, so a failure is
    // reproducible from the printed case number.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for case in 0..300u32 {
        let nonce = raw.challenge(&["root"]).await;
        let mut req = attest_request(&dir, &nonce, &guest_key, &["root"], &default_guest());
        let field = next() % 4;
        let target: &mut Vec<u8> = match field {
            0 => &mut req.report,
            1 => &mut req.cert_table,
            2 => &mut req.guest_public_key,
            _ => &mut req.nonce,
        };
        match next() % 3 {
            0 if !target.is_empty() => {
                let i = (next() as usize) % target.len();
                target[i] ^= 1 << (next() % 8);
            }
            1 => {
                let n = (next() as usize) % (target.len() + 1);
                target.truncate(n);
            }
            _ => target.extend((0..(next() % 64)).map(|_| next() as u8)),
        }
        match raw.client.attest(req).await {
            Err(status) => {
                assert!(
                    !reasons(&status).is_empty(),
                    "case {case}: refusal without a reason code: {status:?}"
                );
            }
            Ok(resp) => {
                // Damage that changes nothing the broker reads (e.g. bytes
                // appended to a certificate table entry's slack) may pass;
                // then the key must still be wrapped to the bound key and
                // open only with it.
                let resp = resp.into_inner();
                for k in &resp.keys {
                    let rd = keybroker_proto::report_data(
                        &keybroker_proto::Nonce::try_from(nonce.as_slice()).unwrap(),
                        &guest_key.public(),
                        &vols(&["root"]),
                    );
                    let opened = guest_key
                        .unwrap_volume_key(
                            &rd,
                            &keybroker_proto::VolumeId::new("root").unwrap(),
                            k.key_version,
                            &k.enc,
                            &k.ciphertext,
                        )
                        .unwrap_or_else(|e| panic!("case {case}: released key does not open: {e}"));
                    assert_eq!(opened.as_slice(), key.as_slice(), "case {case}");
                }
            }
        }
    }
    // Still serving, and still correct.
    let cfg = guest_config(&[broker.url()], &dir.pin, dir.sim.dir(), 20).unwrap();
    let out = fetch_keys(
        &cfg,
        sim_provider(&dir, default_guest()).as_ref(),
        &vols(&["root"]),
    )
    .await
    .unwrap();
    assert_eq!(out.keys[0].expose_secret(), key.as_slice());
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_per_address_rate_get_resource_exhausted() {
    let (dir, broker) = setup(BrokerOptions {
        requests_per_sec: 5,
        ..BrokerOptions::default()
    })
    .await;
    dir.add_volume("root", "prod").unwrap();
    let mut raw = Raw::connect(&dir, &broker).await;
    let mut limited = 0;
    for _ in 0..20 {
        let r = raw
            .client
            .challenge(pb::ChallengeRequest {
                version: Some(keybroker_proto::protocol_version()),
                volume_ids: vec!["root".into()],
            })
            .await;
        if let Err(e) = r {
            assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
            assert_eq!(reasons(&e), vec!["RATE_LIMITED".to_owned()]);
            assert!(
                e.message().contains("requests_per_sec_per_address"),
                "{e:?}"
            );
            limited += 1;
        }
    }
    // A burst of 5, then about 5 a second: most of 20 quick ones refused.
    assert!(limited >= 10, "{limited} of 20 refused");
    broker.stop().await.unwrap();
}

/// A pin mismatch cannot be fixed by retrying: the guest gives up after
/// one attempt instead of spending its whole timeout (issue #9: 13
/// attempts in 60 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_pin_is_not_retried() {
    let (dir, broker) = setup(BrokerOptions::default()).await;
    dir.add_volume("root", "prod").unwrap();
    let wrong = format!("sha256:{}", "00".repeat(32));
    let cfg = guest_config(&[broker.url()], &wrong, dir.sim.dir(), 60).unwrap();
    let err = fetch_keys(
        &cfg,
        sim_provider(&dir, default_guest()).as_ref(),
        &vols(&["root"]),
    )
    .await
    .unwrap_err();
    match err {
        guest_unlock::flow::UnlockError::Unreachable {
            attempts, cause, ..
        } => {
            assert_eq!(attempts, 1);
            assert_eq!(cause, guest_unlock::flow::UnreachableCause::PinMismatch);
        }
        other => panic!("{other}"),
    }
    broker.stop().await.unwrap();
}
