//! AMD's public root and intermediate certificates, pinned into the binary.
//!
//! ARK and ASK of Milan, Genoa and Turin come from the `sev` crate's
//! built-in copies (`sev::certs::snp::builtin`); the ASVKs (which sign VLEKs
//! and which `sev` does not carry) are bundled here as PEM files, with their
//! provenance in `PROVENANCE.md` next to this file. Tests prove every bundled
//! ASK and ASVK verifies under the pinned ARK of its generation.

use super::certs::certs_from_pem_or_der;
use super::claims::Generation;

const MILAN_ASVK: &[u8] = include_bytes!("milan_asvk.pem");
const GENOA_ASVK: &[u8] = include_bytes!("genoa_asvk.pem");
const TURIN_ASVK: &[u8] = include_bytes!("turin_asvk.pem");

/// Every generation with pinned AMD certificates.
pub const GENERATIONS: [Generation; 3] = [Generation::Milan, Generation::Genoa, Generation::Turin];

fn first_der(pem: &[u8]) -> Vec<u8> {
    certs_from_pem_or_der(pem)
        .into_iter()
        .next()
        .unwrap_or_default()
}

/// The pinned AMD Root Key of a generation, DER.
pub fn ark_der(generation: Generation) -> Vec<u8> {
    use sev::certs::snp::builtin::{genoa, milan, turin};
    first_der(match generation {
        Generation::Milan => milan::ARK,
        Generation::Genoa => genoa::ARK,
        Generation::Turin => turin::ARK,
    })
}

/// The bundled AMD SEV Key (signs VCEKs) of a generation, DER.
pub fn ask_der(generation: Generation) -> Vec<u8> {
    use sev::certs::snp::builtin::{genoa, milan, turin};
    first_der(match generation {
        Generation::Milan => milan::ASK,
        Generation::Genoa => genoa::ASK,
        Generation::Turin => turin::ASK,
    })
}

/// The bundled AMD SEV VLEK Key (signs VLEKs) of a generation, DER.
pub fn asvk_der(generation: Generation) -> Vec<u8> {
    first_der(match generation {
        Generation::Milan => MILAN_ASVK,
        Generation::Genoa => GENOA_ASVK,
        Generation::Turin => TURIN_ASVK,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::certs::subject_cn;
    use crate::verify::chain::verify_signed_by;
    use crate::verify::error::CertRole;

    fn cap(g: Generation) -> &'static str {
        match g {
            Generation::Milan => "Milan",
            Generation::Genoa => "Genoa",
            Generation::Turin => "Turin",
        }
    }

    #[test]
    fn pinned_certificates_parse_and_are_named_for_their_generation() {
        for g in GENERATIONS {
            assert_eq!(subject_cn(&ark_der(g)), Some(format!("ARK-{}", cap(g))));
            assert_eq!(subject_cn(&ask_der(g)), Some(format!("SEV-{}", cap(g))));
            assert_eq!(
                subject_cn(&asvk_der(g)),
                Some(format!("SEV-VLEK-{}", cap(g)))
            );
        }
    }

    #[test]
    fn ark_is_self_signed_and_signs_ask_and_asvk() {
        for g in GENERATIONS {
            let ark = ark_der(g);
            verify_signed_by(&ark, CertRole::Ark, &ark, CertRole::Ark).unwrap();
            verify_signed_by(&ask_der(g), CertRole::Ask, &ark, CertRole::Ark).unwrap();
            verify_signed_by(&asvk_der(g), CertRole::Asvk, &ark, CertRole::Ark).unwrap();
        }
    }

    #[test]
    fn intermediates_do_not_verify_under_another_generations_ark() {
        for g in GENERATIONS {
            for other in GENERATIONS.into_iter().filter(|o| *o != g) {
                let e =
                    verify_signed_by(&asvk_der(g), CertRole::Asvk, &ark_der(other), CertRole::Ark)
                        .unwrap_err();
                assert_eq!(e.reason_code(), "EVIDENCE_CHAIN_SIGNATURE");
                assert!(verify_signed_by(
                    &ask_der(g),
                    CertRole::Ask,
                    &ark_der(other),
                    CertRole::Ark
                )
                .is_err());
            }
        }
    }

    #[test]
    fn ark_fingerprints_match_the_fixtures_provenance() {
        // SHA-256 of each ARK as recorded in tests/fixtures/snp-real/*/EXPECTED.md.
        for (g, fp) in [
            (
                Generation::Milan,
                "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
            ),
            (
                Generation::Genoa,
                "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
            ),
            (
                Generation::Turin,
                "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
            ),
        ] {
            let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &ark_der(g));
            assert_eq!(hex::encode(d.as_ref()), fp, "{g}");
        }
    }
}
