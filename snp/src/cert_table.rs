//! The extended report's certificate table (GHCB specification, "SNP
//! Extended Guest Request"; Linux passes it through unchanged as the
//! `sev-guest` certificate buffer and the configfs-tsm `auxblob`).
//!
//! ```text
//! entry 0:  GUID [16] | offset u32 LE | length u32 LE
//! ...
//! entry n:  all zero (terminator)
//! the certificates, DER, at their offsets (counted from the table's start)
//! ```
//!
//! # GUID byte order
//!
//! A GUID is stored in RFC 4122 order: the bytes of its textual form from
//! left to right (`63da758d-…` starts `63 da 75 8d`). That is what the
//! `sev` crate reads and writes (`uuid::Uuid::from_slice`/`as_bytes`, also
//! in the host-side table it hands to KVM), what go-sev-guest compares
//! against (`uuid.Parse` bytes) and so what guests receive; the tests pin
//! the constants to the `sev` crate's encoding. The EFI/Windows
//! mixed-endian layout (first three fields little-endian) is not used by
//! any producer of these tables. A table that carries one of AMD's GUIDs in
//! that layout is refused with [`CertTableError::MixedEndianGuid`], which
//! says so, rather than read as an unknown entry (the certificate would be
//! silently missing) or accepted (the two ends would disagree again).
//!
//! # Rules
//!
//! [`decode`] refuses: no terminator, a terminator with a non-zero offset
//! or length, more than [`MAX_ENTRIES`] entries, a certificate that is
//! empty, starts inside the entry array, runs past the end or overlaps
//! another, a GUID twice, and a mixed-endian AMD GUID. Entries with other
//! GUIDs are checked the same way and kept ([`CertEntry::kind`] is then
//! `None`). An empty buffer is an empty table; bytes after the last
//! certificate (hypervisors hand out whole pages) are ignored. [`encode`]
//! writes only what [`decode`] reads back.

use std::fmt;

/// Size of one entry: GUID (16), offset (4), length (4).
pub const ENTRY_LEN: usize = 24;
/// Most entries accepted (real tables hold 3 to 5).
pub const MAX_ENTRIES: usize = 64;

/// The VCEK's GUID.
pub const GUID_VCEK: &str = "63da758d-e664-4564-adc5-f4b93be8accd";
/// The VLEK's GUID.
pub const GUID_VLEK: &str = "a8074bc2-a25a-483e-aae6-39c045a0b8a1";
/// The ASK's (or, with a VLEK, the ASVK's) GUID.
pub const GUID_ASK: &str = "4ab7b379-bbac-4fe4-a02f-05aef327c782";
/// The ARK's GUID.
pub const GUID_ARK: &str = "c0b406a4-a803-4952-9743-3fb6014cd0ae";
/// The CRL's GUID.
pub const GUID_CRL: &str = "92f81bc3-5811-4d3d-97ff-d19f88dc67ea";

/// A GUID as the table stores it (RFC 4122 byte order).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// The all-zero GUID, which only the terminator carries.
    pub const ZERO: Guid = Guid([0; 16]);

    /// Parses `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (lower or upper case).
    pub const fn parse(s: &str) -> Option<Guid> {
        const fn nibble(c: u8) -> Option<u8> {
            match c {
                b'0'..=b'9' => Some(c - b'0'),
                b'a'..=b'f' => Some(c - b'a' + 10),
                b'A'..=b'F' => Some(c - b'A' + 10),
                _ => None,
            }
        }
        let b = s.as_bytes();
        if b.len() != 36 {
            return None;
        }
        let mut out = [0u8; 16];
        let (mut i, mut o) = (0, 0);
        while i < b.len() {
            if i == 8 || i == 13 || i == 18 || i == 23 {
                if b[i] != b'-' {
                    return None;
                }
                i += 1;
                continue;
            }
            let (Some(hi), Some(lo)) = (nibble(b[i]), nibble(b[i + 1])) else {
                return None;
            };
            out[o] = (hi << 4) | lo;
            o += 1;
            i += 2;
        }
        Some(Guid(out))
    }

    /// The same GUID in the EFI mixed-endian layout (first three fields
    /// byte-swapped).
    pub const fn mixed_endian(self) -> Guid {
        let b = self.0;
        Guid([
            b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13],
            b[14], b[15],
        ])
    }
}

const fn known(s: &str) -> Guid {
    match Guid::parse(s) {
        Some(g) => g,
        None => panic!("bad GUID constant"),
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for Guid {
    type Err = CertTableError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Guid::parse(s).ok_or_else(|| CertTableError::BadGuid(s.chars().take(40).collect()))
    }
}

/// What a well-known entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CertKind {
    /// The VCEK.
    Vcek,
    /// The VLEK.
    Vlek,
    /// The ASK, or the ASVK when the report is VLEK-signed.
    Ask,
    /// The ARK.
    Ark,
    /// A CRL.
    Crl,
}

impl CertKind {
    /// Every kind.
    pub const ALL: [CertKind; 5] = [
        CertKind::Vcek,
        CertKind::Vlek,
        CertKind::Ask,
        CertKind::Ark,
        CertKind::Crl,
    ];

    /// Its GUID.
    pub const fn guid(self) -> Guid {
        match self {
            Self::Vcek => known(GUID_VCEK),
            Self::Vlek => known(GUID_VLEK),
            Self::Ask => known(GUID_ASK),
            Self::Ark => known(GUID_ARK),
            Self::Crl => known(GUID_CRL),
        }
    }

    /// The kind a GUID names, if it is one of AMD's.
    pub fn of(guid: Guid) -> Option<CertKind> {
        Self::ALL.into_iter().find(|k| k.guid() == guid)
    }

    /// A short name (`vcek`, `vlek`, `ask`, `ark`, `crl`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Vcek => "vcek",
            Self::Vlek => "vlek",
            Self::Ask => "ask",
            Self::Ark => "ark",
            Self::Crl => "crl",
        }
    }
}

/// One entry: a GUID and its certificate (DER) or CRL bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct CertEntry {
    /// The GUID.
    pub guid: Guid,
    /// The certificate or CRL.
    pub data: Vec<u8>,
}

impl CertEntry {
    /// An entry of a well-known kind.
    pub fn new(kind: CertKind, data: Vec<u8>) -> Self {
        Self {
            guid: kind.guid(),
            data,
        }
    }

    /// What it holds, when its GUID is one of AMD's.
    pub fn kind(&self) -> Option<CertKind> {
        CertKind::of(self.guid)
    }
}

impl fmt::Debug for CertEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertEntry")
            .field("guid", &self.guid)
            .field("kind", &self.kind())
            .field("len", &self.data.len())
            .finish()
    }
}

/// Why a table could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertTableError {
    /// The entries end before an all-zero terminating entry.
    #[error("no all-zero terminating entry within the {len}-byte table")]
    Unterminated {
        /// Length of the input.
        len: usize,
    },
    /// The terminator's GUID is zero but its offset or length is not.
    #[error("entry {index} has the zero GUID of a terminator but a non-zero offset or length")]
    BadTerminator {
        /// Index of the entry.
        index: usize,
    },
    /// More than [`MAX_ENTRIES`] entries.
    #[error("more than {MAX_ENTRIES} entries")]
    TooManyEntries,
    /// An entry's certificate is empty.
    #[error("entry {index} ({guid}) has length 0")]
    Empty {
        /// Index of the entry.
        index: usize,
        /// Its GUID.
        guid: Guid,
    },
    /// An entry's certificate lies outside the certificate area.
    #[error("entry {index} ({guid}) at {offset}+{length} lies outside the certificate area {start}..{end}")]
    OutOfBounds {
        /// Index of the entry.
        index: usize,
        /// Its GUID.
        guid: Guid,
        /// Its offset.
        offset: u32,
        /// Its length.
        length: u32,
        /// First byte after the terminator.
        start: usize,
        /// Length of the input.
        end: usize,
    },
    /// Two certificates overlap.
    #[error("entry {index} ({guid}) overlaps entry {other}")]
    Overlap {
        /// Index of the entry.
        index: usize,
        /// Its GUID.
        guid: Guid,
        /// The entry it overlaps.
        other: usize,
    },
    /// A GUID appears twice.
    #[error("GUID {guid} appears twice (entries {first} and {index})")]
    DuplicateGuid {
        /// The GUID.
        guid: Guid,
        /// Its first entry.
        first: usize,
        /// Its second entry.
        index: usize,
    },
    /// One of AMD's GUIDs in the EFI mixed-endian byte order.
    #[error(
        "entry {index} carries the {} GUID in the EFI mixed-endian byte order; \
         certificate tables store GUIDs in RFC 4122 order (as the sev crate, \
         go-sev-guest and KVM write them): fix the host's certificate table",
        .kind.name()
    )]
    MixedEndianGuid {
        /// Index of the entry.
        index: usize,
        /// The kind its GUID names.
        kind: CertKind,
    },
    /// An entry to encode has the zero GUID, which marks the terminator.
    #[error("cannot encode a certificate with the all-zero GUID")]
    ZeroGuid,
    /// A GUID string that is not `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
    #[error("{0:?} is not a GUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)")]
    BadGuid(String),
    /// The table would not fit the u32 offsets.
    #[error("certificate table too large to encode")]
    TooLarge,
}

/// Encodes `entries`, in order, as a table (the certificates follow the
/// terminator in the same order). Refuses what [`decode`] would refuse.
pub fn encode(entries: &[CertEntry]) -> Result<Vec<u8>, CertTableError> {
    if entries.len() > MAX_ENTRIES {
        return Err(CertTableError::TooManyEntries);
    }
    for (index, e) in entries.iter().enumerate() {
        check_guid(index, e.guid, &entries[..index])?;
        if e.guid == Guid::ZERO {
            return Err(CertTableError::ZeroGuid);
        }
        if e.data.is_empty() {
            return Err(CertTableError::Empty {
                index,
                guid: e.guid,
            });
        }
    }
    let header = ENTRY_LEN * (entries.len() + 1);
    let total = entries.iter().map(|e| e.data.len()).sum::<usize>() + header;
    if u32::try_from(total).is_err() {
        return Err(CertTableError::TooLarge);
    }
    let mut out = Vec::with_capacity(total);
    let mut offset = header;
    for e in entries {
        out.extend_from_slice(&e.guid.0);
        // Both fit: the total fits in u32 (checked above).
        out.extend_from_slice(&(offset as u32).to_le_bytes());
        out.extend_from_slice(&(e.data.len() as u32).to_le_bytes());
        offset += e.data.len();
    }
    out.extend_from_slice(&[0u8; ENTRY_LEN]);
    for e in entries {
        out.extend_from_slice(&e.data);
    }
    Ok(out)
}

/// The GUID rules shared by both directions: not twice, and none of AMD's
/// in the mixed-endian layout.
fn check_guid(index: usize, guid: Guid, before: &[CertEntry]) -> Result<(), CertTableError> {
    if CertKind::of(guid).is_none() {
        if let Some(kind) = CertKind::of(guid.mixed_endian()) {
            return Err(CertTableError::MixedEndianGuid { index, kind });
        }
    }
    if let Some(first) = before.iter().position(|e| e.guid == guid) {
        return Err(CertTableError::DuplicateGuid { guid, first, index });
    }
    Ok(())
}

/// Decodes a table (see the module's rules).
pub fn decode(bytes: &[u8]) -> Result<Vec<CertEntry>, CertTableError> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let mut raw: Vec<(Guid, u32, u32)> = Vec::new();
    let mut index = 0;
    loop {
        let Some(e) = bytes.get(index * ENTRY_LEN..(index + 1) * ENTRY_LEN) else {
            return Err(CertTableError::Unterminated { len: bytes.len() });
        };
        let mut g = [0u8; 16];
        g.copy_from_slice(&e[..16]);
        let offset = u32::from_le_bytes([e[16], e[17], e[18], e[19]]);
        let length = u32::from_le_bytes([e[20], e[21], e[22], e[23]]);
        if Guid(g) == Guid::ZERO {
            if offset != 0 || length != 0 {
                return Err(CertTableError::BadTerminator { index });
            }
            break;
        }
        if raw.len() == MAX_ENTRIES {
            return Err(CertTableError::TooManyEntries);
        }
        raw.push((Guid(g), offset, length));
        index += 1;
    }
    let start = ENTRY_LEN * (raw.len() + 1);
    let mut out: Vec<CertEntry> = Vec::with_capacity(raw.len());
    let mut ranges: Vec<(usize, usize)> = Vec::with_capacity(raw.len());
    for (index, (guid, offset, length)) in raw.into_iter().enumerate() {
        check_guid(index, guid, &out)?;
        if length == 0 {
            return Err(CertTableError::Empty { index, guid });
        }
        let begin = offset as usize;
        let end = begin.saturating_add(length as usize);
        if begin < start || end > bytes.len() {
            return Err(CertTableError::OutOfBounds {
                index,
                guid,
                offset,
                length,
                start,
                end: bytes.len(),
            });
        }
        if let Some(other) = ranges.iter().position(|(s, e)| begin < *e && *s < end) {
            return Err(CertTableError::Overlap { index, guid, other });
        }
        ranges.push((begin, end));
        out.push(CertEntry {
            guid,
            data: bytes[begin..end].to_vec(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sev::firmware::host::CertType;
    use sev::parser::ByteParser;

    fn sample() -> Vec<CertEntry> {
        vec![
            CertEntry::new(CertKind::Vcek, vec![1, 2, 3]),
            CertEntry::new(CertKind::Ask, vec![4; 10]),
            CertEntry::new(CertKind::Ark, vec![5]),
        ]
    }

    /// Entries written as given, without any check (malformed tables).
    fn raw(entries: &[([u8; 16], u32, u32)], tail: &[u8]) -> Vec<u8> {
        let mut t = Vec::new();
        for (g, o, l) in entries {
            t.extend_from_slice(g);
            t.extend_from_slice(&o.to_le_bytes());
            t.extend_from_slice(&l.to_le_bytes());
        }
        t.extend_from_slice(tail);
        t
    }

    #[test]
    fn guids_match_the_sev_crate_encoding() {
        for (kind, theirs) in [
            (CertKind::Vcek, CertType::VCEK),
            (CertKind::Vlek, CertType::VLEK),
            (CertKind::Ask, CertType::ASK),
            (CertKind::Ark, CertType::ARK),
            (CertKind::Crl, CertType::CRL),
        ] {
            assert_eq!(kind.guid().0, theirs.to_bytes().unwrap(), "{theirs}");
            assert_eq!(kind.guid().to_string(), theirs.to_string().to_lowercase());
        }
        assert_eq!(&CertKind::Vcek.guid().0[..4], &[0x63, 0xda, 0x75, 0x8d]);
        assert_eq!(
            &CertKind::Vcek.guid().mixed_endian().0[..4],
            &[0x8d, 0x75, 0xda, 0x63]
        );
    }

    /// The table the `sev` crate hands to the kernel decodes to the same
    /// entries, and ours encodes to its bytes.
    #[test]
    fn same_bytes_as_the_sev_crate() {
        use sev::firmware::host::CertTableEntry;
        let theirs = CertTableEntry::cert_table_to_vec_bytes(&[
            CertTableEntry::new(CertType::VCEK, vec![1, 2, 3]),
            CertTableEntry::new(CertType::ASK, vec![4; 10]),
            CertTableEntry::new(CertType::ARK, vec![5]),
        ])
        .unwrap();
        assert_eq!(decode(&theirs).unwrap(), sample());
        assert_eq!(encode(&sample()).unwrap(), theirs);
    }

    #[test]
    fn round_trip_and_layout() {
        let table = encode(&sample()).unwrap();
        assert_eq!(table.len(), 4 * ENTRY_LEN + 14);
        assert_eq!(&table[..16], &CertKind::Vcek.guid().0);
        assert_eq!(&table[16..20], &96u32.to_le_bytes());
        assert_eq!(&table[20..24], &3u32.to_le_bytes());
        assert_eq!(&table[24 + 16..24 + 20], &99u32.to_le_bytes());
        assert_eq!(&table[72..96], &[0u8; 24]);
        assert_eq!(decode(&table).unwrap(), sample());
        // Page padding after the certificates is ignored.
        let mut padded = table.clone();
        padded.resize(4096, 0);
        assert_eq!(decode(&padded).unwrap(), sample());
        assert_eq!(decode(&[]).unwrap(), vec![]);
        assert_eq!(encode(&[]).unwrap(), vec![0; ENTRY_LEN]);
        assert_eq!(decode(&[0; ENTRY_LEN]).unwrap(), vec![]);
        // Unknown GUIDs round-trip too, with no kind.
        let other = CertEntry {
            guid: "11111111-2222-3333-4444-555555555555".parse().unwrap(),
            data: b"xyz".to_vec(),
        };
        let t = encode(std::slice::from_ref(&other)).unwrap();
        let back = decode(&t).unwrap();
        assert_eq!(back, [other]);
        assert_eq!(back[0].kind(), None);
        assert_eq!(sample()[0].kind(), Some(CertKind::Vcek));
        // The largest table accepted.
        let many: Vec<CertEntry> = (0..MAX_ENTRIES)
            .map(|i| CertEntry {
                guid: format!("11111111-2222-3333-4444-{i:012}").parse().unwrap(),
                data: vec![1],
            })
            .collect();
        assert_eq!(decode(&encode(&many).unwrap()).unwrap(), many);
    }

    #[test]
    fn guid_text() {
        let g: Guid = GUID_VCEK.parse().unwrap();
        assert_eq!(g, CertKind::Vcek.guid());
        assert_eq!(g.to_string(), GUID_VCEK);
        assert_eq!(
            GUID_VCEK.to_uppercase().parse::<Guid>().unwrap(),
            CertKind::Vcek.guid()
        );
        for bad in [
            "",
            "63da758d",
            "63da758de66445 64-adc5-f4b93be8accd",
            "63da758d-e664-4564-adc5-f4b93be8accz",
            "63da758d-e664-4564-adc5-f4b93be8accd0",
            "63da758d:e664-4564-adc5-f4b93be8accd",
        ] {
            assert!(
                matches!(bad.parse::<Guid>(), Err(CertTableError::BadGuid(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn malformed_tables_are_refused() {
        let table = encode(&sample()).unwrap();
        // Every truncation that cuts into entries or certificates.
        for cut in 1..table.len() {
            assert!(decode(&table[..cut]).is_err(), "cut {cut} accepted");
        }
        let vcek = CertKind::Vcek.guid().0;
        let ark = CertKind::Ark.guid().0;
        let t = [0u8; ENTRY_LEN];
        // Offset pointing into the entry list.
        assert!(matches!(
            decode(&raw(&[(vcek, 10, 3)], &[t.as_slice(), &[1, 2, 3]].concat())),
            Err(CertTableError::OutOfBounds { index: 0, .. })
        ));
        // Length running past the end, including u32 overflow.
        for (o, l) in [(48, 4), (48, u32::MAX), (u32::MAX, u32::MAX), (u32::MAX, 1)] {
            assert!(
                matches!(
                    decode(&raw(&[(vcek, o, l)], &[t.as_slice(), &[1, 2, 3]].concat())),
                    Err(CertTableError::OutOfBounds { .. })
                ),
                "{o}+{l}"
            );
        }
        // Zero length.
        assert!(matches!(
            decode(&raw(&[(vcek, 48, 0)], &[t.as_slice(), &[1]].concat())),
            Err(CertTableError::Empty { index: 0, .. })
        ));
        // A terminator with a non-zero offset or length.
        let mut m = table.clone();
        m[72 + 20] = 1;
        assert_eq!(decode(&m), Err(CertTableError::BadTerminator { index: 3 }));
        // No terminator at all.
        assert_eq!(
            decode(&[0xab; 48]),
            Err(CertTableError::Unterminated { len: 48 })
        );
        // Overlapping certificates.
        assert!(matches!(
            decode(&raw(
                &[(vcek, 72, 3), (ark, 73, 2)],
                &[t.as_slice(), &[1, 2, 3]].concat()
            )),
            Err(CertTableError::Overlap {
                index: 1,
                other: 0,
                ..
            })
        ));
        // The same GUID twice.
        assert!(matches!(
            decode(&raw(
                &[(ark, 72, 1), (ark, 73, 1)],
                &[t.as_slice(), &[1, 2]].concat()
            )),
            Err(CertTableError::DuplicateGuid {
                first: 0,
                index: 1,
                ..
            })
        ));
        // Too many entries.
        let many: Vec<([u8; 16], u32, u32)> = (0..=MAX_ENTRIES as u32)
            .map(|i| {
                let mut g = [0x11; 16];
                g[..4].copy_from_slice(&i.to_le_bytes());
                (g, 0, 1)
            })
            .collect();
        assert_eq!(decode(&raw(&many, &t)), Err(CertTableError::TooManyEntries));
    }

    #[test]
    fn mixed_endian_amd_guids_are_refused_with_the_reason() {
        let me = CertKind::Vcek.guid().mixed_endian().0;
        let t = raw(
            &[(me, 48, 3)],
            &[[0u8; ENTRY_LEN].as_slice(), &[1, 2, 3]].concat(),
        );
        let e = decode(&t).unwrap_err();
        assert_eq!(
            e,
            CertTableError::MixedEndianGuid {
                index: 0,
                kind: CertKind::Vcek
            }
        );
        assert!(e.to_string().contains("RFC 4122"), "{e}");
        // And the encoder does not write one either.
        let entry = CertEntry {
            guid: CertKind::Ark.guid().mixed_endian(),
            data: vec![1],
        };
        assert!(matches!(
            encode(&[entry]),
            Err(CertTableError::MixedEndianGuid { .. })
        ));
    }

    #[test]
    fn encoder_refuses_what_the_decoder_would() {
        assert_eq!(
            encode(&[CertEntry {
                guid: Guid::ZERO,
                data: vec![1]
            }]),
            Err(CertTableError::ZeroGuid)
        );
        assert!(matches!(
            encode(&[CertEntry::new(CertKind::Ark, vec![])]),
            Err(CertTableError::Empty { .. })
        ));
        assert!(matches!(
            encode(&[
                CertEntry::new(CertKind::Ark, vec![1]),
                CertEntry::new(CertKind::Ark, vec![2])
            ]),
            Err(CertTableError::DuplicateGuid { .. })
        ));
        let many: Vec<CertEntry> = (0..=MAX_ENTRIES)
            .map(|i| CertEntry {
                guid: format!("11111111-2222-3333-4444-{i:012}").parse().unwrap(),
                data: vec![1],
            })
            .collect();
        assert_eq!(encode(&many), Err(CertTableError::TooManyEntries));
    }
}
