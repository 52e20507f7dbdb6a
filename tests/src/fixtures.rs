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
