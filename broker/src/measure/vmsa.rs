//! The initial VMSA (SEV-ES save area, AMD APM vol. 2 table B-4) of each
//! vCPU, as the hypervisor sets it before launch. SEV-ES and SNP measure
//! these pages, so every register the VMM initialises differently changes
//! the digest: that is what `--vmm-type` selects.

use super::gctx::PAGE;
use super::VmmType;

/// The bootstrap processor starts at the reset vector.
pub(crate) const BSP_EIP: u32 = 0xffff_fff0;

/// A VMCB segment register: selector, attributes, limit, base.
#[derive(Debug, Clone, Copy, Default)]
struct Seg(u16, u16, u32, u64);

/// The registers a VMM sets; everything else in the page is zero.
#[derive(Debug, Clone, Default)]
struct SaveArea {
    es: Seg,
    cs: Seg,
    ss: Seg,
    ds: Seg,
    fs: Seg,
    gs: Seg,
    gdtr: Seg,
    ldtr: Seg,
    idtr: Seg,
    tr: Seg,
    efer: u64,
    cr4: u64,
    cr0: u64,
    dr7: u64,
    dr6: u64,
    rflags: u64,
    rip: u64,
    g_pat: u64,
    rdx: u64,
    sev_features: u64,
    xcr0: u64,
    mxcsr: u32,
    x87_fcw: u16,
}

// Byte offsets in the save area (Linux `struct sev_es_save_area`).
const OFF_EFER: usize = 0xd0;
const OFF_CR4: usize = 0x148;
const OFF_CR0: usize = 0x158;
const OFF_DR7: usize = 0x160;
const OFF_DR6: usize = 0x168;
const OFF_RFLAGS: usize = 0x170;
const OFF_RIP: usize = 0x178;
const OFF_G_PAT: usize = 0x268;
const OFF_RDX: usize = 0x310;
const OFF_SEV_FEATURES: usize = 0x3b0;
const OFF_XCR0: usize = 0x3e8;
const OFF_MXCSR: usize = 0x408;
const OFF_X87_FCW: usize = 0x410;

impl SaveArea {
    fn to_page(&self) -> [u8; PAGE] {
        let mut p = [0u8; PAGE];
        let segs = [
            self.es, self.cs, self.ss, self.ds, self.fs, self.gs, self.gdtr, self.ldtr, self.idtr,
            self.tr,
        ];
        for (i, s) in segs.iter().enumerate() {
            let o = i * 16;
            p[o..o + 2].copy_from_slice(&s.0.to_le_bytes());
            p[o + 2..o + 4].copy_from_slice(&s.1.to_le_bytes());
            p[o + 4..o + 8].copy_from_slice(&s.2.to_le_bytes());
            p[o + 8..o + 16].copy_from_slice(&s.3.to_le_bytes());
        }
        for (off, v) in [
            (OFF_EFER, self.efer),
            (OFF_CR4, self.cr4),
            (OFF_CR0, self.cr0),
            (OFF_DR7, self.dr7),
            (OFF_DR6, self.dr6),
            (OFF_RFLAGS, self.rflags),
            (OFF_RIP, self.rip),
            (OFF_G_PAT, self.g_pat),
            (OFF_RDX, self.rdx),
            (OFF_SEV_FEATURES, self.sev_features),
            (OFF_XCR0, self.xcr0),
        ] {
            p[off..off + 8].copy_from_slice(&v.to_le_bytes());
        }
        p[OFF_MXCSR..OFF_MXCSR + 4].copy_from_slice(&self.mxcsr.to_le_bytes());
        p[OFF_X87_FCW..OFF_X87_FCW + 2].copy_from_slice(&self.x87_fcw.to_le_bytes());
        p
    }
}

/// The VMSA page of a vCPU starting in real mode at `eip`, as OVMF guests
/// start under QEMU/KVM, EC2 or GCE.
pub(crate) fn ovmf_vmsa(eip: u32, sev_features: u64, vcpu_sig: u32, vmm: VmmType) -> [u8; PAGE] {
    // Register values that differ between VMMs:
    // (cs attributes, ss attributes, tr attributes, rdx, mxcsr, x87 fcw, g_pat)
    const PAT: u64 = 0x0007_0406_0007_0406; // power-on PAT, AMD APM vol. 2 A.3
    let (cs, ss, tr, rdx, mxcsr, fcw, g_pat) = match vmm {
        VmmType::Qemu => (0x9b, 0x93, 0x8b, u64::from(vcpu_sig), 0x1f80, 0x37f, PAT),
        // EC2: the reset-vector CS is not marked accessed; rdx = 0x600
        // matches the live measurement (sev-snp-measure 0.0.13, 2026).
        VmmType::Ec2 => {
            let cs = if eip == BSP_EIP { 0x9a } else { 0x9b };
            (cs, 0x92, 0x83, 0x600, 0, 0, PAT)
        }
        // GCE: QEMU's attributes, but its hypervisor overwrites g_pat.
        VmmType::Gce => (0x9b, 0x93, 0x8b, 0x600, 0, 0, 0x0007_0106),
    };
    SaveArea {
        es: Seg(0, 0x93, 0xffff, 0),
        cs: Seg(0xf000, cs, 0xffff, u64::from(eip & 0xffff_0000)),
        ss: Seg(0, ss, 0xffff, 0),
        ds: Seg(0, 0x93, 0xffff, 0),
        fs: Seg(0, 0x93, 0xffff, 0),
        gs: Seg(0, 0x93, 0xffff, 0),
        gdtr: Seg(0, 0, 0xffff, 0),
        idtr: Seg(0, 0, 0xffff, 0),
        ldtr: Seg(0, 0x82, 0xffff, 0),
        tr: Seg(0, tr, 0xffff, 0),
        efer: 0x1000, // KVM sets EFER.SVME
        cr4: 0x40,    // KVM sets CR4.MCE
        cr0: 0x10,
        dr7: 0x400,
        dr6: 0xffff_0ff0,
        rflags: 0x2,
        rip: u64::from(eip & 0xffff),
        g_pat,
        rdx,
        sev_features,
        xcr0: 0x1,
        mxcsr,
        x87_fcw: fcw,
    }
    .to_page()
}

/// The VMSA of a vCPU entering Coconut-SVSM in 32-bit protected mode at
/// `eip` (QEMU only).
pub(crate) fn svsm_vmsa(eip: u32, vcpu_sig: u32) -> [u8; PAGE] {
    SaveArea {
        es: Seg(16, 0xc93, 0xffff_ffff, 0),
        cs: Seg(8, 0xc9b, 0xffff_ffff, 0),
        ss: Seg(16, 0xc93, 0xffff_ffff, 0),
        ds: Seg(16, 0xc93, 0xffff_ffff, 0),
        fs: Seg(16, 0xc93, 0xffff_ffff, 0),
        gs: Seg(0, 0x93, 0xffff, 0),
        gdtr: Seg(0, 0, 0xffff, 0),
        idtr: Seg(0, 0, 0xffff, 0),
        ldtr: Seg(0, 0x82, 0xffff, 0),
        tr: Seg(0, 0x8b, 0xffff, 0),
        efer: 0x1000,
        cr4: 0x40,
        cr0: 0x11,
        dr7: 0x400,
        dr6: 0xffff_0ff0,
        rflags: 0x2,
        rip: u64::from(eip),
        g_pat: 0x0007_0406_0007_0406,
        rdx: u64::from(vcpu_sig),
        sev_features: 0x1,
        xcr0: 0x1,
        // The reference tool sets MXCSR here but not the x87 control word.
        mxcsr: 0x1f80,
        x87_fcw: 0,
    }
    .to_page()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_land_at_their_offsets() {
        let p = ovmf_vmsa(BSP_EIP, 0x21, 0x00a0_0f11, VmmType::Qemu);
        // cs: selector 0xf000, attrib 0x9b, limit 0xffff, base 0xffff0000
        assert_eq!(
            hex::encode(&p[0x10..0x20]),
            "00f09b00ffff00000000ffff00000000"
        );
        assert_eq!(p[OFF_RIP..OFF_RIP + 2], [0xf0, 0xff]);
        assert_eq!(p[OFF_RDX..OFF_RDX + 4], 0x00a0_0f11u32.to_le_bytes());
        assert_eq!(p[OFF_SEV_FEATURES], 0x21);
        assert_eq!(p[OFF_X87_FCW..OFF_X87_FCW + 2], [0x7f, 0x03]);
        let gce = ovmf_vmsa(BSP_EIP, 1, 0, VmmType::Gce);
        assert_eq!(gce[OFF_G_PAT..OFF_G_PAT + 4], [0x06, 0x01, 0x07, 0x00]);
        assert_eq!(gce[OFF_RDX..OFF_RDX + 2], [0x00, 0x06]);
    }
}
