//! The SEV-SNP attestation report decoder (`broker::verify::report`) and
//! the layout helpers of `keybroker-snp` it stands on.
//!
//! Properties: every field the decoder hands on is the one at its offset
//! in the signed bytes (the decoder may not invent or mask a bit the
//! signature does not cover); the signature layout round-trips.
#![no_main]

use broker::verify::{decode_report, SignerKind, REPORT_LEN};
use keybroker_snp::report::{self as layout, offset, signature};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The layout helpers take any slice.
    let _ = layout::report_data(data);
    let _ = layout::u64_at(data, offset::POLICY);
    if let Ok(fixed) = signature::to_fixed(data) {
        let mut copy = data.to_vec();
        signature::write_fixed(&mut copy, &fixed).expect("to_fixed accepted it");
        assert_eq!(signature::to_fixed(&copy).expect("written"), fixed);
    }

    let Ok(d) = decode_report(data) else { return };
    assert_eq!(data.len(), REPORT_LEN);
    assert_eq!(&d.raw()[..], data);
    let u64_at = |off| layout::u64_at(data, off).expect("in range");
    let u32_at = |off| layout::u32_at(data, off).expect("in range");
    assert_eq!(d.version, u32_at(offset::VERSION));
    assert!(layout::VERSIONS.contains(&d.version));
    assert_eq!(d.policy.raw, u64_at(offset::POLICY));
    assert_eq!(d.platform_info, u64_at(offset::PLATFORM_INFO));
    assert_eq!(d.key_info, u32_at(offset::KEY_INFO));
    assert_eq!(d.guest_svn, u32_at(offset::GUEST_SVN));
    assert_eq!(d.vmpl, u32_at(offset::VMPL));
    assert_eq!(&d.measurement[..], &data[offset::MEASUREMENT..][..48]);
    assert_eq!(&d.report_data[..], &data[offset::REPORT_DATA..][..64]);
    assert_eq!(&d.host_data[..], &data[offset::HOST_DATA..][..32]);
    assert_eq!(&d.chip_id[..], &data[offset::CHIP_ID..][..64]);
    assert_eq!(d.tcbs.reported[..], data[offset::REPORTED_TCB..][..8]);
    // Reserved bytes of the accepted version are zero.
    for r in layout::reserved_ranges(d.version) {
        assert!(data[r].iter().all(|&b| b == 0));
    }
    if let Some(g) = d.generation {
        let claims = d.claims_for(g, SignerKind::Vcek);
        assert_eq!(claims.policy.raw, d.policy.raw);
        assert_eq!(claims.measurement, d.measurement.to_vec());
    }
});
