//! Bytes to `PluginConfig`: one reader per object of the configuration, each listing its
//! fields, their types, bounds and defaults.

use super::json::{string_item, wrong_type, Obj, Result, Value};
use super::*;

/// Parses the JSON plugin configuration. An empty (or all-whitespace) configuration is the
/// default configuration: no rules.
pub fn parse(bytes: &[u8]) -> Result<PluginConfig> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(PluginConfig::default());
    }
    let value = super::json::parse(bytes)?;
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
            "lane_secret",
            "body_max_bytes",
        ],
    )?;
    // Filled field by field into one value, starting from the defaults: see `match_config`.
    let mut c = PluginConfig::default();
    if let Some(name) = top.string("cluster_header")? {
        c.cluster_header = name;
    }
    if let Some(name) = top.string("variant_header")? {
        c.variant_header = name;
    }
    c.debug_header = top.boolean("debug_header")?.unwrap_or(false);
    c.rules = top.list("rules", rule)?.unwrap_or_default();
    if let Some(n) = top.integer("max_in_flight", u64::from(u32::MAX))? {
        c.max_in_flight = n;
    }
    if let Some(n) = top.integer("max_buffered_body_bytes", MAX_SHADOW_BUFFER_BYTES)? {
        c.max_buffered_body_bytes = n;
    }
    c.clear_route_cache = top
        .choice(
            "clear_route_cache",
            &[
                ("auto", RouteCacheMode::Auto),
                ("always", RouteCacheMode::Always),
            ],
        )?
        .unwrap_or_default();
    c.shadow_marker_secret = top.string("shadow_marker_secret")?;
    c.lane_secret = top.string("lane_secret")?;
    if let Some(n) = top.integer("body_max_bytes", MAX_BODY_MAX_BYTES)? {
        c.body_max_bytes = n;
    }
    Ok(c)
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
            "rollout",
            "propagate",
            "from_lane",
            "lane_fallback",
            "judge",
            "fault",
        ],
    )?;
    // Filled field by field into one value: see `match_config`.
    let mut r = RuleConfig {
        name: o.required("name", Obj::string)?,
        match_: None,
        sticky: None,
        salt: None,
        hash: HashKind::default(),
        destinations: Vec::new(),
        shadow: Vec::new(),
        rollout: None,
        propagate: None,
        from_lane: false,
        lane_fallback: None,
        judge: None,
        fault: None,
    };
    r.match_ = o.object("match", |o| match_config(o, 0))?;
    r.sticky = o.object("sticky", sticky)?;
    r.salt = o.string("salt")?;
    r.hash = o
        .choice(
            "hash",
            &[("fine", HashKind::Fine), ("unleash", HashKind::Unleash)],
        )?
        .unwrap_or_default();
    r.destinations = o.required("destinations", |o, key| o.list(key, destination))?;
    r.shadow = o.list("shadow", shadow)?.unwrap_or_default();
    r.rollout = o.object("rollout", rollout)?;
    r.propagate = o.object("propagate", propagate)?;
    r.from_lane = o.boolean("from_lane")?.unwrap_or(false);
    r.lane_fallback = o.string("lane_fallback")?;
    r.judge = o.object("judge", judge)?;
    r.fault = o.object("fault", fault)?;
    Ok(r)
}

fn judge(mut o: Obj<'_>) -> Result<JudgeConfig> {
    o.allow(&[
        "canary",
        "baseline",
        "window_s",
        "min_requests",
        "errors",
        "latency",
        "confidence",
        "fail_after",
        "on_fail",
        "max_baseline_ratio",
    ])?;
    let mut j = JudgeConfig {
        canary: o.string("canary")?,
        ..JudgeConfig::default()
    };
    j.baseline = o.string("baseline")?;
    j.window_s = o.integer("window_s", 86_400)?;
    j.min_requests = o.integer("min_requests", u64::from(u32::MAX))?;
    j.errors = o.object("errors", |mut e| {
        e.allow(&["max_increase"])?;
        e.number("max_increase", 0, 1)
    })?;
    j.latency = o.object("latency", |mut l| {
        l.allow(&["percentile", "max_ratio"])?;
        Ok(JudgeLatencyConfig {
            percentile: l.number("percentile", 50, 100)?,
            max_ratio: l.number("max_ratio", 1, 1000)?,
        })
    })?;
    j.confidence = o.number("confidence", 0, 1)?;
    j.fail_after = o.integer("fail_after", 1000)?;
    j.on_fail = o.choice(
        "on_fail",
        &[
            ("abort", crate::judge::OnFail::Abort),
            ("report", crate::judge::OnFail::Report),
        ],
    )?;
    j.max_baseline_ratio = o.number("max_baseline_ratio", 0, 1_000_000)?;
    Ok(j)
}

#[inline(never)]
fn fault(mut o: Obj<'_>) -> Result<FaultConfig> {
    o.allow(&[
        "percent",
        "delay_ms",
        "abort_status",
        "abort_grpc_status",
        "destinations",
    ])?;
    Ok(FaultConfig {
        percent: o.required("percent", |o, key| o.number(key, 0, 100))?,
        delay_ms: o.integer("delay_ms", 60_000)?,
        abort_status: o.integer("abort_status", 599)?,
        abort_grpc_status: o.value("abort_grpc_status", grpc_status)?,
        destinations: o.list("destinations", string_item)?,
    })
}

fn propagate(mut o: Obj<'_>) -> Result<PropagateConfig> {
    o.allow(&["header", "baggage"])?;
    Ok(PropagateConfig {
        header: o.string("header")?,
        baggage: o.string("baggage")?,
    })
}

fn rollout(mut o: Obj<'_>) -> Result<RolloutConfig> {
    o.allow(&[
        "destination",
        "start",
        "steps",
        "abort_on_breaker_open",
        "gate",
    ])?;
    Ok(RolloutConfig {
        destination: o.required("destination", Obj::string)?,
        start: o.required("start", Obj::string)?,
        steps: o.required("steps", |o, key| o.list(key, rollout_step))?,
        abort_on_breaker_open: o.boolean("abort_on_breaker_open")?,
        gate: o.choice("gate", &[("judge", RolloutGate::Judge)])?,
    })
}

fn rollout_step(path: &str, value: &Value) -> Result<RolloutStepConfig> {
    let mut o = Obj::new(path, value, &["percent", "hold_s"])?;
    Ok(RolloutStepConfig {
        percent: o.required("percent", |o, key| o.number(key, 0, 100))?,
        hold_s: o.integer("hold_s", 10 * 365 * 86_400)?,
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
    // Filled field by field into one value: see `match_config`.
    let mut s = ShadowConfig {
        name: o.string("name")?,
        cluster: String::new(),
        percent: DEFAULT_SHADOW_PERCENT,
        timeout_ms: DEFAULT_SHADOW_TIMEOUT_MS,
        host_suffix: String::new(),
        methods: None,
        include_body: true,
        max_body_bytes: DEFAULT_SHADOW_MAX_BODY_BYTES,
        remove_headers: Vec::new(),
        compare: false,
        compare_body: false,
    };
    s.cluster = o.required("cluster", Obj::string)?;
    s.percent = o
        .number("percent", 0, 100)?
        .unwrap_or(DEFAULT_SHADOW_PERCENT);
    s.timeout_ms = o
        .integer("timeout_ms", 3_600_000)?
        .unwrap_or(DEFAULT_SHADOW_TIMEOUT_MS);
    s.host_suffix = o
        .string("host_suffix")?
        .unwrap_or_else(|| DEFAULT_SHADOW_HOST_SUFFIX.to_string());
    s.methods = o.list("methods", string_item)?;
    s.include_body = o.boolean("include_body")?.unwrap_or(true);
    s.max_body_bytes = o
        .integer("max_body_bytes", MAX_SHADOW_BUFFER_BYTES)?
        .unwrap_or(DEFAULT_SHADOW_MAX_BODY_BYTES);
    // An explicit list replaces the default; `[]` forwards every header (a deliberate opt-in).
    s.remove_headers = o.list("remove_headers", string_item)?.unwrap_or_else(|| {
        DEFAULT_SHADOW_REMOVE_HEADERS
            .iter()
            .map(|h| h.to_string())
            .collect()
    });
    s.compare = o.boolean("compare")?.unwrap_or(false);
    s.compare_body = o.boolean("compare_body")?.unwrap_or(false);
    Ok(s)
}

fn match_config(mut o: Obj<'_>, depth: usize) -> Result<MatchConfig> {
    o.allow(&[
        "headers",
        "cookies",
        "query",
        "path",
        "methods",
        "authority",
        "route_names",
        "source_ips",
        "not",
        "any_of",
        "body",
    ])?;
    let nested = |o: &mut Obj<'_>, key: &str| -> Result<()> {
        if depth >= MAX_MATCH_DEPTH {
            return Err(ConfigError::at(
                o.child(key),
                format_args!("\"not\" and \"any_of\" nest at most {MAX_MATCH_DEPTH} deep"),
            ));
        }
        Ok(())
    };
    let not = match o.has("not") {
        true => {
            nested(&mut o, "not")?;
            o.object("not", |o| match_config(o, depth + 1))?
                .map(Box::new)
        }
        false => None,
    };
    let any_of = match o.has("any_of") {
        true => {
            nested(&mut o, "any_of")?;
            o.list("any_of", |path, v| {
                match_config(super::json::Obj::any(path, v)?, depth + 1)
            })?
        }
        false => None,
    };
    // Filled field by field into one value so that an error returns through a single drop of
    // it, not a drop per field already read at each `?` (kilobytes of Wasm).
    let mut m = MatchConfig {
        not,
        any_of,
        ..MatchConfig::default()
    };
    m.headers = o.list("headers", named_match)?;
    m.cookies = o.list("cookies", named_match)?;
    m.query = o.list("query", named_match)?;
    m.path = o.object("path", |o| string_match(o, false))?;
    m.methods = o.list("methods", string_item)?;
    m.authority = o.object("authority", |o| string_match(o, false))?;
    m.route_names = o.list("route_names", string_item)?;
    m.source_ips = o.list("source_ips", string_item)?;
    if o.has("body") && depth > 0 {
        return Err(ConfigError::new(
            o.child("body"),
            "is read only at the top level of a rule's match (use \"not\" or \"any_of\" \
             inside a body condition)",
        ));
    }
    m.body = o.list("body", body_match)?;
    Ok(m)
}

fn body_match(path: &str, value: &Value) -> Result<BodyMatchConfig> {
    let mut o = Obj::new(
        path,
        value,
        &[
            "pointer", "exact", "prefix", "suffix", "contains", "one_of", "present", "regex",
            "not", "any_of",
        ],
    )?;
    let pointer = o.required("pointer", Obj::string)?;
    Ok(BodyMatchConfig {
        pointer,
        op: body_op(o, 0)?,
    })
}

const BODY_OPS: &[&str] = &[
    "exact", "prefix", "suffix", "contains", "one_of", "present", "regex", "not", "any_of",
];

/// The test of a body condition; `not` and `any_of` nest at most `MAX_MATCH_DEPTH` deep.
fn body_op(mut o: Obj<'_>, depth: usize) -> Result<BodyOpConfig> {
    for key in ["not", "any_of"] {
        if o.has(key) && depth >= MAX_MATCH_DEPTH {
            return Err(ConfigError::at(
                o.child(key),
                format_args!("\"not\" and \"any_of\" nest at most {MAX_MATCH_DEPTH} deep"),
            ));
        }
    }
    let mut b = BodyOpConfig {
        contains: o.string("contains")?,
        ..BodyOpConfig::default()
    };
    b.not = o
        .object("not", |o| {
            o.allow(BODY_OPS)?;
            body_op(o, depth + 1)
        })?
        .map(Box::new);
    b.any_of = o.list("any_of", |path, v| {
        body_op(Obj::new(path, v, BODY_OPS)?, depth + 1)
    })?;
    b.op = string_match(o, true)?;
    Ok(b)
}

fn named_match(path: &str, value: &Value) -> Result<NamedMatchConfig> {
    let mut o = Obj::new(
        path,
        value,
        &[
            "name", "exact", "prefix", "suffix", "one_of", "present", "regex",
        ],
    )?;
    Ok(NamedMatchConfig {
        name: o.required("name", Obj::string)?,
        op: string_match(o, true)?,
    })
}

/// The op fields of a match object. `named` ones (headers, cookies, query) also take
/// `one_of` and `present`; path and authority take `exact`, `prefix`, `suffix`, `regex`.
fn string_match(mut o: Obj<'_>, named: bool) -> Result<StringMatchConfig> {
    if !named {
        o.allow(&["exact", "prefix", "suffix", "regex"])?;
    }
    // One value filled field by field: see `match_config`.
    let mut m = StringMatchConfig {
        exact: o.string("exact")?,
        ..StringMatchConfig::default()
    };
    m.prefix = o.string("prefix")?;
    m.suffix = o.string("suffix")?;
    if named {
        m.one_of = o.list("one_of", string_item)?;
        m.present = o.boolean("present")?;
    }
    m.regex = o.string("regex")?;
    Ok(m)
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
    // Filled field by field into one value: see `match_config`.
    let mut s = StickyConfig {
        header: o.string("header")?,
        cookie: None,
        query: None,
        assign_cookie: false,
        cookie_max_age_s: None,
        cookie_secure: None,
        cookie_domain: None,
        cookie_same_site: None,
    };
    s.cookie = o.string("cookie")?;
    s.query = o.string("query")?;
    s.assign_cookie = o.boolean("assign_cookie")?.unwrap_or(false);
    s.cookie_max_age_s = o.integer("cookie_max_age_s", u64::from(u32::MAX))?;
    s.cookie_secure = o.boolean("cookie_secure")?;
    s.cookie_domain = o.string("cookie_domain")?;
    s.cookie_same_site = o.choice(
        "cookie_same_site",
        &[
            ("Lax", SameSite::Lax),
            ("Strict", SameSite::Strict),
            ("None", SameSite::None),
        ],
    )?;
    Ok(s)
}

fn destination(path: &str, value: &Value) -> Result<DestinationConfig> {
    let mut o = Obj::new(
        path,
        value,
        &["name", "cluster", "weight", "fallback", "breaker"],
    )?;
    // Filled field by field into one value: see `match_config`.
    let mut d = DestinationConfig {
        name: o.required("name", Obj::string)?,
        cluster: String::new(),
        weight: 1,
        fallback: None,
        breaker: None,
    };
    d.cluster = o.required("cluster", Obj::string)?;
    d.weight = o
        .integer("weight", u64::from(u32::MAX))?
        .map_or(1, |w| w as u32);
    d.fallback = o.string("fallback")?;
    d.breaker = o.object("breaker", breaker)?;
    Ok(d)
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
        "grpc_failure_codes",
        "slow_ms",
        "consecutive_failures",
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
                Value::Number(n) => n.as_u64().map(FailureStatus::Code).ok_or_else(|| {
                    ConfigError::at(path, format_args!("\"{n}\" is not a status code"))
                }),
                other => Err(wrong_type(
                    path,
                    "a status code or class like \"5xx\"",
                    other,
                )),
            })?
            .unwrap_or_else(|| vec![FailureStatus::Text("5xx".to_string())]),
        count_local_replies: o.boolean("count_local_replies")?.unwrap_or(true),
        grpc_failure_codes: o
            .list("grpc_failure_codes", grpc_status)?
            .unwrap_or_else(|| {
                DEFAULT_GRPC_FAILURE_CODES
                    .iter()
                    .map(|c| FailureStatus::Text(c.to_string()))
                    .collect()
            }),
        slow_ms: o.integer("slow_ms", 3_600_000)?,
        consecutive_failures: o.integer("consecutive_failures", u64::from(u32::MAX))?,
    })
}

/// A gRPC status code as written: a number, or a name (`Text`).
fn grpc_status(path: &str, v: &Value) -> Result<FailureStatus> {
    match v {
        Value::String(s) => Ok(FailureStatus::Text(s.clone())),
        Value::Number(n) => n.as_u64().map(FailureStatus::Code).ok_or_else(|| {
            ConfigError::at(path, format_args!("\"{n}\" is not a gRPC status code"))
        }),
        other => Err(wrong_type(path, "a gRPC status code or name", other)),
    }
}
