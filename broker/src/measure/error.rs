//! Errors of `broker measure`: each says what is wrong with which input
//! and, where there is one, what to do about it.

use std::path::PathBuf;

/// A name that is none of the known modes, VMM types or vCPU types.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("unknown {what} {name:?}; use {choices}")]
pub struct UnknownName {
    /// "mode", "VMM type" or "vCPU type".
    pub what: &'static str,
    /// The name given.
    pub name: String,
    /// The names to use instead.
    pub choices: String,
}

/// A firmware image whose footer table or SEV metadata cannot be read.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum OvmfError {
    /// The file is too small to hold the footer table.
    #[error("the image is {len} bytes, too short to hold the OVMF footer table (at least 50)")]
    TooShort {
        /// File length.
        len: usize,
    },
    /// The footer's table length does not fit the file.
    #[error("the OVMF footer table claims {len} bytes but only {available} precede it")]
    BadTableLength {
        /// Claimed length, including the footer's own 18-byte header.
        len: usize,
        /// Bytes before the footer.
        available: usize,
    },
    /// A table entry's length is below its header size or beyond the table.
    #[error("OVMF footer table entry at offset {offset:#x} has invalid length {len}")]
    BadEntryLength {
        /// Claimed length.
        len: usize,
        /// File offset of the entry's header.
        offset: usize,
    },
    /// Bytes left over in the table that form no entry.
    #[error("{len} bytes at the start of the OVMF footer table form no entry")]
    TrailingTableBytes {
        /// How many.
        len: usize,
    },
    /// A table entry is too short for the value it must hold.
    #[error("OVMF footer table entry {entry} holds {len} bytes, fewer than 4")]
    EntryTooShort {
        /// Entry name.
        entry: &'static str,
        /// Its data length.
        len: usize,
    },
    /// The metadata offset points outside the file.
    #[error("the SEV metadata offset {offset_from_end:#x} (from the end) lies outside the {len}-byte image")]
    MetadataOutOfBounds {
        /// Offset from the end of the file.
        offset_from_end: usize,
        /// File length.
        len: usize,
    },
    /// The metadata header does not start with `ASEV`.
    #[error("the SEV metadata signature is {found:02x?}, not \"ASEV\"")]
    MetadataSignature {
        /// The four bytes found.
        found: [u8; 4],
    },
    /// The metadata version is not 1.
    #[error("SEV metadata version {version} is not supported (only 1)")]
    MetadataVersion {
        /// The version found.
        version: u32,
    },
    /// The metadata size is inconsistent with its item count or the file.
    #[error("SEV metadata of {size} bytes cannot hold {items} sections ({available} bytes left in the image)")]
    MetadataSize {
        /// Claimed size.
        size: usize,
        /// Claimed item count.
        items: usize,
        /// Bytes from the header to the end of the file.
        available: usize,
    },
    /// A section type this tool does not know.
    #[error("unknown OVMF metadata section type {kind:#x}")]
    UnknownSection {
        /// The raw type.
        kind: u32,
    },
}

/// A Linux kernel image whose x86 boot setup header cannot be read.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum KernelHeaderError {
    /// The file ends before the setup header.
    #[error("{len} bytes is too short for an x86 boot setup header")]
    TooShort {
        /// File length.
        len: usize,
    },
    /// No 0xAA55 boot flag at 0x1fe.
    #[error("no 0xAA55 boot flag at offset 0x1fe")]
    NoBootFlag,
    /// No "HdrS" magic at 0x202.
    #[error("no \"HdrS\" magic at offset 0x202")]
    NoMagic,
    /// The setup code claims more sectors than the file has.
    #[error("setup code of {sectors} sectors runs past the end of the {len}-byte file")]
    SetupPastEnd {
        /// setup_sects (0 means 4).
        sectors: u8,
        /// File length.
        len: usize,
    },
}

/// Why a launch digest could not be computed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeasureError {
    /// An input file could not be read.
    #[error("cannot read {what} {}: {source}", path.display())]
    Read {
        /// Which input (firmware, kernel, ...).
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The firmware image is malformed.
    #[error("{what} {}: {source}; is this an OVMF .fd image built with SEV support?", path.display())]
    Firmware {
        /// Which image (firmware or SVSM).
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The parse error.
        source: OvmfError,
    },
    /// SNP mode with a kernel, but the firmware has no kernel-hashes page.
    #[error(
        "Kernel specified but OVMF metadata doesn't include SNP_KERNEL_HASHES section: \
         this firmware cannot measure a kernel, initrd or command line; use an OVMF \
         built from OvmfPkg/AmdSev/AmdSevX64.dsc, or measure without --kernel"
    )]
    NoSnpKernelHashes,
    /// SEV or SEV-ES with a kernel, but the firmware has no hashes table.
    #[error(
        "Kernel specified but OVMF doesn't support kernel/initrd/cmdline measurement \
         (no SEV hash table in its footer); use an OVMF built from \
         OvmfPkg/AmdSev/AmdSevX64.dsc, or measure without --kernel"
    )]
    NoSevHashTable,
    /// The firmware has no SEV metadata, which SNP needs.
    #[error(
        "the firmware has no SEV metadata (OVMF_SEV_METADATA entry): it cannot boot an \
         SNP guest; use an OVMF built with SEV-SNP support"
    )]
    NoMetadata,
    /// More than one vCPU, but no AP reset vector.
    #[error(
        "the firmware has no SEV-ES reset block, so it cannot start {vcpus} vCPUs under \
         SEV-ES/SNP; use an OVMF built with SEV-ES support"
    )]
    NoResetVector {
        /// Requested vCPUs.
        vcpus: u32,
    },
    /// The SVSM image has no entry point.
    #[error(
        "the SVSM image has no SVSM_INFO entry in its footer table; is it a Coconut-SVSM binary?"
    )]
    NoSvsmEntry,
    /// The kernel hashes table does not fit in its page.
    #[error(
        "the firmware puts the kernel hashes table at {gpa:#x} and its section is {size} \
         bytes: the 176-byte table must fit in that one 4096-byte page"
    )]
    BadHashesPage {
        /// The table's GPA.
        gpa: u32,
        /// The metadata section's size.
        size: u32,
    },
    /// A length that must be whole pages is not.
    #[error("{what} of {len} bytes is not a whole number of 4096-byte pages")]
    NotPageMultiple {
        /// What was measured.
        what: &'static str,
        /// Its length.
        len: u64,
    },
    /// Images that would not fit below 4 GiB.
    #[error("{what} of {len} bytes does not fit below 4 GiB")]
    TooLarge {
        /// Which image.
        what: &'static str,
        /// Its length.
        len: u64,
    },
    /// A mode that needs --vcpus got none (or zero).
    #[error("mode {mode} needs --vcpus N (at least 1)")]
    MissingVcpus {
        /// The mode.
        mode: &'static str,
    },
    /// QEMU guests need the vCPU signature.
    #[error(
        "mode {mode} with VMM type QEMU needs the guest CPU: pass --vcpu-type (e.g. \
         EPYC-v4, EPYC-Milan, EPYC-Genoa, EPYC-Turin), --vcpu-sig, or --vcpu-family/--vcpu-model/--vcpu-stepping"
    )]
    MissingVcpuType {
        /// The mode.
        mode: &'static str,
    },
    /// --snp-ovmf-hash outside SNP mode.
    #[error("--snp-ovmf-hash works only with --mode snp")]
    OvmfHashNeedsSnp,
    /// --initrd or --append without --kernel.
    #[error(
        "{flag} needs --kernel: the firmware measures initrd and command line only with a kernel"
    )]
    NeedsKernel {
        /// The flag.
        flag: &'static str,
    },
    /// SVSM mode inputs missing or wrong.
    #[error("{0}")]
    Svsm(&'static str),
}
