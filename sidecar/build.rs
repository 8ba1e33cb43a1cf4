//! Links the `tandem` binary position-dependent, as Go links daprd. In a position-independent
//! binary the dynamic loader rewrites about 1.7 MB of read-only data (vtables, static tables)
//! at every start, which turns those pages into private memory in each sidecar process; linked
//! at a fixed address they stay shared with the page cache and are read only when touched.
fn main() {
    println!("cargo:rustc-link-arg-bins=-no-pie");
}
