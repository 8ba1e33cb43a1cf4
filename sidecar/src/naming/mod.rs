//! Finding sidecars by app id.

pub mod local_registry;
