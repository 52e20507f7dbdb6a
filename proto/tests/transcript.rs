//! REPORT_DATA transcript: a known answer built by hand from the byte layout
//! in docs/protocol.md, and sensitivity to every input.

use keybroker_proto::{report_data, GuestPublicKey, Nonce, VolumeIds};

fn nonce() -> Nonce {
    Nonce::from_bytes(std::array::from_fn(|i| i as u8)) // 00 01 .. 1f
}

fn key() -> GuestPublicKey {
    GuestPublicKey::from_bytes(std::array::from_fn(|i| 0x20 + i as u8)) // 20 .. 3f
}

fn vols(v: &[&str]) -> VolumeIds {
    VolumeIds::parse(v).unwrap()
}

/// The example of docs/protocol.md ("Worked example"), assembled byte by
/// byte without the crate's encoder.
#[test]
fn known_answer_from_documented_layout() {
    let mut t: Vec<u8> = Vec::new();
    t.extend_from_slice(&[0, 0, 0, 28]);
    t.extend_from_slice(b"keybroker/v1/snp-report-data");
    t.extend_from_slice(&[0, 0, 0, 1]); // major
    t.extend_from_slice(&[0, 0, 0, 0]); // transcript revision
    t.extend_from_slice(&[0, 0, 0, 32]);
    t.extend(0u8..32); // nonce
    t.extend_from_slice(&[0, 0, 0, 32]);
    t.extend(0x20u8..0x40); // guest public key
    t.extend_from_slice(&[0, 0, 0, 2]); // volume count
    t.extend_from_slice(&[0, 0, 0, 4]);
    t.extend_from_slice(b"root");
    t.extend_from_slice(&[0, 0, 0, 6]);
    t.extend_from_slice(b"data-1");
    assert_eq!(t.len(), 134);

    let by_hand = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA512, &t);
    // The same value, as printed in docs/protocol.md.
    let documented = hex::decode(
        "621b60a01854d69cf9dc2f1ca6ce14ddd7ba4b1a797deb4b5b511df69beb35c2\
         17d33eadc75c5e0c834a7aeee6a5cdec99a7f039a992b7551f964c3278a8a102",
    )
    .unwrap();
    assert_eq!(by_hand.as_ref(), &documented[..]);

    let rd = report_data(&nonce(), &key(), &vols(&["root", "data-1"]));
    assert_eq!(&rd.as_bytes()[..], &documented[..]);
}

#[test]
fn every_input_changes_the_output() {
    let base = report_data(&nonce(), &key(), &vols(&["root", "data-1"]));

    for i in [0, 17, 31] {
        let mut n = *nonce().as_bytes();
        n[i] ^= 1;
        let other = report_data(&Nonce::from_bytes(n), &key(), &vols(&["root", "data-1"]));
        assert_ne!(base, other, "nonce byte {i}");
    }
    for i in [0, 9, 31] {
        let mut k = *key().as_bytes();
        k[i] ^= 0x80;
        let other = report_data(
            &nonce(),
            &GuestPublicKey::from_bytes(k),
            &vols(&["root", "data-1"]),
        );
        assert_ne!(base, other, "key byte {i}");
    }
    // Volume order, name, count.
    assert_ne!(
        base,
        report_data(&nonce(), &key(), &vols(&["data-1", "root"]))
    );
    assert_ne!(
        base,
        report_data(&nonce(), &key(), &vols(&["root", "data-2"]))
    );
    assert_ne!(
        base,
        report_data(&nonce(), &key(), &vols(&["Root", "data-1"]))
    );
    assert_ne!(base, report_data(&nonce(), &key(), &vols(&["root"])));
    assert_ne!(
        base,
        report_data(&nonce(), &key(), &vols(&["root", "data-1", "x"]))
    );
    // Deterministic.
    assert_eq!(
        base,
        report_data(&nonce(), &key(), &vols(&["root", "data-1"]))
    );
}

#[test]
fn ambiguous_splits_differ() {
    let n = nonce();
    let k = key();
    assert_ne!(
        report_data(&n, &k, &vols(&["ab", "c"])),
        report_data(&n, &k, &vols(&["a", "bc"]))
    );
    assert_ne!(
        report_data(&n, &k, &vols(&["abc"])),
        report_data(&n, &k, &vols(&["a", "bc"]))
    );
    assert_ne!(
        report_data(&n, &k, &vols(&["a.b"])),
        report_data(&n, &k, &vols(&["a", "b"]))
    );
}
