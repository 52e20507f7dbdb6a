//! Broker replicas on one PostgreSQL database (issue #10), end to end: two
//! real brokers (TLS on loopback, one master key and TLS identity copied
//! as docs/operations.md says) on a database of a throwaway cluster, and
//! simulated guests speaking the protocol by hand.
//!
//! - the same Attest sent to both replicas at once releases the key once;
//! - a guest's Challenge from one replica is accepted by the other;
//! - a rotation started through one replica's admin API is released by
//!   it and confirmed through the other;
//! - admin works through either replica, and in-place policy edits made
//!   at once through both both land (compare-and-set, redone on conflict).

use std::time::Duration;

use keybroker_proto::admin_pb;
use keybroker_proto::pb::key_broker_client::KeyBrokerClient;
use keybroker_proto::{
    denial_from_status, pb, protocol_version, report_data, rotation_proof, GuestKeyPair, Nonce,
    VolumeId, VolumeIds,
};
use keybroker_tests::pg::PgCluster;
use keybroker_tests::sim::SimPlatform;
use keybroker_tests::{
    default_guest, guest_config, policy_for, BrokerDir, BrokerOptions, RunningBroker,
};
use tonic::transport::Channel;

struct Pair {
    a_dir: BrokerDir,
    a: RunningBroker,
    b: RunningBroker,
    b_dir: BrokerDir,
    key: Vec<u8>,
}

/// Two replicas on a fresh database, policy `prod` and volume `root`.
async fn pair() -> Pair {
    let pg = PgCluster::shared();
    let url = pg.socket_url(&pg.fresh_database());
    let a_dir = BrokerDir::create_with_store(&BrokerOptions::default(), &url).unwrap();
    a_dir
        .set_policy("prod", &policy_for(&default_guest().measurement, ""))
        .unwrap();
    let key = a_dir.add_volume("root", "prod").unwrap();
    let b_dir = a_dir.replica().unwrap();
    let a = RunningBroker::start(&a_dir).await.unwrap();
    let b = RunningBroker::start(&b_dir).await.unwrap();
    Pair {
        a_dir,
        a,
        b,
        b_dir,
        key,
    }
}

async fn client(dir: &BrokerDir, broker: &RunningBroker) -> KeyBrokerClient<Channel> {
    let cfg = guest_config(&[broker.url()], &dir.pin, dir.sim.dir(), 10).unwrap();
    let tls = guest_unlock::client::tls_config(&cfg.pins).unwrap();
    guest_unlock::client::connect(&cfg.brokers[0], tls, Duration::from_secs(5))
        .await
        .unwrap()
}

async fn challenge(c: &mut KeyBrokerClient<Channel>, volumes: &[&str]) -> [u8; 32] {
    let n = c
        .challenge(pb::ChallengeRequest {
            version: Some(protocol_version()),
            volume_ids: volumes.iter().map(|s| s.to_string()).collect(),
        })
        .await
        .unwrap()
        .into_inner()
        .nonce;
    n.as_slice().try_into().unwrap()
}

/// An Attest binding `nonce` and `kp`, and its REPORT_DATA.
fn attest(
    sim: &SimPlatform,
    nonce: [u8; 32],
    kp: &GuestKeyPair,
    volumes: &[&str],
) -> (pb::AttestRequest, keybroker_proto::ReportData) {
    let vols = VolumeIds::parse(volumes.iter().copied()).unwrap();
    let rd = report_data(&Nonce::from_bytes(nonce), &kp.public(), &vols);
    let req = pb::AttestRequest {
        version: Some(protocol_version()),
        nonce: nonce.to_vec(),
        report: sim.report(rd.as_bytes(), &default_guest()).unwrap(),
        cert_table: sim.cert_table(),
        guest_public_key: kp.public().as_bytes().to_vec(),
        volume_ids: volumes.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    (req, rd)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_attest_to_two_replicas_at_once_releases_once() {
    let p = pair().await;
    let mut ca = client(&p.a_dir, &p.a).await;
    let mut cb = client(&p.a_dir, &p.b).await;
    for _ in 0..5 {
        let nonce = challenge(&mut ca, &["root"]).await;
        let kp = GuestKeyPair::generate().unwrap();
        let (req, rd) = attest(&p.a_dir.sim, nonce, &kp, &["root"]);
        let (ra, rb) = tokio::join!(ca.attest(req.clone()), cb.attest(req));
        let (ok, refused) = match (ra, rb) {
            (Ok(ok), Err(e)) | (Err(e), Ok(ok)) => (ok.into_inner(), e),
            (a, b) => panic!("expected one release and one refusal: {a:?} {b:?}"),
        };
        let k = &ok.keys[0];
        let vid = VolumeId::new("root").unwrap();
        let key = kp
            .unwrap_volume_key(&rd, &vid, k.key_version, &k.enc, &k.ciphertext)
            .unwrap();
        assert_eq!(key.to_vec(), p.key);
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
        assert_eq!(
            denial_from_status(&refused).unwrap().reason_codes,
            vec!["NONCE_REPLAYED".to_owned()]
        );
    }
    // Five releases, each audited once; the chain verifies through either.
    for r in [&p.a, &p.b] {
        let v = r
            .admin()
            .await
            .unwrap()
            .audit_verify(admin_pb::AuditVerifyRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert!(v.intact && v.entries >= 5, "{v:?}");
    }
    p.a.stop().await.unwrap();
    p.b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_started_through_one_replica_is_confirmed_through_the_other() {
    let p = pair().await;
    let rotated =
        p.a.admin()
            .await
            .unwrap()
            .volume_rotate(admin_pb::VolumeRotateRequest {
                name: "root".into(),
            })
            .await
            .unwrap()
            .into_inner();
    assert_eq!(rotated.pending_version, 2);
    // The guest attests through A (challenged by B: either replica's
    // nonce is good on the other) and gets current and pending keys.
    let mut ca = client(&p.a_dir, &p.a).await;
    let mut cb = client(&p.a_dir, &p.b).await;
    let nonce = challenge(&mut cb, &["root"]).await;
    let kp = GuestKeyPair::generate().unwrap();
    let (req, rd) = attest(&p.a_dir.sim, nonce, &kp, &["root"]);
    let resp = ca.attest(req).await.unwrap().into_inner();
    let pending = resp
        .keys
        .iter()
        .find(|k| k.state == pb::KeyState::Pending as i32)
        .expect("a pending key");
    let vid = VolumeId::new("root").unwrap();
    let new_key = kp
        .unwrap_volume_key(
            &rd,
            &vid,
            pending.key_version,
            &pending.enc,
            &pending.ciphertext,
        )
        .unwrap();
    let proof = rotation_proof(&new_key, &rd, &vid, pending.key_version);
    // Confirmed through B.
    let confirmed = cb
        .confirm_rotation(pb::ConfirmRotationRequest {
            version: Some(protocol_version()),
            nonce: nonce.to_vec(),
            volume_id: "root".into(),
            key_version: pending.key_version,
            proof: proof.to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(confirmed.current_version, 2);
    // A sees it: the next release is version 2 only.
    let nonce = challenge(&mut ca, &["root"]).await;
    let kp = GuestKeyPair::generate().unwrap();
    let (req, _) = attest(&p.a_dir.sim, nonce, &kp, &["root"]);
    let resp = ca.attest(req).await.unwrap().into_inner();
    let versions: Vec<(u32, i32)> = resp.keys.iter().map(|k| (k.key_version, k.state)).collect();
    assert_eq!(versions, vec![(2, pb::KeyState::Current as i32)]);
    p.a.stop().await.unwrap();
    p.b.stop().await.unwrap();
}

async fn edit(r: &RunningBroker, value: String) -> admin_pb::PolicyListEditResponse {
    r.admin()
        .await
        .unwrap()
        .allow_measurement(admin_pb::PolicyListEditRequest {
            name: "prod".into(),
            value,
        })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_through_either_replica_and_concurrent_edits_both_land() {
    let p = pair().await;
    let m = |i: u8| hex::encode([i; 48]);
    // Ten edits through each replica at once, each adding its own value.
    let (ra, rb) = tokio::join!(
        async {
            let mut v = Vec::new();
            for i in 0..10 {
                v.push(edit(&p.a, m(i)).await);
            }
            v
        },
        async {
            let mut v = Vec::new();
            for i in 10..20 {
                v.push(edit(&p.b, m(i)).await);
            }
            v
        }
    );
    assert!(ra.iter().chain(rb.iter()).all(|r| r.changed));
    let text =
        p.b.admin()
            .await
            .unwrap()
            .policy_get(admin_pb::PolicyGetRequest {
                name: "prod".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .policy
            .unwrap();
    for i in 0..20 {
        assert!(
            text.text.contains(&m(i)),
            "measurement {i} was lost:\n{}",
            text.text
        );
    }
    // Nothing was written over: 1 + 20 revisions.
    assert_eq!(text.revision, 21);
    p.a.stop().await.unwrap();
    p.b.stop().await.unwrap();
}

/// A record sealed under a master key one replica lacks (a rollout that
/// has not reached it): that replica refuses with MASTER_KEY_UNAVAILABLE
/// (UNAVAILABLE: another replica may serve it) and never a wrong key; once
/// the key file is there, it serves without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_without_the_master_key_refuses_clearly_then_reloads() {
    use broker::keys::{self, next_path, MasterKey, VolumeKey};
    use broker::store::NewVolume;
    let p = pair().await;
    // Replica A has begun a master rotation: K.next exists in its
    // directory only, and a new volume is sealed under it.
    let a_cfg = p.a_dir.config().unwrap();
    let next = next_path(&a_cfg.master_key);
    MasterKey::generate_to_file(&next).unwrap();
    let m2 = MasterKey::load(&next).unwrap();
    let v2 = VolumeKey::generate();
    broker::wiring::store(&a_cfg)
        .unwrap()
        .create_volume(
            &NewVolume {
                name: "v2".into(),
                policy: "prod".into(),
                description: String::new(),
            },
            &keys::seal(&m2, "v2", 1, &v2).unwrap(),
        )
        .unwrap();
    let mut ca = client(&p.a_dir, &p.a).await;
    let mut cb = client(&p.a_dir, &p.b).await;
    // B lacks it.
    let nonce = challenge(&mut cb, &["v2"]).await;
    let kp = GuestKeyPair::generate().unwrap();
    let (req, _) = attest(&p.a_dir.sim, nonce, &kp, &["v2"]);
    let refused = cb.attest(req).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert_eq!(
        denial_from_status(&refused).unwrap().reason_codes,
        vec!["MASTER_KEY_UNAVAILABLE".to_owned()]
    );
    // A holds it (re-read on the miss).
    let nonce = challenge(&mut ca, &["v2"]).await;
    let (req, rd) = attest(&p.a_dir.sim, nonce, &kp, &["v2"]);
    let k = &ca.attest(req).await.unwrap().into_inner().keys[0];
    let vid = VolumeId::new("v2").unwrap();
    let got = kp
        .unwrap_volume_key(&rd, &vid, k.key_version, &k.enc, &k.ciphertext)
        .unwrap();
    assert_eq!(&got[..], v2.expose_secret());
    // The rollout reaches B: its next Attest is served, no restart.
    let b_cfg = p.b_dir.config().unwrap();
    std::fs::copy(&next, next_path(&b_cfg.master_key)).unwrap();
    let nonce = challenge(&mut cb, &["v2"]).await;
    let (req, rd) = attest(&p.a_dir.sim, nonce, &kp, &["v2"]);
    let k = &cb.attest(req).await.unwrap().into_inner().keys[0];
    let got = kp
        .unwrap_volume_key(&rd, &vid, k.key_version, &k.enc, &k.ciphertext)
        .unwrap();
    assert_eq!(&got[..], v2.expose_secret());
    p.a.stop().await.unwrap();
    p.b.stop().await.unwrap();
}
