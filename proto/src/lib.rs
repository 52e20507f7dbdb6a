//! The `keybroker.v1` wire contract of the attested disk-key broker.
//!
//! This crate holds what the guest (`guest-unlock`) and the broker must agree
//! on byte for byte, and nothing else (no storage, no policy):
//!
//! - [`pb`]: the generated protobuf messages and gRPC client/server stubs;
//! - [`admin_pb`]: the broker's admin API (`keybroker.admin.v1`), shared by
//!   `broker serve` and the `broker` CLI only;
//! - [`protocol_version`] / [`check_version`]: the version carried in every
//!   message and the rule for refusing a peer;
//! - typed identifiers ([`VolumeId`], [`VolumeIds`], [`Nonce`],
//!   [`GuestPublicKey`], [`ReportData`]) that validate untrusted input once;
//! - [`report_data`]: the transcript hash the guest binds into the 64-byte
//!   `REPORT_DATA` field of its SEV-SNP attestation report;
//! - [`wrap_volume_key`] / [`GuestKeyPair::unwrap_volume_key`]: HPKE (RFC 9180)
//!   wrapping of a volume key to the guest's ephemeral key;
//! - [`denial_status`] / [`denial_from_status`]: reason codes carried in the
//!   details of a refused gRPC call;
//! - [`rotation_proof`] / [`verify_rotation_proof`]: the MAC with which a guest
//!   proves it enrolled a pending key (rotation, phase 2);
//! - [`SpkiPin`]: the pin of the broker's TLS key, which guests trust instead
//!   of a CA.
//!
//! `docs/protocol.md` describes all of it byte by byte; a test keeps that
//! document in step with the `.proto` file.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

/// Generated protobuf messages and gRPC stubs for `keybroker.v1`.
///
/// See `proto/keybroker/v1/keybroker.proto` for the field documentation.
#[allow(missing_docs)]
#[allow(clippy::all, clippy::pedantic, clippy::nursery)]
pub mod pb {
    tonic::include_proto!("keybroker.v1");
}

/// Generated messages and gRPC stubs for `keybroker.admin.v1`, the
/// broker's administration API (served only on its admin listeners, never
/// on the guest port; not part of the guest contract).
///
/// See `proto/keybroker/admin/v1/admin.proto`.
#[allow(missing_docs)]
#[allow(clippy::all, clippy::pedantic, clippy::nursery)]
pub mod admin_pb {
    tonic::include_proto!("keybroker.admin.v1");
}

mod denial;
mod ids;
mod pin;
mod rotation;
mod transcript;
mod version;
mod wrap;

pub use denial::{denial_from_status, denial_status};
pub use ids::{
    GuestPublicKey, Nonce, ParseError, RandomError, ReportData, VolumeId, VolumeIds,
    GUEST_PUBLIC_KEY_LEN, MAX_VOLUMES, MAX_VOLUME_ID_LEN, NONCE_LEN, REPORT_DATA_LEN,
};
pub use pin::{PinError, SpkiPin};
pub use rotation::{
    rotation_proof, verify_rotation_proof, ROTATION_PROOF_LABEL, ROTATION_PROOF_LEN,
    ROTATION_PROOF_SALT,
};
pub use transcript::{report_data, REPORT_DATA_LABEL, TRANSCRIPT_REVISION};
pub use version::{
    check_version, protocol_version, VersionMismatch, MINOR_AZURE_VTPM, PROTOCOL_MAJOR,
    PROTOCOL_MINOR, REASON_VERSION_MISMATCH,
};
pub use wrap::{
    wrap_volume_key, GuestKeyPair, WrapError, WrappedKey, HPKE_ENC_LEN, HPKE_TAG_LEN,
    MAX_VOLUME_KEY_LEN, WRAP_INFO_LABEL,
};
