//! A minimal, strict DER reader: just enough X.509 for the simulated platform to check its
//! own files (`load`) and for tests to compare extension encodings with real AMD VCEKs.
//!
//! It is not a general certificate parser and decides no policy: the broker verifies chains
//! with its own code. Only single-byte tags and definite lengths of at most four bytes are
//! accepted; anything else is refused rather than guessed at.

use std::fmt;

/// Why a DER structure was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DerError(pub(crate) &'static str);

impl fmt::Display for DerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// One tag-length-value element.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tlv<'a> {
    pub(crate) tag: u8,
    pub(crate) contents: &'a [u8],
    /// The whole element, header included.
    pub(crate) raw: &'a [u8],
}

pub(crate) const TAG_BOOLEAN: u8 = 0x01;
pub(crate) const TAG_INTEGER: u8 = 0x02;
pub(crate) const TAG_BIT_STRING: u8 = 0x03;
pub(crate) const TAG_OCTET_STRING: u8 = 0x04;
pub(crate) const TAG_OID: u8 = 0x06;
pub(crate) const TAG_SEQUENCE: u8 = 0x30;

/// Reads one element from the front of `input`, returning it and the rest.
pub(crate) fn read_tlv(input: &[u8]) -> Result<(Tlv<'_>, &[u8]), DerError> {
    let (&tag, rest) = input.split_first().ok_or(DerError("truncated: no tag"))?;
    if tag & 0x1f == 0x1f {
        return Err(DerError("multi-byte tags are not supported"));
    }
    let (&first, mut rest) = rest.split_first().ok_or(DerError("truncated: no length"))?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 {
            return Err(DerError("indefinite length is not DER"));
        }
        if n > 4 {
            return Err(DerError("length field too long"));
        }
        if rest.len() < n {
            return Err(DerError("truncated length"));
        }
        let (bytes, after) = rest.split_at(n);
        if bytes[0] == 0 {
            return Err(DerError("non-minimal length"));
        }
        let len = bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        if len < 0x80 {
            return Err(DerError("non-minimal length"));
        }
        rest = after;
        len
    };
    if rest.len() < len {
        return Err(DerError("truncated contents"));
    }
    let header = input.len() - rest.len();
    let (contents, after) = rest.split_at(len);
    Ok((
        Tlv {
            tag,
            contents,
            raw: &input[..header + len],
        },
        after,
    ))
}

/// Reads one element that must carry `tag`.
pub(crate) fn expect<'a>(
    input: &'a [u8],
    tag: u8,
    what: &'static str,
) -> Result<(Tlv<'a>, &'a [u8]), DerError> {
    let (tlv, rest) = read_tlv(input)?;
    if tlv.tag != tag {
        return Err(DerError(what));
    }
    Ok((tlv, rest))
}

/// Reads an element that must be the only thing in `input`.
pub(crate) fn read_single<'a>(
    input: &'a [u8],
    tag: u8,
    what: &'static str,
) -> Result<Tlv<'a>, DerError> {
    let (tlv, rest) = expect(input, tag, what)?;
    if !rest.is_empty() {
        return Err(DerError("trailing bytes after element"));
    }
    Ok(tlv)
}

/// DER contents of an OBJECT IDENTIFIER given as arcs (at least two).
pub(crate) fn oid_contents(arcs: &[u64]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut push = |mut v: u64| {
        let mut tmp = [0u8; 10];
        let mut i = tmp.len();
        loop {
            i -= 1;
            tmp[i] = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                break;
            }
        }
        let last = tmp.len() - 1;
        for (j, b) in tmp.iter().enumerate().skip(i) {
            out.push(if j == last { *b } else { *b | 0x80 });
        }
    };
    if let [a, b, rest @ ..] = arcs {
        push(a * 40 + b);
        for arc in rest {
            push(*arc);
        }
    }
    out
}

/// One X.509 extension.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Extension<'a> {
    /// Contents of the extnID OBJECT IDENTIFIER.
    pub(crate) oid: &'a [u8],
    pub(crate) critical: bool,
    /// Contents of the extnValue OCTET STRING.
    pub(crate) value: &'a [u8],
}

/// The parts of a certificate the simulated platform and its tests look at.
#[derive(Debug, Clone)]
pub(crate) struct Cert<'a> {
    /// The whole tbsCertificate element (what the issuer signed).
    pub(crate) tbs: &'a [u8],
    /// Contents of the outer signatureAlgorithm SEQUENCE.
    pub(crate) signature_algorithm: &'a [u8],
    /// The signature value (BIT STRING without its unused-bits byte).
    pub(crate) signature: &'a [u8],
    pub(crate) issuer: &'a [u8],
    pub(crate) subject: &'a [u8],
    /// The subjectPublicKey bits (for EC keys, the SEC1 point).
    pub(crate) public_key: &'a [u8],
    pub(crate) extensions: Vec<Extension<'a>>,
}

impl<'a> Cert<'a> {
    /// The extension with OID `arcs`, if present.
    #[cfg(test)]
    pub(crate) fn extension(&self, arcs: &[u64]) -> Option<&Extension<'a>> {
        let oid = oid_contents(arcs);
        self.extensions.iter().find(|e| e.oid == oid.as_slice())
    }
}

fn bit_string<'a>(tlv: &Tlv<'a>) -> Result<&'a [u8], DerError> {
    match tlv.contents.split_first() {
        Some((0, bits)) => Ok(bits),
        Some(_) => Err(DerError("bit string with unused bits")),
        None => Err(DerError("empty bit string")),
    }
}

/// Parses a DER X.509 certificate (only the fields of [`Cert`]).
pub(crate) fn parse_cert(der: &[u8]) -> Result<Cert<'_>, DerError> {
    let outer = read_single(der, TAG_SEQUENCE, "certificate is not a SEQUENCE")?;
    let (tbs, rest) = expect(
        outer.contents,
        TAG_SEQUENCE,
        "tbsCertificate is not a SEQUENCE",
    )?;
    let (alg, rest) = expect(rest, TAG_SEQUENCE, "signatureAlgorithm is not a SEQUENCE")?;
    let (sig, rest) = expect(rest, TAG_BIT_STRING, "signature is not a BIT STRING")?;
    if !rest.is_empty() {
        return Err(DerError("trailing fields in certificate"));
    }

    let mut body = tbs.contents;
    let (first, after) = read_tlv(body)?;
    if first.tag == 0xa0 {
        body = after; // explicit version
    }
    let (_serial, body) = expect(body, TAG_INTEGER, "serialNumber is not an INTEGER")?;
    let (_alg, body) = expect(body, TAG_SEQUENCE, "signature algorithm is not a SEQUENCE")?;
    let (issuer, body) = expect(body, TAG_SEQUENCE, "issuer is not a SEQUENCE")?;
    let (_validity, body) = expect(body, TAG_SEQUENCE, "validity is not a SEQUENCE")?;
    let (subject, body) = expect(body, TAG_SEQUENCE, "subject is not a SEQUENCE")?;
    let (spki, mut body) = expect(body, TAG_SEQUENCE, "subjectPublicKeyInfo is not a SEQUENCE")?;
    let (_spki_alg, spki_rest) = expect(
        spki.contents,
        TAG_SEQUENCE,
        "SPKI algorithm is not a SEQUENCE",
    )?;
    let key = read_single(spki_rest, TAG_BIT_STRING, "SPKI key is not a BIT STRING")?;
    let public_key = bit_string(&key)?;

    let mut extensions = Vec::new();
    while !body.is_empty() {
        let (field, after) = read_tlv(body)?;
        body = after;
        if field.tag != 0xa3 {
            continue; // issuerUniqueID / subjectUniqueID
        }
        let list = read_single(
            field.contents,
            TAG_SEQUENCE,
            "extensions are not a SEQUENCE",
        )?;
        let mut items = list.contents;
        while !items.is_empty() {
            let (ext, after) = expect(items, TAG_SEQUENCE, "extension is not a SEQUENCE")?;
            items = after;
            let (oid, rest) = expect(ext.contents, TAG_OID, "extnID is not an OID")?;
            let (next, after_next) = read_tlv(rest)?;
            let (critical, value_tlv) = if next.tag == TAG_BOOLEAN {
                let critical = match next.contents {
                    [0xff] => true,
                    [0x00] => false,
                    _ => return Err(DerError("malformed critical flag")),
                };
                (
                    critical,
                    read_single(
                        after_next,
                        TAG_OCTET_STRING,
                        "extnValue is not an OCTET STRING",
                    )?,
                )
            } else {
                (
                    false,
                    read_single(rest, TAG_OCTET_STRING, "extnValue is not an OCTET STRING")?,
                )
            };
            extensions.push(Extension {
                oid: oid.contents,
                critical,
                value: value_tlv.contents,
            });
        }
    }

    Ok(Cert {
        tbs: tbs.raw,
        signature_algorithm: alg.contents,
        signature: bit_string(&sig)?,
        issuer: issuer.raw,
        subject: subject.raw,
        public_key,
        extensions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oid_encoding_matches_known_values() {
        // 1.3.6.1.4.1.3704.1.3.1 as it appears in AMD VCEKs.
        assert_eq!(
            oid_contents(&[1, 3, 6, 1, 4, 1, 3704, 1, 3, 1]),
            [0x2b, 0x06, 0x01, 0x04, 0x01, 0x9c, 0x78, 0x01, 0x03, 0x01]
        );
        // 1.2.840.10045.4.3.3 (ecdsa-with-SHA384).
        assert_eq!(
            oid_contents(&[1, 2, 840, 10045, 4, 3, 3]),
            [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03]
        );
    }

    #[test]
    fn lengths_are_strict() {
        assert!(read_tlv(&[]).is_err());
        assert!(read_tlv(&[0x30]).is_err());
        assert_eq!(
            read_tlv(&[0x30, 0x80, 0, 0]).unwrap_err().0,
            "indefinite length is not DER"
        );
        assert_eq!(
            read_tlv(&[0x04, 0x81, 0x05, 1, 2, 3, 4, 5]).unwrap_err().0,
            "non-minimal length"
        );
        assert_eq!(
            read_tlv(&[0x04, 0x82, 0x00, 0x90]).unwrap_err().0,
            "non-minimal length"
        );
        assert_eq!(
            read_tlv(&[0x04, 0x85, 1, 1, 1, 1, 1]).unwrap_err().0,
            "length field too long"
        );
        assert_eq!(
            read_tlv(&[0x04, 0x03, 1, 2]).unwrap_err().0,
            "truncated contents"
        );
        assert_eq!(
            read_tlv(&[0x1f, 0x01, 0x00]).unwrap_err().0,
            "multi-byte tags are not supported"
        );
        let (tlv, rest) = read_tlv(&[0x04, 0x02, 7, 8, 9]).unwrap();
        assert_eq!(
            (tlv.tag, tlv.contents, tlv.raw, rest),
            (0x04, &[7u8, 8][..], &[4u8, 2, 7, 8][..], &[9u8][..])
        );
    }

    #[test]
    fn malformed_certificates_are_refused() {
        let real = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/snp-real/virtee-milan-v2/vcek.der"
        ))
        .unwrap();
        let cert = parse_cert(&real).unwrap();
        assert_eq!(cert.public_key.len(), 97);
        assert_eq!(cert.extensions.len(), 11);
        // Every truncation fails, never panics.
        for cut in 0..real.len() {
            assert!(
                parse_cert(&real[..cut]).is_err(),
                "truncated at {cut} accepted"
            );
        }
        // Trailing garbage is refused.
        let mut long = real.clone();
        long.push(0);
        assert!(parse_cert(&long).is_err());
        // Flipping any single byte may or may not be refused, but must never panic.
        for i in 0..real.len() {
            let mut m = real.clone();
            m[i] ^= 0xff;
            let _ = parse_cert(&m);
        }
    }
}
