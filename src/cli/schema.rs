//! The JSON Schema (draft 2020-12) of the configuration, for editors (completion, hover docs)
//! and CI. Hand-written from the parser (`config/`) and validator (`plan/`), descriptions
//! from docs/configuration.md. `schema/traffic-split.schema.json` is this output, checked by
//! tests/cli.rs; the tests also run shipped and invalid configurations through both.
//!
//! What the schema cannot express (so only the filter's parser reports it) is said in the
//! descriptions: unique rule/destination/shadow names, `unleash` weights summing to 100, a
//! `fallback` naming a destination of the same rule without loops, reserved header names,
//! cookie attribute combinations. And one leniency: JSON Schema's `integer` admits `5.0`, the
//! parser does not.

use crate::breaker::GRPC_CODES;
use crate::config::{
    DEFAULT_BODY_MAX_BYTES, DEFAULT_BREAKER_FAILURE_RATIO, DEFAULT_BREAKER_HALF_OPEN_PERCENT,
    DEFAULT_BREAKER_MIN_REQUESTS, DEFAULT_BREAKER_OPEN_S, DEFAULT_BREAKER_WINDOW_S,
    DEFAULT_CLUSTER_HEADER, DEFAULT_COOKIE_MAX_AGE_S, DEFAULT_GRPC_FAILURE_CODES,
    DEFAULT_MAX_BUFFERED_BODY_BYTES, DEFAULT_MAX_IN_FLIGHT, DEFAULT_SHADOW_HOST_SUFFIX,
    DEFAULT_SHADOW_MAX_BODY_BYTES, DEFAULT_SHADOW_PERCENT, DEFAULT_SHADOW_REMOVE_HEADERS,
    DEFAULT_SHADOW_TIMEOUT_MS, DEFAULT_VARIANT_HEADER, MAX_BODY_MAX_BYTES, MAX_SHADOW_BUFFER_BYTES,
};
use crate::plan::{MAX_DESTINATIONS, MAX_ROLLOUT_STEPS, MAX_SHADOWS_PER_RULE};
use serde_json::{json, Value};

/// `[A-Za-z0-9_-]{1,64}`: rule, destination and shadow names (they appear in metric names).
const NAME: &str = "^[A-Za-z0-9_-]{1,64}$";
/// An HTTP token (RFC 9110): header names, cookie names, methods.
const TOKEN: &str = "^[!#$%&'*+.^_`|~0-9A-Za-z-]+$";
/// Visible ASCII, non-empty.
const VISIBLE: &str = "^[!-~]+$";

/// The schema as printed by `traffic-split schema` (pretty JSON, keys sorted).
pub fn schema_text() -> String {
    serde_json::to_string_pretty(&schema()).unwrap_or_default()
}

fn named_match(what: &str) -> Value {
    json!({
        "type": "object",
        "description": format!("A {what} condition: its `name` and exactly one operation."),
        "required": ["name"],
        "additionalProperties": false,
        "properties": {
            "name": {"type": "string", "minLength": 1, "description": format!("The {what} name.")},
            "exact": {"type": "string", "description": "Holds when the value equals this."},
            "prefix": {"type": "string", "description": "Holds when the value starts with this."},
            "suffix": {"type": "string", "description": "Holds when the value ends with this."},
            "one_of": {"type": "array", "items": {"type": "string"}, "minItems": 1,
                       "description": "Holds when the value is one of these."},
            "present": {"type": "boolean",
                        "description": "`true`: holds when the value exists; `false`: when it does not."},
            "regex": regex()
        },
        "oneOf": [
            {"required": ["exact"]}, {"required": ["prefix"]}, {"required": ["suffix"]},
            {"required": ["one_of"]}, {"required": ["present"]}, {"required": ["regex"]}
        ]
    })
}

fn string_match(what: &str) -> Value {
    json!({
        "type": "object",
        "description": what,
        "additionalProperties": false,
        "properties": {
            "exact": {"type": "string"},
            "prefix": {"type": "string"},
            "suffix": {"type": "string"},
            "regex": regex()
        },
        "oneOf": [{"required": ["exact"]}, {"required": ["prefix"]}, {"required": ["suffix"]},
                  {"required": ["regex"]}]
    })
}

/// The test of a `match.body` condition (also inside its `not` and `any_of`).
fn body_test() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "properties": body_test_properties(),
        "oneOf": body_test_one_of()
    })
}

fn body_test_properties() -> Value {
    json!({
        "exact": {"type": "string", "description": "Holds when the value's text equals this (a number, true, false or null compares as its JSON text: `\"true\"`, `\"3\"`)."},
        "prefix": {"type": "string", "description": "Holds when the value's text starts with this."},
        "suffix": {"type": "string", "description": "Holds when the value's text ends with this."},
        "contains": {"type": "string", "description": "Holds when the value's text contains this."},
        "one_of": {"type": "array", "items": {"type": "string"}, "minItems": 1,
                   "description": "Holds when the value's text is one of these."},
        "present": {"type": "boolean",
                    "description": "`true`: holds when the pointer resolves (also to an object or array); `false`: when it does not."},
        "regex": regex(),
        "not": {"$ref": "#/$defs/body_test", "description": "Holds when this test does not."},
        "any_of": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/body_test"},
                   "description": "Holds when at least one of these tests does."}
    })
}

fn body_test_one_of() -> Value {
    json!([
        {"required": ["exact"]}, {"required": ["prefix"]}, {"required": ["suffix"]},
        {"required": ["contains"]}, {"required": ["one_of"]}, {"required": ["present"]},
        {"required": ["regex"]}, {"required": ["not"]}, {"required": ["any_of"]}
    ])
}

fn regex() -> Value {
    json!({"type": "string", "maxLength": crate::pattern::MAX_PATTERN_LEN,
        "description": "Holds when the whole value matches this pattern (a linear-time RE2 subset: see docs/configuration.md)."})
}

pub fn schema() -> Value {
    let mut schema = schema_without_body_condition_ops();
    if let Some(defs) = schema.pointer_mut("/$defs").and_then(Value::as_object_mut) {
        defs.insert("judge".to_string(), judge_def());
        defs.insert("fault".to_string(), fault_def());
    }
    // A body condition is its pointer plus the properties of a body test.
    if let (Some(props), Value::Object(ops)) = (
        schema
            .pointer_mut("/$defs/body_condition/properties")
            .and_then(Value::as_object_mut),
        body_test_properties(),
    ) {
        props.extend(ops);
    }
    schema
}

/// `$defs/judge` (a function of its own: one `json!` for the whole schema exceeds the macro
/// recursion limit).
fn judge_def() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "description": "Compares the canary with its baseline on this Envoy's live traffic every `window_s` (windows aligned to the wall clock): `pass`, `fail` or `inconclusive` (either arm below `min_requests`, or the latency criterion's bound needs more baseline outcomes and nothing failed). `fail_after` failing windows in a row trigger `on_fail`. Without `errors` and `latency`, both apply at their defaults; with one, only that one.",
        "properties": {
            "canary": {"type": "string", "pattern": NAME,
                "description": "The destination judged. Default: the rollout's destination, else the first destination."},
            "baseline": {"type": "string", "pattern": NAME,
                "description": "The destination it is compared with. Default: the other destination with the largest weight."},
            "window_s": {"type": "integer", "minimum": 1, "maximum": 86400, "default": 60,
                "description": "Window length in seconds."},
            "min_requests": {"type": "integer", "minimum": 1, "default": 100,
                "description": "Outcomes each arm needs in a window for a verdict; fewer: inconclusive (never fails)."},
            "errors": {"type": "object", "additionalProperties": false,
                "properties": {"max_increase": {"type": "number", "minimum": 0, "exclusiveMaximum": 1, "default": 0.01,
                    "description": "Allowed absolute increase of the canary's failure ratio over the baseline's (0.01: one percentage point). Failures are counted as the destination's breaker counts them (breaker defaults without one)."}},
                "description": "Fail when the canary's failure ratio is above the baseline's by more than `max_increase` at `confidence` (one-sided Agresti-Caffo test)."},
            "latency": {"type": "object", "additionalProperties": false,
                "properties": {
                    "percentile": {"type": "number", "minimum": 50, "maximum": 99.9, "default": 99,
                        "description": "The latency percentile compared (time from routing to response headers)."},
                    "max_ratio": {"type": "number", "minimum": 1, "maximum": 1000, "default": 1.2,
                        "description": "Fail when the canary's percentile is above this multiple of the baseline's at `confidence`."}},
                "description": "Order-statistic confidence bounds of the percentile of each arm."},
            "confidence": {"type": "number", "minimum": 0.5, "maximum": 0.9999, "default": 0.99,
                "description": "One-sided confidence of each criterion."},
            "fail_after": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 2,
                "description": "Failing windows in a row (a pass resets, an inconclusive window does not) that trigger `on_fail`."},
            "max_baseline_ratio": {"type": "number", "minimum": 0, "maximum": 1000000, "default": 4,
                "not": {"exclusiveMinimum": 0, "exclusiveMaximum": 1},
                "description": "At most this many baseline outcomes are judged per canary outcome (expected from the shares in force; raised to what the latency criterion's bound needs, 5.28 at the defaults): the rest of the baseline's responses, when no breaker classifies them anyway, are not read (a random sample, independent of the outcome). Not on rules that route by lanes. 0: judge every baseline outcome; otherwise at least 1."},
            "on_fail": {"enum": ["abort", "report"], "default": "abort",
                "description": "`abort`: the rule's rollout aborts (share 0%) as a breaker abort does; without a rollout the canary's traffic goes to the baseline until the configuration changes. `report`: metrics and logs only."}
        }
    })
}

/// `$defs/fault`.
fn fault_def() -> Value {
    json!({
        "type": "object",
        "required": ["percent"],
        "additionalProperties": false,
        "anyOf": [
            {"required": ["delay_ms"]}, {"required": ["abort_status"]}, {"required": ["abort_grpc_status"]}
        ],
        "not": {"required": ["abort_status", "abort_grpc_status"]},
        "description": "Controlled fault injection: Envoy's fault filter (after this filter, with header_delay/header_abort) delays or aborts this share of the rule's requests. Sticky rules fault the same users every time (their bucket under the salt `fault:<salt>`), others a random share. Faulted requests are no breaker evidence; they are counted in traffic_split.fault.<rule>.delayed / .aborted. At least one of delay_ms, abort_status, abort_grpc_status (not both aborts).",
        "properties": {
            "percent": {"type": "number", "minimum": 0, "maximum": 100,
                "description": "The share of the rule's matched requests (routed to `destinations`) that get the fault, at most two decimals."},
            "delay_ms": {"type": "integer", "minimum": 1, "maximum": 60000,
                "description": "Delay before the request goes upstream (x-envoy-fault-delay-request)."},
            "abort_status": {"type": "integer", "minimum": 200, "maximum": 599,
                "description": "Answer with this HTTP status instead of going upstream (x-envoy-fault-abort-request)."},
            "abort_grpc_status": {"anyOf": [
                    {"type": "integer", "minimum": 1, "maximum": 16},
                    {"enum": GRPC_CODES.get(1..).unwrap_or_default()}
                ],
                "description": "Answer with this gRPC status, a name or number (x-envoy-fault-abort-grpc-request; HTTP 200)."},
            "destinations": {"type": "array", "minItems": 1, "items": {"type": "string", "pattern": NAME},
                "description": "Names of this rule's destinations the fault applies to (the destination that finally gets the request). Default: all."}
        }
    })
}

fn schema_without_body_condition_ops() -> Value {
    let u32_max = u64::from(u32::MAX);
    let methods = json!({"type": "array", "minItems": 1,
        "items": {"type": "string", "pattern": TOKEN}});
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://github.com/example/traffic-split/schema/traffic-split.schema.json",
        "title": "traffic-split configuration",
        "description": "The traffic-split filter's configuration: the Envoy Wasm filter's `configuration` (google.protobuf.StringValue), Istio's WasmPlugin.spec.pluginConfig or Envoy Gateway's EnvoyExtensionPolicy spec.wasm[].config. Reference: docs/configuration.md. Not expressible here, checked by the filter (and `traffic-split validate`) only: unique rule names, unique destination names per rule, `unleash` weights summing to 100, `fallback` naming another destination of the same rule without loops, reserved routing header names, cookie attribute combinations (`SameSite=None`, `__Host-`/`__Secure-` prefixes).",
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "cluster_header": {"type": "string", "pattern": TOKEN, "default": DEFAULT_CLUSTER_HEADER,
                "description": "The request header the filter writes the chosen destination's `cluster` into. Envoy routes read it with `route: { cluster_header: … }`; an Istio VirtualService can match on it. Not a pseudo-header or a reserved name."},
            "variant_header": {"type": "string", "anyOf": [{"const": ""}, {"pattern": TOKEN}], "default": DEFAULT_VARIANT_HEADER,
                "description": "Sent upstream with the chosen destination's `name`, so the application knows its experiment arm. `\"\"` disables it. Must differ from `cluster_header`."},
            "debug_header": {"type": "boolean", "default": false,
                "description": "When true, routed responses carry `x-split-decision: rule=<rule>; variant=<name>`."},
            "rules": {"type": "array", "default": [], "items": {"$ref": "#/$defs/rule"},
                "description": "Evaluated in order; the first rule whose `match` holds decides. Rule names must be unique."},
            "max_in_flight": {"type": "integer", "minimum": 1, "maximum": u32_max, "default": DEFAULT_MAX_IN_FLIGHT,
                "description": "Shadow bulkhead: shadow copies outstanding per worker. Beyond it copies are dropped and counted."},
            "max_buffered_body_bytes": {"type": "integer", "minimum": 0, "maximum": MAX_SHADOW_BUFFER_BYTES, "default": DEFAULT_MAX_BUFFERED_BODY_BYTES,
                "description": "Shadow bulkhead: bytes held for shadow copies per worker (header copies and bodies). A copy that would pass it is dropped and counted."},
            "shadow_marker_secret": {"type": "string", "pattern": "^[!-~]{16,256}$",
                "description": "Signs the `x-shadow-request` marker of copies (`v2.<unix s>.<tag>`, HMAC-SHA256 of the copy's :authority, :method, :path and x-request-id) so that other instances sharing the secret keep it on that same request for 10 s. 16–256 visible ASCII characters; treat it as a secret."},
            "lane_secret": {"type": "string", "pattern": "^[!-~]{16,256}$",
                "description": "Signs lane values where they start (`<name>;sig=v2.<unix s>.<tag>`, HMAC-SHA256) and verifies them where a rule has `from_lane`: only instances sharing the secret can start a lane; unsigned, stale (over 300 s, or over 5 s ahead) or forged values are removed and counted. 16–256 visible ASCII characters; treat it as a secret."},
            "body_max_bytes": {"type": "integer", "minimum": 0, "maximum": MAX_BODY_MAX_BYTES, "default": DEFAULT_BODY_MAX_BYTES,
                "description": "The most of a request body held to evaluate `match.body` (at most 1 MiB). A larger body makes the body conditions not hold (the rule falls through) and is counted in traffic_split.body.too_large; it is never refused."},
            "clear_route_cache": {"enum": ["auto", "always"], "default": "auto",
                "description": "When the filter asks Envoy to pick the route again after changing the routing header: `auto` relies on Envoy doing it for this module's ABI, `always` calls clear_route_cache after every change."}
        },
        "$defs": {
            "rule": {
                "type": "object",
                "required": ["name", "destinations"],
                "additionalProperties": false,
                "properties": {
                    "name": {"type": "string", "pattern": NAME,
                        "description": "1–64 characters of [A-Za-z0-9_-], unique among rules. Appears in metrics, the debug header and logs."},
                    "match": {"$ref": "#/$defs/match"},
                    "sticky": {"$ref": "#/$defs/sticky"},
                    "salt": {"type": "string",
                        "description": "Hashed before the user key; default: the rule's `name`. Change it to reshuffle users; keep it to keep them."},
                    "hash": {"enum": ["fine", "unleash"], "default": "fine",
                        "description": "Bucketing: `fine` = murmur3(salt:key) % 10000, ranges by weight; `unleash` = murmur3(salt:key) % 100 + 1, weights must sum to 100 (Unleash gradual rollout compatible)."},
                    "destinations": {"type": "array", "minItems": 1, "maxItems": MAX_DESTINATIONS,
                        "items": {"$ref": "#/$defs/destination"},
                        "description": "Where requests go: 1–16 destinations with unique names; they own consecutive bucket ranges in the order listed. At least one weight must be positive; with `hash: unleash` the weights sum to 100."},
                    "shadow": {"type": "array", "maxItems": MAX_SHADOWS_PER_RULE,
                        "items": {"$ref": "#/$defs/shadow"},
                        "description": "Copies of this rule's requests sent to shadow clusters (at most 8 targets, each once)."},
                    "rollout": {"$ref": "#/$defs/rollout"},
                    "propagate": {"$ref": "#/$defs/propagate"},
                    "from_lane": {"type": "boolean", "default": false,
                        "description": "Route a request that carries a lane (on `propagate`'s carrier) to the destination of that name; otherwise decide as usual and start the lane. Needs `propagate`. Without `from_lane`, lanes start here: incoming values are removed or overwritten."},
                    "lane_fallback": {"type": "string", "pattern": NAME,
                        "description": "With `from_lane`: the destination (of this rule) for a lane that names none of this rule's destinations. Default: decide as usual and keep the lane for later hops."},
                    "judge": {"$ref": "#/$defs/judge"},
                    "fault": {"$ref": "#/$defs/fault"}
                }
            },
            "propagate": {
                "type": "object",
                "additionalProperties": false,
                "minProperties": 1,
                "maxProperties": 1,
                "properties": {
                    "header": {"type": "string", "pattern": TOKEN,
                        "description": "A request header of its own carries the lane (not a reserved header, not `cluster_header` or `variant_header`)."},
                    "baggage": {"type": "string", "pattern": "^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$",
                        "description": "The member with this key of the W3C `baggage` header carries the lane; other members are kept byte for byte."}
                },
                "description": "Where the chosen destination's `name` travels to later hops: exactly one of `header` and `baggage`."
            },
            "rollout": {
                "type": "object",
                "required": ["destination", "start", "steps"],
                "additionalProperties": false,
                "description": "A scheduled share for the rule's first destination, replacing its fixed weight; the other destinations share the rest by weight. The share in force is a function of the wall clock and `start`. Needs `hash: fine`.",
                "properties": {
                    "destination": {"type": "string", "pattern": NAME,
                        "description": "Must be the rule's first destination (growth is monotonic: it owns the first buckets)."},
                    "start": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})$",
                        "description": "RFC 3339 with a zone: when step 1 begins. Before it the share is 0%."},
                    "steps": {"type": "array", "minItems": 1, "maxItems": MAX_ROLLOUT_STEPS,
                        "items": {"type": "object", "required": ["percent"], "additionalProperties": false,
                            "properties": {
                                "percent": {"type": "number", "minimum": 0, "maximum": 100,
                                    "description": "The share during the step, at most two decimals; non-decreasing."},
                                "hold_s": {"type": "integer", "minimum": 1,
                                    "description": "How long the step lasts; required on every step but the last (ignored there)."}
                            }},
                        "description": "In order; step i begins at start + the hold_s of the earlier steps."},
                    "abort_on_breaker_open": {"type": "boolean",
                        "description": "Default: true when the destination has a breaker. When its breaker opens, this Envoy holds the rollout at 0% until the configuration changes."},
                    "gate": {"enum": ["judge"],
                        "description": "`judge`: a step ends only once its `hold_s` has passed and the rule's judge passed its last window; otherwise it holds (needs `judge`). Without it, steps follow the clock."}
                }
            },
            "match": {
                "type": "object",
                "additionalProperties": false,
                "description": "All listed conditions must hold. `{}` or no `match` matches every request.",
                "properties": {
                    "headers": {"type": "array", "items": named_match("header"),
                        "description": "Every listed header satisfies its operation."},
                    "cookies": {"type": "array", "items": named_match("cookie"),
                        "description": "Every listed cookie (from all Cookie headers) satisfies its operation."},
                    "query": {"type": "array", "items": named_match("query parameter"),
                        "description": "Every listed query parameter (percent-decoded, `+` is a space) satisfies its operation."},
                    "path": string_match("`:path` without query string and fragment satisfies it, byte for byte."),
                    "authority": string_match("`:authority` (the Host, with its port if the client sent one) satisfies it, ignoring ASCII case."),
                    "methods": {"allOf": [methods.clone()],
                        "description": "The method is one of them (case-sensitive: `GET`, not `get`)."},
                    "route_names": {"type": "array", "minItems": 1, "items": {"type": "string"},
                        "description": "Envoy's route name (`xds.route_name`) is one of them."},
                    "source_ips": {"type": "array", "minItems": 1, "items": {"type": "string"},
                        "description": "The downstream address Envoy reports (`source.address`) is in one of these CIDR ranges (IPv4 or IPv6; a bare address is a /32 or /128)."},
                    "not": {"allOf": [{"$ref": "#/$defs/match"}], "minProperties": 1,
                        "description": "Holds when this inner match does not (at least one of its conditions fails). Nests at most 4 deep with `any_of`."},
                    "any_of": {"type": "array", "minItems": 1,
                        "items": {"allOf": [{"$ref": "#/$defs/match"}], "minProperties": 1},
                        "description": "Holds when at least one of these inner matches does."},
                    "body": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/body_condition"},
                        "description": "Conditions on the JSON request body, all of which must hold (top level of a rule's match only, not inside `not`/`any_of`). Read only for requests with `content-type: application/json` or `…+json`; for others, for bodies over `body_max_bytes` and for invalid JSON they do not hold. The request is held for its body only when this rule is the first that can match it. Needs `allow_on_headers_stop_iteration: true` in the Wasm PluginConfig (docs/deploy.md)."}
                }
            },
            "body_condition": {
                "type": "object",
                "required": ["pointer"],
                "additionalProperties": false,
                "description": "A test on the value at `pointer`: exactly one operation.",
                "properties": {
                    "pointer": {"type": "string", "pattern": "^(/.*)?$",
                        "description": "An RFC 6901 JSON pointer, e.g. `/model` or `/messages/0/role`."}
                },
                "oneOf": body_test_one_of()
            },
            "body_test": body_test(),
            "sticky": {
                "type": "object",
                "additionalProperties": false,
                "description": "Where the user key comes from: exactly one of `header`, `cookie`, `query`. Without `sticky` every request is bucketed at random.",
                "properties": {
                    "header": {"type": "string", "pattern": TOKEN, "description": "The user key is the value of this request header."},
                    "cookie": {"type": "string", "pattern": TOKEN, "description": "The user key is the value of this cookie."},
                    "query": {"type": "string", "minLength": 1, "description": "The user key is the value of this query parameter."},
                    "assign_cookie": {"type": "boolean", "default": false,
                        "description": "Cookie keys only. A request without the cookie gets a random 128-bit id, is bucketed with it, and the response sets the cookie."},
                    "cookie_max_age_s": {"type": "integer", "minimum": 1, "maximum": u32_max, "default": DEFAULT_COOKIE_MAX_AGE_S,
                        "description": "Max-Age of assigned cookies (default 30 days). Only with assign_cookie."},
                    "cookie_secure": {"type": "boolean", "default": false,
                        "description": "Adds Secure to assigned cookies. Set it when your site is HTTPS-only. Only with assign_cookie."},
                    "cookie_domain": {"type": "string", "pattern": "^[A-Za-z0-9.-]+$",
                        "description": "Adds Domain=<d> to assigned cookies, to share the id across subdomains. Only with assign_cookie."},
                    "cookie_same_site": {"enum": ["Lax", "Strict", "None"], "default": "Lax",
                        "description": "SameSite of assigned cookies. `None` requires cookie_secure: true. Only with assign_cookie."}
                },
                "oneOf": [{"required": ["header"]}, {"required": ["cookie"]}, {"required": ["query"]}]
            },
            "destination": {
                "type": "object",
                "required": ["name", "cluster"],
                "additionalProperties": false,
                "properties": {
                    "name": {"type": "string", "pattern": NAME,
                        "description": "The experiment arm, unique in the rule: sent in variant_header, used in metrics."},
                    "cluster": {"type": "string", "pattern": VISIBLE,
                        "description": "Written into cluster_header. Must be a cluster your routes can reach (Envoy answers 503 for an unknown one)."},
                    "weight": {"type": "integer", "minimum": 0, "maximum": 1_000_000, "default": 1,
                        "description": "Share of the rule's traffic. 0 is a kill switch for that destination."},
                    "fallback": {"type": "string", "pattern": NAME,
                        "description": "Another destination of the same rule that takes this one's traffic while its breaker is open. Only with breaker."},
                    "breaker": {"$ref": "#/$defs/breaker"}
                },
                "dependentRequired": {"fallback": ["breaker"], "breaker": ["fallback"]}
            },
            "breaker": {
                "type": "object",
                "additionalProperties": false,
                "description": "A circuit breaker on this destination (a version, not a host). Needs fallback.",
                "properties": {
                    "failure_ratio": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": DEFAULT_BREAKER_FAILURE_RATIO,
                        "description": "Failed share of requests that opens the breaker."},
                    "min_requests": {"type": "integer", "minimum": 1, "maximum": u32_max, "default": DEFAULT_BREAKER_MIN_REQUESTS,
                        "description": "Requests needed in the window (and probes in half-open) before the ratio counts."},
                    "window_s": {"type": "integer", "minimum": 1, "maximum": 3600, "default": DEFAULT_BREAKER_WINDOW_S,
                        "description": "The sliding window of the closed state, in seconds."},
                    "open_s": {"type": "integer", "minimum": 1, "maximum": 86400, "default": DEFAULT_BREAKER_OPEN_S,
                        "description": "How long the breaker stays open before probing."},
                    "half_open_percent": {"type": "number", "exclusiveMinimum": 0, "maximum": 100, "default": DEFAULT_BREAKER_HALF_OPEN_PERCENT,
                        "description": "Share of the destination's own traffic let through as probes while half-open."},
                    "failure_statuses": {"type": "array", "minItems": 1, "default": ["5xx"],
                        "items": {"anyOf": [
                            {"type": "integer", "minimum": 100, "maximum": 599},
                            {"type": "string", "pattern": "^([1-5][0-9][0-9]|[1-5]xx)$"}
                        ]},
                        "description": "Response statuses that count as failures: codes (503, \"503\") and classes (\"5xx\")."},
                    "count_local_replies": {"type": "boolean", "default": true,
                        "description": "Envoy's own replies for this destination (connection refused, timeout, no healthy host) count as failures even if their status is not listed; false: not counted at all."},
                    "grpc_failure_codes": {"type": "array", "default": DEFAULT_GRPC_FAILURE_CODES,
                        "items": {"anyOf": [
                            {"type": "integer", "minimum": 1, "maximum": 16},
                            {"enum": GRPC_CODES.get(1..).unwrap_or_default()}
                        ]},
                        "description": "gRPC statuses (names or numbers) that count as failures, from the response headers (trailers-only) or trailers. [] turns it off."},
                    "slow_ms": {"type": "integer", "minimum": 1, "maximum": 3_600_000,
                        "description": "A response whose headers arrive later than this counts as a failure."},
                    "consecutive_failures": {"type": "integer", "minimum": 1, "maximum": u32_max,
                        "description": "This many failures in a row on one worker open the breaker at once, whatever the ratio."}
                }
            },
            "shadow": {
                "type": "object",
                "required": ["cluster"],
                "additionalProperties": false,
                "description": "A shadow target: copies of the rule's requests, responses discarded.",
                "properties": {
                    "cluster": {"type": "string", "pattern": VISIBLE,
                        "description": "The Envoy cluster the copy goes to (an unknown cluster counts as failed)."},
                    "name": {"type": "string", "pattern": NAME,
                        "description": "How the target appears in metrics; default: cluster with every character outside [A-Za-z0-9_-] replaced by `_`. One name stands for one cluster across all rules."},
                    "percent": {"type": "number", "minimum": 0, "maximum": 100, "default": DEFAULT_SHADOW_PERCENT,
                        "description": "Sampled per request, independently for each target. 0 disables the target."},
                    "timeout_ms": {"type": "integer", "minimum": 1, "maximum": 3_600_000, "default": DEFAULT_SHADOW_TIMEOUT_MS,
                        "description": "The shadow call's timeout, and the longest a copy may wait for the request body."},
                    "host_suffix": {"type": "string", "pattern": "^[!-~]*$", "default": DEFAULT_SHADOW_HOST_SUFFIX,
                        "description": "Added to :authority before any port; \"\" keeps the authority."},
                    "methods": {"allOf": [methods],
                        "description": "Only these methods are shadowed; default every method. A shadow sharing a database performs every copied write a second time: list only safe methods unless it has its own data."},
                    "include_body": {"type": "boolean", "default": true, "description": "Copy the request body."},
                    "max_body_bytes": {"type": "integer", "minimum": 0, "maximum": MAX_SHADOW_BUFFER_BYTES, "default": DEFAULT_SHADOW_MAX_BODY_BYTES,
                        "description": "A larger body is not shadowed at all (never truncated); the copy counts as dropped."},
                    "remove_headers": {"type": "array", "items": {"type": "string", "pattern": TOKEN}, "default": DEFAULT_SHADOW_REMOVE_HEADERS,
                        "description": "Dropped from the copy (case-insensitive). An explicit list replaces the default; [] forwards every header."},
                    "compare": {"type": "boolean", "default": false,
                        "description": "Compare the shadow's answer with the primary's: status, status class, latency."},
                    "compare_body": {"type": "boolean", "default": false,
                        "description": "With compare: also compare a digest of both response bodies."}
                },
                "if": {"required": ["compare_body"], "properties": {"compare_body": {"const": true}}},
                "then": {"required": ["compare"], "properties": {"compare": {"const": true}}}
            }
        }
    })
}
