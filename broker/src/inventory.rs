//! Platform inventory: which AMD chips, TCBs and SNP firmware versions the
//! guests' verified reports came from, aggregated from the audit log, and
//! whether each platform meets each policy's floor (`min_tcb` for its
//! generation, `min_firmware`). Behind `broker platforms`; it answers
//! "which firmware does my cloud actually run?".
//!
//! A pure function of audit entries and parsed policies: no store, no
//! clock. Only `attest` entries with recorded claims count; the broker
//! records claims only after a report's AMD chain, VEK binding and
//! signature verified, so every platform listed here is genuine (or a
//! simulated platform the config explicitly trusts).

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::policy::Policy;
use crate::store::AuditEntry;
use crate::verify::{FirmwareVersion, Generation, Tcb};

/// One chip seen in verified attestations.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Platform {
    /// Chip id as recorded (hex; all zero when the guest masked it).
    pub chip_id: String,
    /// True when the chip id is all zero (MASK_CHIP_ID): several chips may
    /// share this row.
    pub masked: bool,
    /// Generation, from the most recent sighting.
    pub generation: Option<Generation>,
    /// Signing key kind ("vcek", "vlek") of the most recent sighting.
    pub signer: Option<String>,
    /// Reported TCB of the most recent sighting.
    pub reported_tcb: Option<Tcb>,
    /// SNP firmware version of the most recent sighting.
    pub firmware: Option<FirmwareVersion>,
    /// First attestation from this chip (Unix seconds).
    pub first_seen: i64,
    /// Last attestation from this chip (Unix seconds).
    pub last_seen: i64,
    /// Number of attest entries from this chip.
    pub attestations: u64,
    /// Every distinct (firmware, TCB) this chip reported, oldest first.
    pub versions: Vec<VersionSeen>,
    /// The most recent TCB and firmware against each policy, by policy name.
    pub policies: Vec<PolicyFit>,
}

/// A firmware and TCB combination one chip reported over a period.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VersionSeen {
    /// SNP firmware version.
    pub firmware: Option<FirmwareVersion>,
    /// Reported TCB.
    pub reported_tcb: Option<Tcb>,
    /// First seen (Unix seconds).
    pub first_seen: i64,
    /// Last seen (Unix seconds).
    pub last_seen: i64,
}

/// Whether a platform meets a policy's minimums.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PolicyFit {
    /// Policy name.
    pub policy: String,
    /// True when the platform's TCB and firmware meet the policy's floors
    /// for its generation (other checks, such as the measurement, depend on
    /// the guest and are not considered here).
    pub meets: bool,
    /// Why not, one line per failing floor (`min_tcb.snp >= 22, reported 21`).
    pub shortfalls: Vec<String>,
}

/// Aggregates `entries` (any order, any kinds) into one [`Platform`] per
/// chip id, ordered by chip id, each checked against every policy of
/// `policies` (name, parsed policy) in the order given.
pub fn platforms(entries: &[AuditEntry], policies: &[(String, Policy)]) -> Vec<Platform> {
    let mut sorted: Vec<&AuditEntry> = entries
        .iter()
        .filter(|e| e.event.kind == "attest")
        .collect();
    sorted.sort_by_key(|e| (e.event.at_unix, e.id));
    let mut by_chip: BTreeMap<String, Platform> = BTreeMap::new();
    for e in sorted {
        let Some(s) = Sighting::from_details(&e.event.details_json) else {
            continue;
        };
        let at = e.event.at_unix;
        let p = by_chip
            .entry(s.chip_id.clone())
            .or_insert_with(|| Platform {
                masked: !s.chip_id.is_empty() && s.chip_id.bytes().all(|b| b == b'0'),
                chip_id: s.chip_id.clone(),
                generation: None,
                signer: None,
                reported_tcb: None,
                firmware: None,
                first_seen: at,
                last_seen: at,
                attestations: 0,
                versions: Vec::new(),
                policies: Vec::new(),
            });
        p.attestations += 1;
        p.first_seen = p.first_seen.min(at);
        p.last_seen = p.last_seen.max(at);
        p.generation = s.generation.or(p.generation);
        p.signer = s.signer.or(p.signer.take());
        p.reported_tcb = s.reported_tcb.or(p.reported_tcb);
        p.firmware = s.firmware.or(p.firmware);
        match p.versions.last_mut() {
            Some(v) if v.firmware == s.firmware && v.reported_tcb == s.reported_tcb => {
                v.last_seen = at;
            }
            _ => p.versions.push(VersionSeen {
                firmware: s.firmware,
                reported_tcb: s.reported_tcb,
                first_seen: at,
                last_seen: at,
            }),
        }
    }
    let mut out: Vec<Platform> = by_chip.into_values().collect();
    for p in &mut out {
        p.policies = policies
            .iter()
            .map(|(name, policy)| fit(name, policy, p))
            .collect();
    }
    out
}

/// Checks a platform's latest generation, TCB and firmware against a
/// policy's floors.
fn fit(name: &str, policy: &Policy, p: &Platform) -> PolicyFit {
    let mut shortfalls = Vec::new();
    match p.generation {
        None => shortfalls.push("generation not recorded".to_owned()),
        Some(g) => match (policy.min_tcb.get(g), p.reported_tcb) {
            (None, _) => shortfalls.push(format!(
                "generation {g} not allowed (min_tcb has [{}])",
                policy.min_tcb.allowed().join(", ")
            )),
            (Some(_), None) => shortfalls.push("reported TCB not recorded".to_owned()),
            (Some(min), Some(got)) => {
                if let Some(want) = min.fmc {
                    match got.fmc {
                        Some(have) if have >= want => {}
                        have => shortfalls.push(format!(
                            "min_tcb.fmc >= {want}, reported {}",
                            have.map_or_else(|| "absent".to_owned(), |v| v.to_string())
                        )),
                    }
                }
                for (check, want, have) in [
                    ("bootloader", min.bootloader, got.bootloader),
                    ("tee", min.tee, got.tee),
                    ("snp", min.snp, got.snp),
                    ("microcode", min.microcode, got.microcode),
                ] {
                    if have < want {
                        shortfalls.push(format!("min_tcb.{check} >= {want}, reported {have}"));
                    }
                }
            }
        },
    }
    if let Some(min) = policy.min_firmware {
        match p.firmware {
            None => shortfalls.push("firmware version not recorded".to_owned()),
            Some(fw) if (fw.major, fw.minor) < (min.major, min.minor) => {
                shortfalls.push(format!("min_firmware >= {min}, running {fw}"));
            }
            Some(_) => {}
        }
    }
    PolicyFit {
        policy: name.to_owned(),
        meets: shortfalls.is_empty(),
        shortfalls,
    }
}

/// The platform fields of one attest entry's details.
struct Sighting {
    chip_id: String,
    generation: Option<Generation>,
    signer: Option<String>,
    reported_tcb: Option<Tcb>,
    firmware: Option<FirmwareVersion>,
}

impl Sighting {
    /// `None` when the entry holds no verified claims (refused before the
    /// evidence verified, or details that are not a JSON object).
    fn from_details(details_json: &str) -> Option<Sighting> {
        let d: Value = serde_json::from_str(details_json).ok()?;
        let chip_id = d.get("chip_id")?.as_str()?.to_owned();
        let generation = d
            .get("generation")
            .and_then(|g| serde_json::from_value(g.clone()).ok());
        let signer = d.get("signer").and_then(Value::as_str).map(str::to_owned);
        let reported_tcb = d.get("reported_tcb").and_then(tcb_from_json);
        let firmware = d
            .get("firmware_version")
            .and_then(firmware_from_json)
            .or_else(|| d.get("firmware").and_then(Value::as_str).and_then(parse_fw));
        Some(Sighting {
            chip_id,
            generation,
            signer,
            reported_tcb,
            firmware,
        })
    }
}

/// A TCB from the audit log: an object, or (entries written before the
/// object form) a string holding that object's JSON.
pub fn tcb_from_json(v: &Value) -> Option<Tcb> {
    let owned;
    let v = match v {
        Value::String(s) => {
            owned = serde_json::from_str::<Value>(s).ok()?;
            &owned
        }
        other => other,
    };
    let byte = |k: &str| v.get(k)?.as_u64().and_then(|n| u8::try_from(n).ok());
    Some(Tcb {
        fmc: byte("fmc"),
        bootloader: byte("bootloader")?,
        tee: byte("tee")?,
        snp: byte("snp")?,
        microcode: byte("microcode")?,
    })
}

fn firmware_from_json(v: &Value) -> Option<FirmwareVersion> {
    let byte = |k: &str| v.get(k)?.as_u64().and_then(|n| u8::try_from(n).ok());
    Some(FirmwareVersion {
        major: byte("major")?,
        minor: byte("minor")?,
        build: byte("build")?,
    })
}

/// Parses `MAJOR.MINOR.BUILD` as the audit log writes a firmware version.
fn parse_fw(s: &str) -> Option<FirmwareVersion> {
    let mut it = s.split('.').map(|p| p.parse::<u8>().ok());
    let fw = FirmwareVersion {
        major: it.next()??,
        minor: it.next()??,
        build: it.next()??,
    };
    it.next().is_none().then_some(fw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AuditEvent, AuditId};

    const CHIP_A: &str = "aa01";
    const CHIP_B: &str = "bb02";

    fn entry(id: i64, at: i64, kind: &str, details: Value) -> AuditEntry {
        AuditEntry {
            id: AuditId(id),
            event: AuditEvent {
                at_unix: at,
                kind: kind.into(),
                verdict: "allow".into(),
                volumes: vec!["root".into()],
                reason_codes: vec![],
                details_json: details.to_string(),
                client_addr: None,
            },
            prev_hash: [0; 32],
            hash: [0; 32],
        }
    }

    fn attest(id: i64, at: i64, chip: &str, gen: &str, snp: u8, fw: (u8, u8, u8)) -> AuditEntry {
        entry(
            id,
            at,
            "attest",
            serde_json::json!({
                "chip_id": chip, "generation": gen, "signer": "vcek",
                "firmware": format!("{}.{}.{}", fw.0, fw.1, fw.2),
                "firmware_version": {"major": fw.0, "minor": fw.1, "build": fw.2},
                "reported_tcb": {"fmc": null, "bootloader": 3, "tee": 0, "snp": snp, "microcode": 209},
            }),
        )
    }

    fn policy(extra: &str, milan_snp: u8) -> Policy {
        Policy::from_toml(&format!(
            "version = 1\nmeasurements = [\"{}\"]\n{extra}\n\n[min_tcb.milan]\n\
             bootloader = 3\ntee = 0\nsnp = {milan_snp}\nmicrocode = 209\n",
            "ab".repeat(48)
        ))
        .unwrap()
    }

    #[test]
    fn aggregates_per_chip_with_first_last_and_latest_versions() {
        let entries = vec![
            // Out of time order on purpose; a challenge and a pre-evidence
            // refusal carry no claims and are ignored.
            attest(3, 300, CHIP_A, "milan", 23, (1, 55, 30)),
            attest(1, 100, CHIP_A, "milan", 22, (1, 55, 21)),
            entry(2, 150, "challenge", serde_json::json!({})),
            entry(4, 160, "attest", serde_json::json!({"error": "nonce"})),
            attest(5, 200, CHIP_B, "genoa", 21, (1, 55, 40)),
            attest(6, 400, CHIP_A, "milan", 23, (1, 55, 30)),
        ];
        let p = platforms(&entries, &[]);
        assert_eq!(p.len(), 2);
        let a = &p[0];
        assert_eq!(a.chip_id, CHIP_A);
        assert!(!a.masked);
        assert_eq!((a.first_seen, a.last_seen, a.attestations), (100, 400, 3));
        assert_eq!(a.generation, Some(Generation::Milan));
        assert_eq!(a.reported_tcb.unwrap().snp, 23);
        assert_eq!(a.firmware.unwrap().to_string(), "1.55.30");
        assert_eq!(a.versions.len(), 2);
        assert_eq!(
            (a.versions[0].first_seen, a.versions[0].last_seen),
            (100, 100)
        );
        assert_eq!(
            (a.versions[1].first_seen, a.versions[1].last_seen),
            (300, 400)
        );
        let b = &p[1];
        assert_eq!(b.chip_id, CHIP_B);
        assert_eq!(b.generation, Some(Generation::Genoa));
        assert_eq!((b.first_seen, b.last_seen, b.attestations), (200, 200, 1));
    }

    #[test]
    fn checks_each_policy_floor_for_the_generation() {
        let entries = vec![
            attest(1, 100, CHIP_A, "milan", 22, (1, 55, 21)),
            attest(2, 200, CHIP_B, "genoa", 22, (1, 55, 21)),
        ];
        let policies = vec![
            ("lenient".to_owned(), policy("", 22)),
            ("strict".to_owned(), policy("min_firmware = \"1.56\"", 24)),
        ];
        let p = platforms(&entries, &policies);
        let a = &p[0];
        assert_eq!(a.policies.len(), 2);
        assert_eq!(a.policies[0].policy, "lenient");
        assert!(a.policies[0].meets, "{:?}", a.policies[0]);
        assert_eq!(a.policies[1].policy, "strict");
        assert!(!a.policies[1].meets);
        assert_eq!(
            a.policies[1].shortfalls,
            vec![
                "min_tcb.snp >= 24, reported 22".to_owned(),
                "min_firmware >= 1.56, running 1.55.21".to_owned()
            ]
        );
        // Genoa is in neither policy's min_tcb.
        let b = &p[1];
        assert!(!b.policies[0].meets);
        assert!(b.policies[0].shortfalls[0].contains("generation genoa not allowed"));
    }

    #[test]
    fn reads_the_older_string_forms_and_flags_masked_chips() {
        let masked = "0".repeat(128);
        let e = entry(
            1,
            50,
            "attest",
            serde_json::json!({
                "chip_id": masked, "generation": "turin", "firmware": "1.57.3",
                "reported_tcb": "{\"fmc\":2,\"bootloader\":1,\"tee\":0,\"snp\":3,\"microcode\":4}",
            }),
        );
        let p = platforms(&[e], &[]);
        assert_eq!(p.len(), 1);
        assert!(p[0].masked);
        assert_eq!(p[0].generation, Some(Generation::Turin));
        assert_eq!(p[0].reported_tcb.unwrap().fmc, Some(2));
        assert_eq!(p[0].firmware.unwrap().to_string(), "1.57.3");
        assert_eq!(p[0].signer, None);
    }

    #[test]
    fn firmware_text_must_have_three_parts() {
        assert_eq!(parse_fw("1.55.21").unwrap().to_string(), "1.55.21");
        assert!(parse_fw("1.55").is_none());
        assert!(parse_fw("1.55.21.4").is_none());
        assert!(parse_fw("1.x.2").is_none());
    }
}
