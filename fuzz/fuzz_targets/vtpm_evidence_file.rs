//! The Azure evidence file (`keybroker_vtpm::EvidenceFile`): what
//! `broker verify-evidence` and the tests read from disk, in the layouts
//! of the published Azure tools.
//!
//! Properties: a file that parses holds an HCL report that
//! a quote whose parts are the file's own, and a signature that marshals
//! back to itself.
#![no_main]

use keybroker_vtpm::tpm::signature::QuoteSignature;
use keybroker_vtpm::EvidenceFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = EvidenceFile::parse(data) else {
        return;
    };
    let q = file.quote();
    assert_eq!(q.pcr_values.len(), file.pcr_values.len());
    let sig = QuoteSignature::parse_tpmt(&file.quote_signature.to_tpmt()).expect("marshalled");
    assert_eq!(sig, file.quote_signature);
    let _ = keybroker_vtpm::HclReport::parse(&file.hcl_report);
    let _ = keybroker_vtpm::tpm::attest::QuoteAttest::parse(&file.quote_message);
});
