//! The real Azure captures: each verifies with its expected report data and
//! yields its expected PCR0; wrong binding values are refused with the
//! right reason code; every single-byte change to the HCL header, the
//! variable data, the quote message, its signature and each PCR value is
//! refused, and none makes anything panic.

use crate::common::{fixtures, snp_report_data, Fixture};
use keybroker_vtpm::evidence_file::Layout;
use keybroker_vtpm::hcl::{HEADER_LEN, SNP_REPORT_LEN, VARIABLE_DATA_OFFSET};
use keybroker_vtpm::tpm::signature::QuoteSignature;
use keybroker_vtpm::{verify_quote, Expected, HclReport, QuoteEvidence, VerifiedVtpmQuote};

/// A capture's parts, each open to change.
#[derive(Clone)]
struct Parts {
    hcl: Vec<u8>,
    message: Vec<u8>,
    /// The raw RSASSA signature.
    signature: Vec<u8>,
    pcrs: Vec<[u8; 32]>,
}

impl Parts {
    fn of(f: &Fixture) -> Self {
        Parts {
            hcl: f.file.hcl_report.clone(),
            message: f.file.quote_message.clone(),
            signature: f.file.quote_signature.bytes().to_vec(),
            pcrs: f.file.pcr_values.clone(),
        }
    }

    /// Verify these parts against the REPORT_DATA and binding value of the
    /// unaltered capture `f`.
    fn verify(&self, f: &Fixture) -> Result<VerifiedVtpmQuote, &'static str> {
        self.verify_signed(f, &QuoteSignature::rsassa_sha256(&self.signature).unwrap())
    }

    fn verify_signed(
        &self,
        f: &Fixture,
        signature: &QuoteSignature,
    ) -> Result<VerifiedVtpmQuote, &'static str> {
        let report_data = snp_report_data(&HclReport::parse(&f.file.hcl_report).unwrap());
        let hcl = HclReport::parse(&self.hcl).map_err(|e| e.reason_code())?;
        verify_quote(
            &hcl,
            QuoteEvidence {
                message: &self.message,
                signature,
                pcr_values: &self.pcrs,
            },
            Expected {
                report_data: &report_data,
                extra_data: &f.expected_report_data,
                user_data: None,
            },
        )
        .map_err(|e| e.reason_code())
    }
}

/// Bytes used by the HCL report (the rest is padding).
fn hcl_used(f: &Fixture) -> usize {
    u32::from_le_bytes(f.file.hcl_report[8..12].try_into().unwrap()) as usize
}

/// Byte values to put in place of `b` for the large regions: a low and a
/// high bit flipped, and every bit.
fn some_changes(b: u8) -> [u8; 3] {
    [b ^ 0x01, b ^ 0x80, b ^ 0xff]
}

/// Change every byte of one region of the parts (three ways each) and
/// expect `want` each time.
fn every_byte_refused(
    f: &Fixture,
    region: &str,
    bytes: impl Fn(&mut Parts) -> &mut [u8],
    range: std::ops::Range<usize>,
    want: &str,
) {
    let original = Parts::of(f);
    for at in range {
        let mut template = original.clone();
        let b = bytes(&mut template)[at];
        for v in some_changes(b) {
            let mut p = original.clone();
            bytes(&mut p)[at] = v;
            assert_eq!(
                p.verify(f).unwrap_err(),
                want,
                "{}: {region} byte {at}",
                f.name
            );
        }
    }
}

#[test]
fn each_capture_verifies_and_yields_its_expected_pcr0() {
    for f in fixtures() {
        let v = Parts::of(&f)
            .verify(&f)
            .unwrap_or_else(|code| panic!("{}: {code}", f.name));
        assert_eq!(v.pcrs().len(), 24, "{}", f.name);
        assert_eq!(v.pcrs()[&0], f.pcr0, "{}: PCR0", f.name);
        assert_eq!(
            v.pcrs()[&17],
            [0xff; 32],
            "{}: PCR17 never extended",
            f.name
        );
        assert_eq!(v.extra_data(), &f.expected_report_data[..]);
        assert_eq!(
            v.user_data(),
            &[0u8; 64],
            "{}: no user data was written",
            f.name
        );
        assert_eq!(v.attestation_key().bits(), 2048);
        let vm = v.vm_configuration().unwrap();
        assert_eq!(
            (vm.secure_boot, vm.tpm_enabled, vm.console_enabled),
            (Some(true), Some(true), Some(true))
        );
        assert!(v.clock_info().safe);
    }
}

#[test]
fn the_layouts_are_read_as_the_captures_hold_them() {
    let all = fixtures();
    let by = |n: &str| all.iter().find(|f| f.name == n).unwrap();
    let (v0, v1, genoa) = (
        by("evidence-v0.json"),
        by("evidence-v1.json"),
        by("evidence-genoa.json"),
    );
    assert_eq!(
        (v0.file.layout, v1.file.layout, genoa.file.layout),
        (Layout::V0, Layout::V1, Layout::V0)
    );
    // v0 and v1: one VM, two captures. Same variable data and AK; the SNP
    // signature and the quote differ.
    let (h0, h1) = (
        HclReport::parse(&v0.file.hcl_report).unwrap(),
        HclReport::parse(&v1.file.hcl_report).unwrap(),
    );
    assert_eq!(h0.variable_data(), h1.variable_data());
    assert_eq!(snp_report_data(&h0), snp_report_data(&h1));
    assert_ne!(v0.file.quote_message, v1.file.quote_message);
    assert_eq!(v0.file.pcr_values, v1.file.pcr_values);
    assert_eq!(v0.file.vcek_der, v1.file.vcek_der);
    assert_eq!(v0.file.hcl_report.len(), 2600);
    let genoa_hcl = HclReport::parse(&genoa.file.hcl_report).unwrap();
    assert_eq!((h0.version(), genoa_hcl.version()), (1, 2));
    for f in &all {
        assert_eq!(
            &f.file.vcek_der[..2],
            &[0x30, 0x82],
            "{}: VCEK is DER",
            f.name
        );
    }
}

#[test]
fn a_wrong_binding_value_is_refused_as_extra_data() {
    let all = fixtures();
    for f in &all {
        let good = &f.expected_report_data;
        let mut flipped = good.clone();
        flipped[0] ^= 1;
        let mut wrong = vec![
            Vec::new(),
            good[..good.len() - 1].to_vec(),
            [&good[..], &[0]].concat(),
            flipped,
        ];
        wrong.extend(
            all.iter()
                .map(|o| o.expected_report_data.clone())
                .filter(|o| o != good),
        );
        let hcl = HclReport::parse(&f.file.hcl_report).unwrap();
        for w in wrong {
            let err = verify_quote(
                &hcl,
                f.file.quote(),
                Expected {
                    report_data: &snp_report_data(&hcl),
                    extra_data: &w,
                    user_data: None,
                },
            )
            .unwrap_err();
            assert_eq!(
                err.reason_code(),
                "EVIDENCE_TPM_QUOTE_EXTRA_DATA",
                "{}",
                f.name
            );
            assert!(err.to_string().contains(&hex::encode(&w)), "{err}");
        }
    }
}

#[test]
fn the_report_data_of_another_snp_report_is_refused() {
    let all = fixtures();
    for f in &all {
        let hcl = HclReport::parse(&f.file.hcl_report).unwrap();
        let expect = |report_data: &[u8; 64], user_data| {
            verify_quote(
                &hcl,
                f.file.quote(),
                Expected {
                    report_data,
                    extra_data: &f.expected_report_data,
                    user_data,
                },
            )
            .unwrap_err()
            .reason_code()
        };
        for other in all.iter().filter(|o| o.name != f.name) {
            let theirs = snp_report_data(&HclReport::parse(&other.file.hcl_report).unwrap());
            if theirs != snp_report_data(&hcl) {
                // (v0 and v1: the same VM, the same variable data.)
                assert_eq!(expect(&theirs, None), "EVIDENCE_HCL_VAR_DATA_MISMATCH");
            }
        }
        // And the captures' user-data (zeros) is not the challenge.
        assert_eq!(
            expect(&snp_report_data(&hcl), Some(&f.expected_report_data)),
            "EVIDENCE_HCL_USER_DATA_MISMATCH"
        );
    }
}

#[test]
fn every_change_to_the_hcl_framing_is_refused_but_the_unsigned_version() {
    // Header (32 bytes) and the request data's fixed fields (20 bytes):
    // every other value of every byte. Nothing signs them; each field has
    // one value it can hold, except the version, 1 or 2 on real Azure
    // hosts, which no one can tell apart and which changes nothing the
    // verification yields.
    let framing: Vec<usize> = (0..HEADER_LEN)
        .chain(HEADER_LEN + SNP_REPORT_LEN..VARIABLE_DATA_OFFSET)
        .collect();
    for f in fixtures() {
        let original = Parts::of(&f);
        let good = original.verify(&f).unwrap();
        let mut accepted = vec![];
        for &at in &framing {
            for v in (0..=255u8).filter(|&v| v != original.hcl[at]) {
                let mut p = original.clone();
                p.hcl[at] = v;
                match p.verify(&f) {
                    Ok(got) => {
                        assert_eq!(got, good, "{}: byte {at} = {v} changed the result", f.name);
                        accepted.push((at, v));
                    }
                    Err(code) => assert!(
                        code.starts_with("EVIDENCE_HCL_"),
                        "{}: byte {at} = {v}: {code}",
                        f.name
                    ),
                }
            }
        }
        let other_version = 3 - original.hcl[4];
        assert_eq!(accepted, [(4, other_version)], "{}", f.name);
    }
}

#[test]
fn every_padding_byte_must_stay_zero() {
    for f in fixtures() {
        let used = hcl_used(&f);
        assert!(used < f.file.hcl_report.len());
        for at in used..f.file.hcl_report.len() {
            let mut p = Parts::of(&f);
            p.hcl[at] = 1;
            assert_eq!(
                p.verify(&f).unwrap_err(),
                "EVIDENCE_HCL_MALFORMED",
                "{}: padding byte {at}",
                f.name
            );
        }
    }
}

#[test]
fn every_change_to_the_variable_data_is_refused() {
    for f in fixtures() {
        every_byte_refused(
            &f,
            "variable data",
            |p| &mut p.hcl,
            VARIABLE_DATA_OFFSET..hcl_used(&f),
            "EVIDENCE_HCL_VAR_DATA_MISMATCH",
        );
    }
}

#[test]
fn every_change_to_the_quote_message_is_refused() {
    for f in fixtures() {
        let n = f.file.quote_message.len();
        every_byte_refused(
            &f,
            "quote",
            |p| &mut p.message,
            0..n,
            "EVIDENCE_TPM_QUOTE_SIGNATURE",
        );
        for cut in [0, 1, n - 1] {
            let mut p = Parts::of(&f);
            p.message.truncate(cut);
            assert_eq!(p.verify(&f).unwrap_err(), "EVIDENCE_TPM_QUOTE_SIGNATURE");
        }
    }
}

#[test]
fn every_change_to_the_signature_is_refused() {
    for f in fixtures() {
        let n = f.file.quote_signature.bytes().len();
        every_byte_refused(
            &f,
            "signature",
            |p| &mut p.signature,
            0..n,
            "EVIDENCE_TPM_QUOTE_SIGNATURE",
        );
        // Shorter, longer, and the right bytes under the wrong scheme.
        let mut short = Parts::of(&f);
        short.signature.remove(0);
        let mut long = Parts::of(&f);
        long.signature.push(0);
        for p in [short, long] {
            assert_eq!(p.verify(&f).unwrap_err(), "EVIDENCE_TPM_QUOTE_SIGNATURE");
        }
        let mut pss = vec![0x00, 0x16, 0x00, 0x0b, 0x01, 0x00];
        pss.extend_from_slice(f.file.quote_signature.bytes());
        let pss = QuoteSignature::parse_tpmt(&pss).unwrap();
        assert_eq!(
            Parts::of(&f).verify_signed(&f, &pss).unwrap_err(),
            "EVIDENCE_TPM_QUOTE_SIGNATURE"
        );
    }
}

#[test]
fn every_change_to_a_pcr_value_is_refused() {
    for f in fixtures() {
        for pcr in 0..f.file.pcr_values.len() {
            every_byte_refused(
                &f,
                &format!("PCR {pcr}"),
                |p| &mut p.pcrs[pcr],
                0..32,
                "EVIDENCE_TPM_PCR_DIGEST",
            );
        }
        // Two PCRs swapped, one missing, one more, none.
        let mut swapped = Parts::of(&f);
        swapped.pcrs.swap(0, 1);
        let mut missing = Parts::of(&f);
        missing.pcrs.pop();
        let mut extra = Parts::of(&f);
        extra.pcrs.push([0; 32]);
        let mut none = Parts::of(&f);
        none.pcrs.clear();
        for (p, want) in [
            (swapped, "EVIDENCE_TPM_PCR_DIGEST"),
            (missing, "EVIDENCE_TPM_PCR_VALUES"),
            (extra, "EVIDENCE_TPM_PCR_VALUES"),
            (none, "EVIDENCE_TPM_PCR_VALUES"),
        ] {
            assert_eq!(p.verify(&f).unwrap_err(), want, "{}", f.name);
        }
    }
}

#[test]
fn truncated_hcl_reports_are_refused() {
    for f in fixtures() {
        let used = hcl_used(&f);
        for len in (0..used).step_by(7).chain([used - 1]) {
            let mut p = Parts::of(&f);
            p.hcl.truncate(len);
            assert_eq!(
                p.verify(&f).unwrap_err(),
                "EVIDENCE_HCL_MALFORMED",
                "{}: {len} bytes",
                f.name
            );
        }
        // Without its padding it is the same report.
        let mut p = Parts::of(&f);
        p.hcl.truncate(used);
        assert!(p.verify(&f).is_ok());
    }
}
