//! The TPM 2.0 structures the guest reads from its vTPM and the broker
//! from the guest (`keybroker_vtpm::tpm`): command responses, the quote's
//! `TPMS_ATTEST` and `TPMT_SIGNATURE`.
//!
//! Input: the first byte picks the parser, the rest is its input.
//!
//! Properties: a signature that parses marshals back to the bytes it was
//! read from; a quote response's attest part is what `QuoteAttest` reads.
#![no_main]

use keybroker_vtpm::tpm::attest::QuoteAttest;
use keybroker_vtpm::tpm::commands;
use keybroker_vtpm::tpm::signature::QuoteSignature;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    match which % 9 {
        0 => {
            let _ = QuoteAttest::parse(bytes);
        }
        1 => {
            if let Ok(sig) = QuoteSignature::parse_tpmt(bytes) {
                assert_eq!(sig.to_tpmt(), bytes);
            }
        }
        2 => {
            if let Ok(q) = commands::parse_quote(bytes) {
                let _ = q.parsed();
                let again = QuoteSignature::parse_tpmt(&q.signature.to_tpmt()).expect("marshalled");
                assert_eq!(again, q.signature);
            }
        }
        3 => {
            let _ = commands::parse_pcr_read(bytes);
        }
        4 => {
            let _ = commands::parse_nv_read_public(bytes);
        }
        5 => {
            let _ = commands::parse_nv_read(bytes);
        }
        6 => {
            let _ = commands::parse_get_tpm_properties(bytes);
        }
        7 => {
            if let Ok((_, public)) = commands::parse_create_primary(bytes) {
                let _ = public.public_key();
            }
        }
        _ => {
            if let Ok(public) = commands::parse_read_public(bytes) {
                let _ = public.marshal();
                let _ = public.public_key();
            }
        }
    }
});
