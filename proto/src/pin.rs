//! The pin of a broker's TLS key: SHA-256 of its certificate's
//! SubjectPublicKeyInfo (DER), as guests pin it instead of trusting a CA
//! (clevis/tang style). The broker prints it (`broker init`, `broker
//! serve`); the guest records it in its tokens and compares it with the key
//! the broker presents. Both compute it here.
//!
//! Written `sha256:<64 hex digits>`; `sha256:<base64 of the 32 bytes>`
//! (standard or URL-safe alphabet, padding optional) is read too.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;

/// SHA-256 of a DER SubjectPublicKeyInfo.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpkiPin([u8; 32]);

/// Why text or a certificate gave no pin. Messages say what is expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PinError {
    /// The text does not start with `sha256:`.
    #[error("a pin starts with \"sha256:\" followed by the SubjectPublicKeyInfo digest in hex or base64")]
    Prefix,
    /// The digest is neither hex nor base64.
    #[error("the digest is neither 64 hex digits nor base64")]
    Encoding,
    /// The digest is not 32 bytes.
    #[error("a SHA-256 digest is 32 bytes, this one is {0}")]
    Length(usize),
    /// The certificate's DER does not lead to a SubjectPublicKeyInfo.
    #[error("not a DER X.509 certificate: {0}")]
    Certificate(&'static str),
}

impl SpkiPin {
    /// The text prefix.
    pub const PREFIX: &'static str = "sha256:";

    /// Wraps a digest.
    pub fn from_digest(d: [u8; 32]) -> Self {
        Self(d)
    }

    /// The pin of a DER SubjectPublicKeyInfo.
    pub fn of_spki(spki_der: &[u8]) -> Self {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, spki_der);
        let mut b = [0u8; 32];
        b.copy_from_slice(d.as_ref());
        Self(b)
    }

    /// The pin of a DER X.509 certificate's key.
    pub fn of_certificate(cert_der: &[u8]) -> Result<Self, PinError> {
        Ok(Self::of_spki(certificate_spki(cert_der)?))
    }

    /// The digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for SpkiPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(Self::PREFIX)?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for SpkiPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for SpkiPin {
    type Err = PinError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let body = s.strip_prefix(Self::PREFIX).ok_or(PinError::Prefix)?;
        let bytes = if body.len() == 64 && body.bytes().all(|b| b.is_ascii_hexdigit()) {
            body.as_bytes()
                .chunks(2)
                .map(|p| {
                    let hi = char::from(p[0]).to_digit(16).unwrap_or(0);
                    let lo = char::from(p[1]).to_digit(16).unwrap_or(0);
                    (hi * 16 + lo) as u8
                })
                .collect()
        } else {
            let trimmed = body.trim_end_matches('=');
            base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(trimmed)
                .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(trimmed))
                .map_err(|_| PinError::Encoding)?
        };
        let d: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| PinError::Length(bytes.len()))?;
        Ok(Self(d))
    }
}

/// One DER element: its tag, the whole element, its contents, and what follows.
struct Tlv<'a> {
    tag: u8,
    whole: &'a [u8],
    contents: &'a [u8],
    rest: &'a [u8],
}

/// Reads one DER element (definite lengths only, as DER requires).
fn tlv(input: &[u8]) -> Result<Tlv<'_>, PinError> {
    let bad = PinError::Certificate;
    let (&tag, after_tag) = input.split_first().ok_or(bad("truncated"))?;
    if tag & 0x1f == 0x1f {
        return Err(bad(
            "multi-byte tags do not occur in a certificate's outer structure",
        ));
    }
    let (&first, after_len) = after_tag.split_first().ok_or(bad("truncated"))?;
    let (len, body) = match first {
        0x00..=0x7f => (usize::from(first), after_len),
        0x81..=0x84 => {
            let n = usize::from(first & 0x7f);
            if after_len.len() < n {
                return Err(bad("truncated length"));
            }
            let (digits, body) = after_len.split_at(n);
            if digits[0] == 0 {
                return Err(bad("non-minimal length"));
            }
            let len = digits
                .iter()
                .fold(0usize, |acc, &d| (acc << 8) | usize::from(d));
            if len < 0x80 {
                return Err(bad("non-minimal length"));
            }
            (len, body)
        }
        _ => return Err(bad("indefinite or oversized length")),
    };
    if body.len() < len {
        return Err(bad("truncated"));
    }
    let header = input.len() - body.len();
    Ok(Tlv {
        tag,
        whole: &input[..header + len],
        contents: &body[..len],
        rest: &body[len..],
    })
}

/// The DER SubjectPublicKeyInfo of a certificate: `Certificate ::=
/// SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL,
/// serialNumber, signature, issuer, validity, subject,
/// subjectPublicKeyInfo, ... }, ... }` (RFC 5280, 4.1).
fn certificate_spki(der: &[u8]) -> Result<&[u8], PinError> {
    const SEQUENCE: u8 = 0x30;
    let bad = PinError::Certificate;
    let cert = tlv(der)?;
    if cert.tag != SEQUENCE || !cert.rest.is_empty() {
        return Err(bad("not one SEQUENCE"));
    }
    let tbs = tlv(cert.contents)?;
    if tbs.tag != SEQUENCE {
        return Err(bad("no tbsCertificate"));
    }
    let mut fields = tbs.contents;
    let first = tlv(fields)?;
    if first.tag == 0xa0 {
        fields = first.rest; // the explicit [0] version
    }
    // serialNumber, signature, issuer, validity, subject.
    for _ in 0..5 {
        fields = tlv(fields)?.rest;
    }
    let spki = tlv(fields)?;
    if spki.tag != SEQUENCE {
        return Err(bad("no subjectPublicKeyInfo"));
    }
    Ok(spki.whole)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIN_HEX: &str = "sha256:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn text_round_trip_and_alphabets() {
        let hex_pin: SpkiPin = PIN_HEX.parse().unwrap();
        assert_eq!(hex_pin.to_string(), PIN_HEX);
        assert_eq!(format!("{hex_pin:?}"), PIN_HEX);
        assert_eq!(hex_pin.as_bytes()[31], 0x1f);
        let upper = PIN_HEX.replace("0a0b", "0A0B");
        assert_eq!(upper.parse::<SpkiPin>().unwrap(), hex_pin);
        let b64 = base64::engine::general_purpose::STANDARD.encode(hex_pin.as_bytes());
        assert_eq!(format!("sha256:{b64}").parse::<SpkiPin>().unwrap(), hex_pin);
        let b64u = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0xfb; 32]);
        assert!(b64u.contains('-') || b64u.contains('_'));
        assert_eq!(
            format!("sha256:{b64u}").parse::<SpkiPin>().unwrap(),
            SpkiPin::from_digest([0xfb; 32])
        );
    }

    #[test]
    fn malformed_pins_are_refused_with_the_reason() {
        for (bad, want) in [
            ("000102", PinError::Prefix),
            ("SHA256:0001", PinError::Prefix),
            (
                "sha1:000102030405060708090a0b0c0d0e0f10111213",
                PinError::Prefix,
            ),
            ("sha256:", PinError::Length(0)),
            ("sha256:0001", PinError::Length(3)),
            (
                // Not hex; as base64, 48 bytes.
                "sha256:zz0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
                PinError::Length(48),
            ),
            ("sha256:zz01", PinError::Length(3)),
            ("sha256:a b", PinError::Encoding),
            ("sha256:AAECAwQFBgcICQoLDA0ODw==", PinError::Length(16)),
            ("sha256:!!!", PinError::Encoding),
        ] {
            assert_eq!(bad.parse::<SpkiPin>(), Err(want.clone()), "{bad:?}");
        }
        assert!(PinError::Prefix.to_string().contains("sha256:"));
    }

    fn fixture(rel: &str) -> Vec<u8> {
        let p = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/snp-real/");
        std::fs::read(format!("{p}{rel}")).expect("fixture")
    }

    /// The SPKI found by the DER walk is the one x509-parser finds, on
    /// generated certificates and on AMD's (RSA-4096 ARKs, P-384 VCEKs).
    #[test]
    fn certificate_pin_is_the_spki_digest() {
        let mut certs: Vec<Vec<u8>> = vec![
            fixture("virtee-milan-v2/vcek.der"),
            fixture("oak-turin-v5/vcek.der"),
            fixture("trustee-aws-milan-vlek-v3/vlek.der"),
        ];
        for _ in 0..3 {
            let ck = rcgen::generate_simple_self_signed(vec!["broker.test".to_owned()]).unwrap();
            certs.push(ck.cert.der().to_vec());
        }
        for der in &certs {
            let (_, c) = x509_parser::parse_x509_certificate(der).unwrap();
            assert_eq!(
                SpkiPin::of_certificate(der).unwrap(),
                SpkiPin::of_spki(c.tbs_certificate.subject_pki.raw)
            );
        }
    }

    #[test]
    fn malformed_certificates_are_refused() {
        let der = fixture("virtee-milan-v2/vcek.der");
        // Every truncation, and the same with a byte appended.
        for cut in 0..der.len() {
            assert!(SpkiPin::of_certificate(&der[..cut]).is_err(), "cut {cut}");
        }
        let mut long = der.clone();
        long.push(0);
        assert!(SpkiPin::of_certificate(&long).is_err());
        for bad in [
            &b"not a certificate"[..],
            &[0x30, 0x80, 0, 0],
            &[0x30, 0x81, 0x05, 1, 2, 3, 4, 5],
            &[0x30, 0x82, 0x00, 0x05, 1, 2, 3, 4, 5],
            &[0x30, 0x85, 1, 1, 1, 1, 1],
            &[0x30, 0x02, 0x02, 0x00],
            &[0x1f, 0x01, 0x00],
        ] {
            assert!(
                matches!(SpkiPin::of_certificate(bad), Err(PinError::Certificate(_))),
                "{bad:?}"
            );
        }
    }
}
