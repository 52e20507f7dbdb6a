//! Snapshots of what an executable printed (rage `tests/cli_tests.rs`
//! style), so that wording is reviewed: `tests/tests/snapshots/NAME.txt` beside
//! the tests that use them. Run the tests with `KB_UPDATE_SNAPSHOTS=1` to
//! (re)write them, then review the diff.

use std::fmt::Write as _;
use std::path::Path;

/// Compares `actual` with `tests/tests/snapshots/NAME.txt`, or writes it when
/// `KB_UPDATE_SNAPSHOTS=1`.
#[track_caller]
pub fn assert_snapshot(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(format!("{name}.txt"));
    if std::env::var_os("KB_UPDATE_SNAPSHOTS").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).expect("create snapshots dir");
        std::fs::write(&path, actual).expect("write snapshot");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read snapshot {}: {e}\nrun with KB_UPDATE_SNAPSHOTS=1 to create it; actual:\n{actual}",
            path.display()
        )
    });
    if expected != actual {
        let mut diff = String::new();
        let (e, a): (Vec<_>, Vec<_>) = (expected.lines().collect(), actual.lines().collect());
        for i in 0..e.len().max(a.len()) {
            match (e.get(i), a.get(i)) {
                (Some(x), Some(y)) if x == y => {}
                (x, y) => {
                    let _ = writeln!(
                        diff,
                        "line {}:\n  snapshot: {}\n  actual:   {}",
                        i + 1,
                        x.unwrap_or(&"<none>"),
                        y.unwrap_or(&"<none>")
                    );
                }
            }
        }
        panic!(
            "output differs from snapshot {} (KB_UPDATE_SNAPSHOTS=1 rewrites it; review the diff)\n{diff}--- actual\n{actual}",
            path.display()
        );
    }
}

/// Replaces every occurrence of `path` (as text) with `placeholder`.
pub fn redact_path(text: &str, path: &Path, placeholder: &str) -> String {
    text.replace(&path.display().to_string(), placeholder)
}

/// Length of the longest run of hex digits in `text`.
pub fn longest_hex_run(text: &str) -> usize {
    let (mut best, mut cur) = (0, 0);
    for c in text.chars() {
        if c.is_ascii_hexdigit() {
            cur += 1;
            best = best.max(cur);
        } else {
            cur = 0;
        }
    }
    best
}
