//! Criterion benchmarks of one key release and its parts, beside the cost
//! of one P-384 signature verification (the floor the release is compared
//! with). The load generator (`loadgen`) measures the whole broker process
//! over TLS; these isolate the pieces.
#![allow(missing_docs)] // criterion_group! generates an undocumented fn.

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion};
use keybroker_proto::{report_data, GuestKeyPair, VolumeIds};
use keybroker_tests::{default_guest, policy_for, BrokerDir, BrokerOptions};

fn fixture(rel: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/snp-real")
        .join(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// (signed bytes, big-endian r||s, SEC1 public key) of a real Milan report.
fn real_signature() -> (Vec<u8>, [u8; 96], Vec<u8>) {
    let report = fixture("virtee-milan-v2/report.bin");
    let vcek = fixture("virtee-milan-v2/vcek.der");
    let (_, cert) = x509_parser::parse_x509_certificate(&vcek).unwrap();
    let key = cert.public_key().subject_public_key.data.to_vec();
    let mut sig = [0u8; 96];
    for (i, off) in [0x2A0usize, 0x2E8].into_iter().enumerate() {
        for j in 0..48 {
            sig[i * 48 + j] = report[off + 47 - j];
        }
    }
    (report[..0x2A0].to_vec(), sig, key)
}

fn p384(c: &mut Criterion) {
    let (msg, sig, key) = real_signature();
    let mut g = c.benchmark_group("p384_verify");
    g.bench_function("aws-lc-rs", |b| {
        use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P384_SHA384_FIXED};
        let k = UnparsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, key.clone());
        b.iter(|| k.verify(black_box(&msg), black_box(&sig)).unwrap())
    });
    g.bench_function("rustcrypto-p384", |b| {
        use p384::ecdsa::signature::Verifier as _;
        let k = p384::ecdsa::VerifyingKey::from_sec1_bytes(&key).unwrap();
        let s = p384::ecdsa::Signature::from_slice(&sig).unwrap();
        b.iter(|| k.verify(black_box(&msg), black_box(&s)).unwrap())
    });
    g.finish();
}

fn release(c: &mut Criterion) {
    let dir = BrokerDir::create(&BrokerOptions::default()).unwrap();
    dir.set_policy("bench", &policy_for(&default_guest().measurement, ""))
        .unwrap();
    dir.add_volume("root", "bench").unwrap();
    let cfg = dir.config().unwrap();
    let broker = broker::wiring::broker(&cfg).unwrap();
    let verifier = broker::verify::Verifier::new(broker::wiring::trust(&cfg).unwrap(), None);
    let volumes = VolumeIds::parse(["root"]).unwrap();
    let guest = default_guest();
    let table = dir.sim.cert_table();

    let mut g = c.benchmark_group("release");
    // Verification alone, chain cached (the steady state).
    let rep = dir.sim.report(&[1; 64], &guest).unwrap();
    g.bench_function("verify_cached", |b| {
        b.iter(|| {
            verifier
                .verify(
                    black_box(&rep),
                    &table,
                    None,
                    time::OffsetDateTime::now_utc(),
                )
                .unwrap()
        })
    });
    // Challenge + Attest in process (store, verify, policy, unseal, HPKE
    // wrap, audit), without TLS and gRPC. The guest's report signing is
    // done outside the timed section.
    g.bench_function("challenge_attest_in_process", |b| {
        b.iter_custom(|iters| {
            let mut total = std::time::Duration::ZERO;
            for _ in 0..iters {
                let key = GuestKeyPair::generate().unwrap();
                let t = std::time::Instant::now();
                let grant = broker.challenge(&volumes, None).unwrap();
                total += t.elapsed();
                let rd = report_data(&grant.nonce, &key.public(), &volumes);
                let report = dir.sim.report(rd.as_bytes(), &guest).unwrap();
                let input = broker::release::AttestInput {
                    nonce: grant.nonce,
                    evidence: broker::verify::Evidence::SnpReport {
                        report,
                        cert_table: table.clone(),
                    },
                    guest_public_key: key.public(),
                    volumes: volumes.clone(),
                };
                let t = std::time::Instant::now();
                let out = broker.attest(input, None).map_err(|e| e.0).unwrap();
                total += t.elapsed();
                assert_eq!(out.keys.len(), 1);
            }
            total
        })
    });
    g.finish();
}

/// Verifying the real Azure Milan capture as a release does: HCL framing,
/// the SNP report to AMD's pinned ARK (chain cached), then the vTPM layers
/// (variable data hash, RSA-2048 quote signature, PCR digest), beside the
/// bare report's `release/verify_cached`.
fn azure(c: &mut Criterion) {
    use broker::verify::{AzureVtpmEvidence, Evidence, TrustStore, VerifiedEvidence, Verifier};
    let capture = keybroker_tests::fixtures::azure_captures().remove(0);
    let file =
        keybroker_vtpm::EvidenceFile::parse(&std::fs::read(capture.path()).unwrap()).unwrap();
    let evidence = Evidence::AzureVtpm(AzureVtpmEvidence::from_file(&file));
    let report_data = hex::decode(&capture.report_data).unwrap();
    let verifier = Verifier::new(TrustStore::amd(), None);
    let at = time::macros::datetime!(2025-06-01 0:00 UTC);
    let mut g = c.benchmark_group("azure");
    g.bench_function("verify_evidence_cached", |b| {
        b.iter(|| {
            let VerifiedEvidence::AzureVtpm(h) = verifier
                .verify_evidence(black_box(&evidence), None, at)
                .unwrap()
            else {
                unreachable!()
            };
            h.inspect_quote(Some(&report_data), None).unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, p384, release, azure);
criterion_main!(benches);
