//! traffic-split: a proxy-wasm HTTP filter for Envoy that decides which version of a service
//! gets each request and writes that decision into the routing header.
//!
//! The core (everything but `host`) has no proxy_wasm dependency:
//! config types (`config`) → validation and the compiled plan (`plan`) → request view
//! (`request`) → decision (`decision`, `matcher`, `bucket`), plus per-VM counters (`metrics`).
//! `host` is the only module that talks to Envoy.

pub mod breaker;
pub mod bucket;
pub mod config;
pub mod decision;
pub mod matcher;
pub mod metrics;
pub mod plan;
pub mod request;
pub mod rng;
pub mod shadow;

#[cfg(target_arch = "wasm32")]
mod host;

/// The build, logged when a VM starts so operators can tell which filter Envoy loaded.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
