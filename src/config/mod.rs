//! The plugin configuration as users write it (JSON), decoded in one pass into plain typed
//! values: every field read, its shape, type and range checked, each error with its path.
//! `plan` then checks what spans fields (uniqueness, references, formats) and compiles the
//! immutable plan the filter runs; it never reads JSON.
//!
//! Field names and defaults are a public contract (docs/configuration.md): extend, never rename.
//!
//! Decoding (`decode`) parses the bytes into a `serde_json::Value` and walks it by hand
//! (`json`) instead of deriving `Deserialize`: every error then names its exact field path
//! (`rules[1].destinations[0].weight`), unknown fields are reported before anything else, and
//! one small walker serves every object of the configuration.

mod decode;
mod json;

pub use decode::parse;

use std::fmt;

pub const DEFAULT_CLUSTER_HEADER: &str = "x-split-cluster";
pub const DEFAULT_VARIANT_HEADER: &str = "x-split-variant";
pub const DEFAULT_COOKIE_MAX_AGE_S: u64 = 2_592_000;
pub const DEFAULT_MAX_IN_FLIGHT: u64 = 1024;
pub const DEFAULT_MAX_BUFFERED_BODY_BYTES: u64 = 16 * 1024 * 1024;
pub const DEFAULT_SHADOW_PERCENT: f64 = 100.0;
pub const DEFAULT_SHADOW_TIMEOUT_MS: u64 = 1000;
pub const DEFAULT_SHADOW_HOST_SUFFIX: &str = "-shadow";
pub const DEFAULT_SHADOW_MAX_BODY_BYTES: u64 = 1024 * 1024;
/// `body_max_bytes`: the most of a request body held to evaluate `match.body`.
pub const DEFAULT_BODY_MAX_BYTES: u64 = 65_536;
/// Upper bound of `body_max_bytes` (1 MiB, Envoy's default per-connection buffer limit: a
/// larger hold would meet Envoy's own 413 first).
pub const MAX_BODY_MAX_BYTES: u64 = 1024 * 1024;
/// Upper bound of `max_buffered_body_bytes` and of a shadow's `max_body_bytes`. The bytes live in
/// the VM's linear memory (at most 4 GiB on wasm32, shared with everything else, and a failed
/// allocation aborts the VM), and a growing body vector may briefly hold twice its length.
pub const MAX_SHADOW_BUFFER_BYTES: u64 = 256 * 1024 * 1024;
/// What a shadow copy never carries unless `remove_headers` says otherwise: credentials. The
/// shadow is the least-trusted backend (new code, often a test deployment).
pub const DEFAULT_SHADOW_REMOVE_HEADERS: [&str; 5] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-api-key",
    "x-forwarded-client-cert",
];

#[derive(Debug, Clone, PartialEq)]
pub struct PluginConfig {
    pub cluster_header: String,
    pub variant_header: String,
    pub debug_header: bool,
    pub rules: Vec<RuleConfig>,
    /// Shadow bulkhead, per worker: outstanding shadow copies.
    pub max_in_flight: u64,
    /// Shadow bulkhead, per worker: bytes held for shadow copies (header copies and bodies).
    pub max_buffered_body_bytes: u64,
    pub clear_route_cache: RouteCacheMode,
    /// Signs the shadow marker of copies so that other instances can trust it (see
    /// `shadow::MarkerKey`); `None`: copies carry `x-shadow-request: true`.
    pub shadow_marker_secret: Option<String>,
    /// Signs lane values where they start and verifies them where rules route by them
    /// (`crate::lane`); `None`: lane values are plain destination names.
    pub lane_secret: Option<String>,
    /// The most of a request body held for `match.body` (`crate::body`).
    pub body_max_bytes: u64,
}

/// When the filter asks Envoy to re-pick the route after changing the routing header.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum RouteCacheMode {
    /// Rely on Envoy clearing the route cache itself on header changes, which it does for the
    /// ABI this module declares (0.2.1); call explicitly only for a newer ABI.
    #[default]
    Auto,
    /// Call `clear_route_cache` after every routing-header change, whatever the host does.
    Always,
}

impl Default for PluginConfig {
    fn default() -> Self {
        PluginConfig {
            cluster_header: DEFAULT_CLUSTER_HEADER.to_string(),
            variant_header: DEFAULT_VARIANT_HEADER.to_string(),
            debug_header: false,
            rules: Vec::new(),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            max_buffered_body_bytes: DEFAULT_MAX_BUFFERED_BODY_BYTES,
            clear_route_cache: RouteCacheMode::Auto,
            shadow_marker_secret: None,
            lane_secret: None,
            body_max_bytes: DEFAULT_BODY_MAX_BYTES,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RuleConfig {
    pub name: String,
    pub match_: Option<MatchConfig>,
    pub sticky: Option<StickyConfig>,
    pub salt: Option<String>,
    pub hash: HashKind,
    pub destinations: Vec<DestinationConfig>,
    pub shadow: Vec<ShadowConfig>,
    /// A scheduled share for the rule's first destination (`plan::rollout` checks it).
    pub rollout: Option<RolloutConfig>,
    /// Where the chosen destination's name travels to later hops (`crate::lane`).
    pub propagate: Option<PropagateConfig>,
    /// Route a request that carries a lane to the destination of that name.
    pub from_lane: bool,
    /// The destination for a lane that names none of this rule's (`from_lane` only).
    pub lane_fallback: Option<String>,
    /// Compares the canary with its baseline on live traffic (`crate::judge`).
    pub judge: Option<JudgeConfig>,
    /// Faults injected by Envoy's fault filter into a slice of the rule's requests.
    pub fault: Option<FaultConfig>,
}

/// `rules[].judge` as written; `plan::judge` applies the defaults and checks it.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct JudgeConfig {
    pub canary: Option<String>,
    pub baseline: Option<String>,
    pub window_s: Option<u64>,
    pub min_requests: Option<u64>,
    /// `errors.max_increase`; `Some(None)`: `errors` given without it.
    pub errors: Option<Option<f64>>,
    pub latency: Option<JudgeLatencyConfig>,
    pub confidence: Option<f64>,
    pub fail_after: Option<u64>,
    pub on_fail: Option<crate::judge::OnFail>,
    pub max_baseline_ratio: Option<f64>,
}

/// `rules[].judge.latency`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct JudgeLatencyConfig {
    pub percentile: Option<f64>,
    pub max_ratio: Option<f64>,
}

/// `rules[].fault`: the share of the rule's requests that get a delay and/or an abort from
/// Envoy's fault filter (`plan::fault` checks the fields together).
#[derive(Debug, Clone, PartialEq)]
pub struct FaultConfig {
    /// 0-100, at most two decimals.
    pub percent: f64,
    pub delay_ms: Option<u64>,
    pub abort_status: Option<u64>,
    /// A gRPC status code: a number, or a name as `Text`.
    pub abort_grpc_status: Option<FailureStatus>,
    /// Names of the rule's destinations the fault applies to; `None`: all.
    pub destinations: Option<Vec<String>>,
}

/// `rules[].propagate`: exactly one of `header` (a header of its own) and `baggage` (the key
/// of a W3C `baggage` member); `plan::lane` checks it.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PropagateConfig {
    pub header: Option<String>,
    pub baggage: Option<String>,
}

/// `rules[].rollout`: the first destination's share walks `steps` from `start`.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutConfig {
    pub destination: String,
    /// RFC 3339 with a zone, e.g. `2026-12-01T10:00:00Z`.
    pub start: String,
    pub steps: Vec<RolloutStepConfig>,
    /// `None`: true when the destination has a breaker.
    pub abort_on_breaker_open: Option<bool>,
    /// `Some("judge")`: a step ends only once its hold has passed and the judge's last window
    /// passed.
    pub gate: Option<RolloutGate>,
}

/// `rules[].rollout.gate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutGate {
    Judge,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RolloutStepConfig {
    pub percent: f64,
    pub hold_s: Option<u64>,
}

/// One shadow target of a rule (`rules[].shadow[]`).
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowConfig {
    pub name: Option<String>,
    pub cluster: String,
    pub percent: f64,
    pub timeout_ms: u64,
    pub host_suffix: String,
    pub methods: Option<Vec<String>>,
    pub include_body: bool,
    pub max_body_bytes: u64,
    pub remove_headers: Vec<String>,
    pub compare: bool,
    pub compare_body: bool,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct MatchConfig {
    pub headers: Option<Vec<NamedMatchConfig>>,
    pub cookies: Option<Vec<NamedMatchConfig>>,
    pub query: Option<Vec<NamedMatchConfig>>,
    pub path: Option<StringMatchConfig>,
    pub methods: Option<Vec<String>>,
    pub authority: Option<StringMatchConfig>,
    pub route_names: Option<Vec<String>>,
    pub source_ips: Option<Vec<String>>,
    /// Holds when the inner match does not (at least one of its conditions fails).
    pub not: Option<Box<MatchConfig>>,
    /// Holds when at least one of the inner matches does.
    pub any_of: Option<Vec<MatchConfig>>,
    /// Conditions on the JSON request body, all of which must hold (top level only).
    pub body: Option<Vec<BodyMatchConfig>>,
}

/// `match.body[]`: a condition on the value at an RFC 6901 JSON `pointer`.
#[derive(Debug, Clone, PartialEq)]
pub struct BodyMatchConfig {
    pub pointer: String,
    pub op: BodyOpConfig,
}

/// The test of a body condition: exactly one of the string ops (`op`), `contains`, `not` (a
/// test that must not hold) and `any_of` (tests of which one must hold).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct BodyOpConfig {
    pub op: StringMatchConfig,
    pub contains: Option<String>,
    pub not: Option<Box<BodyOpConfig>>,
    pub any_of: Option<Vec<BodyOpConfig>>,
}

/// How deep `not` and `any_of` may nest: enough for "A and not (B or C)", bounded so that a
/// configuration cannot make one decision recurse without end.
pub const MAX_MATCH_DEPTH: usize = 4;

/// `{ "name": N, <op> }` for headers, cookies and query parameters: exactly one op.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedMatchConfig {
    pub name: String,
    pub op: StringMatchConfig,
}

/// The ops given in a match object; `plan::matching` checks that exactly one is set.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct StringMatchConfig {
    pub exact: Option<String>,
    pub prefix: Option<String>,
    pub suffix: Option<String>,
    pub one_of: Option<Vec<String>>,
    pub present: Option<bool>,
    pub regex: Option<String>,
}

/// Where the user key comes from: exactly one of `header`, `cookie`, `query`.
#[derive(Debug, Clone, PartialEq)]
pub struct StickyConfig {
    pub header: Option<String>,
    pub cookie: Option<String>,
    pub query: Option<String>,
    pub assign_cookie: bool,
    pub cookie_max_age_s: Option<u64>,
    pub cookie_secure: Option<bool>,
    pub cookie_domain: Option<String>,
    pub cookie_same_site: Option<SameSite>,
}

/// The `SameSite` attribute of assigned cookies.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    #[default]
    Lax,
    Strict,
    None,
}

impl SameSite {
    pub fn as_str(self) -> &'static str {
        match self {
            SameSite::Lax => "Lax",
            SameSite::Strict => "Strict",
            SameSite::None => "None",
        }
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum HashKind {
    /// murmur3(salt:key) % 10000, consecutive ranges by weight.
    #[default]
    Fine,
    /// Unleash gradual rollout: murmur3(salt:key) % 100 + 1, weights sum to 100.
    Unleash,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DestinationConfig {
    pub name: String,
    pub cluster: String,
    pub weight: u32,
    /// Another destination of the same rule that takes this one's traffic while its breaker
    /// is open.
    pub fallback: Option<String>,
    pub breaker: Option<BreakerConfig>,
}

/// `destinations[].breaker`; defaults are the documented ones.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    pub failure_ratio: f64,
    pub min_requests: u64,
    pub window_s: u64,
    pub open_s: u64,
    pub half_open_percent: f64,
    pub failure_statuses: Vec<FailureStatus>,
    pub count_local_replies: bool,
    /// gRPC status codes (numbers, or names as `Text`) that count as failures.
    pub grpc_failure_codes: Vec<FailureStatus>,
    /// A response whose headers arrive later than this counts as a failure.
    pub slow_ms: Option<u64>,
    /// This many failures in a row on one worker open the breaker whatever the ratio.
    pub consecutive_failures: Option<u64>,
}

/// `grpc_failure_codes` default: the codes of a server that is down, overloaded or broken,
/// not of a caller's mistake (`NOT_FOUND`, `INVALID_ARGUMENT`...).
pub const DEFAULT_GRPC_FAILURE_CODES: [&str; 3] = ["DEADLINE_EXCEEDED", "INTERNAL", "UNAVAILABLE"];

pub const DEFAULT_BREAKER_FAILURE_RATIO: f64 = 0.2;
pub const DEFAULT_BREAKER_MIN_REQUESTS: u64 = 20;
pub const DEFAULT_BREAKER_WINDOW_S: u64 = 10;
pub const DEFAULT_BREAKER_OPEN_S: u64 = 30;
pub const DEFAULT_BREAKER_HALF_OPEN_PERCENT: f64 = 10.0;

/// One entry of `failure_statuses` as written: `503`, `"503"` or `"5xx"`.
#[derive(Debug, Clone, PartialEq)]
pub enum FailureStatus {
    Code(u64),
    Text(String),
}

/// A configuration error: where (a JSON path such as `rules[1].destinations[0].weight`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub reason: String,
}

/// `items.join(sep)` without the generic `join` machinery (about a kilobyte of Wasm).
pub(crate) fn join(items: &[&str], sep: &str) -> String {
    let mut out = String::new();
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(sep);
        }
        out.push_str(item);
    }
    out
}

impl ConfigError {
    // Out of line: dozens of error sites share each instance instead of inlining the copies.
    #[inline(never)]
    pub fn new(path: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// `new` with a formatted reason: one shared, out-of-line call instead of the `format!`
    /// machinery at every error site (the config error paths are most of the compile code).
    pub fn at(path: impl Into<String>, reason: fmt::Arguments<'_>) -> Self {
        Self::with_reason(path.into(), reason)
    }

    #[inline(never)]
    fn with_reason(path: String, reason: fmt::Arguments<'_>) -> Self {
        ConfigError {
            path,
            reason: fmt::format(reason),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.reason)
        } else {
            write!(f, "{}: {}", self.path, self.reason)
        }
    }
}
