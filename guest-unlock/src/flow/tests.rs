//! The flow against fake brokers: in process (every twist of a broker's
//! answer) and over the wire (TLS, pinning, gRPC status details, fallback).

use super::*;
use crate::client::BrokerRpc;
use crate::evidence::EvidenceError;
use crate::evidence::{Evidence, SnpEvidence};
use keybroker_proto::pb::KeyState;
use keybroker_proto::{
    check_version, denial_status, protocol_version, report_data, wrap_volume_key, GuestKeyPair,
    GuestPublicKey, Nonce, ReportData, VolumeId,
};
use std::sync::Mutex;
use std::time::Duration;

/// Evidence whose report carries the requested REPORT_DATA (content is
/// otherwise irrelevant to the guest).
struct FakeEvidence;

impl EvidenceProvider for FakeEvidence {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn get_evidence(&self, rd: &[u8; 64]) -> Result<Evidence, EvidenceError> {
        use keybroker_snp::report::{offset, REPORT_DATA_LEN, REPORT_LEN};
        let mut report = vec![0u8; REPORT_LEN];
        report[offset::REPORT_DATA..offset::REPORT_DATA + REPORT_DATA_LEN].copy_from_slice(rd);
        Ok(SnpEvidence {
            report,
            cert_table: Vec::new(),
        }
        .into())
    }
}

/// What the fake broker does to its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Twist {
    None,
    /// Wrap to the right key but for another version in the aad.
    WrongVersionBinding,
    /// Wrap to a different key pair.
    WrongRecipient,
    /// Flip a ciphertext byte.
    Tamper,
    /// Grant a volume that was not requested.
    ExtraVolume,
    /// Answer nothing about the second volume.
    Omit,
    /// Deny the second volume.
    DenySecond,
    /// Refuse everything with PERMISSION_DENIED.
    Refuse,
    /// Answer with another major version.
    OtherMajor,
}

/// A ConfirmRotation the fake received: (nonce, volume, version, proof ok).
type Confirmed = (Vec<u8>, String, u32, bool);

struct FakeBroker {
    twist: Twist,
    nonce: [u8; 32],
    log: Mutex<Vec<&'static str>>,
    /// REPORT_DATA of the last Attest (for checking rotation proofs).
    last_rd: Mutex<Option<ReportData>>,
    /// What ConfirmRotation received: (nonce, volume, version, proof ok).
    confirmed: Mutex<Vec<Confirmed>>,
}

impl FakeBroker {
    fn new(twist: Twist) -> Self {
        Self {
            twist,
            nonce: [0x11; 32],
            log: Mutex::new(Vec::new()),
            last_rd: Mutex::new(None),
            confirmed: Mutex::new(Vec::new()),
        }
    }
}

impl BrokerRpc for &FakeBroker {
    async fn challenge(
        &mut self,
        req: pb::ChallengeRequest,
        _t: Duration,
    ) -> Result<pb::ChallengeResponse, tonic::Status> {
        self.log.lock().unwrap().push("challenge");
        check_version(req.version.as_ref())?;
        Ok(pb::ChallengeResponse {
            version: Some(protocol_version()),
            nonce: self.nonce.to_vec(),
            expires_in_secs: 60,
        })
    }

    async fn attest(
        &mut self,
        req: pb::AttestRequest,
        _t: Duration,
    ) -> Result<pb::AttestResponse, tonic::Status> {
        self.log.lock().unwrap().push("attest");
        let pk = GuestPublicKey::try_from(req.guest_public_key.as_slice()).unwrap();
        let vols = VolumeIds::parse(&req.volume_ids).unwrap();
        *self.last_rd.lock().unwrap() =
            Some(report_data(&Nonce::from_bytes(self.nonce), &pk, &vols));
        fake_attest(req, &self.nonce, self.twist)
    }

    async fn confirm_rotation(
        &mut self,
        req: pb::ConfirmRotationRequest,
        _t: Duration,
    ) -> Result<pb::ConfirmRotationResponse, tonic::Status> {
        self.log.lock().unwrap().push("confirm");
        check_version(req.version.as_ref())?;
        let rd = self.last_rd.lock().unwrap().take().unwrap();
        let volume = VolumeId::new(req.volume_id.as_str()).unwrap();
        // The fake's keys: volume i has key [i + 1; 64] (see fake_attest).
        let key = if volume.as_str() == "root" {
            [1u8; 64]
        } else {
            [2u8; 64]
        };
        let ok =
            keybroker_proto::verify_rotation_proof(&key, &rd, &volume, req.key_version, &req.proof);
        self.confirmed.lock().unwrap().push((
            req.nonce.clone(),
            req.volume_id.clone(),
            req.key_version,
            ok,
        ));
        if !ok {
            return Err(tonic::Status::permission_denied("bad proof"));
        }
        Ok(pb::ConfirmRotationResponse {
            version: Some(protocol_version()),
            current_version: req.key_version,
            decision_id: "d-3".into(),
        })
    }
}

/// The fake broker's answer to `Attest`: checks the request as a broker
/// would (minus the report signature), then wraps one key per volume.
fn fake_attest(
    req: pb::AttestRequest,
    expected_nonce: &[u8; 32],
    twist: Twist,
) -> Result<pb::AttestResponse, tonic::Status> {
    let vols = VolumeIds::parse(&req.volume_ids).unwrap();
    let pk = GuestPublicKey::try_from(req.guest_public_key.as_slice()).unwrap();
    let nonce = Nonce::try_from(req.nonce.as_slice()).unwrap();
    assert_eq!(nonce.as_bytes(), expected_nonce);
    let rd = report_data(&nonce, &pk, &vols);
    assert_eq!(&req.report[0x50..0x90], &rd.as_bytes()[..]);
    if twist == Twist::Refuse {
        return Err(denial_status(
            tonic::Code::PermissionDenied,
            "measurement not allowed",
            &pb::Denial {
                reason_codes: vec!["POLICY_MEASUREMENT_NOT_ALLOWED".into()],
                volumes: vec![],
                decision_id: "d-1".into(),
            },
        ));
    }
    let mut keys = Vec::new();
    let mut denied = Vec::new();
    for (i, v) in vols.iter().enumerate() {
        if i == 1 && twist == Twist::Omit {
            continue;
        }
        if i == 1 && twist == Twist::DenySecond {
            denied.push(pb::VolumeDenial {
                volume_id: v.to_string(),
                reason_codes: vec!["VOLUME_NOT_BOUND".into()],
            });
            continue;
        }
        let key = [i as u8 + 1; 64];
        let (to, version_in_aad) = match twist {
            Twist::WrongRecipient => (GuestKeyPair::generate().unwrap().public(), 1),
            Twist::WrongVersionBinding => (pk, 2),
            _ => (pk, 1),
        };
        let mut w = wrap_volume_key(&to, &rd, v, version_in_aad, &key).unwrap();
        if twist == Twist::Tamper {
            w.ciphertext[0] ^= 1;
        }
        keys.push(pb::WrappedKey {
            volume_id: v.to_string(),
            key_version: 1,
            state: KeyState::Current as i32,
            enc: w.enc,
            ciphertext: w.ciphertext,
        });
    }
    if twist == Twist::ExtraVolume {
        let other = VolumeId::new("not-requested").unwrap();
        let w = wrap_volume_key(&pk, &rd, &other, 1, &[9; 64]).unwrap();
        keys.push(pb::WrappedKey {
            volume_id: other.to_string(),
            key_version: 1,
            state: KeyState::Current as i32,
            enc: w.enc,
            ciphertext: w.ciphertext,
        });
    }
    let version = if twist == Twist::OtherMajor {
        pb::ProtocolVersion { major: 2, minor: 0 }
    } else {
        protocol_version()
    };
    Ok(pb::AttestResponse {
        version: Some(version),
        keys,
        denied,
        decision_id: "d-2".into(),
    })
}

fn vols() -> VolumeIds {
    VolumeIds::parse(["root", "data"]).unwrap()
}

async fn run(twist: Twist) -> Result<Unwrapped, UnlockError> {
    let broker = FakeBroker::new(twist);
    let mut s = Session::new(&broker, "fake", Instant::now() + Duration::from_secs(5));
    let start = Start::new(vols());
    let challenged = start.handle(&mut s).await?;
    assert_eq!(challenged.nonce.as_bytes(), &[0x11; 32]);
    let attested = challenged.handle(&FakeEvidence, &mut s).await?;
    assert_eq!(*broker.log.lock().unwrap(), ["challenge", "attest"]);
    attested.handle(&s)
}

#[tokio::test]
async fn happy_path_unwraps_every_key_in_request_order() {
    let u = run(Twist::None).await.unwrap();
    assert_eq!(u.keys.len(), 2);
    assert_eq!(u.keys[0].volume.as_str(), "root");
    assert_eq!(u.keys[0].expose_secret(), &[1; 64]);
    assert_eq!(u.keys[1].volume.as_str(), "data");
    assert_eq!(u.keys[1].expose_secret(), &[2; 64]);
    assert_eq!(u.keys[0].state, KeyState::Current);
    assert!(u.denied.is_empty());
    assert_eq!(u.decision_id, "d-2");
    // Debug never shows key bytes.
    let dbg = format!("{u:?}");
    assert!(dbg.contains("root v1") && !dbg.contains("1, 1"), "{dbg}");
}

#[tokio::test]
async fn confirm_rotation_is_bound_to_the_attest_session() {
    let broker = FakeBroker::new(Twist::None);
    let s = Session::new(&broker, "fake", Instant::now() + Duration::from_secs(5));
    let (u, mut rot) = attest_session(s, &FakeEvidence, &vols()).await.unwrap();
    assert_eq!(rot.broker(), "fake");
    let root = &u.keys[0];
    let v = rot.confirm(root, Duration::from_secs(5)).await.unwrap();
    assert_eq!(v, 1);
    let got = broker.confirmed.lock().unwrap().clone();
    assert_eq!(got, [(vec![0x11; 32], "root".to_owned(), 1, true)]);
    assert_eq!(
        *broker.log.lock().unwrap(),
        ["challenge", "attest", "confirm"]
    );
    // A proof made with another key is refused by the broker.
    *broker.last_rd.lock().unwrap() = Some(ReportData::from_bytes([0; 64]));
    let e = rot.confirm(root, Duration::from_secs(5)).await.unwrap_err();
    assert!(matches!(e, UnlockError::Refused { .. }), "{e}");
    assert!(!broker.confirmed.lock().unwrap()[1].3);
}

#[tokio::test]
async fn confirm_rotation_on_a_broker_without_it_is_a_fault() {
    /// Only Challenge and Attest: ConfirmRotation is the trait's default.
    struct Old<'a>(&'a FakeBroker);
    impl BrokerRpc for Old<'_> {
        async fn challenge(
            &mut self,
            req: pb::ChallengeRequest,
            t: Duration,
        ) -> Result<pb::ChallengeResponse, tonic::Status> {
            let mut b = self.0;
            b.challenge(req, t).await
        }
        async fn attest(
            &mut self,
            req: pb::AttestRequest,
            t: Duration,
        ) -> Result<pb::AttestResponse, tonic::Status> {
            let mut b = self.0;
            b.attest(req, t).await
        }
    }
    let broker = FakeBroker::new(Twist::None);
    let s = Session::new(Old(&broker), "old", Instant::now() + Duration::from_secs(5));
    let (u, mut rot) = attest_session(s, &FakeEvidence, &vols()).await.unwrap();
    let e = rot
        .confirm(&u.keys[0], Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            UnlockError::BrokerFault {
                code: tonic::Code::Unimplemented,
                ..
            }
        ),
        "{e}"
    );
}

#[tokio::test]
async fn a_key_that_does_not_open_refuses_the_response() {
    for twist in [
        Twist::WrongVersionBinding,
        Twist::WrongRecipient,
        Twist::Tamper,
    ] {
        let e = run(twist).await.unwrap_err();
        assert!(
            matches!(e, UnlockError::KeyDidNotOpen { ref volume, version: 1, .. } if volume == "root"),
            "{e}"
        );
        assert!(!e.is_retryable());
        assert!(e.to_string().contains("nothing was unlocked"), "{e}");
    }
}

#[tokio::test]
async fn protocol_violations_are_refused() {
    let e = run(Twist::ExtraVolume).await.unwrap_err();
    assert!(matches!(e, UnlockError::BadResponse { .. }), "{e}");
    assert!(e.to_string().contains("not-requested"), "{e}");
    let e = run(Twist::Omit).await.unwrap_err();
    assert!(e.to_string().contains("neither granted nor denied"), "{e}");
    let e = run(Twist::OtherMajor).await.unwrap_err();
    assert!(matches!(e, UnlockError::VersionMismatch { .. }), "{e}");
    assert!(e.to_string().contains("v2.0"), "{e}");
}

#[tokio::test]
async fn per_volume_denial_is_reported() {
    let u = run(Twist::DenySecond).await.unwrap();
    assert_eq!(u.keys.len(), 1);
    assert_eq!(
        u.denied,
        vec![Denied {
            volume: VolumeId::new("data").unwrap(),
            reason_codes: vec!["VOLUME_NOT_BOUND".into()]
        }]
    );
}

#[tokio::test]
async fn refusal_carries_reason_codes() {
    let e = run(Twist::Refuse).await.unwrap_err();
    let UnlockError::Refused {
        denial, message, ..
    } = e
    else {
        panic!("{e}")
    };
    assert_eq!(message, "measurement not allowed");
    let out = refusal_outcome(&"https://kb:1".parse().unwrap(), &vols(), message, denial);
    assert!(!out.all_granted());
    assert_eq!(out.denied.len(), 2);
    assert_eq!(
        out.denied[1].reason_codes,
        ["POLICY_MEASUREMENT_NOT_ALLOWED"]
    );
    assert_eq!(out.decision_id, "d-1");
}

#[tokio::test]
async fn evidence_a_broker_is_too_old_for_is_not_even_fetched() {
    struct Newer(std::sync::atomic::AtomicBool);
    impl EvidenceProvider for Newer {
        fn name(&self) -> &'static str {
            "newer"
        }
        fn get_evidence(&self, rd: &[u8; 64]) -> Result<Evidence, EvidenceError> {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            FakeEvidence.get_evidence(rd)
        }
        fn min_protocol_minor(&self) -> u32 {
            keybroker_proto::PROTOCOL_MINOR + 1
        }
    }
    let broker = FakeBroker::new(Twist::None);
    let mut s = Session::new(&broker, "fake", Instant::now() + Duration::from_secs(5));
    let c = Start::new(vols()).handle(&mut s).await.unwrap();
    let provider = Newer(false.into());
    let e = c.handle(&provider, &mut s).await.unwrap_err();
    assert!(matches!(e, UnlockError::VersionMismatch { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("newer evidence needs") && msg.contains("upgrade the broker"),
        "{msg}"
    );
    assert!(!provider.0.load(std::sync::atomic::Ordering::SeqCst));
}

#[tokio::test]
async fn evidence_not_carrying_report_data_is_refused_locally() {
    struct Liar;
    impl EvidenceProvider for Liar {
        fn name(&self) -> &'static str {
            "liar"
        }
        fn get_evidence(&self, _rd: &[u8; 64]) -> Result<Evidence, EvidenceError> {
            Ok(SnpEvidence {
                report: vec![0; 1184],
                cert_table: vec![],
            }
            .into())
        }
    }
    let broker = FakeBroker::new(Twist::None);
    let mut s = Session::new(&broker, "fake", Instant::now() + Duration::from_secs(5));
    let c = Start::new(vols()).handle(&mut s).await.unwrap();
    let e = c.handle(&Liar, &mut s).await.unwrap_err();
    assert!(
        matches!(e, UnlockError::EvidenceMismatch { provider: "liar" }),
        "{e}"
    );
    assert_eq!(
        *broker.log.lock().unwrap(),
        ["challenge"],
        "nothing sent to attest"
    );
}

#[test]
fn status_mapping() {
    let broker = FakeBroker::new(Twist::None);
    let s = Session::new(&broker, "b", Instant::now());
    let vm: tonic::Status = check_version(None).unwrap_err().into();
    assert!(matches!(
        s.status_error(vm),
        UnlockError::VersionMismatch { .. }
    ));
    assert!(s
        .status_error(tonic::Status::unavailable("x"))
        .is_retryable());
    assert!(s.status_error(tonic::Status::internal("x")).is_retryable());
    assert!(!s
        .status_error(tonic::Status::invalid_argument("x"))
        .is_retryable());
    let e = s.status_error(tonic::Status::unavailable("evil\x1b[2J"));
    assert!(!e.to_string().contains('\x1b'), "{e}");
}

// --- Over the wire: TLS, pinning, gRPC status details, broker fallback. ---

use crate::client::test_support::{closed_port_url, serve, server_config, test_cert};
use crate::evidence::ProviderConfig;
use keybroker_proto::pb::key_broker_server::KeyBroker;

/// A gRPC broker that answers like [`fake_attest`], or is "down".
pub(crate) struct GrpcFake {
    pub(crate) twist: Twist,
    pub(crate) down: bool,
}

#[tonic::async_trait]
impl KeyBroker for GrpcFake {
    async fn challenge(
        &self,
        req: tonic::Request<pb::ChallengeRequest>,
    ) -> Result<tonic::Response<pb::ChallengeResponse>, tonic::Status> {
        if self.down {
            return Err(tonic::Status::unavailable("nonce store unreachable"));
        }
        check_version(req.get_ref().version.as_ref())?;
        Ok(tonic::Response::new(pb::ChallengeResponse {
            version: Some(protocol_version()),
            nonce: vec![0x22; 32],
            expires_in_secs: 60,
        }))
    }

    async fn attest(
        &self,
        req: tonic::Request<pb::AttestRequest>,
    ) -> Result<tonic::Response<pb::AttestResponse>, tonic::Status> {
        fake_attest(req.into_inner(), &[0x22; 32], self.twist).map(tonic::Response::new)
    }

    async fn confirm_rotation(
        &self,
        _req: tonic::Request<pb::ConfirmRotationRequest>,
    ) -> Result<tonic::Response<pb::ConfirmRotationResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in this fake"))
    }
}

fn cfg(brokers: Vec<BrokerUrl>, pins: Vec<keybroker_proto::SpkiPin>, secs: u64) -> GuestConfig {
    GuestConfig {
        brokers,
        pins,
        connect_timeout: Duration::from_secs(1),
        timeout: Duration::from_secs(secs),
        evidence: ProviderConfig::SevGuest {
            device: "/unused".into(),
        },
        vmpl: 0,
    }
}

#[tokio::test]
async fn fetch_keys_falls_back_to_the_next_broker() {
    let cert = test_cert();
    let down = serve(
        GrpcFake {
            twist: Twist::None,
            down: true,
        },
        server_config(&cert),
    )
    .await;
    let good = serve(
        GrpcFake {
            twist: Twist::None,
            down: false,
        },
        server_config(&cert),
    )
    .await;
    let dead = closed_port_url().await;
    let c = cfg(vec![dead, down, good.clone()], vec![cert.pin], 20);
    let out = fetch_keys(&c, &FakeEvidence, &vols()).await.unwrap();
    assert_eq!(out.broker, good);
    assert!(out.all_granted());
    assert_eq!(out.keys.len(), 2);
    assert_eq!(out.keys[1].expose_secret(), &[2; 64]);
    assert_eq!(out.decision_id, "d-2");
}

#[tokio::test]
async fn nothing_listening_is_no_connection() {
    let dead = closed_port_url().await;
    let e = fetch_keys(
        &cfg(vec![dead], vec![test_cert().pin], 1),
        &FakeEvidence,
        &vols(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            e,
            UnlockError::Unreachable {
                cause: UnreachableCause::NoConnection,
                ..
            }
        ),
        "{e}"
    );
}

#[tokio::test]
async fn refusal_reason_codes_survive_the_wire() {
    let cert = test_cert();
    let url = serve(
        GrpcFake {
            twist: Twist::Refuse,
            down: false,
        },
        server_config(&cert),
    )
    .await;
    let out = fetch_keys(&cfg(vec![url], vec![cert.pin], 20), &FakeEvidence, &vols())
        .await
        .unwrap();
    assert!(!out.all_granted());
    assert!(out.keys.is_empty());
    assert_eq!(out.refusal.as_deref(), Some("measurement not allowed"));
    assert_eq!(out.denied.len(), 2);
    assert_eq!(
        out.denied[0].reason_codes,
        ["POLICY_MEASUREMENT_NOT_ALLOWED"]
    );
    assert_eq!(out.decision_id, "d-1");
}

#[tokio::test]
async fn a_bad_key_over_the_wire_is_an_error_not_a_retry() {
    let cert = test_cert();
    let url = serve(
        GrpcFake {
            twist: Twist::Tamper,
            down: false,
        },
        server_config(&cert),
    )
    .await;
    let e = fetch_keys(&cfg(vec![url], vec![cert.pin], 20), &FakeEvidence, &vols())
        .await
        .unwrap_err();
    assert!(matches!(e, UnlockError::KeyDidNotOpen { .. }), "{e}");
}

#[tokio::test]
async fn wrong_pin_ends_unreachable_without_retrying() {
    let cert = test_cert();
    let url = serve(
        GrpcFake {
            twist: Twist::None,
            down: false,
        },
        server_config(&cert),
    )
    .await;
    let e = fetch_keys(
        &cfg(vec![url], vec![test_cert().pin], 30),
        &FakeEvidence,
        &vols(),
    )
    .await
    .unwrap_err();
    let UnlockError::Unreachable {
        attempts, cause, ..
    } = &e
    else {
        panic!("{e}")
    };
    assert_eq!(*cause, UnreachableCause::PinMismatch);
    // A key that is not pinned stays unpinned: one attempt, no backoff
    // through the whole 30 s budget.
    assert_eq!(*attempts, 1, "a pin mismatch is not retried");
    let msg = e.to_string();
    assert!(msg.contains("matches none of the configured pins"), "{msg}");
    assert!(msg.contains(&cert.pin.to_string()), "{msg}");
}
