//! HPKE (RFC 9180) checks of the wrapping suite.
//!
//! 1. The official RFC 9180 test vectors in `tests/data/` (see
//!    `tests/data/PROVENANCE.md`) are opened with rustls' aws-lc-rs HPKE, in
//!    the style of `rustls-provider-test/tests/hpke.rs`: every encryption, in
//!    sequence order, plus a seal/open round trip.
//! 2. A small from-the-RFC reference implementation of the base-mode receiver
//!    and sender (written here from RFC 9180 sections 4 and 5, on raw X25519,
//!    HMAC and AES-GCM) is first checked against every intermediate value of
//!    the official vector, then used to open what `wrap_volume_key` sealed and
//!    to seal what `unwrap_volume_key` must open, for the exact suite in use
//!    (X25519 / HKDF-SHA256 / AES-256-GCM), with `info` and `aad` assembled by
//!    hand from docs/protocol.md.
//! 3. Malformed input: `enc` of the wrong length, truncated ciphertext,
//!    flipped tag and `enc` bytes, a low-order public key.

use std::fs::File;

use aws_lc_rs::{aead, agreement, hmac};
use keybroker_proto::{
    wrap_volume_key, GuestKeyPair, GuestPublicKey, ReportData, VolumeId, WrapError,
};
use rustls::crypto::aws_lc_rs::hpke as suites;
use rustls::crypto::hpke::{EncapsulatedSecret, Hpke, HpkePrivateKey, HpkePublicKey};
use serde::Deserialize;

#[derive(Deserialize, Debug)]
struct TestVector {
    mode: u8,
    kem_id: u16,
    kdf_id: u16,
    aead_id: u16,
    info: String,
    #[serde(rename = "pkRm")]
    pk_rm: String,
    #[serde(rename = "skRm")]
    sk_rm: String,
    #[serde(rename = "pkEm")]
    pk_em: String,
    enc: String,
    shared_secret: String,
    key_schedule_context: String,
    secret: String,
    key: String,
    base_nonce: String,
    encryptions: Vec<TestEncryption>,
}

#[derive(Deserialize, Debug)]
struct TestEncryption {
    aad: String,
    ct: String,
    nonce: String,
    pt: String,
}

fn h(s: &str) -> Vec<u8> {
    hex::decode(s).expect("hex in test vector")
}

fn test_vectors() -> Vec<TestVector> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/rfc9180-x25519-sha256-base.json"
    );
    serde_json::from_reader(File::open(path).expect("open test vectors")).expect("parse vectors")
}

/// The rustls suite for a vector, if rustls' aws-lc-rs provider has it.
fn suite_for(v: &TestVector) -> Option<&'static dyn Hpke> {
    if v.mode != 0 {
        return None;
    }
    match (v.kem_id, v.kdf_id, v.aead_id) {
        (0x20, 1, 1) => Some(suites::DH_KEM_X25519_HKDF_SHA256_AES_128),
        (0x20, 1, 2) => Some(suites::DH_KEM_X25519_HKDF_SHA256_AES_256),
        (0x20, 1, 3) => Some(suites::DH_KEM_X25519_HKDF_SHA256_CHACHA20_POLY1305),
        _ => None,
    }
}

#[test]
fn rfc9180_vectors_open_with_rustls() {
    let mut tested = 0;
    for (idx, v) in test_vectors().iter().enumerate() {
        let Some(suite) = suite_for(v) else {
            println!(
                "skipping vector {idx}: mode {} kem {:#x} kdf {} aead {} not applicable",
                v.mode, v.kem_id, v.kdf_id, v.aead_id
            );
            continue;
        };
        println!("testing vector {idx}: {suite:?}");
        let sk_r = HpkePrivateKey::from(h(&v.sk_rm));
        let pk_r = HpkePublicKey(h(&v.pk_rm));
        let info = h(&v.info);
        let enc = EncapsulatedSecret(h(&v.enc));

        // Every encryption, in sequence order, through one opener context.
        let mut opener = suite.setup_opener(&enc, &info, &sk_r).unwrap();
        for (seq, e) in v.encryptions.iter().enumerate() {
            let pt = opener
                .open(&h(&e.aad), &h(&e.ct))
                .unwrap_or_else(|_| panic!("vector {idx} encryption {seq} did not open"));
            assert_eq!(pt, h(&e.pt), "vector {idx} encryption {seq}");
        }
        // Sequence number 0 single-shot, as `unwrap_volume_key` uses it.
        let first = &v.encryptions[0];
        let pt = suite
            .open(&enc, &info, &h(&first.aad), &h(&first.ct), &sk_r)
            .unwrap();
        assert_eq!(pt, h(&first.pt));
        // Opening out of order fails (seq 1 ciphertext at seq 0).
        assert!(suite
            .open(
                &enc,
                &info,
                &h(&v.encryptions[1].aad),
                &h(&v.encryptions[1].ct),
                &sk_r
            )
            .is_err());

        // Round trip to the vector's recipient key.
        for e in &v.encryptions {
            let (enc2, ct) = suite.seal(&info, &h(&e.aad), &h(&e.pt), &pk_r).unwrap();
            let pt = suite.open(&enc2, &info, &h(&e.aad), &ct, &sk_r).unwrap();
            assert_eq!(pt, h(&e.pt));
        }
        tested += 1;
    }
    assert!(tested > 0, "no applicable RFC 9180 vector was tested");
}

// ---------------------------------------------------------------------------
// Reference HPKE base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-GCM,
// written from RFC 9180 (sections 4.1, 5.1, 5.2, 7.1.3) for cross-checking.

struct Ref {
    aead_id: u16,
    nk: usize,
}

const REF_AES_128: Ref = Ref { aead_id: 1, nk: 16 };
const REF_AES_256: Ref = Ref { aead_id: 2, nk: 32 };

fn hmac_sha256(key: &[u8], data: &[&[u8]]) -> Vec<u8> {
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut ctx = hmac::Context::with_key(&k);
    for d in data {
        ctx.update(d);
    }
    ctx.sign().as_ref().to_vec()
}

fn extract(salt: &[u8], ikm: &[&[u8]]) -> Vec<u8> {
    let zeros = [0u8; 32];
    hmac_sha256(if salt.is_empty() { &zeros } else { salt }, ikm)
}

fn expand(prk: &[u8], info: &[&[u8]], len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut t = Vec::new();
    let mut i = 1u8;
    while out.len() < len {
        let mut parts: Vec<&[u8]> = vec![&t];
        parts.extend_from_slice(info);
        let c = [i];
        parts.push(&c);
        t = hmac_sha256(prk, &parts);
        out.extend_from_slice(&t);
        i += 1;
    }
    out.truncate(len);
    out
}

fn labeled_extract(suite_id: &[u8], salt: &[u8], label: &[u8], ikm: &[u8]) -> Vec<u8> {
    extract(salt, &[b"HPKE-v1", suite_id, label, ikm])
}

fn labeled_expand(suite_id: &[u8], prk: &[u8], label: &[u8], info: &[u8], len: usize) -> Vec<u8> {
    let l = u16::try_from(len).unwrap().to_be_bytes();
    expand(prk, &[&l, b"HPKE-v1", suite_id, label, info], len)
}

fn x25519(sk: &[u8], pk: &[u8]) -> Vec<u8> {
    let sk = agreement::PrivateKey::from_private_key(&agreement::X25519, sk).unwrap();
    agreement::agree(
        &sk,
        agreement::UnparsedPublicKey::new(&agreement::X25519, pk),
        (),
        |k| Ok(k.to_vec()),
    )
    .expect("X25519")
}

fn x25519_public(sk: &[u8]) -> Vec<u8> {
    let sk = agreement::PrivateKey::from_private_key(&agreement::X25519, sk).unwrap();
    sk.compute_public_key().unwrap().as_ref().to_vec()
}

struct Schedule {
    shared_secret: Vec<u8>,
    key_schedule_context: Vec<u8>,
    secret: Vec<u8>,
    key: Vec<u8>,
    base_nonce: Vec<u8>,
}

impl Ref {
    fn hpke_suite_id(&self) -> Vec<u8> {
        let mut s = b"HPKE".to_vec();
        s.extend_from_slice(&0x20u16.to_be_bytes());
        s.extend_from_slice(&1u16.to_be_bytes());
        s.extend_from_slice(&self.aead_id.to_be_bytes());
        s
    }

    /// DHKEM ExtractAndExpand (4.1) and KeySchedule (5.1), mode_base.
    fn schedule(&self, dh: &[u8], enc: &[u8], pk_r: &[u8], info: &[u8]) -> Schedule {
        let kem_id = [b"KEM".as_slice(), &0x20u16.to_be_bytes()].concat();
        let kem_context = [enc, pk_r].concat();
        let eae_prk = labeled_extract(&kem_id, b"", b"eae_prk", dh);
        let shared_secret = labeled_expand(&kem_id, &eae_prk, b"shared_secret", &kem_context, 32);

        let sid = self.hpke_suite_id();
        let psk_id_hash = labeled_extract(&sid, b"", b"psk_id_hash", b"");
        let info_hash = labeled_extract(&sid, b"", b"info_hash", info);
        let key_schedule_context = [&[0u8][..], &psk_id_hash, &info_hash].concat();
        let secret = labeled_extract(&sid, &shared_secret, b"secret", b"");
        let key = labeled_expand(&sid, &secret, b"key", &key_schedule_context, self.nk);
        let base_nonce = labeled_expand(&sid, &secret, b"base_nonce", &key_schedule_context, 12);
        Schedule {
            shared_secret,
            key_schedule_context,
            secret,
            key,
            base_nonce,
        }
    }

    fn aead_key(&self, key: &[u8]) -> aead::LessSafeKey {
        let alg = if self.nk == 16 {
            &aead::AES_128_GCM
        } else {
            &aead::AES_256_GCM
        };
        aead::LessSafeKey::new(aead::UnboundKey::new(alg, key).unwrap())
    }

    fn nonce(base: &[u8], seq: u64) -> aead::Nonce {
        let mut n: [u8; 12] = base.try_into().unwrap();
        for (b, s) in n[4..].iter_mut().zip(seq.to_be_bytes()) {
            *b ^= s;
        }
        aead::Nonce::assume_unique_for_key(n)
    }

    /// Receiver: single-shot open at sequence number `seq`.
    fn open(
        &self,
        sk_r: &[u8],
        enc: &[u8],
        info: &[u8],
        aad: &[u8],
        ct: &[u8],
        seq: u64,
    ) -> Option<Vec<u8>> {
        let pk_r = x25519_public(sk_r);
        let s = self.schedule(&x25519(sk_r, enc), enc, &pk_r, info);
        let mut buf = ct.to_vec();
        let pt = self
            .aead_key(&s.key)
            .open_in_place(
                Self::nonce(&s.base_nonce, seq),
                aead::Aad::from(aad),
                &mut buf,
            )
            .ok()?;
        Some(pt.to_vec())
    }

    /// Sender with a given ephemeral private key: (enc, ct) at sequence 0.
    fn seal(
        &self,
        sk_e: &[u8],
        pk_r: &[u8],
        info: &[u8],
        aad: &[u8],
        pt: &[u8],
    ) -> (Vec<u8>, Vec<u8>) {
        let enc = x25519_public(sk_e);
        let s = self.schedule(&x25519(sk_e, pk_r), &enc, pk_r, info);
        let mut buf = pt.to_vec();
        self.aead_key(&s.key)
            .seal_in_place_append_tag(
                Self::nonce(&s.base_nonce, 0),
                aead::Aad::from(aad),
                &mut buf,
            )
            .unwrap();
        (enc, buf)
    }
}

#[test]
fn reference_implementation_matches_rfc9180_vector() {
    let vectors = test_vectors();
    let v = vectors
        .iter()
        .find(|v| (v.mode, v.kem_id, v.kdf_id, v.aead_id) == (0, 0x20, 1, 1))
        .expect("the X25519/SHA-256/AES-128-GCM base vector is stored");
    let sk_r = h(&v.sk_rm);
    let enc = h(&v.enc);
    assert_eq!(x25519_public(&sk_r), h(&v.pk_rm));
    assert_eq!(enc, h(&v.pk_em));
    let s = REF_AES_128.schedule(&x25519(&sk_r, &enc), &enc, &h(&v.pk_rm), &h(&v.info));
    assert_eq!(s.shared_secret, h(&v.shared_secret));
    assert_eq!(s.key_schedule_context, h(&v.key_schedule_context));
    assert_eq!(s.secret, h(&v.secret));
    assert_eq!(s.key, h(&v.key));
    assert_eq!(s.base_nonce, h(&v.base_nonce));
    for (seq, e) in v.encryptions.iter().enumerate() {
        let seq = seq as u64;
        let mut n = [0u8; 12];
        n.copy_from_slice(&h(&v.base_nonce));
        for (b, x) in n[4..].iter_mut().zip(seq.to_be_bytes()) {
            *b ^= x;
        }
        assert_eq!(n.to_vec(), h(&e.nonce));
        let pt = REF_AES_128
            .open(&sk_r, &enc, &h(&v.info), &h(&e.aad), &h(&e.ct), seq)
            .unwrap();
        assert_eq!(pt, h(&e.pt));
    }
}

fn vol(s: &str) -> VolumeId {
    VolumeId::new(s).unwrap()
}

/// info and aad exactly as docs/protocol.md lays them out.
fn doc_info(rd: &[u8; 64]) -> Vec<u8> {
    [b"keybroker/v1/wrap".as_slice(), rd].concat()
}

fn doc_aad(volume: &str, version: u32) -> Vec<u8> {
    let mut a = (volume.len() as u32).to_be_bytes().to_vec();
    a.extend_from_slice(volume.as_bytes());
    a.extend_from_slice(&version.to_be_bytes());
    a
}

#[test]
fn wrapped_key_opens_with_reference_implementation() {
    // A recipient key the reference side knows the private half of.
    let sk_r = h("4612c550263fc8ad58375df3f557aac531d26850903e55a9f23f21d8534e8ac8");
    let pk_r: [u8; 32] = x25519_public(&sk_r).try_into().unwrap();
    let rd = [0x42u8; 64];
    let key: Vec<u8> = (0u8..64).collect();

    let w = wrap_volume_key(
        &GuestPublicKey::from_bytes(pk_r),
        &ReportData::from_bytes(rd),
        &vol("root"),
        7,
        &key,
    )
    .unwrap();
    assert_eq!(w.enc.len(), 32);
    assert_eq!(w.ciphertext.len(), 64 + 16);
    let pt = REF_AES_256
        .open(
            &sk_r,
            &w.enc,
            &doc_info(&rd),
            &doc_aad("root", 7),
            &w.ciphertext,
            0,
        )
        .expect("reference receiver opens wrap_volume_key output");
    assert_eq!(pt, key);
    // The same bytes under AES-128 parameters (another suite id and key size) must not open.
    assert!(REF_AES_128
        .open(
            &sk_r,
            &w.enc,
            &doc_info(&rd),
            &doc_aad("root", 7),
            &w.ciphertext,
            0
        )
        .is_none());
}

#[test]
fn reference_sealed_key_unwraps() {
    let kp = GuestKeyPair::generate().unwrap();
    let rd = [0x17u8; 64];
    let key = [0xa5u8; 64];
    let sk_e = h("52c4a758a802cd8b936eceea314432798d5baf2d7e9235dc084ab1b9cfa2f736");
    let (enc, ct) = REF_AES_256.seal(
        &sk_e,
        kp.public().as_bytes(),
        &doc_info(&rd),
        &doc_aad("data.1", 2),
        &key,
    );
    let got = kp
        .unwrap_volume_key(&ReportData::from_bytes(rd), &vol("data.1"), 2, &enc, &ct)
        .unwrap();
    assert_eq!(&got[..], &key[..]);
    assert_eq!(
        kp.unwrap_volume_key(&ReportData::from_bytes(rd), &vol("data.1"), 3, &enc, &ct),
        Err(WrapError::Open)
    );
}

// ---------------------------------------------------------------------------
// Malformed input.

fn fixture() -> (GuestKeyPair, ReportData, VolumeId, Vec<u8>, Vec<u8>) {
    let kp = GuestKeyPair::generate().unwrap();
    let rd = ReportData::from_bytes([3; 64]);
    let v = vol("swap");
    let w = wrap_volume_key(&kp.public(), &rd, &v, 1, &[9; 64]).unwrap();
    (kp, rd, v, w.enc, w.ciphertext)
}

#[test]
fn enc_of_wrong_length_is_refused() {
    let (kp, rd, v, enc, ct) = fixture();
    for len in [0, 1, 31, 33, 65] {
        let mut e = enc.clone();
        e.resize(len, 0);
        assert_eq!(
            kp.unwrap_volume_key(&rd, &v, 1, &e, &ct),
            Err(WrapError::BadEncLength { got: len })
        );
    }
}

#[test]
fn truncated_ciphertext_is_refused() {
    let (kp, rd, v, enc, ct) = fixture();
    assert!(matches!(
        kp.unwrap_volume_key(&rd, &v, 1, &enc, &[]),
        Err(WrapError::BadCiphertextLength { got: 0 })
    ));
    assert!(matches!(
        kp.unwrap_volume_key(&rd, &v, 1, &enc, &ct[..16]),
        Err(WrapError::BadCiphertextLength { got: 16 })
    ));
    for cut in [1, 15, 16, 17, 63] {
        assert_eq!(
            kp.unwrap_volume_key(&rd, &v, 1, &enc, &ct[..ct.len() - cut]),
            Err(WrapError::Open),
            "cut {cut}"
        );
    }
}

#[test]
fn flipped_bytes_are_refused() {
    let (kp, rd, v, enc, ct) = fixture();
    // Every tag byte, the first and last key byte.
    for i in (ct.len() - 16..ct.len()).chain([0, ct.len() - 17]) {
        let mut bad = ct.clone();
        bad[i] ^= 0x01;
        assert_eq!(
            kp.unwrap_volume_key(&rd, &v, 1, &enc, &bad),
            Err(WrapError::Open),
            "byte {i}"
        );
    }
    let mut bad_enc = enc.clone();
    bad_enc[5] ^= 0x80;
    assert_eq!(
        kp.unwrap_volume_key(&rd, &v, 1, &bad_enc, &ct),
        Err(WrapError::Open)
    );
    // Unchanged input still opens.
    assert!(kp.unwrap_volume_key(&rd, &v, 1, &enc, &ct).is_ok());
}

#[test]
fn low_order_public_key_is_refused() {
    let rd = ReportData::from_bytes([0; 64]);
    // The all-zero point and the order-8 point (RFC 7748 section 6.1 inputs
    // give an all-zero shared secret, which RFC 9180 7.1.4 says to reject).
    for pk in [[0u8; 32], {
        let mut p = [0u8; 32];
        p[0] = 1;
        p
    }] {
        assert_eq!(
            wrap_volume_key(&GuestPublicKey::from_bytes(pk), &rd, &vol("a"), 0, &[1; 64]),
            Err(WrapError::Seal),
            "{pk:02x?}"
        );
    }
}
