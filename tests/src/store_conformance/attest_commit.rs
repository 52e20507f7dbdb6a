//! The one write of an Attest: burn the nonce, append the audit entry and
//! record rotation sessions in one transaction, or nothing at all.

use std::sync::Barrier;

use broker::store::{
    AttestCommit, AttestCommitted, AuditEvent, AuditFilter, NonceBurn, RotationSessionLookup,
    RotationSessionRecord, Store,
};

use super::nonce;

fn decision(volume: &str) -> AuditEvent {
    AuditEvent {
        at_unix: 3_000_000,
        kind: "attest".into(),
        verdict: "allow".into(),
        volumes: vec![volume.into()],
        reason_codes: vec![],
        details_json: "{\"measurement\":\"ab\"}".into(),
        client_addr: Some("192.0.2.7:4000".into()),
    }
}

fn entries_for(store: &dyn Store, volume: &str) -> usize {
    store
        .audit_entries(&AuditFilter {
            volume: Some(volume.into()),
            ..Default::default()
        })
        .unwrap()
        .len()
}

/// A commit writes all three; a replay of its nonce writes nothing (no
/// audit entry, no session); an invalid audit event writes nothing either,
/// not even the nonce.
pub fn attest_commit_is_all_or_nothing(store: &dyn Store) {
    let n = nonce("commit", 0);
    let ev = decision("cf-commit");
    let session = RotationSessionRecord {
        nonce: n,
        volume: "cf-commit".into(),
        version: 2,
        report_data: [7; 64],
        expires_at: 10_000,
    };
    let sessions = [session.clone()];
    let commit = AttestCommit {
        nonce: n,
        nonce_expires_at: 5_000,
        audit: &ev,
        sessions: &sessions,
    };
    let before = store.verify_audit_chain().unwrap();
    let id = match store.commit_attest(&commit).unwrap() {
        AttestCommitted::Committed(id) => id,
        other => panic!("{other:?}"),
    };
    let entry = &store
        .audit_entries(&AuditFilter {
            after_id: Some(id.0 - 1),
            limit: Some(1),
            ..Default::default()
        })
        .unwrap()[0];
    assert_eq!((entry.id, &entry.event), (id, &ev));
    assert_eq!(
        store.rotation_session(&n, "cf-commit", 0).unwrap(),
        RotationSessionLookup::Live(session)
    );
    assert_eq!(store.burn_nonce(&n, 5_000).unwrap(), NonceBurn::AlreadyUsed);

    // The replay: nothing more is written.
    let replay_ev = decision("cf-commit-replay");
    let replay_sessions = [RotationSessionRecord {
        volume: "cf-commit-replay".into(),
        ..sessions[0].clone()
    }];
    let replay = AttestCommit {
        audit: &replay_ev,
        sessions: &replay_sessions,
        ..commit.clone()
    };
    assert_eq!(
        store.commit_attest(&replay).unwrap(),
        AttestCommitted::NonceAlreadyUsed
    );
    assert_eq!(entries_for(store, "cf-commit-replay"), 0);
    assert_eq!(
        store.rotation_session(&n, "cf-commit-replay", 0).unwrap(),
        RotationSessionLookup::Unknown
    );
    assert_eq!(store.verify_audit_chain().unwrap(), before + 1);

    // An audit event the store refuses: the nonce is not burnt.
    let n2 = nonce("commit", 1);
    let mut bad = decision("cf-commit-bad");
    bad.verdict = "maybe".into();
    assert!(store
        .commit_attest(&AttestCommit {
            nonce: n2,
            nonce_expires_at: 5_000,
            audit: &bad,
            sessions: &[],
        })
        .is_err());
    assert_eq!(store.burn_nonce(&n2, 5_000).unwrap(), NonceBurn::Burnt);
    assert_eq!(entries_for(store, "cf-commit-bad"), 0);
}

/// Eight threads commit Attests with one nonce at once: exactly one is
/// committed, and the audit log grows by exactly one entry.
pub fn attest_commit_race_one_winner(store: &dyn Store) {
    const THREADS: usize = 8;
    for round in 0..10 {
        let n = nonce("commit-race", round);
        let ev = decision("cf-commit-race");
        let before = entries_for(store, "cf-commit-race");
        let barrier = Barrier::new(THREADS);
        let outcomes: Vec<AttestCommitted> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..THREADS)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        store
                            .commit_attest(&AttestCommit {
                                nonce: n,
                                nonce_expires_at: i64::MAX,
                                audit: &ev,
                                sessions: &[],
                            })
                            .unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let won = outcomes
            .iter()
            .filter(|o| matches!(o, AttestCommitted::Committed(_)))
            .count();
        assert_eq!(won, 1, "round {round}: {outcomes:?}");
        assert_eq!(entries_for(store, "cf-commit-race"), before + 1);
    }
    store.verify_audit_chain().unwrap();
}
