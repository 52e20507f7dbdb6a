//! Azure's HCL report (`keybroker_vtpm::hcl`), read from the vTPM's NV
//! index by the guest and sent to the broker, and the runtime claims (the
//! JSON variable data) inside it.
//!
//! Properties: a report that parses is rebuilt byte for byte by
//! `HclReport::build` from its parts (up to the zero padding `parse`
//! accepts); runtime claims written by `to_json` parse back to the same
//! claims.
#![no_main]

use keybroker_vtpm::hcl::{HclReport, RuntimeClaims};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(claims) = RuntimeClaims::parse(data) {
        let again = RuntimeClaims::parse(&claims.to_json()).expect("to_json parses");
        assert_eq!(again, claims);
    }
    let Ok(hcl) = HclReport::parse(data) else {
        return;
    };
    let built = HclReport::build(hcl.version(), hcl.snp_report(), hcl.variable_data());
    assert!(
        data.starts_with(&built),
        "build does not give back the parsed bytes"
    );
    assert!(
        data[built.len()..].iter().all(|&b| b == 0),
        "non-zero padding accepted"
    );
    let again = HclReport::parse(&built).expect("a built report parses");
    assert!(again == hcl);
    if let Ok(claims) = RuntimeClaims::parse(hcl.variable_data()) {
        let _ = claims.vm_configuration;
    }
});
