//! Validation of the user configuration and the compiled, immutable plan the filter runs.
//! Everything that can be checked is checked here, once, so the request path never meets a
//! surprise: a plan that exists is a plan that is safe to run.

use crate::breaker::{BreakerPolicy, StatusMatch};
use crate::bucket::{self, FINE_BUCKETS, UNLEASH_BUCKETS};
use crate::config::{
    self, BreakerConfig, ConfigError, DestinationConfig, FailureStatus, HashKind, MatchConfig,
    NamedMatchConfig, PluginConfig, RouteCacheMode, RuleConfig, SameSite, ShadowConfig,
    StickyConfig, StringMatchConfig, DEFAULT_COOKIE_MAX_AGE_S,
};
use crate::cookie;
use crate::matcher::{Condition, Matcher, StringOp};
use crate::shadow::{sample_threshold, MarkerKey};
use std::time::Duration;

pub const MAX_DESTINATIONS: usize = 16;
pub const MAX_SHADOWS_PER_RULE: usize = 8;
pub const MAX_NAME_LEN: usize = 64;

#[derive(Debug)]
pub struct Plan {
    /// Lower-case header the chosen cluster is written to.
    pub cluster_header: String,
    /// Lower-case header the chosen destination name is written to; `None` when disabled.
    pub variant_header: Option<String>,
    pub debug_header: bool,
    pub rules: Vec<Rule>,
    /// Whether any rule reads request attributes (then the host reads the header map once).
    pub needs_request_headers: bool,
    /// Whether any rule matches on Envoy's route name (then the host reads that property).
    pub needs_route_name: bool,
    /// Every shadow target by metric name (rules refer to them by index).
    pub shadow_targets: Vec<ShadowTarget>,
    /// Shadow bulkhead, per worker.
    pub max_in_flight: usize,
    pub max_buffered_body_bytes: u64,
    /// Signs and verifies the shadow marker (`shadow_marker_secret`); `None`: unsigned marker.
    pub marker_key: Option<MarkerKey>,
    /// Every destination with a breaker, in plan order; `Destination::breaker_slot` indexes it.
    pub breakers: Vec<BreakerRef>,
    /// When to call Envoy's `clear_route_cache` after a routing-header change.
    pub clear_route_cache: RouteCacheMode,
}

/// Where a breaker sits: `plan.rules[rule].destinations[destination]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerRef {
    pub rule: usize,
    pub destination: usize,
}

#[derive(Debug)]
pub struct ShadowTarget {
    /// `[A-Za-z0-9_-]{1,64}`: appears in metric names.
    pub name: String,
    pub cluster: String,
}

/// One shadow copy a rule makes, compiled.
#[derive(Debug)]
pub struct ShadowPolicy {
    /// Index into `Plan::shadow_targets`.
    pub target: usize,
    pub cluster: String,
    /// A uniform u64 draw below this samples the request in.
    pub sample_threshold: u64,
    pub timeout: Duration,
    pub host_suffix: String,
    /// Method tokens as configured (methods are case-sensitive, RFC 9110); `None` = every method.
    pub methods: Option<Vec<Vec<u8>>>,
    pub include_body: bool,
    pub max_body_bytes: u64,
    /// Lower-case header names.
    pub remove_headers: Vec<String>,
    pub compare: bool,
    pub compare_body: bool,
}

#[derive(Debug)]
pub struct Rule {
    pub name: String,
    pub matcher: Matcher,
    pub sticky: Option<Sticky>,
    pub hash: HashKind,
    /// `"<salt>:"`, the prefix hashed before the user key.
    pub salt_colon: Vec<u8>,
    pub destinations: Vec<Destination>,
    /// Exclusive upper bucket bound per destination (see `bucket::upper_bounds`).
    pub upper_bounds: Vec<u32>,
    pub shadows: Vec<ShadowPolicy>,
}

#[derive(Debug)]
pub struct Destination {
    pub name: String,
    pub cluster: String,
    pub weight: u32,
    /// Index of the destination that takes this one's traffic while its breaker is open.
    pub fallback: Option<usize>,
    pub breaker: Option<BreakerPolicy>,
    /// Index into `Plan::breakers` when this destination has a breaker.
    pub breaker_slot: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StickyKey {
    Header(String),
    Cookie(String),
    Query(String),
}

#[derive(Debug)]
pub struct Sticky {
    pub key: StickyKey,
    /// When set (cookie keys only): what follows `<name>=<id>` in the `Set-Cookie` of users
    /// who have no cookie yet (`cookie::attributes`).
    pub assign_cookie: Option<String>,
}

impl Plan {
    /// Parses and validates a JSON plugin configuration.
    pub fn from_json(bytes: &[u8]) -> Result<Plan, ConfigError> {
        Plan::compile(config::parse(bytes)?)
    }

    pub fn compile(config: PluginConfig) -> Result<Plan, ConfigError> {
        let cluster_header = routing_header_name("cluster_header", &config.cluster_header)?;
        let variant_header = if config.variant_header.is_empty() {
            None
        } else {
            let name = routing_header_name("variant_header", &config.variant_header)?;
            if name == cluster_header {
                return Err(ConfigError::new(
                    "variant_header",
                    "must differ from cluster_header",
                ));
            }
            Some(name)
        };
        let mut rules = Vec::with_capacity(config.rules.len());
        let mut shadow_targets = Vec::new();
        for (i, rule) in config.rules.into_iter().enumerate() {
            let path = format!("rules[{i}]");
            if rules.iter().any(|r: &Rule| r.name == rule.name) {
                return Err(ConfigError::new(
                    field(&path, "name"),
                    format!("duplicate rule name \"{}\"", rule.name),
                ));
            }
            rules.push(compile_rule(&path, rule, &mut shadow_targets)?);
        }
        let mut breakers = Vec::new();
        for (r, rule) in rules.iter_mut().enumerate() {
            for (d, dest) in rule.destinations.iter_mut().enumerate() {
                if dest.breaker.is_some() {
                    dest.breaker_slot = Some(breakers.len());
                    breakers.push(BreakerRef {
                        rule: r,
                        destination: d,
                    });
                }
            }
        }
        if config.max_in_flight == 0 {
            return Err(ConfigError::new(
                "max_in_flight",
                "must be at least 1 (use \"percent\": 0 to turn shadowing off)",
            ));
        }
        let marker_key = config
            .shadow_marker_secret
            .as_deref()
            .map(compile_marker_secret)
            .transpose()?;
        let needs_route_name = rules
            .iter()
            .any(|r| r.matcher.conditions.iter().any(Condition::needs_route_name));
        // Shadow copies carry the request's headers, so a rule with shadows needs them too.
        let needs_request_headers = rules.iter().any(|r| {
            r.matcher.conditions.iter().any(|c| !c.needs_route_name())
                || r.sticky.is_some()
                || !r.shadows.is_empty()
        });
        Ok(Plan {
            cluster_header,
            variant_header,
            debug_header: config.debug_header,
            rules,
            needs_request_headers,
            needs_route_name,
            shadow_targets,
            max_in_flight: config.max_in_flight as usize,
            max_buffered_body_bytes: config.max_buffered_body_bytes,
            marker_key,
            breakers,
            clear_route_cache: config.clear_route_cache,
        })
    }
}

impl Plan {
    /// Rules with effects beyond routing (assigning a cookie, shadowing, a breaker) that are
    /// not scoped to a host or an Envoy route: on a shared gateway such a rule acts on every
    /// app behind it (docs/deploy.md). Logged as warnings at load; the configuration stays valid.
    pub fn unscoped_side_effects(&self) -> Vec<String> {
        self.rules
            .iter()
            .filter_map(|rule| {
                let scoped = rule
                    .matcher
                    .conditions
                    .iter()
                    .any(|c| matches!(c, Condition::Authority(_) | Condition::RouteNames(_)));
                let mut effects = Vec::new();
                if rule
                    .sticky
                    .as_ref()
                    .is_some_and(|s| s.assign_cookie.is_some())
                {
                    effects.push("sticky.assign_cookie");
                }
                if !rule.shadows.is_empty() {
                    effects.push("shadow");
                }
                if rule.destinations.iter().any(|d| d.breaker.is_some()) {
                    effects.push("breaker");
                }
                (!scoped && !effects.is_empty()).then(|| {
                    format!(
                        "rule \"{}\" has {} but no match.authority or match.route_names: \
                         on a shared gateway it acts on every host",
                        rule.name,
                        effects.join(", ")
                    )
                })
            })
            .collect()
    }
}

fn compile_rule(
    path: &str,
    rule: RuleConfig,
    shadow_targets: &mut Vec<ShadowTarget>,
) -> Result<Rule, ConfigError> {
    check_name(&field(path, "name"), &rule.name)?;
    let matcher = match rule.match_ {
        Some(m) => compile_match(&field(path, "match"), m)?,
        None => Matcher::default(),
    };
    let sticky = rule
        .sticky
        .map(|s| compile_sticky(&field(path, "sticky"), s))
        .transpose()?;
    let destinations = compile_destinations(&field(path, "destinations"), rule.destinations)?;
    let weights: Vec<u32> = destinations.iter().map(|d| d.weight).collect();
    if rule.hash == HashKind::Unleash {
        let sum: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        if sum != u64::from(UNLEASH_BUCKETS) {
            return Err(ConfigError::new(
                field(path, "destinations"),
                format!(
                    "with hash \"unleash\" the weights must sum to 100 (percentages), got {sum}"
                ),
            ));
        }
    }
    let salt = rule.salt.unwrap_or_else(|| rule.name.clone());
    let mut salt_colon = salt.into_bytes();
    salt_colon.push(b':');
    if rule.shadow.len() > MAX_SHADOWS_PER_RULE {
        return Err(ConfigError::new(
            field(path, "shadow"),
            format!(
                "must list at most {MAX_SHADOWS_PER_RULE} shadow targets, got {}",
                rule.shadow.len()
            ),
        ));
    }
    let mut shadows: Vec<ShadowPolicy> = Vec::with_capacity(rule.shadow.len());
    for (i, shadow) in rule.shadow.into_iter().enumerate() {
        let spath = format!("{path}.shadow[{i}]");
        let policy = compile_shadow(&spath, shadow, shadow_targets)?;
        if shadows.iter().any(|s| s.target == policy.target) {
            return Err(ConfigError::new(
                field(&spath, "name"),
                format!(
                    "duplicate shadow target \"{}\" in this rule",
                    shadow_targets
                        .get(policy.target)
                        .map_or("", |t| t.name.as_str())
                ),
            ));
        }
        shadows.push(policy);
    }
    Ok(Rule {
        upper_bounds: bucket::upper_bounds(rule.hash, &weights),
        name: rule.name,
        matcher,
        sticky,
        hash: rule.hash,
        salt_colon,
        destinations,
        shadows,
    })
}

/// The default metric name of a shadow target: its cluster with every character outside
/// `[A-Za-z0-9_-]` replaced by `_` (Istio clusters look like `outbound|8080||svc.ns.svc…`).
pub fn default_shadow_name(cluster: &str) -> String {
    cluster
        .chars()
        .take(MAX_NAME_LEN)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn compile_shadow(
    path: &str,
    shadow: ShadowConfig,
    targets: &mut Vec<ShadowTarget>,
) -> Result<ShadowPolicy, ConfigError> {
    check_cluster(&field(path, "cluster"), &shadow.cluster)?;
    let name = match shadow.name {
        Some(name) => {
            check_name(&field(path, "name"), &name)?;
            name
        }
        None => default_shadow_name(&shadow.cluster),
    };
    let target = match targets.iter().position(|t| t.name == name) {
        Some(existing) => {
            let cluster = targets.get(existing).map_or("", |t| t.cluster.as_str());
            if cluster != shadow.cluster {
                return Err(ConfigError::new(
                    field(path, "name"),
                    format!(
                        "shadow name \"{name}\" already stands for cluster \"{cluster}\"; give this one another \"name\""
                    ),
                ));
            }
            existing
        }
        None => {
            targets.push(ShadowTarget {
                name,
                cluster: shadow.cluster.clone(),
            });
            targets.len() - 1
        }
    };
    if shadow.timeout_ms == 0 {
        return Err(ConfigError::new(
            field(path, "timeout_ms"),
            "must be at least 1",
        ));
    }
    if !shadow.host_suffix.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConfigError::new(
            field(path, "host_suffix"),
            format!(
                "\"{}\" must be visible ASCII characters",
                shadow.host_suffix
            ),
        ));
    }
    let methods = match shadow.methods {
        None => None,
        Some(methods) => Some(compile_methods(&field(path, "methods"), methods)?),
    };
    let mut remove_headers = Vec::with_capacity(shadow.remove_headers.len());
    for (i, h) in shadow.remove_headers.iter().enumerate() {
        remove_headers.push(header_name(&format!("{path}.remove_headers[{i}]"), h)?);
    }
    if shadow.compare_body && !shadow.compare {
        return Err(ConfigError::new(
            field(path, "compare_body"),
            "only applies with \"compare\": true",
        ));
    }
    Ok(ShadowPolicy {
        target,
        cluster: shadow.cluster,
        sample_threshold: sample_threshold(shadow.percent),
        timeout: Duration::from_millis(shadow.timeout_ms),
        host_suffix: shadow.host_suffix,
        methods,
        include_body: shadow.include_body,
        max_body_bytes: shadow.max_body_bytes,
        remove_headers,
        compare: shadow.compare,
        compare_body: shadow.compare_body,
    })
}

/// A secret shared by every instance of the deployment: long enough not to be guessed, and
/// printable so it survives YAML, JSON and Istio's `pluginConfig` unchanged.
fn compile_marker_secret(secret: &str) -> Result<MarkerKey, ConfigError> {
    let len = secret.len();
    if !(16..=256).contains(&len) || !secret.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConfigError::new(
            "shadow_marker_secret",
            format!("must be 16 to 256 visible ASCII characters, got {len} characters"),
        ));
    }
    Ok(MarkerKey::from_secret(secret.as_bytes()))
}

fn compile_methods(path: &str, methods: Vec<String>) -> Result<Vec<Vec<u8>>, ConfigError> {
    non_empty_list(path, &methods)?;
    for (i, method) in methods.iter().enumerate() {
        if method.is_empty() || !method.bytes().all(is_token_byte) {
            return Err(ConfigError::new(
                format!("{path}[{i}]"),
                format!("\"{method}\" is not an HTTP method token"),
            ));
        }
    }
    Ok(methods.into_iter().map(String::into_bytes).collect())
}

/// Weights above this would let `FINE_BUCKETS * total` approach u64 limits; no real split needs them.
const MAX_WEIGHT: u32 = 1_000_000;

fn compile_destinations(
    path: &str,
    destinations: Vec<DestinationConfig>,
) -> Result<Vec<Destination>, ConfigError> {
    if destinations.is_empty() || destinations.len() > MAX_DESTINATIONS {
        return Err(ConfigError::new(
            path,
            format!(
                "must list 1 to {MAX_DESTINATIONS} destinations, got {}",
                destinations.len()
            ),
        ));
    }
    let mut out: Vec<Destination> = Vec::with_capacity(destinations.len());
    let mut fallbacks: Vec<Option<String>> = Vec::with_capacity(destinations.len());
    for (i, d) in destinations.into_iter().enumerate() {
        let dpath = format!("{path}[{i}]");
        check_name(&field(&dpath, "name"), &d.name)?;
        if out.iter().any(|o| o.name == d.name) {
            return Err(ConfigError::new(
                field(&dpath, "name"),
                format!("duplicate destination name \"{}\" in this rule", d.name),
            ));
        }
        check_cluster(&field(&dpath, "cluster"), &d.cluster)?;
        if d.weight > MAX_WEIGHT {
            return Err(ConfigError::new(
                field(&dpath, "weight"),
                format!("must be at most {MAX_WEIGHT}, got {}", d.weight),
            ));
        }
        let breaker =
            match (d.breaker, &d.fallback) {
                (Some(b), Some(_)) => Some(compile_breaker(&field(&dpath, "breaker"), b)?),
                (Some(_), None) => return Err(ConfigError::new(
                    field(&dpath, "breaker"),
                    "needs a \"fallback\": the destination that takes the traffic while it is open",
                )),
                (None, Some(_)) => {
                    return Err(ConfigError::new(
                        field(&dpath, "fallback"),
                        "only applies with a \"breaker\"",
                    ))
                }
                (None, None) => None,
            };
        out.push(Destination {
            name: d.name,
            cluster: d.cluster,
            weight: d.weight,
            fallback: None,
            breaker,
            breaker_slot: None,
        });
        fallbacks.push(d.fallback);
    }
    if out.iter().all(|d| d.weight == 0) {
        return Err(ConfigError::new(
            path,
            "all weights are 0: at least one destination must have a positive weight",
        ));
    }
    for (i, fallback) in fallbacks.into_iter().enumerate() {
        let Some(fallback) = fallback else {
            continue;
        };
        let fpath = format!("{path}[{i}].fallback");
        let target = out.iter().position(|d| d.name == fallback).ok_or_else(|| {
            ConfigError::new(
                &fpath,
                format!("\"{fallback}\" is not a destination of this rule"),
            )
        })?;
        if target == i {
            return Err(ConfigError::new(
                fpath,
                "a destination cannot fall back to itself",
            ));
        }
        if let Some(d) = out.get_mut(i) {
            d.fallback = Some(target);
        }
    }
    check_fallback_chains(path, &out)?;
    Ok(out)
}

/// Following fallbacks from any destination must end: a loop would bounce traffic forever
/// while every breaker on it is open.
fn check_fallback_chains(path: &str, destinations: &[Destination]) -> Result<(), ConfigError> {
    for start in 0..destinations.len() {
        let mut chain = vec![start];
        let mut at = start;
        while let Some(next) = destinations.get(at).and_then(|d| d.fallback) {
            if chain.contains(&next) {
                chain.push(next);
                let names: Vec<&str> = chain
                    .iter()
                    .filter_map(|&i| destinations.get(i).map(|d| d.name.as_str()))
                    .collect();
                return Err(ConfigError::new(
                    path,
                    format!("fallback chain loops: {}", names.join(" -> ")),
                ));
            }
            chain.push(next);
            at = next;
        }
    }
    Ok(())
}

fn compile_breaker(path: &str, b: BreakerConfig) -> Result<BreakerPolicy, ConfigError> {
    if b.failure_ratio <= 0.0 {
        return Err(ConfigError::new(
            field(path, "failure_ratio"),
            "must be above 0 (a share of failed requests, e.g. 0.2)",
        ));
    }
    for (field, value) in [
        ("min_requests", b.min_requests),
        ("window_s", b.window_s),
        ("open_s", b.open_s),
    ] {
        if value == 0 {
            return Err(ConfigError::new(
                format!("{path}.{field}"),
                "must be at least 1",
            ));
        }
    }
    if b.half_open_percent <= 0.0 {
        return Err(ConfigError::new(
            field(path, "half_open_percent"),
            "must be above 0, or the breaker could never close again",
        ));
    }
    if b.failure_statuses.is_empty() {
        return Err(ConfigError::new(
            field(path, "failure_statuses"),
            "must list at least one status or class",
        ));
    }
    let mut failure_statuses = Vec::with_capacity(b.failure_statuses.len());
    for (i, status) in b.failure_statuses.iter().enumerate() {
        failure_statuses.push(status_match(
            &format!("{path}.failure_statuses[{i}]"),
            status,
        )?);
    }
    Ok(BreakerPolicy {
        failure_ratio: b.failure_ratio,
        min_requests: b.min_requests,
        window_s: b.window_s,
        open_s: b.open_s,
        half_open_threshold: sample_threshold(b.half_open_percent),
        half_open_permille: (b.half_open_percent * 10.0).round() as u64,
        failure_statuses,
        count_local_replies: b.count_local_replies,
    })
}

fn status_match(path: &str, status: &FailureStatus) -> Result<StatusMatch, ConfigError> {
    let bad = |shown: &str| {
        ConfigError::new(
            path,
            format!("\"{shown}\" is not a status code (100-599) or class (\"1xx\" to \"5xx\")"),
        )
    };
    match status {
        FailureStatus::Code(code) => match u16::try_from(*code) {
            Ok(code) if (100..=599).contains(&code) => Ok(StatusMatch::Exact(code)),
            _ => Err(bad(&code.to_string())),
        },
        FailureStatus::Text(text) => match text.as_bytes() {
            [class @ b'1'..=b'5', b'x' | b'X', b'x' | b'X'] => {
                Ok(StatusMatch::Class(u16::from(class - b'0')))
            }
            _ => match text.parse::<u16>() {
                Ok(code) if (100..=599).contains(&code) => Ok(StatusMatch::Exact(code)),
                _ => Err(bad(text)),
            },
        },
    }
}

fn compile_sticky(path: &str, mut sticky: StickyConfig) -> Result<Sticky, ConfigError> {
    let key = match (
        sticky.header.take(),
        sticky.cookie.take(),
        sticky.query.take(),
    ) {
        (Some(h), None, None) => StickyKey::Header(header_name(&field(path, "header"), &h)?),
        (None, Some(c), None) => {
            check_cookie_name(&field(path, "cookie"), &c)?;
            StickyKey::Cookie(c)
        }
        (None, None, Some(q)) => {
            if q.is_empty() {
                return Err(ConfigError::new(field(path, "query"), "must not be empty"));
            }
            StickyKey::Query(q)
        }
        _ => {
            return Err(ConfigError::new(
                path,
                "must name exactly one user key: \"header\", \"cookie\" or \"query\"",
            ))
        }
    };
    let cookie_name = match &key {
        StickyKey::Cookie(name) => Some(name.as_str()),
        _ => None,
    };
    if sticky.assign_cookie && cookie_name.is_none() {
        return Err(ConfigError::new(
            field(path, "assign_cookie"),
            "only applies to a cookie user key (\"cookie\": NAME)",
        ));
    }
    let cookie_only = [
        ("cookie_max_age_s", sticky.cookie_max_age_s.is_some()),
        ("cookie_secure", sticky.cookie_secure.is_some()),
        ("cookie_domain", sticky.cookie_domain.is_some()),
        ("cookie_same_site", sticky.cookie_same_site.is_some()),
    ];
    for (name, given) in cookie_only {
        if given && !sticky.assign_cookie {
            return Err(ConfigError::new(
                field(path, name),
                "only applies with \"assign_cookie\": true",
            ));
        }
    }
    let assign_cookie = match cookie_name.filter(|_| sticky.assign_cookie) {
        Some(name) => Some(compile_assigned_cookie(path, name, &sticky)?),
        None => None,
    };
    Ok(Sticky { key, assign_cookie })
}

/// The attributes of the cookie the filter assigns, checked so browsers keep it: a cookie a
/// browser drops would give the user a new id, and maybe a new version, on every request.
fn compile_assigned_cookie(
    path: &str,
    name: &str,
    sticky: &StickyConfig,
) -> Result<String, ConfigError> {
    let max_age = sticky.cookie_max_age_s.unwrap_or(DEFAULT_COOKIE_MAX_AGE_S);
    if max_age == 0 {
        return Err(ConfigError::new(
            field(path, "cookie_max_age_s"),
            "must be at least 1 (Max-Age=0 deletes the cookie at once)",
        ));
    }
    let secure = sticky.cookie_secure.unwrap_or(false);
    let same_site = sticky.cookie_same_site.unwrap_or_default();
    if same_site == SameSite::None && !secure {
        return Err(ConfigError::new(
            field(path, "cookie_same_site"),
            "\"None\" requires \"cookie_secure\": true (browsers reject SameSite=None cookies without Secure)",
        ));
    }
    for prefix in ["__Host-", "__Secure-"] {
        if cookie::has_prefix(name, prefix) && !secure {
            return Err(ConfigError::new(
                field(path, "cookie"),
                format!("\"{name}\" requires \"cookie_secure\": true (browsers reject {prefix} cookies without Secure)"),
            ));
        }
    }
    let domain = sticky.cookie_domain.as_deref();
    if let Some(domain) = domain {
        if cookie::has_prefix(name, "__Host-") {
            return Err(ConfigError::new(
                field(path, "cookie_domain"),
                format!("must not be set for \"{name}\" (browsers reject __Host- cookies with a Domain)"),
            ));
        }
        check_cookie_domain(&field(path, "cookie_domain"), domain)?;
    }
    Ok(cookie::attributes(max_age, domain, secure, same_site))
}

/// A host name (letters, digits, `-`, `.`; an optional leading `.` that browsers ignore): the
/// value is written into `Set-Cookie` as it is, so nothing may end the attribute early.
fn check_cookie_domain(path: &str, domain: &str) -> Result<(), ConfigError> {
    let host = domain.strip_prefix('.').unwrap_or(domain);
    let ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(
            path,
            format!("\"{domain}\" is not a domain name"),
        ))
    }
}

fn compile_match(path: &str, m: MatchConfig) -> Result<Matcher, ConfigError> {
    let mut conditions = Vec::new();
    // Cheap conditions first: a rule that fails on the method never parses cookies or query.
    if let Some(methods) = m.methods {
        conditions.push(Condition::Methods(compile_methods(
            &field(path, "methods"),
            methods,
        )?));
    }
    if let Some(p) = m.path {
        conditions.push(Condition::Path(string_op(&field(path, "path"), p)?));
    }
    if let Some(a) = m.authority {
        conditions.push(Condition::Authority(string_op(
            &field(path, "authority"),
            a,
        )?));
    }
    for (i, h) in m.headers.unwrap_or_default().into_iter().enumerate() {
        let hpath = format!("{path}.headers[{i}]");
        let name = header_name(&field(&hpath, "name"), &h.name)?;
        conditions.push(Condition::Header(name, named_op(&hpath, h)?));
    }
    for (i, c) in m.cookies.unwrap_or_default().into_iter().enumerate() {
        let cpath = format!("{path}.cookies[{i}]");
        check_cookie_name(&field(&cpath, "name"), &c.name)?;
        conditions.push(Condition::Cookie(c.name.clone(), named_op(&cpath, c)?));
    }
    for (i, q) in m.query.unwrap_or_default().into_iter().enumerate() {
        let qpath = format!("{path}.query[{i}]");
        if q.name.is_empty() {
            return Err(ConfigError::new(field(&qpath, "name"), "must not be empty"));
        }
        conditions.push(Condition::Query(q.name.clone(), named_op(&qpath, q)?));
    }
    if let Some(routes) = m.route_names {
        let rpath = field(path, "route_names");
        non_empty_list(&rpath, &routes)?;
        conditions.push(Condition::RouteNames(
            routes.into_iter().map(String::into_bytes).collect(),
        ));
    }
    Ok(Matcher { conditions })
}

fn non_empty_list(path: &str, list: &[String]) -> Result<(), ConfigError> {
    if list.is_empty() {
        return Err(ConfigError::new(
            path,
            "must not be empty (omit the field to match everything)",
        ));
    }
    Ok(())
}

fn named_op(path: &str, m: NamedMatchConfig) -> Result<StringOp, ConfigError> {
    let m = m.op;
    let ops = [
        m.exact.map(|s| StringOp::Exact(s.into_bytes())),
        m.prefix.map(|s| StringOp::Prefix(s.into_bytes())),
        m.suffix.map(|s| StringOp::Suffix(s.into_bytes())),
        m.one_of
            .map(|v| StringOp::OneOf(v.into_iter().map(String::into_bytes).collect())),
        m.present.map(StringOp::Present),
    ];
    let op = exactly_one(
        path,
        ops,
        "needs exactly one of \"exact\", \"prefix\", \"suffix\", \"one_of\", \"present\"",
    )?;
    if matches!(&op, StringOp::OneOf(v) if v.is_empty()) {
        return Err(ConfigError::new(
            field(path, "one_of"),
            "must list at least one value",
        ));
    }
    Ok(op)
}

fn string_op(path: &str, m: StringMatchConfig) -> Result<StringOp, ConfigError> {
    let ops = [
        m.exact.map(|s| StringOp::Exact(s.into_bytes())),
        m.prefix.map(|s| StringOp::Prefix(s.into_bytes())),
        m.suffix.map(|s| StringOp::Suffix(s.into_bytes())),
    ];
    exactly_one(
        path,
        ops,
        "needs exactly one of \"exact\", \"prefix\", \"suffix\"",
    )
}

fn exactly_one<const N: usize>(
    path: &str,
    ops: [Option<StringOp>; N],
    reason: &str,
) -> Result<StringOp, ConfigError> {
    let mut given = ops.into_iter().flatten();
    match (given.next(), given.next()) {
        (Some(op), None) => Ok(op),
        _ => Err(ConfigError::new(path, reason)),
    }
}

/// The path of `name` inside the object at `path` (one function instead of a `format!` at
/// every error site keeps the `.wasm` smaller).
fn field(path: &str, name: &str) -> String {
    let mut out = String::with_capacity(path.len() + 1 + name.len());
    out.push_str(path);
    out.push('.');
    out.push_str(name);
    out
}

/// Rule and destination names appear in metric names: `[A-Za-z0-9_-]{1,64}`.
fn check_name(path: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(
            path,
            format!("\"{name}\" must be 1-{MAX_NAME_LEN} characters of [A-Za-z0-9_-]"),
        ))
    }
}

/// RFC 9110 token characters (header names, methods, cookie names).
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Validates a header name and returns it in lower case (Envoy's header maps are lower case).
fn header_name(path: &str, name: &str) -> Result<String, ConfigError> {
    let body = name.strip_prefix(':').unwrap_or(name);
    if body.is_empty() || !body.bytes().all(is_token_byte) {
        return Err(ConfigError::new(
            path,
            format!("\"{name}\" is not a valid header name"),
        ));
    }
    Ok(name.to_ascii_lowercase())
}

/// Request headers that Envoy, proxies or browsers give a meaning to. The filter overwrites or
/// removes `cluster_header` and `variant_header` on every request, so naming one of these would
/// clobber the request (`host`, `cookie`), break its framing (`content-length`) or let a
/// browser-controlled value collide with routing.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "cookie",
    "set-cookie",
    "content-length",
    "content-type",
    "content-encoding",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "expect",
    "via",
    "date",
    "origin",
    "referer",
    "authorization",
    "cache-control",
    "pragma",
    "range",
    "accept",
    "accept-encoding",
    "accept-charset",
    "accept-language",
    "user-agent",
    "dnt",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-client-cert",
    "x-request-id",
    "traceparent",
    "tracestate",
    "b3",
    "baggage",
    // The filter's own shadow marker: it screens and rewrites this header on every request.
    "x-shadow-request",
];

/// Prefixes of the same kind: Envoy's own control headers, the Fetch standard's forbidden
/// `sec-`/`proxy-` names, CORS and conditional requests, Zipkin trace context.
const RESERVED_HEADER_PREFIXES: &[&str] = &[
    "x-envoy-",
    "sec-",
    "proxy-",
    "access-control-",
    "if-",
    "x-b3-",
];

/// `cluster_header` / `variant_header`: a valid header name that is neither a pseudo-header
/// nor one of the reserved names above, in lower case.
fn routing_header_name(path: &str, name: &str) -> Result<String, ConfigError> {
    let lower = header_name(path, name)?;
    if lower.starts_with(':') {
        return Err(ConfigError::new(
            path,
            format!("\"{name}\" is a pseudo-header: use a header name of your own"),
        ));
    }
    let reserved = RESERVED_HEADERS.contains(&lower.as_str())
        || RESERVED_HEADER_PREFIXES
            .iter()
            .any(|p| lower.starts_with(p));
    if reserved {
        return Err(ConfigError::new(
            path,
            format!(
                "\"{name}\" is reserved (Envoy, proxies or browsers give it a meaning): use a header name of your own"
            ),
        ));
    }
    Ok(lower)
}

fn check_cookie_name(path: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() || !name.bytes().all(is_token_byte) {
        return Err(ConfigError::new(
            path,
            format!("\"{name}\" is not a valid cookie name"),
        ));
    }
    Ok(())
}

/// The cluster is written into a request header: it must be a non-empty, visible-ASCII value.
fn check_cluster(path: &str, cluster: &str) -> Result<(), ConfigError> {
    if cluster.is_empty() || !cluster.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConfigError::new(
            path,
            format!("\"{cluster}\" must be a non-empty cluster name of visible ASCII characters"),
        ));
    }
    Ok(())
}

// Compile-time guard: the fine bucket count is what the docs promise.
const _: () = assert!(FINE_BUCKETS == 10_000);

#[cfg(test)]
mod tests {
    use super::*;

    fn err(json: &str) -> String {
        Plan::from_json(json.as_bytes()).unwrap_err().to_string()
    }

    fn rule(body: &str) -> String {
        format!(r#"{{"rules":[{body}]}}"#)
    }

    const DESTS: &str = r#""destinations":[{"name":"a","cluster":"ca"}]"#;

    #[test]
    fn the_issue_example_compiles() {
        let plan = Plan::from_json(
            br#"{
              "cluster_header": "x-split-cluster",
              "variant_header": "x-split-variant",
              "debug_header": false,
              "rules": [
                { "name": "employees",
                  "match": { "headers": [ { "name": "x-employee", "exact": "true" } ] },
                  "destinations": [ { "name": "canary", "cluster": "checkout-v2" } ] },
                { "name": "checkout-canary",
                  "match": { "path": { "prefix": "/checkout" } },
                  "sticky": { "cookie": "uid", "assign_cookie": true },
                  "salt": "checkout-2026-11",
                  "destinations": [
                    { "name": "canary", "cluster": "checkout-v2", "weight": 5 },
                    { "name": "stable", "cluster": "checkout-v1", "weight": 95 } ] }
              ]
            }"#,
        )
        .unwrap();
        assert_eq!(plan.rules.len(), 2);
        assert_eq!(plan.rules[1].upper_bounds, vec![500, 10_000]);
        assert_eq!(plan.rules[1].salt_colon, b"checkout-2026-11:");
        assert_eq!(plan.rules[0].salt_colon, b"employees:");
        assert_eq!(
            plan.rules[1]
                .sticky
                .as_ref()
                .unwrap()
                .assign_cookie
                .as_deref(),
            Some("; Path=/; Max-Age=2592000; HttpOnly; SameSite=Lax")
        );
        assert!(plan.needs_request_headers);
        assert!(!plan.needs_route_name);
    }

    #[test]
    fn defaults() {
        let plan = Plan::from_json(b"").unwrap();
        assert_eq!(plan.cluster_header, "x-split-cluster");
        assert_eq!(plan.variant_header.as_deref(), Some("x-split-variant"));
        assert!(!plan.debug_header);
        assert!(plan.rules.is_empty());
        let plan = Plan::from_json(br#"{"variant_header":"","cluster_header":"X-Route"}"#).unwrap();
        assert_eq!(plan.variant_header, None);
        assert_eq!(plan.cluster_header, "x-route");
        let plan = Plan::from_json(rule(&format!(r#"{{"name":"r",{DESTS}}}"#)).as_bytes()).unwrap();
        assert!(!plan.needs_request_headers);
        assert_eq!(plan.rules[0].destinations[0].weight, 1);
    }

    /// Each bad configuration and the exact message an operator reads in Envoy's log.
    #[test]
    fn bad_configs_name_the_field_and_the_reason() {
        let cases: Vec<(String, &str)> = vec![
            ("{".into(), "invalid JSON: EOF while parsing an object at line 1 column 1"),
            (r#"{"rules": [}"#.into(), "invalid JSON: expected value at line 1 column 12"),
            (r#"{} x"#.into(), "invalid JSON: trailing characters at line 1 column 4"),
            (
                r#"{"rulez": []}"#.into(),
                "rulez: unknown field, expected one of: cluster_header, variant_header, debug_header, rules, max_in_flight, max_buffered_body_bytes, clear_route_cache, shadow_marker_secret",
            ),
            (
                rule(r#"{"name":"r","destinations":[{"name":"a","cluster":"c","wieght":1}]}"#),
                "rules[0].destinations[0].wieght: unknown field, expected one of: name, cluster, weight, fallback, breaker",
            ),
            (
                rule(r#"{"name":"r","destinations":[{"name":"a","cluster":"c","weight":2.5}]}"#),
                "rules[0].destinations[0].weight: must be a whole number from 0 to 4294967295, got 2.5",
            ),
            (
                rule(r#"{"name":"r","destinations":[{"name":"a","cluster":"c","weight":-1}]}"#),
                "rules[0].destinations[0].weight: must be a whole number from 0 to 4294967295, got -1",
            ),
            (
                rule(r#"{"destinations":[]}"#),
                "rules[0].name: is required",
            ),
            (rule(&format!(r#"{{"name":"",{DESTS}}}"#)), "rules[0].name: \"\" must be 1-64 characters of [A-Za-z0-9_-]"),
            (rule(&format!(r#"{{"name":"a.b",{DESTS}}}"#)), "rules[0].name: \"a.b\" must be 1-64 characters of [A-Za-z0-9_-]"),
            (
                format!(r#"{{"rules":[{{"name":"r",{DESTS}}},{{"name":"r",{DESTS}}}]}}"#),
                "rules[1].name: duplicate rule name \"r\"",
            ),
            (
                rule(r#"{"name":"r","destinations":[]}"#),
                "rules[0].destinations: must list 1 to 16 destinations, got 0",
            ),
            (
                rule(&format!(
                    r#"{{"name":"r","destinations":[{}]}}"#,
                    (0..17).map(|i| format!(r#"{{"name":"d{i}","cluster":"c"}}"#)).collect::<Vec<_>>().join(",")
                )),
                "rules[0].destinations: must list 1 to 16 destinations, got 17",
            ),
            (
                rule(r#"{"name":"r","destinations":[{"name":"a","cluster":"c"},{"name":"a","cluster":"d"}]}"#),
                "rules[0].destinations[1].name: duplicate destination name \"a\" in this rule",
            ),
            (
                rule(r#"{"name":"r","destinations":[{"name":"a","cluster":"c","weight":0},{"name":"b","cluster":"d","weight":0}]}"#),
                "rules[0].destinations: all weights are 0: at least one destination must have a positive weight",
            ),
            (
                rule(r#"{"name":"r","destinations":[{"name":"a","cluster":"c","weight":2000000}]}"#),
                "rules[0].destinations[0].weight: must be at most 1000000, got 2000000",
            ),
            (
                rule(r#"{"name":"r","destinations":[{"name":"a","cluster":""}]}"#),
                "rules[0].destinations[0].cluster: \"\" must be a non-empty cluster name of visible ASCII characters",
            ),
            (
                rule(r#"{"name":"r","destinations":[{"name":"a","cluster":"c d"}]}"#),
                "rules[0].destinations[0].cluster: \"c d\" must be a non-empty cluster name of visible ASCII characters",
            ),
            (
                rule(r#"{"name":"r","hash":"unleash","destinations":[{"name":"a","cluster":"c","weight":30},{"name":"b","cluster":"d","weight":60}]}"#),
                "rules[0].destinations: with hash \"unleash\" the weights must sum to 100 (percentages), got 90",
            ),
            (
                rule(&format!(r#"{{"name":"r","hash":"coarse",{DESTS}}}"#)),
                "rules[0].hash: \"coarse\" is not one of \"fine\", \"unleash\"",
            ),
            (
                rule(&format!(r#"{{"name":"r","sticky":{{"header":"x-user","assign_cookie":true}},{DESTS}}}"#)),
                "rules[0].sticky.assign_cookie: only applies to a cookie user key (\"cookie\": NAME)",
            ),
            (
                rule(&format!(r#"{{"name":"r","sticky":{{"header":"x-user","cookie":"uid"}},{DESTS}}}"#)),
                "rules[0].sticky: must name exactly one user key: \"header\", \"cookie\" or \"query\"",
            ),
            (
                rule(&format!(r#"{{"name":"r","sticky":{{}},{DESTS}}}"#)),
                "rules[0].sticky: must name exactly one user key: \"header\", \"cookie\" or \"query\"",
            ),
            (
                rule(&format!(r#"{{"name":"r","sticky":{{"cookie":"uid","cookie_max_age_s":5}},{DESTS}}}"#)),
                "rules[0].sticky.cookie_max_age_s: only applies with \"assign_cookie\": true",
            ),
            (
                rule(&format!(r#"{{"name":"r","sticky":{{"header":"x user"}},{DESTS}}}"#)),
                "rules[0].sticky.header: \"x user\" is not a valid header name",
            ),
            (
                rule(&format!(r#"{{"name":"r","sticky":{{"cookie":"a;b"}},{DESTS}}}"#)),
                "rules[0].sticky.cookie: \"a;b\" is not a valid cookie name",
            ),
            (
                rule(&format!(r#"{{"name":"r","sticky":{{"cookie":"uid","assign_cookie":true,"cookie_max_age_s":0}},{DESTS}}}"#)),
                "rules[0].sticky.cookie_max_age_s: must be at least 1 (Max-Age=0 deletes the cookie at once)",
            ),
            (
                rule(&format!(r#"{{"name":"r","sticky":{{"cookie":"uid","cookie_secure":true}},{DESTS}}}"#)),
                "rules[0].sticky.cookie_secure: only applies with \"assign_cookie\": true",
            ),
            (
                rule(&format!(r#"{{"name":"r","sticky":{{"cookie":"uid","cookie_domain":"example.com"}},{DESTS}}}"#)),
                "rules[0].sticky.cookie_domain: only applies with \"assign_cookie\": true",
            ),
            (
                rule(&format!(r#"{{"name":"r","sticky":{{"cookie":"uid","cookie_same_site":"Strict"}},{DESTS}}}"#)),
                "rules[0].sticky.cookie_same_site: only applies with \"assign_cookie\": true",
            ),
            (
                rule(&format!(r#"{{"name":"r","sticky":{{"cookie":"uid","assign_cookie":true,"cookie_same_site":"None"}},{DESTS}}}"#)),
                "rules[0].sticky.cookie_same_site: \"None\" requires \"cookie_secure\": true (browsers reject SameSite=None cookies without Secure)",
            ),
            (
                rule(&format!(r#"{{"name":"r","sticky":{{"cookie":"uid","assign_cookie":true,"cookie_same_site":"lax"}},{DESTS}}}"#)),
                "rules[0].sticky.cookie_same_site: \"lax\" is not one of \"Lax\", \"Strict\", \"None\"",
            ),
            (
                rule(&format!(r#"{{"name":"r","sticky":{{"cookie":"uid","assign_cookie":true,"cookie_secure":"yes"}},{DESTS}}}"#)),
                "rules[0].sticky.cookie_secure: must be true or false, got a string",
            ),
            (
                rule(&format!(r#"{{"name":"r","sticky":{{"cookie":"__Host-uid","assign_cookie":true}},{DESTS}}}"#)),
                "rules[0].sticky.cookie: \"__Host-uid\" requires \"cookie_secure\": true (browsers reject __Host- cookies without Secure)",
            ),
            (
                rule(&format!(r#"{{"name":"r","sticky":{{"cookie":"__secure-uid","assign_cookie":true,"cookie_secure":false}},{DESTS}}}"#)),
                "rules[0].sticky.cookie: \"__secure-uid\" requires \"cookie_secure\": true (browsers reject __Secure- cookies without Secure)",
            ),
            (
                rule(&format!(r#"{{"name":"r","sticky":{{"cookie":"__Host-uid","assign_cookie":true,"cookie_secure":true,"cookie_domain":"example.com"}},{DESTS}}}"#)),
                "rules[0].sticky.cookie_domain: must not be set for \"__Host-uid\" (browsers reject __Host- cookies with a Domain)",
            ),
            (
                rule(&format!(r#"{{"name":"r","sticky":{{"cookie":"uid","assign_cookie":true,"cookie_domain":"example.com; Secure"}},{DESTS}}}"#)),
                "rules[0].sticky.cookie_domain: \"example.com; Secure\" is not a domain name",
            ),
            (
                rule(&format!(r#"{{"name":"r","sticky":{{"cookie":"uid","assign_cookie":true,"cookie_domain":""}},{DESTS}}}"#)),
                "rules[0].sticky.cookie_domain: \"\" is not a domain name",
            ),
            (
                rule(&format!(r#"{{"name":"r","sticky":{{"cookie":"uid","assign_cookie":true,"cookie_secure":true,"cookie_samesite":"None"}},{DESTS}}}"#)),
                "rules[0].sticky.cookie_samesite: unknown field, expected one of: header, cookie, query, assign_cookie, cookie_max_age_s, cookie_secure, cookie_domain, cookie_same_site",
            ),
            (
                r#"{"cluster_header":":authority"}"#.into(),
                "cluster_header: \":authority\" is a pseudo-header: use a header name of your own",
            ),
            (
                r#"{"cluster_header":"Host"}"#.into(),
                "cluster_header: \"Host\" is reserved (Envoy, proxies or browsers give it a meaning): use a header name of your own",
            ),
            (
                r#"{"cluster_header":"x-shadow-request"}"#.into(),
                "cluster_header: \"x-shadow-request\" is reserved (Envoy, proxies or browsers give it a meaning): use a header name of your own",
            ),
            (
                r#"{"variant_header":"cookie"}"#.into(),
                "variant_header: \"cookie\" is reserved (Envoy, proxies or browsers give it a meaning): use a header name of your own",
            ),
            (
                r#"{"variant_header":"content-length"}"#.into(),
                "variant_header: \"content-length\" is reserved (Envoy, proxies or browsers give it a meaning): use a header name of your own",
            ),
            (
                r#"{"cluster_header":"x-envoy-upstream-alt-stat-name"}"#.into(),
                "cluster_header: \"x-envoy-upstream-alt-stat-name\" is reserved (Envoy, proxies or browsers give it a meaning): use a header name of your own",
            ),
            (
                r#"{"variant_header":"Sec-Fetch-Site"}"#.into(),
                "variant_header: \"Sec-Fetch-Site\" is reserved (Envoy, proxies or browsers give it a meaning): use a header name of your own",
            ),
            (
                r#"{"cluster_header":"bad header"}"#.into(),
                "cluster_header: \"bad header\" is not a valid header name",
            ),
            (r#"{"cluster_header":""}"#.into(), "cluster_header: \"\" is not a valid header name"),
            (
                r#"{"variant_header":"X-Split-Cluster"}"#.into(),
                "variant_header: must differ from cluster_header",
            ),
            (
                rule(&format!(r#"{{"name":"r","match":{{"headers":[{{"name":"x-a"}}]}},{DESTS}}}"#)),
                "rules[0].match.headers[0]: needs exactly one of \"exact\", \"prefix\", \"suffix\", \"one_of\", \"present\"",
            ),
            (
                rule(&format!(r#"{{"name":"r","match":{{"headers":[{{"name":"x-a","exact":"1","prefix":"1"}}]}},{DESTS}}}"#)),
                "rules[0].match.headers[0]: needs exactly one of \"exact\", \"prefix\", \"suffix\", \"one_of\", \"present\"",
            ),
            (
                rule(&format!(r#"{{"name":"r","match":{{"headers":[{{"name":"x a","exact":"1"}}]}},{DESTS}}}"#)),
                "rules[0].match.headers[0].name: \"x a\" is not a valid header name",
            ),
            (
                rule(&format!(r#"{{"name":"r","match":{{"cookies":[{{"name":"c","one_of":[]}}]}},{DESTS}}}"#)),
                "rules[0].match.cookies[0].one_of: must list at least one value",
            ),
            (
                rule(&format!(r#"{{"name":"r","match":{{"query":[{{"name":"","present":true}}]}},{DESTS}}}"#)),
                "rules[0].match.query[0].name: must not be empty",
            ),
            (
                rule(&format!(r#"{{"name":"r","match":{{"path":{{"exact":"/a","prefix":"/"}}}},{DESTS}}}"#)),
                "rules[0].match.path: needs exactly one of \"exact\", \"prefix\", \"suffix\"",
            ),
            (
                rule(&format!(r#"{{"name":"r","match":{{"authority":{{"present":true}}}},{DESTS}}}"#)),
                "rules[0].match.authority.present: unknown field, expected one of: exact, prefix, suffix",
            ),
            (
                rule(&format!(r#"{{"name":"r","match":{{"methods":[]}},{DESTS}}}"#)),
                "rules[0].match.methods: must not be empty (omit the field to match everything)",
            ),
            (
                rule(&format!(r#"{{"name":"r","match":{{"methods":["GET","P OST"]}},{DESTS}}}"#)),
                "rules[0].match.methods[1]: \"P OST\" is not an HTTP method token",
            ),
            (r#"[1, 2]"#.into(), "must be an object, got an array"),
            (
                rule(r#"{"name":"r","destinations":[{"name":"a","cluster":"c","breaker":{}},{"name":"b","cluster":"d"}]}"#),
                "rules[0].destinations[0].breaker: needs a \"fallback\": the destination that takes the traffic while it is open",
            ),
            (
                rule(r#"{"name":"r","destinations":[{"name":"a","cluster":"c","fallback":"b"},{"name":"b","cluster":"d"}]}"#),
                "rules[0].destinations[0].fallback: only applies with a \"breaker\"",
            ),
            (
                rule(r#"{"name":"r","destinations":[{"name":"a","cluster":"c","fallback":"x","breaker":{}},{"name":"b","cluster":"d"}]}"#),
                "rules[0].destinations[0].fallback: \"x\" is not a destination of this rule",
            ),
            (
                rule(r#"{"name":"r","destinations":[{"name":"a","cluster":"c","fallback":"a","breaker":{}}]}"#),
                "rules[0].destinations[0].fallback: a destination cannot fall back to itself",
            ),
            (
                rule(r#"{"name":"r","destinations":[{"name":"a","cluster":"c","fallback":"b","breaker":{}},{"name":"b","cluster":"d","fallback":"c","breaker":{}},{"name":"c","cluster":"e","fallback":"b","breaker":{}}]}"#),
                "rules[0].destinations: fallback chain loops: a -> b -> c -> b",
            ),
            (
                rule(r#"{"name":"r","destinations":[{"name":"a","cluster":"c","fallback":"b","breaker":{"failure_ratio":0}},{"name":"b","cluster":"d"}]}"#),
                "rules[0].destinations[0].breaker.failure_ratio: must be above 0 (a share of failed requests, e.g. 0.2)",
            ),
            (
                rule(r#"{"name":"r","destinations":[{"name":"a","cluster":"c","fallback":"b","breaker":{"failure_ratio":1.5}},{"name":"b","cluster":"d"}]}"#),
                "rules[0].destinations[0].breaker.failure_ratio: must be a number from 0 to 1, got 1.5",
            ),
            (
                rule(r#"{"name":"r","destinations":[{"name":"a","cluster":"c","fallback":"b","breaker":{"open_s":0}},{"name":"b","cluster":"d"}]}"#),
                "rules[0].destinations[0].breaker.open_s: must be at least 1",
            ),
            (
                rule(r#"{"name":"r","destinations":[{"name":"a","cluster":"c","fallback":"b","breaker":{"half_open_percent":0}},{"name":"b","cluster":"d"}]}"#),
                "rules[0].destinations[0].breaker.half_open_percent: must be above 0, or the breaker could never close again",
            ),
            (
                rule(r#"{"name":"r","destinations":[{"name":"a","cluster":"c","fallback":"b","breaker":{"failure_statuses":[]}},{"name":"b","cluster":"d"}]}"#),
                "rules[0].destinations[0].breaker.failure_statuses: must list at least one status or class",
            ),
            (
                rule(r#"{"name":"r","destinations":[{"name":"a","cluster":"c","fallback":"b","breaker":{"failure_statuses":["5xx","6xx"]}},{"name":"b","cluster":"d"}]}"#),
                "rules[0].destinations[0].breaker.failure_statuses[1]: \"6xx\" is not a status code (100-599) or class (\"1xx\" to \"5xx\")",
            ),
            (
                rule(r#"{"name":"r","destinations":[{"name":"a","cluster":"c","fallback":"b","breaker":{"failure_statuses":[700]}},{"name":"b","cluster":"d"}]}"#),
                "rules[0].destinations[0].breaker.failure_statuses[0]: \"700\" is not a status code (100-599) or class (\"1xx\" to \"5xx\")",
            ),
            (
                rule(r#"{"name":"r","destinations":[{"name":"a","cluster":"c","fallback":"b","breaker":{"treshold":1}},{"name":"b","cluster":"d"}]}"#),
                "rules[0].destinations[0].breaker.treshold: unknown field, expected one of: failure_ratio, min_requests, window_s, open_s, half_open_percent, failure_statuses, count_local_replies",
            ),
            (r#"{"max_in_flight": 0}"#.into(), "max_in_flight: must be at least 1 (use \"percent\": 0 to turn shadowing off)"),
            (
                rule(&format!(r#"{{"name":"r",{DESTS},"shadow":[{{"cluster":"s","percent":101}}]}}"#)),
                "rules[0].shadow[0].percent: must be a number from 0 to 100, got 101",
            ),
            (
                rule(&format!(r#"{{"name":"r",{DESTS},"shadow":[{{"percent":1}}]}}"#)),
                "rules[0].shadow[0].cluster: is required",
            ),
            (
                rule(&format!(r#"{{"name":"r",{DESTS},"shadow":[{{"cluster":"s","timeout_ms":0}}]}}"#)),
                "rules[0].shadow[0].timeout_ms: must be at least 1",
            ),
            (
                rule(&format!(r#"{{"name":"r",{DESTS},"shadow":[{{"cluster":"s","compare_body":true}}]}}"#)),
                "rules[0].shadow[0].compare_body: only applies with \"compare\": true",
            ),
            (
                rule(&format!(r#"{{"name":"r",{DESTS},"shadow":[{{"cluster":"s","remove_headers":["bad header"]}}]}}"#)),
                "rules[0].shadow[0].remove_headers[0]: \"bad header\" is not a valid header name",
            ),
            (
                rule(&format!(r#"{{"name":"r",{DESTS},"shadow":[{{"cluster":"s","host_suffix":"a b"}}]}}"#)),
                "rules[0].shadow[0].host_suffix: \"a b\" must be visible ASCII characters",
            ),
            (
                rule(&format!(r#"{{"name":"r",{DESTS},"shadow":[{{"cluster":"s"}},{{"cluster":"s"}}]}}"#)),
                "rules[0].shadow[1].name: duplicate shadow target \"s\" in this rule",
            ),
            (
                format!(r#"{{"rules":[{{"name":"a",{DESTS},"shadow":[{{"name":"x","cluster":"s1"}}]}},{{"name":"b",{DESTS},"shadow":[{{"name":"x","cluster":"s2"}}]}}]}}"#),
                "rules[1].shadow[0].name: shadow name \"x\" already stands for cluster \"s1\"; give this one another \"name\"",
            ),
            (
                rule(&format!(r#"{{"name":"r",{DESTS},"shadow":[{{"cluster":"s","methods":[]}}]}}"#)),
                "rules[0].shadow[0].methods: must not be empty (omit the field to match everything)",
            ),
            (
                rule(&format!(r#"{{"name":"r",{DESTS},"shadow":[{{"cluster":"s","mirror":true}}]}}"#)),
                "rules[0].shadow[0].mirror: unknown field, expected one of: name, cluster, percent, timeout_ms, host_suffix, methods, include_body, max_body_bytes, remove_headers, compare, compare_body",
            ),
            (r#"{"rules": {}}"#.into(), "rules: must be an array, got an object"),
            (
                r#"{"max_buffered_body_bytes": 4294967295}"#.into(),
                "max_buffered_body_bytes: must be a whole number from 0 to 268435456, got 4294967295",
            ),
            (
                rule(&format!(r#"{{"name":"r",{DESTS},"shadow":[{{"cluster":"s","max_body_bytes":268435457}}]}}"#)),
                "rules[0].shadow[0].max_body_bytes: must be a whole number from 0 to 268435456, got 268435457",
            ),
            (
                r#"{"shadow_marker_secret": "short"}"#.into(),
                "shadow_marker_secret: must be 16 to 256 visible ASCII characters, got 5 characters",
            ),
            (
                r#"{"shadow_marker_secret": "sixteen chars with spaces"}"#.into(),
                "shadow_marker_secret: must be 16 to 256 visible ASCII characters, got 25 characters",
            ),
            (r#"{"debug_header": "yes"}"#.into(), "debug_header: must be true or false, got a string"),
            (rule(r#"{"name":"r"}"#), "rules[0].destinations: is required"),
            (rule(r#"{"name":7,"destinations":[]}"#), "rules[0].name: must be a string, got a number"),
            (
                rule(&format!(r#"{{"name":"r","match":{{"methods":["GET",1]}},{DESTS}}}"#)),
                "rules[0].match.methods[1]: must be a string, got a number",
            ),
            (
                rule(&format!(r#"{{"name":"r","match":{{"headers":[{{"name":"x","exact":"1","regex":"."}}]}},{DESTS}}}"#)),
                "rules[0].match.headers[0].regex: unknown field, expected one of: name, exact, prefix, suffix, one_of, present",
            ),
            (
                rule(&format!(r#"{{"name":"r","sticky":{{"cookie":"uid","assign_cookie":true,"cookie_max_age_s":-5}},{DESTS}}}"#)),
                "rules[0].sticky.cookie_max_age_s: must be a whole number from 0 to 4294967295, got -5",
            ),
            (
                rule(&format!(r#"{{"name":"r","match":{{"route_names":[]}},{DESTS}}}"#)),
                "rules[0].match.route_names: must not be empty (omit the field to match everything)",
            ),
        ];
        let wrong: Vec<String> = cases
            .iter()
            .filter(|(json, expected)| err(json) != *expected)
            .map(|(json, expected)| {
                format!("{json}\n  got:      {}\n  expected: {expected}", err(json))
            })
            .collect();
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn shadow_targets_are_named_from_their_cluster_and_shared_by_name() {
        let plan = Plan::from_json(
            format!(
                r#"{{"rules":[
                {{"name":"a",{DESTS},"shadow":[{{"cluster":"outbound|8080||checkout-v3.shop.svc.cluster.local","percent":12.5}}]}},
                {{"name":"b",{DESTS},"shadow":[{{"cluster":"outbound|8080||checkout-v3.shop.svc.cluster.local"}},{{"name":"v4","cluster":"v4"}}]}}]}}"#
            )
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(plan.shadow_targets.len(), 2);
        assert_eq!(
            plan.shadow_targets[0].name,
            "outbound_8080__checkout-v3_shop_svc_cluster_local"
        );
        assert_eq!(plan.rules[1].shadows[0].target, 0);
        assert_eq!(plan.rules[1].shadows[1].target, 1);
        let s = &plan.rules[0].shadows[0];
        assert_eq!(s.sample_threshold, u64::MAX / 8 + 1);
        assert_eq!(s.timeout, Duration::from_millis(1000));
        assert_eq!(s.host_suffix, "-shadow");
        assert!(s.include_body && !s.compare && !s.compare_body);
        assert_eq!(s.max_body_bytes, 1024 * 1024);
        assert!(plan.needs_request_headers, "copies carry every header");
        assert_eq!(plan.max_in_flight, 1024);
        assert_eq!(plan.max_buffered_body_bytes, 16 * 1024 * 1024);
        assert_eq!(default_shadow_name(&"é".repeat(70)), "_".repeat(64));
    }

    #[test]
    fn breakers_get_slots_fallbacks_and_defaults() {
        let plan = Plan::from_json(
            br#"{"rules":[
              {"name":"a","destinations":[{"name":"x","cluster":"x"}]},
              {"name":"b","destinations":[
                {"name":"canary","cluster":"v2","weight":5,"fallback":"stable",
                 "breaker":{"failure_statuses":["5xx",429,"503"],"count_local_replies":false}},
                {"name":"stable","cluster":"v1","weight":95,"fallback":"old","breaker":{"min_requests":5}},
                {"name":"old","cluster":"v0","weight":0}]}]}"#,
        )
        .unwrap();
        assert_eq!(
            plan.breakers,
            vec![
                BreakerRef {
                    rule: 1,
                    destination: 0
                },
                BreakerRef {
                    rule: 1,
                    destination: 1
                }
            ]
        );
        let canary = &plan.rules[1].destinations[0];
        assert_eq!((canary.fallback, canary.breaker_slot), (Some(1), Some(0)));
        let b = canary.breaker.as_ref().unwrap();
        assert_eq!(b.failure_ratio, 0.2);
        assert_eq!((b.min_requests, b.window_s, b.open_s), (20, 10, 30));
        assert_eq!(b.half_open_threshold, sample_threshold(10.0));
        assert!(!b.count_local_replies);
        assert_eq!(
            b.failure_statuses,
            vec![
                StatusMatch::Class(5),
                StatusMatch::Exact(429),
                StatusMatch::Exact(503)
            ]
        );
        assert_eq!(plan.rules[1].destinations[1].fallback, Some(2));
        assert_eq!(plan.rules[1].destinations[2].breaker_slot, None);
    }

    #[test]
    fn route_name_is_read_only_when_a_rule_uses_it() {
        let plan = Plan::from_json(
            rule(&format!(
                r#"{{"name":"r","match":{{"route_names":["x"]}},{DESTS}}}"#
            ))
            .as_bytes(),
        )
        .unwrap();
        assert!(plan.needs_route_name);
        assert!(!plan.needs_request_headers);
    }

    #[test]
    fn clear_route_cache_is_auto_by_default_and_always_on_request() {
        assert_eq!(
            Plan::from_json(b"{}").unwrap().clear_route_cache,
            RouteCacheMode::Auto
        );
        for (json, mode) in [
            (r#"{"clear_route_cache":"auto"}"#, RouteCacheMode::Auto),
            (r#"{"clear_route_cache":"always"}"#, RouteCacheMode::Always),
        ] {
            assert_eq!(
                Plan::from_json(json.as_bytes()).unwrap().clear_route_cache,
                mode
            );
        }
        let err = Plan::from_json(br#"{"clear_route_cache":"never"}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"clear_route_cache: "never" is not one of "auto", "always""#
        );
        let err = Plan::from_json(br#"{"clear_route_cache":true}"#).unwrap_err();
        assert_eq!(err.path, "clear_route_cache");
    }

    #[test]
    fn rules_with_side_effects_and_no_host_or_route_scope_are_reported() {
        let plan = Plan::from_json(
            br#"{ "rules": [
              { "name": "plain", "destinations": [ { "name": "a", "cluster": "a" } ] },
              { "name": "cookie", "sticky": { "cookie": "uid", "assign_cookie": true },
                "destinations": [ { "name": "a", "cluster": "a" } ] },
              { "name": "cookie-scoped", "match": { "authority": { "exact": "shop.example.com" } },
                "sticky": { "cookie": "uid", "assign_cookie": true },
                "destinations": [ { "name": "a", "cluster": "a" } ] },
              { "name": "copies", "destinations": [ { "name": "a", "cluster": "a" } ],
                "shadow": [ { "name": "s", "cluster": "s" } ] },
              { "name": "copies-routed", "match": { "route_names": ["checkout"] },
                "destinations": [ { "name": "a", "cluster": "a" } ], "shadow": [ { "name": "s", "cluster": "s" } ] },
              { "name": "breaks", "sticky": { "header": "x-user-id" },
                "destinations": [
                  { "name": "canary", "cluster": "c", "weight": 1, "fallback": "stable",
                    "breaker": { "failure_ratio": 0.5 } },
                  { "name": "stable", "cluster": "s", "weight": 1 } ] }
            ] }"#,
        )
        .unwrap();
        let warnings = plan.unscoped_side_effects();
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(warnings[0].starts_with("rule \"cookie\" has sticky.assign_cookie but"));
        assert!(warnings[1].starts_with("rule \"copies\" has shadow but"));
        assert!(warnings[2].starts_with("rule \"breaks\" has breaker but"));
    }
}
