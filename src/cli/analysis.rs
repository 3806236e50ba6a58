//! `explain`, `rollout` and the CLI's extra warnings, over the compiled plan (`diff`: `super::diff`).

use super::{hash_name, load_one, ExplainArgs, Failure};
use crate::bucket::{FINE_BUCKETS, UNLEASH_BUCKETS};
use crate::config::HashKind;
use crate::lane::{Carrier, LaneStep};
use crate::matcher::{Condition, StringOp};
use crate::plan::{Decision, Plan, Rule, StickyKey};
use crate::request::{HeaderPair, Request};
use crate::rng::Rng;
use serde_json::{json, Value};

/// Every bucket of a hash scheme, in order.
pub fn buckets(kind: HashKind) -> std::ops::Range<u32> {
    match kind {
        HashKind::Fine => 0..FINE_BUCKETS,
        HashKind::Unleash => 1..UNLEASH_BUCKETS + 1,
    }
}

/// How many buckets each destination of `rule` owns (before breakers).
pub fn bucket_counts(rule: &Rule) -> Vec<u32> {
    bucket_counts_in(rule, &rule.upper_bounds)
}

/// `bucket_counts` under given bounds (a rollout's share in force).
pub fn bucket_counts_in(rule: &Rule, bounds: &[u32]) -> Vec<u32> {
    let mut counts = vec![0u32; rule.destinations.len()];
    for b in buckets(rule.hash) {
        if let Some(c) = counts.get_mut(crate::bucket::destination_for(bounds, b)) {
            *c += 1;
        }
    }
    counts
}

/// The filter's load-time warnings (`Plan::load_warnings`) plus what only an offline
/// check can afford: rules that can never match, destinations that get no bucket.
/// Where the input puts Envoy's fault filter, against what the configuration needs: a rule
/// with `fault` needs one with header control after the Wasm filter (else no fault is ever
/// applied), and one before the Wasm filter lets clients inject faults whatever the filter does.
pub fn fault_filter_warnings(
    plan: &Plan,
    site: Option<crate::cli::input::FaultFilterSite>,
) -> Vec<String> {
    let Some(site) = site else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let faulted: Vec<&str> = plan
        .fault_rules
        .iter()
        .filter_map(|&r| plan.rules.get(r).map(|r| r.name.as_str()))
        .collect();
    if !faulted.is_empty() && !site.after {
        let rules = crate::config::join(&faulted, ", ");
        out.push(if site.manifest {
            format!(
                "rule(s) {rules} use fault, but no EnvoyFilter or EnvoyPatchPolicy in this file adds \
                 Envoy's fault filter with header control (header_delay/header_abort) before the \
                 router: unless another manifest does, no fault is ever applied \
                 (deploy/istio/envoyfilter-fault.yaml, deploy/envoy-gateway/envoypatchpolicy-fault.yaml)"
            )
        } else {
            format!(
                "rule(s) {rules} use fault, but no fault filter (envoy.filters.http.fault with \
                 header_delay/header_abort) follows this Wasm filter before the router in its \
                 HTTP filter chain: no fault is ever applied (envoy/templates/fault-filter.yaml)"
            )
        });
    }
    if site.before {
        out.push(
            "a fault filter with header control runs before this Wasm filter: clients can inject \
             faults with x-envoy-fault-* headers before the filter removes them; place it after"
                .to_string(),
        );
    }
    out
}

pub fn warnings(plan: &Plan) -> Vec<String> {
    let mut out = plan.load_warnings();
    let mut catch_all: Option<&str> = None;
    for rule in &plan.rules {
        if let Some(earlier) = catch_all {
            out.push(format!(
                "rule \"{}\" can never match: the earlier rule \"{earlier}\" has no conditions",
                rule.name
            ));
        } else if rule.matcher.conditions.is_empty() {
            catch_all = Some(&rule.name);
        }
        if rule.destinations.len() > 1 {
            let total = buckets(rule.hash).len();
            for (i, (d, count)) in rule
                .destinations
                .iter()
                .zip(bucket_counts(rule))
                .enumerate()
            {
                // A rollout's destination owns no bucket before its start: not a mistake.
                if count == 0 && !(i == 0 && rule.rollout.is_some()) {
                    out.push(format!(
                        "rule \"{}\": destination \"{}\" (weight {}) owns none of the {total} \
                         buckets: it gets no traffic except as a breaker fallback",
                        rule.name, d.name, d.weight
                    ));
                }
            }
        }
    }
    out
}

pub(super) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn op_text(op: &StringOp) -> String {
    match op {
        StringOp::Exact(s) => format!("exact {:?}", text(s)),
        StringOp::Prefix(s) => format!("prefix {:?}", text(s)),
        StringOp::Suffix(s) => format!("suffix {:?}", text(s)),
        StringOp::OneOf(v) => format!("one_of {:?}", v.iter().map(|s| text(s)).collect::<Vec<_>>()),
        StringOp::Present(p) => format!("present {p}"),
        StringOp::Regex(p) => format!("regex {:?}", p.as_str()),
    }
}

/// A compiled condition in the configuration's own terms.
pub fn condition_text(c: &Condition) -> String {
    let list = |v: &[Vec<u8>]| format!("{:?}", v.iter().map(|s| text(s)).collect::<Vec<_>>());
    match c {
        Condition::Header(n, op) => format!("match.headers {n}: {}", op_text(op)),
        Condition::Cookie(n, op) => format!("match.cookies {n}: {}", op_text(op)),
        Condition::Query(n, op) => format!("match.query {n}: {}", op_text(op)),
        Condition::Path(op) => format!("match.path: {}", op_text(op)),
        Condition::Authority(op) => format!("match.authority: {}", op_text(op)),
        Condition::Methods(m) => format!("match.methods: {}", list(m)),
        Condition::RouteNames(r) => format!("match.route_names: {}", list(r)),
        Condition::SourceIps(ranges) => format!(
            "match.source_ips: {:?}",
            ranges.iter().map(|r| r.to_text()).collect::<Vec<_>>()
        ),
        Condition::Not(m) => format!("match.not: {{ {} }}", conditions_text(m)),
        Condition::AnyOf(sets) => format!(
            "match.any_of: [ {} ]",
            sets.iter()
                .map(|m| format!("{{ {} }}", conditions_text(m)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Condition::Body(b) => format!("match.body {:?}: {}", b.pointer, body_test_text(&b.test)),
    }
}

fn body_test_text(t: &crate::body::BodyTest) -> String {
    use crate::body::BodyTest;
    match t {
        BodyTest::Op(op) => op_text(op),
        BodyTest::Contains(s) => format!("contains {:?}", text(s)),
        BodyTest::Not(inner) => format!("not {{ {} }}", body_test_text(inner)),
        BodyTest::AnyOf(tests) => format!(
            "any_of [ {} ]",
            tests
                .iter()
                .map(body_test_text)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn conditions_text(m: &crate::matcher::Matcher) -> String {
    m.conditions
        .iter()
        .map(condition_text)
        .collect::<Vec<_>>()
        .join("; ")
}

fn key_source(key: &StickyKey) -> String {
    match key {
        StickyKey::Header(n) => format!("header {n}"),
        StickyKey::Cookie(n) => format!("cookie {n}"),
        StickyKey::Query(n) => format!("query parameter {n}"),
    }
}

pub(super) fn pct(part: u32, whole: usize) -> String {
    format!("{:.2}%", f64::from(part) * 100.0 / whole.max(1) as f64)
}

/// The request `args` describe, as the host hands it to the core.
fn request_headers(args: &ExplainArgs) -> Vec<HeaderPair> {
    let mut path = args.path.clone();
    for (i, (k, v)) in args.query.iter().enumerate() {
        path.push(if i == 0 && !path.contains('?') {
            '?'
        } else {
            '&'
        });
        path.push_str(&format!("{k}={v}"));
    }
    let mut h: Vec<HeaderPair> = vec![
        (":method".into(), args.method().as_bytes().to_vec()),
        (":path".into(), path.into_bytes()),
    ];
    if let Some(a) = &args.authority {
        h.push((":authority".into(), a.clone().into_bytes()));
    }
    for (k, v) in &args.headers {
        h.push((k.to_ascii_lowercase(), v.clone().into_bytes()));
    }
    if args.body.is_some() && !h.iter().any(|(n, _)| n == "content-type") {
        h.push(("content-type".into(), b"application/json".to_vec()));
    }
    if !args.cookies.is_empty() {
        let cookie: Vec<String> = args
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        h.push(("cookie".into(), cookie.join("; ").into_bytes()));
    }
    h
}

pub fn explain(args: &ExplainArgs) -> Result<(), Failure> {
    let checked = load_one(&args.file, args.all, args.nth)?;
    let Ok(plan) = &checked.plan else {
        return Err(Failure::Invalid("invalid configuration".into()));
    };
    let headers = request_headers(args);
    let route = args.route_name.as_ref().map(|r| r.as_bytes());
    // Lane carriers as the filter screens them (signatures checked against this clock).
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .ok();
    let base = Request::new(&headers, route);
    let incoming = plan.lanes.screen(&base, || now_s);
    let mut lines: Vec<String> = vec![format!("config: {}", checked.embedded.label())];
    let mut skipped = Vec::new();
    let mut report = serde_json::Map::new();
    report.insert("config".into(), Value::from(checked.embedded.label()));
    // The body, read as the filter reads it: only for a request that may carry JSON.
    let body_bytes = match &args.body {
        Some(b) => Some(match b.strip_prefix('@') {
            Some(file) => {
                std::fs::read(file).map_err(|e| Failure::Usage(format!("--body {b}: {e}")))?
            }
            None => b.clone().into_bytes(),
        }),
        None => None,
    };
    let outcome = match &body_bytes {
        Some(bytes) if crate::body::may_carry_json(&base) => Some(crate::body::parse(
            bytes,
            plan.body_max_bytes,
            &plan.body_pointers,
        )),
        _ => None,
    };
    if let Some(bytes) = &body_bytes {
        let (state, line) = match &outcome {
            None => (
                "not_read",
                "not read (a GET or HEAD request, content-length 0, or not a JSON content-type)"
                    .to_string(),
            ),
            Some(crate::body::BodyOutcome::Json(_)) => ("json", "JSON".to_string()),
            Some(crate::body::BodyOutcome::TooLarge) => (
                "too_large",
                format!(
                    "over body_max_bytes ({}): body conditions do not hold \
                     (traffic_split.body.too_large)",
                    plan.body_max_bytes
                ),
            ),
            Some(crate::body::BodyOutcome::Invalid) => (
                "invalid",
                "not valid JSON: body conditions do not hold (traffic_split.body.invalid)"
                    .to_string(),
            ),
        };
        lines.push(format!("body: {} bytes, {line}", bytes.len()));
        report.insert("body".into(), json!({"bytes": bytes.len(), "state": state}));
        if plan.reads_body && !plan.needs_body(&base.with_body(crate::body::RequestBody::Pending)) {
            lines.push(
                "  (the filter decides this request on its headers: the first rule that can \
                 match it has no match.body, so the body is not held)"
                    .into(),
            );
        }
    }
    let json_body = match &outcome {
        Some(crate::body::BodyOutcome::Json(v)) => crate::body::RequestBody::Json(v),
        _ => crate::body::RequestBody::Absent,
    };
    let request = Request::new(&headers, route)
        .with_lanes(&incoming)
        .with_body(json_body);
    // Rollouts: the share in force at --at (default now), as the filter's tick computes it.
    let at_ms = at_time(args.at.as_deref())?;
    let rollouts = rollout_bounds(plan, at_ms);
    // The filter's own decision (no breaker open): explain details it, never replaces it.
    let decision = plan.decide_at(&request, &mut Rng::from_seed(1), &[], &rollouts);
    let Decision::Routed(routed) = decision else {
        skip_rules(plan, plan.rules.len(), &request, &mut lines, &mut skipped);
        lines.push(format!(
            "unmatched: no rule matches; the filter removes {} from the request",
            plan.cluster_header
        ));
        report.insert("skipped".into(), Value::from(skipped));
        report.insert("matched".into(), Value::Null);
        return print(args.json, &lines, &report);
    };
    skip_rules(plan, routed.rule, &request, &mut lines, &mut skipped);
    report.insert("skipped".into(), Value::from(skipped));
    let Some(rule) = plan.rules.get(routed.rule) else {
        return Err(Failure::Invalid("internal: decision names no rule".into()));
    };
    lines.push(format!("rule[{}] \"{}\": matched", routed.rule, rule.name));
    report.insert("matched".into(), Value::from(rule.name.clone()));
    let salt = text(
        rule.salt_colon
            .strip_suffix(b":")
            .unwrap_or(&rule.salt_colon),
    );
    let total = buckets(rule.hash).len();
    let bounds = rule.bounds_in_force(&rollouts);
    let counts = bucket_counts_in(rule, bounds);
    if let Some(policy) = &rule.rollout {
        let phase = policy.phase_at(at_ms);
        let dest = rule.destinations.first().map_or("", |d| d.name.as_str());
        lines.push(format!(
            "  rollout at {}: step {}/{}, \"{dest}\" at {}% (`traffic-split rollout` prints the schedule)",
            crate::rollout::format_rfc3339(at_ms),
            phase.step,
            policy.steps.len(),
            crate::rollout::percent_text(phase.basis_points)
        ));
        report.insert(
            "rollout".into(),
            json!({"at": crate::rollout::format_rfc3339(at_ms), "step": phase.step,
                   "steps": policy.steps.len(), "basis_points": phase.basis_points}),
        );
    }
    if let Some(text) = rule.judge_text() {
        lines.push(format!("  {text}"));
        report.insert("judge".into(), Value::from(text));
    }
    let shares: Vec<String> = rule
        .destinations
        .iter()
        .zip(&counts)
        .map(|(d, c)| format!("{} {}", d.name, pct(*c, total)))
        .collect();
    let fixed = rule.destinations.len() == 1;
    let key = rule
        .sticky
        .as_ref()
        .and_then(|s| Rule::user_key(s, &request).map(|k| (s, k)));
    let mut destination = routed.destination;
    let lane = rule.lane.as_ref().zip(routed.lane);
    if let Some((lane, step)) = lane {
        let carrier = match plan.lanes.carriers.get(lane.carrier).map(|c| &c.carrier) {
            Some(Carrier::Header(h)) => format!("header {h}"),
            Some(Carrier::Baggage(k)) => format!("baggage member {k}"),
            None => String::new(),
        };
        let carried = request.lane(lane.carrier).map(text);
        lines.push(format!(
            "  lane ({carrier}): {}{}",
            step.as_str(),
            carried
                .as_deref()
                .map_or(String::new(), |c| format!(", carried {c:?}"))
        ));
        report.insert(
            "lane".into(),
            json!({"carrier": carrier, "step": step.as_str(), "carried": carried}),
        );
    }
    let by_lane = matches!(lane, Some((_, LaneStep::Followed | LaneStep::Fallback)));
    match (&rule.sticky, &key) {
        _ if by_lane => {}
        _ if fixed => lines.push("  one destination: every request goes to it (no bucket)".into()),
        (Some(_), Some((sticky, k))) => {
            let b = rule.bucket_of_key(k);
            destination = crate::bucket::destination_for(bounds, b);
            lines.push(format!(
                "  user key: {:?} from {}",
                text(k),
                key_source(&sticky.key)
            ));
            lines.push(format!(
                "  salt: {salt:?}, hash: {}, bucket: {b}",
                hash_name(rule.hash)
            ));
            report.insert(
                "user_key".into(),
                json!({"value": text(k), "source": key_source(&sticky.key)}),
            );
            report.insert("bucket".into(), Value::from(b));
            if destination != routed.destination {
                return Err(Failure::Invalid(format!(
                    "internal: bucket {b} gives destination {destination}, the decision {}",
                    routed.destination
                )));
            }
        }
        (Some(sticky), None) => {
            lines.push(format!(
                "  user key: none ({} absent or empty)",
                key_source(&sticky.key)
            ));
            if let (StickyKey::Cookie(c), Some(attrs)) = (&sticky.key, &sticky.assign_cookie) {
                lines.push(format!(
                    "  cookie: a new id would be assigned and bucketed: Set-Cookie: {c}=<32 hex>{attrs}"
                ));
                report.insert("assign_cookie".into(), Value::from(true));
            }
            lines.push(format!(
                "  salt: {salt:?}, hash: {}; bucketed at random: {}",
                hash_name(rule.hash),
                shares.join(", ")
            ));
        }
        (None, _) => lines.push(format!(
            "  not sticky: every request is bucketed at random: {}",
            shares.join(", ")
        )),
    }
    report.insert("salt".into(), Value::from(salt));
    report.insert("hash".into(), Value::from(hash_name(rule.hash)));
    report.insert(
        "random".into(),
        Value::from(!fixed && key.is_none() && !by_lane),
    );
    if let Some(d) = rule.destinations.get(destination) {
        let variant = plan
            .variant_header
            .as_ref()
            .map_or_else(String::new, |v| format!(", {v}: {}", d.name));
        let prefix = if !fixed && key.is_none() && !by_lane {
            "e.g. "
        } else {
            ""
        };
        lines.push(format!(
            "  destination: {prefix}{} ({}: {}{variant})",
            d.name, plan.cluster_header, d.cluster
        ));
        report.insert(
            "destination".into(),
            json!({"name": d.name, "cluster": d.cluster}),
        );
        if d.breaker.is_some() {
            let fallback = d
                .fallback
                .and_then(|f| rule.destinations.get(f))
                .map_or("none".to_string(), |f| {
                    format!("{} ({})", f.name, f.cluster)
                });
            lines.push(format!(
                "  breaker: while it is open, traffic goes to {fallback}"
            ));
            report.insert("breaker_fallback".into(), Value::from(fallback));
        }
    }
    let has_cookie = key.is_some();
    if let Some(sticky) = &rule.sticky {
        if sticky.assign_cookie.is_some() && has_cookie {
            lines.push("  cookie: present, none assigned".into());
        }
    }
    let mut shadows = Vec::new();
    for s in &rule.shadows {
        let name = plan
            .shadow_targets
            .get(s.target)
            .map_or("", |t| t.name.as_str());
        let method = Some(args.method().as_bytes());
        let p = if s.allows_method(method) {
            s.sample_probability()
        } else {
            0.0
        };
        let why = if s.allows_method(method) {
            String::new()
        } else {
            format!(" (method {} not in methods)", args.method())
        };
        lines.push(format!(
            "  shadow {name} (cluster {}): sampled with probability {:.2}%{why}",
            s.cluster,
            p * 100.0
        ));
        shadows.push(json!({"name": name, "cluster": s.cluster, "probability": p}));
    }
    report.insert("shadows".into(), Value::from(shadows));
    print(args.json, &lines, &report)
}

pub(super) fn print(
    as_json: bool,
    lines: &[String],
    report: &serde_json::Map<String, Value>,
) -> Result<(), Failure> {
    if as_json {
        out!(
            "{}",
            serde_json::to_string_pretty(report).unwrap_or_default()
        );
    } else {
        for l in lines {
            out!("{l}");
        }
    }
    Ok(())
}

/// `--at` as unix ms (RFC 3339 with a zone), or now.
pub fn at_time(at: Option<&str>) -> Result<i64, Failure> {
    match at {
        Some(text) => crate::rollout::parse_rfc3339(text).ok_or_else(|| {
            Failure::Usage(format!(
                "--at {text:?} is not an RFC 3339 time with a zone (e.g. 2026-12-01T10:00:00Z)"
            ))
        }),
        None => Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)),
    }
}

/// The bounds in force of every rollout slot at `at_ms`, as the filter's tick computes them
/// (no breaker open, so no abort).
pub fn rollout_bounds(plan: &Plan, at_ms: i64) -> Vec<Vec<u32>> {
    (0..plan.rollouts.len())
        .filter_map(|slot| plan.rollout_site(slot))
        .map(|(rule, policy)| {
            let rest: Vec<u32> = rule.destinations.iter().skip(1).map(|d| d.weight).collect();
            crate::rollout::upper_bounds(policy.phase_at(at_ms).basis_points, &rest)
        })
        .collect()
}

/// `traffic-split rollout FILE [--at TIME]`: every rollout's schedule and the step at TIME.
pub fn rollout(
    file: &str,
    at: Option<&str>,
    all: bool,
    nth: usize,
    as_json: bool,
) -> Result<(), Failure> {
    let checked = load_one(file, all, nth)?;
    let Ok(plan) = &checked.plan else {
        return Err(Failure::Invalid("invalid configuration".into()));
    };
    let at_ms = at_time(at)?;
    let mut report = Vec::new();
    for slot in 0..plan.rollouts.len() {
        let Some((rule, policy)) = plan.rollout_site(slot) else {
            continue;
        };
        let dest = rule.destinations.first().map_or("", |d| d.name.as_str());
        if as_json {
            let phase = policy.phase_at(at_ms);
            let steps: Vec<Value> = policy
                .steps
                .iter()
                .zip(policy.step_starts())
                .map(|(s, begins)| {
                    json!({"basis_points": s.basis_points, "hold_s": s.hold_s,
                           "begins": crate::rollout::format_rfc3339(begins)})
                })
                .collect();
            report.push(
                json!({"rule": rule.name, "destination": dest, "steps": steps,
                "abort_on_breaker_open": policy.abort_on_breaker_open,
                "judge": rule.judge_text(),
                "at": crate::rollout::format_rfc3339(at_ms), "step": phase.step,
                "basis_points": phase.basis_points}),
            );
        } else {
            out!(
                "{}",
                policy.schedule_text(&rule.name, dest, at_ms).trim_end()
            );
            if let Some(text) = rule.judge_text() {
                out!("  {text}");
            }
        }
    }
    if as_json {
        out!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else if plan.rollouts.is_empty() {
        out!("no rule has a rollout");
    }
    Ok(())
}

/// `traffic-split judge --canary N/F --baseline N/F [--config FILE --rule NAME]`: the verdict
/// of `JudgePolicy::evaluate` (the filter's code) on those counts.
pub fn judge(args: &super::JudgeArgs) -> Result<(), Failure> {
    use crate::judge::{self, Arm, JudgePolicy, Tally};
    let (mut policy, rule_name) = match &args.config {
        None => {
            if args.rule.is_some() {
                return Err(Failure::Usage("--rule needs --config".into()));
            }
            (
                JudgePolicy {
                    canary: 0,
                    baseline: 1,
                    window_s: judge::DEFAULT_WINDOW_S,
                    min_requests: judge::DEFAULT_MIN_REQUESTS,
                    errors: Some(judge::ErrorsCriterion {
                        max_increase: judge::DEFAULT_MAX_INCREASE,
                    }),
                    latency: None,
                    confidence: judge::DEFAULT_CONFIDENCE,
                    fail_after: judge::DEFAULT_FAIL_AFTER,
                    on_fail: judge::OnFail::Abort,
                    max_baseline_ratio: judge::DEFAULT_MAX_BASELINE_RATIO,
                    canary_defaulted: false,
                },
                None,
            )
        }
        Some(file) => {
            let checked = load_one(file, args.all, args.nth)?;
            let Ok(plan) = &checked.plan else {
                return Err(Failure::Invalid("invalid configuration".into()));
            };
            let judged: Vec<&Rule> = plan.rules.iter().filter(|r| r.judge.is_some()).collect();
            let rule =
                match &args.rule {
                    Some(name) => plan.rules.iter().find(|r| &r.name == name).ok_or_else(|| {
                        Failure::Usage(format!("{file}: no rule named \"{name}\""))
                    })?,
                    None => match judged.as_slice() {
                        [only] => *only,
                        [] => return Err(Failure::Usage(format!("{file}: no rule has a judge"))),
                        _ => {
                            return Err(Failure::Usage(format!(
                                "{file}: several rules have a judge; name one with --rule"
                            )))
                        }
                    },
                };
            let Some(policy) = rule.judge.clone() else {
                return Err(Failure::Usage(format!(
                    "{file}: rule \"{}\" has no judge",
                    rule.name
                )));
            };
            (policy, Some(rule.name.clone()))
        }
    };
    // The latency needs the histograms: judged on errors only here. In the filter the same
    // window is `inconclusive` below the baseline outcomes its latency bound needs.
    let latency_needs = policy.latency_min_requests();
    let latency_skipped = policy.latency.take().is_some();
    let errors_judged = policy.errors.is_some();
    let arm = |(requests, failures): (u64, u64)| Arm {
        requests,
        failures,
        ..Arm::default()
    };
    let e = policy.evaluate(&Tally {
        canary: arm(args.canary),
        baseline: arm(args.baseline),
        ..Tally::default()
    });
    let numbers = policy.numbers_text(&e);
    let mut why = policy.reason_text(&e);
    if let (Some(z), true) = (e.errors_z, errors_judged) {
        why.push_str(&format!(
            " (Agresti-Caffo z = {z:.2}, fails above {:.2})",
            policy.z()
        ));
    }
    if args.json {
        out!(
            "{}",
            json!({"rule": rule_name, "verdict": e.verdict.as_str(),
                   "canary": {"requests": e.canary_requests, "failure_bp": e.canary_failure_bp},
                   "baseline": {"requests": e.baseline_requests, "failure_bp": e.baseline_failure_bp},
                   "errors_failed": e.errors_failed, "z": e.errors_z, "z_threshold": policy.z(),
                   "min_requests": policy.min_requests, "confidence": policy.confidence,
                   "latency_judged": false, "latency_min_baseline": latency_needs, "reason": why})
        );
    } else {
        if let Some(name) = &rule_name {
            out!("rule \"{name}\"");
        }
        out!("verdict: {}", e.verdict.as_str());
        out!("{numbers}");
        out!("{why}");
        if let (true, Some(needed)) = (latency_skipped, latency_needs) {
            out!(
                "latency: not judged from counts (the filter judges it from its histograms); the \
                 filter's window is inconclusive unless it fails on errors or its baseline has at \
                 least {needed} outcomes"
            );
        }
        if !errors_judged {
            out!("errors: this judge has no errors criterion");
        }
    }
    Ok(())
}

/// Why each of the first `count` rules did not match: their first failing condition, as a line
/// of the report and an entry of its `skipped` list.
fn skip_rules(
    plan: &Plan,
    count: usize,
    request: &Request<'_>,
    lines: &mut Vec<String>,
    skipped: &mut Vec<Value>,
) {
    for (i, rule) in plan.rules.iter().enumerate().take(count) {
        let before = request.regex_skipped();
        let failing = rule.matcher.first_failing(request);
        let mut why = failing.map_or_else(|| "?".to_string(), condition_text);
        if request.regex_skipped() > before {
            if let Some(cap) = failing.and_then(regex_cap) {
                why.push_str(&format!(
                    " (the value is over the pattern's cap of {cap} bytes: not evaluated)"
                ));
            }
        }
        lines.push(format!(
            "rule[{i}] \"{}\": no match: {why} does not hold",
            rule.name
        ));
        skipped.push(json!({"rule": rule.name, "failed": why}));
    }
}

/// The value cap of a `regex` condition (`Pattern::max_value_len`).
fn regex_cap(c: &Condition) -> Option<usize> {
    match c {
        Condition::Header(_, StringOp::Regex(p))
        | Condition::Cookie(_, StringOp::Regex(p))
        | Condition::Query(_, StringOp::Regex(p))
        | Condition::Path(StringOp::Regex(p))
        | Condition::Authority(StringOp::Regex(p)) => Some(p.max_value_len()),
        Condition::Body(b) => b.test.first_regex().map(|p| p.max_value_len()),
        _ => None,
    }
}
