//! Attestation report framing and decoding.
//!
//! The raw bytes are framed here first (exact length, accepted version,
//! signature algorithm, known CPUID generation) and only then handed to the
//! `sev` crate's decoder, whose quirks (it treats unknown versions as v5 and
//! refuses a v2 report with a masked chip_id) stay behind this module. The
//! raw bytes are kept: the signature is checked over them, never over a
//! re-serialisation. Nothing here decides policy.

use keybroker_snp::report::{self as layout, offset, TcbLayout};
use sev::firmware::guest::AttestationReport;
use sev::parser::ByteParser;

use super::claims::{FirmwareVersion, Generation, GuestPolicyBits, ReportClaims, SignerKind, Tcb};
use super::error::{EvidenceRejected, ReportRejected};

pub use keybroker_snp::report::{reserved_ranges, REPORT_LEN, SIGNED_LEN};
/// Report versions this verifier accepts.
pub const ACCEPTED_VERSIONS: [u32; 3] = keybroker_snp::report::VERSIONS;

/// CPUID identification carried by v3 and later reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Cpuid {
    /// Combined family (e.g. 0x19 Zen 3/4, 0x1A Zen 5).
    pub family: u8,
    /// Combined model.
    pub model: u8,
    /// Stepping.
    pub stepping: u8,
}

/// The four raw 8-byte TCB fields, whose layout depends on the generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawTcbs {
    /// CURRENT_TCB (0x038).
    pub current: [u8; 8],
    /// REPORTED_TCB (0x180): the TCB the signing key was derived for.
    pub reported: [u8; 8],
    /// COMMITTED_TCB (0x1E0).
    pub committed: [u8; 8],
    /// LAUNCH_TCB (0x1F0).
    pub launch: [u8; 8],
}

/// A framed, decoded but **unverified** report: for display and for the
/// verifier's own use. Nothing here says the report is genuine.
#[derive(Clone, Debug)]
pub struct DecodedReport {
    raw: Box<[u8; REPORT_LEN]>,
    /// Report version (2, 3 or 5).
    pub version: u32,
    /// Generation from CPUID (v3 and later); `None` for v2, whose generation
    /// only the VEK certificate's productName tells.
    pub generation: Option<Generation>,
    /// CPUID fields (v3 and later).
    pub cpuid: Option<Cpuid>,
    /// Raw KEY_INFO word.
    pub key_info: u32,
    /// The signing key KEY_INFO names; `None` when it names none (7) or a
    /// reserved value.
    pub signer: Option<SignerKind>,
    /// Guest SVN.
    pub guest_svn: u32,
    /// Guest policy.
    pub policy: GuestPolicyBits,
    /// VMPL of the request.
    pub vmpl: u32,
    /// PLATFORM_INFO word.
    pub platform_info: u64,
    /// Launch measurement.
    pub measurement: [u8; 48],
    /// HOST_DATA.
    pub host_data: [u8; 32],
    /// FAMILY_ID.
    pub family_id: [u8; 16],
    /// IMAGE_ID.
    pub image_id: [u8; 16],
    /// ID key digest.
    pub id_key_digest: [u8; 48],
    /// Author key digest.
    pub author_key_digest: [u8; 48],
    /// REPORT_DATA.
    pub report_data: [u8; 64],
    /// REPORT_ID.
    pub report_id: [u8; 32],
    /// REPORT_ID_MA.
    pub report_id_ma: [u8; 32],
    /// CHIP_ID (all zero when masked).
    pub chip_id: [u8; 64],
    /// Raw TCB fields.
    pub tcbs: RawTcbs,
    /// Current SNP firmware version.
    pub current_firmware: FirmwareVersion,
    /// Committed SNP firmware version.
    pub committed_firmware: FirmwareVersion,
    /// LAUNCH_MIT_VECTOR (v5 and later).
    pub launch_mit_vector: Option<u64>,
    /// CURRENT_MIT_VECTOR (v5 and later).
    pub current_mit_vector: Option<u64>,
}

/// The little-endian u32 at `off` of a report already checked to be
/// [`REPORT_LEN`] bytes long.
fn u32_at(b: &[u8; REPORT_LEN], off: usize) -> u32 {
    layout::u32_at(b, off).unwrap_or_default()
}

/// The little-endian u64 at `off` of a report already checked to be
/// [`REPORT_LEN`] bytes long.
fn u64_at(b: &[u8; REPORT_LEN], off: usize) -> u64 {
    layout::u64_at(b, off).unwrap_or_default()
}

/// The `N` bytes at `off` of a report already checked to be [`REPORT_LEN`]
/// bytes long.
fn arr<const N: usize>(b: &[u8; REPORT_LEN], off: usize) -> [u8; N] {
    layout::bytes_at(b, off).unwrap_or([0; N])
}

/// Generation from CPUID family and model (AMD's published model ranges).
pub fn generation_from_cpuid(family: u8, model: u8) -> Option<Generation> {
    match (family, model) {
        (0x19, 0x00..=0x0F) => Some(Generation::Milan),
        (0x19, 0x10..=0x1F) | (0x19, 0xA0..=0xAF) => Some(Generation::Genoa),
        (0x1A, 0x00..=0x11) => Some(Generation::Turin),
        _ => None,
    }
}

/// Decodes one 8-byte TCB field with the generation's layout:
/// Milan/Genoa `bl, tee, rsvd x4, snp, ucode`; Turin `fmc, bl, tee, snp,
/// rsvd x3, ucode` ([`keybroker_snp::report::decode_tcb`]).
pub fn decode_tcb(raw: [u8; 8], generation: Generation) -> Tcb {
    let layout = match generation {
        Generation::Milan | Generation::Genoa => TcbLayout::MilanGenoa,
        Generation::Turin => TcbLayout::Turin,
    };
    let p = layout::decode_tcb(raw, layout);
    Tcb {
        fmc: p.fmc,
        bootloader: p.bootloader,
        tee: p.tee,
        snp: p.snp,
        microcode: p.microcode,
    }
}

/// Frames and decodes a report without verifying anything about it.
///
/// Refuses: a length other than 1184 bytes, versions other than 2, 3 and 5,
/// a signature algorithm other than ECDSA P-384/SHA-384, (v3 and later) a
/// CPUID family/model that is not Milan, Genoa or Turin, and non-zero
/// reserved bytes in the signed area ([`reserved_ranges`]).
pub fn decode_report(bytes: &[u8]) -> Result<DecodedReport, EvidenceRejected> {
    let Ok(bytes) = <&[u8; REPORT_LEN]>::try_from(bytes) else {
        return Err(ReportRejected::Length {
            expected: REPORT_LEN,
            actual: bytes.len(),
        }
        .into());
    };
    let version = u32_at(bytes, offset::VERSION);
    if !ACCEPTED_VERSIONS.contains(&version) {
        return Err(ReportRejected::Version { actual: version }.into());
    }
    let sig_algo = u32_at(bytes, offset::SIG_ALGO);
    if sig_algo != layout::SIG_ALGO_ECDSA_P384_SHA384 {
        return Err(ReportRejected::SigAlgo { actual: sig_algo }.into());
    }
    let (generation, cpuid) = if version >= 3 {
        let c = Cpuid {
            family: bytes[offset::CPUID_FAMILY],
            model: bytes[offset::CPUID_MODEL],
            stepping: bytes[offset::CPUID_STEPPING],
        };
        let g = generation_from_cpuid(c.family, c.model).ok_or_else(|| {
            ReportRejected::GenerationUnknown {
                detail: format!(
                    "CPUID family {:#04x} model {:#04x} is not a known SEV-SNP processor",
                    c.family, c.model
                ),
            }
        })?;
        (Some(g), Some(c))
    } else {
        (None, None)
    };

    if let Some(range) = reserved_ranges(version)
        .into_iter()
        .find(|r| bytes[r.clone()].iter().any(|&b| b != 0))
    {
        return Err(ReportRejected::Malformed {
            detail: format!(
                "reserved bytes {:#05x}..{:#05x} of a version {version} report are not zero",
                range.start, range.end
            ),
        }
        .into());
    }

    // The sev crate refuses a v2 report whose chip_id is all zero (masked);
    // the chip_id is not needed from it (it is read from the raw bytes
    // below), so it decodes a copy with a placeholder in that case.
    let chip_id = offset::CHIP_ID..offset::CHIP_ID + layout::CHIP_ID_LEN;
    let mut for_sev = *bytes;
    if version == 2 && for_sev[chip_id.clone()].iter().all(|&b| b == 0) {
        for_sev[chip_id].fill(0xff);
    }
    let r = AttestationReport::from_bytes(&for_sev).map_err(|e| {
        // Framing above rules out every error the decoder is known to raise.
        EvidenceRejected::from(ReportRejected::Malformed {
            detail: format!("report decoder refused the report: {e}"),
        })
    })?;

    let key_info = u32_at(bytes, offset::KEY_INFO);
    let signer = match (key_info >> 2) & 0x7 {
        0 => Some(SignerKind::Vcek),
        1 => Some(SignerKind::Vlek),
        _ => None,
    };
    let fw = |v: sev::firmware::guest::Version| FirmwareVersion {
        major: v.major,
        minor: v.minor,
        build: v.build,
    };
    Ok(DecodedReport {
        raw: Box::new(*bytes),
        version,
        generation,
        cpuid,
        key_info,
        signer,
        guest_svn: r.guest_svn,
        // The words as signed: the sev crate's GuestPolicy sets the
        // reserved bit 17 whether or not the report has it.
        policy: GuestPolicyBits::from_raw(u64_at(bytes, offset::POLICY)),
        vmpl: r.vmpl,
        platform_info: u64_at(bytes, offset::PLATFORM_INFO),
        measurement: r.measurement,
        host_data: r.host_data,
        family_id: r.family_id,
        image_id: r.image_id,
        id_key_digest: r.id_key_digest,
        author_key_digest: r.author_key_digest,
        report_data: r.report_data,
        report_id: r.report_id,
        report_id_ma: r.report_id_ma,
        chip_id: arr(bytes, offset::CHIP_ID),
        tcbs: RawTcbs {
            current: arr(bytes, offset::CURRENT_TCB),
            reported: arr(bytes, offset::REPORTED_TCB),
            committed: arr(bytes, offset::COMMITTED_TCB),
            launch: arr(bytes, offset::LAUNCH_TCB),
        },
        current_firmware: fw(r.current),
        committed_firmware: fw(r.committed),
        launch_mit_vector: r.launch_mit_vector,
        current_mit_vector: r.current_mit_vector,
    })
}

impl DecodedReport {
    /// The exact bytes the report was decoded from.
    pub fn raw(&self) -> &[u8; REPORT_LEN] {
        &self.raw
    }

    /// The signed area, bytes 0x000..0x2A0, exactly as received.
    pub fn signed_bytes(&self) -> &[u8] {
        &self.raw[..SIGNED_LEN]
    }

    /// True when chip_id is all zero (MASK_CHIP_ID).
    pub fn chip_id_masked(&self) -> bool {
        self.chip_id.iter().all(|&b| b == 0)
    }

    /// The signature as a fixed-size big-endian `r || s` (96 bytes) for
    /// ECDSA P-384 ([`keybroker_snp::report::signature::to_fixed`]: every
    /// padding byte must be zero, so that no byte of the report can change
    /// unnoticed).
    pub fn signature_fixed(&self) -> Result<[u8; 96], layout::signature::LayoutError> {
        layout::signature::to_fixed(&self.raw[..])
    }

    /// Claims for a report whose generation and signer are established.
    pub fn claims_for(&self, generation: Generation, signer: SignerKind) -> ReportClaims {
        ReportClaims {
            version: self.version,
            generation,
            signer,
            guest_svn: self.guest_svn,
            policy: self.policy,
            vmpl: self.vmpl,
            platform_info: self.platform_info,
            smt_enabled: self.platform_info & 1 != 0,
            measurement: self.measurement.to_vec(),
            host_data: self.host_data.to_vec(),
            family_id: self.family_id.to_vec(),
            image_id: self.image_id.to_vec(),
            id_key_digest: self.id_key_digest.to_vec(),
            author_key_digest: self.author_key_digest.to_vec(),
            report_data: self.report_data.to_vec(),
            report_id: self.report_id.to_vec(),
            chip_id: self.chip_id.to_vec(),
            reported_tcb: decode_tcb(self.tcbs.reported, generation),
            current_tcb: decode_tcb(self.tcbs.current, generation),
            committed_tcb: decode_tcb(self.tcbs.committed, generation),
            launch_tcb: decode_tcb(self.tcbs.launch, generation),
            current_firmware: self.current_firmware,
            committed_firmware: self.committed_firmware,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let p = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/snp-real/");
        std::fs::read(format!("{p}{name}/report.bin")).expect("fixture")
    }

    #[test]
    fn refuses_wrong_lengths() {
        let r = fixture("virtee-milan-v2");
        for len in [0, 1, 4, 0x2A0, REPORT_LEN - 1] {
            let e = decode_report(&r[..len]).unwrap_err();
            assert_eq!(e.reason_code(), "EVIDENCE_REPORT_LENGTH", "len {len}");
        }
        let mut long = r.clone();
        long.push(0);
        assert_eq!(
            decode_report(&long).unwrap_err().reason_code(),
            "EVIDENCE_REPORT_LENGTH"
        );
    }

    #[test]
    fn refuses_unaccepted_versions() {
        let r = fixture("oak-genoa-v5");
        for v in [0u32, 1, 4, 6, 7, 0x100, u32::MAX] {
            let mut m = r.clone();
            m[..4].copy_from_slice(&v.to_le_bytes());
            let e = decode_report(&m).unwrap_err();
            assert_eq!(e.reason_code(), "EVIDENCE_REPORT_VERSION", "version {v}");
            assert!(e.to_string().contains(&v.to_string()));
        }
    }

    #[test]
    fn refuses_other_signature_algorithms() {
        let r = fixture("oak-turin-v5");
        for a in [0u32, 2, 0x101] {
            let mut m = r.clone();
            m[offset::SIG_ALGO..offset::SIG_ALGO + 4].copy_from_slice(&a.to_le_bytes());
            assert_eq!(
                decode_report(&m).unwrap_err().reason_code(),
                "EVIDENCE_SIG_ALGO"
            );
        }
    }

    #[test]
    fn refuses_unknown_cpuid() {
        let r = fixture("oak-genoa-v5");
        // Venice (0x1A/0x50), Rome-era family 0x17, and an unassigned model.
        for (f, m) in [(0x1Au8, 0x50u8), (0x17, 0x31), (0x19, 0x20), (0, 0)] {
            let mut b = r.clone();
            b[offset::CPUID_FAMILY] = f;
            b[offset::CPUID_MODEL] = m;
            assert_eq!(
                decode_report(&b).unwrap_err().reason_code(),
                "EVIDENCE_GENERATION_UNKNOWN"
            );
        }
    }

    #[test]
    fn cpuid_table() {
        assert_eq!(generation_from_cpuid(0x19, 0x01), Some(Generation::Milan));
        assert_eq!(generation_from_cpuid(0x19, 0x11), Some(Generation::Genoa));
        assert_eq!(generation_from_cpuid(0x19, 0xA0), Some(Generation::Genoa));
        assert_eq!(generation_from_cpuid(0x1A, 0x02), Some(Generation::Turin));
        assert_eq!(generation_from_cpuid(0x1A, 0x12), None);
        // Agrees with the sev crate wherever the crate knows the generation.
        for f in [0x19u8, 0x1A] {
            for m in 0..=255u8 {
                let ours = generation_from_cpuid(f, m);
                let theirs = sev::Generation::identify_cpu(f, m)
                    .ok()
                    .and_then(|g| match g {
                        sev::Generation::Milan => Some(Generation::Milan),
                        sev::Generation::Genoa => Some(Generation::Genoa),
                        sev::Generation::Turin => Some(Generation::Turin),
                        _ => None,
                    });
                assert_eq!(ours, theirs, "family {f:#x} model {m:#x}");
            }
        }
    }

    #[test]
    fn v2_with_masked_chip_id_decodes() {
        let mut r = fixture("virtee-milan-v2");
        r[offset::CHIP_ID..offset::CHIP_ID + 64].fill(0);
        let d = decode_report(&r).unwrap();
        assert!(d.chip_id_masked());
        assert_eq!(d.generation, None);
    }

    #[test]
    fn reserved_bytes_must_be_zero() {
        for (name, version) in [
            ("virtee-milan-v2", 2u32),
            ("trustee-aws-milan-vlek-v3", 3),
            ("oak-turin-v5", 5),
        ] {
            let r = fixture(name);
            for range in reserved_ranges(version) {
                for off in [range.start, range.end - 1] {
                    let mut m = r.clone();
                    m[off] = 1;
                    let e = decode_report(&m).unwrap_err();
                    assert_eq!(
                        e.reason_code(),
                        "EVIDENCE_REPORT_MALFORMED",
                        "{name} {off:#x}"
                    );
                }
            }
        }
    }

    /// Found by the `snp_report` fuzz target: the POLICY word came from the
    /// sev crate, which sets the reserved bit 17 whatever the report says,
    /// so the broker showed and judged a policy that was not the signed one.
    #[test]
    fn policy_and_platform_info_are_the_signed_words() {
        let r = fixture("oak-genoa-v5");
        for policy in [0u64, 1 << 19, (1 << 17) | (1 << 16), u64::MAX >> 43] {
            for info in [0u64, 1, 0x25] {
                let mut m = r.clone();
                m[offset::POLICY..offset::POLICY + 8].copy_from_slice(&policy.to_le_bytes());
                m[offset::PLATFORM_INFO..offset::PLATFORM_INFO + 8]
                    .copy_from_slice(&info.to_le_bytes());
                let d = decode_report(&m).unwrap();
                assert_eq!(d.policy.raw, policy, "{policy:#x}");
                assert_eq!(d.policy, GuestPolicyBits::from_raw(policy));
                assert_eq!(d.platform_info, info);
            }
        }
    }

    #[test]
    fn tcb_layout_per_generation() {
        let raw = [1, 2, 3, 4, 5, 6, 7, 8];
        for g in [Generation::Milan, Generation::Genoa] {
            assert_eq!((decode_tcb(raw, g).fmc, decode_tcb(raw, g).snp), (None, 7));
        }
        let t = decode_tcb(raw, Generation::Turin);
        assert_eq!((t.fmc, t.snp), (Some(1), 4));
    }

    #[test]
    fn signature_padding_must_be_zero() {
        use keybroker_snp::report::signature;
        let r = fixture("oak-genoa-v5");
        assert!(decode_report(&r).unwrap().signature_fixed().is_ok());
        for off in [signature::R + 48, signature::S + 71, signature::END] {
            let mut m = r.clone();
            m[off] = 1;
            assert!(decode_report(&m).unwrap().signature_fixed().is_err());
        }
    }
}
