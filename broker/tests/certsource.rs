//! Certificate sources (issue #4): the certificate cache, `broker certs
//! import`, and AMD KDS, against a fake KDS on loopback that serves the real
//! fixture certificates (and a simulated chain for revocation) and counts
//! requests.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P384_SHA384_FIXED_SIGNING};
use broker::certsource::import::{import, items_from_file};
use broker::certsource::kds::vcek_path;
use broker::certsource::{pem_encode, CacheSource, CertCache, KdsSettings, KdsSource};
use broker::verify::{
    build_cert_table, Generation, TrustStore, Verifier, GUID_ARK, GUID_ASK, GUID_VCEK, SIGNED_LEN,
};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CustomExtension,
    DistinguishedName, DnType, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SerialNumber, PKCS_ECDSA_P384_SHA384,
};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/snp-real")
}

fn read(p: &str) -> Vec<u8> {
    std::fs::read(fixtures().join(p)).unwrap()
}

fn at(s: &str) -> OffsetDateTime {
    OffsetDateTime::parse(s, &Rfc3339).unwrap()
}

/// Inside every fixture VCEK's validity (as the other verification tests).
fn today() -> OffsetDateTime {
    at("2026-11-26T00:00:00Z")
}

fn chip_and_tcb(report: &[u8]) -> ([u8; 64], [u8; 8]) {
    let mut chip = [0u8; 64];
    chip.copy_from_slice(&report[0x1A0..0x1E0]);
    let mut tcb = [0u8; 8];
    tcb.copy_from_slice(&report[0x180..0x188]);
    (chip, tcb)
}

// ---- a fake AMD KDS ----

type Route = (u16, Vec<(String, String)>, Vec<u8>);

#[derive(Clone)]
struct FakeKds {
    url: String,
    requests: Arc<AtomicUsize>,
    paths: Arc<Mutex<Vec<String>>>,
    routes: Arc<Mutex<HashMap<String, Route>>>,
}

impl FakeKds {
    fn start() -> FakeKds {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let kds = FakeKds {
            url: format!("http://{}", listener.local_addr().unwrap()),
            requests: Arc::default(),
            paths: Arc::default(),
            routes: Arc::default(),
        };
        let k = kds.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut first = String::new();
                if reader.read_line(&mut first).is_err() {
                    continue;
                }
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                }
                let path = first.split(' ').nth(1).unwrap_or("").to_owned();
                k.requests.fetch_add(1, Ordering::SeqCst);
                k.paths.lock().unwrap().push(path.clone());
                let (status, headers, body) =
                    k.routes.lock().unwrap().get(&path).cloned().unwrap_or((
                        404,
                        vec![],
                        b"Not Found".to_vec(),
                    ));
                let mut resp = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n", body.len());
                for (n, v) in headers {
                    resp.push_str(&format!("{n}: {v}\r\n"));
                }
                resp.push_str("Connection: close\r\n\r\n");
                let _ = conn.write_all(resp.as_bytes());
                let _ = conn.write_all(&body);
            }
        });
        kds
    }

    fn serve(&self, path: &str, body: Vec<u8>) {
        self.routes
            .lock()
            .unwrap()
            .insert(path.to_owned(), (200, vec![], body));
    }

    fn throttle(&self, path: &str, retry_after: &str) {
        self.routes.lock().unwrap().insert(
            path.to_owned(),
            (
                429,
                vec![("Retry-After".into(), retry_after.into())],
                vec![],
            ),
        );
    }

    fn count(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    fn settings(&self) -> KdsSettings {
        KdsSettings {
            url: self.url.clone(),
            timeout: Duration::from_secs(3),
            min_interval: Duration::ZERO,
            max_backoff: Duration::from_secs(2),
        }
    }
}

/// A verifier as `wiring::verifier` builds it: cache, then KDS.
fn verifier(store: TrustStore, cache: &Arc<CertCache>, settings: KdsSettings) -> Verifier {
    let kds = KdsSource::new(settings, cache.clone(), store.clone()).unwrap();
    Verifier::new(store.clone(), None)
        .with_source(Arc::new(CacheSource::new(cache.clone(), &store)))
        .with_source(Arc::new(kds))
}

fn serve_real(kds: &FakeKds, set: &str, g: Generation, chain_pem: Vec<u8>) -> String {
    let report = read(&format!("{set}/report.bin"));
    let (chip, tcb) = chip_and_tcb(&report);
    let path = vcek_path(g, &chip, tcb);
    kds.serve(&path, read(&format!("{set}/vcek.der")));
    let product = match g {
        Generation::Milan => "Milan",
        Generation::Genoa => "Genoa",
        Generation::Turin => "Turin",
    };
    kds.serve(&format!("/vcek/v1/{product}/cert_chain"), chain_pem);
    path
}

fn turin_chain() -> Vec<u8> {
    [read("oak-turin-v5/ask.pem"), read("oak-turin-v5/ark.pem")].concat()
}

#[test]
fn kds_fetch_verifies_a_real_report_and_the_second_is_a_cache_hit() {
    let kds = FakeKds::start();
    let path = serve_real(&kds, "oak-turin-v5", Generation::Turin, turin_chain());
    assert!(
        path.starts_with("/vcek/v1/Turin/3b42092f69c656d3?fmcSPL=00&blSPL=01"),
        "{path}"
    );
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(CertCache::new(dir.path().join("cache")));
    let v = verifier(TrustStore::amd(), &cache, kds.settings());
    let report = read("oak-turin-v5/report.bin");

    // No certificate table: the VCEK can only come from KDS.
    let ok = v.verify(&report, &[], None, today()).unwrap();
    assert_eq!(ok.claims().generation, Generation::Turin);
    let paths = kds.paths.lock().unwrap().clone();
    assert_eq!(
        paths,
        vec![
            path.clone(),
            "/vcek/v1/Turin/cert_chain".to_owned(),
            "/vcek/v1/Turin/crl".to_owned()
        ]
    );
    let s = cache.stats();
    assert_eq!(
        (s.misses, s.hits, s.kds_requests, s.kds_fetched),
        (1, 0, 3, 1)
    );
    let stored = dir
        .path()
        .join("cache/turin/vcek/3b42092f69c656d3/0001000200000047.der");
    assert_eq!(
        std::fs::read(&stored).unwrap(),
        read("oak-turin-v5/vcek.der")
    );
    assert!(dir.path().join("cache/turin/cert_chain.pem").is_file());

    // Second verification: served from the cache, no request.
    v.verify(&report, &[], None, today()).unwrap();
    assert_eq!(kds.count(), 3, "the second verification made a request");
    assert_eq!(cache.stats().hits, 1);

    // A new broker process (new verifier and cache handle) on the same
    // directory: the VCEK comes from the cache; the process asks once for
    // the CRL that KDS did not have (at most once per hour).
    let cache2 = Arc::new(CertCache::new(dir.path().join("cache")));
    let v2 = verifier(TrustStore::amd(), &cache2, kds.settings());
    v2.verify(&report, &[], None, today()).unwrap();
    v2.verify(&report, &[], None, today()).unwrap();
    assert_eq!(kds.count(), 4);
    assert_eq!(
        kds.paths.lock().unwrap().last().map(String::as_str),
        Some("/vcek/v1/Turin/crl")
    );
    assert_eq!(cache2.stats().hits, 2);
    assert!(broker::certsource::stats().hits >= 2);

    // Any change to the report still fails.
    let mut bad = report.clone();
    bad[0x90] ^= 1;
    assert_eq!(
        v.verify(&bad, &[], None, today())
            .unwrap_err()
            .reason_code(),
        "EVIDENCE_REPORT_SIGNATURE"
    );
}

#[test]
fn kds_fetch_for_a_v2_report_without_cpuid() {
    // virtee-milan-v2 is a version 2 report: no CPUID, so Milan is tried first.
    let kds = FakeKds::start();
    serve_real(
        &kds,
        "virtee-milan-v2",
        Generation::Milan,
        read("virtee-milan-v2/cert_chain_ask_ark.pem"),
    );
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(CertCache::new(dir.path().to_owned()));
    let v = verifier(TrustStore::amd(), &cache, kds.settings());
    let report = read("virtee-milan-v2/report.bin");
    let ok = v.verify(&report, &[], None, today()).unwrap();
    assert_eq!(ok.claims().generation, Generation::Milan);
    assert_eq!(cache.list().unwrap().len(), 2, "VCEK and cert_chain");
}

#[test]
fn kds_404_leaves_the_certificate_missing() {
    let kds = FakeKds::start();
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(CertCache::new(dir.path().to_owned()));
    let v = verifier(TrustStore::amd(), &cache, kds.settings());
    let e = v
        .verify(&read("oak-genoa-v5/report.bin"), &[], None, today())
        .unwrap_err();
    assert_eq!(e.reason_code(), "EVIDENCE_CERT_MISSING");
    assert_eq!(kds.count(), 1);
}

#[test]
fn kds_429_backs_off_fails_fast_and_recovers() {
    let kds = FakeKds::start();
    let path = serve_real(&kds, "oak-turin-v5", Generation::Turin, turin_chain());
    kds.throttle(&path, "1");
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(CertCache::new(dir.path().to_owned()));
    let v = verifier(TrustStore::amd(), &cache, kds.settings());
    let report = read("oak-turin-v5/report.bin");

    let e = v.verify(&report, &[], None, today()).unwrap_err();
    assert_eq!(e.reason_code(), "EVIDENCE_CERT_UNAVAILABLE");
    assert!(e.to_string().contains("429"), "{e}");
    assert_eq!(kds.count(), 1);

    // KDS would answer now, but the broker is backing off: no request, and
    // the refusal is immediate.
    kds.serve(&path, read("oak-turin-v5/vcek.der"));
    let started = std::time::Instant::now();
    let e = v.verify(&report, &[], None, today()).unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(e.reason_code(), "EVIDENCE_CERT_UNAVAILABLE");
    assert!(e.to_string().contains("backed off"), "{e}");
    assert!(e.to_string().contains("broker certs import"), "{e}");
    assert_eq!(kds.count(), 1, "a request was sent during the backoff");
    assert_eq!(cache.stats().kds_backoff_refusals, 1);

    // After Retry-After, it recovers.
    std::thread::sleep(Duration::from_millis(1100));
    v.verify(&report, &[], None, today()).unwrap();
    assert_eq!(kds.count(), 4);
}

#[test]
fn kds_rate_limit_refuses_instead_of_waiting() {
    let kds = FakeKds::start();
    serve_real(&kds, "oak-turin-v5", Generation::Turin, turin_chain());
    serve_real(&kds, "oak-genoa-v5", Generation::Genoa, vec![]);
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(CertCache::new(dir.path().to_owned()));
    let mut settings = kds.settings();
    settings.min_interval = Duration::from_secs(30);
    settings.timeout = Duration::from_secs(1);
    let v = verifier(TrustStore::amd(), &cache, settings);
    // The VCEK request goes out; cert_chain and CRL would have to wait 30 s,
    // so they are skipped (the bundled ASK serves).
    v.verify(&read("oak-turin-v5/report.bin"), &[], None, today())
        .unwrap();
    assert_eq!(kds.count(), 1);
    let e = v
        .verify(&read("oak-genoa-v5/report.bin"), &[], None, today())
        .unwrap_err();
    assert_eq!(e.reason_code(), "EVIDENCE_CERT_UNAVAILABLE");
    assert!(e.to_string().contains("rate limit"), "{e}");
    assert_eq!(kds.count(), 1);
}

#[test]
fn kds_is_not_asked_for_vleks() {
    let kds = FakeKds::start();
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(CertCache::new(dir.path().to_owned()));
    let v = verifier(TrustStore::amd(), &cache, kds.settings());
    let e = v
        .verify(
            &read("trustee-aws-milan-vlek-v3/report.bin"),
            &[],
            None,
            at("2025-06-01T00:00:00Z"),
        )
        .unwrap_err();
    assert_eq!(e.reason_code(), "EVIDENCE_CERT_MISSING");
    assert_eq!(kds.count(), 0);
}

// ---- a simulated chain, for revocation ----

fn spl(n: u64, v: u8) -> CustomExtension {
    let content = if v >= 0x80 {
        vec![2, 2, 0, v]
    } else {
        vec![2, 1, v]
    };
    CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 3704, 1, 3, n], content)
}

fn ca_params(cn: &str, serial: u64) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = at("2024-01-01T00:00:00Z");
    p.not_after = at("2040-01-01T00:00:00Z");
    p.serial_number = Some(SerialNumber::from(serial));
    p
}

struct Sim {
    ark: Vec<u8>,
    ask: Vec<u8>,
    vcek: Vec<u8>,
    report: Vec<u8>,
    /// Signed by the ARK, revoking the ASK.
    crl_ark_revoking_ask: Vec<u8>,
    /// Signed by the ASK, revoking the VCEK.
    crl_ask_revoking_vcek: Vec<u8>,
    /// Signed by the ASK, revoking nothing.
    crl_ask_empty: Vec<u8>,
    /// Signed by the ASK, past its nextUpdate.
    crl_ask_stale: Vec<u8>,
    /// Signed by the ASK, issued before the others, revoking nothing.
    crl_ask_older: Vec<u8>,
}

const ASK_SERIAL: u64 = 0x1234;
const VCEK_SERIAL: u64 = 0x77;

fn crl(issuer: &Issuer<'_, &KeyPair>, revoked: &[u64], next: &str) -> Vec<u8> {
    crl_at(issuer, revoked, "2026-01-01T00:00:00Z", next)
}

fn crl_at(issuer: &Issuer<'_, &KeyPair>, revoked: &[u64], this: &str, next: &str) -> Vec<u8> {
    CertificateRevocationListParams {
        this_update: at(this),
        next_update: at(next),
        crl_number: SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: revoked
            .iter()
            .map(|s| RevokedCertParams {
                serial_number: SerialNumber::from(*s),
                revocation_time: at("2026-01-01T00:00:00Z"),
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(issuer)
    .unwrap()
    .der()
    .to_vec()
}

/// ARK-Sim-Milan → SEV-Sim-Milan → SEV-VCEK (serial 0x77), and the virtee v2
/// report re-signed by that VCEK.
fn sim() -> Sim {
    let ark_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
    let ark_params = ca_params("ARK-Sim-Milan", 1);
    let ark = ark_params.self_signed(&ark_key).unwrap().der().to_vec();
    let ark_issuer = Issuer::from_params(&ark_params, &ark_key);
    let ask_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
    let ask_params = ca_params("SEV-Sim-Milan", ASK_SERIAL);
    let ask = ask_params
        .signed_by(&ask_key, &ark_issuer)
        .unwrap()
        .der()
        .to_vec();
    let ask_issuer = Issuer::from_params(&ask_params, &ask_key);

    let mut report = read("virtee-milan-v2/report.bin");
    let vcek_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
    let mut vp = CertificateParams::new(Vec::<String>::new()).unwrap();
    vp.distinguished_name = DistinguishedName::new();
    vp.distinguished_name.push(DnType::CommonName, "SEV-VCEK");
    vp.not_before = at("2024-01-01T00:00:00Z");
    vp.not_after = at("2040-01-01T00:00:00Z");
    vp.serial_number = Some(SerialNumber::from(VCEK_SERIAL));
    let tcb = report[0x180..0x188].to_vec();
    vp.custom_extensions = vec![
        CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 3704, 1, 2], {
            let mut v = vec![0x16, 8];
            v.extend_from_slice(b"Milan-B0");
            v
        }),
        spl(1, tcb[0]),
        spl(2, tcb[1]),
        spl(3, tcb[6]),
        spl(8, tcb[7]),
        CustomExtension::from_oid_content(
            &[1, 3, 6, 1, 4, 1, 3704, 1, 4],
            report[0x1A0..0x1E0].to_vec(),
        ),
    ];
    let vcek = vp.signed_by(&vcek_key, &ask_issuer).unwrap().der().to_vec();
    let signer =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &vcek_key.serialize_der())
            .unwrap();
    let sig = signer
        .sign(&SystemRandom::new(), &report[..SIGNED_LEN])
        .unwrap();
    let sig = sig.as_ref();
    report[0x2A0..0x4A0].fill(0);
    for i in 0..48 {
        report[0x2A0 + i] = sig[47 - i];
        report[0x2E8 + i] = sig[95 - i];
    }
    Sim {
        crl_ark_revoking_ask: crl(&ark_issuer, &[ASK_SERIAL], "2027-01-01T00:00:00Z"),
        crl_ask_revoking_vcek: crl(&ask_issuer, &[VCEK_SERIAL], "2027-01-01T00:00:00Z"),
        crl_ask_empty: crl(&ask_issuer, &[], "2027-01-01T00:00:00Z"),
        crl_ask_stale: crl(&ask_issuer, &[VCEK_SERIAL], "2026-06-01T00:00:00Z"),
        crl_ask_older: crl_at(
            &ask_issuer,
            &[],
            "2025-06-01T00:00:00Z",
            "2027-01-01T00:00:00Z",
        ),
        ark,
        ask,
        vcek,
        report,
    }
}

fn sim_store(s: &Sim) -> TrustStore {
    TrustStore::amd()
        .with_simulated_root(Generation::Milan, &s.ark)
        .unwrap()
}

fn sim_table(s: &Sim) -> Vec<u8> {
    build_cert_table(&[(GUID_VCEK, &s.vcek), (GUID_ASK, &s.ask), (GUID_ARK, &s.ark)])
}

fn items(list: &[(&str, &[u8])]) -> Vec<broker::certsource::import::Item> {
    list.iter()
        .flat_map(|(n, d)| items_from_file(n, d).unwrap())
        .collect()
}

#[test]
fn vcek_on_its_asks_crl_is_refused() {
    let s = sim();
    let store = sim_store(&s);
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(CertCache::new(dir.path().to_owned()));
    let v = Verifier::new(store.clone(), None)
        .with_source(Arc::new(CacheSource::new(cache.clone(), &store)));
    v.verify(&s.report, &sim_table(&s), None, today()).unwrap();

    // Import the ASK (so the ASK's CRL has a known issuer) and its CRL.
    let r = import(
        &cache,
        &store,
        &items(&[("ask.der", &s.ask), ("crl.der", &s.crl_ask_revoking_vcek)]),
        today(),
    );
    assert!(r.iter().all(Result::is_ok), "{r:?}");
    assert!(dir.path().join("sim-milan/crl-ask.der").is_file());
    let e = v
        .verify(&s.report, &sim_table(&s), None, today())
        .unwrap_err();
    assert_eq!(e.reason_code(), "EVIDENCE_CERT_REVOKED");
    // An older CRL cannot replace it (and so cannot lift the revocation).
    let r = import(
        &cache,
        &store,
        &items(&[("old.der", &s.crl_ask_older)]),
        today(),
    );
    let reason = &r[0].as_ref().unwrap_err().reason;
    assert!(reason.contains("older than the one held"), "{reason}");
    assert!(
        e.to_string().contains("VCEK") && e.to_string().contains("77"),
        "{e}"
    );

    // The revoked VCEK itself is refused by import.
    let r = import(&cache, &store, &items(&[("vcek.der", &s.vcek)]), today());
    let reason = &r[0].as_ref().unwrap_err().reason;
    assert!(reason.contains("EVIDENCE_CERT_REVOKED"), "{reason}");

    // A CRL as recent (same thisUpdate) that no longer lists it replaces
    // the held one and lifts the revocation.
    let r = import(
        &cache,
        &store,
        &items(&[("crl2.der", &s.crl_ask_empty)]),
        today(),
    );
    assert!(r[0].is_ok(), "{r:?}");
    v.verify(&s.report, &sim_table(&s), None, today()).unwrap();

    // A stale CRL is refused on import.
    let r = import(
        &cache,
        &store,
        &items(&[("stale.der", &s.crl_ask_stale)]),
        today(),
    );
    let reason = &r[0].as_ref().unwrap_err().reason;
    assert!(
        reason.contains("stale") && reason.contains("EVIDENCE_CRL_INVALID"),
        "{reason}"
    );
}

#[test]
fn ask_on_the_arks_crl_from_kds_is_refused() {
    let s = sim();
    let store = sim_store(&s);
    let kds = FakeKds::start();
    let (chip, tcb) = chip_and_tcb(&s.report);
    kds.serve(&vcek_path(Generation::Milan, &chip, tcb), s.vcek.clone());
    let mut chain = pem_encode("CERTIFICATE", &s.ask);
    chain.push_str(&pem_encode("CERTIFICATE", &s.ark));
    kds.serve("/vcek/v1/Milan/cert_chain", chain.into_bytes());
    kds.serve("/vcek/v1/Milan/crl", s.crl_ark_revoking_ask.clone());
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(CertCache::new(dir.path().to_owned()));
    let v = verifier(store, &cache, kds.settings());
    let e = v.verify(&s.report, &[], None, today()).unwrap_err();
    assert_eq!(e.reason_code(), "EVIDENCE_CERT_REVOKED");
    assert!(e.to_string().contains("ASK"), "{e}");
    assert!(dir.path().join("sim-milan/crl.der").is_file());
    assert!(
        !dir.path().join("sim-milan/vcek").exists(),
        "a VCEK whose chain is revoked was cached"
    );
    assert_eq!(cache.stats().kds_fetched, 0);
}

#[test]
fn import_stores_real_certificates_where_the_verifier_finds_them() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(CertCache::new(dir.path().to_owned()));
    let store = TrustStore::amd();
    let r = import(
        &cache,
        &store,
        &items(&[
            ("vcek.der", &read("oak-genoa-v5/vcek.der")),
            ("ask.pem", &read("oak-genoa-v5/ask.pem")),
            ("ark.pem", &read("oak-genoa-v5/ark.pem")),
        ]),
        today(),
    );
    let r: Vec<_> = r.into_iter().map(Result::unwrap).collect();
    assert!(r[0].what.starts_with("VCEK genoa hwid "), "{}", r[0].what);
    assert!(r[1].what.starts_with("ASK genoa"), "{}", r[1].what);
    assert!(r[2].path.is_none(), "ARKs are pinned, not stored");
    let v = Verifier::new(store.clone(), None)
        .with_source(Arc::new(CacheSource::new(cache.clone(), &store)));
    v.verify(&read("oak-genoa-v5/report.bin"), &[], None, today())
        .unwrap();
    assert_eq!(cache.stats().hits, 1);
    // Another chip's report misses.
    assert_eq!(
        v.verify(&read("oak-turin-v5/report.bin"), &[], None, today())
            .unwrap_err()
            .reason_code(),
        "EVIDENCE_CERT_MISSING"
    );
    assert_eq!(cache.stats().misses, 1);
}

#[test]
fn the_offline_directory_is_reread_only_when_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    let v = Verifier::new(TrustStore::amd(), Some(dir.path().to_owned()));
    let report = read("virtee-milan-v2/report.bin");
    assert_eq!(
        v.verify(&report, &[], None, today())
            .unwrap_err()
            .reason_code(),
        "EVIDENCE_CERT_MISSING"
    );
    std::fs::write(
        dir.path().join("vcek.der"),
        read("virtee-milan-v2/vcek.der"),
    )
    .unwrap();
    v.verify(&report, &[], None, today()).unwrap();
    // Replaced by another chip's VCEK: noticed.
    std::fs::write(
        dir.path().join("vcek.der"),
        read("gosevguest-milan-v2-debug/vcek.der"),
    )
    .unwrap();
    assert_eq!(
        v.verify(&report, &[], None, today())
            .unwrap_err()
            .reason_code(),
        "EVIDENCE_HWID_MISMATCH"
    );
}

// ---- `broker certs` as the real executable ----

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn broker(cwd: &Path, args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_broker"))
        .args(args)
        .current_dir(cwd)
        .env_remove("KEYBROKER_CONFIG")
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn certs_import_and_list() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    std::fs::create_dir(&input).unwrap();
    std::fs::write(input.join("vcek.der"), read("virtee-milan-v2/vcek.der")).unwrap();
    std::fs::copy(
        fixtures().join("virtee-milan-v2/cert_chain_ask_ark.pem"),
        input.join("cert_chain.pem"),
    )
    .unwrap();
    let r = broker(tmp.path(), &["certs", "import", "in", "--cache", "cache"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout
            .contains("imported in/vcek.der: VCEK milan hwid d49554ec"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("-> milan/vcek/d49554ec"), "{}", r.stdout);
    assert!(r.stdout.contains("/0300000000000873.der"), "{}", r.stdout);
    assert!(
        r.stdout.contains("ARK milan (pinned; nothing to store)"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("2 imported, 0 refused"), "{}", r.stdout);

    let r = broker(tmp.path(), &["certs", "list", "--cache", "cache", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let kinds: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, vec!["cert_chain", "vcek"]);

    // The expired VLEK is refused today and imported as of a time inside its validity.
    let r = broker(
        tmp.path(),
        &[
            "certs",
            "import",
            &fixtures()
                .join("trustee-aws-milan-vlek-v3/vlek.der")
                .display()
                .to_string(),
            "--cache",
            "cache",
        ],
    );
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("EVIDENCE_CERT_EXPIRED"), "{}", r.stderr);
    let r = broker(
        tmp.path(),
        &[
            "certs",
            "import",
            &fixtures()
                .join("trustee-aws-milan-vlek-v3/vlek.der")
                .display()
                .to_string(),
            "--cache",
            "cache",
            "--at",
            "2025-06-01T00:00:00Z",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("VLEK milan tcb "), "{}", r.stdout);
}

#[test]
fn certs_import_refuses_bad_input_with_reasons() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // Not a certificate.
    std::fs::write(d.join("notes.txt"), "hello").unwrap();
    let r = broker(d, &["certs", "import", "notes.txt", "--cache", "cache"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("broker: refused notes.txt: not a certificate or CRL"),
        "{}",
        r.stderr
    );
    // A PEM file with an unrelated block.
    std::fs::write(
        d.join("key.pem"),
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let r = broker(d, &["certs", "import", "key.pem", "--cache", "cache"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("without a CERTIFICATE or X509 CRL block"),
        "{}",
        r.stderr
    );
    // A VCEK that does not chain to a pinned ARK (simulated, not configured).
    let s = sim();
    std::fs::write(d.join("sim-vcek.der"), &s.vcek).unwrap();
    let r = broker(d, &["certs", "import", "sim-vcek.der", "--cache", "cache"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("EVIDENCE_CHAIN_SIGNATURE"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("does not chain to the pinned milan ARK"),
        "{}",
        r.stderr
    );
    // A root nobody pinned.
    std::fs::write(d.join("sim-ark.der"), &s.ark).unwrap();
    let r = broker(d, &["certs", "import", "sim-ark.der", "--cache", "cache"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("an ARK that is not pinned"),
        "{}",
        r.stderr
    );
    assert!(!d.join("cache").exists(), "nothing may be stored");
    // An empty directory.
    std::fs::create_dir(d.join("empty")).unwrap();
    let r = broker(d, &["certs", "import", "empty", "--cache", "cache"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("broker: error: empty holds no files; put the certificates"),
        "{}",
        r.stderr
    );
    // A missing path.
    let r = broker(d, &["certs", "import", "nope", "--cache", "cache"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("broker: error: cannot read nope; give a certificate or CRL file"),
        "{}",
        r.stderr
    );
    // No cache named: usage error.
    let r = broker(d, &["certs", "import", "notes.txt"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--config"), "{}", r.stderr);
}

#[test]
fn certs_import_with_config_feeds_report_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    std::fs::write(
        d.join("broker.toml"),
        "[server]\nlisten = \"127.0.0.1:1\"\ntls_cert = \"tls/cert.pem\"\ntls_key = \"tls/key.pem\"\n\n[store]\nkind = \"sqlite\"\npath = \"broker.db\"\n\n[keys]\nmaster_key = \"master.key\"\n",
    )
    .unwrap();
    std::fs::write(d.join("report.bin"), read("oak-turin-v5/report.bin")).unwrap();
    // Before the import the VCEK is missing.
    let r = broker(
        d,
        &["report", "verify", "report.bin", "--config", "broker.toml"],
    );
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("EVIDENCE_CERT_MISSING"), "{}", r.stdout);
    let vcek = fixtures().join("oak-turin-v5/vcek.der");
    let r = broker(
        d,
        &[
            "certs",
            "import",
            &vcek.display().to_string(),
            "--config",
            "broker.toml",
        ],
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(d
        .join("cert-cache/turin/vcek/3b42092f69c656d3/0001000200000047.der")
        .is_file());
    let r = broker(
        d,
        &["report", "verify", "report.bin", "--config", "broker.toml"],
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let r = broker(d, &["certs", "list", "--config", "broker.toml"]);
    assert!(
        r.stdout
            .contains("turin      vcek             hwid 3b42092f69c656d3 tcb 0001000200000047"),
        "{}",
        r.stdout
    );
}

#[test]
fn concurrent_reports_of_a_new_chip_make_one_request() {
    let kds = FakeKds::start();
    serve_real(&kds, "oak-turin-v5", Generation::Turin, turin_chain());
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(CertCache::new(dir.path().to_owned()));
    let v = Arc::new(verifier(TrustStore::amd(), &cache, kds.settings()));
    let report = Arc::new(read("oak-turin-v5/report.bin"));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (v, report) = (v.clone(), report.clone());
            std::thread::spawn(move || v.verify(&report, &[], None, today()).map(|_| ()))
        })
        .collect();
    for t in threads {
        t.join().unwrap().unwrap();
    }
    // One VCEK request, plus cert_chain and CRL once.
    assert_eq!(kds.count(), 3, "{:?}", kds.paths.lock().unwrap());
}
