//! Reason codes carried in the details of a refused gRPC call.

use prost::bytes::Bytes;
use prost::Message;

use crate::pb;

/// A non-OK status with `denial` prost-encoded into its details
/// (the `grpc-status-details-bin` trailer), so a guest can print why it was
/// refused. Expected and actual values belong in the broker's audit log,
/// not here.
pub fn denial_status(code: tonic::Code, message: &str, denial: &pb::Denial) -> tonic::Status {
    tonic::Status::with_details(code, message, Bytes::from(denial.encode_to_vec()))
}

/// The [`pb::Denial`] in a status' details, if there is one.
///
/// `None` when the details are empty, do not decode as a `Denial`, or decode
/// to an empty one (protobuf decodes many byte strings, including the empty
/// one, to an all-default message, which says nothing).
pub fn denial_from_status(status: &tonic::Status) -> Option<pb::Denial> {
    let details = status.details();
    if details.is_empty() {
        return None;
    }
    let d = pb::Denial::decode(details).ok()?;
    if d.reason_codes.is_empty() && d.volumes.is_empty() && d.decision_id.is_empty() {
        return None;
    }
    Some(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let denial = pb::Denial {
            reason_codes: vec![
                "POLICY_MEASUREMENT_NOT_ALLOWED".into(),
                "TCB_TOO_OLD".into(),
            ],
            volumes: vec![pb::VolumeDenial {
                volume_id: "data".into(),
                reason_codes: vec!["VOLUME_NOT_BOUND".into()],
            }],
            decision_id: "dec-42".into(),
        };
        let st = denial_status(tonic::Code::PermissionDenied, "refused", &denial);
        assert_eq!(st.code(), tonic::Code::PermissionDenied);
        assert_eq!(st.message(), "refused");
        assert_eq!(denial_from_status(&st), Some(denial));
    }

    #[test]
    fn no_or_garbage_details() {
        assert_eq!(
            denial_from_status(&tonic::Status::unavailable("down")),
            None
        );
        for garbage in [
            &b"\xff\xff\xff\xff"[..],
            b"\x0a\x10short",
            b"\x0a",
            b"\x08\x01", // decodes as an unknown varint field: empty Denial
        ] {
            let st = tonic::Status::with_details(
                tonic::Code::PermissionDenied,
                "x",
                Bytes::copy_from_slice(garbage),
            );
            assert_eq!(denial_from_status(&st), None, "{garbage:?}");
        }
    }
}
