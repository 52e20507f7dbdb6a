//! Azure confidential VMs end to end, without Azure: a real broker on
//! loopback and a guest whose evidence comes from the simulated Azure vTPM
//! (swtpm, provisioned and fronted by the simulated paravisor, whose SNP
//! reports the simulated VCEK signs), through guest-unlock's `azure-vtpm`
//! provider.
//!
//! The owner's workflow: `guest-unlock status --pcrs` (the real binary) on
//! the reference guest prints the policy entry, the broker's policy admits
//! it; then each thing that must refuse does, with its reason code.
//!
//! **Needs** `swtpm` (Debian: `apt-get install swtpm`); without it each test
//! says so and passes, unless `KEYBROKER_REQUIRE_SWTPM=1` (CI) makes that a
//! failure.

use std::path::Path;
use std::sync::Arc;

use broker::release::AttestInput;
use guest_unlock::evidence::{AzureVtpmProvider, Evidence, EvidenceProvider};
use guest_unlock::flow::fetch_keys;
use guest_unlock::UnlockError;
use keybroker_proto::{report_data, GuestKeyPair, VolumeIds};
use keybroker_tests::exe::{run_with, Exe};
use keybroker_tests::sim::{paravisor_measurement, SimParavisor, SimPlatform, SimVtpm};
use keybroker_tests::{
    guest_config, policy_for, vtpm_policy_for, BrokerDir, BrokerOptions, RunningBroker,
};

/// A broker directory, its simulated platform's paravisor in front of a
/// provisioned swtpm, and policy `azure` admitting the paravisor and the
/// PCR set `guest-unlock status --pcrs` printed (returned too); `None` when
/// swtpm is absent (skipped). The broker finds the VCEK in its certificate
/// directory: an Azure guest sends none.
fn setup(opts: &BrokerOptions) -> Option<(BrokerDir, SimVtpm, String)> {
    let dir = BrokerDir::create(&BrokerOptions {
        sim_certs_dir: true,
        ..opts.clone()
    })
    .unwrap();
    let paravisor = SimParavisor::new(SimPlatform::load(dir.sim.dir()).unwrap());
    let vtpm = SimVtpm::start(Arc::new(paravisor), &dir.dir.path().join("vtpm")).unwrap()?;
    let entry = pcr_set_from_status(vtpm.socket());
    dir.set_policy("azure", &vtpm_policy_for(&paravisor_measurement(), &entry))
        .unwrap();
    Some((dir, vtpm, entry))
}

/// `guest-unlock status --pcrs=0-9 --tpm SOCKET`: the policy entry it prints.
fn pcr_set_from_status(tpm: &Path) -> String {
    let run = run_with(
        &mut std::process::Command::new(Exe::GuestUnlock.path()),
        &["status", "--pcrs", "--tpm", &tpm.display().to_string()],
    );
    let out = &run.stdout;
    let at = out
        .find("[[vtpm.pcr_sets]]")
        .unwrap_or_else(|| panic!("no policy entry in:\n{}", run.transcript()));
    let entry = out[at..].to_owned();
    assert_eq!(
        entry.lines().filter(|l| l.contains(" = \"")).count(),
        11,
        "{entry}"
    );
    entry
}

fn vols(names: &[&str]) -> VolumeIds {
    VolumeIds::parse(names.iter().copied()).unwrap()
}

async fn attest(
    dir: &BrokerDir,
    broker: &RunningBroker,
    device: &Path,
) -> Result<guest_unlock::FetchOutcome, UnlockError> {
    let cfg = guest_config(&[broker.url()], &dir.pin, dir.sim.dir(), 20).unwrap();
    let provider = AzureVtpmProvider::open(device).unwrap();
    assert_eq!(provider.name(), "azure-vtpm");
    fetch_keys(&cfg, &provider, &vols(&["root"])).await
}

fn denied_codes(out: &guest_unlock::FetchOutcome) -> Vec<String> {
    assert!(out.keys.is_empty(), "{out:?}");
    out.denied
        .iter()
        .flat_map(|d| d.reason_codes.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_with_the_reference_pcrs_gets_its_key_and_others_do_not() {
    let Some((dir, vtpm, entry)) = setup(&BrokerOptions::default()) else {
        return;
    };
    // The same guest, but the policy pins another PCR 0.
    let other: Vec<String> = entry
        .lines()
        .map(|l| match l.starts_with("0 = ") {
            true => format!("0 = \"{}\"", "ee".repeat(32)),
            false => l.to_owned(),
        })
        .collect();
    dir.set_policy(
        "other-image",
        &vtpm_policy_for(&paravisor_measurement(), &other.join("\n")),
    )
    .unwrap();
    dir.set_policy("other-paravisor", &vtpm_policy_for(&[0x42; 48], &entry))
        .unwrap();
    dir.set_policy("bare-only", &policy_for(&[0x42; 48], ""))
        .unwrap();
    let key = dir.add_volume("root", "azure").unwrap();
    let broker = RunningBroker::start(&dir).await.unwrap();

    let out = attest(&dir, &broker, vtpm.socket()).await.unwrap();
    assert!(out.all_granted(), "{out:?}");
    assert_eq!(out.keys[0].expose_secret(), key.as_slice());

    // A guest whose PCRs differ, a paravisor the policy does not name, and
    // a policy that does not accept vTPM evidence: each refused, with why.
    for (policy, code) in [
        ("other-image", "POLICY_PCRS_NOT_ALLOWED"),
        ("other-paravisor", "POLICY_PARAVISOR_NOT_ALLOWED"),
        ("bare-only", "POLICY_EVIDENCE_KIND_NOT_ACCEPTED"),
    ] {
        let store = broker::wiring::store(&dir.config().unwrap()).unwrap();
        store.set_volume_policy("root", policy).unwrap();
        let out = attest(&dir, &broker, vtpm.socket()).await.unwrap();
        assert_eq!(denied_codes(&out), vec![code.to_owned()], "{policy}");
    }
    broker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_data_the_hcl_report_does_not_carry_is_refused() {
    let Some((dir, vtpm, _)) = setup(&BrokerOptions::default()) else {
        return;
    };
    dir.add_volume("root", "azure").unwrap();
    // Straight to swtpm, no paravisor: the guest's write of the transcript
    // hash leaves the HCL report as provisioned (user data zero). The
    // quote is bound, the SNP report is not.
    let provider = AzureVtpmProvider::open(vtpm.tpm_socket()).unwrap();
    // guest-unlock notices before it sends anything...
    let broker = RunningBroker::start(&dir).await.unwrap();
    match attest(&dir, &broker, vtpm.tpm_socket()).await {
        Err(UnlockError::EvidenceMismatch { provider }) => assert_eq!(provider, "azure-vtpm"),
        other => panic!("{other:?}"),
    }
    broker.stop().await.unwrap();
    // ...and the broker refuses such evidence with its own code.
    let service = broker::wiring::broker(&dir.config().unwrap()).unwrap();
    let volumes = vols(&["root"]);
    let grant = service.challenge(&volumes, None).unwrap();
    let keys = GuestKeyPair::generate().unwrap();
    let rd = report_data(&grant.nonce, &keys.public(), &volumes);
    let Evidence::AzureVtpm(a) = provider.get_evidence(rd.as_bytes()).unwrap() else {
        panic!("azure-vtpm gives Azure evidence");
    };
    let input = AttestInput {
        nonce: grant.nonce,
        evidence: broker::verify::Evidence::AzureVtpm(broker::verify::AzureVtpmEvidence {
            hcl_report: a.hcl_report,
            quote: a.quote,
            signature: a.signature,
            pcr_values: a.pcr_values,
            cert_table: Vec::new(),
        }),
        guest_public_key: keys.public(),
        volumes,
    };
    let (err, _) = service.attest(input, None).unwrap_err();
    assert_eq!(err.reason_codes(), vec!["EVIDENCE_HCL_USER_DATA_MISMATCH"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulated_paravisor_is_trusted_only_when_configured() {
    let opts = BrokerOptions {
        trust_simulated: false,
        ..BrokerOptions::default()
    };
    let Some((dir, vtpm, _)) = setup(&opts) else {
        return;
    };
    dir.add_volume("root", "azure").unwrap();
    let broker = RunningBroker::start(&dir).await.unwrap();
    let out = attest(&dir, &broker, vtpm.socket()).await.unwrap();
    assert_eq!(
        denied_codes(&out),
        vec!["EVIDENCE_SIMULATED_PLATFORM_NOT_TRUSTED"]
    );
    assert!(out.refusal.is_some(), "{out:?}");
    broker.stop().await.unwrap();
}
