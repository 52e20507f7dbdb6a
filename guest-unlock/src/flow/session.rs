//! What a flow step needs: the RPC handle, which broker it is, the deadline
//! of the whole unlock, and how gRPC statuses become [`UnlockError`]s.

use std::time::Duration;

use keybroker_proto::pb;
use keybroker_proto::{check_version, denial_from_status, REASON_VERSION_MISMATCH};
use tokio::time::Instant;

use super::error::{printable, UnlockError};
use crate::client::BrokerRpc;

/// What a flow step needs: the RPC handle, which broker it is (for messages)
/// and the deadline of the whole unlock.
pub struct Session<B> {
    pub(super) rpc: B,
    pub(super) broker: String,
    deadline: Instant,
}

impl<B: BrokerRpc> Session<B> {
    /// A session on `rpc`, named `broker` in messages, ending at `deadline`.
    pub fn new(rpc: B, broker: impl Into<String>, deadline: Instant) -> Self {
        Self {
            rpc,
            broker: broker.into(),
            deadline,
        }
    }

    pub(super) fn remaining(&self) -> Duration {
        self.deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    }

    pub(super) fn bad(&self, problem: impl Into<String>) -> UnlockError {
        UnlockError::BadResponse {
            broker: self.broker.clone(),
            problem: problem.into(),
        }
    }

    pub(super) fn status_error(&self, st: tonic::Status) -> UnlockError {
        let broker = self.broker.clone();
        let message = printable(st.message());
        let denial = denial_from_status(&st);
        let codes = denial
            .as_ref()
            .map(|d| d.reason_codes.iter().map(|c| printable(c)).collect())
            .unwrap_or_default();
        match st.code() {
            tonic::Code::PermissionDenied => UnlockError::Refused {
                broker,
                message,
                denial,
            },
            tonic::Code::FailedPrecondition
                if denial.as_ref().is_some_and(|d| {
                    d.reason_codes.iter().any(|c| c == REASON_VERSION_MISMATCH)
                }) =>
            {
                UnlockError::VersionMismatch { broker, message }
            }
            code @ (tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition) => {
                UnlockError::Rejected {
                    broker,
                    code,
                    message,
                    reason_codes: codes,
                }
            }
            code => UnlockError::BrokerFault {
                broker,
                code,
                message: if message.is_empty() {
                    "(no message)".into()
                } else {
                    message
                },
            },
        }
    }

    pub(super) fn check_version(&self, v: Option<&pb::ProtocolVersion>) -> Result<(), UnlockError> {
        check_version(v).map_err(|e| UnlockError::VersionMismatch {
            broker: self.broker.clone(),
            message: e.to_string(),
        })
    }
}
