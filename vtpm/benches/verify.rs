//! What verifying one Azure guest's vTPM evidence costs above its SNP
//! report: reading the evidence file, framing the HCL report, and
//! `verify_quote` (SHA-256 of the variable data, JSON, one RSA-2048
//! verification, TPMS_ATTEST, SHA-256 over 24 PCRs), on the real Milan
//! capture.
#![allow(missing_docs)] // criterion_group! generates an undocumented fn.

use criterion::{criterion_group, criterion_main, Criterion};
use keybroker_vtpm::{verify_quote, EvidenceFile, Expected, HclReport};
use std::hint::black_box;
use std::path::PathBuf;

fn milan() -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/azure-snp-vtpm/evidence-v0.json");
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn verify(c: &mut Criterion) {
    let json = milan();
    let file = EvidenceFile::parse(&json).unwrap();
    let hcl = HclReport::parse(&file.hcl_report).unwrap();
    let report_data: [u8; 64] = hcl.snp_report()[0x50..0x90].try_into().unwrap();
    let expected = Expected {
        report_data: &report_data,
        extra_data: b"challenge",
        user_data: None,
    };
    let mut g = c.benchmark_group("vtpm");
    g.bench_function("evidence_file_parse", |b| {
        b.iter(|| EvidenceFile::parse(black_box(&json)).unwrap())
    });
    g.bench_function("hcl_parse", |b| {
        b.iter(|| HclReport::parse(black_box(&file.hcl_report)).unwrap())
    });
    g.bench_function("verify_quote", |b| {
        b.iter(|| verify_quote(black_box(&hcl), file.quote(), expected).unwrap())
    });
    g.finish();
}

criterion_group!(benches, verify);
criterion_main!(benches);
