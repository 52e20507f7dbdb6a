//! A look at the x86 Linux boot setup header (Documentation/arch/x86/boot.rst)
//! of the kernel passed with `--kernel`.
//!
//! The digest hashes the kernel file exactly as given: QEMU leaves the
//! setup header unmodified when SEV is on so that the hash matches the
//! file. This parser only tells the user when the file is not a bzImage
//! (a common mistake is passing `vmlinux`, which QEMU cannot boot through
//! OVMF), and reports the boot protocol version in `--json`.

use super::error::KernelHeaderError;

/// What the setup header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetupHeader {
    /// Boot protocol version, e.g. (2, 15).
    pub protocol: (u8, u8),
    /// Setup code size in 512-byte sectors (0 is read as 4).
    pub setup_sects: u8,
}

const SETUP_SECTS: usize = 0x1f1;
const BOOT_FLAG: usize = 0x1fe;
const MAGIC: usize = 0x202;
const VERSION: usize = 0x206;

/// Parses the setup header of a bzImage.
pub fn parse_setup_header(data: &[u8]) -> Result<SetupHeader, KernelHeaderError> {
    if data.len() < VERSION + 2 {
        return Err(KernelHeaderError::TooShort { len: data.len() });
    }
    if data[BOOT_FLAG..BOOT_FLAG + 2] != [0x55, 0xaa] {
        return Err(KernelHeaderError::NoBootFlag);
    }
    if &data[MAGIC..MAGIC + 4] != b"HdrS" {
        return Err(KernelHeaderError::NoMagic);
    }
    let sectors = data[SETUP_SECTS];
    let effective = if sectors == 0 {
        4
    } else {
        usize::from(sectors)
    };
    if (effective + 1) * 512 > data.len() {
        return Err(KernelHeaderError::SetupPastEnd {
            sectors,
            len: data.len(),
        });
    }
    Ok(SetupHeader {
        protocol: (data[VERSION + 1], data[VERSION]),
        setup_sects: sectors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bzimage(sects: u8, len: usize) -> Vec<u8> {
        let mut k = vec![0u8; len];
        k[SETUP_SECTS] = sects;
        k[BOOT_FLAG..BOOT_FLAG + 2].copy_from_slice(&[0x55, 0xaa]);
        k[MAGIC..MAGIC + 4].copy_from_slice(b"HdrS");
        k[VERSION..VERSION + 2].copy_from_slice(&0x020fu16.to_le_bytes());
        k
    }

    #[test]
    fn reads_a_bzimage_header() {
        let h = parse_setup_header(&bzimage(27, 28 * 512 + 100)).unwrap();
        assert_eq!(h.protocol, (2, 15));
        assert_eq!(h.setup_sects, 27);
        // setup_sects 0 means 4.
        assert!(parse_setup_header(&bzimage(0, 5 * 512)).is_ok());
    }

    #[test]
    fn malformed_headers_are_errors() {
        assert_eq!(
            parse_setup_header(&[]),
            Err(KernelHeaderError::TooShort { len: 0 })
        );
        let k = bzimage(27, 28 * 512);
        assert_eq!(
            parse_setup_header(&k[..0x207]),
            Err(KernelHeaderError::TooShort { len: 0x207 })
        );
        let mut bad = k.clone();
        bad[BOOT_FLAG] = 0;
        assert_eq!(parse_setup_header(&bad), Err(KernelHeaderError::NoBootFlag));
        let mut bad = k.clone();
        bad[MAGIC] = b'X';
        assert_eq!(parse_setup_header(&bad), Err(KernelHeaderError::NoMagic));
        assert_eq!(
            parse_setup_header(&k[..0x300]),
            Err(KernelHeaderError::SetupPastEnd {
                sectors: 27,
                len: 0x300
            })
        );
        // An ELF vmlinux is not a bzImage.
        let mut elf = vec![0u8; 4096];
        elf[..4].copy_from_slice(b"\x7fELF");
        assert!(parse_setup_header(&elf).is_err());
    }
}
