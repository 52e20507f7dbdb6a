//! The TPM commands against a real software TPM.
//!
//! **Needs** `swtpm` on the PATH (Debian: `apt-get install swtpm`); nothing
//! else, no root, no network: each test starts its own
//! `swtpm socket --tpm2 --server type=unixio,… --ctrl type=unixio,…
//! --flags not-need-init,startup-clear` with a fresh state in a temporary
//! directory, talks to it through a Unix socket, and kills it at the end.
//! Without swtpm each test prints why it is skipped (to stderr, past the
//! test harness's capture) and passes, unless `KEYBROKER_REQUIRE_SWTPM=1`
//! is set, as CI should, which turns the skip into a failure.
//!
//! The tests provision the vTPM the way Azure's is (an RSA attestation key
//! at 0x81000003, an HCL report in NV index 0x01400001), run the guest's
//! side of `keybroker_vtpm::guest`, and verify the result with
//! `verify_quote`.

use crate::common::{claims_for, hcl_for};
use keybroker_vtpm::guest;
use keybroker_vtpm::tpm::pcr::PcrSelection;
use keybroker_vtpm::tpm::public::{NvPublic, RsaPublicArea};
use keybroker_vtpm::tpm::signature::RsaScheme;
use keybroker_vtpm::tpm::{
    AZURE_AK_HANDLE, AZURE_HCL_REPORT_NV_INDEX, AZURE_USER_DATA_NV_INDEX, TPM_ALG_RSAPSS,
    TPM_ALG_SHA256,
};
use keybroker_vtpm::{verify_quote, Expected, HclReport, QuoteEvidence, Tpm, TpmError};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running swtpm, killed when dropped.
struct Swtpm {
    child: Child,
    dir: tempfile::TempDir,
}

impl Swtpm {
    /// Start one, or say why not.
    fn start() -> Option<Swtpm> {
        if Command::new("swtpm")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            let why = "swtpm is not installed; the swtpm tests need it \
                       (Debian: apt-get install swtpm)";
            if std::env::var_os("KEYBROKER_REQUIRE_SWTPM").is_some_and(|v| v == "1") {
                panic!("{why}, and KEYBROKER_REQUIRE_SWTPM=1 forbids skipping them");
            }
            // Straight to stderr: libtest captures only the print macros.
            let _ = writeln!(std::io::stderr(), "SKIPPED: {why}");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name).display().to_string();
        let child = Command::new("swtpm")
            .args(["socket", "--tpm2"])
            .args(["--tpmstate", &format!("dir={}", path(""))])
            .args([
                "--server",
                &format!("type=unixio,path={}", path("tpm.sock")),
            ])
            .args(["--ctrl", &format!("type=unixio,path={}", path("ctrl.sock"))])
            .args(["--flags", "not-need-init,startup-clear"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("swtpm is installed but does not start");
        let sw = Swtpm { child, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sw.dir.path().join("tpm.sock").exists() {
            assert!(Instant::now() < deadline, "swtpm made no socket in 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(sw)
    }

    fn connect(&self) -> Tpm<UnixStream> {
        let s = UnixStream::connect(self.dir.path().join("tpm.sock")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Tpm::new(s)
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Make an attestation key from `template` persistent at `handle`.
fn provision_ak(tpm: &mut Tpm<UnixStream>, template: &RsaPublicArea, handle: u32) {
    let (transient, public) = tpm.create_primary(template).unwrap();
    assert_eq!(public.modulus.len(), 256);
    tpm.evict_control(transient, handle).unwrap();
    tpm.flush_context(transient).unwrap();
}

/// A connection to `sw` with an AK like Azure's at 0x81000003.
fn with_azure_ak(sw: &Swtpm) -> Tpm<UnixStream> {
    let mut tpm = sw.connect();
    provision_ak(
        &mut tpm,
        &RsaPublicArea::attestation_key_template(),
        AZURE_AK_HANDLE,
    );
    tpm
}

/// Put an HCL report naming the key at `ak` and carrying `user_data` into
/// NV index 0x01400001, as the paravisor would after the guest wrote
/// `user_data`; returns the REPORT_DATA its SNP report would carry.
fn provision_hcl(tpm: &mut Tpm<UnixStream>, ak: u32, user_data: &[u8]) -> [u8; 64] {
    let key = tpm.read_public(ak).unwrap().public_key().unwrap();
    let (hcl, report_data) = hcl_for(&claims_for(&key, user_data));
    let size = u16::try_from(hcl.len()).unwrap();
    if tpm
        .nv_read_public(AZURE_HCL_REPORT_NV_INDEX)
        .unwrap()
        .is_none()
    {
        tpm.nv_define_space(&NvPublic::owner_read_write(AZURE_HCL_REPORT_NV_INDEX, size))
            .unwrap();
    }
    tpm.nv_write_all(AZURE_HCL_REPORT_NV_INDEX, &hcl).unwrap();
    report_data
}

#[test]
fn the_guest_flow_against_swtpm_verifies() {
    let Some(sw) = Swtpm::start() else { return };
    let mut tpm = with_azure_ak(&sw);

    // The guest writes its binding value (defining the index), the
    // "paravisor" answers with an HCL report, the guest reads it back.
    let binding = [0x42u8; 64];
    assert_eq!(tpm.nv_read_public(AZURE_USER_DATA_NV_INDEX).unwrap(), None);
    guest::write_user_data(&mut tpm, &binding).unwrap();
    assert_eq!(tpm.nv_read_all(AZURE_USER_DATA_NV_INDEX).unwrap(), binding);
    let report_data = provision_hcl(&mut tpm, AZURE_AK_HANDLE, &binding);
    let hcl_bytes = guest::read_hcl_report(&mut tpm).unwrap();
    assert!(
        hcl_bytes.len() > 1024,
        "read in more than one NV_Read chunk"
    );

    let q = guest::quote(&mut tpm, &binding).unwrap();
    assert_eq!(q.pcr_values.len(), 24);
    let hcl = HclReport::parse(&hcl_bytes).unwrap();
    let evidence = QuoteEvidence {
        message: &q.message,
        signature: &q.signature,
        pcr_values: &q.pcr_values,
    };
    let v = verify_quote(
        &hcl,
        evidence,
        Expected {
            report_data: &report_data,
            extra_data: &binding,
            user_data: Some(&binding),
        },
    )
    .unwrap();
    assert_eq!(v.pcrs().len(), 24);
    assert_eq!(v.pcrs()[&0], [0; 32]);
    assert_eq!(v.pcrs()[&17], [0xff; 32], "swtpm's PCR 17 starts all ones");

    // The same evidence for another challenge is refused.
    let other = [0x43u8; 64];
    let err = verify_quote(
        &hcl,
        evidence,
        Expected {
            report_data: &report_data,
            extra_data: &other,
            user_data: None,
        },
    )
    .unwrap_err();
    assert_eq!(err.reason_code(), "EVIDENCE_TPM_QUOTE_EXTRA_DATA");

    // A second write goes to the existing index.
    guest::write_user_data(&mut tpm, &other).unwrap();
    assert_eq!(tpm.nv_read_all(AZURE_USER_DATA_NV_INDEX).unwrap(), other);
}

#[test]
fn an_rsapss_attestation_key_verifies_too() {
    let Some(sw) = Swtpm::start() else { return };
    let mut tpm = sw.connect();
    let mut template = RsaPublicArea::attestation_key_template();
    template.scheme = (TPM_ALG_RSAPSS, Some(TPM_ALG_SHA256));
    provision_ak(&mut tpm, &template, AZURE_AK_HANDLE);
    let report_data = provision_hcl(&mut tpm, AZURE_AK_HANDLE, &[0; 64]);
    let q = guest::quote(&mut tpm, b"nonce").unwrap();
    assert_eq!(q.signature.scheme(), RsaScheme::Pss);
    // libtpms salts PSS with as many bytes as the digest (TPM 2.0 Part 1
    // §B.7), the length aws-lc-rs checks by default.
    let key = tpm
        .read_public(AZURE_AK_HANDLE)
        .unwrap()
        .public_key()
        .unwrap();
    let digest_salt = aws_lc_rs::signature::RsaPublicKeyComponents {
        n: key.modulus(),
        e: key.exponent(),
    }
    .verify(
        &aws_lc_rs::signature::RSA_PSS_2048_8192_SHA256,
        &q.message,
        q.signature.bytes(),
    );
    assert!(digest_salt.is_ok());
    let hcl = HclReport::parse(&guest::read_hcl_report(&mut tpm).unwrap()).unwrap();
    verify_quote(
        &hcl,
        QuoteEvidence {
            message: &q.message,
            signature: &q.signature,
            pcr_values: &q.pcr_values,
        },
        Expected {
            report_data: &report_data,
            extra_data: b"nonce",
            user_data: None,
        },
    )
    .unwrap();
}

#[test]
fn pcr_subsets_explicit_schemes_and_tpm_errors() {
    let Some(sw) = Swtpm::start() else { return };
    let mut tpm = with_azure_ak(&sw);

    // Nine PCRs: PCR_Read needs two calls (eight values at most per call).
    let sel = PcrSelection::sha256([0, 1, 2, 3, 4, 5, 6, 7, 16]);
    let q = guest::quote_with(&mut tpm, AZURE_AK_HANDLE, &[], &sel).unwrap();
    assert_eq!(q.pcr_values.len(), 9);
    // An explicit scheme the key does not have is the TPM's error.
    match tpm.quote(AZURE_AK_HANDLE, &[], Some(RsaScheme::Pss), &sel) {
        Err(TpmError::Rc { rc, .. }) => assert_eq!(rc.base(), 0x092, "TPM_RC_SCHEME, got {rc}"),
        other => panic!("{other:?}"),
    }
    // No key at 0x81000004, no NV index 0x01400003.
    match tpm.quote(0x8100_0004, &[], None, &sel) {
        Err(TpmError::Rc { rc, .. }) => assert!(rc.is_handle_not_found(), "{rc}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(tpm.nv_read_public(0x0140_0003).unwrap(), None);
    let e = guest::read_hcl_report(&mut tpm).unwrap_err();
    assert!(e.to_string().contains("0x01400001 is not defined"), "{e}");
    // A user data index of the wrong size is reported, not redefined.
    tpm.nv_define_space(&NvPublic::owner_read_write(AZURE_USER_DATA_NV_INDEX, 32))
        .unwrap();
    let e = guest::write_user_data(&mut tpm, &[0; 64]).unwrap_err();
    assert!(e.to_string().contains("32 bytes, not 64"), "{e}");
}
