//! Helpers shared by the tests: the real captures with their expected
//! values, and evidence made with a test attestation key.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    KeyPair, RsaKeyPair, RsaPublicKeyComponents, RSA_PKCS1_SHA256, RSA_PSS_SHA256,
};
use keybroker_vtpm::hcl::{report_data_for, RuntimeClaims, SNP_REPORT_LEN};
use keybroker_vtpm::tpm::pcr::pcr_digest_sha256;
use keybroker_vtpm::tpm::signature::{QuoteSignature, RsaPublicKey};
use keybroker_vtpm::{EvidenceFile, HclReport};
use std::path::PathBuf;

/// Offset of REPORT_DATA in an SNP attestation report.
const REPORT_DATA_OFFSET: usize = 0x50;

/// REPORT_DATA of the SNP report inside `hcl`. The broker takes it from
/// its SNP verifier's result; these tests, which do not verify the SNP
/// report (the broker's verifier does, and accepts these reports), read it
/// from the raw report.
pub fn snp_report_data(hcl: &HclReport) -> [u8; 64] {
    hcl.snp_report()[REPORT_DATA_OFFSET..REPORT_DATA_OFFSET + 64]
        .try_into()
        .unwrap()
}

pub fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/azure-snp-vtpm")
}

/// One capture and what EXPECTED.md says it must yield.
pub struct Fixture {
    pub name: String,
    pub file: EvidenceFile,
    /// The expected binding value (the quote's extraData).
    pub expected_report_data: Vec<u8>,
    pub pcr0: [u8; 32],
}

/// The captures, with the expected values read from EXPECTED.md's table
/// (`| file | … = HEX or HEX | PCR0 |`).
pub fn fixtures() -> Vec<Fixture> {
    let dir = fixture_dir();
    let expected = std::fs::read_to_string(dir.join("EXPECTED.md")).unwrap();
    let out: Vec<Fixture> = expected
        .lines()
        .filter(|l| l.starts_with("| evidence-"))
        .map(|l| {
            let cols: Vec<&str> = l.split('|').map(str::trim).collect();
            let name = cols[1].to_string();
            let report_data = hex::decode(cols[2].split_whitespace().last().unwrap()).unwrap();
            let pcr0 = hex::decode(cols[3]).unwrap().try_into().unwrap();
            let json = std::fs::read(dir.join(&name)).unwrap();
            Fixture {
                file: EvidenceFile::parse(&json).unwrap_or_else(|e| panic!("{name}: {e}")),
                name,
                expected_report_data: report_data,
                pcr0,
            }
        })
        .collect();
    assert_eq!(out.len(), 3, "EXPECTED.md lists three captures");
    out
}

/// A test attestation key.
pub struct TestAk {
    pair: RsaKeyPair,
    pub public: RsaPublicKey,
}

impl TestAk {
    pub fn new() -> Self {
        let pair = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
        let c = RsaPublicKeyComponents::<Vec<u8>>::from(pair.public_key());
        let public = RsaPublicKey::new(&c.n, &c.e).unwrap();
        TestAk { pair, public }
    }

    pub fn sign(&self, message: &[u8]) -> QuoteSignature {
        QuoteSignature::rsassa_sha256(&self.raw(message, false)).unwrap()
    }

    pub fn sign_pss(&self, message: &[u8]) -> QuoteSignature {
        let mut tpmt = vec![0x00, 0x16, 0x00, 0x0b, 0x01, 0x00];
        tpmt.extend_from_slice(&self.raw(message, true));
        QuoteSignature::parse_tpmt(&tpmt).unwrap()
    }

    fn raw(&self, message: &[u8], pss: bool) -> Vec<u8> {
        let mut sig = vec![0u8; self.pair.public_modulus_len()];
        let alg = if pss {
            &RSA_PSS_SHA256
        } else {
            &RSA_PKCS1_SHA256
        };
        self.pair
            .sign(alg, &SystemRandom::new(), message, &mut sig)
            .unwrap();
        sig
    }
}

/// The fields of a quote's `TPMS_ATTEST`, written by hand here so that
/// the tests do not rely on the crate's own parser to make their input.
#[derive(Clone)]
pub struct Attest {
    pub magic: u32,
    pub kind: u16,
    pub extra_data: Vec<u8>,
    /// (hash algorithm, sizeofSelect bitmap) per bank.
    pub banks: Vec<(u16, Vec<u8>)>,
    pub pcr_digest: Vec<u8>,
    pub trailing: Vec<u8>,
}

impl Attest {
    pub fn quote(extra_data: &[u8], values: &[[u8; 32]]) -> Self {
        assert!(values.len() <= 24);
        let mut select = vec![0u8; 3];
        for i in 0..values.len() {
            select[i / 8] |= 1 << (i % 8);
        }
        Attest {
            magic: 0xff54_4347,
            kind: 0x8018,
            extra_data: extra_data.to_vec(),
            banks: vec![(0x000b, select)],
            pcr_digest: pcr_digest_sha256(values).to_vec(),
            trailing: vec![],
        }
    }

    pub fn marshal(&self) -> Vec<u8> {
        let mut m = vec![];
        m.extend_from_slice(&self.magic.to_be_bytes());
        m.extend_from_slice(&self.kind.to_be_bytes());
        // qualifiedSigner: nameAlg SHA-256 and 32 bytes.
        m.extend_from_slice(&[0x00, 0x22, 0x00, 0x0b]);
        m.extend_from_slice(&[0x5a; 32]);
        m.extend_from_slice(&(self.extra_data.len() as u16).to_be_bytes());
        m.extend_from_slice(&self.extra_data);
        // clockInfo: clock, resetCount, restartCount, safe; firmwareVersion.
        m.extend_from_slice(&1234u64.to_be_bytes());
        m.extend_from_slice(&2u32.to_be_bytes());
        m.extend_from_slice(&0u32.to_be_bytes());
        m.push(1);
        m.extend_from_slice(&0x2020_0312_0012_0003u64.to_be_bytes());
        m.extend_from_slice(&(self.banks.len() as u32).to_be_bytes());
        for (hash, select) in &self.banks {
            m.extend_from_slice(&hash.to_be_bytes());
            m.push(select.len() as u8);
            m.extend_from_slice(select);
        }
        m.extend_from_slice(&(self.pcr_digest.len() as u16).to_be_bytes());
        m.extend_from_slice(&self.pcr_digest);
        m.extend_from_slice(&self.trailing);
        m
    }
}

/// An HCL report around `variable_data`, whose (unsigned, test-only) SNP
/// report carries the REPORT_DATA the paravisor would ask for.
pub fn hcl_for(variable_data: &[u8]) -> (Vec<u8>, [u8; 64]) {
    let report_data = report_data_for(variable_data);
    let mut snp = [0u8; SNP_REPORT_LEN];
    snp[0] = 3;
    snp[REPORT_DATA_OFFSET..REPORT_DATA_OFFSET + 64].copy_from_slice(&report_data);
    (HclReport::build(1, &snp, variable_data), report_data)
}

/// Variable data naming `ak`, with `user_data`.
pub fn claims_for(ak: &RsaPublicKey, user_data: &[u8]) -> Vec<u8> {
    RuntimeClaims {
        attestation_key: ak.clone(),
        user_data: user_data.to_vec(),
        vm_configuration: None,
    }
    .to_json()
}

/// Distinct PCR values 0..n.
pub fn pcr_values(n: usize) -> Vec<[u8; 32]> {
    (0..n).map(|i| [i as u8 + 1; 32]).collect()
}
