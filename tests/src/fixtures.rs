//! The real AMD report sets of `tests/fixtures/snp-real/`, and what their
//! `EXPECTED.md` says.

use std::path::{Path, PathBuf};

/// The real AMD report sets.
pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/snp-real");

/// The five real report sets, by folder name.
pub const REAL_SETS: [&str; 5] = [
    "gosevguest-milan-v2-debug",
    "oak-genoa-v5",
    "oak-turin-v5",
    "trustee-aws-milan-vlek-v3",
    "virtee-milan-v2",
];

/// A fixture set's folder.
pub fn fixture(set: &str) -> PathBuf {
    Path::new(FIXTURES).join(set)
}

/// Copies a real set's report into `dir/report.bin` and its certificates
/// (the VEK as `vcek.der`/`vlek.der`, every PEM chain file) into
/// `dir/certs/`, the layout `broker report verify --certs` reads.
pub fn stage_real_set(set: &str, dir: &Path) {
    let src = fixture(set);
    std::fs::copy(src.join("report.bin"), dir.join("report.bin")).expect("copy report.bin");
    let certs = dir.join("certs");
    std::fs::create_dir_all(&certs).expect("create certs dir");
    let mut vek = 0;
    for entry in std::fs::read_dir(&src).expect("read fixture dir") {
        let path = entry.expect("dir entry").path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let is_vek = name == "vcek.der" || name == "vlek.der";
        vek += usize::from(is_vek);
        if is_vek || name.ends_with(".pem") {
            std::fs::copy(&path, certs.join(&name)).expect("copy certificate");
        }
    }
    assert_eq!(vek, 1, "{set} must hold exactly one of vcek.der, vlek.der");
}

/// A field of a set's EXPECTED.md, written there as "- NAME: `VALUE`".
pub fn expected_field(set: &str, name: &str) -> String {
    let text = std::fs::read_to_string(fixture(set).join("EXPECTED.md")).expect("EXPECTED.md");
    let prefix = format!("- {name}: `");
    let line = text
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("{set}/EXPECTED.md has no {name}"));
    line[prefix.len()..]
        .split('`')
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The real Azure confidential VM captures (HCL report, quote, PCRs, VCEK).
pub const AZURE_FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/azure-snp-vtpm");

/// One Azure capture and what its `EXPECTED.md` row says.
#[derive(Debug, Clone)]
pub struct AzureCapture {
    /// File name, e.g. `evidence-v0.json`.
    pub file: String,
    /// The expected binding value (the quote's qualifying data), hex.
    pub report_data: String,
    /// The expected PCR 0, hex.
    pub pcr0: String,
}

impl AzureCapture {
    /// The capture's path.
    pub fn path(&self) -> PathBuf {
        Path::new(AZURE_FIXTURES).join(&self.file)
    }
}

/// The Azure captures, from the table of `EXPECTED.md` (`| file | … = HEX
/// or HEX | PCR0 |`): three of them.
pub fn azure_captures() -> Vec<AzureCapture> {
    let text = std::fs::read_to_string(Path::new(AZURE_FIXTURES).join("EXPECTED.md"))
        .expect("read EXPECTED.md of the Azure captures");
    let out: Vec<AzureCapture> = text
        .lines()
        .filter(|l| l.starts_with("| evidence-"))
        .map(|l| {
            let cols: Vec<&str> = l.split('|').map(str::trim).collect();
            AzureCapture {
                file: cols[1].to_owned(),
                report_data: cols[2]
                    .split_whitespace()
                    .last()
                    .expect("a hex value")
                    .to_owned(),
                pcr0: cols[3].to_owned(),
            }
        })
        .collect();
    assert_eq!(out.len(), 3, "EXPECTED.md lists three Azure captures");
    out
}
