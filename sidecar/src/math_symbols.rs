//! The three C math functions the binary calls (`log`, `log2`, `pow`: librdkafka and a few float
//! operations in Rust code) defined here from the `libm` crate, rust-lang's port of musl's. With
//! them defined in the executable the linker drops glibc's `libm.so.6`, a library the process
//! would otherwise map and partly fault in at every start (about 0.5 MB of resident memory for
//! three functions).
#![allow(unsafe_code)] // `no_mangle` exports a symbol; nothing else here is unsafe.

#[unsafe(no_mangle)]
pub extern "C" fn log(x: f64) -> f64 {
    libm::log(x)
}

#[unsafe(no_mangle)]
pub extern "C" fn log2(x: f64) -> f64 {
    libm::log2(x)
}

#[unsafe(no_mangle)]
pub extern "C" fn pow(x: f64, y: f64) -> f64 {
    libm::pow(x, y)
}
