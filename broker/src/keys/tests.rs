//! Keys-at-rest tests: round trip, AAD binding, tamper, file modes, and no
//! secret in Debug or error output.

use super::*;
use std::os::unix::fs::PermissionsExt;

#[test]
fn round_trip() {
    let m = MasterKey::generate().unwrap();
    let k = VolumeKey::generate();
    let s = seal(&m, "root", 1, &k).unwrap();
    assert_eq!(s.master_key_id, m.id());
    assert_eq!(s.ciphertext.len(), VOLUME_KEY_LEN + TAG_LEN);
    let back = unseal(&m, "root", 1, &s).unwrap();
    assert!(back.ct_eq(&k));
    assert_eq!(back.expose_secret(), k.expose_secret());
}

#[test]
fn fresh_keys_and_nonces_differ() {
    let m = MasterKey::generate().unwrap();
    let a = VolumeKey::generate();
    let b = VolumeKey::generate();
    assert!(!a.ct_eq(&b));
    let s1 = seal(&m, "v", 1, &a).unwrap();
    let s2 = seal(&m, "v", 1, &a).unwrap();
    assert_ne!(s1.nonce, s2.nonce);
    assert_ne!(s1.ciphertext, s2.ciphertext);
    assert_ne!(MasterKey::generate().unwrap().id(), m.id());
}

#[test]
fn aad_binds_volume_version_and_master() {
    let m = MasterKey::generate().unwrap();
    let k = VolumeKey::generate();
    let s = seal(&m, "data", 7, &k).unwrap();
    assert!(matches!(
        unseal(&m, "data2", 7, &s),
        Err(KeyError::Unseal { ref volume, version: 7 }) if volume == "data2"
    ));
    // Length prefix: "dat" + "a..." style ambiguity cannot collide.
    assert!(unseal(&m, "dat", 7, &s).is_err());
    assert!(matches!(
        unseal(&m, "data", 8, &s),
        Err(KeyError::Unseal { .. })
    ));
    let other = MasterKey::generate().unwrap();
    assert!(matches!(
        unseal(&other, "data", 7, &s),
        Err(KeyError::WrongMasterKey { .. })
    ));
    // Even with the id forged to match, another master key cannot open it.
    let mut forged = s.clone();
    forged.master_key_id = other.id();
    assert!(matches!(
        unseal(&other, "data", 7, &forged),
        Err(KeyError::Unseal { .. })
    ));
    // And relabelling the record's master id under the right key fails too.
    let mut relabelled = s.clone();
    relabelled.master_key_id = MasterKeyId::from_bytes([0; 16]);
    assert!(unseal(&m, "data", 7, &relabelled).is_err());
    assert!(unseal(&m, "data", 7, &s).is_ok());
}

#[test]
fn tamper_refused() {
    let m = MasterKey::generate().unwrap();
    let s = seal(&m, "v", 1, &VolumeKey::generate()).unwrap();
    for i in 0..s.ciphertext.len() {
        let mut t = s.clone();
        t.ciphertext[i] ^= 0x01;
        assert!(
            matches!(unseal(&m, "v", 1, &t), Err(KeyError::Unseal { .. })),
            "byte {i}"
        );
    }
    for i in 0..s.nonce.len() {
        let mut t = s.clone();
        t.nonce[i] ^= 0x80;
        assert!(unseal(&m, "v", 1, &t).is_err(), "nonce byte {i}");
    }
    let mut t = s.clone();
    t.ciphertext.truncate(79);
    assert!(matches!(
        unseal(&m, "v", 1, &t),
        Err(KeyError::Malformed { .. })
    ));
    let mut t = s.clone();
    t.ciphertext.push(0);
    assert!(matches!(
        unseal(&m, "v", 1, &t),
        Err(KeyError::Malformed { .. })
    ));
}

#[test]
fn master_key_file_created_0600_exclusive_and_loads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.key");
    let m = MasterKey::generate_to_file(&path).unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.len(), 32);
    let loaded = MasterKey::load(&path).unwrap();
    assert_eq!(loaded.id(), m.id());
    assert_eq!(loaded.expose_secret(), m.expose_secret());
    // Never overwritten.
    let before = std::fs::read(&path).unwrap();
    assert!(matches!(
        MasterKey::generate_to_file(&path),
        Err(KeyError::AlreadyExists { .. })
    ));
    assert_eq!(std::fs::read(&path).unwrap(), before);
    // A record sealed before reload opens after it.
    let k = VolumeKey::generate();
    let s = seal(&m, "v", 1, &k).unwrap();
    assert!(unseal(&loaded, "v", 1, &s).unwrap().ct_eq(&k));
}

#[test]
fn master_key_load_refuses_loose_modes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.key");
    MasterKey::generate_to_file(&path).unwrap();
    for mode in [0o640, 0o604, 0o644, 0o660, 0o601] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        let e = MasterKey::load(&path).err().expect("loose mode accepted");
        assert!(
            matches!(e, KeyError::InsecurePermissions { .. }),
            "{mode:o}"
        );
        assert!(e.to_string().contains("chmod 600"), "{e}");
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
    assert!(MasterKey::load(&path).is_ok());
}

#[test]
fn master_key_load_refuses_wrong_length_and_non_files() {
    let dir = tempfile::tempdir().unwrap();
    for len in [0usize, 31, 33, 64] {
        let path = dir.path().join(format!("k{len}"));
        std::fs::write(&path, vec![7u8; len]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = MasterKey::load(&path).err().expect("wrong length accepted");
        assert!(
            matches!(e, KeyError::WrongLength { len: l, .. } if l == len as u64),
            "{e}"
        );
    }
    let e = MasterKey::load(&dir.path().join("missing")).err().unwrap();
    assert!(matches!(e, KeyError::Io { .. }));
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let e = MasterKey::load(dir.path()).err().unwrap();
    assert!(matches!(e, KeyError::NotAFile { .. }), "{e}");
}

#[test]
fn no_secret_in_debug_or_errors() {
    let m = MasterKey::generate().unwrap();
    let k = VolumeKey::generate();
    let s = seal(&m, "vol", 3, &k).unwrap();
    let key_hex = hex::encode(k.expose_secret());
    let master_hex = hex::encode(m.expose_secret());
    let dbg = format!("{s:?}");
    assert!(dbg.contains(&m.id().to_hex()));
    let mut texts = vec![dbg];
    let mut t = s.clone();
    t.ciphertext[0] ^= 1;
    let errs = [
        unseal(&m, "vol", 3, &t).err().unwrap(),
        unseal(&MasterKey::generate().unwrap(), "vol", 3, &s)
            .err()
            .unwrap(),
        unseal(&m, "other", 3, &s).err().unwrap(),
    ];
    for e in &errs {
        texts.push(format!("{e}"));
        texts.push(format!("{e:?}"));
    }
    for text in texts {
        for secret in [&key_hex, &master_hex] {
            // Any 8-byte window of a secret would be a leak.
            for w in 0..secret.len() / 16 {
                let window = &secret[w * 16..w * 16 + 16];
                assert!(!text.to_lowercase().contains(window), "leak in {text}");
            }
        }
    }
}

#[test]
fn master_key_id_hex_round_trip() {
    let m = MasterKey::generate().unwrap();
    let id = m.id();
    assert_eq!(MasterKeyId::from_hex(&id.to_hex()), Some(id));
    assert_eq!(MasterKeyId::from_slice(id.as_bytes()), Some(id));
    assert_eq!(MasterKeyId::from_slice(&[0; 15]), None);
    assert_eq!(MasterKeyId::from_hex("zz"), None);
    // The id is a function of the key: a domain-separated SHA-256 prefix.
    let d = digest::digest(
        &digest::SHA256,
        &[MASTER_ID_LABEL, &m.expose_secret()[..]].concat(),
    );
    assert_eq!(&d.as_ref()[..16], id.as_bytes());
}
