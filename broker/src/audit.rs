//! Building audit entries for decisions. The store keeps them append-only
//! and hash-chained; this module decides what goes in them.
//!
//! **Invariant:** an audit entry never contains key material: it is built
//! only from request metadata, report claims and reason codes.

use std::net::SocketAddr;

use serde_json::{Map, Value};

use crate::store::AuditEvent;
use crate::verify::ReportClaims;

/// An audit entry being assembled during one request.
#[derive(Debug)]
pub struct AuditDraft {
    kind: &'static str,
    at_unix: i64,
    volumes: Vec<String>,
    client: Option<SocketAddr>,
    /// "allow", "deny" or "error".
    pub verdict: String,
    /// Every reason code of the decision.
    pub reason_codes: Vec<String>,
    details: Map<String, Value>,
}

impl AuditDraft {
    /// Starts an entry for a request of `kind` ("challenge", "attest").
    pub fn new(
        kind: &'static str,
        at_unix: i64,
        volumes: Vec<String>,
        client: Option<SocketAddr>,
    ) -> Self {
        AuditDraft {
            kind,
            at_unix,
            volumes,
            client,
            verdict: "deny".into(),
            reason_codes: Vec::new(),
            details: Map::new(),
        }
    }

    /// Adds a free-text detail.
    pub fn detail(&mut self, key: &str, value: &str) {
        self.details
            .insert(key.to_owned(), Value::String(value.to_owned()));
    }

    /// Records the report fields an operator needs to explain a decision.
    pub fn record_claims(&mut self, claims: &ReportClaims) {
        let fields = [
            ("measurement", hex::encode(&claims.measurement)),
            ("chip_id", hex::encode(&claims.chip_id)),
            ("report_id", hex::encode(&claims.report_id)),
            ("generation", claims.generation.to_string()),
            ("firmware", claims.current_firmware.to_string()),
            (
                "reported_tcb",
                serde_json::to_string(&claims.reported_tcb).unwrap_or_default(),
            ),
            ("policy", format!("{:#x}", claims.policy.raw)),
            ("vmpl", claims.vmpl.to_string()),
        ];
        for (k, v) in fields {
            self.details.insert(k.to_owned(), Value::String(v));
        }
    }

    /// The entry to append.
    pub fn into_event(self) -> AuditEvent {
        AuditEvent {
            at_unix: self.at_unix,
            kind: self.kind.to_owned(),
            verdict: self.verdict,
            volumes: self.volumes,
            reason_codes: self.reason_codes,
            details_json: Value::Object(self.details).to_string(),
            client_addr: self.client.map(|a| a.to_string()),
        }
    }
}
