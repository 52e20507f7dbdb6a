//! libcryptsetup looks the plugin's functions up by symbol version
//! (`dlvsym(..., "CRYPTSETUP_TOKEN_1.0")`): this version script defines that
//! version; `src/lib.rs` binds each function to it with `.symver`.
fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rerun-if-changed=token.map");
    println!("cargo:rustc-cdylib-link-arg=-Wl,--version-script={dir}/token.map");
}
