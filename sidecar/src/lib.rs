//! The `tandem` sidecar: Dapr's HTTP API on real backends.
#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod cli;
pub mod component_set;
pub mod delivery;
pub mod http1;
pub mod http_server;
pub mod invoke;
pub mod kubernetes;
pub mod logging;
pub mod metrics;
pub mod naming;
pub mod outbox;
pub mod resiliency;
pub mod runtime;
pub mod trace_context;
