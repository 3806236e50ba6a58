//! The plugin configuration as users write it (JSON), decoded in one pass into plain typed
//! values: every field read, its shape, type and range checked, each error with its path.
//! `plan` then checks what spans fields (uniqueness, references, formats) and compiles the
//! immutable plan the filter runs; it never reads JSON.
//!
//! Field names and defaults are a public contract (docs/configuration.md): extend, never rename.
//!
//! Decoding walks a `serde_json::Value` by hand instead of deriving `Deserialize`: every error
//! then names its exact field path (`rules[1].destinations[0].weight`), unknown fields are
//! reported before anything else, and the `.wasm` stays smaller than with derived visitors plus
//! path tracking.

use serde_json::{Map, Value};
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
        }
    }
}

pub struct RuleConfig {
    pub name: String,
    pub match_: Option<MatchConfig>,
    pub sticky: Option<StickyConfig>,
    pub salt: Option<String>,
    pub hash: HashKind,
    pub destinations: Vec<DestinationConfig>,
    pub shadow: Vec<ShadowConfig>,
}

/// One shadow target of a rule (`rules[].shadow[]`).
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

#[derive(Default)]
pub struct MatchConfig {
    pub headers: Option<Vec<NamedMatchConfig>>,
    pub cookies: Option<Vec<NamedMatchConfig>>,
    pub query: Option<Vec<NamedMatchConfig>>,
    pub path: Option<StringMatchConfig>,
    pub methods: Option<Vec<String>>,
    pub authority: Option<StringMatchConfig>,
    pub route_names: Option<Vec<String>>,
}

/// `{ "name": N, <op> }` for headers, cookies and query parameters: exactly one op.
pub struct NamedMatchConfig {
    pub name: String,
    pub op: StringMatchConfig,
}

/// The ops given in a match object; `plan::matching` checks that exactly one is set.
#[derive(Default)]
pub struct StringMatchConfig {
    pub exact: Option<String>,
    pub prefix: Option<String>,
    pub suffix: Option<String>,
    pub one_of: Option<Vec<String>>,
    pub present: Option<bool>,
}

/// Where the user key comes from: exactly one of `header`, `cookie`, `query`.
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
pub struct BreakerConfig {
    pub failure_ratio: f64,
    pub min_requests: u64,
    pub window_s: u64,
    pub open_s: u64,
    pub half_open_percent: f64,
    pub failure_statuses: Vec<FailureStatus>,
    pub count_local_replies: bool,
}

pub const DEFAULT_BREAKER_FAILURE_RATIO: f64 = 0.2;
pub const DEFAULT_BREAKER_MIN_REQUESTS: u64 = 20;
pub const DEFAULT_BREAKER_WINDOW_S: u64 = 10;
pub const DEFAULT_BREAKER_OPEN_S: u64 = 30;
pub const DEFAULT_BREAKER_HALF_OPEN_PERCENT: f64 = 10.0;

/// One entry of `failure_statuses` as written: `503`, `"503"` or `"5xx"`.
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

impl ConfigError {
    pub fn new(path: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            reason: reason.into(),
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

type Result<T> = std::result::Result<T, ConfigError>;

/// Parses the JSON plugin configuration. An empty (or all-whitespace) configuration is the
/// default configuration: no rules.
pub fn parse(bytes: &[u8]) -> Result<PluginConfig> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(PluginConfig::default());
    }
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|err| ConfigError::new("", format!("invalid JSON: {err}")))?;
    let mut top = Obj::new(
        "",
        &value,
        &[
            "cluster_header",
            "variant_header",
            "debug_header",
            "rules",
            "max_in_flight",
            "max_buffered_body_bytes",
            "clear_route_cache",
            "shadow_marker_secret",
        ],
    )?;
    let defaults = PluginConfig::default();
    Ok(PluginConfig {
        cluster_header: top
            .string("cluster_header")?
            .unwrap_or(defaults.cluster_header),
        variant_header: top
            .string("variant_header")?
            .unwrap_or(defaults.variant_header),
        debug_header: top.boolean("debug_header")?.unwrap_or(false),
        rules: top.list("rules", rule)?.unwrap_or_default(),
        max_in_flight: top
            .integer("max_in_flight", u64::from(u32::MAX))?
            .unwrap_or(defaults.max_in_flight),
        max_buffered_body_bytes: top
            .integer("max_buffered_body_bytes", MAX_SHADOW_BUFFER_BYTES)?
            .unwrap_or(defaults.max_buffered_body_bytes),
        clear_route_cache: top
            .choice(
                "clear_route_cache",
                &[
                    ("auto", RouteCacheMode::Auto),
                    ("always", RouteCacheMode::Always),
                ],
            )?
            .unwrap_or_default(),
        shadow_marker_secret: top.string("shadow_marker_secret")?,
    })
}

fn rule(path: &str, value: &Value) -> Result<RuleConfig> {
    let mut o = Obj::new(
        path,
        value,
        &[
            "name",
            "match",
            "sticky",
            "salt",
            "hash",
            "destinations",
            "shadow",
        ],
    )?;
    Ok(RuleConfig {
        name: o.required("name", Obj::string)?,
        match_: o.object("match", match_config)?,
        sticky: o.object("sticky", sticky)?,
        salt: o.string("salt")?,
        hash: o
            .choice(
                "hash",
                &[("fine", HashKind::Fine), ("unleash", HashKind::Unleash)],
            )?
            .unwrap_or_default(),
        destinations: o.required("destinations", |o, key| o.list(key, destination))?,
        shadow: o.list("shadow", shadow)?.unwrap_or_default(),
    })
}

fn shadow(path: &str, value: &Value) -> Result<ShadowConfig> {
    let mut o = Obj::new(
        path,
        value,
        &[
            "name",
            "cluster",
            "percent",
            "timeout_ms",
            "host_suffix",
            "methods",
            "include_body",
            "max_body_bytes",
            "remove_headers",
            "compare",
            "compare_body",
        ],
    )?;
    Ok(ShadowConfig {
        name: o.string("name")?,
        cluster: o.required("cluster", Obj::string)?,
        percent: o
            .number("percent", 0, 100)?
            .unwrap_or(DEFAULT_SHADOW_PERCENT),
        timeout_ms: o
            .integer("timeout_ms", 3_600_000)?
            .unwrap_or(DEFAULT_SHADOW_TIMEOUT_MS),
        host_suffix: o
            .string("host_suffix")?
            .unwrap_or_else(|| DEFAULT_SHADOW_HOST_SUFFIX.to_string()),
        methods: o.list("methods", string_item)?,
        include_body: o.boolean("include_body")?.unwrap_or(true),
        max_body_bytes: o
            .integer("max_body_bytes", MAX_SHADOW_BUFFER_BYTES)?
            .unwrap_or(DEFAULT_SHADOW_MAX_BODY_BYTES),
        // An explicit list replaces the default; `[]` forwards every header (a deliberate opt-in).
        remove_headers: o.list("remove_headers", string_item)?.unwrap_or_else(|| {
            DEFAULT_SHADOW_REMOVE_HEADERS
                .iter()
                .map(|h| h.to_string())
                .collect()
        }),
        compare: o.boolean("compare")?.unwrap_or(false),
        compare_body: o.boolean("compare_body")?.unwrap_or(false),
    })
}

fn match_config(mut o: Obj<'_>) -> Result<MatchConfig> {
    o.allow(&[
        "headers",
        "cookies",
        "query",
        "path",
        "methods",
        "authority",
        "route_names",
    ])?;
    Ok(MatchConfig {
        headers: o.list("headers", named_match)?,
        cookies: o.list("cookies", named_match)?,
        query: o.list("query", named_match)?,
        path: o.object("path", |o| string_match(o, false))?,
        methods: o.list("methods", string_item)?,
        authority: o.object("authority", |o| string_match(o, false))?,
        route_names: o.list("route_names", string_item)?,
    })
}

fn named_match(path: &str, value: &Value) -> Result<NamedMatchConfig> {
    let mut o = Obj::new(
        path,
        value,
        &["name", "exact", "prefix", "suffix", "one_of", "present"],
    )?;
    Ok(NamedMatchConfig {
        name: o.required("name", Obj::string)?,
        op: string_match(o, true)?,
    })
}

/// The op fields of a match object. `named` ones (headers, cookies, query) also take
/// `one_of` and `present`; path and authority take `exact`, `prefix`, `suffix`.
fn string_match(mut o: Obj<'_>, named: bool) -> Result<StringMatchConfig> {
    if !named {
        o.allow(&["exact", "prefix", "suffix"])?;
    }
    Ok(StringMatchConfig {
        exact: o.string("exact")?,
        prefix: o.string("prefix")?,
        suffix: o.string("suffix")?,
        one_of: if named {
            o.list("one_of", string_item)?
        } else {
            None
        },
        present: if named { o.boolean("present")? } else { None },
    })
}

fn sticky(mut o: Obj<'_>) -> Result<StickyConfig> {
    o.allow(&[
        "header",
        "cookie",
        "query",
        "assign_cookie",
        "cookie_max_age_s",
        "cookie_secure",
        "cookie_domain",
        "cookie_same_site",
    ])?;
    Ok(StickyConfig {
        header: o.string("header")?,
        cookie: o.string("cookie")?,
        query: o.string("query")?,
        assign_cookie: o.boolean("assign_cookie")?.unwrap_or(false),
        cookie_max_age_s: o.integer("cookie_max_age_s", u64::from(u32::MAX))?,
        cookie_secure: o.boolean("cookie_secure")?,
        cookie_domain: o.string("cookie_domain")?,
        cookie_same_site: o.choice(
            "cookie_same_site",
            &[
                ("Lax", SameSite::Lax),
                ("Strict", SameSite::Strict),
                ("None", SameSite::None),
            ],
        )?,
    })
}

fn destination(path: &str, value: &Value) -> Result<DestinationConfig> {
    let mut o = Obj::new(
        path,
        value,
        &["name", "cluster", "weight", "fallback", "breaker"],
    )?;
    Ok(DestinationConfig {
        name: o.required("name", Obj::string)?,
        cluster: o.required("cluster", Obj::string)?,
        weight: o
            .integer("weight", u64::from(u32::MAX))?
            .map_or(1, |w| w as u32),
        fallback: o.string("fallback")?,
        breaker: o.object("breaker", breaker)?,
    })
}

fn breaker(mut o: Obj<'_>) -> Result<BreakerConfig> {
    o.allow(&[
        "failure_ratio",
        "min_requests",
        "window_s",
        "open_s",
        "half_open_percent",
        "failure_statuses",
        "count_local_replies",
    ])?;
    Ok(BreakerConfig {
        failure_ratio: o
            .number("failure_ratio", 0, 1)?
            .unwrap_or(DEFAULT_BREAKER_FAILURE_RATIO),
        min_requests: o
            .integer("min_requests", u64::from(u32::MAX))?
            .unwrap_or(DEFAULT_BREAKER_MIN_REQUESTS),
        window_s: o
            .integer("window_s", 3600)?
            .unwrap_or(DEFAULT_BREAKER_WINDOW_S),
        open_s: o
            .integer("open_s", 86_400)?
            .unwrap_or(DEFAULT_BREAKER_OPEN_S),
        half_open_percent: o
            .number("half_open_percent", 0, 100)?
            .unwrap_or(DEFAULT_BREAKER_HALF_OPEN_PERCENT),
        failure_statuses: o
            .list("failure_statuses", |path, v| match v {
                Value::String(s) => Ok(FailureStatus::Text(s.clone())),
                Value::Number(n) => n
                    .as_u64()
                    .map(FailureStatus::Code)
                    .ok_or_else(|| ConfigError::new(path, format!("\"{n}\" is not a status code"))),
                other => Err(wrong_type(
                    path,
                    "a status code or class like \"5xx\"",
                    other,
                )),
            })?
            .unwrap_or_else(|| vec![FailureStatus::Text("5xx".to_string())]),
        count_local_replies: o.boolean("count_local_replies")?.unwrap_or(true),
    })
}

fn string_item(path: &str, value: &Value) -> Result<String> {
    match value {
        Value::String(s) => Ok(s.clone()),
        other => Err(wrong_type(path, "a string", other)),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn wrong_type(path: &str, expected: &str, got: &Value) -> ConfigError {
    ConfigError::new(path, format!("must be {expected}, got {}", kind(got)))
}

/// One JSON object being decoded: reads fields by name and builds each field's path.
/// `null` counts as absent.
struct Obj<'a> {
    path: String,
    map: &'a Map<String, Value>,
}

impl<'a> Obj<'a> {
    fn new(path: &str, value: &'a Value, allowed: &[&str]) -> Result<Obj<'a>> {
        let o = Obj::any(path, value)?;
        o.allow(allowed)?;
        Ok(o)
    }

    fn any(path: &str, value: &'a Value) -> Result<Obj<'a>> {
        match value {
            Value::Object(map) => Ok(Obj {
                path: path.to_string(),
                map,
            }),
            other => Err(wrong_type(path, "an object", other)),
        }
    }

    /// Rejects fields not in `allowed`, before any value is looked at, so a misspelt field is
    /// reported as such rather than as a missing one.
    fn allow(&self, allowed: &[&str]) -> Result<()> {
        match self.map.keys().find(|k| !allowed.contains(&k.as_str())) {
            None => Ok(()),
            Some(unknown) => Err(ConfigError::new(
                self.child(unknown),
                format!("unknown field, expected one of: {}", allowed.join(", ")),
            )),
        }
    }

    fn child(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn required<T>(
        &mut self,
        key: &str,
        read: impl FnOnce(&mut Self, &str) -> Result<Option<T>>,
    ) -> Result<T> {
        read(self, key)?.ok_or_else(|| ConfigError::new(self.child(key), "is required"))
    }

    fn string(&mut self, key: &str) -> Result<Option<String>> {
        self.get(key)
            .map(|v| string_item(&self.child(key), v))
            .transpose()
    }

    fn boolean(&mut self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(wrong_type(&self.child(key), "true or false", other)),
        }
    }

    /// A whole number in 0..=max.
    fn integer(&mut self, key: &str, max: u64) -> Result<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_u64().filter(|v| *v <= max) {
                Some(v) => Ok(Some(v)),
                None => Err(ConfigError::new(
                    self.child(key),
                    format!("must be a whole number from 0 to {max}, got {n}"),
                )),
            },
            Some(other) => Err(wrong_type(&self.child(key), "a whole number", other)),
        }
    }

    /// A number (decimals allowed) in min..=max. The bounds are whole numbers so that no float
    /// formatting code (kilobytes of Wasm) is linked just for this message.
    fn number(&mut self, key: &str, min: u32, max: u32) -> Result<Option<f64>> {
        let range = f64::from(min)..=f64::from(max);
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_f64().filter(|v| range.contains(v)) {
                Some(v) => Ok(Some(v)),
                None => Err(ConfigError::new(
                    self.child(key),
                    format!("must be a number from {min} to {max}, got {n}"),
                )),
            },
            Some(other) => Err(wrong_type(&self.child(key), "a number", other)),
        }
    }

    fn choice<T: Copy>(&mut self, key: &str, options: &[(&str, T)]) -> Result<Option<T>> {
        let Some(value) = self.string(key)? else {
            return Ok(None);
        };
        match options.iter().find(|(name, _)| *name == value) {
            Some((_, v)) => Ok(Some(*v)),
            None => {
                let names: Vec<String> = options.iter().map(|(n, _)| format!("\"{n}\"")).collect();
                Err(ConfigError::new(
                    self.child(key),
                    format!("\"{value}\" is not one of {}", names.join(", ")),
                ))
            }
        }
    }

    fn list<T>(
        &mut self,
        key: &str,
        item: impl Fn(&str, &Value) -> Result<T>,
    ) -> Result<Option<Vec<T>>> {
        let path = self.child(key);
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| item(&format!("{path}[{i}]"), v))
                .collect::<Result<Vec<T>>>()
                .map(Some),
            Some(other) => Err(wrong_type(&path, "an array", other)),
        }
    }

    fn object<T>(
        &mut self,
        key: &str,
        read: impl FnOnce(Obj<'a>) -> Result<T>,
    ) -> Result<Option<T>> {
        match self.get(key) {
            None => Ok(None),
            Some(value) => read(Obj::any(&self.child(key), value)?).map(Some),
        }
    }
}
