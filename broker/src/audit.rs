//! Building audit entries for decisions. The store keeps them append-only
//! and hash-chained; this module decides what goes in them.
//!
//! **Invariant:** an audit entry never contains key material: it is built
//! only from request metadata, report claims and reason codes.

use std::net::SocketAddr;

use serde_json::{json, Map, Value};

use crate::store::AuditEvent;
use crate::verify::{BoundEvidence, ReportClaims, SignerKind, Tcb};

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

    /// Records the report fields an operator needs to explain a decision
    /// and that `broker platforms` aggregates: measurement, chip id, report
    /// id, generation, signing key kind, SNP firmware version (text and
    /// parts), reported TCB (an object), guest policy, VMPL and guest SVN.
    /// None of these is secret; key material never reaches this function.
    pub fn record_claims(&mut self, claims: &ReportClaims) {
        let fw = claims.current_firmware;
        let signer = match claims.signer {
            SignerKind::Vcek => "vcek",
            SignerKind::Vlek => "vlek",
        };
        let fields = [
            ("measurement", Value::from(hex::encode(&claims.measurement))),
            ("chip_id", Value::from(hex::encode(&claims.chip_id))),
            ("report_id", Value::from(hex::encode(&claims.report_id))),
            ("generation", Value::from(claims.generation.as_str())),
            ("signer", Value::from(signer)),
            ("firmware", Value::from(fw.to_string())),
            (
                "firmware_version",
                json!({"major": fw.major, "minor": fw.minor, "build": fw.build}),
            ),
            ("reported_tcb", tcb_json(&claims.reported_tcb)),
            ("policy", Value::from(format!("{:#x}", claims.policy.raw))),
            ("vmpl", Value::from(claims.vmpl.to_string())),
            ("guest_svn", Value::from(claims.guest_svn)),
        ];
        for (k, v) in fields {
            self.details.insert(k.to_owned(), v);
        }
    }

    /// Records what bound evidence adds to its report's claims: for Azure
    /// vTPM evidence, the verified PCR values (`pcrs`, index to hex: what
    /// the policy's PCR sets are compared with) and the HCL header version.
    /// Nothing for a bare report.
    pub fn record_bound(&mut self, bound: &BoundEvidence) {
        if let BoundEvidence::AzureVtpm(b) = bound {
            let pcrs: Map<String, Value> = b
                .pcrs()
                .iter()
                .map(|(i, v)| (i.to_string(), Value::from(hex::encode(v))))
                .collect();
            self.details.insert("pcrs".into(), Value::Object(pcrs));
            self.details
                .insert("hcl_version".into(), Value::from(b.hcl_version()));
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

/// A TCB as the audit log stores it: `{"fmc": N|null, "bootloader": N,
/// "tee": N, "snp": N, "microcode": N}` (`fmc` is set on Turin only).
pub fn tcb_json(t: &Tcb) -> Value {
    json!({
        "fmc": t.fmc,
        "bootloader": t.bootloader,
        "tee": t.tee,
        "snp": t.snp,
        "microcode": t.microcode,
    })
}
