//! Key lifecycle end to end (issue #5): a real broker on loopback (TLS,
//! SQLite file, master key file), a simulated guest speaking the protocol
//! by hand, and the lifecycle library functions the admin API calls.
//!
//! Volume rotation: a valid proof promotes, no proof leaves the version
//! pending, every kind of wrong proof is refused with its reason code and
//! promotes nothing, a repeated confirmation is answered OK only for its
//! own session and version. Master rotation: 10,000 key versions with
//! timings printed, and crash-resume. Crashes are real: a child process
//! (this test binary, re-executed) is SIGKILLed at a `KEYBROKER_CRASH_AT`
//! point.

use std::os::unix::process::ExitStatusExt as _;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use broker::keys::{next_path, retired_path, Keyring, VolumeKey};
use broker::lifecycle::{self, LifecycleError};
use broker::store::{AuditFilter, KeyState, NewVolume, Store};
use keybroker_proto::pb::key_broker_client::KeyBrokerClient;
use keybroker_proto::{
    denial_from_status, pb, protocol_version, report_data, rotation_proof, GuestKeyPair, Nonce,
    ReportData, VolumeId, VolumeIds,
};
use keybroker_tests::sim::{SimGuest, SimPlatform};
use keybroker_tests::{
    default_guest, guest_config, policy_for, BrokerDir, BrokerOptions, RunningBroker,
};
use tonic::transport::Channel;

/// Environment variable telling a re-executed test binary what to do.
const CHILD_ENV: &str = "KEYBROKER_ROTATION_TEST_CHILD";

/// One key a guest received.
#[derive(Debug, Clone)]
struct Got {
    volume: String,
    version: u32,
    state: i32,
    key: Vec<u8>,
}

/// The state a guest keeps between Attest and ConfirmRotation.
#[derive(Debug, Clone)]
struct Session {
    nonce: [u8; 32],
    rd: ReportData,
    keys: Vec<Got>,
}

impl Session {
    fn key(&self, volume: &str, state: pb::KeyState) -> &Got {
        self.keys
            .iter()
            .find(|k| k.volume == volume && k.state == state as i32)
            .unwrap_or_else(|| panic!("no {state:?} key for {volume} in {:?}", self.summary()))
    }

    fn summary(&self) -> Vec<(String, u32, i32)> {
        self.keys
            .iter()
            .map(|k| (k.volume.clone(), k.version, k.state))
            .collect()
    }

    /// The proof an honest guest sends for the pending key of `volume`.
    fn proof(&self, volume: &str) -> (u32, [u8; 32]) {
        let k = self.key(volume, pb::KeyState::Pending);
        let vid = VolumeId::new(volume).unwrap();
        (k.version, rotation_proof(&k.key, &self.rd, &vid, k.version))
    }
}

/// A simulated guest talking to one broker.
struct Guest {
    client: KeyBrokerClient<Channel>,
    platform: SimPlatform,
    guest: SimGuest,
}

impl Guest {
    async fn connect(dir: &BrokerDir, url: &str) -> Guest {
        let cfg = guest_config(&[url.to_owned()], &dir.pin, dir.sim.dir(), 20).unwrap();
        let tls = guest_unlock::client::tls_config(&cfg.pins).unwrap();
        let client = guest_unlock::client::connect(&cfg.brokers[0], tls, Duration::from_secs(5))
            .await
            .unwrap();
        Guest {
            client,
            platform: SimPlatform::load(dir.sim.dir()).unwrap(),
            guest: default_guest(),
        }
    }

    async fn attest(&mut self, volumes: &[&str]) -> Session {
        self.try_attest(volumes).await.unwrap()
    }

    async fn try_attest(&mut self, volumes: &[&str]) -> Result<Session, tonic::Status> {
        let ids: Vec<String> = volumes.iter().map(|s| s.to_string()).collect();
        let ch = self
            .client
            .challenge(pb::ChallengeRequest {
                version: Some(protocol_version()),
                volume_ids: ids.clone(),
            })
            .await?
            .into_inner();
        let nonce: [u8; 32] = ch.nonce.as_slice().try_into().unwrap();
        let kp = GuestKeyPair::generate().unwrap();
        let vols = VolumeIds::parse(volumes.iter().copied()).unwrap();
        let rd = report_data(&Nonce::from_bytes(nonce), &kp.public(), &vols);
        let report = self.platform.report(rd.as_bytes(), &self.guest).unwrap();
        let resp = self
            .client
            .attest(pb::AttestRequest {
                version: Some(protocol_version()),
                nonce: nonce.to_vec(),
                report,
                cert_table: self.platform.cert_table(),
                guest_public_key: kp.public().as_bytes().to_vec(),
                volume_ids: ids,
                ..Default::default()
            })
            .await?
            .into_inner();
        let keys = resp
            .keys
            .iter()
            .map(|k| {
                let vid = VolumeId::new(k.volume_id.clone()).unwrap();
                let key = kp
                    .unwrap_volume_key(&rd, &vid, k.key_version, &k.enc, &k.ciphertext)
                    .unwrap();
                Got {
                    volume: k.volume_id.clone(),
                    version: k.key_version,
                    state: k.state,
                    key: key.to_vec(),
                }
            })
            .collect();
        Ok(Session { nonce, rd, keys })
    }

    async fn confirm(
        &mut self,
        nonce: &[u8; 32],
        volume: &str,
        version: u32,
        proof: &[u8],
    ) -> Result<pb::ConfirmRotationResponse, tonic::Status> {
        self.client
            .confirm_rotation(pb::ConfirmRotationRequest {
                version: Some(protocol_version()),
                nonce: nonce.to_vec(),
                volume_id: volume.to_owned(),
                key_version: version,
                proof: proof.to_vec(),
            })
            .await
            .map(tonic::Response::into_inner)
    }
}

fn reasons(status: &tonic::Status) -> Vec<String> {
    denial_from_status(status)
        .map(|d| d.reason_codes)
        .unwrap_or_default()
}

#[track_caller]
fn assert_refused(
    r: Result<pb::ConfirmRotationResponse, tonic::Status>,
    code: tonic::Code,
    reason: &str,
) {
    match r {
        Ok(ok) => panic!("expected {reason}, got OK {ok:?}"),
        Err(s) => {
            assert_eq!(s.code(), code, "{s:?}");
            assert_eq!(reasons(&s), vec![reason.to_owned()], "{s:?}");
        }
    }
}

fn states(store: &dyn Store, volume: &str) -> Vec<(u32, KeyState)> {
    store
        .key_versions(volume)
        .unwrap()
        .iter()
        .map(|k| (k.version, k.state))
        .collect()
}

struct Env {
    dir: BrokerDir,
    store: Arc<dyn Store>,
    keyring: Keyring,
}

fn env(opts: BrokerOptions) -> Env {
    let dir = BrokerDir::create(&opts).unwrap();
    dir.set_policy("prod", &policy_for(&default_guest().measurement, ""))
        .unwrap();
    let cfg = dir.config().unwrap();
    let store = broker::wiring::store(&cfg).unwrap();
    let keyring = broker::wiring::keyring(&cfg).unwrap();
    Env {
        dir,
        store,
        keyring,
    }
}

impl Env {
    fn rotate(&self, volume: &str) -> u32 {
        lifecycle::rotate_volume(self.store.as_ref(), &self.keyring, volume).unwrap()
    }

    fn unsealed(&self, volume: &str, version: u32) -> Vec<u8> {
        let k = self
            .store
            .key_versions(volume)
            .unwrap()
            .into_iter()
            .find(|k| k.version == version)
            .unwrap();
        self.keyring
            .unseal(volume, version, &k.sealed)
            .unwrap()
            .expose_secret()
            .to_vec()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_proof_promotes_and_the_next_attest_releases_only_the_new_key() {
    let e = env(BrokerOptions::default());
    let key1 = e.dir.add_volume("root", "prod").unwrap();
    let broker = RunningBroker::start(&e.dir).await.unwrap();
    let mut guest = Guest::connect(&e.dir, &broker.url()).await;

    assert_eq!(e.rotate("root"), 2);
    let s = guest.attest(&["root"]).await;
    assert_eq!(
        s.summary(),
        vec![
            ("root".into(), 1, pb::KeyState::Current as i32),
            ("root".into(), 2, pb::KeyState::Pending as i32)
        ]
    );
    assert_eq!(s.key("root", pb::KeyState::Current).key, key1);
    let key2 = s.key("root", pb::KeyState::Pending).key.clone();
    assert_eq!(key2, e.unsealed("root", 2));

    let (v, proof) = s.proof("root");
    let ok = guest.confirm(&s.nonce, "root", v, &proof).await.unwrap();
    assert_eq!(ok.current_version, 2);
    assert!(!ok.decision_id.is_empty());
    assert_eq!(
        states(e.store.as_ref(), "root"),
        vec![(1, KeyState::Retired), (2, KeyState::Current)]
    );
    let retired = &e.store.key_versions("root").unwrap()[0];
    assert!(retired.retired_at.is_some());

    // The lost-reply retry: same session, same version, same proof.
    let again = guest.confirm(&s.nonce, "root", v, &proof).await.unwrap();
    assert_eq!(again.current_version, 2);

    let s2 = guest.attest(&["root"]).await;
    assert_eq!(
        s2.summary(),
        vec![("root".into(), 2, pb::KeyState::Current as i32)]
    );
    assert_eq!(s2.keys[0].key, key2);

    // Every decision is audited as a rotation entry.
    let entries = e
        .store
        .audit_entries(&AuditFilter {
            kind: Some("rotation".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(entries.len(), 2);
    assert!(entries.iter().all(|x| x.event.verdict == "allow"));
    assert!(entries[0].event.details_json.contains("promoted"));
    assert!(entries[1].event.details_json.contains("already current"));
    let st = lifecycle::rotation_state(e.store.as_ref(), "root", Duration::from_secs(30 * 86_400))
        .unwrap();
    assert!(
        st.to_string()
            .starts_with("current v2, retired v1 kept until "),
        "{st}"
    );
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_proof_the_pending_version_stays_pending() {
    let e = env(BrokerOptions::default());
    let key1 = e.dir.add_volume("root", "prod").unwrap();
    let broker = RunningBroker::start(&e.dir).await.unwrap();
    let mut guest = Guest::connect(&e.dir, &broker.url()).await;
    e.rotate("root");
    for _ in 0..3 {
        let s = guest.attest(&["root"]).await;
        assert_eq!(s.keys.len(), 2);
        assert_eq!(s.key("root", pb::KeyState::Current).key, key1);
    }
    e.store.maintain(i64::MAX - 1).unwrap();
    assert_eq!(
        states(e.store.as_ref(), "root"),
        vec![(1, KeyState::Current), (2, KeyState::Pending)]
    );
    // A second rotation is refused with what to do.
    let err = lifecycle::rotate_volume(e.store.as_ref(), &e.keyring, "root").unwrap_err();
    assert!(matches!(
        err,
        LifecycleError::RotationPending { version: 2, .. }
    ));
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_proofs_are_refused_with_their_reason_and_promote_nothing() {
    use tonic::Code;
    let e = env(BrokerOptions::default());
    e.dir.add_volume("root", "prod").unwrap();
    e.dir.add_volume("data", "prod").unwrap();
    e.dir.add_volume("still", "prod").unwrap();
    let broker = RunningBroker::start(&e.dir).await.unwrap();
    let mut guest = Guest::connect(&e.dir, &broker.url()).await;
    e.rotate("root");
    e.rotate("data");
    let a = guest.attest(&["root", "data", "still"]).await;
    let b = guest.attest(&["root"]).await;
    let (v, proof_a) = a.proof("root");
    let (_, proof_b) = b.proof("root");
    let (dv, proof_data) = a.proof("data");

    // A proof from another session (another Attest's REPORT_DATA).
    assert_refused(
        guest.confirm(&b.nonce, "root", v, &proof_a).await,
        Code::PermissionDenied,
        "ROTATION_PROOF_INVALID",
    );
    // For another version: the session released version 2 only.
    assert_refused(
        guest.confirm(&a.nonce, "root", v + 1, &proof_a).await,
        Code::PermissionDenied,
        "ROTATION_VERSION_MISMATCH",
    );
    let cur = a.key("root", pb::KeyState::Current);
    let proof_v1 = rotation_proof(&cur.key, &a.rd, &VolumeId::new("root").unwrap(), 1);
    assert_refused(
        guest.confirm(&a.nonce, "root", 1, &proof_v1).await,
        Code::PermissionDenied,
        "ROTATION_VERSION_MISMATCH",
    );
    // For another volume: data's proof presented for root.
    assert_eq!(dv, v);
    assert_refused(
        guest.confirm(&a.nonce, "root", v, &proof_data).await,
        Code::PermissionDenied,
        "ROTATION_PROOF_INVALID",
    );
    // With a flipped bit, anywhere.
    for bit in [0usize, 7, 100, 255] {
        let mut p = proof_a;
        p[bit / 8] ^= 1 << (bit % 8);
        assert_refused(
            guest.confirm(&a.nonce, "root", v, &p).await,
            Code::PermissionDenied,
            "ROTATION_PROOF_INVALID",
        );
    }
    // A volume that was not rotating in this session, an unknown nonce.
    assert_refused(
        guest.confirm(&a.nonce, "still", 2, &proof_a).await,
        Code::PermissionDenied,
        "ROTATION_SESSION_UNKNOWN",
    );
    assert_refused(
        guest.confirm(&[9; 32], "root", v, &proof_a).await,
        Code::PermissionDenied,
        "ROTATION_SESSION_UNKNOWN",
    );
    // Malformed proofs never reach the store.
    assert_refused(
        guest.confirm(&a.nonce, "root", v, &proof_a[..31]).await,
        Code::InvalidArgument,
        "REQUEST_INVALID",
    );
    for vol in ["root", "data"] {
        assert_eq!(
            states(e.store.as_ref(), vol),
            vec![(1, KeyState::Current), (2, KeyState::Pending)],
            "{vol}"
        );
    }
    let denied = e
        .store
        .audit_entries(&AuditFilter {
            kind: Some("rotation".into()),
            verdict: Some("deny".into()),
            ..Default::default()
        })
        .unwrap();
    // Every refusal within a live session is audited; the two naming no
    // session (anyone can send those) are only counted (`broker::noise`).
    assert_eq!(denied.len(), 8);

    // The honest confirmation works; then a replay is OK only for a
    // session that released that version, with its own proof.
    guest.confirm(&a.nonce, "root", v, &proof_a).await.unwrap();
    guest.confirm(&b.nonce, "root", v, &proof_b).await.unwrap();
    assert_refused(
        guest.confirm(&b.nonce, "root", v, &proof_a).await,
        Code::PermissionDenied,
        "ROTATION_PROOF_INVALID",
    );
    assert_refused(
        guest.confirm(&a.nonce, "root", 1, &proof_v1).await,
        Code::PermissionDenied,
        "ROTATION_VERSION_MISMATCH",
    );
    assert_eq!(
        states(e.store.as_ref(), "root"),
        vec![(1, KeyState::Retired), (2, KeyState::Current)]
    );

    // A cancelled rotation cannot be confirmed, even with a valid proof.
    assert_eq!(
        lifecycle::cancel_rotation(e.store.as_ref(), "data").unwrap(),
        2
    );
    let r = guest.confirm(&a.nonce, "data", dv, &proof_data).await;
    assert!(r.is_err(), "{r:?}");
    assert_eq!(
        states(e.store.as_ref(), "data"),
        vec![(1, KeyState::Current)]
    );
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_is_refused() {
    let e = env(BrokerOptions {
        rotation_session_ttl_secs: 1,
        ..Default::default()
    });
    e.dir.add_volume("root", "prod").unwrap();
    let broker = RunningBroker::start(&e.dir).await.unwrap();
    let mut guest = Guest::connect(&e.dir, &broker.url()).await;
    e.rotate("root");
    let s = guest.attest(&["root"]).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (v, proof) = s.proof("root");
    assert_refused(
        guest.confirm(&s.nonce, "root", v, &proof).await,
        tonic::Code::PermissionDenied,
        "ROTATION_SESSION_EXPIRED",
    );
    assert_eq!(
        states(e.store.as_ref(), "root"),
        vec![(1, KeyState::Current), (2, KeyState::Pending)]
    );
    broker.stop().await.unwrap();
}

#[test]
fn purge_destroys_only_retired_versions_past_retention() {
    let e = env(BrokerOptions::default());
    e.dir.add_volume("root", "prod").unwrap();
    e.dir.add_volume("data", "prod").unwrap();
    e.rotate("root");
    e.store.promote_pending("root", 2).unwrap();
    e.rotate("root");
    e.rotate("data");
    let retention = e.dir.config().unwrap().retired_retention;
    assert_eq!(retention, Duration::from_secs(30 * 86_400));
    let now = time::OffsetDateTime::now_utc();
    assert!(lifecycle::purge_retired(e.store.as_ref(), now, retention)
        .unwrap()
        .is_empty());
    let purged =
        lifecycle::purge_retired(e.store.as_ref(), now + time::Duration::days(31), retention)
            .unwrap();
    assert_eq!(purged.len(), 1);
    assert_eq!((purged[0].volume.as_str(), purged[0].version), ("root", 1));
    assert_eq!(
        states(e.store.as_ref(), "root"),
        vec![(2, KeyState::Current), (3, KeyState::Pending)]
    );
    assert_eq!(
        states(e.store.as_ref(), "data"),
        vec![(1, KeyState::Current), (2, KeyState::Pending)]
    );
}

/// Enrolls `n` volumes straight into the store (one transaction each) and
/// returns their key bytes.
fn enroll_many(e: &Env, prefix: &str, n: usize) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("{prefix}{i:05}");
        let key = VolumeKey::generate();
        let sealed = e.keyring.seal(&name, 1, &key).unwrap();
        e.store
            .create_volume(
                &NewVolume {
                    name: name.clone(),
                    policy: "prod".into(),
                    description: String::new(),
                },
                &sealed,
            )
            .unwrap();
        out.push((name, key.expose_secret().to_vec()));
    }
    out
}

fn assert_every_key_unseals(store: &dyn Store, ring: &Keyring, keys: &[(String, Vec<u8>)]) {
    for (name, want) in keys {
        let v = &store.key_versions(name).unwrap()[0];
        let got = ring.unseal(name, v.version, &v.sealed).unwrap();
        assert_eq!(got.expose_secret().as_slice(), want.as_slice(), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_rotation_of_10k_key_versions_while_serving() {
    const N: usize = 10_000;
    const BATCH: u32 = 500;
    let e = env(BrokerOptions::default());
    let root = e.dir.add_volume("root", "prod").unwrap();
    let t = Instant::now();
    let keys = enroll_many(&e, "m", N - 1);
    println!("enrolled {N} key versions in {:?}", t.elapsed());
    // The broker loaded its keyring before the rotation created `.next`.
    let broker = RunningBroker::start(&e.dir).await.unwrap();
    let mut guest = Guest::connect(&e.dir, &broker.url()).await;

    let cfg = e.dir.config().unwrap();
    let store = e.store.clone();
    let rotation = std::thread::spawn(move || {
        let ring = broker::wiring::keyring(&cfg).unwrap();
        let mut batches = Vec::new();
        let out = lifecycle::rotate_master(store.as_ref(), &ring, BATCH, &mut |p| {
            batches.push(p.elapsed);
        })
        .unwrap();
        (out, batches)
    });
    // Keys keep being released, with the same bytes, throughout.
    let mut releases = 0;
    while !rotation.is_finished() {
        let s = guest.attest(&["root"]).await;
        assert_eq!(s.keys[0].key, root);
        releases += 1;
    }
    let (out, batches) = rotation.join().unwrap();
    let s = guest.attest(&["root"]).await;
    assert_eq!(s.keys[0].key, root);
    assert_eq!(out.resealed, N as u64);
    assert_eq!(out.batches, N.div_ceil(BATCH as usize) as u64);
    let per_batch: Vec<f64> = batches.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    let mean = per_batch.iter().sum::<f64>() / per_batch.len() as f64;
    let max = per_batch.iter().copied().fold(0.0, f64::max);
    println!(
        "master rotation: {N} key versions re-sealed in {:?} ({} batches of {BATCH}; \
         per batch mean {mean:.1} ms, max {max:.1} ms; {:.1} us per record); \
         {releases} releases served meanwhile",
        out.elapsed,
        out.batches,
        out.elapsed.as_secs_f64() * 1e6 / N as f64,
    );
    let ring = broker::wiring::keyring(&e.dir.config().unwrap()).unwrap();
    assert_eq!(ring.current_id(), out.new);
    assert_every_key_unseals(e.store.as_ref(), &ring, &keys);
    let st = lifecycle::status(e.store.as_ref(), &ring).unwrap();
    assert_eq!(st.keys.len(), 1);
    assert_eq!(st.keys[0].records, N as u64);
    broker.stop().await.unwrap();
}

/// Runs this test binary again as a child doing `what` under
/// `KEYBROKER_CRASH_AT=point`.
fn child(what: &str, config: &std::path::Path, point: &str) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_process_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, format!("{what}:{}", config.display()))
        .env(broker::lifecycle::failpoint::ENV, point)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn killed_at(out: std::process::Output, point: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.signal(),
        Some(9),
        "child not SIGKILLed: {stderr}"
    );
    assert!(stderr.contains(point), "{stderr}");
}

/// Not a test on its own: the body of the child processes of the crash
/// tests. Does nothing unless `KEYBROKER_ROTATION_TEST_CHILD` is set.
#[test]
fn child_process_entry() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (what, config) = spec.split_once(':').unwrap();
    let cfg = broker::config::Config::load(std::path::Path::new(config)).unwrap();
    match what {
        "master" => {
            broker::lifecycle::failpoint::init();
            let store = broker::wiring::store(&cfg).unwrap();
            let ring = broker::wiring::keyring(&cfg).unwrap();
            lifecycle::rotate_master(store.as_ref(), &ring, 100, &mut |_| {}).unwrap();
            panic!("the crash point was not reached");
        }
        "serve" => {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async {
                let service = Arc::new(broker::wiring::broker(&cfg).unwrap());
                let (certs, key) = broker::tls::load(&cfg.tls_cert, &cfg.tls_key).unwrap();
                let tls = broker::grpc::tls_server_config(certs, key).unwrap();
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                std::fs::write(
                    addr_file(std::path::Path::new(config)),
                    format!("{}\n", listener.local_addr().unwrap()),
                )
                .unwrap();
                let serve = broker::grpc::serve(
                    listener,
                    tls,
                    service,
                    broker::grpc::ServeOptions {
                        drain_timeout: Duration::from_secs(1),
                        ..broker::grpc::ServeOptions::from_config(&cfg, None)
                    },
                    tokio::time::sleep(Duration::from_secs(120)),
                );
                let _ = serve.await;
                panic!("the crash point was not reached");
            });
        }
        other => panic!("unknown child task {other}"),
    }
}

#[test]
fn master_rotation_killed_after_batch_2_resumes_and_every_key_still_unseals() {
    let e = env(BrokerOptions::default());
    let keys = enroll_many(&e, "c", 1_000);
    let old = e.keyring.current_id();
    let out = child("master", &e.dir.config_path, "master-after-batch-2")
        .wait_with_output()
        .unwrap();
    killed_at(out, "master-after-batch-2");

    // On disk: the old key file and the next one; 200 records moved.
    let cfg = e.dir.config().unwrap();
    assert!(next_path(&cfg.master_key).exists());
    let ring = broker::wiring::keyring(&cfg).unwrap();
    assert_eq!(ring.current_id(), old);
    let next = ring.next_id().expect("rotation under way");
    let st = lifecycle::status(e.store.as_ref(), &ring).unwrap();
    assert!(st.rotation_under_way());
    assert_eq!(
        st.keys
            .iter()
            .map(|k| (k.id, k.records))
            .collect::<Vec<_>>(),
        vec![(old, 800), (next, 200)]
    );
    assert_every_key_unseals(e.store.as_ref(), &ring, &keys);

    // Resumed: the same next key, only what is left.
    let out = lifecycle::rotate_master(e.store.as_ref(), &ring, 100, &mut |_| {}).unwrap();
    assert_eq!((out.old, out.new, out.resealed), (old, next, 800));
    assert!(!next_path(&cfg.master_key).exists());
    assert!(retired_path(&cfg.master_key, old).exists());
    let ring = broker::wiring::keyring(&cfg).unwrap();
    assert_eq!(ring.current_id(), next);
    assert_every_key_unseals(e.store.as_ref(), &ring, &keys);
}

#[test]
fn master_rotation_killed_around_the_file_swap_resumes() {
    for point in [
        "master-before-retire",
        "master-after-link",
        "master-after-retire",
    ] {
        let e = env(BrokerOptions::default());
        let keys = enroll_many(&e, "f", 50);
        let old = e.keyring.current_id();
        let out = child("master", &e.dir.config_path, point)
            .wait_with_output()
            .unwrap();
        killed_at(out, point);
        let cfg = e.dir.config().unwrap();
        let ring = broker::wiring::keyring(&cfg).unwrap();
        assert_every_key_unseals(e.store.as_ref(), &ring, &keys);
        if point == "master-after-retire" {
            // Finished before the crash: the next run would be a new rotation.
            assert_ne!(ring.current_id(), old, "{point}");
            assert!(ring.next_id().is_none(), "{point}");
            continue;
        }
        let next = ring.next_id().expect(point);
        let out = lifecycle::rotate_master(e.store.as_ref(), &ring, 100, &mut |_| {}).unwrap();
        assert_eq!((out.new, out.resealed), (next, 0), "{point}");
        let ring = broker::wiring::keyring(&cfg).unwrap();
        assert_eq!(ring.current_id(), next);
        assert_every_key_unseals(e.store.as_ref(), &ring, &keys);
    }
}

/// Starts a child broker armed at `point`; returns it and its URL. The
/// child writes its address to `<config>.addr` (its stdout belongs to the
/// test harness).
fn serving_child(e: &Env, point: &str) -> (std::process::Child, String) {
    let addr_file = addr_file(&e.dir.config_path);
    let mut c = child("serve", &e.dir.config_path, point);
    let deadline = Instant::now() + Duration::from_secs(60);
    let addr = loop {
        if let Ok(a) = std::fs::read_to_string(&addr_file) {
            if a.ends_with('\n') {
                break a.trim().to_owned();
            }
        }
        if let Some(status) = c.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut s) = c.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut s, &mut err);
            }
            panic!("child exited before listening: {status:?}\n{err}");
        }
        assert!(Instant::now() < deadline, "child did not start listening");
        std::thread::sleep(Duration::from_millis(20));
    };
    (c, format!("https://{addr}"))
}

fn addr_file(config: &std::path::Path) -> std::path::PathBuf {
    config.with_extension("addr")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_after_promote_the_retry_succeeds_idempotently() {
    let e = env(BrokerOptions::default());
    e.dir.add_volume("root", "prod").unwrap();
    e.rotate("root");
    let (c, url) = serving_child(&e, "confirm-after-promote");
    let mut guest = Guest::connect(&e.dir, &url).await;
    let s = guest.attest(&["root"]).await;
    let key2 = s.key("root", pb::KeyState::Pending).key.clone();
    let (v, proof) = s.proof("root");
    // The broker dies after committing the promotion, before replying.
    let lost = guest.confirm(&s.nonce, "root", v, &proof).await;
    assert!(lost.is_err(), "{lost:?}");
    killed_at(c.wait_with_output().unwrap(), "confirm-after-promote");
    assert_eq!(
        states(e.store.as_ref(), "root"),
        vec![(1, KeyState::Retired), (2, KeyState::Current)]
    );

    let broker = RunningBroker::start(&e.dir).await.unwrap();
    let mut guest2 = Guest::connect(&e.dir, &broker.url()).await;
    let s2 = guest2.attest(&["root"]).await;
    assert_eq!(
        s2.summary(),
        vec![("root".into(), 2, pb::KeyState::Current as i32)]
    );
    assert_eq!(s2.keys[0].key, key2);
    // The guest retries its confirmation of the first session.
    let ok = guest2.confirm(&s.nonce, "root", v, &proof).await.unwrap();
    assert_eq!(ok.current_version, 2);
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_before_promote_or_after_the_session_promotes_nothing() {
    for point in ["confirm-before-promote", "attest-after-session-recorded"] {
        let e = env(BrokerOptions::default());
        e.dir.add_volume("root", "prod").unwrap();
        e.rotate("root");
        let (c, url) = serving_child(&e, point);
        let mut guest = Guest::connect(&e.dir, &url).await;
        let session = if point == "confirm-before-promote" {
            let s = guest.attest(&["root"]).await;
            let (v, proof) = s.proof("root");
            assert!(guest.confirm(&s.nonce, "root", v, &proof).await.is_err());
            Some((s, v, proof))
        } else {
            // The Attest itself gets no reply.
            let r = guest.try_attest(&["root"]).await;
            assert!(r.is_err(), "{:?}", r.map(|s| s.summary()));
            None
        };
        killed_at(c.wait_with_output().unwrap(), point);
        assert_eq!(
            states(e.store.as_ref(), "root"),
            vec![(1, KeyState::Current), (2, KeyState::Pending)],
            "{point}"
        );
        if let Some((s, v, proof)) = session {
            // The session survived in the store: the retry promotes now.
            let broker = RunningBroker::start(&e.dir).await.unwrap();
            let mut g = Guest::connect(&e.dir, &broker.url()).await;
            let ok = g.confirm(&s.nonce, "root", v, &proof).await.unwrap();
            assert_eq!(ok.current_version, 2);
            broker.stop().await.unwrap();
        }
    }
}
