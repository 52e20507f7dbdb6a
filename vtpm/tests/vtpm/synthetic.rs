//! Evidence made with a test attestation key, to reach every check past the
//! quote's signature (which the real captures cannot, since only Azure's
//! AK signs them) and to show that the checks run in order.

use crate::common::{claims_for, hcl_for, pcr_values, Attest, TestAk};
use keybroker_vtpm::tpm::commands::parse_quote;
use keybroker_vtpm::tpm::commands::parse_read_public;
use keybroker_vtpm::tpm::commands::PcrReadResponse;
use keybroker_vtpm::tpm::signature::QuoteSignature;
use keybroker_vtpm::{
    verify_quote, Expected, HclReport, QuoteEvidence, VerifiedVtpmQuote, VtpmRejected,
};

const BINDING: &[u8] = &[0xb1; 64];

/// One guest's evidence, each part replaceable.
struct Case {
    ak: TestAk,
    hcl: Vec<u8>,
    report_data: [u8; 64],
    attest: Attest,
    pcrs: Vec<[u8; 32]>,
    /// Sign with another key instead.
    signer: Option<TestAk>,
    pss: bool,
}

impl Case {
    fn new() -> Self {
        let ak = TestAk::new();
        let (hcl, report_data) = hcl_for(&claims_for(&ak.public, BINDING));
        let pcrs = pcr_values(24);
        Case {
            attest: Attest::quote(BINDING, &pcrs),
            ak,
            hcl,
            report_data,
            pcrs,
            signer: None,
            pss: false,
        }
    }

    fn with_variable_data(mut self, var: &[u8]) -> Self {
        (self.hcl, self.report_data) = hcl_for(var);
        self
    }

    fn run(&self, user_data: Option<&[u8]>) -> Result<VerifiedVtpmQuote, VtpmRejected> {
        let message = self.attest.marshal();
        let key = self.signer.as_ref().unwrap_or(&self.ak);
        let signature: QuoteSignature = if self.pss {
            key.sign_pss(&message)
        } else {
            key.sign(&message)
        };
        verify_quote(
            &HclReport::parse(&self.hcl)?,
            QuoteEvidence {
                message: &message,
                signature: &signature,
                pcr_values: &self.pcrs,
            },
            Expected {
                report_data: &self.report_data,
                extra_data: BINDING,
                user_data,
            },
        )
    }

    fn code(&self) -> &'static str {
        self.run(Some(BINDING)).unwrap_err().reason_code()
    }
}

#[test]
fn good_evidence_verifies_with_either_rsa_scheme() {
    for pss in [false, true] {
        let mut c = Case::new();
        c.pss = pss;
        let v = c.run(Some(BINDING)).unwrap();
        assert_eq!(v.pcrs().len(), 24);
        assert_eq!(v.pcrs()[&5], [6; 32]);
        assert_eq!(v.user_data(), BINDING);
        assert_eq!(v.attestation_key(), &c.ak.public);
        assert_eq!(v.clock_info().clock, 1234);
    }
}

#[test]
fn each_check_past_the_signature_has_its_code() {
    let mut c = Case::new();
    c.signer = Some(TestAk::new());
    assert_eq!(c.code(), "EVIDENCE_TPM_QUOTE_SIGNATURE");

    let mut c = Case::new();
    c.attest.magic = 0xff54_4348;
    assert_eq!(c.code(), "EVIDENCE_TPM_QUOTE_NOT_QUOTE");
    let mut c = Case::new();
    c.attest.kind = 0x8017; // TPM_ST_ATTEST_CERTIFY
    assert_eq!(c.code(), "EVIDENCE_TPM_QUOTE_NOT_QUOTE");

    let mut c = Case::new();
    c.attest.trailing = vec![0];
    assert_eq!(c.code(), "EVIDENCE_TPM_QUOTE_MALFORMED");
    let mut c = Case::new();
    c.attest.pcr_digest = vec![0; 65];
    assert_eq!(c.code(), "EVIDENCE_TPM_QUOTE_MALFORMED");

    let mut c = Case::new();
    c.attest.extra_data = BINDING[..63].to_vec();
    assert_eq!(c.code(), "EVIDENCE_TPM_QUOTE_EXTRA_DATA");

    let mut c = Case::new();
    c.attest.banks[0].0 = 0x0004; // SHA-1 bank
    assert_eq!(c.code(), "EVIDENCE_TPM_PCR_VALUES");
    let mut c = Case::new();
    c.attest.banks.push((0x000b, vec![0, 0, 0x80]));
    assert_eq!(c.code(), "EVIDENCE_TPM_PCR_VALUES");
    let mut c = Case::new();
    c.attest.banks[0].1 = vec![0, 0, 0];
    assert_eq!(c.code(), "EVIDENCE_TPM_PCR_VALUES");
    let mut c = Case::new();
    c.attest.banks.clear();
    assert_eq!(c.code(), "EVIDENCE_TPM_PCR_VALUES");
    let mut c = Case::new();
    c.pcrs.pop();
    assert_eq!(c.code(), "EVIDENCE_TPM_PCR_VALUES");

    let mut c = Case::new();
    c.pcrs[23][0] ^= 1;
    assert_eq!(c.code(), "EVIDENCE_TPM_PCR_DIGEST");
    let mut c = Case::new();
    c.attest.pcr_digest = vec![0; 48];
    assert_eq!(c.code(), "EVIDENCE_TPM_PCR_DIGEST");

    let c = Case::new();
    let err = c.run(Some(&[0xb2; 64])).unwrap_err();
    assert_eq!(err.reason_code(), "EVIDENCE_HCL_USER_DATA_MISMATCH");
    assert!(c.run(None).is_ok(), "user-data is checked only when asked");
}

#[test]
fn the_variable_data_is_checked_before_the_key_in_it_is_used() {
    // Not JSON, but bound by REPORT_DATA: parsed after the binding check.
    let c = Case::new().with_variable_data(b"not json");
    assert_eq!(c.code(), "EVIDENCE_HCL_VAR_DATA_MALFORMED");
    let c = Case::new().with_variable_data(br#"{"keys":[],"user-data":"00"}"#);
    assert_eq!(c.code(), "EVIDENCE_HCL_AK_INVALID");
    // Another AK in the variable data than the one that signed.
    let other = TestAk::new();
    let c = Case::new().with_variable_data(&claims_for(&other.public, BINDING));
    assert_eq!(c.code(), "EVIDENCE_TPM_QUOTE_SIGNATURE");
}

#[test]
fn the_first_failing_check_is_the_one_reported() {
    // Bad REPORT_DATA and a bad signature: the binding goes first.
    let mut c = Case::new();
    c.report_data[0] ^= 1;
    c.signer = Some(TestAk::new());
    assert_eq!(c.code(), "EVIDENCE_HCL_VAR_DATA_MISMATCH");
    // Not a quote, wrong extraData, wrong digest: the type goes first.
    let mut c = Case::new();
    c.attest.kind = 0x8014;
    c.attest.extra_data = vec![];
    c.pcrs[0][0] ^= 1;
    assert_eq!(c.code(), "EVIDENCE_TPM_QUOTE_NOT_QUOTE");
    // Wrong extraData and wrong digest: extraData first.
    let mut c = Case::new();
    c.attest.extra_data = vec![1];
    c.pcrs[0][0] ^= 1;
    assert_eq!(c.code(), "EVIDENCE_TPM_QUOTE_EXTRA_DATA");
    // Wrong digest and wrong user data: the digest first.
    let mut c = Case::new();
    c.pcrs[0][0] ^= 1;
    assert_eq!(
        c.run(Some(&[0; 64])).unwrap_err().reason_code(),
        "EVIDENCE_TPM_PCR_DIGEST"
    );
}

#[test]
fn a_pcr_subset_maps_values_to_their_indexes() {
    let mut c = Case::new();
    c.pcrs = vec![[0xa0; 32], [0xa7; 32], [0xb7; 32]];
    c.attest = Attest::quote(BINDING, &c.pcrs);
    c.attest.banks[0].1 = vec![0x81, 0x00, 0x80]; // PCRs 0, 7, 23
    let v = c.run(None).unwrap();
    let got: Vec<(u8, u8)> = v.pcrs().iter().map(|(i, v)| (*i, v[0])).collect();
    assert_eq!(got, [(0, 0xa0), (7, 0xa7), (23, 0xb7)]);
}

/// A quote that tpm2-tools made on swtpm (tests/data/tpm2-tools-swtpm.txt)
/// verifies end to end, wrapped in an HCL report that names the key
/// tpm2_readpublic read: the parser and verifier agree with another TPM
/// stack on real TPM output.
#[test]
fn a_tpm2_tools_quote_from_swtpm_verifies() {
    let trace = include_str!("../data/tpm2-tools-swtpm.txt");
    let rsp = |name: &str| -> Vec<Vec<u8>> {
        let lines: Vec<&str> = trace.lines().collect();
        (0..lines.len())
            .filter(|&i| lines[i] == format!("# {name}"))
            .map(|i| hex::decode(lines[i + 2].strip_prefix("rsp ").unwrap()).unwrap())
            .collect()
    };
    let ak = parse_read_public(&rsp("ReadPublic")[0])
        .unwrap()
        .public_key()
        .unwrap();
    let quote = parse_quote(&rsp("Quote")[0]).unwrap();
    let pcrs: Vec<[u8; 32]> = rsp("PCR_Read")
        .iter()
        .flat_map(|r| {
            keybroker_vtpm::tpm::commands::parse_pcr_read(r)
                .map(|p: PcrReadResponse| p.values)
                .unwrap()
        })
        .map(|v| v.try_into().unwrap())
        .collect();
    assert_eq!(pcrs.len(), 24);
    let (hcl, report_data) = hcl_for(&claims_for(&ak, &[0; 64]));
    let v = verify_quote(
        &HclReport::parse(&hcl).unwrap(),
        QuoteEvidence {
            message: &quote.attest,
            signature: &quote.signature,
            pcr_values: &pcrs,
        },
        Expected {
            report_data: &report_data,
            extra_data: b"challenge",
            user_data: Some(&[0; 64]),
        },
    )
    .unwrap();
    assert_eq!(v.pcrs()[&17], [0xff; 32]);
    assert_eq!(v.pcrs()[&0], [0; 32]);
}
