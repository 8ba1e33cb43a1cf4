//! Linker settings for the `tandem` binary.
//!
//! Position-dependent, as Go links daprd: in a position-independent binary the dynamic loader
//! rewrites about 1.7 MB of read-only data (vtables, static tables) at every start, which turns
//! those pages into private memory in each sidecar process; linked at a fixed address they stay
//! shared with the page cache and are read only when touched.
//!
//! Start-up code first: `link/startup-symbols.txt` names the functions a sidecar runs while it
//! starts and idles, then those the common requests add (recorded by
//! `scripts/record-startup-symbols.sh`). LLD places them together in that order, so they fill
//! about 1.5 MB of contiguous code instead of 64 KB fault-around windows all over the 15 MB of
//! code, and an idle sidecar maps a third as many pages. Names that no longer exist (the code
//! or the crate hashes changed since the recording) are skipped; re-recording tightens the
//! layout again.
use std::env;
use std::path::Path;

fn main() {
    println!("cargo:rustc-link-arg-bins=-no-pie");

    let order = Path::new(&env::var("CARGO_MANIFEST_DIR").unwrap_or_default())
        .join("link")
        .join("startup-symbols.txt");
    println!("cargo:rerun-if-changed={}", order.display());
    println!("cargo:rerun-if-env-changed=CARGO_ENCODED_RUSTFLAGS");
    println!("cargo:rerun-if-env-changed={LINKER_VARIABLE}");
    println!("cargo:rerun-if-env-changed=TANDEM_LINK_MAP");
    if links_with_lld() && order.is_file() {
        println!(
            "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
    // The recording script asks for a link map to name the code valgrind traced, since the
    // release binary it runs is stripped.
    if let Ok(map) = env::var("TANDEM_LINK_MAP") {
        println!("cargo:rustc-link-arg-bins=-Wl,-Map={map}");
        println!("cargo:rustc-link-arg-bins=-Wl,--no-demangle");
    }
}

const LINKER_VARIABLE: &str = "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER";

/// Rust links x86_64 Linux binaries with its bundled LLD unless the build asks for another
/// linker; only LLD understands `--symbol-ordering-file`.
fn links_with_lld() -> bool {
    let target = env::var("TARGET").unwrap_or_default();
    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    let other_linker = flags.contains("linker=")
        || flags.contains("linker-flavor")
        || flags.contains("-lld")
        || env::var_os(LINKER_VARIABLE).is_some();
    target == "x86_64-unknown-linux-gnu" && !other_linker
}
