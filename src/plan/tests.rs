//! Compile tests: good configurations, defaults, and every error with its exact message.

use super::*;
use crate::breaker::StatusMatch;
use crate::rng::sample_threshold;
use std::time::Duration;

/// The error message `json` is refused with (shared by the plan's test modules).
pub(super) fn err(json: &str) -> String {
    Plan::from_json(json.as_bytes()).unwrap_err().to_string()
}

fn rule(body: &str) -> String {
    format!(r#"{{"rules":[{body}]}}"#)
}

const DESTS: &str = r#""destinations":[{"name":"a","cluster":"ca"}]"#;

// Builders for the error table: each wraps the part of a configuration a case gets wrong.

/// The whole configuration, as written.
fn top(json: &str) -> String {
    json.to_string()
}

/// A rule named `r` with one destination and `fields`.
fn in_rule(fields: &str) -> String {
    rule(&format!(r#"{{"name":"r",{fields},{DESTS}}}"#))
}

/// A rule named `r` with the destinations `list`.
fn dests(list: &str) -> String {
    rule(&format!(r#"{{"name":"r","destinations":[{list}]}}"#))
}

fn sticky(fields: &str) -> String {
    in_rule(&format!(r#""sticky":{{{fields}}}"#))
}

fn matching(fields: &str) -> String {
    in_rule(&format!(r#""match":{{{fields}}}"#))
}

/// One shadow target with `fields`.
fn shadow(fields: &str) -> String {
    in_rule(&format!(r#""shadow":[{{{fields}}}]"#))
}

/// Destination `a` with a breaker of `fields`, falling back to `b`.
fn breaker(fields: &str) -> String {
    dests(&format!(
        r#"{{"name":"a","cluster":"c","fallback":"b","breaker":{{{fields}}}}},{{"name":"b","cluster":"d"}}"#
    ))
}

#[test]
fn the_documented_example_compiles() {
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

/// Each bad configuration and the exact message an operator reads in Envoy's log: one case a
/// line, built from the part of the configuration that is wrong.
#[rustfmt::skip]
#[test]
fn bad_configs_name_the_field_and_the_reason() {
    let cases: Vec<(String, &str)> = vec![
        (top("{"), "invalid JSON: EOF while parsing an object at line 1 column 1"),
        (top(r#"{"rules": [}"#), "invalid JSON: expected value at line 1 column 12"),
        (top(r#"{} x"#), "invalid JSON: trailing characters at line 1 column 4"),
        (top(r#"{"rulez": []}"#), "rulez: unknown field, expected one of: cluster_header, variant_header, debug_header, rules, max_in_flight, max_buffered_body_bytes, clear_route_cache, shadow_marker_secret, lane_secret, body_max_bytes"),
        (in_rule(r#""from_lane":true"#), "rules[0].from_lane: needs \"propagate\": where the lane is read from and passed on"),
        (in_rule(r#""lane_fallback":"a""#), "rules[0].lane_fallback: only applies with \"from_lane\": true"),
        (in_rule(r#""propagate":{"header":"x-lane"},"lane_fallback":"a""#), "rules[0].lane_fallback: only applies with \"from_lane\": true"),
        (in_rule(r#""propagate":{"header":"x-lane"},"from_lane":true,"lane_fallback":"b""#), "rules[0].lane_fallback: \"b\" is not a destination of this rule"),
        (in_rule(r#""propagate":{}"#), "rules[0].propagate: must set exactly one of \"header\" and \"baggage\""),
        (in_rule(r#""propagate":{"header":"x-lane","baggage":"lane"}"#), "rules[0].propagate: must set exactly one of \"header\" and \"baggage\""),
        (in_rule(r#""propagate":{"header":"x-lane","via":1}"#), "rules[0].propagate.via: unknown field, expected one of: header, baggage"),
        (in_rule(r#""propagate":{"header":"Baggage"}"#), "rules[0].propagate.header: \"Baggage\" is reserved (Envoy, proxies or browsers give it a meaning): use a header name of your own"),
        (in_rule(r#""propagate":{"header":"X-Split-Variant"}"#), "rules[0].propagate.header: must differ from cluster_header and variant_header"),
        (in_rule(r#""propagate":{"baggage":"split lane"}"#), "rules[0].propagate.baggage: \"split lane\" must be a baggage key: 1-64 token characters"),
        (in_rule(r#""from_lane":"yes""#), "rules[0].from_lane: must be true or false, got a string"),
        (top(r#"{"lane_secret":"short"}"#), "lane_secret: must be 16 to 256 visible ASCII characters, got 5 characters"),
        (dests(r#"{"name":"a","cluster":"c","wieght":1}"#), "rules[0].destinations[0].wieght: unknown field, expected one of: name, cluster, weight, fallback, breaker"),
        (dests(r#"{"name":"a","cluster":"c","weight":2.5}"#), "rules[0].destinations[0].weight: must be a whole number from 0 to 4294967295, got 2.5"),
        (dests(r#"{"name":"a","cluster":"c","weight":-1}"#), "rules[0].destinations[0].weight: must be a whole number from 0 to 4294967295, got -1"),
        (rule(r#"{"destinations":[]}"#), "rules[0].name: is required"),
        (rule(&format!(r#"{{"name":"",{DESTS}}}"#)), "rules[0].name: \"\" must be 1-64 characters of [A-Za-z0-9_-]"),
        (rule(&format!(r#"{{"name":"a.b",{DESTS}}}"#)), "rules[0].name: \"a.b\" must be 1-64 characters of [A-Za-z0-9_-]"),
        (format!(r#"{{"rules":[{{"name":"r",{DESTS}}},{{"name":"r",{DESTS}}}]}}"#), "rules[1].name: duplicate rule name \"r\""),
        (dests(r#""#), "rules[0].destinations: must list 1 to 16 destinations, got 0"),
        (dests(&(0..17).map(|i| format!(r#"{{"name":"d{i}","cluster":"c"}}"#)).collect::<Vec<_>>().join(",")), "rules[0].destinations: must list 1 to 16 destinations, got 17"),
        (dests(r#"{"name":"a","cluster":"c"},{"name":"a","cluster":"d"}"#), "rules[0].destinations[1].name: duplicate destination name \"a\" in this rule"),
        (dests(r#"{"name":"a","cluster":"c","weight":0},{"name":"b","cluster":"d","weight":0}"#), "rules[0].destinations: all weights are 0: at least one destination must have a positive weight"),
        (dests(r#"{"name":"a","cluster":"c","weight":2000000}"#), "rules[0].destinations[0].weight: must be at most 1000000, got 2000000"),
        (dests(r#"{"name":"a","cluster":""}"#), "rules[0].destinations[0].cluster: \"\" must be a non-empty cluster name of visible ASCII characters"),
        (dests(r#"{"name":"a","cluster":"c d"}"#), "rules[0].destinations[0].cluster: \"c d\" must be a non-empty cluster name of visible ASCII characters"),
        (rule(r#"{"name":"r","hash":"unleash","destinations":[{"name":"a","cluster":"c","weight":30},{"name":"b","cluster":"d","weight":60}]}"#), "rules[0].destinations: with hash \"unleash\" the weights must sum to 100 (percentages), got 90"),
        (in_rule(r#""hash":"coarse""#), "rules[0].hash: \"coarse\" is not one of \"fine\", \"unleash\""),
        (sticky(r#""header":"x-user","assign_cookie":true"#), "rules[0].sticky.assign_cookie: only applies to a cookie user key (\"cookie\": NAME)"),
        (sticky(r#""header":"x-user","cookie":"uid""#), "rules[0].sticky: must name exactly one user key: \"header\", \"cookie\" or \"query\""),
        (sticky(r#""#), "rules[0].sticky: must name exactly one user key: \"header\", \"cookie\" or \"query\""),
        (sticky(r#""cookie":"uid","cookie_max_age_s":5"#), "rules[0].sticky.cookie_max_age_s: only applies with \"assign_cookie\": true"),
        (sticky(r#""header":"x user""#), "rules[0].sticky.header: \"x user\" is not a valid header name"),
        (sticky(r#""cookie":"a;b""#), "rules[0].sticky.cookie: \"a;b\" is not a valid cookie name"),
        (sticky(r#""cookie":"uid","assign_cookie":true,"cookie_max_age_s":0"#), "rules[0].sticky.cookie_max_age_s: must be at least 1 (Max-Age=0 deletes the cookie at once)"),
        (sticky(r#""cookie":"uid","cookie_secure":true"#), "rules[0].sticky.cookie_secure: only applies with \"assign_cookie\": true"),
        (sticky(r#""cookie":"uid","cookie_domain":"example.com""#), "rules[0].sticky.cookie_domain: only applies with \"assign_cookie\": true"),
        (sticky(r#""cookie":"uid","cookie_same_site":"Strict""#), "rules[0].sticky.cookie_same_site: only applies with \"assign_cookie\": true"),
        (sticky(r#""cookie":"uid","assign_cookie":true,"cookie_same_site":"None""#), "rules[0].sticky.cookie_same_site: \"None\" requires \"cookie_secure\": true (browsers reject SameSite=None cookies without Secure)"),
        (sticky(r#""cookie":"uid","assign_cookie":true,"cookie_same_site":"lax""#), "rules[0].sticky.cookie_same_site: \"lax\" is not one of \"Lax\", \"Strict\", \"None\""),
        (sticky(r#""cookie":"uid","assign_cookie":true,"cookie_secure":"yes""#), "rules[0].sticky.cookie_secure: must be true or false, got a string"),
        (sticky(r#""cookie":"__Host-uid","assign_cookie":true"#), "rules[0].sticky.cookie: \"__Host-uid\" requires \"cookie_secure\": true (browsers reject __Host- cookies without Secure)"),
        (sticky(r#""cookie":"__secure-uid","assign_cookie":true,"cookie_secure":false"#), "rules[0].sticky.cookie: \"__secure-uid\" requires \"cookie_secure\": true (browsers reject __Secure- cookies without Secure)"),
        (sticky(r#""cookie":"__Host-uid","assign_cookie":true,"cookie_secure":true,"cookie_domain":"example.com""#), "rules[0].sticky.cookie_domain: must not be set for \"__Host-uid\" (browsers reject __Host- cookies with a Domain)"),
        (sticky(r#""cookie":"uid","assign_cookie":true,"cookie_domain":"example.com; Secure""#), "rules[0].sticky.cookie_domain: \"example.com; Secure\" is not a domain name"),
        (sticky(r#""cookie":"uid","assign_cookie":true,"cookie_domain":"""#), "rules[0].sticky.cookie_domain: \"\" is not a domain name"),
        (sticky(r#""cookie":"uid","assign_cookie":true,"cookie_secure":true,"cookie_samesite":"None""#), "rules[0].sticky.cookie_samesite: unknown field, expected one of: header, cookie, query, assign_cookie, cookie_max_age_s, cookie_secure, cookie_domain, cookie_same_site"),
        (top(r#"{"cluster_header":":authority"}"#), "cluster_header: \":authority\" is a pseudo-header: use a header name of your own"),
        (top(r#"{"cluster_header":"Host"}"#), "cluster_header: \"Host\" is reserved (Envoy, proxies or browsers give it a meaning): use a header name of your own"),
        (top(r#"{"cluster_header":"x-shadow-request"}"#), "cluster_header: \"x-shadow-request\" is reserved (Envoy, proxies or browsers give it a meaning): use a header name of your own"),
        (top(r#"{"variant_header":"cookie"}"#), "variant_header: \"cookie\" is reserved (Envoy, proxies or browsers give it a meaning): use a header name of your own"),
        (top(r#"{"variant_header":"content-length"}"#), "variant_header: \"content-length\" is reserved (Envoy, proxies or browsers give it a meaning): use a header name of your own"),
        (top(r#"{"cluster_header":"x-envoy-upstream-alt-stat-name"}"#), "cluster_header: \"x-envoy-upstream-alt-stat-name\" is reserved (Envoy, proxies or browsers give it a meaning): use a header name of your own"),
        (top(r#"{"variant_header":"Sec-Fetch-Site"}"#), "variant_header: \"Sec-Fetch-Site\" is reserved (Envoy, proxies or browsers give it a meaning): use a header name of your own"),
        (top(r#"{"cluster_header":"bad header"}"#), "cluster_header: \"bad header\" is not a valid header name"),
        (top(r#"{"cluster_header":""}"#), "cluster_header: \"\" is not a valid header name"),
        (top(r#"{"variant_header":"X-Split-Cluster"}"#), "variant_header: must differ from cluster_header"),
        (matching(r#""headers":[{"name":"x-a"}]"#), "rules[0].match.headers[0]: needs exactly one of \"exact\", \"prefix\", \"suffix\", \"one_of\", \"present\", \"regex\""),
        (matching(r#""headers":[{"name":"x-a","exact":"1","prefix":"1"}]"#), "rules[0].match.headers[0]: needs exactly one of \"exact\", \"prefix\", \"suffix\", \"one_of\", \"present\", \"regex\""),
        (matching(r#""headers":[{"name":"x a","exact":"1"}]"#), "rules[0].match.headers[0].name: \"x a\" is not a valid header name"),
        (matching(r#""cookies":[{"name":"c","one_of":[]}]"#), "rules[0].match.cookies[0].one_of: must list at least one value"),
        (matching(r#""query":[{"name":"","present":true}]"#), "rules[0].match.query[0].name: must not be empty"),
        (matching(r#""path":{"exact":"/a","prefix":"/"}"#), "rules[0].match.path: needs exactly one of \"exact\", \"prefix\", \"suffix\", \"regex\""),
        (matching(r#""authority":{"present":true}"#), "rules[0].match.authority.present: unknown field, expected one of: exact, prefix, suffix, regex"),
        (matching(r#""methods":[]"#), "rules[0].match.methods: must not be empty (omit the field to match everything)"),
        (matching(r#""methods":["GET","P OST"]"#), "rules[0].match.methods[1]: \"P OST\" is not an HTTP method token"),
        (top(r#"[1, 2]"#), "must be an object, got an array"),
        (dests(r#"{"name":"a","cluster":"c","breaker":{}},{"name":"b","cluster":"d"}"#), "rules[0].destinations[0].breaker: needs a \"fallback\": the destination that takes the traffic while it is open"),
        (dests(r#"{"name":"a","cluster":"c","fallback":"b"},{"name":"b","cluster":"d"}"#), "rules[0].destinations[0].fallback: only applies with a \"breaker\""),
        (dests(r#"{"name":"a","cluster":"c","fallback":"x","breaker":{}},{"name":"b","cluster":"d"}"#), "rules[0].destinations[0].fallback: \"x\" is not a destination of this rule"),
        (dests(r#"{"name":"a","cluster":"c","fallback":"a","breaker":{}}"#), "rules[0].destinations[0].fallback: a destination cannot fall back to itself"),
        (dests(r#"{"name":"a","cluster":"c","fallback":"b","breaker":{}},{"name":"b","cluster":"d","fallback":"c","breaker":{}},{"name":"c","cluster":"e","fallback":"b","breaker":{}}"#), "rules[0].destinations: fallback chain loops: a -> b -> c -> b"),
        (breaker(r#""failure_ratio":0"#), "rules[0].destinations[0].breaker.failure_ratio: must be above 0 (a share of failed requests, e.g. 0.2)"),
        (breaker(r#""failure_ratio":1.5"#), "rules[0].destinations[0].breaker.failure_ratio: must be a number from 0 to 1, got 1.5"),
        (breaker(r#""open_s":0"#), "rules[0].destinations[0].breaker.open_s: must be at least 1"),
        (breaker(r#""half_open_percent":0"#), "rules[0].destinations[0].breaker.half_open_percent: must be above 0, or the breaker could never close again"),
        (breaker(r#""failure_statuses":[]"#), "rules[0].destinations[0].breaker.failure_statuses: must list at least one status or class"),
        (breaker(r#""failure_statuses":["5xx","6xx"]"#), "rules[0].destinations[0].breaker.failure_statuses[1]: \"6xx\" is not a status code (100-599) or class (\"1xx\" to \"5xx\")"),
        (breaker(r#""failure_statuses":[700]"#), "rules[0].destinations[0].breaker.failure_statuses[0]: \"700\" is not a status code (100-599) or class (\"1xx\" to \"5xx\")"),
        (breaker(r#""grpc_failure_codes":["UNAVAILABLE","unavailable"]"#), "rules[0].destinations[0].breaker.grpc_failure_codes[1]: is not a gRPC status code (1 to 16) or name (e.g. \"UNAVAILABLE\")"),
        (breaker(r#""grpc_failure_codes":[17]"#), "rules[0].destinations[0].breaker.grpc_failure_codes[0]: is not a gRPC status code (1 to 16) or name (e.g. \"UNAVAILABLE\")"),
        (breaker(r#""grpc_failure_codes":["OK"]"#), "rules[0].destinations[0].breaker.grpc_failure_codes[0]: OK (0) is never a failure"),
        (breaker(r#""grpc_failure_codes":[true]"#), "rules[0].destinations[0].breaker.grpc_failure_codes[0]: must be a gRPC status code or name, got a boolean"),
        (breaker(r#""slow_ms":0"#), "rules[0].destinations[0].breaker.slow_ms: must be at least 1"),
        (breaker(r#""consecutive_failures":0"#), "rules[0].destinations[0].breaker.consecutive_failures: must be at least 1"),
        (breaker(r#""treshold":1"#), "rules[0].destinations[0].breaker.treshold: unknown field, expected one of: failure_ratio, min_requests, window_s, open_s, half_open_percent, failure_statuses, count_local_replies, grpc_failure_codes, slow_ms, consecutive_failures"),
        (top(r#"{"max_in_flight": 0}"#), "max_in_flight: must be at least 1 (use \"percent\": 0 to turn shadowing off)"),
        (shadow(r#""cluster":"s","percent":101"#), "rules[0].shadow[0].percent: must be a number from 0 to 100, got 101"),
        (shadow(r#""percent":1"#), "rules[0].shadow[0].cluster: is required"),
        (shadow(r#""cluster":"s","timeout_ms":0"#), "rules[0].shadow[0].timeout_ms: must be at least 1"),
        (shadow(r#""cluster":"s","compare_body":true"#), "rules[0].shadow[0].compare_body: only applies with \"compare\": true"),
        (shadow(r#""cluster":"s","remove_headers":["bad header"]"#), "rules[0].shadow[0].remove_headers[0]: \"bad header\" is not a valid header name"),
        (shadow(r#""cluster":"s","host_suffix":"a b""#), "rules[0].shadow[0].host_suffix: \"a b\" must be visible ASCII characters"),
        (in_rule(r#""shadow":[{"cluster":"s"},{"cluster":"s"}]"#), "rules[0].shadow[1].name: duplicate shadow target \"s\" in this rule"),
        (format!(r#"{{"rules":[{{"name":"a",{DESTS},"shadow":[{{"name":"x","cluster":"s1"}}]}},{{"name":"b",{DESTS},"shadow":[{{"name":"x","cluster":"s2"}}]}}]}}"#), "rules[1].shadow[0].name: shadow name \"x\" already stands for cluster \"s1\"; give this one another \"name\""),
        (shadow(r#""cluster":"s","methods":[]"#), "rules[0].shadow[0].methods: must not be empty (omit the field to match everything)"),
        (shadow(r#""cluster":"s","mirror":true"#), "rules[0].shadow[0].mirror: unknown field, expected one of: name, cluster, percent, timeout_ms, host_suffix, methods, include_body, max_body_bytes, remove_headers, compare, compare_body"),
        (top(r#"{"rules": {}}"#), "rules: must be an array, got an object"),
        (top(r#"{"max_buffered_body_bytes": 4294967295}"#), "max_buffered_body_bytes: must be a whole number from 0 to 268435456, got 4294967295"),
        (shadow(r#""cluster":"s","max_body_bytes":268435457"#), "rules[0].shadow[0].max_body_bytes: must be a whole number from 0 to 268435456, got 268435457"),
        (top(r#"{"shadow_marker_secret": "short"}"#), "shadow_marker_secret: must be 16 to 256 visible ASCII characters, got 5 characters"),
        (top(r#"{"shadow_marker_secret": "sixteen chars with spaces"}"#), "shadow_marker_secret: must be 16 to 256 visible ASCII characters, got 25 characters"),
        (top(r#"{"debug_header": "yes"}"#), "debug_header: must be true or false, got a string"),
        (rule(r#"{"name":"r"}"#), "rules[0].destinations: is required"),
        (rule(r#"{"name":7,"destinations":[]}"#), "rules[0].name: must be a string, got a number"),
        (matching(r#""methods":["GET",1]"#), "rules[0].match.methods[1]: must be a string, got a number"),
        (matching(r#""headers":[{"name":"x","exact":"1","regex":"."}]"#), "rules[0].match.headers[0]: needs exactly one of \"exact\", \"prefix\", \"suffix\", \"one_of\", \"present\", \"regex\""),
        (matching(r#""headers":[{"name":"x","rgx":"."}]"#), "rules[0].match.headers[0].rgx: unknown field, expected one of: name, exact, prefix, suffix, one_of, present, regex"),
        (matching(r#""cookies":[{"name":"c","regex":"(a"}]"#), "rules[0].match.cookies[0].regex: found open group without closing ')'"),
        (matching(r#""path":{"regex":"/(a|b"}"#), "rules[0].match.path.regex: found open group without closing ')'"),
        (matching(r#""authority":{"regex":"x{99999}"}"#), "rules[0].match.authority.regex: compiles to more than 1280 bytes (the regex size limit): use a simpler pattern"),
        (matching(r#""any_of":[{"query":[{"name":"q","regex":"(a)\\1"}]}]"#), "rules[0].match.any_of[0].query[0].regex: backreferences are not supported"),
        (sticky(r#""cookie":"uid","assign_cookie":true,"cookie_max_age_s":-5"#), "rules[0].sticky.cookie_max_age_s: must be a whole number from 0 to 4294967295, got -5"),
        (matching(r#""route_names":[]"#), "rules[0].match.route_names: must not be empty (omit the field to match everything)"),
        (matching(r#""source_ips":[]"#), "rules[0].match.source_ips: must not be empty (omit the field to match everything)"),
        (matching(r#""source_ips":["10.0.0.0/8","10.1.2.3/16"]"#), "rules[0].match.source_ips[1]: \"10.1.2.3/16\" has bits set past its prefix length: write the range's first address"),
        (matching(r#""source_ips":["fe80::/129"]"#), "rules[0].match.source_ips[0]: \"fe80::/129\": the prefix length must be 0 to 128"),
        (matching(r#""source_ips":["localhost"]"#), "rules[0].match.source_ips[0]: \"localhost\" is not an IPv4 or IPv6 address or CIDR range"),
        (matching(r#""not":{}"#), "rules[0].match.not: must have at least one condition"),
        (matching(r#""any_of":[]"#), "rules[0].match.any_of: must list at least one match object"),
        (matching(r#""any_of":[{"path":{"exact":"/"}},{}]"#), "rules[0].match.any_of[1]: must have at least one condition"),
        (matching(r#""any_of":[{"headers":[{"name":"x"}]}]"#), "rules[0].match.any_of[0].headers[0]: needs exactly one of \"exact\", \"prefix\", \"suffix\", \"one_of\", \"present\", \"regex\""),
        (matching(r#""not":{"nope":1}"#), "rules[0].match.not.nope: unknown field, expected one of: headers, cookies, query, path, methods, authority, route_names, source_ips, not, any_of, body"),
        (matching(r#""any_of":[7]"#), "rules[0].match.any_of[0]: must be an object, got a number"),
        (matching(r#""not":{"not":{"not":{"not":{"not":{"path":{"exact":"/"}}}}}}"#), "rules[0].match.not.not.not.not.not: \"not\" and \"any_of\" nest at most 4 deep"),
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
    // gRPC: DEADLINE_EXCEEDED, INTERNAL, UNAVAILABLE by default; no slow or streak trigger.
    assert_eq!(b.grpc_failure_codes, vec![4, 13, 14]);
    assert_eq!((b.slow_ms, b.consecutive_failures), (None, None));
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
    // Inside groups too: a route name in `not`/`any_of` is read, and headers only when used.
    let plan = Plan::from_json(
        rule(&format!(
            r#"{{"name":"r","match":{{"any_of":[{{"not":{{"route_names":["x"]}}}}]}},{DESTS}}}"#
        ))
        .as_bytes(),
    )
    .unwrap();
    assert!(plan.needs_route_name);
    assert!(!plan.needs_request_headers);
    let plan = Plan::from_json(
        rule(&format!(
            r#"{{"name":"r","match":{{"not":{{"cookies":[{{"name":"c","present":true}}]}}}},{DESTS}}}"#
        ))
        .as_bytes(),
    )
    .unwrap();
    assert!(!plan.needs_route_name);
    assert!(plan.needs_request_headers);
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

#[test]
fn following_unsigned_lanes_is_a_load_warning() {
    let lane = |secret: &str| {
        Plan::from_json(
            format!(
                r#"{{{secret}"rules":[{{"name":"b","match":{{"authority":{{"exact":"b"}}}},
                   "propagate":{{"header":"x-lane"}},"from_lane":true,{DESTS}}},
                   {{"name":"edge","match":{{"authority":{{"exact":"e"}}}},"propagate":{{"header":"x-lane"}},{DESTS}}}]}}"#
            )
            .as_bytes(),
        )
        .unwrap()
        .load_warnings()
    };
    let warnings = lane("");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].starts_with("rule \"b\" routes by lanes (from_lane) without lane_secret"));
    assert!(lane(r#""lane_secret":"0123456789abcdef-lanes","#).is_empty());
}

/// Rule `r` with destinations canary (first) and stable, and a rollout of `fields`.
fn rollout(fields: &str) -> String {
    rule(&format!(
        r#"{{"name":"r","destinations":[{{"name":"canary","cluster":"v2"}},{{"name":"stable","cluster":"v1"}}],
            "rollout":{{{fields}}}}}"#
    ))
}

#[test]
fn the_issue_rollout_compiles_and_decides_by_the_share_in_force() {
    let plan = Plan::from_json(
        br#"{"rules":[{"name":"checkout","sticky":{"header":"x-user-id"},
          "destinations":[
            {"name":"canary","cluster":"v2","fallback":"stable","breaker":{}},
            {"name":"stable","cluster":"v1","weight":3},{"name":"old","cluster":"v0","weight":1}],
          "rollout": { "destination": "canary", "start": "2026-12-01T10:00:00Z",
             "steps": [ { "percent": 1, "hold_s": 600 }, { "percent": 5, "hold_s": 1800 },
                        { "percent": 25, "hold_s": 3600 }, { "percent": 100 } ],
             "abort_on_breaker_open": true }}]}"#,
    )
    .unwrap();
    let rule = &plan.rules[0];
    let r = rule.rollout.as_ref().unwrap();
    assert_eq!(plan.rollouts, vec![0]);
    assert_eq!(rule.rollout_slot, Some(0));
    assert!(r.abort_on_breaker_open);
    assert_eq!(
        r.steps.iter().map(|s| s.basis_points).collect::<Vec<_>>(),
        vec![100, 500, 2500, 10_000]
    );
    assert_eq!(r.steps[3].hold_s, None);
    // Until the host supplies the share in force: 0%, the rest 3:1.
    assert_eq!(rule.upper_bounds, vec![0, 7500, 10_000]);
    let at_5 = crate::rollout::upper_bounds(500, &[3, 1]);
    assert_eq!(at_5, vec![500, 7625, 10_000]);
    assert_eq!(
        rule.bounds_in_force(std::slice::from_ref(&at_5)),
        at_5.as_slice()
    );
    assert_eq!(rule.bounds_in_force(&[]), rule.upper_bounds.as_slice());
    // Monotonic for sticky users: whoever had the canary at 1% keeps it at 5% and 25%.
    let at = |bp| crate::rollout::upper_bounds(bp, &[3, 1]);
    for user in 0..3000 {
        let key = format!("user-{user}");
        let d = |bp| rule.destination_of_key_in(key.as_bytes(), &at(bp));
        if d(100) == 0 {
            assert_eq!((d(500), d(2500)), (0, 0), "{key}");
        }
        assert_eq!(d(10_000), 0);
        assert_ne!(d(0), 0);
    }
    // abort_on_breaker_open defaults to whether the destination has a breaker.
    let plain = Plan::from_json(
        rollout(r#""destination":"canary","start":"2026-12-01T10:00:00+01:00","steps":[{"percent":0.5}]"#)
            .as_bytes(),
    )
    .unwrap();
    assert!(
        !plain.rules[0]
            .rollout
            .as_ref()
            .unwrap()
            .abort_on_breaker_open
    );
    assert_eq!(plain.rules[0].upper_bounds, vec![0, 10_000]);
}

#[test]
fn rollout_errors() {
    const S: &str = r#""destination":"canary","start":"2026-12-01T10:00:00Z""#;
    let cases: Vec<(String, &str)> = vec![
        (rollout(r#""destination":"stable","start":"2026-12-01T10:00:00Z","steps":[{"percent":1}]"#),
         "rules[0].rollout.destination: must be the rule's first destination (\"canary\"), got \"stable\": its share grows from the first buckets, so nobody who saw it leaves it"),
        (rollout(r#""destination":"canary","start":"2026-12-01 10:00","steps":[{"percent":1}]"#),
         "rules[0].rollout.start: \"2026-12-01 10:00\" is not an RFC 3339 time with a zone (e.g. 2026-12-01T10:00:00Z)"),
        (rollout(r#""destination":"canary","start":"2026-12-01T10:00:00","steps":[{"percent":1}]"#),
         "rules[0].rollout.start: \"2026-12-01T10:00:00\" is not an RFC 3339 time with a zone (e.g. 2026-12-01T10:00:00Z)"),
        (rollout(&format!(r#"{S},"steps":[]"#)), "rules[0].rollout.steps: must list 1 to 100 steps, got 0"),
        (rollout(&format!(r#"{S},"steps":[{{"percent":1.005,"hold_s":1}},{{"percent":2}}]"#)),
         "rules[0].rollout.steps[0].percent: must have at most two decimals (basis points)"),
        (rollout(&format!(r#"{S},"steps":[{{"percent":101}}]"#)),
         "rules[0].rollout.steps[0].percent: must be a number from 0 to 100, got 101"),
        (rollout(&format!(r#"{S},"steps":[{{"percent":5,"hold_s":1}},{{"percent":1}}]"#)),
         "rules[0].rollout.steps[1].percent: must not be below the previous step's (a rollout only grows; roll back with a configuration change)"),
        (rollout(&format!(r#"{S},"steps":[{{"percent":1}},{{"percent":2}}]"#)),
         "rules[0].rollout.steps[0].hold_s: is required and at least 1 on every step but the last"),
        (rollout(&format!(r#"{S},"steps":[{{"percent":1,"hold_s":0}},{{"percent":2}}]"#)),
         "rules[0].rollout.steps[0].hold_s: is required and at least 1 on every step but the last"),
        (rollout(&format!(r#"{S},"steps":[{{"percent":1}}],"abort_on_breaker_open":true"#)),
         "rules[0].rollout.abort_on_breaker_open: needs a breaker on the rollout's destination"),
        (rollout(&format!(r#"{S},"steps":[{{"percent":1}}],"pause":true"#)),
         "rules[0].rollout.pause: unknown field, expected one of: destination, start, steps, abort_on_breaker_open, gate"),
        (rollout(&format!(r#"{S},"steps":[{{"percent":1,"wait":3}}]"#)),
         "rules[0].rollout.steps[0].wait: unknown field, expected one of: percent, hold_s"),
        (rollout(r#""destination":"canary","steps":[{"percent":1}]"#), "rules[0].rollout.start: is required"),
        (rule(&format!(r#"{{"name":"r","hash":"unleash","destinations":[{{"name":"canary","cluster":"v2","weight":50}},{{"name":"stable","cluster":"v1","weight":50}}],"rollout":{{{S},"steps":[{{"percent":1}}]}}}}"#)),
         "rules[0].rollout: needs hash \"fine\": with \"unleash\" (100 buckets) a percent with decimals has no bucket range"),
        (rule(&format!(r#"{{"name":"r","destinations":[{{"name":"canary","cluster":"v2"}}],"rollout":{{{S},"steps":[{{"percent":1}}]}}}}"#)),
         "rules[0].rollout: needs another destination with a positive weight to take the rest of the traffic"),
        (rule(&format!(r#"{{"name":"r","destinations":[{{"name":"canary","cluster":"v2"}},{{"name":"stable","cluster":"v1","weight":0}}],"rollout":{{{S},"steps":[{{"percent":1}}]}}}}"#)),
         "rules[0].rollout: needs another destination with a positive weight to take the rest of the traffic"),
    ];
    for (json, expected) in cases {
        assert_eq!(err(&json), expected, "{json}");
    }
}
