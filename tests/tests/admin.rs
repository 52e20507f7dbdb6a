//! Administration through the admin API of a running broker takes effect
//! on the next attestation: over loopback, a simulated guest is granted,
//! then refused with VOLUME_DISABLED, POLICY_MEASUREMENT_NOT_ALLOWED or
//! POLICY_CHIP_BLOCKED after the matching admin call, and granted again
//! once it is undone. The order is the operator's: init, serve, policy
//! set, volume add.

use std::sync::Arc;

use guest_unlock::evidence::EvidenceProvider;
use guest_unlock::flow::fetch_keys;
use keybroker_proto::admin_pb;
use keybroker_proto::VolumeIds;
use keybroker_tests::sim::{SimPlatform, SimProvider};
use keybroker_tests::{
    default_guest, guest_config, policy_for, BrokerDir, BrokerOptions, RunningBroker,
};

fn provider(dir: &BrokerDir) -> Arc<dyn EvidenceProvider> {
    Arc::new(SimProvider::new(
        SimPlatform::load(dir.sim.dir()).unwrap(),
        default_guest(),
    ))
}

/// One unlock of `root`: `Ok(())` when granted, else its reason codes.
async fn unlock(dir: &BrokerDir, broker: &RunningBroker) -> Result<(), Vec<String>> {
    let cfg = guest_config(&[broker.url()], &dir.pin, dir.sim.dir(), 20).unwrap();
    let vols = VolumeIds::parse(["root"]).unwrap();
    let out = fetch_keys(&cfg, provider(dir).as_ref(), &vols)
        .await
        .unwrap();
    if out.all_granted() {
        assert_eq!(out.keys.len(), 1);
        Ok(())
    } else {
        assert!(out.keys.is_empty());
        Err(out.denied[0].reason_codes.clone())
    }
}

fn edit(name: &str, value: &str) -> admin_pb::PolicyListEditRequest {
    admin_pb::PolicyListEditRequest {
        name: name.into(),
        value: value.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_changes_take_effect_on_the_next_attestation() {
    let dir = BrokerDir::create(&BrokerOptions::default()).unwrap();
    let broker = RunningBroker::start(&dir).await.unwrap();
    let measurement = hex::encode(default_guest().measurement);
    broker
        .admin_set_policy("prod", &policy_for(&default_guest().measurement, ""))
        .await
        .unwrap();
    broker.admin_add_volume("root", "prod").await.unwrap();
    let mut admin = broker.admin().await.unwrap();
    assert_eq!(unlock(&dir, &broker).await, Ok(()));

    // volume disable → VOLUME_DISABLED; enable → granted.
    let set = |enabled| admin_pb::VolumeSetEnabledRequest {
        name: "root".into(),
        enabled,
    };
    admin.volume_set_enabled(set(false)).await.unwrap();
    let codes = unlock(&dir, &broker).await.unwrap_err();
    assert!(codes.iter().any(|c| c == "VOLUME_DISABLED"), "{codes:?}");
    admin.volume_set_enabled(set(true)).await.unwrap();
    assert_eq!(unlock(&dir, &broker).await, Ok(()));

    // revoke-measurement (another one allowed first) → POLICY_MEASUREMENT_NOT_ALLOWED.
    let other = "11".repeat(48);
    admin.allow_measurement(edit("prod", &other)).await.unwrap();
    let r = admin
        .revoke_measurement(edit("prod", &measurement))
        .await
        .unwrap()
        .into_inner();
    assert!(r.changed && !r.reformatted, "{r:?}");
    let codes = unlock(&dir, &broker).await.unwrap_err();
    assert_eq!(codes, ["POLICY_MEASUREMENT_NOT_ALLOWED"]);
    admin
        .allow_measurement(edit("prod", &measurement))
        .await
        .unwrap();
    assert_eq!(unlock(&dir, &broker).await, Ok(()));

    // block-chip → POLICY_CHIP_BLOCKED; unblock-chip → granted.
    let chip = hex::encode(dir.sim.chip_id());
    admin.block_chip(edit("prod", &chip)).await.unwrap();
    let codes = unlock(&dir, &broker).await.unwrap_err();
    assert_eq!(codes, ["POLICY_CHIP_BLOCKED"]);
    admin.unblock_chip(edit("prod", &chip)).await.unwrap();
    assert_eq!(unlock(&dir, &broker).await, Ok(()));

    // A refused admin call: its gRPC code and what to do.
    let e = admin
        .volume_delete(admin_pb::VolumeDeleteRequest {
            name: "root".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(e.message().contains("broker volume disable root"), "{e}");
    let e = admin
        .volume_show(admin_pb::VolumeShowRequest {
            name: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let e = admin
        .policy_set(admin_pb::PolicySetRequest {
            name: "bad".into(),
            text: "version = 1\nmeasurements = [\"zz\"]\n".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(
        e.message().contains("line 2") && e.message().contains("measurements[0]"),
        "{e}"
    );
    let e = admin
        .volume_add(admin_pb::VolumeAddRequest {
            name: "root".into(),
            policy: "prod".into(),
            description: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::AlreadyExists);

    // Every mutating admin call above is audited: 9 allowed, 3 refused
    // (reads such as volume show are not).
    let entries = admin
        .audit_query(admin_pb::AuditQueryRequest {
            kind: Some("admin".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    let verdicts: Vec<&str> = entries.iter().map(|e| e.verdict.as_str()).collect();
    assert_eq!(
        verdicts,
        [
            "allow", "allow", "allow", "allow", "allow", "allow", "allow", "allow", "allow",
            "deny", "deny", "deny"
        ]
    );
    broker.stop().await.unwrap();
}

/// The keys `volumes` receive in one unlock: (volume, version, state, key).
async fn keys_of(
    dir: &BrokerDir,
    broker: &RunningBroker,
    volumes: &[&str],
) -> Vec<(String, u32, keybroker_proto::pb::KeyState, Vec<u8>)> {
    let cfg = guest_config(&[broker.url()], &dir.pin, dir.sim.dir(), 20).unwrap();
    let vols = VolumeIds::parse(volumes.iter().copied()).unwrap();
    let out = fetch_keys(&cfg, provider(dir).as_ref(), &vols)
        .await
        .unwrap();
    assert!(out.all_granted(), "{out:?}");
    out.keys
        .iter()
        .map(|k| {
            (
                k.volume.as_str().to_owned(),
                k.version,
                k.state,
                k.expose_secret().to_vec(),
            )
        })
        .collect()
}

/// The whole stream of one RotateMaster call: batches, then the end.
async fn rotate_master(
    admin: &mut keybroker_proto::admin_pb::admin_client::AdminClient<tonic::transport::Channel>,
    batch_size: u32,
) -> Result<(Vec<admin_pb::RotateMasterBatch>, admin_pb::RotateMasterDone), tonic::Status> {
    use admin_pb::rotate_master_progress::Event;
    let mut stream = admin
        .rotate_master(admin_pb::RotateMasterRequest { batch_size })
        .await?
        .into_inner();
    let mut batches = Vec::new();
    let mut done = None;
    while let Some(m) = stream.message().await? {
        match m.event.expect("an event") {
            Event::Batch(b) => {
                assert!(done.is_none(), "a batch after the end");
                batches.push(b);
            }
            Event::Done(d) => done = Some(d),
        }
    }
    Ok((batches, done.expect("a final message")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_through_the_admin_api() {
    let dir = BrokerDir::create(&BrokerOptions::default()).unwrap();
    dir.set_policy("prod", &policy_for(&default_guest().measurement, ""))
        .unwrap();
    // Five volumes whose keys the test knows.
    let names = ["root", "data", "logs", "home", "swap"];
    let mut stored = Vec::new();
    for n in names {
        stored.push(dir.add_volume(n, "prod").unwrap());
    }
    let broker = RunningBroker::start(&dir).await.unwrap();
    let mut admin = broker.admin().await.unwrap();
    let before = keys_of(&dir, &broker, &names).await;
    assert_eq!(before.len(), 5);
    for ((got, want), n) in before.iter().zip(&stored).zip(names) {
        assert_eq!((got.0.as_str(), got.1), (n, 1));
        assert_eq!(&got.3, want, "{n}");
    }

    // Volume rotation: pending beside current, released both, refused twice.
    let r = admin
        .volume_rotate(admin_pb::VolumeRotateRequest {
            name: "root".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.pending_version, r.current_version), (2, 1));
    assert!(r.message.contains("guest-unlock rotate"), "{}", r.message);
    let e = admin
        .volume_rotate(admin_pb::VolumeRotateRequest {
            name: "root".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(
        e.message().contains("already has pending key version 2")
            && e.message().contains("`broker volume cancel-rotation root`"),
        "{e}"
    );
    let show = admin
        .volume_show(admin_pb::VolumeShowRequest {
            name: "root".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let v = show.volume.unwrap();
    assert_eq!(
        v.rotation_state,
        "pending v2 awaiting the guest's proof (current v1)"
    );
    assert_eq!((v.current_version, v.pending_version), (1, 2));
    let states: Vec<_> = show
        .key_versions
        .iter()
        .map(|k| (k.version, k.state.as_str(), k.retired_at))
        .collect();
    assert_eq!(states, [(1, "current", None), (2, "pending", None)]);
    let root = keys_of(&dir, &broker, &["root"]).await;
    assert_eq!(root.len(), 2, "current and pending are released");
    assert_eq!(root[0].3, stored[0], "the current key is unchanged");
    let st = admin
        .status(admin_pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(st.pending_rotations.len(), 1);
    assert_eq!(st.pending_rotations[0].volume, "root");
    assert_eq!(st.pending_rotations[0].pending_version, 2);
    let c = admin
        .volume_cancel_rotation(admin_pb::VolumeCancelRotationRequest {
            name: "root".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(c.cancelled_version, 2);
    let e = admin
        .volume_cancel_rotation(admin_pb::VolumeCancelRotationRequest {
            name: "root".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    let e = admin
        .volume_rotate(admin_pb::VolumeRotateRequest {
            name: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    assert!(e.message().contains("no volume named \"nope\""), "{e}");
    let p = admin
        .volume_purge_retired(admin_pb::VolumePurgeRetiredRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(p.purged.is_empty());
    assert_eq!(p.older_than_days, 30);

    // Master rotation: batch size 0 is refused in the stream; batches of 2
    // re-seal the 5 records in 3 batches.
    let st = admin
        .status(admin_pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let old = st.master_key_id.clone();
    assert_eq!(st.master_key_generation, 1);
    let e = rotate_master(&mut admin, 0).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("at least 1"), "{e}");
    let (batches, done) = rotate_master(&mut admin, 2).await.unwrap();
    let progress: Vec<_> = batches
        .iter()
        .map(|b| (b.batch, b.resealed, b.resealed_total, b.total))
        .collect();
    assert_eq!(progress, [(1, 2, 2, 5), (2, 2, 4, 5), (3, 1, 5, 5)]);
    assert_eq!(done.old_master_key_id, old);
    assert_ne!(done.new_master_key_id, old);
    assert_eq!((done.resealed, done.batches), (5, 3));
    assert!(
        done.retired_file
            .ends_with(&format!("master.key.retired-{old}")),
        "{}",
        done.retired_file
    );

    // Status: every record under the new key, no rotation under way.
    let st = admin
        .status(admin_pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(st.master_key_id, done.new_master_key_id);
    assert_eq!(st.master_key_generation, 2);
    assert!(!st.master_rotation_under_way && st.next_master_key_id.is_none());
    assert_eq!(
        st.master_keys,
        [admin_pb::MasterKeyInfo {
            id: done.new_master_key_id.clone(),
            role: "current".into(),
            records: 5,
            retired: 0,
        }]
    );
    assert!(st.pending_rotations.is_empty() && st.retired_versions.is_empty());
    assert_eq!(st.retired_retention_days, 30);
    assert!(
        st.listeners.contains(&admin_pb::Listener {
            kind: "guest".into(),
            address: broker.addr.to_string(),
        }),
        "{:?}",
        st.listeners
    );
    assert!(
        st.listeners.iter().any(|l| l.kind == "admin-unix"),
        "{:?}",
        st.listeners
    );

    // The guest still receives exactly the same keys.
    let after = keys_of(&dir, &broker, &names).await;
    assert_eq!(after, before);

    // Audited: 1 rotate, 1 refused rotate, cancel, refused cancel, refused
    // unknown volume, purge, refused batch 0, master rotation.
    let entries = admin
        .audit_query(admin_pb::AuditQueryRequest {
            kind: Some("admin".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries;
    let actions: Vec<(String, &str)> = entries
        .iter()
        .map(|e| {
            let d: serde_json::Value = serde_json::from_str(&e.details_json).unwrap();
            (d["action"].as_str().unwrap().to_owned(), e.verdict.as_str())
        })
        .collect();
    let actions: Vec<(&str, &str)> = actions.iter().map(|(a, v)| (a.as_str(), *v)).collect();
    assert_eq!(
        actions,
        [
            ("volume.rotate", "allow"),
            ("volume.rotate", "deny"),
            ("volume.cancel_rotation", "allow"),
            ("volume.cancel_rotation", "deny"),
            ("volume.rotate", "deny"),
            ("volume.purge_retired", "allow"),
            ("master.rotate", "deny"),
            ("master.rotate", "allow"),
        ]
    );
    let last: serde_json::Value =
        serde_json::from_str(&entries.last().unwrap().details_json).unwrap();
    assert_eq!(last["change"]["new_master_key_id"], done.new_master_key_id);
    assert_eq!(last["change"]["resealed"], 5);

    // A rotation the guest confirmed (promoted in the store here, as
    // ConfirmRotation does): show and status name the retired version and
    // its dates; purge-retired destroys it.
    let r = admin
        .volume_rotate(admin_pb::VolumeRotateRequest {
            name: "root".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.pending_version, 3, "the cancelled 2 is not reused");
    let store = broker::wiring::store(&dir.config().unwrap()).unwrap();
    store.promote_pending("root", 3).unwrap();
    let show = admin
        .volume_show(admin_pb::VolumeShowRequest {
            name: "root".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let retired_at = show.key_versions[0].retired_at.expect("v1 retired_at");
    assert_eq!(show.key_versions[0].state, "retired");
    let kept_until = retired_at + 30 * 86_400;
    assert_eq!(
        show.volume.unwrap().rotation_state,
        format!(
            "current v3, retired v1 kept until {}",
            broker::lifecycle::date(kept_until)
        )
    );
    let st = admin
        .status(admin_pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        st.retired_versions,
        [admin_pb::RetiredKeyVersion {
            volume: "root".into(),
            version: 1,
            retired_at,
            kept_until,
        }]
    );
    assert_eq!(st.master_keys[0].retired, 1);
    // Within the retention nothing goes; older than 0 days (a second later) it does.
    let purge = |name: Option<&str>, days: Option<u32>| admin_pb::VolumePurgeRetiredRequest {
        name: name.map(str::to_owned),
        older_than_days: days,
    };
    let p = admin
        .volume_purge_retired(purge(Some("root"), None))
        .await
        .unwrap()
        .into_inner();
    assert!(p.purged.is_empty());
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let p = admin
        .volume_purge_retired(purge(Some("root"), Some(0)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        p.purged,
        [admin_pb::PurgedKeyVersion {
            volume: "root".into(),
            version: 1,
            retired_at,
        }]
    );
    let root = keys_of(&dir, &broker, &["root"]).await;
    assert_eq!(root.len(), 1);
    assert_eq!(root[0].1, 3);
    broker.stop().await.unwrap();
}

/// `AuditQuery` answers in pages bounded in entries (500) and bytes
/// (about 1 MiB), oldest first, each entry once; `limit` puts the first
/// page at the Nth most recent match, however many pages back that is.
#[tokio::test(flavor = "multi_thread")]
async fn audit_query_answers_in_bounded_pages() {
    let dir = BrokerDir::create(&BrokerOptions::default()).unwrap();
    let store = broker::wiring::store(&dir.config().unwrap()).unwrap();
    let event = |i: i64, pad: usize| broker::store::AuditEvent {
        at_unix: 1_700_000_000 + i,
        kind: "attest".into(),
        verdict: if i % 2 == 0 { "allow" } else { "deny" }.into(),
        volumes: vec![format!("v{}", i % 3)],
        reason_codes: vec![],
        details_json: format!("{{\"pad\":\"{}\"}}", "x".repeat(pad)),
        client_addr: None,
    };
    // 1,200 small entries, then 100 of 20 KB (2 MB in all).
    for i in 0..1300 {
        store
            .append_audit(&event(i, if i < 1200 { 8 } else { 20_000 }))
            .unwrap();
    }
    drop(store);
    let broker = RunningBroker::start(&dir).await.unwrap();
    let mut admin = broker.admin().await.unwrap();
    let page = |req: admin_pb::AuditQueryRequest| {
        let mut admin = admin.clone();
        async move { admin.audit_query(req).await.unwrap().into_inner() }
    };

    let mut req = admin_pb::AuditQueryRequest::default();
    let (mut ids, mut sizes) = (Vec::new(), Vec::new());
    loop {
        let r = page(req.clone()).await;
        let bytes: usize = r.entries.iter().map(|e| e.details_json.len()).sum();
        sizes.push((r.entries.len(), bytes));
        ids.extend(r.entries.iter().map(|e| e.id));
        match r.next_after_id {
            Some(next) => req.after_id = Some(next),
            None => break,
        }
    }
    assert!(ids.len() >= 1300, "{}", ids.len());
    assert_eq!(ids, (1..=ids.len() as i64).collect::<Vec<_>>());
    assert!(
        sizes.iter().all(|&(n, b)| n <= 500 && b <= 1 << 20),
        "{sizes:?}"
    );
    // 2 MB of large entries cannot fit in one page: a page is cut short by
    // its byte bound, not its count, and the listing goes on after it.
    assert!(
        sizes[..sizes.len() - 1].iter().any(|&(n, _)| n < 500),
        "{sizes:?}"
    );

    // The 600 most recent `deny` entries (of 650): the first page starts at the
    // 600th from the end; following next_after_id without the limit gives
    // the rest.
    let deny = |limit, after_id| admin_pb::AuditQueryRequest {
        verdict: Some("deny".into()),
        limit,
        after_id,
        ..Default::default()
    };
    let mut all_denied = Vec::new();
    let mut r = page(deny(None, None)).await;
    loop {
        all_denied.extend(r.entries.iter().map(|e| e.id));
        let Some(next) = r.next_after_id else { break };
        r = page(deny(None, Some(next))).await;
    }
    let mut last = Vec::new();
    let mut r = page(deny(Some(600), None)).await;
    loop {
        last.extend(r.entries.iter().map(|e| e.id));
        let Some(next) = r.next_after_id else { break };
        r = page(deny(None, Some(next))).await;
    }
    assert_eq!(last, all_denied[all_denied.len() - 600..]);
    // More than there are: from the first match.
    let r = page(deny(Some(100_000), None)).await;
    assert_eq!(r.entries[0].id, all_denied[0]);
    admin
        .audit_verify(admin_pb::AuditVerifyRequest {})
        .await
        .unwrap();
}
