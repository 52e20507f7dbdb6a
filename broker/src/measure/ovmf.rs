//! Parsers for the two structures at the end of an OVMF (or Coconut-SVSM)
//! image that a launch measurement needs: the GUIDed footer table (ending
//! 32 bytes before the end of the file) and the SEV metadata table it
//! points to (`ASEV`, edk2 `OvmfPkg/ResetVector/X64/OvmfSevMetadata.asm`).
//!
//! Parsers never panic: every offset read from the file is checked against
//! the file's length and reported with [`OvmfError`].

use std::collections::HashMap;

use super::error::OvmfError;

/// A GUID in the little-endian ("mixed-endian") byte order used on disk.
pub(crate) type GuidLe = [u8; 16];

/// Builds the on-disk form of a GUID written as
/// `d1-d2-d3-d4[0..2]-d4[2..8]`.
pub(crate) const fn guid_le(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> GuidLe {
    let a = d1.to_le_bytes();
    let b = d2.to_le_bytes();
    let c = d3.to_le_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d4[0], d4[1], d4[2], d4[3], d4[4], d4[5],
        d4[6], d4[7],
    ]
}

/// 96b582de-1fb2-45f7-baea-a366c55a082d: the footer entry closing the table.
pub(crate) const OVMF_TABLE_FOOTER_GUID: GuidLe = guid_le(
    0x96b5_82de,
    0x1fb2,
    0x45f7,
    [0xba, 0xea, 0xa3, 0x66, 0xc5, 0x5a, 0x08, 0x2d],
);
/// 7255371f-3a3b-4b04-927b-1da6efa8d454: GPA of the kernel hashes table.
pub(crate) const SEV_HASH_TABLE_RV_GUID: GuidLe = guid_le(
    0x7255_371f,
    0x3a3b,
    0x4b04,
    [0x92, 0x7b, 0x1d, 0xa6, 0xef, 0xa8, 0xd4, 0x54],
);
/// 00f771de-1a7e-4fcb-890e-68c77e2fb44e: the SEV-ES AP reset vector.
pub(crate) const SEV_ES_RESET_BLOCK_GUID: GuidLe = guid_le(
    0x00f7_71de,
    0x1a7e,
    0x4fcb,
    [0x89, 0x0e, 0x68, 0xc7, 0x7e, 0x2f, 0xb4, 0x4e],
);
/// dc886566-984a-4798-a75e-5585a7bf67cc: offset of the SEV metadata table.
pub(crate) const OVMF_SEV_META_DATA_GUID: GuidLe = guid_le(
    0xdc88_6566,
    0x984a,
    0x4798,
    [0xa7, 0x5e, 0x55, 0x85, 0xa7, 0xbf, 0x67, 0xcc],
);
/// a789a612-0597-4c4b-a49f-cbb1fe9d1ddd: Coconut-SVSM entry point.
pub(crate) const SVSM_INFO_GUID: GuidLe = guid_le(
    0xa789_a612,
    0x0597,
    0x4c4b,
    [0xa4, 0x9f, 0xcb, 0xb1, 0xfe, 0x9d, 0x1d, 0xdd],
);

/// Size of a footer-table entry header: u16 length + GUID.
const ENTRY_HEADER: usize = 18;
/// The table ends this many bytes before the end of the image.
const TABLE_END_GAP: usize = 32;
/// SEV metadata header: signature, size, version, item count.
const META_HEADER: usize = 16;
/// One metadata section descriptor: gpa, size, type (u32 each).
const META_ITEM: usize = 12;

/// What a metadata section asks the hypervisor to do with its pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SectionType {
    /// Pre-validated, zeroed memory (SNP_SEC_MEM).
    SnpSecMemory,
    /// The SNP secrets page.
    SnpSecrets,
    /// The CPUID page.
    Cpuid,
    /// The SVSM calling area.
    SvsmCaa,
    /// The page holding the kernel/initrd/cmdline hashes table.
    SnpKernelHashes,
}

impl SectionType {
    fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::SnpSecMemory,
            2 => Self::SnpSecrets,
            3 => Self::Cpuid,
            4 => Self::SvsmCaa,
            0x10 => Self::SnpKernelHashes,
            _ => return None,
        })
    }
}

/// One SEV metadata section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Section {
    /// Guest physical address.
    pub gpa: u32,
    /// Size in bytes.
    pub size: u32,
    /// What it holds.
    pub kind: SectionType,
}

/// A parsed firmware image: its bytes, footer table and metadata sections.
#[derive(Debug, Clone)]
pub struct Firmware {
    data: Vec<u8>,
    table: HashMap<GuidLe, Vec<u8>>,
    sections: Vec<Section>,
}

impl Firmware {
    /// Parses an image. A file without the footer GUID has an empty table
    /// (plain SEV needs none); a table or metadata that is present but
    /// inconsistent is an error.
    pub fn parse(data: Vec<u8>) -> Result<Self, OvmfError> {
        let table = parse_footer_table(&data)?;
        let sections = match table.get(&OVMF_SEV_META_DATA_GUID) {
            Some(entry) => parse_metadata(&data, entry)?,
            None => Vec::new(),
        };
        Ok(Self {
            data,
            table,
            sections,
        })
    }

    /// The image bytes.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// The SEV metadata sections, in file order.
    pub fn sections(&self) -> &[Section] {
        &self.sections
    }

    /// Whether the footer table was found.
    pub fn has_table(&self) -> bool {
        !self.table.is_empty()
    }

    /// Whether a metadata section of this type exists.
    pub fn has_section(&self, kind: SectionType) -> bool {
        self.sections.iter().any(|s| s.kind == kind)
    }

    /// The first four bytes of a table entry, as a little-endian u32.
    fn table_u32(&self, guid: &GuidLe, name: &'static str) -> Result<Option<u32>, OvmfError> {
        match self.table.get(guid) {
            None => Ok(None),
            Some(e) => e
                .get(..4)
                .map(|b| Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]])))
                .ok_or(OvmfError::EntryTooShort {
                    entry: name,
                    len: e.len(),
                }),
        }
    }

    /// The SEV-ES reset vector (the APs' first instruction), if the table has one.
    pub fn sev_es_reset_eip(&self) -> Result<Option<u32>, OvmfError> {
        self.table_u32(&SEV_ES_RESET_BLOCK_GUID, "SEV_ES_RESET_BLOCK")
    }

    /// The GPA of the kernel hashes table, if the firmware has one (0 means none).
    pub fn sev_hashes_table_gpa(&self) -> Result<Option<u32>, OvmfError> {
        Ok(self
            .table_u32(&SEV_HASH_TABLE_RV_GUID, "SEV_HASH_TABLE_RV")?
            .filter(|&g| g != 0))
    }

    /// The Coconut-SVSM entry offset (relative to the image's GPA).
    pub fn svsm_entry_offset(&self) -> Result<Option<u32>, OvmfError> {
        self.table_u32(&SVSM_INFO_GUID, "SVSM_INFO")
    }
}

fn u16_at(d: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([d[off], d[off + 1]])
}

fn u32_at(d: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([d[off], d[off + 1], d[off + 2], d[off + 3]])
}

/// Parses the GUIDed table: entries are laid out backwards from the footer,
/// each as `data, u16 length (data + 18), GUID`.
fn parse_footer_table(data: &[u8]) -> Result<HashMap<GuidLe, Vec<u8>>, OvmfError> {
    let mut table = HashMap::new();
    let Some(footer_start) = data.len().checked_sub(TABLE_END_GAP + ENTRY_HEADER) else {
        return Err(OvmfError::TooShort { len: data.len() });
    };
    let guid: GuidLe = data[footer_start + 2..footer_start + ENTRY_HEADER]
        .try_into()
        .map_err(|_| OvmfError::TooShort { len: data.len() })?;
    if guid != OVMF_TABLE_FOOTER_GUID {
        return Ok(table);
    }
    let footer_len = usize::from(u16_at(data, footer_start));
    let Some(table_len) = footer_len.checked_sub(ENTRY_HEADER) else {
        return Err(OvmfError::BadTableLength {
            len: footer_len,
            available: footer_start,
        });
    };
    if table_len > footer_start {
        return Err(OvmfError::BadTableLength {
            len: footer_len,
            available: footer_start,
        });
    }
    let mut bytes = &data[footer_start - table_len..footer_start];
    while bytes.len() >= ENTRY_HEADER {
        let hdr = bytes.len() - ENTRY_HEADER;
        let len = usize::from(u16_at(bytes, hdr));
        if len < ENTRY_HEADER || len > bytes.len() {
            return Err(OvmfError::BadEntryLength {
                len,
                offset: footer_start - table_len + hdr,
            });
        }
        let mut guid = [0u8; 16];
        guid.copy_from_slice(&bytes[hdr + 2..]);
        table.insert(guid, bytes[bytes.len() - len..hdr].to_vec());
        bytes = &bytes[..bytes.len() - len];
    }
    if !bytes.is_empty() {
        return Err(OvmfError::TrailingTableBytes { len: bytes.len() });
    }
    Ok(table)
}

/// Parses the `ASEV` metadata table whose offset from the end of the image
/// is the metadata entry's first u32.
fn parse_metadata(data: &[u8], entry: &[u8]) -> Result<Vec<Section>, OvmfError> {
    if entry.len() < 4 {
        return Err(OvmfError::EntryTooShort {
            entry: "OVMF_SEV_METADATA",
            len: entry.len(),
        });
    }
    let from_end = u32_at(entry, 0) as usize;
    let start = data
        .len()
        .checked_sub(from_end)
        .filter(|s| s + META_HEADER <= data.len())
        .ok_or(OvmfError::MetadataOutOfBounds {
            offset_from_end: from_end,
            len: data.len(),
        })?;
    let h = &data[start..start + META_HEADER];
    if &h[..4] != b"ASEV" {
        return Err(OvmfError::MetadataSignature {
            found: [h[0], h[1], h[2], h[3]],
        });
    }
    let size = u32_at(h, 4) as usize;
    let version = u32_at(h, 8);
    let count = u32_at(h, 12) as usize;
    if version != 1 {
        return Err(OvmfError::MetadataVersion { version });
    }
    let needed = count
        .checked_mul(META_ITEM)
        .and_then(|n| n.checked_add(META_HEADER));
    if size < META_HEADER || start + size > data.len() || needed.is_none_or(|n| n > size) {
        return Err(OvmfError::MetadataSize {
            size,
            items: count,
            available: data.len() - start,
        });
    }
    let items = &data[start + META_HEADER..start + size];
    items
        .chunks_exact(META_ITEM)
        .take(count)
        .map(|it| {
            let raw = u32_at(it, 8);
            Ok(Section {
                gpa: u32_at(it, 0),
                size: u32_at(it, 4),
                kind: SectionType::from_u32(raw).ok_or(OvmfError::UnknownSection { kind: raw })?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a minimal image: `body` zeros, then the table entries, the
    /// footer entry and the 32-byte gap, padded to 4 KiB at the front.
    fn image(entries: &[(GuidLe, Vec<u8>)], metadata: Option<&[u8]>) -> Vec<u8> {
        let mut table = Vec::new();
        for (guid, data) in entries {
            table.extend_from_slice(data);
            table.extend_from_slice(&((data.len() + ENTRY_HEADER) as u16).to_le_bytes());
            table.extend_from_slice(guid);
        }
        table.extend_from_slice(&((table.len() + ENTRY_HEADER) as u16).to_le_bytes());
        table.extend_from_slice(&OVMF_TABLE_FOOTER_GUID);
        table.extend_from_slice(&[0u8; TABLE_END_GAP]);
        let mut out = vec![0u8; 4096 - table.len()];
        if let Some(m) = metadata {
            out[..m.len()].copy_from_slice(m);
        }
        out.extend_from_slice(&table);
        out
    }

    fn asev(items: &[(u32, u32, u32)]) -> Vec<u8> {
        let mut m = b"ASEV".to_vec();
        m.extend_from_slice(&((16 + 12 * items.len()) as u32).to_le_bytes());
        m.extend_from_slice(&1u32.to_le_bytes());
        m.extend_from_slice(&(items.len() as u32).to_le_bytes());
        for (g, s, t) in items {
            for v in [g, s, t] {
                m.extend_from_slice(&v.to_le_bytes());
            }
        }
        m
    }

    fn meta_entry() -> (GuidLe, Vec<u8>) {
        // Metadata sits at offset 0 of a 4096-byte image: 4096 from the end.
        (OVMF_SEV_META_DATA_GUID, 4096u32.to_le_bytes().to_vec())
    }

    #[test]
    fn guid_bytes_are_mixed_endian() {
        assert_eq!(
            hex::encode(OVMF_TABLE_FOOTER_GUID),
            "de82b596b21ff745baeaa366c55a082d"
        );
    }

    #[test]
    fn well_formed_image_parses() {
        let img = image(
            &[
                meta_entry(),
                (
                    SEV_ES_RESET_BLOCK_GUID,
                    0xffff_f004u32.to_le_bytes().to_vec(),
                ),
            ],
            Some(&asev(&[(0x80_0000, 0x9000, 1), (0x80_9000, 0x1000, 2)])),
        );
        let fw = Firmware::parse(img).unwrap();
        assert_eq!(fw.sev_es_reset_eip().unwrap(), Some(0xffff_f004));
        assert_eq!(fw.sev_hashes_table_gpa().unwrap(), None);
        assert_eq!(fw.sections().len(), 2);
        assert_eq!(fw.sections()[1].kind, SectionType::SnpSecrets);
    }

    #[test]
    fn no_footer_guid_means_no_table() {
        let fw = Firmware::parse(vec![0u8; 4096]).unwrap();
        assert!(!fw.has_table());
        assert_eq!(fw.sev_es_reset_eip().unwrap(), None);
    }

    #[test]
    fn truncated_images_are_errors_not_panics() {
        let good = image(&[meta_entry()], Some(&asev(&[(0, 0x1000, 1)])));
        for n in [0, 1, 49, 50] {
            let r = Firmware::parse(good[good.len() - n..].to_vec());
            assert!(r.is_err() || n == 50, "{n} bytes: {r:?}");
        }
        assert!(matches!(
            Firmware::parse(vec![0u8; 10]),
            Err(OvmfError::TooShort { len: 10 })
        ));
        // The last 100 bytes hold the table but not the metadata it points to.
        let tail = good[good.len() - 100..].to_vec();
        assert!(matches!(
            Firmware::parse(tail),
            Err(OvmfError::MetadataOutOfBounds { .. })
        ));
    }

    #[test]
    fn bad_table_lengths_are_errors() {
        let mut img = image(&[meta_entry()], Some(&asev(&[])));
        let footer = img.len() - 50;
        // Footer claims more table than the file holds.
        img[footer..footer + 2].copy_from_slice(&0xffffu16.to_le_bytes());
        assert!(matches!(
            Firmware::parse(img.clone()),
            Err(OvmfError::BadTableLength { .. })
        ));
        // Footer length below its own header.
        img[footer..footer + 2].copy_from_slice(&3u16.to_le_bytes());
        assert!(matches!(
            Firmware::parse(img.clone()),
            Err(OvmfError::BadTableLength { .. })
        ));
        // An entry whose length is below the header size.
        let mut img = image(&[meta_entry()], Some(&asev(&[])));
        let entry_hdr = img.len() - 50 - ENTRY_HEADER;
        img[entry_hdr..entry_hdr + 2].copy_from_slice(&2u16.to_le_bytes());
        assert!(matches!(
            Firmware::parse(img.clone()),
            Err(OvmfError::BadEntryLength { len: 2, .. })
        ));
        // An entry longer than what is left of the table.
        img[entry_hdr..entry_hdr + 2].copy_from_slice(&500u16.to_le_bytes());
        assert!(matches!(
            Firmware::parse(img),
            Err(OvmfError::BadEntryLength { len: 500, .. })
        ));
    }

    #[test]
    fn short_entries_are_errors() {
        let img = image(
            &[
                (OVMF_SEV_META_DATA_GUID, vec![1, 2]),
                (SEV_ES_RESET_BLOCK_GUID, vec![1]),
            ],
            None,
        );
        assert!(matches!(
            Firmware::parse(img),
            Err(OvmfError::EntryTooShort { .. })
        ));
        let img = image(&[(SEV_ES_RESET_BLOCK_GUID, vec![1])], None);
        let fw = Firmware::parse(img).unwrap();
        assert!(matches!(
            fw.sev_es_reset_eip(),
            Err(OvmfError::EntryTooShort { len: 1, .. })
        ));
    }

    #[test]
    fn bad_metadata_is_an_error() {
        let mut m = asev(&[(0, 0x1000, 1)]);
        m[..4].copy_from_slice(b"XSEV");
        assert!(matches!(
            Firmware::parse(image(&[meta_entry()], Some(&m))),
            Err(OvmfError::MetadataSignature { .. })
        ));
        let mut m = asev(&[(0, 0x1000, 1)]);
        m[8] = 2;
        assert!(matches!(
            Firmware::parse(image(&[meta_entry()], Some(&m))),
            Err(OvmfError::MetadataVersion { version: 2 })
        ));
        let mut m = asev(&[(0, 0x1000, 1)]);
        m[12] = 200; // 200 items in a 28-byte table
        assert!(matches!(
            Firmware::parse(image(&[meta_entry()], Some(&m))),
            Err(OvmfError::MetadataSize { items: 200, .. })
        ));
        let mut m = asev(&[(0, 0x1000, 1)]);
        m[4..8].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
        assert!(matches!(
            Firmware::parse(image(&[meta_entry()], Some(&m))),
            Err(OvmfError::MetadataSize { .. })
        ));
        let m = asev(&[(0, 0x1000, 9)]);
        assert!(matches!(
            Firmware::parse(image(&[meta_entry()], Some(&m))),
            Err(OvmfError::UnknownSection { kind: 9 })
        ));
        // Offset from end larger than the file.
        let img = image(
            &[(OVMF_SEV_META_DATA_GUID, 9999u32.to_le_bytes().to_vec())],
            None,
        );
        assert!(matches!(
            Firmware::parse(img),
            Err(OvmfError::MetadataOutOfBounds { .. })
        ));
    }
}
