//! Tandem's pluggable backends and the resource model they are configured by.
//!
//! Dependencies point down: the sidecar uses this crate; nothing here knows about HTTP routes.
#![forbid(unsafe_code)]

pub mod kube_api;
pub mod metadata;
pub mod pubsub;
pub mod registry;
pub mod secretstores;
pub mod spec;
pub mod state;

pub use metadata::{Metadata, MetadataError};
pub use registry::{BuildContext, BuildError, Component};
