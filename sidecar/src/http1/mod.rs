//! Tandem's own HTTP/1.1, for the hops it controls at both ends or where every request counts:
//! the client of the two invocation hops (to the peer sidecar and to the app), and the server
//! of the internal port. Public ports are served by hyper.

pub mod client;
pub mod pool;
pub mod server;
mod wire;
