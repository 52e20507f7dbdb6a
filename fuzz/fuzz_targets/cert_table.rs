//! The extended-report certificate table (`keybroker_snp::cert_table`),
//! which both ends read, and the broker's reading of it into a certificate
//! set.
//!
//! Properties: a table that decodes encodes back to a table that decodes
//! to the same entries (decode ∘ encode ∘ decode = decode), and the broker
//! refuses exactly the tables the codec refuses, or more.
#![no_main]

use keybroker_snp::cert_table::{decode, encode, CertKind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let decoded = decode(data);
    let broker = broker::verify::parse_cert_table(data);
    let Ok(entries) = decoded else {
        assert!(
            broker.is_err(),
            "the broker accepted a table the codec refuses"
        );
        return;
    };
    for e in &entries {
        // A kind is named only by its own GUID.
        if let Some(k) = e.kind() {
            assert!(CertKind::ALL.contains(&k));
            assert!(e.guid == k.guid());
        }
    }
    let encoded = encode(&entries).expect("decoded entries encode");
    let again = decode(&encoded).expect("an encoded table decodes");
    assert!(again == entries, "decode(encode(entries)) != entries");
    // Canonical: encoding is a fixed point after one round.
    assert_eq!(encode(&again).expect("encodes"), encoded);
});
