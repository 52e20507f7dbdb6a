//! The `keybroker.v1` messages (`keybroker_proto::pb`) as each end decodes
//! them, and the broker's checks that turn a request into typed input
//! (`broker::grpc`).
//!
//! Input: the first byte picks the message, the rest is its encoding.
//!
//! Properties: a decoded message re-encodes to bytes that decode to the
//! same message; typed input keeps exactly the request's values; a
//! refusal's details decode to a denial only when they carry something.
#![no_main]

use broker::grpc::{attest_input, confirm_input};
use keybroker_proto::{denial_from_status, pb};
use libfuzzer_sys::fuzz_target;
use prost::bytes::Bytes;
use prost::Message;

/// Decodes `bytes` as `M`; when it decodes, checks the round trip.
fn round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(bytes: &[u8]) -> Option<M> {
    let m = M::decode(bytes).ok()?;
    let again = M::decode(m.encode_to_vec().as_slice()).expect("re-encoded message decodes");
    assert_eq!(again, m);
    Some(m)
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    match which % 7 {
        0 => {
            round_trip::<pb::ChallengeRequest>(bytes);
        }
        1 => {
            round_trip::<pb::ChallengeResponse>(bytes);
        }
        2 => {
            let Some(req) = round_trip::<pb::AttestRequest>(bytes) else {
                return;
            };
            let Ok(input) = attest_input(req.clone()) else {
                return;
            };
            assert_eq!(&input.nonce.as_bytes()[..], &req.nonce[..]);
            assert_eq!(
                &input.guest_public_key.as_bytes()[..],
                &req.guest_public_key[..]
            );
            assert_eq!(input.volumes.to_strings(), req.volume_ids);
        }
        3 => {
            round_trip::<pb::AttestResponse>(bytes);
        }
        4 => {
            let Some(req) = round_trip::<pb::ConfirmRotationRequest>(bytes) else {
                return;
            };
            let Ok(input) = confirm_input(req.clone()) else {
                return;
            };
            assert_eq!(input.volume.as_str(), req.volume_id);
            assert_eq!(input.version, req.key_version);
            assert_eq!(input.proof, req.proof);
        }
        5 => {
            round_trip::<pb::ConfirmRotationResponse>(bytes);
        }
        _ => {
            let status = tonic::Status::with_details(
                tonic::Code::PermissionDenied,
                "refused",
                Bytes::copy_from_slice(bytes),
            );
            if let Some(d) = denial_from_status(&status) {
                assert_eq!(round_trip::<pb::Denial>(bytes), Some(d.clone()));
                assert!(
                    !(d.reason_codes.is_empty()
                        && d.volumes.is_empty()
                        && d.decision_id.is_empty())
                );
            }
        }
    }
});
