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
pub mod cookie;
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

#[cfg(test)]
mod tests {
    /// The host layer skips `clear_route_cache` because proxy-wasm 0.2.5 declares ABI 0.2.1,
    /// for which Envoy clears the route cache itself on header changes. A newer SDK declares a
    /// newer ABI: then set `host::HOST_CLEARS_ROUTE_CACHE_ITSELF` to false before bumping.
    #[test]
    fn the_sdk_pin_matches_the_route_cache_assumption() {
        let manifest = include_str!("../Cargo.toml");
        assert!(
            manifest.contains("proxy-wasm = \"=0.2.5\""),
            "proxy-wasm is no longer pinned to =0.2.5: check host::HOST_CLEARS_ROUTE_CACHE_ITSELF"
        );
    }
}
