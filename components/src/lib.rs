//! Tandem's pluggable backends and the resource model they are configured by.
//!
//! Dependencies point down: the sidecar uses this crate; nothing here knows about HTTP routes.
#![forbid(unsafe_code)]

pub mod kube_api;
pub mod metadata;
pub mod pubsub;
pub mod registry;
pub mod resp;
pub mod secretstores;
pub mod spec;
pub mod state;
pub mod tls;

pub use metadata::{Metadata, MetadataError};
pub use registry::{BuildContext, BuildError, Component};

/// An error and its causes in one line (transport errors say little without their sources).
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}
