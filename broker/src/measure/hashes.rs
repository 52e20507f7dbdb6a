//! The SEV hashes table QEMU writes into the firmware's kernel-hashes page
//! for measured direct boot: SHA-256 of the command line (NUL-terminated),
//! the initrd and the kernel, each in a GUIDed entry.

use super::gctx::{sha256, PAGE};
use super::ovmf::{guid_le, GuidLe};

/// 9438d606-4f22-4cc9-b479-a793d411fd21
const TABLE_GUID: GuidLe = guid_le(
    0x9438_d606,
    0x4f22,
    0x4cc9,
    [0xb4, 0x79, 0xa7, 0x93, 0xd4, 0x11, 0xfd, 0x21],
);
/// 97d02dd8-bd20-4c94-aa78-e7714d36ab2a
const CMDLINE_GUID: GuidLe = guid_le(
    0x97d0_2dd8,
    0xbd20,
    0x4c94,
    [0xaa, 0x78, 0xe7, 0x71, 0x4d, 0x36, 0xab, 0x2a],
);
/// 44baf731-3a2f-4bd7-9af1-41e29169781d
const INITRD_GUID: GuidLe = guid_le(
    0x44ba_f731,
    0x3a2f,
    0x4bd7,
    [0x9a, 0xf1, 0x41, 0xe2, 0x91, 0x69, 0x78, 0x1d],
);
/// 4de79437-abd2-427f-b835-d5b172d2045b
const KERNEL_GUID: GuidLe = guid_le(
    0x4de7_9437,
    0xabd2,
    0x427f,
    [0xb8, 0x35, 0xd5, 0xb1, 0x72, 0xd2, 0x04, 0x5b],
);

/// Entry: GUID, u16 length, SHA-256.
const ENTRY_LEN: usize = 16 + 2 + 32;
/// Table: GUID, u16 length, three entries.
const TABLE_LEN: usize = 16 + 2 + 3 * ENTRY_LEN;
/// The table padded to 16 bytes, as QEMU copies it.
pub(crate) const PADDED_TABLE_LEN: usize = (TABLE_LEN + 15) & !15;

/// The three hashes of a measured direct boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootHashes {
    /// SHA-256 of the kernel file.
    pub kernel: [u8; 32],
    /// SHA-256 of the initrd file (of nothing without one).
    pub initrd: [u8; 32],
    /// SHA-256 of the command line followed by a NUL.
    pub cmdline: [u8; 32],
}

impl BootHashes {
    /// Hashes the inputs. The command line is hashed as given (no
    /// trimming) plus a terminating NUL; none and empty both hash `"\0"`.
    pub fn new(kernel: &[u8], initrd: Option<&[u8]>, append: Option<&str>) -> Self {
        let mut cmdline = append.unwrap_or("").as_bytes().to_vec();
        cmdline.push(0);
        Self {
            kernel: sha256(kernel),
            initrd: sha256(initrd.unwrap_or(&[])),
            cmdline: sha256(&cmdline),
        }
    }

    /// The padded table, byte for byte as QEMU builds it.
    pub(crate) fn table(&self) -> [u8; PADDED_TABLE_LEN] {
        let mut t = [0u8; PADDED_TABLE_LEN];
        t[..16].copy_from_slice(&TABLE_GUID);
        t[16..18].copy_from_slice(&(TABLE_LEN as u16).to_le_bytes());
        for (i, (guid, hash)) in [
            (CMDLINE_GUID, &self.cmdline),
            (INITRD_GUID, &self.initrd),
            (KERNEL_GUID, &self.kernel),
        ]
        .into_iter()
        .enumerate()
        {
            let o = 18 + i * ENTRY_LEN;
            t[o..o + 16].copy_from_slice(&guid);
            t[o + 16..o + 18].copy_from_slice(&(ENTRY_LEN as u16).to_le_bytes());
            t[o + 18..o + ENTRY_LEN].copy_from_slice(hash);
        }
        t
    }

    /// The page holding the table at `offset`, or `None` when it does not fit.
    pub(crate) fn page(&self, offset: usize) -> Option<[u8; PAGE]> {
        let end = offset.checked_add(PADDED_TABLE_LEN)?;
        if end > PAGE {
            return None;
        }
        let mut p = [0u8; PAGE];
        p[offset..end].copy_from_slice(&self.table());
        Some(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_layout() {
        assert_eq!(TABLE_LEN, 168);
        assert_eq!(PADDED_TABLE_LEN, 176);
        let h = BootHashes::new(b"", None, None);
        let t = h.table();
        assert_eq!(
            hex::encode(&t[..18]),
            "06d63894224fc94cb479a793d411fd21a800"
        );
        // cmdline entry first, hashing a lone NUL.
        assert_eq!(
            hex::encode(h.cmdline),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
        assert_eq!(BootHashes::new(b"", None, Some("")), h);
        assert!(h.page(4096 - 176).is_some());
        assert!(h.page(4096 - 175).is_none());
        assert!(h.page(usize::MAX).is_none());
    }

    #[test]
    fn cmdline_is_not_trimmed() {
        assert_ne!(
            BootHashes::new(b"", None, Some("quiet ")).cmdline,
            BootHashes::new(b"", None, Some("quiet")).cmdline
        );
    }
}
