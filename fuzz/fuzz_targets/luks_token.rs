//! The `sev-keybroker` LUKS2 token JSON (`guest_unlock::token`), read from
//! a header anyone with the disk can write.
//!
//! Input: the first four bytes are the header's active keyslots (a
//! bitmask), the rest the token's JSON.
//!
//! Properties: a token that parses is assigned only to active keyslots,
//! and its JSON (`to_json`) parses back to the same token, minus the stale
//! entries `to_json` drops.
#![no_main]

use guest_unlock::token::{BrokerToken, MAX_KEYSLOT};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((mask, json)) = data.split_first_chunk::<4>() else {
        return;
    };
    let mask = u32::from_le_bytes(*mask);
    let active: Vec<u32> = (0..=MAX_KEYSLOT).filter(|i| mask & (1 << i) != 0).collect();
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(json) else {
        return;
    };
    let Ok(token) = BrokerToken::from_json(&value, &active) else {
        return;
    };
    for k in token.keyslots() {
        assert!(active.contains(&k), "keyslot {k} is not active");
    }
    if token.slots.is_empty() {
        // Only stale entries: a token the next rotation step removes, never
        // one that is written back (from_json refuses it without them).
        return;
    }
    let written = token.to_json();
    let again = BrokerToken::from_json(&written, &active)
        .unwrap_or_else(|e| panic!("to_json wrote a token from_json refuses: {e}\n{written}"));
    let mut expected = token.clone();
    expected.stale.clear();
    assert_eq!(again, expected);
    assert_eq!(again.to_json(), written);
});
