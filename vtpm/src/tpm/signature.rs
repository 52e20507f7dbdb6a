//! Quote signatures: `TPMT_SIGNATURE` (Part 2 §11.3.4) for RSA keys, and
//! their verification with the attestation key's public half.
//!
//! ```text
//! TPMT_SIGNATURE = sigAlg u16 (TPM_ALG_RSASSA 0x0014 | TPM_ALG_RSAPSS 0x0016)
//!                  hash   u16 (TPM_ALG_SHA256 0x000b)
//!                  sig    TPM2B_PUBLIC_KEY_RSA (u16 size, big-endian signature)
//! ```
//!
//! Azure's vTPM AK signs RSASSA-PKCS1-v1_5 with SHA-256; Azure's tools (and
//! the evidence files in `tests/fixtures/azure-snp-vtpm/`) keep only the
//! raw signature bytes, which [`QuoteSignature::rsassa_sha256`] takes.
//! RSASSA-PSS with SHA-256 is accepted too, with the salt as long as the
//! digest (TPM 2.0 Part 1 §B.7 since revision 1.38) or as long as the key
//! allows (older TPMs).

use super::wire::{Reader, WireError, Writer};
use super::{alg_name, MAX_RSA_KEY_BYTES, TPM_ALG_RSAPSS, TPM_ALG_RSASSA, TPM_ALG_SHA256};
use aws_lc_rs::signature::{
    RsaParameters, RsaPssSaltLength, RsaPublicKeyComponents, RSA_PKCS1_2048_8192_SHA256,
    RSA_PSS_2048_8192_SHA256,
};

/// Smallest RSA modulus accepted for an attestation key, in bits.
pub const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus accepted, in bits (`MAX_RSA_KEY_BYTES` of a TPM).
pub const MAX_RSA_BITS: usize = MAX_RSA_KEY_BYTES * 8;

/// An RSA public key: modulus and public exponent, big-endian, without
/// leading zero bytes (as JWK and aws-lc-rs want them).
#[derive(Clone, PartialEq, Eq)]
pub struct RsaPublicKey {
    n: Vec<u8>,
    e: Vec<u8>,
}

impl std::fmt::Debug for RsaPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RsaPublicKey({} bits, e={}, n={}…)",
            self.bits(),
            hex::encode(&self.e),
            hex::encode(&self.n[..self.n.len().min(8)])
        )
    }
}

/// Why an RSA public key is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RsaKeyError {
    /// The modulus is outside [`MIN_RSA_BITS`]..=[`MAX_RSA_BITS`].
    #[error("modulus is {0} bits; {MIN_RSA_BITS} to {MAX_RSA_BITS} bits are accepted")]
    ModulusSize(usize),
    /// The exponent is zero, even, or longer than 4 bytes.
    #[error("public exponent {0} is not an odd number of at most 32 bits")]
    Exponent(String),
}

impl RsaPublicKey {
    /// A key from its big-endian modulus and exponent. Leading zero bytes
    /// are dropped; sizes are checked.
    pub fn new(n: &[u8], e: &[u8]) -> Result<Self, RsaKeyError> {
        let strip = |b: &[u8]| -> Vec<u8> {
            let first = b.iter().position(|&x| x != 0).unwrap_or(b.len());
            b[first..].to_vec()
        };
        let (n, e) = (strip(n), strip(e));
        let key = RsaPublicKey { n, e };
        let bits = key.bits();
        if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
            return Err(RsaKeyError::ModulusSize(bits));
        }
        if key.e.is_empty() || key.e.len() > 4 || key.e[key.e.len() - 1] & 1 == 0 {
            return Err(RsaKeyError::Exponent(hex::encode(&key.e)));
        }
        Ok(key)
    }

    /// The modulus, big-endian, no leading zeros.
    pub fn modulus(&self) -> &[u8] {
        &self.n
    }

    /// The public exponent, big-endian, no leading zeros.
    pub fn exponent(&self) -> &[u8] {
        &self.e
    }

    /// Size of the modulus in bits.
    pub fn bits(&self) -> usize {
        match self.n.first() {
            None => 0,
            Some(&top) => self.n.len() * 8 - top.leading_zeros() as usize,
        }
    }

    fn verify_with(&self, params: &RsaParameters, message: &[u8], sig: &[u8]) -> bool {
        RsaPublicKeyComponents {
            n: &self.n,
            e: &self.e,
        }
        .verify(params, message, sig)
        .is_ok()
    }
}

/// RSA signature schemes a quote may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RsaScheme {
    /// RSASSA-PKCS1-v1_5 (`TPM_ALG_RSASSA`).
    Ssa,
    /// RSASSA-PSS (`TPM_ALG_RSAPSS`).
    Pss,
}

impl RsaScheme {
    /// The `TPM_ALG_ID`.
    pub fn alg(self) -> u16 {
        match self {
            RsaScheme::Ssa => TPM_ALG_RSASSA,
            RsaScheme::Pss => TPM_ALG_RSAPSS,
        }
    }
}

/// A quote's signature: an RSA scheme with SHA-256 and the signature bytes.
/// The hash is always SHA-256 (the only one accepted), so it is not stored.
#[derive(Clone, PartialEq, Eq)]
pub struct QuoteSignature {
    scheme: RsaScheme,
    sig: Vec<u8>,
}

impl std::fmt::Debug for QuoteSignature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "QuoteSignature({}, {} bytes)",
            self.describe(),
            self.sig.len()
        )
    }
}

impl QuoteSignature {
    /// A raw RSASSA-PKCS1-v1_5/SHA-256 signature, as Azure's tools store it.
    pub fn rsassa_sha256(sig: &[u8]) -> Result<Self, WireError> {
        Self::new(RsaScheme::Ssa, sig)
    }

    fn new(scheme: RsaScheme, sig: &[u8]) -> Result<Self, WireError> {
        if sig.is_empty() || sig.len() > MAX_RSA_KEY_BYTES {
            return Err(WireError::invalid(
                "signature",
                format!(
                    "{} bytes; an RSA signature has 1 to {MAX_RSA_KEY_BYTES}",
                    sig.len()
                ),
            ));
        }
        Ok(QuoteSignature {
            scheme,
            sig: sig.to_vec(),
        })
    }

    /// Parse a marshalled `TPMT_SIGNATURE`; nothing may follow it.
    pub fn parse_tpmt(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        let sig = Self::read_tpmt(&mut r)?;
        r.finish("TPMT_SIGNATURE")?;
        Ok(sig)
    }

    pub(crate) fn read_tpmt(r: &mut Reader<'_>) -> Result<Self, WireError> {
        let alg = r.u16("TPMT_SIGNATURE.sigAlg")?;
        let scheme = match alg {
            TPM_ALG_RSASSA => RsaScheme::Ssa,
            TPM_ALG_RSAPSS => RsaScheme::Pss,
            other => {
                return Err(WireError::invalid(
                    "TPMT_SIGNATURE.sigAlg",
                    format!(
                        "{other:#06x} ({}) is not accepted; the AK must sign with RSASSA or RSAPSS",
                        alg_name(other)
                    ),
                ))
            }
        };
        let hash = r.u16("TPMS_SIGNATURE_RSA.hash")?;
        if hash != TPM_ALG_SHA256 {
            return Err(WireError::invalid(
                "TPMS_SIGNATURE_RSA.hash",
                format!(
                    "{hash:#06x} ({}) is not accepted; only SHA-256 is",
                    alg_name(hash)
                ),
            ));
        }
        let sig = r.tpm2b("TPMS_SIGNATURE_RSA.sig", MAX_RSA_KEY_BYTES)?;
        Self::new(scheme, sig)
    }

    /// The marshalled `TPMT_SIGNATURE`.
    pub fn to_tpmt(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u16(self.scheme.alg())
            .u16(TPM_ALG_SHA256)
            .tpm2b(&self.sig);
        w.into_bytes()
    }

    /// The scheme.
    pub fn scheme(&self) -> RsaScheme {
        self.scheme
    }

    /// The raw signature bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.sig
    }

    /// "RSASSA-SHA256" or "RSAPSS-SHA256".
    pub fn describe(&self) -> &'static str {
        match self.scheme {
            RsaScheme::Ssa => "RSASSA-SHA256",
            RsaScheme::Pss => "RSAPSS-SHA256",
        }
    }

    /// Whether this signature over `message` verifies with `key`.
    pub fn verifies(&self, key: &RsaPublicKey, message: &[u8]) -> bool {
        match self.scheme {
            RsaScheme::Ssa => key.verify_with(&RSA_PKCS1_2048_8192_SHA256, message, &self.sig),
            RsaScheme::Pss => {
                const PSS_MAX_SALT: RsaParameters =
                    RSA_PSS_2048_8192_SHA256.with_pss_salt_length(RsaPssSaltLength::Max);
                key.verify_with(&RSA_PSS_2048_8192_SHA256, message, &self.sig)
                    || key.verify_with(&PSS_MAX_SALT, message, &self.sig)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::rsa::KeySize;
    use aws_lc_rs::signature::{KeyPair, RsaKeyPair, RSA_PKCS1_SHA256, RSA_PSS_SHA256};

    fn key() -> (RsaKeyPair, RsaPublicKey) {
        let kp = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
        let pk = kp.public_key();
        let comps = RsaPublicKeyComponents::<Vec<u8>>::from(pk);
        let pk = RsaPublicKey::new(&comps.n, &comps.e).unwrap();
        (kp, pk)
    }

    fn sign(kp: &RsaKeyPair, pss: bool, msg: &[u8]) -> Vec<u8> {
        let mut sig = vec![0u8; kp.public_modulus_len()];
        let alg = if pss {
            &RSA_PSS_SHA256
        } else {
            &RSA_PKCS1_SHA256
        };
        kp.sign(alg, &SystemRandom::new(), msg, &mut sig).unwrap();
        sig
    }

    #[test]
    fn rsassa_and_pss_verify_and_refuse_changes() {
        let (kp, pk) = key();
        for (pss, alg) in [(false, "0014"), (true, "0016")] {
            let raw = sign(&kp, pss, b"quote");
            let mut tpmt = hex::decode(format!("{alg}000b0100")).unwrap();
            tpmt.extend_from_slice(&raw);
            let sig = QuoteSignature::parse_tpmt(&tpmt).unwrap();
            assert_eq!(sig.to_tpmt(), tpmt);
            assert!(sig.verifies(&pk, b"quote"));
            assert!(!sig.verifies(&pk, b"quotE"));
            let mut bad = raw.clone();
            bad[100] ^= 1;
            let bad = QuoteSignature::new(sig.scheme(), &bad).unwrap();
            assert!(!bad.verifies(&pk, b"quote"));
        }
        // An RSASSA signature presented as PSS (and the reverse) fails.
        let raw = sign(&kp, false, b"q");
        assert!(!QuoteSignature::new(RsaScheme::Pss, &raw)
            .unwrap()
            .verifies(&pk, b"q"));
    }

    #[test]
    fn tpmt_parser_refuses_other_schemes_hashes_and_framing() {
        for (hex_in, want) in [
            ("0018000b0002aabb", "ECDSA"),
            ("0014000c0002aabb", "SHA-384"),
            ("0014000b0000", "0 bytes"),
            ("0014000b0201", "exceeds"),
            ("0014000b0003aabb", "truncated"),
            ("0014000b0001aabb", "after its end"),
            ("0014", "truncated"),
            ("", "truncated"),
        ] {
            let err = QuoteSignature::parse_tpmt(&hex::decode(hex_in).unwrap()).unwrap_err();
            assert!(err.to_string().contains(want), "{hex_in}: {err}");
        }
    }

    #[test]
    fn keys_are_canonicalised_and_bounded() {
        let (_, pk) = key();
        let mut padded = vec![0u8, 0];
        padded.extend_from_slice(pk.modulus());
        let again = RsaPublicKey::new(&padded, &[0, 1, 0, 1]).unwrap();
        assert_eq!(again, pk);
        assert_eq!(again.bits(), 2048);
        assert!(matches!(
            RsaPublicKey::new(&pk.modulus()[1..], &[1, 0, 1]),
            Err(RsaKeyError::ModulusSize(2033..=2040))
        ));
        assert!(matches!(
            RsaPublicKey::new(pk.modulus(), &[1, 0, 0]),
            Err(RsaKeyError::Exponent(_))
        ));
        assert!(matches!(
            RsaPublicKey::new(pk.modulus(), &[]),
            Err(RsaKeyError::Exponent(_))
        ));
    }
}
