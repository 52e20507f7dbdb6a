//! The simulated Azure confidential VM: a paravisor in front of a software
//! TPM (swtpm) that plays Azure's vTPM.
//!
//! On Azure the paravisor (the HCL) owns the SEV-SNP interface and puts its
//! evidence into the vTPM: an attestation key at persistent handle
//! 0x81000003, and the HCL report in NV index 0x01400001, refreshed
//! whenever the guest writes 64 bytes of user data to NV index 0x01400002.
//! [`SimParavisor`] does the same with a [`SimPlatform`]: it
//! [provisions](SimParavisor::provision) a TPM (the key, both NV indexes
//! and a first HCL report) and, sitting between the guest and the TPM
//! ([`relay`]), [refreshes](SimParavisor::refresh) the HCL report after
//! each write of user data, with an SNP report signed by the simulated
//! VCEK whose REPORT_DATA binds the new variable data.
//!
//! Like the rest of this crate it proves nothing: the SNP report chains to
//! the simulated ARK, which a broker trusts only when its config names it.

pub mod relay;
pub mod swtpm;

use std::io::{Read, Write};

use aws_lc_rs::digest;
use keybroker_vtpm::hcl::{report_data_for, VmConfiguration, SNP_REPORT_LEN};
use keybroker_vtpm::tpm::public::{NvPublic, RsaPublicArea};
use keybroker_vtpm::tpm::signature::RsaPublicKey;
use keybroker_vtpm::tpm::{
    AZURE_AK_HANDLE, AZURE_HCL_REPORT_NV_INDEX, AZURE_USER_DATA_LEN, AZURE_USER_DATA_NV_INDEX,
};
use keybroker_vtpm::{HclReport, RuntimeClaims, Tpm, TpmError};

use crate::{Generation, SimError, SimGuest, SimPlatform};

/// Size of the simulated HCL report's NV index: the most libtpms allows
/// (Azure's holds 2600 bytes), so the report must stay below it.
pub const HCL_NV_SIZE: u16 = 2048;

/// Label whose SHA-384 is the simulated paravisor's launch measurement.
pub const PARAVISOR_MEASUREMENT_LABEL: &[u8] = b"keybroker simulated paravisor";

/// `vmUniqueId` of the simulated VM configuration.
pub const SIM_VM_UNIQUE_ID: &str = "keybroker-simulated-azure-cvm";

/// The simulated paravisor's launch measurement (what a policy's
/// `vtpm.paravisor_measurements` must name).
pub fn paravisor_measurement() -> [u8; 48] {
    let mut m = [0u8; 48];
    m.copy_from_slice(digest::digest(&digest::SHA384, PARAVISOR_MEASUREMENT_LABEL).as_ref());
    m
}

/// A paravisor on a simulated platform.
#[derive(Debug)]
pub struct SimParavisor {
    platform: SimPlatform,
    guest: SimGuest,
}

impl SimParavisor {
    /// The paravisor of `platform`: its SNP reports are version 3 at VMPL0
    /// with [`paravisor_measurement`], as Azure's are.
    pub fn new(platform: SimPlatform) -> Self {
        let guest = SimGuest {
            version: 3,
            measurement: paravisor_measurement(),
            ..SimGuest::default()
        };
        Self { platform, guest }
    }

    /// The platform whose VCEK signs the SNP reports.
    pub fn platform(&self) -> &SimPlatform {
        &self.platform
    }

    /// What the paravisor's SNP reports say of it (tests change it).
    pub fn guest_mut(&mut self) -> &mut SimGuest {
        &mut self.guest
    }

    /// The HCL report for attestation key `ak` and `user_data`, as the
    /// paravisor writes it (header version 1 on Milan, 2 elsewhere, as in
    /// Azure's captures), unpadded.
    pub fn hcl_report(&self, ak: &RsaPublicKey, user_data: &[u8]) -> Result<Vec<u8>, SimError> {
        let variable_data = RuntimeClaims {
            attestation_key: ak.clone(),
            user_data: user_data.to_vec(),
            vm_configuration: Some(VmConfiguration {
                console_enabled: Some(true),
                secure_boot: Some(false),
                tpm_enabled: Some(true),
                tpm_persisted: Some(true),
                vm_unique_id: Some(SIM_VM_UNIQUE_ID.to_owned()),
            }),
        }
        .to_json();
        let report = self
            .platform
            .report(&report_data_for(&variable_data), &self.guest)?;
        let report: &[u8; SNP_REPORT_LEN] = report
            .as_slice()
            .try_into()
            .map_err(|_| SimError::Crypto("unexpected report size"))?;
        let version = match self.platform.generation() {
            Generation::Milan => 1,
            _ => 2,
        };
        let hcl = HclReport::build(version, report, &variable_data);
        if hcl.len() > usize::from(HCL_NV_SIZE) {
            return Err(SimError::InvalidParams(format!(
                "the HCL report has {} bytes, more than the {HCL_NV_SIZE} of its NV index",
                hcl.len()
            )));
        }
        Ok(hcl)
    }

    /// Provisions `tpm` as Azure's vTPM: an RSA-2048 attestation key at
    /// 0x81000003 (kept if present), the user data index (64 bytes, zero)
    /// and the HCL report index (2048 bytes) with a first report. Run once,
    /// before the guest starts.
    pub fn provision<T: Read + Write>(&self, tpm: &mut Tpm<T>) -> Result<(), SimError> {
        let tpm_err = |e: TpmError| SimError::Tpm(e.to_string());
        if let Err(e) = tpm.read_public(AZURE_AK_HANDLE) {
            if !matches!(&e, TpmError::Rc { rc, .. } if rc.is_handle_not_found()) {
                return Err(tpm_err(e));
            }
            let (transient, _) = tpm
                .create_primary(&RsaPublicArea::attestation_key_template())
                .map_err(tpm_err)?;
            tpm.evict_control(transient, AZURE_AK_HANDLE)
                .map_err(tpm_err)?;
            tpm.flush_context(transient).map_err(tpm_err)?;
        }
        let user_data_len = u16::try_from(AZURE_USER_DATA_LEN).expect("64");
        for (index, size) in [
            (AZURE_USER_DATA_NV_INDEX, user_data_len),
            (AZURE_HCL_REPORT_NV_INDEX, HCL_NV_SIZE),
        ] {
            if tpm.nv_read_public(index).map_err(tpm_err)?.is_none() {
                tpm.nv_define_space(&NvPublic::owner_read_write(index, size))
                    .map_err(tpm_err)?;
            }
        }
        tpm.nv_write_all(AZURE_USER_DATA_NV_INDEX, &[0; AZURE_USER_DATA_LEN])
            .map_err(tpm_err)?;
        self.refresh(tpm)
    }

    /// Rewrites NV index 0x01400001 with a new HCL report carrying the
    /// user data now in NV index 0x01400002, as the paravisor does after
    /// the guest wrote it.
    pub fn refresh<T: Read + Write>(&self, tpm: &mut Tpm<T>) -> Result<(), SimError> {
        let tpm_err = |e: TpmError| SimError::Tpm(e.to_string());
        let ak = tpm
            .read_public(AZURE_AK_HANDLE)
            .and_then(|p| {
                p.public_key()
                    .map_err(|e| TpmError::Unexpected(e.to_string()))
            })
            .map_err(tpm_err)?;
        let user_data = tpm.nv_read_all(AZURE_USER_DATA_NV_INDEX).map_err(tpm_err)?;
        let mut hcl = self.hcl_report(&ak, &user_data)?;
        // The whole index: a shorter report must not leave a longer one's
        // tail behind (the padding is checked to be zero).
        hcl.resize(usize::from(HCL_NV_SIZE), 0);
        tpm.nv_write_all(AZURE_HCL_REPORT_NV_INDEX, &hcl)
            .map_err(tpm_err)
    }
}
