//! The broker's policy TOML (`broker::policy`), an API boundary the owner
//! writes by hand.
//!
//! Properties: a policy that parses has a canonical form that parses to
//! the same policy (`from_toml(to_toml(p)) == p`), and the canonical form
//! is a fixed point.
#![no_main]

use broker::policy::Policy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(policy) = Policy::from_toml(text) else {
        return;
    };
    let canonical = policy.to_toml();
    let again = Policy::from_toml(&canonical)
        .unwrap_or_else(|e| panic!("the canonical form does not parse: {e}\n{canonical}"));
    assert_eq!(again, policy);
    assert_eq!(again.to_toml(), canonical);
    let _ = policy.summary();
});
