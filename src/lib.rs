//! traffic-split: a proxy-wasm HTTP filter for Envoy that decides which version of a service
//! gets each request and writes that decision into the routing header.
//!
//! Data flows one way: configuration bytes → `config` (typed configuration, every field
//! decoded and checked, errors with their path) → `plan` (cross-field checks, the compiled
//! immutable `Plan`) → per request, `Plan::decide` over a `request` view → the host writes the
//! decision. The core (every module but `host` and `cli`) has no proxy_wasm dependency and is
//! unit-tested:
//!
//! - `config`: the configuration as written (JSON) and its defaults.
//! - `plan`: compile steps, one per concern, and the decision (`plan::decide`).
//! - `matcher`, `bucket`, `cookie`, `request`: conditions, hashing to buckets, cookie
//!   attributes, the request as the core sees it.
//! - `pattern`: `regex` match operations (linear-time, bounded).
//! - `network`: CIDR ranges and the client address (`match.source_ips`).
//! - `breaker`: the per-destination circuit breaker and how workers share it.
//! - `judge`: the canary judge (window counts, statistics, verdicts, the shared record).
//! - `rollout`: scheduled steps of a rule's first destination (a pure function of the clock).
//! - `lane`: carrying a request's version across service hops (`propagate`, `from_lane`).
//! - `signing`: values signed with a shared secret (shadow marker, lanes).
//! - `shadow`: which requests are copied and how, the marker, the bulkhead, comparisons.
//! - `fault`: Envoy's fault filter headers (`rules[].fault`).
//! - `metrics`: metric names and per-VM counters; `rng`: sampling and user ids.
//! - `host`: the only module that talks to Envoy: reads, calls the core, writes.
//! - `cli`: the operator CLI (`src/bin/traffic-split.rs`), native only: presentation over
//!   `config::parse`, `Plan::compile` and `Plan::decide`.

pub mod body;
pub mod breaker;
pub mod bucket;
/// The operator CLI (`traffic-split` binary): native only, never in the .wasm.
#[cfg(not(target_arch = "wasm32"))]
pub mod cli;
pub mod config;
pub mod cookie;
pub mod fault;
pub mod fnv;
pub mod judge;
pub mod lane;
pub mod matcher;
pub mod metrics;
pub mod network;
pub mod pattern;
pub mod plan;
pub mod request;
pub mod rng;
pub mod rollout;
pub mod shadow;
pub mod signing;

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
