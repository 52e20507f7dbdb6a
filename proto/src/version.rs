//! Protocol version carried in every message, and the rule for refusing a peer.

use std::fmt;

use crate::denial::denial_status;
use crate::pb;

/// Major protocol version. Peers with different majors refuse each other.
pub const PROTOCOL_MAJOR: u32 = 1;

/// Minor protocol version. Any minor of the same major interoperates: a minor
/// release only adds optional fields, and never changes the REPORT_DATA
/// transcript or the wrapping parameters. 1.1 added `ConfirmRotation`, 1.2
/// the Azure vTPM evidence kind.
pub const PROTOCOL_MINOR: u32 = 2;

/// The first minor whose brokers accept Azure vTPM evidence
/// (`EVIDENCE_KIND_AZURE_VTPM`); an older broker sees an empty `report`.
pub const MINOR_AZURE_VTPM: u32 = 2;

/// Reason code sent in [`pb::Denial`] when the peer's major version differs
/// or its version is missing (gRPC code `FAILED_PRECONDITION`).
pub const REASON_VERSION_MISMATCH: &str = "VERSION_MISMATCH";

/// The version this build speaks, ready to put into a message.
pub fn protocol_version() -> pb::ProtocolVersion {
    pb::ProtocolVersion {
        major: PROTOCOL_MAJOR,
        minor: PROTOCOL_MINOR,
    }
}

/// Accepts a peer's version iff it is present and has our major.
///
/// A missing version (an old or foreign peer, or a hand-made request) is
/// refused just like a different major.
pub fn check_version(theirs: Option<&pb::ProtocolVersion>) -> Result<(), VersionMismatch> {
    match theirs {
        Some(v) if v.major == PROTOCOL_MAJOR => Ok(()),
        Some(v) => Err(VersionMismatch {
            theirs: Some((v.major, v.minor)),
        }),
        None => Err(VersionMismatch { theirs: None }),
    }
}

/// The peer speaks another major version of the protocol (or sent none).
///
/// Its `Display` names both versions and what to do. Converting it into a
/// [`tonic::Status`] gives `FAILED_PRECONDITION` with a [`pb::Denial`] carrying
/// [`REASON_VERSION_MISMATCH`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionMismatch {
    /// The peer's `(major, minor)`, or `None` when its message had no version.
    pub theirs: Option<(u32, u32)>,
}

impl VersionMismatch {
    /// Our `(major, minor)`.
    pub fn ours(&self) -> (u32, u32) {
        (PROTOCOL_MAJOR, PROTOCOL_MINOR)
    }
}

impl fmt::Display for VersionMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (om, on) = self.ours();
        match self.theirs {
            None => write!(
                f,
                "protocol version mismatch: this side speaks keybroker v{om}.{on}, \
                 the peer sent no protocol version (a pre-release or foreign client?); \
                 upgrade the peer to a keybroker v{om}.x release"
            ),
            Some((tm, tn)) => {
                let older = if tm < om { "the peer" } else { "this side" };
                write!(
                    f,
                    "protocol version mismatch: this side speaks keybroker v{om}.{on}, \
                     the peer speaks v{tm}.{tn}; majors must match: upgrade the older side \
                     ({older}) so both speak the same major version"
                )
            }
        }
    }
}

impl std::error::Error for VersionMismatch {}

impl From<VersionMismatch> for tonic::Status {
    fn from(e: VersionMismatch) -> Self {
        let denial = pb::Denial {
            reason_codes: vec![REASON_VERSION_MISMATCH.to_owned()],
            volumes: Vec::new(),
            decision_id: String::new(),
        };
        denial_status(tonic::Code::FailedPrecondition, &e.to_string(), &denial)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_major_any_minor_is_accepted() {
        assert_eq!(check_version(Some(&protocol_version())), Ok(()));
        let later = pb::ProtocolVersion {
            major: PROTOCOL_MAJOR,
            minor: PROTOCOL_MINOR + 7,
        };
        assert_eq!(check_version(Some(&later)), Ok(()));
    }

    #[test]
    fn missing_version_is_refused() {
        let e = check_version(None).unwrap_err();
        assert_eq!(e.theirs, None);
        let msg = e.to_string();
        assert!(msg.contains(&format!("v1.{PROTOCOL_MINOR}")), "{msg}");
        assert!(msg.contains("no protocol version"), "{msg}");
        assert!(msg.contains("upgrade"), "{msg}");
    }

    #[test]
    fn other_major_is_refused_with_both_versions_and_advice() {
        let newer = pb::ProtocolVersion { major: 2, minor: 3 };
        let msg = check_version(Some(&newer)).unwrap_err().to_string();
        assert!(
            msg.contains(&format!("v1.{PROTOCOL_MINOR}")) && msg.contains("v2.3"),
            "{msg}"
        );
        assert!(msg.contains("upgrade the older side (this side)"), "{msg}");

        let older = pb::ProtocolVersion { major: 0, minor: 9 };
        let msg = check_version(Some(&older)).unwrap_err().to_string();
        assert!(msg.contains("v0.9"), "{msg}");
        assert!(msg.contains("(the peer)"), "{msg}");
    }

    #[test]
    fn mismatch_becomes_failed_precondition_with_reason_code() {
        let status: tonic::Status = check_version(None).unwrap_err().into();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        let denial = crate::denial_from_status(&status).expect("denial in details");
        assert_eq!(
            denial.reason_codes,
            vec![REASON_VERSION_MISMATCH.to_owned()]
        );
    }
}
