//! The bodies of the fuzz targets, shared by `cargo fuzz` (fuzz/fuzz_targets/*.rs, nightly,
//! libFuzzer) and by the native corpus replay in `make test` (tests/fuzz_corpus.rs), so the
//! replay runs exactly what the fuzzer ran. Each function takes the fuzzer's raw bytes and
//! must never panic: a panic here is a panic the VM would have had.

// Each target uses one entry point; the harness's own checks may panic (that is the finding).
#![allow(dead_code, clippy::panic)]

use arbitrary::{Result, Unstructured};
use serde_json::{Map, Value};
use traffic_split::breaker::{BreakerView, Outcomes, Record, State};
use traffic_split::plan::Decision;
use traffic_split::plan::Plan;
use traffic_split::request::{HeaderPair, Request};
use traffic_split::rng::Rng;
use traffic_split::shadow::{
    check_marker, header_bytes, select_copies, suffixed_authority, Answer, Bulkhead, CompareBook,
    ComparePlan, MarkedRequest, MarkerKey, SHADOW_MARKER,
};

/// Target `config_bytes`: any bytes → parse, validate, compile.
pub fn config_bytes(data: &[u8]) {
    let _ = Plan::from_json(data);
}

/// Target `breaker_record`: any bytes as a breaker's shared-data record (written by another
/// worker, another build, or nobody sane). Decoding gives a record or none, never a panic or a
/// misread: whatever decodes re-encodes to the very same bytes. A decoded record then goes
/// through the state machine (merge, clock rebase, advance) at the edges of time without
/// overflowing, under the policy of a real configuration.
pub fn breaker_record(data: &[u8]) {
    let Some(record) = Record::decode(data) else {
        return;
    };
    assert!(
        record.encode() == data,
        "a decoded record re-encodes to other bytes"
    );
    let Some(policy) = breaker_plan()
        .rules
        .first()
        .and_then(|r| r.destinations.first()?.breaker.clone())
    else {
        panic!("the fixed breaker configuration no longer compiles");
    };
    for now in [
        0,
        1,
        record.since_ms,
        record.since_ms.saturating_add(1_000),
        u64::MAX,
    ] {
        let mut r = record.clone();
        let outcomes = Outcomes {
            generation: r.generation,
            requests: 3,
            failures: 2,
            streak: 2,
            peak: 2,
        };
        let _ = r.would_advance(&policy, now, &outcomes);
        r.merge(&policy, now, &outcomes);
        r.rebase_clock(now);
        let _ = r.advance(&policy, now);
        let _ = r.counts();
        assert!(
            Record::decode(&r.encode()).as_ref() == Some(&r),
            "a record the state machine produced does not round-trip"
        );
    }
}

fn breaker_plan() -> Plan {
    let config = br#"{"rules":[{"name":"r","destinations":[
        {"name":"canary","cluster":"c","fallback":"stable","breaker":{"window_s":3600,"min_requests":1}},
        {"name":"stable","cluster":"s"}]}]}"#;
    match Plan::from_json(config) {
        Ok(plan) => plan,
        Err(e) => panic!("fixed breaker plan: {e}"),
    }
}

/// Target `shadow_copy`: the shadow copy builder on a hostile request — which copies are made,
/// their headers (hop-by-hop, credentials, routing headers and the marker filtered out, the
/// authority suffixed), what the bulkhead holds for them, the marker check on any bytes, and
/// the comparison book under any sequence of events. Checks the promises, not just "no panic".
pub fn shadow_copy(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let plan = plugin_config(&mut u)
        .ok()
        .and_then(|c| Plan::from_json(&serde_json::to_vec(&c).ok()?).ok())
        .filter(|p| p.rules.iter().any(|r| !r.shadows.is_empty()))
        .or_else(|| Plan::from_json(SHADOW_PLAN.as_bytes()).ok());
    let Some(plan) = plan else {
        panic!("the fixed shadow plan must compile");
    };
    let Ok(headers) = request_headers(&mut u) else {
        return;
    };
    let routing: Vec<&str> = std::iter::once(plan.cluster_header.as_str())
        .chain(plan.variant_header.as_deref())
        .collect();
    let max_in_flight = usize::from(u.int_in_range(0..=8u8).unwrap_or(1));
    let max_bytes = u.arbitrary::<u64>().unwrap_or(0) % (1 << 20);
    let mut bulkhead = Bulkhead::new(max_in_flight, max_bytes);
    let end_of_stream = u.arbitrary().unwrap_or(true);
    let mut rng = Rng::from_seed(u.arbitrary().unwrap_or(0));
    for rule in plan.rules.iter().filter(|r| !r.shadows.is_empty()) {
        let selection = select_copies(
            &rule.shadows,
            &headers,
            &routing,
            end_of_stream,
            || rng.next_u64(),
            &mut bulkhead,
        );
        let held: u64 = selection.copies.iter().map(|c| c.held).sum();
        assert!(bulkhead.in_flight() <= max_in_flight.max(selection.copies.len()));
        assert_eq!(
            bulkhead.held_bytes(),
            held,
            "the bulkhead holds what the copies hold"
        );
        for copy in &selection.copies {
            let Some(policy) = rule.shadows.get(copy.shadow) else {
                panic!("a copy names a shadow the rule does not have");
            };
            assert_eq!(copy.held, header_bytes(&copy.headers));
            assert!(
                !copy.with_body || !end_of_stream,
                "a body copy of a request without body"
            );
            for (name, _) in &copy.headers {
                assert!(name != SHADOW_MARKER, "a copy carries the client's marker");
                assert!(
                    !routing.contains(&name.as_str()),
                    "a copy carries a routing header"
                );
                assert!(
                    !policy.remove_headers.contains(name),
                    "a removed header is copied"
                );
            }
            if let Some(authority) = headers
                .iter()
                .find(|(n, _)| n == ":authority")
                .and_then(|(_, v)| std::str::from_utf8(v).ok())
            {
                let copied = copy.headers.iter().find(|(n, _)| n == ":authority");
                let expected = suffixed_authority(authority, &policy.host_suffix);
                assert_eq!(copied.map(|(_, v)| v.as_str()), Some(expected.as_str()));
            }
        }
        let _ = ComparePlan::of(&rule.shadows, &selection.copies);
        for copy in &selection.copies {
            bulkhead.end_copy(copy.held);
        }
        assert_eq!((bulkhead.in_flight(), bulkhead.held_bytes()), (0, 0));
    }
    // The marker check: any bytes, with and without a key, at any time.
    let value: Option<&[u8]> = u.arbitrary().unwrap_or(None);
    let key = MarkerKey::from_secret(b"a-shared-secret-of-16");
    let now_s: Option<u64> = u.arbitrary().unwrap_or(None);
    let bound = MarkedRequest {
        authority: value,
        method: Some(b"GET"),
        path: value,
        request_id: value,
    };
    let _ = check_marker(value, &bound, None, now_s);
    let _ = check_marker(value, &bound, Some(&key), now_s);
    // The comparison book under any sequence of events stays within its capacity.
    let capacity = usize::from(u.int_in_range(0..=4u8).unwrap_or(0));
    let mut book = CompareBook::new(capacity);
    for _ in 0..u.int_in_range(0..=32u8).unwrap_or(0) {
        let key = u64::from(u.int_in_range(0..=6u8).unwrap_or(0));
        let answer = Answer {
            status: u.arbitrary().unwrap_or(200),
            latency_ms: u.arbitrary().unwrap_or(0),
            body_digest: u.arbitrary().unwrap_or(None),
        };
        match u.int_in_range(0..=4u8).unwrap_or(0) {
            0 => {
                let shadows = usize::from(u.int_in_range(0..=3u8).unwrap_or(1));
                let _ = book.open(key, shadows, u.arbitrary().unwrap_or(0));
            }
            1 => book.shadow_gone(key),
            2 => {
                let target = usize::from(u.int_in_range(0..=3u8).unwrap_or(0));
                let _ = book.shadow_answered(key, target, answer);
            }
            3 => {
                let _ = book.primary_done(
                    key,
                    u.arbitrary::<bool>().unwrap_or(false).then_some(answer),
                );
            }
            _ => {
                let _ = book.expire(u.arbitrary().unwrap_or(0));
            }
        }
        assert!(
            book.len() <= capacity,
            "the comparison book outgrew its capacity"
        );
    }
}

/// Shadows of every shape, for requests to meet when the generated configuration has none.
pub const SHADOW_PLAN: &str = r#"{
  "rules": [
    { "name": "s", "destinations": [ { "name": "a", "cluster": "ca" } ],
      "shadow": [
        { "cluster": "v3", "percent": 50, "compare": true, "compare_body": true,
          "include_body": true, "host_suffix": "-shadow" },
        { "cluster": "v4", "methods": ["POST"], "remove_headers": [], "compare": true },
        { "cluster": "v5", "remove_headers": ["x-a", "baggage"], "timeout_ms": 10 } ] }
  ]
}"#;

/// Target `config_structured`: a JSON configuration assembled from the real field names and
/// value shapes, so the fuzzer reaches the deep checks instead of stopping at JSON syntax.
pub fn config_structured(data: &[u8]) {
    let mut u = Unstructured::new(data);
    if let Ok(config) = plugin_config(&mut u) {
        let bytes = serde_json::to_vec(&config).unwrap_or_default();
        let _ = Plan::from_json(&bytes);
    }
}

/// Target `decision`: a compiled plan (structured, or a rich fixed one when the generated
/// config is invalid) and a hostile request: any header names and bytes, repeated names,
/// huge values, odd cookie separators, percent-encoding, arbitrary breaker states.
pub fn decision(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let plan = plugin_config(&mut u)
        .ok()
        .and_then(|c| Plan::from_json(&serde_json::to_vec(&c).ok()?).ok())
        .or_else(|| Plan::from_json(RICH_PLAN.as_bytes()).ok());
    let Some(plan) = plan else {
        panic!("the fixed plan must compile");
    };
    let Ok(headers) = request_headers(&mut u) else {
        return;
    };
    let route_name: Option<Vec<u8>> = u.arbitrary().unwrap_or(None);
    let views: Vec<BreakerView> = (0..u.int_in_range(0..=8u8).unwrap_or(0))
        .map(|_| BreakerView {
            state: match u.int_in_range(0..=2u8).unwrap_or(0) {
                0 => State::Closed,
                1 => State::Open,
                _ => State::HalfOpen,
            },
            generation: u.arbitrary().unwrap_or(0),
        })
        .collect();
    let mut rng = Rng::from_seed(u.arbitrary().unwrap_or(0));
    let base = Request::new(&headers, route_name.as_deref());
    // Lanes as the host screens and writes them (any clock, valid or not).
    let now_s: Option<u64> = u.arbitrary().unwrap_or(None);
    let incoming = plan.lanes.screen(&base, || now_s);
    let request = base.with_lanes(&incoming);
    if let Decision::Routed(routed) = plan.decide(&request, &mut rng, &views) {
        // What the host layer then indexes must exist.
        let rule = plan.rules.get(routed.rule);
        let dest = rule.and_then(|r| r.destinations.get(routed.destination));
        assert!(dest.is_some());
        let start = match (rule.and_then(|r| r.lane.as_ref()), routed.lane, dest) {
            (Some(lane), Some(traffic_split::lane::LaneStep::Started), Some(d)) => {
                Some((lane.carrier, plan.lanes.value_for(&d.name, now_s)))
            }
            _ => None,
        };
        let edits = plan.lanes.edits(
            &request,
            &incoming,
            start.as_ref().map(|(c, v)| (*c, v.as_str())),
        );
        let mut edited = headers.clone();
        traffic_split::lane::apply_edits(&mut edited, &edits);
    }
}

/// A plan that uses every kind of condition and key, for requests to meet when the
/// generated configuration is invalid.
pub const RICH_PLAN: &str = r#"{
  "rules": [
    { "name": "hdr", "match": { "headers": [ { "name": "x-a", "exact": "1" },
        { "name": "x-b", "one_of": ["x", "y"] }, { "name": "x-c", "present": false } ] },
      "destinations": [ { "name": "a", "cluster": "ca" } ] },
    { "name": "ck", "match": { "cookies": [ { "name": "beta", "prefix": "y" } ],
        "query": [ { "name": "q", "suffix": "%2F" } ] },
      "sticky": { "cookie": "uid", "assign_cookie": true },
      "destinations": [ { "name": "a", "cluster": "ca", "weight": 3 },
                        { "name": "b", "cluster": "cb", "weight": 7 } ] },
    { "name": "path", "match": { "path": { "prefix": "/p" }, "methods": ["GET", "POST"],
        "authority": { "suffix": ".example.com" }, "route_names": ["r1"] },
      "sticky": { "query": "user" }, "hash": "unleash",
      "destinations": [ { "name": "a", "cluster": "ca", "weight": 40,
                          "fallback": "b", "breaker": {} },
                        { "name": "b", "cluster": "cb", "weight": 60,
                          "fallback": "c", "breaker": {} },
                        { "name": "c", "cluster": "cc", "weight": 0 } ] },
    { "name": "lane", "match": { "headers": [ { "name": "x-b", "present": true } ] },
      "propagate": { "baggage": "split-lane" }, "from_lane": true, "lane_fallback": "b",
      "destinations": [ { "name": "a", "cluster": "ca" }, { "name": "b", "cluster": "cb" } ] },
    { "name": "all", "sticky": { "header": "x-user-id" }, "propagate": { "header": "x-split-lane" },
      "destinations": [ { "name": "a", "cluster": "ca", "weight": 1,
                          "fallback": "b", "breaker": { "half_open_percent": 50 } },
                        { "name": "b", "cluster": "cb", "weight": 1 } ] }
  ]
}"#;

/// Header names the plans look at, and ones Envoy always sends.
const HEADER_NAMES: &[&str] = &[
    ":path",
    ":method",
    ":authority",
    "cookie",
    "x-user-id",
    "x-a",
    "x-b",
    "x-c",
    "x-split-cluster",
    "x-split-variant",
    "x-shadow-request",
    "baggage",
    "x-split-lane",
];

/// Value fragments that meet the parsers' edge cases.
const VALUE_PARTS: &[&[u8]] = &[
    b"/p?user=",
    b"?q=a%2F",
    b"%",
    b"%2",
    b"%zz",
    b"%C3%A9",
    b"uid=",
    b"; ",
    b";;",
    b"=",
    b"beta=yes",
    b" ",
    b"\t",
    b"\xff\xfe",
    b"&",
    b"&&user=&user=1",
    b"GET",
    b"x.example.com",
    b"X.EXAMPLE.COM:443",
    b"split-lane=a",
    b";sig=1800000000.0123456789abcdef",
    b";sig=v2.1800000000.0123456789abcdef0123456789abcdef",
    b",",
];

fn request_headers(u: &mut Unstructured<'_>) -> Result<Vec<HeaderPair>> {
    let count = u.int_in_range(0..=24u8)?;
    let mut headers = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let name = if u.ratio(1, 5)? {
            u.arbitrary::<String>()?
        } else {
            (*u.choose(HEADER_NAMES)?).to_string()
        };
        let mut value = Vec::new();
        for _ in 0..u.int_in_range(0..=6u8)? {
            match u.int_in_range(0..=3u8)? {
                0 => value.extend_from_slice(u.arbitrary::<&[u8]>()?),
                1 => {
                    // A huge value (60 KiB, as the soak's hostile cookies).
                    let byte = u.arbitrary::<u8>()?;
                    value.extend(std::iter::repeat_n(byte, 60 * 1024));
                }
                _ => value.extend_from_slice(u.choose(VALUE_PARTS)?),
            }
        }
        headers.push((name, value));
    }
    Ok(headers)
}

// ---- the structure-aware configuration generator ----

fn plugin_config(u: &mut Unstructured<'_>) -> Result<Value> {
    let mut top = Map::new();
    maybe(u, &mut top, "cluster_header", header_name)?;
    maybe(u, &mut top, "variant_header", header_name)?;
    maybe(u, &mut top, "debug_header", |u| {
        Ok(Value::Bool(u.arbitrary()?))
    })?;
    maybe(u, &mut top, "max_in_flight", number)?;
    maybe(u, &mut top, "max_buffered_body_bytes", number)?;
    maybe(u, &mut top, "shadow_marker_secret", |u| {
        Ok(if u.ratio(1, 2)? {
            Value::from("a-shared-secret-of-24-chars")
        } else {
            string(u)?
        })
    })?;
    maybe(u, &mut top, "lane_secret", |u| {
        Ok(if u.ratio(1, 2)? {
            Value::from("a-shared-lane-secret-24ch")
        } else {
            string(u)?
        })
    })?;
    maybe(u, &mut top, "clear_route_cache", |u| {
        Ok(Value::from(*u.choose(&["auto", "always", "never", ""])?))
    })?;
    let rules = list(u, 0..=4, rule)?;
    top.insert("rules".into(), rules);
    mutate(u, &mut top)?;
    Ok(Value::Object(top))
}

fn rule(u: &mut Unstructured<'_>) -> Result<Value> {
    let mut r = Map::new();
    r.insert("name".into(), name(u)?);
    maybe(u, &mut r, "match", match_)?;
    maybe(u, &mut r, "sticky", sticky)?;
    maybe(u, &mut r, "salt", string)?;
    maybe(u, &mut r, "hash", |u| {
        Ok(Value::from(*u.choose(&["fine", "unleash", "Fine", ""])?))
    })?;
    r.insert("destinations".into(), list(u, 0..=4, destination)?);
    maybe(u, &mut r, "shadow", |u| list(u, 0..=3, shadow))?;
    maybe(u, &mut r, "rollout", rollout)?;
    maybe(u, &mut r, "propagate", |u| {
        let mut p = Map::new();
        if u.ratio(1, 2)? {
            p.insert("header".into(), header_name(u)?);
        } else {
            p.insert(
                "baggage".into(),
                Value::from(*u.choose(&["split-lane", "lane", "a b", ""])?),
            );
        }
        mutate(u, &mut p)?;
        Ok(Value::Object(p))
    })?;
    maybe(u, &mut r, "from_lane", |u| Ok(Value::Bool(u.arbitrary()?)))?;
    maybe(u, &mut r, "lane_fallback", name)?;
    maybe(u, &mut r, "fault", |u| {
        let mut f = Map::new();
        maybe(u, &mut f, "percent", number)?;
        maybe(u, &mut f, "delay_ms", number)?;
        maybe(u, &mut f, "abort_status", number)?;
        maybe(u, &mut f, "abort_grpc_status", |u| {
            Ok(if u.ratio(1, 2)? {
                Value::from(*u.choose(&["UNAVAILABLE", "OK", "INTERNAL", "unavailable"])?)
            } else {
                number(u)?
            })
        })?;
        maybe(u, &mut f, "destinations", |u| list(u, 0..=3, name))?;
        mutate(u, &mut f)?;
        Ok(Value::Object(f))
    })?;
    mutate(u, &mut r)?;
    Ok(Value::Object(r))
}

fn rollout(u: &mut Unstructured<'_>) -> Result<Value> {
    let mut r = Map::new();
    r.insert("destination".into(), name(u)?);
    r.insert(
        "start".into(),
        Value::from(*u.choose(&[
            "2026-12-01T10:00:00Z",
            "2026-12-01T10:00:00+02:00",
            "1970-01-01T00:00:00Z",
            "9999-12-31T23:59:59Z",
            "2026-12-01 10:00:00",
            "2026-02-30T10:00:00Z",
            "",
        ])?),
    );
    let steps = list(u, 0..=5, |u| {
        let mut step = Map::new();
        maybe(u, &mut step, "percent", number)?;
        maybe(u, &mut step, "hold_s", number)?;
        mutate(u, &mut step)?;
        Ok(Value::Object(step))
    })?;
    r.insert("steps".into(), steps);
    maybe(u, &mut r, "abort_on_breaker_open", |u| {
        Ok(Value::Bool(u.arbitrary()?))
    })?;
    mutate(u, &mut r)?;
    Ok(Value::Object(r))
}

fn match_(u: &mut Unstructured<'_>) -> Result<Value> {
    match_at(u, 0)
}

/// A match object; `not` and `any_of` nest it, a little deeper than the filter allows.
fn match_at(u: &mut Unstructured<'_>, depth: u8) -> Result<Value> {
    let mut m = Map::new();
    maybe(u, &mut m, "source_ips", |u| {
        list(u, 0..=3, |u| {
            Ok(if u.ratio(1, 4)? {
                string(u)?
            } else {
                Value::from(*u.choose(&[
                    "10.0.0.0/8",
                    "127.0.0.1",
                    "::1",
                    "2001:db8::/32",
                    "::ffff:10.0.0.0/104",
                    "1.2.3.4/33",
                    "01.2.3.4",
                    "0.0.0.0/0",
                ])?)
            })
        })
    })?;
    if depth < 5 {
        maybe(u, &mut m, "not", |u| match_at(u, depth + 1))?;
        maybe(u, &mut m, "any_of", |u| {
            list(u, 0..=3, |u| match_at(u, depth + 1))
        })?;
    }
    for key in ["headers", "cookies", "query"] {
        maybe(u, &mut m, key, |u| list(u, 0..=3, named_op))?;
    }
    maybe(u, &mut m, "path", string_op)?;
    maybe(u, &mut m, "authority", string_op)?;
    maybe(u, &mut m, "methods", |u| list(u, 0..=3, method))?;
    maybe(u, &mut m, "route_names", |u| list(u, 0..=3, string))?;
    mutate(u, &mut m)?;
    Ok(Value::Object(m))
}

fn named_op(u: &mut Unstructured<'_>) -> Result<Value> {
    let mut op = match string_op(u)? {
        Value::Object(m) => m,
        other => return Ok(other),
    };
    op.insert("name".into(), header_name(u)?);
    Ok(Value::Object(op))
}

fn string_op(u: &mut Unstructured<'_>) -> Result<Value> {
    let mut op = Map::new();
    for _ in 0..u.int_in_range(0..=2u8)? {
        match u.int_in_range(0..=4u8)? {
            0 => op.insert("exact".into(), string(u)?),
            1 => op.insert("prefix".into(), string(u)?),
            2 => op.insert("suffix".into(), string(u)?),
            3 => op.insert("one_of".into(), list(u, 0..=3, string)?),
            4 if u.ratio(1, 2)? => op.insert(
                "regex".into(),
                if u.ratio(1, 3)? {
                    string(u)?
                } else {
                    Value::from(*u.choose(&[
                        "^a+$",
                        "(a|b)*c",
                        "[0-9]{2,4}",
                        "(a*)*b",
                        "x{1000}",
                        "[",
                        "\\d+",
                        ".*",
                        "a{2}a",
                        "(?i)abc",
                        "\\bword",
                    ])?)
                },
            ),
            _ => op.insert("present".into(), Value::Bool(u.arbitrary()?)),
        };
    }
    Ok(Value::Object(op))
}

fn sticky(u: &mut Unstructured<'_>) -> Result<Value> {
    let mut s = Map::new();
    for key in ["header", "cookie", "query"] {
        if u.ratio(1, 3)? {
            s.insert(key.into(), header_name(u)?);
        }
    }
    maybe(u, &mut s, "assign_cookie", |u| {
        Ok(Value::Bool(u.arbitrary()?))
    })?;
    maybe(u, &mut s, "cookie_max_age_s", number)?;
    maybe(u, &mut s, "cookie_secure", |u| {
        Ok(Value::Bool(u.arbitrary()?))
    })?;
    maybe(u, &mut s, "cookie_domain", |u| {
        Ok(Value::from(*u.choose(&[
            "example.com",
            ".example.com",
            "a b",
            "",
            "x;y",
        ])?))
    })?;
    maybe(u, &mut s, "cookie_same_site", |u| {
        Ok(Value::from(*u.choose(&["Lax", "Strict", "None", "lax"])?))
    })?;
    mutate(u, &mut s)?;
    Ok(Value::Object(s))
}

fn destination(u: &mut Unstructured<'_>) -> Result<Value> {
    let mut d = Map::new();
    d.insert("name".into(), name(u)?);
    d.insert("cluster".into(), name(u)?);
    maybe(u, &mut d, "weight", number)?;
    maybe(u, &mut d, "fallback", name)?;
    maybe(u, &mut d, "breaker", breaker)?;
    mutate(u, &mut d)?;
    Ok(Value::Object(d))
}

fn breaker(u: &mut Unstructured<'_>) -> Result<Value> {
    let mut b = Map::new();
    for key in [
        "failure_ratio",
        "min_requests",
        "window_s",
        "open_s",
        "half_open_percent",
    ] {
        maybe(u, &mut b, key, number)?;
    }
    maybe(u, &mut b, "failure_statuses", |u| {
        list(u, 0..=3, |u| {
            Ok(match u.int_in_range(0..=2u8)? {
                0 => number(u)?,
                1 => Value::from(*u.choose(&["5xx", "4xx", "gateway-error", "x"])?),
                _ => string(u)?,
            })
        })
    })?;
    maybe(u, &mut b, "grpc_failure_codes", |u| {
        list(u, 0..=3, |u| {
            Ok(match u.int_in_range(0..=2u8)? {
                0 => number(u)?,
                1 => Value::from(*u.choose(&["UNAVAILABLE", "INTERNAL", "OK", "unavailable"])?),
                _ => string(u)?,
            })
        })
    })?;
    maybe(u, &mut b, "slow_ms", number)?;
    maybe(u, &mut b, "consecutive_failures", number)?;
    maybe(u, &mut b, "count_local_replies", |u| {
        Ok(Value::Bool(u.arbitrary()?))
    })?;
    mutate(u, &mut b)?;
    Ok(Value::Object(b))
}

fn shadow(u: &mut Unstructured<'_>) -> Result<Value> {
    let mut s = Map::new();
    s.insert("cluster".into(), name(u)?);
    maybe(u, &mut s, "name", name)?;
    for key in ["percent", "timeout_ms", "max_body_bytes"] {
        maybe(u, &mut s, key, number)?;
    }
    maybe(u, &mut s, "host_suffix", string)?;
    maybe(u, &mut s, "methods", |u| list(u, 0..=3, method))?;
    maybe(u, &mut s, "remove_headers", |u| list(u, 0..=3, header_name))?;
    for key in ["include_body", "compare", "compare_body"] {
        maybe(u, &mut s, key, |u| Ok(Value::Bool(u.arbitrary()?)))?;
    }
    mutate(u, &mut s)?;
    Ok(Value::Object(s))
}

/// Sometimes puts `key` in, generated by `value`.
fn maybe(
    u: &mut Unstructured<'_>,
    map: &mut Map<String, Value>,
    key: &str,
    value: impl FnOnce(&mut Unstructured<'_>) -> Result<Value>,
) -> Result<()> {
    if u.ratio(1, 2)? {
        let v = value(u)?;
        map.insert(key.into(), v);
    }
    Ok(())
}

/// Now and then a wrong type or an unknown field, so type and unknown-field errors are
/// reached at every depth too.
fn mutate(u: &mut Unstructured<'_>, map: &mut Map<String, Value>) -> Result<()> {
    if u.ratio(1, 8)? {
        let keys: Vec<String> = map.keys().cloned().collect();
        if let Ok(key) = u.choose(&keys) {
            let key = key.clone();
            map.insert(key, any_scalar(u)?);
        }
    }
    if u.ratio(1, 16)? {
        map.insert(u.arbitrary::<String>()?, any_scalar(u)?);
    }
    Ok(())
}

fn list(
    u: &mut Unstructured<'_>,
    len: std::ops::RangeInclusive<u8>,
    mut item: impl FnMut(&mut Unstructured<'_>) -> Result<Value>,
) -> Result<Value> {
    let n = u.int_in_range(len)?;
    (0..n)
        .map(|_| item(u))
        .collect::<Result<Vec<_>>>()
        .map(Value::Array)
}

fn any_scalar(u: &mut Unstructured<'_>) -> Result<Value> {
    Ok(match u.int_in_range(0..=4u8)? {
        0 => Value::Null,
        1 => Value::Bool(u.arbitrary()?),
        2 => number(u)?,
        3 => string(u)?,
        _ => Value::Array(vec![]),
    })
}

fn number(u: &mut Unstructured<'_>) -> Result<Value> {
    Ok(match u.int_in_range(0..=5u8)? {
        0 => Value::from(u.int_in_range(0..=100u32)?),
        1 => Value::from(u.arbitrary::<u64>()?),
        2 => Value::from(u.arbitrary::<i64>()?),
        3 => serde_json::Number::from_f64(u.arbitrary::<f64>()?).map_or(Value::Null, Value::Number),
        4 => Value::from(*u.choose(&[
            0u64,
            1,
            99,
            100,
            101,
            10_000,
            4_294_967_295,
            4_294_967_296,
        ])?),
        _ => Value::from(f64::from(u.int_in_range(0..=10_000u32)?) / 100.0),
    })
}

fn name(u: &mut Unstructured<'_>) -> Result<Value> {
    Ok(if u.ratio(1, 6)? {
        string(u)?
    } else {
        Value::from(*u.choose(&["a", "b", "c", "canary", "stable", "ca", "cb", "v3"])?)
    })
}

fn header_name(u: &mut Unstructured<'_>) -> Result<Value> {
    Ok(if u.ratio(1, 6)? {
        string(u)?
    } else {
        Value::from(*u.choose(&[
            "x-user-id",
            "X-User-Id",
            "uid",
            "x-split-cluster",
            ":path",
            "host",
            "cookie",
            "__Host-uid",
            "x y",
        ])?)
    })
}

fn method(u: &mut Unstructured<'_>) -> Result<Value> {
    Ok(Value::from(
        *u.choose(&["GET", "POST", "get", "", "PURGE"])?,
    ))
}

fn string(u: &mut Unstructured<'_>) -> Result<Value> {
    Ok(Value::from(u.arbitrary::<String>()?))
}
