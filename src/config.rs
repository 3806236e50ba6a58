//! The plugin configuration as users write it (JSON). These types only describe the shape;
//! `plan.rs` validates them and compiles the immutable plan the filter runs.
//!
//! Field names and defaults are a public contract (docs/configuration.md): extend, never rename.

use serde::Deserialize;
use std::fmt;

pub const DEFAULT_CLUSTER_HEADER: &str = "x-split-cluster";
pub const DEFAULT_VARIANT_HEADER: &str = "x-split-variant";
pub const DEFAULT_COOKIE_MAX_AGE_S: u64 = 2_592_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    #[serde(default = "default_cluster_header")]
    pub cluster_header: String,
    #[serde(default = "default_variant_header")]
    pub variant_header: String,
    #[serde(default)]
    pub debug_header: bool,
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
}

impl Default for PluginConfig {
    fn default() -> Self {
        PluginConfig {
            cluster_header: default_cluster_header(),
            variant_header: default_variant_header(),
            debug_header: false,
            rules: Vec::new(),
        }
    }
}

fn default_cluster_header() -> String {
    DEFAULT_CLUSTER_HEADER.to_string()
}

fn default_variant_header() -> String {
    DEFAULT_VARIANT_HEADER.to_string()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: String,
    #[serde(default, rename = "match")]
    pub match_: Option<MatchConfig>,
    #[serde(default)]
    pub sticky: Option<StickyConfig>,
    #[serde(default)]
    pub salt: Option<String>,
    #[serde(default)]
    pub hash: HashKind,
    pub destinations: Vec<DestinationConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    #[serde(default)]
    pub headers: Option<Vec<NamedMatchConfig>>,
    #[serde(default)]
    pub cookies: Option<Vec<NamedMatchConfig>>,
    #[serde(default)]
    pub query: Option<Vec<NamedMatchConfig>>,
    #[serde(default)]
    pub path: Option<StringMatchConfig>,
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    #[serde(default)]
    pub authority: Option<StringMatchConfig>,
    #[serde(default)]
    pub route_names: Option<Vec<String>>,
}

/// `{ "name": N, <op> }` for headers, cookies and query parameters: exactly one op.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedMatchConfig {
    pub name: String,
    #[serde(default)]
    pub exact: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub suffix: Option<String>,
    #[serde(default)]
    pub one_of: Option<Vec<String>>,
    #[serde(default)]
    pub present: Option<bool>,
}

/// `{ "exact" | "prefix" | "suffix": S }` for path and authority: exactly one op.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StringMatchConfig {
    #[serde(default)]
    pub exact: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub suffix: Option<String>,
}

/// Where the user key comes from: exactly one of `header`, `cookie`, `query`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StickyConfig {
    #[serde(default)]
    pub header: Option<String>,
    #[serde(default)]
    pub cookie: Option<String>,
    #[serde(default)]
    pub query: Option<String>,
    #[serde(default)]
    pub assign_cookie: bool,
    #[serde(default)]
    pub cookie_max_age_s: Option<u64>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HashKind {
    /// murmur3(salt:key) % 10000, consecutive ranges by weight.
    #[default]
    Fine,
    /// Unleash gradual rollout: murmur3(salt:key) % 100 + 1, weights sum to 100.
    Unleash,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    pub name: String,
    pub cluster: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
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

/// Parses the JSON plugin configuration. An empty (or all-whitespace) configuration is the
/// default configuration: no rules.
pub fn parse(bytes: &[u8]) -> Result<PluginConfig, ConfigError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(PluginConfig::default());
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed: Result<PluginConfig, _> = serde_path_to_error::deserialize(&mut de);
    let config = parsed.map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        // serde_path_to_error shows the root as "." (or "?" before anything was read).
        let path = if path == "." || path == "?" {
            String::new()
        } else {
            path
        };
        ConfigError::new(path, describe_json_error(&inner))
    })?;
    de.end()
        .map_err(|err| ConfigError::new("", describe_json_error(&err)))?;
    Ok(config)
}

fn describe_json_error(err: &serde_json::Error) -> String {
    use serde_json::error::Category;
    // serde_json's Display already ends with "at line L column C"; say what kind of error it is.
    match err.classify() {
        Category::Syntax | Category::Eof => format!("invalid JSON: {err}"),
        Category::Data | Category::Io => err.to_string(),
    }
}
