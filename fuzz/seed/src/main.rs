//! Writes the seed corpora of the fuzz targets, `fuzz/seeds/TARGET/`,
//! from the repository's real fixtures (`tests/fixtures/snp-real`,
//! `tests/fixtures/azure-snp-vtpm`, `docs/examples/policy.toml`; their
//! provenance is in each fixture directory's `PROVENANCE.md`) and from
//! small hand-written examples of the text formats.
//!
//! Run from the repository root: `fuzz/seed-corpora`. The output is
//! deterministic; commit it. What the fuzzers found later (the minimized
//! corpora and the inputs of fixed bugs, `fuzz/corpus/TARGET/`) is kept
//! apart and never rewritten here.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use keybroker_proto::pb;
use keybroker_snp::cert_table::{self, CertEntry, CertKind};
use keybroker_vtpm::EvidenceFile;
use prost::Message;

/// The fixtures of `tests/fixtures/snp-real`: directory, signing
/// certificate, and the files holding the ASK (or ASVK) and ARK.
const SNP_REAL: [(&str, &str, &[&str]); 5] = [
    (
        "gosevguest-milan-v2-debug",
        "vcek.der",
        &["cert_chain_ask_ark.pem"],
    ),
    ("oak-genoa-v5", "vcek.der", &["ask.pem", "ark.pem"]),
    ("oak-turin-v5", "vcek.der", &["ask.pem", "ark.pem"]),
    (
        "trustee-aws-milan-vlek-v3",
        "vlek.der",
        &["milan_ask_ark_asvk.pem"],
    ),
    ("virtee-milan-v2", "vcek.der", &["cert_chain_ask_ark.pem"]),
];

/// The Azure evidence files of `tests/fixtures/azure-snp-vtpm`.
const AZURE: [&str; 3] = [
    "evidence-genoa.json",
    "evidence-v0.json",
    "evidence-v1.json",
];

fn main() -> ExitCode {
    match run(Path::new(".")) {
        Ok(n) => {
            println!("seed-corpora: wrote {n} files under fuzz/seeds/");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("seed-corpora: {e}");
            eprintln!("seed-corpora: run it from the repository root (fuzz/seed-corpora does)");
            ExitCode::FAILURE
        }
    }
}

/// The corpus being written: one directory per target.
struct Corpus {
    root: PathBuf,
    written: usize,
}

impl Corpus {
    fn put(&mut self, target: &str, name: &str, bytes: &[u8]) -> Result<(), String> {
        let dir = self.root.join(target);
        fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let path = dir.join(name);
        fs::write(&path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        self.written += 1;
        Ok(())
    }

    /// A target whose first byte picks the parser.
    fn put_selected(
        &mut self,
        target: &str,
        name: &str,
        which: u8,
        bytes: &[u8],
    ) -> Result<(), String> {
        let mut v = vec![which];
        v.extend_from_slice(bytes);
        self.put(target, name, &v)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// The DER of each `CERTIFICATE` block of a PEM file, in order.
fn pem_certificates(text: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let text = std::str::from_utf8(text).map_err(|_| "a PEM file is not UTF-8".to_string())?;
    let mut out = Vec::new();
    let mut body: Option<String> = None;
    for line in text.lines().map(str::trim) {
        match (&mut body, line) {
            (None, "-----BEGIN CERTIFICATE-----") => body = Some(String::new()),
            (Some(b), "-----END CERTIFICATE-----") => {
                out.push(
                    STANDARD
                        .decode(b.as_bytes())
                        .map_err(|e| format!("PEM: {e}"))?,
                );
                body = None;
            }
            (Some(b), l) => b.push_str(l),
            (None, _) => {}
        }
    }
    Ok(out)
}

fn run(repo: &Path) -> Result<usize, String> {
    let fixtures = repo.join("tests/fixtures");
    let mut c = Corpus {
        root: repo.join("fuzz/seeds"),
        written: 0,
    };
    let version = Some(keybroker_proto::protocol_version());

    // SEV-SNP reports, their certificate tables, and the requests and KDS
    // responses that carry them.
    for (dir, vek, chain) in SNP_REAL {
        let d = fixtures.join("snp-real").join(dir);
        let report = read(&d.join("report.bin"))?;
        let vek_der = read(&d.join(vek))?;
        let mut chain_der = Vec::new();
        for f in chain {
            chain_der.extend(pem_certificates(&read(&d.join(f))?)?);
        }
        c.put("snp_report", dir, &report)?;

        let vek_kind = if vek == "vlek.der" {
            CertKind::Vlek
        } else {
            CertKind::Vcek
        };
        let mut entries = vec![CertEntry::new(vek_kind, vek_der.clone())];
        // The chain files hold the ASK (or ASVK) first, then the ARK.
        for (der, kind) in chain_der.iter().zip([CertKind::Ask, CertKind::Ark]) {
            entries.push(CertEntry::new(kind, der.clone()));
        }
        let table = cert_table::encode(&entries).map_err(|e| format!("{dir}: {e}"))?;
        c.put("cert_table", dir, &table)?;

        let attest = pb::AttestRequest {
            version,
            nonce: vec![0x11; 32],
            report: report.clone(),
            cert_table: table,
            guest_public_key: vec![0x22; 32],
            volume_ids: vec!["root".into(), "data".into()],
            evidence_kind: pb::EvidenceKind::SnpReport.into(),
            azure_vtpm: None,
        };
        c.put_selected(
            "proto_messages",
            &format!("attest-{dir}"),
            2,
            &attest.encode_to_vec(),
        )?;

        let mut ok = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/x-x509-ca-cert\r\nContent-Length: {}\r\n\r\n",
            vek_der.len()
        )
        .into_bytes();
        ok.extend_from_slice(&vek_der);
        c.put_selected("kds_http", &format!("vek-{dir}"), 0, &ok)?;
    }

    // Azure: the evidence files as they are, and their parts.
    for name in AZURE {
        let json = read(&fixtures.join("azure-snp-vtpm").join(name))?;
        c.put("vtpm_evidence_file", name, &json)?;
        let f = EvidenceFile::parse(&json).map_err(|e| format!("{name}: {e}"))?;
        let stem = name.trim_end_matches(".json");
        c.put("vtpm_hcl", stem, &f.hcl_report)?;
        if let Ok(hcl) = keybroker_vtpm::HclReport::parse(&f.hcl_report) {
            c.put(
                "vtpm_hcl",
                &format!("{stem}-variable-data"),
                hcl.variable_data(),
            )?;
            c.put("snp_report", &format!("azure-{stem}"), hcl.snp_report())?;
        }
        let sig = f.quote_signature.to_tpmt();
        c.put_selected("vtpm_tpm", &format!("attest-{stem}"), 0, &f.quote_message)?;
        c.put_selected("vtpm_tpm", &format!("signature-{stem}"), 1, &sig)?;
        c.put_selected(
            "vtpm_tpm",
            &format!("quote-response-{stem}"),
            2,
            &quote_response(&f.quote_message, &sig),
        )?;
        let attest = pb::AttestRequest {
            version,
            nonce: vec![0x11; 32],
            report: Vec::new(),
            cert_table: Vec::new(),
            guest_public_key: vec![0x22; 32],
            volume_ids: vec!["root".into()],
            evidence_kind: pb::EvidenceKind::AzureVtpm.into(),
            azure_vtpm: Some(pb::AzureVtpmEvidence {
                hcl_report: f.hcl_report.clone(),
                quote: f.quote_message.clone(),
                signature: sig,
                pcr_values: f.pcr_values.iter().map(|p| p.to_vec()).collect(),
            }),
        };
        c.put_selected(
            "proto_messages",
            &format!("attest-azure-{stem}"),
            2,
            &attest.encode_to_vec(),
        )?;
    }

    proto_seeds(&mut c)?;
    text_seeds(&mut c, repo)?;
    Ok(c.written)
}

/// A TPM2_Quote response (with one password session) around `attest` and
/// `signature`.
fn quote_response(attest: &[u8], signature: &[u8]) -> Vec<u8> {
    let mut params = Vec::new();
    params.extend_from_slice(
        &u16::try_from(attest.len())
            .unwrap_or(u16::MAX)
            .to_be_bytes(),
    );
    params.extend_from_slice(attest);
    params.extend_from_slice(signature);
    let mut body = Vec::new();
    body.extend_from_slice(
        &u32::try_from(params.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    body.extend_from_slice(&params);
    // TPMS_AUTH_RESPONSE: empty nonce, continueSession, empty hmac.
    body.extend_from_slice(&[0, 0, 1, 0, 0]);
    let mut out = Vec::new();
    out.extend_from_slice(&0x8002u16.to_be_bytes());
    out.extend_from_slice(
        &u32::try_from(10 + body.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// The other `keybroker.v1` messages, one each.
fn proto_seeds(c: &mut Corpus) -> Result<(), String> {
    let version = Some(keybroker_proto::protocol_version());
    let challenge = pb::ChallengeRequest {
        version,
        volume_ids: vec!["root".into(), "data".into()],
    };
    c.put_selected(
        "proto_messages",
        "challenge-request",
        0,
        &challenge.encode_to_vec(),
    )?;
    let response = pb::ChallengeResponse {
        version,
        nonce: vec![0x11; 32],
        expires_in_secs: 60,
    };
    c.put_selected(
        "proto_messages",
        "challenge-response",
        1,
        &response.encode_to_vec(),
    )?;
    let attested = pb::AttestResponse {
        version,
        keys: vec![pb::WrappedKey {
            volume_id: "root".into(),
            key_version: 2,
            state: pb::KeyState::Pending.into(),
            enc: vec![0x33; 32],
            ciphertext: vec![0x44; 80],
        }],
        denied: vec![pb::VolumeDenial {
            volume_id: "data".into(),
            reason_codes: vec!["VOLUME_NOT_BOUND".into()],
        }],
        decision_id: "dec-1".into(),
    };
    c.put_selected(
        "proto_messages",
        "attest-response",
        3,
        &attested.encode_to_vec(),
    )?;
    let confirm = pb::ConfirmRotationRequest {
        version,
        nonce: vec![0x11; 32],
        volume_id: "root".into(),
        key_version: 2,
        proof: vec![0x55; keybroker_proto::ROTATION_PROOF_LEN],
    };
    c.put_selected(
        "proto_messages",
        "confirm-request",
        4,
        &confirm.encode_to_vec(),
    )?;
    let confirmed = pb::ConfirmRotationResponse {
        version,
        current_version: 2,
        decision_id: "dec-2".into(),
    };
    c.put_selected(
        "proto_messages",
        "confirm-response",
        5,
        &confirmed.encode_to_vec(),
    )?;
    let denial = pb::Denial {
        reason_codes: vec!["POLICY_MEASUREMENT_NOT_ALLOWED".into()],
        volumes: vec![pb::VolumeDenial {
            volume_id: "data".into(),
            reason_codes: vec!["VOLUME_NOT_BOUND".into()],
        }],
        decision_id: "dec-3".into(),
    };
    c.put_selected("proto_messages", "denial", 6, &denial.encode_to_vec())
}

/// The text formats: the example policy, tokens, crypttabs, HTTP and URLs.
fn text_seeds(c: &mut Corpus, repo: &Path) -> Result<(), String> {
    let policy = read(&repo.join("docs/examples/policy.toml"))?;
    c.put("policy_toml", "example", &policy)?;
    // The example's Azure section, switched on.
    let text = String::from_utf8(policy).map_err(|_| "policy.toml is not UTF-8".to_string())?;
    let (head, tail) = text
        .split_once("# [vtpm]\n")
        .ok_or_else(|| "policy.toml has no commented-out [vtpm] section".to_string())?;
    let mut azure = format!("{head}[vtpm]\n");
    for l in tail.lines() {
        match l.strip_prefix("# ") {
            Some(rest) if !rest.starts_with('#') => azure.push_str(rest),
            _ => azure.push_str(l),
        }
        azure.push('\n');
    }
    c.put("policy_toml", "example-azure", azure.as_bytes())?;
    c.put(
        "policy_toml",
        "minimal",
        format!("version = 1\nmeasurements = [\"{}\"]\n[min_tcb.milan]\nbootloader = 3\ntee = 0\nsnp = 8\nmicrocode = 115\n", "ab".repeat(48)).as_bytes(),
    )?;

    let pin = format!("sha256:{}", "6d".repeat(32));
    let v2 = format!(
        r#"{{"type":"sev-keybroker","keyslots":["1","2"],"version":2,"brokers":["https://kb.example:8443","https://[fd00::1]:8443"],"volume":"root","slots":[{{"keyslot":1,"key_version":1}},{{"keyslot":2,"key_version":2}}],"spki_pins":["{pin}"]}}"#
    );
    let v1 = format!(
        r#"{{"type":"sev-keybroker","keyslots":["1"],"version":1,"brokers":["https://kb.example:8443"],"volume":"root","key_version":1,"spki_pins":["{pin}"]}}"#
    );
    let stale = format!(
        r#"{{"type":"sev-keybroker","keyslots":["2"],"version":2,"brokers":["https://kb.example:8443"],"volume":"root","slots":[{{"keyslot":1,"key_version":1}},{{"keyslot":2,"key_version":2}}],"spki_pins":["{pin}"]}}"#
    );
    // Four bytes of active keyslots (1 and 2), then the token.
    for (name, json) in [("v2", v2), ("v1", v1), ("v2-stale", stale)] {
        let mut v = 0b110u32.to_le_bytes().to_vec();
        v.extend_from_slice(json.as_bytes());
        c.put("luks_token", name, &v)?;
    }

    c.put(
        "crypttab",
        "debian",
        b"# <target name> <source device> <key file> <options>\n\
          root UUID=2a6f0b4e-1b2c-4d5e-8f90-123456789abc none luks,discard\n\
          data PARTUUID=0fc63daf-8483-4772-8e79-3d69d8477de4 none luks,no-read-workqueue,no-write-workqueue\n\
          swap /dev/vdb3 /dev/urandom swap,cipher=aes-xts-plain64,size=512\n\
          home\tLABEL=home - luks,nofail\n\
          bad\n\
          also-bad /dev/vdc none a b c\n",
    )?;

    let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nTrailer: x\r\n\r\n";
    c.put_selected("kds_http", "chunked", 0, chunked)?;
    c.put_selected(
        "kds_http",
        "not-found",
        0,
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
    )?;
    c.put_selected(
        "kds_http",
        "rate-limited",
        0,
        b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 30\r\nConnection: close\r\n\r\n",
    )?;
    c.put_selected("kds_http", "url-kds", 1, b"https://kdsintf.amd.com")?;
    c.put_selected("kds_http", "url-ipv6", 1, b"http://[::1]:8080/kds/")?;
    c.put_selected(
        "kds_http",
        "url-port-path",
        1,
        b"https://kds.example.net:8443/vcek/v1",
    )?;
    Ok(())
}
