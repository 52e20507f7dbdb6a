//! The conformance suite every `broker::store::Store` implementation must
//! pass, one module per part of the trait. Each function panics (assert)
//! on a violation, so a backend's tests call [`run_all`] on a fresh store,
//! and [`audit_tamper_detected`] and [`audit_keyed_tamper_detected`] with a hook that edits the backend
//! directly (`tests/store_conformance.rs` runs both against SQLite, in
//! memory and on a file, and against PostgreSQL in a throwaway cluster). Names are unique per function, so the functions
//! can share one store.

mod attest_commit;
mod audit;
mod audit_keyed;
mod audit_prune;
mod key_checks;
mod nonces;
mod policies;
mod reseal;
mod rotation_sessions;
mod volumes;

use broker::keys::{MasterKeyId, SealedKey};
use broker::store::{KeyState, NewVolume, Store};

pub use attest_commit::{attest_commit_is_all_or_nothing, attest_commit_race_one_winner};
pub use audit::{
    audit_append_filter_and_chain, audit_concurrent_appends_one_chain, audit_tamper_detected,
    FreshTamperable, Tamper, Tamperable,
};
pub use audit_keyed::{
    audit_chain_key_upgrade, audit_keyed_tamper_detected, audit_verify_crosses_pages, test_keyring,
};
pub use audit_prune::{audit_prune_keeps_a_verifiable_chain, audit_prune_tamper_detected};
pub use key_checks::key_checks_recorded_once;
pub use nonces::{
    maintain_purges_expired_nonces, nonce_purge, nonce_race_exactly_one_fresh, nonce_single_use,
};
pub use policies::{policies_crud, policy_compare_and_set};
pub use reseal::reseal_batch_is_compare_and_set;
pub use rotation_sessions::rotation_sessions_expire;
pub use volumes::{
    cancel_pending_rules, concurrent_promotions_one_wins, duplicate_volume_refused,
    key_rotation_states, names_validated, pending_without_proof_stays_pending,
    purge_retired_respects_cutoff, release_view_is_one_snapshot, volume_needs_existing_policy,
    volumes_crud,
};

/// Runs every backend-independent property on `store`.
pub fn run_all(store: &dyn Store) {
    nonce_single_use(store);
    nonce_race_exactly_one_fresh(store);
    nonce_purge(store);
    attest_commit_is_all_or_nothing(store);
    attest_commit_race_one_winner(store);
    policies_crud(store);
    policy_compare_and_set(store);
    volumes_crud(store);
    duplicate_volume_refused(store);
    volume_needs_existing_policy(store);
    names_validated(store);
    key_rotation_states(store);
    audit_append_filter_and_chain(store);
    audit_concurrent_appends_one_chain(store);
    release_view_is_one_snapshot(store);
    maintain_purges_expired_nonces(store);
    pending_without_proof_stays_pending(store);
    concurrent_promotions_one_wins(store);
    cancel_pending_rules(store);
    rotation_sessions_expire(store);
    reseal_batch_is_compare_and_set(store);
    key_checks_recorded_once(store);
    // Keys the chain: every append after it is MAC'd.
    audit_chain_key_upgrade(store);
    audit_concurrent_appends_one_chain(store);
    // Last: it destroys every retired version older than its cutoff.
    purge_retired_respects_cutoff(store);
}

pub(crate) fn lifecycle_volume(store: &dyn Store, name: &str, fill: u8) {
    store.put_policy("cf-life-pol", POLICY_TEXT).unwrap();
    store
        .create_volume(
            &NewVolume {
                name: name.into(),
                policy: "cf-life-pol".into(),
                description: String::new(),
            },
            &sample_sealed(fill),
        )
        .unwrap();
}

pub(crate) fn states(store: &dyn Store, name: &str) -> Vec<(u32, KeyState)> {
    store
        .key_versions(name)
        .unwrap()
        .iter()
        .map(|k| (k.version, k.state))
        .collect()
}

pub(crate) fn nonce(tag: &str, i: u32) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        format!("conformance/{tag}/{i}").as_bytes(),
    );
    let mut n = [0u8; 32];
    n.copy_from_slice(d.as_ref());
    n
}

/// A sealed record with recognisable, non-secret bytes.
pub fn sample_sealed(fill: u8) -> SealedKey {
    SealedKey {
        master_key_id: MasterKeyId::from_bytes([fill; 16]),
        nonce: [fill.wrapping_add(1); 12],
        ciphertext: vec![fill.wrapping_add(2); 80],
    }
}

pub(crate) const POLICY_TEXT: &str = "version = 1\n# conformance\n";
