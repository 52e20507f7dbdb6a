//! Crash points exist only in builds with the `failpoints` feature: the
//! `broker` executable of this build names `KEYBROKER_CRASH_AT` if and only
//! if the feature is on (`cargo test -p broker` builds it without the
//! feature; the test kit, and so `cargo test --workspace`, with it).

fn binary_names_the_crash_variable() -> bool {
    let exe = std::fs::read(env!("CARGO_BIN_EXE_broker")).expect("read the broker executable");
    exe.windows(b"KEYBROKER_CRASH_AT".len())
        .any(|w| w == b"KEYBROKER_CRASH_AT")
}

#[cfg(not(feature = "failpoints"))]
#[test]
fn without_the_feature_the_binary_has_no_crash_points() {
    assert!(!binary_names_the_crash_variable());
}

#[cfg(feature = "failpoints")]
#[test]
fn with_the_feature_the_binary_has_crash_points() {
    assert!(binary_names_the_crash_variable());
}
