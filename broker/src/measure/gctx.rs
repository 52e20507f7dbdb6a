//! The SEV-SNP guest context's launch digest: every page the hypervisor
//! adds with SNP_LAUNCH_UPDATE extends it with a SHA-384 over a
//! PAGE_INFO structure (SEV-SNP firmware ABI, "Layout of the PAGE_INFO
//! structure").

use aws_lc_rs::digest;

use super::error::MeasureError;

/// Size of a guest page.
pub(crate) const PAGE: usize = 4096;

/// The VMSA is recorded with GPA (u64)-1, page aligned and cut to 52 bits.
pub(crate) const VMSA_GPA: u64 = 0xFFFF_FFFF_F000;

/// Launch digest length (SHA-384).
pub const LD_LEN: usize = 48;

/// PAGE_TYPE values of SNP_LAUNCH_UPDATE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum PageType {
    Normal = 0x01,
    Vmsa = 0x02,
    Zero = 0x03,
    Unmeasured = 0x04,
    Secrets = 0x05,
    Cpuid = 0x06,
}

/// SHA-384 of `data`.
pub(crate) fn sha384(data: &[u8]) -> [u8; LD_LEN] {
    let mut out = [0u8; LD_LEN];
    out.copy_from_slice(digest::digest(&digest::SHA384, data).as_ref());
    out
}

/// SHA-256 of `data`.
pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, data).as_ref());
    out
}

/// A launch digest being built, page by page.
#[derive(Debug, Clone)]
pub(crate) struct Gctx {
    ld: [u8; LD_LEN],
}

impl Gctx {
    /// A fresh context (all-zero digest).
    pub(crate) fn new() -> Self {
        Self { ld: [0; LD_LEN] }
    }

    /// A context that continues from a digest computed earlier (the
    /// `--snp-ovmf-hash` shortcut: the digest after the firmware pages).
    pub(crate) fn from_seed(seed: [u8; LD_LEN]) -> Self {
        Self { ld: seed }
    }

    /// The digest so far.
    pub(crate) fn ld(&self) -> [u8; LD_LEN] {
        self.ld
    }

    fn update(&mut self, page_type: PageType, gpa: u64, contents: &[u8; LD_LEN]) {
        let mut info = [0u8; 0x70];
        info[..48].copy_from_slice(&self.ld);
        info[48..96].copy_from_slice(contents);
        info[96..98].copy_from_slice(&0x70u16.to_le_bytes());
        info[98] = page_type as u8;
        // is_imi, vmpl3/2/1 permissions and a reserved byte stay zero.
        info[104..112].copy_from_slice(&gpa.to_le_bytes());
        self.ld = sha384(&info);
    }

    /// Measured pages with contents, starting at `gpa`.
    pub(crate) fn normal_pages(&mut self, gpa: u64, data: &[u8]) -> Result<(), MeasureError> {
        check_pages(data.len() as u64, "page data")?;
        for (i, page) in data.chunks_exact(PAGE).enumerate() {
            self.update(PageType::Normal, gpa + (i * PAGE) as u64, &sha384(page));
        }
        Ok(())
    }

    /// Zero or unmeasured pages (`len` bytes from `gpa`).
    pub(crate) fn empty_pages(
        &mut self,
        page_type: PageType,
        gpa: u64,
        len: u64,
    ) -> Result<(), MeasureError> {
        check_pages(len, "metadata section")?;
        let mut off = 0;
        while off < len {
            self.update(page_type, gpa + off, &[0; LD_LEN]);
            off += PAGE as u64;
        }
        Ok(())
    }

    /// One secrets or CPUID page.
    pub(crate) fn special_page(&mut self, page_type: PageType, gpa: u64) {
        self.update(page_type, gpa, &[0; LD_LEN]);
    }

    /// One VMSA page.
    pub(crate) fn vmsa_page(&mut self, page: &[u8; PAGE]) {
        self.update(PageType::Vmsa, VMSA_GPA, &sha384(page));
    }
}

fn check_pages(len: u64, what: &'static str) -> Result<(), MeasureError> {
    if !len.is_multiple_of(PAGE as u64) {
        return Err(MeasureError::NotPageMultiple { what, len });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_info_layout_is_0x70_bytes_and_chains() {
        let mut a = Gctx::new();
        a.special_page(PageType::Secrets, 0x1000);
        let first = a.ld();
        a.special_page(PageType::Secrets, 0x1000);
        assert_ne!(first, a.ld(), "each update chains on the previous digest");
        let mut b = Gctx::from_seed(first);
        b.special_page(PageType::Secrets, 0x1000);
        assert_eq!(a.ld(), b.ld());
    }

    #[test]
    fn partial_pages_are_refused() {
        let mut g = Gctx::new();
        assert!(matches!(
            g.normal_pages(0, &[0u8; 100]),
            Err(MeasureError::NotPageMultiple { len: 100, .. })
        ));
        assert!(g.empty_pages(PageType::Zero, 0, 4097).is_err());
    }
}
