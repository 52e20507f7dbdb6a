//! The extended-report certificate table: encoder and parser.
//!
//! Layout (GHCB specification, "SNP Extended Guest Request"; Linux `struct cert_table`):
//! a list of 24-byte entries, each a 16-byte GUID, a little-endian `u32` offset and a
//! little-endian `u32` length, terminated by an all-zero entry; offsets count from the start
//! of the table and point at DER certificates placed after the terminator.
//!
//! **GUID byte order:** the GUID is stored in RFC 4122 order, i.e. the bytes of the textual
//! form from left to right (`63da758d-…` starts `0x63 0xda 0x75 0x8d`). This is what the
//! `sev` crate writes and reads (`uuid::Uuid::as_bytes` / `from_bytes` in
//! `CertTableEntry::uapi_to_vec_bytes` and `CertType`'s encoder), what `snphost` hands to
//! the hypervisor, and therefore what guests receive. A test pins the constants below to the
//! `sev` crate's encoding.

use std::fmt;

/// Size of one table entry: GUID (16) + offset (4) + length (4).
pub const ENTRY_LEN: usize = 24;

/// Upper bound on entries accepted by [`parse_cert_table`] (real tables hold 3 to 5).
pub const MAX_ENTRIES: usize = 64;

/// GUID of the VCEK entry, `63da758d-e664-4564-adc5-f4b93be8accd`.
pub const GUID_VCEK: [u8; 16] = guid("63da758d-e664-4564-adc5-f4b93be8accd");
/// GUID of the VLEK entry, `a8074bc2-a25a-483e-aae6-39c045a0b8a1`.
pub const GUID_VLEK: [u8; 16] = guid("a8074bc2-a25a-483e-aae6-39c045a0b8a1");
/// GUID of the ASK (or ASVK) entry, `4ab7b379-bbac-4fe4-a02f-05aef327c782`.
pub const GUID_ASK: [u8; 16] = guid("4ab7b379-bbac-4fe4-a02f-05aef327c782");
/// GUID of the ARK entry, `c0b406a4-a803-4952-9743-3fb6014cd0ae`.
pub const GUID_ARK: [u8; 16] = guid("c0b406a4-a803-4952-9743-3fb6014cd0ae");
/// GUID of the CRL entry, `92f81bc3-5811-4d3d-97ff-d19f88dc67ea`.
pub const GUID_CRL: [u8; 16] = guid("92f81bc3-5811-4d3d-97ff-d19f88dc67ea");

/// Parses a canonical GUID string at compile time (RFC 4122 byte order).
const fn guid(s: &str) -> [u8; 16] {
    const fn nibble(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => panic!("bad GUID literal"),
        }
    }
    let b = s.as_bytes();
    let mut out = [0u8; 16];
    let (mut i, mut o) = (0, 0);
    while i < b.len() {
        if b[i] == b'-' {
            i += 1;
            continue;
        }
        out[o] = nibble(b[i]) << 4 | nibble(b[i + 1]);
        o += 1;
        i += 2;
    }
    out
}

/// One certificate of the table.
#[derive(Clone, PartialEq, Eq)]
pub struct CertEntry {
    /// The entry's GUID in table (RFC 4122) byte order.
    pub guid: [u8; 16],
    /// The certificate (DER) or CRL bytes.
    pub data: Vec<u8>,
}

impl CertEntry {
    /// The GUID in its textual form.
    pub fn guid_string(&self) -> String {
        let h = hex::encode(self.guid);
        format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }

    /// A short name for the well-known GUIDs (`vcek`, `vlek`, `ask`, `ark`, `crl`).
    pub fn kind(&self) -> Option<&'static str> {
        match self.guid {
            GUID_VCEK => Some("vcek"),
            GUID_VLEK => Some("vlek"),
            GUID_ASK => Some("ask"),
            GUID_ARK => Some("ark"),
            GUID_CRL => Some("crl"),
            _ => None,
        }
    }
}

impl fmt::Debug for CertEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertEntry")
            .field("guid", &self.guid_string())
            .field("kind", &self.kind())
            .field("len", &self.data.len())
            .finish()
    }
}

/// Why a certificate table could not be encoded or parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertTableError {
    /// The table ended before its all-zero terminating entry.
    #[error("certificate table has no terminating all-zero entry within {len} bytes")]
    Unterminated {
        /// Length of the input.
        len: usize,
    },
    /// More entries than [`MAX_ENTRIES`].
    #[error("certificate table has more than {MAX_ENTRIES} entries")]
    TooManyEntries,
    /// An entry points outside the buffer or into the entry list.
    #[error("certificate table entry {index} ({guid}) has offset {offset} and length {length}, outside the certificate area {start}..{end}")]
    OutOfBounds {
        /// Index of the entry.
        index: usize,
        /// Its GUID.
        guid: String,
        /// Its offset.
        offset: u32,
        /// Its length.
        length: u32,
        /// First byte after the terminator.
        start: usize,
        /// Length of the input.
        end: usize,
    },
    /// An entry has a zero GUID but non-zero offset or length, or a zero length.
    #[error("certificate table entry {index} is malformed: {reason}")]
    MalformedEntry {
        /// Index of the entry.
        index: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// An entry to encode has the all-zero GUID, reserved for the terminator.
    #[error("cannot encode a certificate with the all-zero GUID")]
    ZeroGuid,
    /// The table would exceed 4 GiB.
    #[error("certificate table too large to encode")]
    TooLarge,
}

/// Encodes `entries` in order as a certificate table.
pub fn encode_cert_table(entries: &[CertEntry]) -> Result<Vec<u8>, CertTableError> {
    let header = ENTRY_LEN * (entries.len() + 1);
    let total = entries.iter().map(|e| e.data.len()).sum::<usize>() + header;
    if u32::try_from(total).is_err() {
        return Err(CertTableError::TooLarge);
    }
    let mut out = Vec::with_capacity(total);
    let mut offset = header;
    for e in entries {
        if e.guid == [0u8; 16] {
            return Err(CertTableError::ZeroGuid);
        }
        out.extend_from_slice(&e.guid);
        // Both fit: total fits in u32 (checked above).
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

/// Parses a certificate table. An empty input is an empty table (no certificates offered).
/// Bytes after the last certificate (hypervisors often hand out whole pages) are ignored.
pub fn parse_cert_table(bytes: &[u8]) -> Result<Vec<CertEntry>, CertTableError> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let mut raw = Vec::new();
    let mut terminated = false;
    for (index, chunk) in bytes.chunks(ENTRY_LEN).enumerate() {
        if chunk.len() < ENTRY_LEN {
            break;
        }
        let mut g = [0u8; 16];
        g.copy_from_slice(&chunk[..16]);
        let offset = u32::from_le_bytes([chunk[16], chunk[17], chunk[18], chunk[19]]);
        let length = u32::from_le_bytes([chunk[20], chunk[21], chunk[22], chunk[23]]);
        if g == [0u8; 16] {
            if offset != 0 || length != 0 {
                return Err(CertTableError::MalformedEntry {
                    index,
                    reason: "terminator with non-zero offset or length",
                });
            }
            terminated = true;
            break;
        }
        if raw.len() == MAX_ENTRIES {
            return Err(CertTableError::TooManyEntries);
        }
        raw.push((g, offset, length));
    }
    if !terminated {
        return Err(CertTableError::Unterminated { len: bytes.len() });
    }
    let start = ENTRY_LEN * (raw.len() + 1);
    raw.into_iter()
        .enumerate()
        .map(|(index, (guid, offset, length))| {
            if length == 0 {
                return Err(CertTableError::MalformedEntry {
                    index,
                    reason: "zero-length certificate",
                });
            }
            let begin = offset as usize;
            let end = begin.checked_add(length as usize);
            match end {
                Some(end) if begin >= start && end <= bytes.len() => Ok(CertEntry {
                    guid,
                    data: bytes[begin..end].to_vec(),
                }),
                _ => Err(CertTableError::OutOfBounds {
                    index,
                    guid: CertEntry {
                        guid,
                        data: Vec::new(),
                    }
                    .guid_string(),
                    offset,
                    length,
                    start,
                    end: bytes.len(),
                }),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sev::firmware::host::CertType;
    use sev::parser::ByteParser;

    #[test]
    fn guids_match_the_sev_crate_encoding() {
        for (ours, theirs) in [
            (GUID_VCEK, CertType::VCEK),
            (GUID_VLEK, CertType::VLEK),
            (GUID_ASK, CertType::ASK),
            (GUID_ARK, CertType::ARK),
            (GUID_CRL, CertType::CRL),
        ] {
            assert_eq!(ours, theirs.to_bytes().unwrap(), "{theirs}");
        }
        assert_eq!(&GUID_VCEK[..4], &[0x63, 0xda, 0x75, 0x8d]);
    }

    fn sample() -> Vec<CertEntry> {
        vec![
            CertEntry {
                guid: GUID_VCEK,
                data: vec![1, 2, 3],
            },
            CertEntry {
                guid: GUID_ASK,
                data: vec![4; 10],
            },
            CertEntry {
                guid: GUID_ARK,
                data: vec![5],
            },
        ]
    }

    #[test]
    fn round_trip_and_layout() {
        let table = encode_cert_table(&sample()).unwrap();
        assert_eq!(table.len(), 4 * ENTRY_LEN + 14);
        assert_eq!(&table[..16], &GUID_VCEK);
        assert_eq!(&table[16..20], &96u32.to_le_bytes());
        assert_eq!(&table[20..24], &3u32.to_le_bytes());
        assert_eq!(&table[24 + 16..24 + 20], &99u32.to_le_bytes());
        assert_eq!(&table[72..96], &[0u8; 24]);
        assert_eq!(parse_cert_table(&table).unwrap(), sample());
        // Page padding after the blobs is ignored.
        let mut padded = table.clone();
        padded.resize(4096, 0);
        assert_eq!(parse_cert_table(&padded).unwrap(), sample());
        assert_eq!(parse_cert_table(&[]).unwrap(), vec![]);
        assert_eq!(sample()[0].kind(), Some("vcek"));
        assert_eq!(
            sample()[0].guid_string(),
            "63da758d-e664-4564-adc5-f4b93be8accd"
        );
    }

    #[test]
    fn malformed_tables_are_refused() {
        let table = encode_cert_table(&sample()).unwrap();
        // Truncations: never panic; those cutting into entries or blobs fail.
        for cut in 1..table.len() {
            assert!(
                parse_cert_table(&table[..cut]).is_err(),
                "cut {cut} accepted"
            );
        }
        // Offset pointing into the entry list.
        let mut m = table.clone();
        m[16..20].copy_from_slice(&10u32.to_le_bytes());
        assert!(matches!(
            parse_cert_table(&m),
            Err(CertTableError::OutOfBounds { index: 0, .. })
        ));
        // Length running past the end, including u32 overflow.
        let mut m = table.clone();
        m[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            parse_cert_table(&m),
            Err(CertTableError::OutOfBounds { .. })
        ));
        let mut m = table.clone();
        m[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            parse_cert_table(&m),
            Err(CertTableError::OutOfBounds { .. })
        ));
        // Zero length.
        let mut m = table.clone();
        m[20..24].copy_from_slice(&0u32.to_le_bytes());
        assert!(matches!(
            parse_cert_table(&m),
            Err(CertTableError::MalformedEntry { .. })
        ));
        // Terminator with garbage.
        let mut m = table.clone();
        m[72 + 16] = 1;
        assert!(matches!(
            parse_cert_table(&m),
            Err(CertTableError::MalformedEntry { index: 3, .. })
        ));
        // No terminator at all.
        assert!(matches!(
            parse_cert_table(&[0xab; 48]),
            Err(CertTableError::Unterminated { len: 48 })
        ));
        // Too many entries.
        let many: Vec<CertEntry> = (0..=MAX_ENTRIES)
            .map(|_| CertEntry {
                guid: GUID_CRL,
                data: vec![0],
            })
            .collect();
        let t = encode_cert_table(&many).unwrap();
        assert_eq!(parse_cert_table(&t), Err(CertTableError::TooManyEntries));
        // Zero GUID cannot be encoded.
        assert_eq!(
            encode_cert_table(&[CertEntry {
                guid: [0; 16],
                data: vec![1]
            }]),
            Err(CertTableError::ZeroGuid)
        );
    }
}
