//! Documentation stays in step with the code (in the spirit of
//! rust-analyzer's tidy checks): every reason code the broker can emit is
//! listed in docs/protocol.md, and every listed code exists.

use std::collections::BTreeSet;

fn protocol_md() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md"))
        .expect("docs/protocol.md")
}

fn all_codes() -> BTreeSet<&'static str> {
    broker::error::ALL_REASON_CODES
        .iter()
        .chain(broker::verify::ALL_REASON_CODES)
        .chain(broker::verify::VTPM_REASON_CODES)
        .chain(broker::policy::ALL_REASON_CODES)
        .copied()
        .collect()
}

#[test]
fn every_reason_code_is_documented() {
    let doc = protocol_md();
    let missing: Vec<_> = all_codes()
        .into_iter()
        .filter(|c| !doc.contains(&format!("| `{c}` |")))
        .collect();
    assert!(missing.is_empty(), "add to docs/protocol.md: {missing:?}");
}

#[test]
fn every_documented_code_exists() {
    let doc = protocol_md();
    let section = &doc[doc.find("### Reason codes").expect("section")..];
    let known = all_codes();
    let unknown: Vec<String> = section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|c| c.chars().all(|ch| ch.is_ascii_uppercase() || ch == '_'))
        .filter(|c| !known.contains(c))
        .map(str::to_owned)
        .collect();
    assert!(
        unknown.is_empty(),
        "documented but never emitted: {unknown:?}"
    );
}
