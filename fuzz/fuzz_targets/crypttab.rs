//! crypttab (`guest_unlock::unlock::crypttab`), read at boot.
//!
//! Properties: every entry has a usable mapping name and sits on a line
//! that exists; each non-blank, non-comment line yields exactly one entry
//! or one error, in line order.
#![no_main]

use guest_unlock::unlock::{activate_flags, parse_crypttab, valid_mapping_name};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (entries, errors) = parse_crypttab(text);
    let lines = text.lines().count();
    let meaningful = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count();
    assert_eq!(entries.len() + errors.len(), meaningful);
    for e in &entries {
        assert!(valid_mapping_name(&e.name), "unusable name {:?}", e.name);
        assert!((1..=lines).contains(&e.line));
        for o in &e.options {
            assert!(!o.is_empty() && !o.contains(',') && !o.contains(char::is_whitespace));
        }
        let _ = activate_flags(&e.options);
    }
    for err in &errors {
        assert!((1..=lines).contains(&err.line));
    }
    let mut all: Vec<usize> = entries
        .iter()
        .map(|e| e.line)
        .chain(errors.iter().map(|e| e.line))
        .collect();
    let sorted = {
        let mut s = all.clone();
        s.sort_unstable();
        s.dedup();
        s
    };
    all.sort_unstable();
    assert_eq!(all, sorted, "a line gave more than one entry or error");
});
