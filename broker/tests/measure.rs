//! `broker measure` against the public launch-digest vectors in
//! `tests/fixtures/snp-measure/VECTORS.md` (read from the markdown tables,
//! every row checked or its skip logged, rustls hpke-test style), malformed
//! inputs for each parser, and the real binary for one row and its errors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use broker::measure::{
    self, measure, parse_setup_header, KernelHeaderError, MeasureError, Mode, OvmfError, Request,
    VmmType,
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/snp-measure")
}

/// One table row, cells keyed by their column header.
type Row = BTreeMap<String, String>;

/// Every markdown table in `text` whose first column is `id`.
fn vector_rows(text: &str) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut header: Option<Vec<String>> = None;
    for line in text.lines() {
        let line = line.trim();
        if !line.starts_with('|') {
            header = None;
            continue;
        }
        let cells: Vec<String> = line
            .trim_matches('|')
            .split('|')
            .map(|c| c.trim().to_string())
            .collect();
        match &header {
            None => header = Some(cells),
            Some(_) if cells.iter().all(|c| c.chars().all(|ch| ch == '-')) => {}
            Some(h) if h[0] == "id" => {
                assert_eq!(cells.len(), h.len(), "row {line}");
                rows.push(h.iter().cloned().zip(cells).collect());
            }
            Some(_) => {}
        }
    }
    rows
}

fn is_absent(cell: &str) -> bool {
    cell.is_empty() || cell.starts_with('–') || cell.starts_with('-')
}

/// What a row expects.
#[derive(Debug)]
enum Expect {
    Digest(String),
    Error(String),
}

fn expected(row: &Row) -> Expect {
    let cell = row
        .get("expected digest")
        .or_else(|| row.get("expected (0.0.13)"))
        .expect("expected column");
    match cell.strip_prefix("**error**:") {
        Some(msg) => Expect::Error(msg.trim().trim_matches('"').to_string()),
        None => Expect::Digest(cell.clone()),
    }
}

/// `--flag value` pairs from the row's backticked "other args", resolving
/// "(same as P01)" and "= P03 output" references.
fn other_args(row: &Row, all: &BTreeMap<String, Row>) -> BTreeMap<String, String> {
    let Some(cell) = row.get("other args") else {
        return BTreeMap::new();
    };
    if let Some(rest) = cell.split("= ").nth(1) {
        // "`--snp-ovmf-hash` = P03 output"
        let id = rest.split_whitespace().next().unwrap();
        let flag = cell.split('`').nth(1).unwrap().to_string();
        let Expect::Digest(d) = expected(&all[id]) else {
            panic!("{id} has no digest")
        };
        return BTreeMap::from([(flag, d)]);
    }
    let quoted = cell.split('`').nth(1).unwrap_or("");
    let toks: Vec<&str> = quoted.split_whitespace().collect();
    let mut out = BTreeMap::new();
    for pair in toks.chunks(2) {
        out.insert(pair[0].to_string(), pair.get(1).unwrap_or(&"").to_string());
    }
    if out.values().any(|v| v.contains('…')) {
        let id = cell
            .split("same as ")
            .nth(1)
            .and_then(|s| s.split(')').next())
            .unwrap_or_else(|| panic!("abbreviated value without reference: {cell}"));
        return other_args(&all[id], all);
    }
    out
}

fn file(cell: &str) -> Option<PathBuf> {
    if is_absent(cell) {
        None
    } else if cell.starts_with('/') {
        Some(PathBuf::from(cell))
    } else {
        Some(fixtures().join(cell))
    }
}

/// The request a row describes, or why it cannot be run here.
fn request(row: &Row, all: &BTreeMap<String, Row>) -> Result<(Request, bool), String> {
    let mode_cell = &row["mode"];
    let mode: Mode = mode_cell
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .map_err(|e: measure::UnknownName| e.to_string())?;
    let base64 = mode_cell.contains("base64");
    let mut req = Request::new(mode, file(&row["ovmf"]).ok_or("no firmware")?);
    req.vcpus = row["vcpus"]
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok());
    let cpu = &row["vcpu type"];
    req.vcpu_sig = if cpu.starts_with("family") {
        let n: Vec<u32> = cpu
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|t| t.parse().ok())
            .collect();
        Some(measure::cpu_sig(n[0], n[1], n[2]))
    } else if let Some(name) = cpu
        .split(|c: char| c.is_whitespace() || c == '(' || c == ';')
        .find(|t| t.starts_with("EPYC"))
    {
        Some(measure::vcpu_type_sig(name).map_err(|e| e.to_string())?)
    } else {
        None
    };
    if let Some(f) = row["guest feat."]
        .split_whitespace()
        .next()
        .and_then(|t| t.strip_prefix("0x"))
    {
        req.guest_features = u64::from_str_radix(f, 16).map_err(|e| e.to_string())?;
    }
    if !is_absent(&row["vmm"]) {
        req.vmm = row["vmm"].parse::<VmmType>().map_err(|e| e.to_string())?;
    }
    req.kernel = file(&row["kernel"]);
    req.initrd = file(&row["initrd"]);
    let append = &row["append"];
    if !is_absent(append) {
        req.append = Some(append.trim_matches('"').to_string());
    }
    for (flag, value) in other_args(row, all) {
        match flag.as_str() {
            "--snp-ovmf-hash" => {
                let b = hex::decode(&value).map_err(|e| e.to_string())?;
                req.snp_ovmf_hash = Some(b.try_into().map_err(|_| "hash length")?);
            }
            "--svsm" => req.svsm = Some(fixtures().join(value)),
            "--vars-size" => req.ovmf_vars_size = Some(value.parse().map_err(|_| "vars size")?),
            other => return Err(format!("flag {other} is not supported")),
        }
    }
    for p in [
        Some(&req.ovmf),
        req.kernel.as_ref(),
        req.initrd.as_ref(),
        req.svsm.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        if !p.exists() {
            return Err(format!("input {} is not in the fixtures", p.display()));
        }
    }
    Ok((req, base64))
}

fn encode(digest: &[u8], base64: bool) -> String {
    if base64 {
        base64::engine::general_purpose::STANDARD.encode(digest)
    } else {
        hex::encode(digest)
    }
}

#[test]
fn public_vectors() {
    let text = std::fs::read_to_string(fixtures().join("VECTORS.md")).unwrap();
    let rows = vector_rows(&text);
    let all: BTreeMap<String, Row> = rows.iter().map(|r| (r["id"].clone(), r.clone())).collect();
    let (mut passed, mut skipped) = (Vec::new(), Vec::new());
    for row in &rows {
        let id = &row["id"];
        let (req, b64) = match request(row, &all) {
            Ok(r) => r,
            // Only missing inputs may skip a row; anything else is a bug here.
            Err(why) if why.contains("not in the fixtures") => {
                eprintln!("skipped {id}: {why}");
                skipped.push(id.clone());
                continue;
            }
            Err(why) => panic!("{id}: cannot read the row: {why}"),
        };
        let got = measure(&req);
        match (expected(row), got) {
            // S rows hold the pre-2026 EC2 model: we follow the live P06/P07.
            (Expect::Digest(old), Ok(m)) if id.starts_with('S') => {
                let newer = all
                    .values()
                    .find(|p| {
                        p.get("virtee/sev test")
                            .is_some_and(|c| c.contains(id.as_str()))
                    })
                    .unwrap_or_else(|| panic!("no P row names {id}"));
                let Expect::Digest(live) = expected(newer) else {
                    panic!("{} has no digest", newer["id"])
                };
                assert_ne!(hex::encode(&m.digest), old, "{id}: old EC2 model");
                assert_eq!(
                    hex::encode(&m.digest),
                    live,
                    "{id}: live model of {}",
                    newer["id"]
                );
            }
            (Expect::Digest(want), Ok(m)) => {
                assert_eq!(encode(&m.digest, b64), want, "{id}: {req:?}")
            }
            (Expect::Digest(want), Err(e)) => panic!("{id}: expected {want}, got error {e}"),
            (Expect::Error(msg), Ok(m)) => {
                panic!(
                    "{id}: expected error {msg:?}, got {}",
                    hex::encode(m.digest)
                )
            }
            (Expect::Error(msg), Err(e)) => {
                let text = e.to_string();
                assert!(
                    text.starts_with(&msg),
                    "{id}: {text:?} should start with {msg:?}"
                );
                assert!(
                    text.contains("use an OVMF built from"),
                    "{id}: says what to do"
                );
            }
        }
        passed.push(id.clone());
    }
    eprintln!(
        "passed {}: {passed:?}; skipped {}: {skipped:?}",
        passed.len(),
        skipped.len()
    );
    for id in [
        "P01", "P03", "P06", "P08", "P18", "P21", "P24", "P25", "S05", "G01", "G04", "G07",
    ] {
        assert!(passed.iter().any(|p| p == id), "{id} must run");
    }
    assert!(passed.len() >= 34, "only {} rows ran", passed.len());
    if skipped.is_empty() {
        assert_eq!(passed.len(), 36, "P01-P27, S05, S06, G01-G07");
    }
}

#[test]
fn table_parser_reads_every_section() {
    let text = std::fs::read_to_string(fixtures().join("VECTORS.md")).unwrap();
    let ids: Vec<String> = vector_rows(&text)
        .into_iter()
        .map(|r| r["id"].clone())
        .collect();
    assert_eq!(ids.iter().filter(|i| i.starts_with('P')).count(), 27);
    assert_eq!(ids.iter().filter(|i| i.starts_with('S')).count(), 2);
    assert_eq!(ids.iter().filter(|i| i.starts_with('G')).count(), 7);
}

fn snp(ovmf: &Path) -> Request {
    let mut r = Request::new(Mode::Snp, ovmf);
    r.vcpus = Some(2);
    r.vcpu_sig = Some(measure::vcpu_type_sig("EPYC-Milan").unwrap());
    r
}

fn amd_sev_suffix() -> Vec<u8> {
    std::fs::read(fixtures().join("ovmf_AmdSev_suffix.bin")).unwrap()
}

fn write(dir: &tempfile::TempDir, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, data).unwrap();
    p
}

fn firmware_error(r: Result<measure::Measurement, MeasureError>) -> OvmfError {
    match r {
        Err(MeasureError::Firmware { source, .. }) => source,
        other => panic!("expected a firmware error, got {other:?}"),
    }
}

/// The offset of a GUID (on-disk bytes) in the image.
fn find(data: &[u8], needle: &[u8]) -> usize {
    data.windows(needle.len())
        .position(|w| w == needle)
        .expect("GUID present")
}

// dc886566-984a-4798-a75e-5585a7bf67cc (SEV metadata) in on-disk order.
const META_GUID: [u8; 16] = [
    0x66, 0x65, 0x88, 0xdc, 0x4a, 0x98, 0x98, 0x47, 0xa7, 0x5e, 0x55, 0x85, 0xa7, 0xbf, 0x67, 0xcc,
];

#[test]
fn truncated_firmware_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let good = amd_sev_suffix();
    let tiny = write(&dir, "tiny.fd", &good[..40]);
    assert_eq!(
        firmware_error(measure(&snp(&tiny))),
        OvmfError::TooShort { len: 40 }
    );
    // Cutting the end moves the footer: no table, so no SNP metadata.
    let cut = write(&dir, "cut.fd", &good[..good.len() - 16]);
    assert!(matches!(measure(&snp(&cut)), Err(MeasureError::NoMetadata)));
    // Keeping only the tail leaves the metadata offset outside the file.
    let tail = write(&dir, "tail.fd", &good[good.len() - 200..]);
    assert!(matches!(
        firmware_error(measure(&snp(&tail))),
        OvmfError::MetadataOutOfBounds { .. } | OvmfError::BadTableLength { .. }
    ));
    // A firmware that is not whole pages cannot be measured page by page.
    let mut odd = vec![0u8; 100];
    odd.extend_from_slice(&good);
    let odd = write(&dir, "odd.fd", &odd);
    let e = measure(&snp(&odd)).unwrap_err();
    assert!(
        matches!(e, MeasureError::NotPageMultiple { len: 4196, .. }),
        "{e}"
    );
}

#[test]
fn missing_metadata_table() {
    let dir = tempfile::tempdir().unwrap();
    let mut fw = amd_sev_suffix();
    let at = find(&fw, &META_GUID);
    fw[at] ^= 0xff; // the entry is still there, under an unknown GUID
    let p = write(&dir, "nometa.fd", &fw);
    let e = measure(&snp(&p)).unwrap_err();
    assert!(matches!(e, MeasureError::NoMetadata), "{e}");
    assert!(e
        .to_string()
        .contains("use an OVMF built with SEV-SNP support"));
    // Plain SEV needs no metadata: the digest is the file's SHA-256.
    let sev = measure(&Request::new(Mode::Sev, &p)).unwrap();
    assert_eq!(sev.digest, sev.ovmf_sha256.to_vec());
}

#[test]
fn corrupt_guid_table() {
    let dir = tempfile::tempdir().unwrap();
    let good = amd_sev_suffix();
    let footer = good.len() - 32 - 18;
    // Footer length larger than the file.
    let mut fw = good.clone();
    fw[footer..footer + 2].copy_from_slice(&0xfff0u16.to_le_bytes());
    let p = write(&dir, "len.fd", &fw);
    assert!(matches!(
        firmware_error(measure(&snp(&p))),
        OvmfError::BadTableLength { .. }
    ));
    // The last entry before the footer claims 3 bytes.
    let mut fw = good.clone();
    fw[footer - 18..footer - 16].copy_from_slice(&3u16.to_le_bytes());
    let p = write(&dir, "entry.fd", &fw);
    assert!(matches!(
        firmware_error(measure(&snp(&p))),
        OvmfError::BadEntryLength { len: 3, .. }
    ));
    // The metadata signature damaged.
    let mut fw = good.clone();
    let at = find(&fw, b"ASEV");
    fw[at] = b'X';
    let p = write(&dir, "sig.fd", &fw);
    assert!(matches!(
        firmware_error(measure(&snp(&p))),
        OvmfError::MetadataSignature { .. }
    ));
    // An unknown section type.
    let mut fw = good;
    let at = find(&fw, b"ASEV");
    fw[at + 16 + 8] = 0x7f;
    let p = write(&dir, "type.fd", &fw);
    assert_eq!(
        firmware_error(measure(&snp(&p))),
        OvmfError::UnknownSection { kind: 0x7f }
    );
}

#[test]
fn kernel_setup_header() {
    let gen = std::fs::read(fixtures().join("gen_kernel.bin")).unwrap();
    assert_eq!(parse_setup_header(&gen), Err(KernelHeaderError::NoBootFlag));
    assert_eq!(
        parse_setup_header(&[]),
        Err(KernelHeaderError::TooShort { len: 0 })
    );
    let mut k = vec![0u8; 8 * 512];
    k[0x1f1] = 7;
    k[0x1fe..0x200].copy_from_slice(&[0x55, 0xaa]);
    k[0x202..0x206].copy_from_slice(b"HdrS");
    k[0x206..0x208].copy_from_slice(&[0x0f, 0x02]);
    assert_eq!(parse_setup_header(&k).unwrap().protocol, (2, 15));
    assert!(matches!(
        parse_setup_header(&k[..7 * 512]),
        Err(KernelHeaderError::SetupPastEnd { sectors: 7, .. })
    ));
    // A kernel that is no bzImage is still measured as given, with a note.
    let mut req = snp(&fixtures().join("ovmf_AmdSev_suffix.bin"));
    req.kernel = Some(fixtures().join("gen_kernel.bin"));
    let m = measure(&req).unwrap();
    assert!(matches!(m.kernel_header, Some(Err(_))));
}

#[test]
fn input_errors_say_what_to_do() {
    let ovmf = fixtures().join("ovmf_AmdSev_suffix.bin");
    let mut req = snp(&ovmf);
    req.append = Some("quiet".into());
    let e = measure(&req).unwrap_err();
    assert_eq!(
        e.to_string(),
        "--append needs --kernel: the firmware measures initrd and command line only with a kernel"
    );
    let mut req = snp(&ovmf);
    req.vcpus = None;
    assert_eq!(
        measure(&req).unwrap_err().to_string(),
        "mode snp needs --vcpus N (at least 1)"
    );
    // GCE and EC2 need no vCPU type; QEMU does.
    let mut req = snp(&ovmf);
    req.vcpu_sig = None;
    assert!(measure(&req)
        .unwrap_err()
        .to_string()
        .contains("--vcpu-type"));
    req.vmm = VmmType::Gce;
    assert!(measure(&req).is_ok());
    let mut req = snp(&ovmf);
    req.kernel = Some("/nonexistent/vmlinuz".into());
    let e = measure(&req).unwrap_err().to_string();
    assert!(
        e.starts_with("cannot read kernel /nonexistent/vmlinuz"),
        "{e}"
    );
    assert!(measure::vcpu_type_sig("EPYC-Zen9").is_err());
    assert!("hyperv".parse::<VmmType>().is_err());
}

fn broker(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_broker"))
        .arg("measure")
        .args(args)
        .current_dir(fixtures())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

const P10: &[&str] = &[
    "--mode",
    "snp",
    "--vcpus",
    "1",
    "--vcpu-type",
    "EPYC-v4",
    "--ovmf",
    "ovmf_AmdSev_suffix.bin",
    "--kernel",
    "/dev/null",
    "--initrd",
    "/dev/null",
    "--append=console=ttyS0 loglevel=7",
    "--guest-features",
    "0x21",
];

#[test]
fn cli_prints_the_digest_alone() {
    let (code, out, _) = broker(P10);
    assert_eq!(code, 0);
    assert_eq!(
        out,
        "803f691094946e42068aaa3a8f9e26a5c89f36f7b73ecfb28c653360fe4b3aba7e534442e7e1e17895dfe778d0228977\n"
    );
    let mut json_args = P10.to_vec();
    json_args.push("--json");
    let (code, out, _) = broker(&json_args);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["mode"], "snp");
    assert_eq!(v["digest"], out_digest(P10));
    assert_eq!(
        v["inputs"]["ovmf"]["sha256"],
        "8f765dfabc127fc0a938a0744a3103ec15864d7d794eb4c398aa976b6d6ab16c"
    );
    assert_eq!(
        v["snp_ovmf_hash"],
        "086e2e9149ebf45abdc3445fba5b2da8270bdbb04094d7a2c37faaa4b24af3aa16aff8c374c2a55c467a50da6d466b74"
    );
    assert_eq!(
        v["inputs"]["kernel"]["sha256"],
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
}

fn out_digest(args: &[&str]) -> String {
    broker(args).1.trim().to_string()
}

#[test]
fn cli_errors() {
    // P18: a refusal, exit 1, with what to do.
    let (code, out, err) = broker(&[
        "--mode",
        "snp",
        "--vcpus",
        "1",
        "--vcpu-type",
        "EPYC-v4",
        "--ovmf",
        "ovmf_OvmfX64_suffix.bin",
        "--kernel",
        "/dev/null",
        "--initrd",
        "/dev/null",
    ]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert!(err.starts_with(
        "broker: error: Kernel specified but OVMF metadata doesn't include SNP_KERNEL_HASHES section"
    ), "{err}");
    assert!(err.contains("AmdSevX64.dsc"));
    // Usage errors: exit 2 before any work.
    let usage = [
        (
            vec![
                "--mode",
                "snp",
                "--vcpus",
                "1",
                "--vcpu-type",
                "EPYC-v9",
                "--ovmf",
                "x",
            ],
            "unknown vCPU type",
        ),
        (
            vec![
                "--mode",
                "snp",
                "--vcpus",
                "1",
                "--vmm-type",
                "xen",
                "--ovmf",
                "x",
            ],
            "unknown VMM type",
        ),
        (
            vec![
                "--mode",
                "snp",
                "--vcpus",
                "1",
                "--snp-ovmf-hash",
                "zz",
                "--ovmf",
                "x",
            ],
            "is not hex",
        ),
        (
            vec![
                "--mode",
                "snp",
                "--vcpus",
                "1",
                "--guest-features",
                "0xq",
                "--ovmf",
                "x",
            ],
            "not a number",
        ),
        (vec!["--mode", "snp", "--ovmf", "x"], "--vcpus"),
        (
            vec!["--mode", "sev", "--initrd", "i", "--ovmf", "x"],
            "--kernel",
        ),
        (vec!["--mode", "tdx", "--ovmf", "x"], "unknown mode"),
    ];
    for (args, text) in usage {
        let (code, _, err) = broker(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(text), "{args:?}: {err}");
    }
    // A missing file: exit 1, naming it.
    let (code, _, err) = broker(&["--mode", "sev", "--ovmf", "/nonexistent/OVMF.fd"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot read firmware /nonexistent/OVMF.fd"),
        "{err}"
    );
    // VMM type is case-insensitive.
    let a = out_digest(&[
        "--mode",
        "snp",
        "--vcpus",
        "1",
        "--vmm-type",
        "GCE",
        "--ovmf",
        "ovmf_AmdSev_suffix.bin",
    ]);
    let b = out_digest(&[
        "--mode",
        "snp",
        "--vcpus",
        "1",
        "--vmm-type",
        "gce",
        "--ovmf",
        "ovmf_AmdSev_suffix.bin",
    ]);
    assert_eq!(a.len(), 96);
    assert_eq!(a, b);
}
