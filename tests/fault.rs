//! End-to-end: `rules[].fault` in real Envoy with its fault filter under header control after
//! the Wasm filter (envoy/templates/fault-filter.yaml): sticky and random slices, delays and
//! aborts, client-sent fault headers removed, injected outcomes kept out of breakers, and the
//! destination filter. (The gRPC abort is in tests/grpc.rs, next to the real gRPC server.)
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use std::time::{Duration, Instant};
use traffic_split::plan::Plan;

/// Whether the plan puts `user` in rule 0's fault slice (the filter's own computation).
fn in_slice(config: &str, user: &str) -> bool {
    let plan = Plan::from_json(config.as_bytes()).unwrap();
    let fault = plan.rules[0].fault.as_ref().unwrap();
    fault.bucket_of_key(user.as_bytes()) < fault.basis_points
}

fn counter_settled(envoy: &Envoy, name: &str, expected: u64) -> u64 {
    envoy.wait_counter(name, expected);
    envoy.settled_counter(name)
}

#[test]
fn a_sticky_ten_percent_abort_slice_fails_the_same_users_every_time() {
    let stable = Backend::start("stable");
    let config = r#"{"debug_header":true,"rules":[{"name":"checkout","sticky":{"header":"x-user-id"},
        "destinations":[{"name":"stable","cluster":"stable"}],
        "fault":{"percent":10,"abort_status":503}}]}"#;
    let envoy = Envoy::start(
        EnvoySpec::new(config)
            .cluster("stable", stable.addr)
            .fault_filter(100),
    );
    let users: Vec<String> = (0..300).map(|i| format!("user-{i}")).collect();
    let mut first: Option<Vec<bool>> = None;
    let rounds = 3;
    for _ in 0..rounds {
        let mut faulted = Vec::new();
        for user in &users {
            let r = envoy.get("/", &[("x-user-id", user)]);
            let hit = r.status == 503;
            if hit {
                assert_eq!(
                    r.backend(),
                    "",
                    "an aborted request never reaches the backend"
                );
                assert_eq!(
                    r.header("x-split-decision"),
                    Some("rule=checkout; variant=stable; fault=abort_status:503")
                );
            } else {
                assert_eq!((r.status, r.backend()), (200, "stable"), "{user}");
                assert_eq!(
                    r.header("x-split-decision"),
                    Some("rule=checkout; variant=stable")
                );
            }
            assert_eq!(hit, in_slice(config, user), "{user}: the plan's own slice");
            faulted.push(hit);
        }
        match &first {
            None => first = Some(faulted),
            Some(f) => assert_eq!(f, &faulted, "the same users every time"),
        }
    }
    let k = first.unwrap().iter().filter(|f| **f).count();
    assert_binomial(k, users.len(), 0.1, "users in the 10% slice");
    let total = (k * rounds) as u64;
    assert_eq!(
        counter_settled(&envoy, "traffic_split.fault.checkout.aborted", total),
        total
    );
    assert_eq!(envoy.counter("traffic_split.fault.checkout.delayed"), 0);
    assert_eq!(envoy.counter("http.ingress.fault.aborts_injected"), total);
    assert_eq!(stable.count(), users.len() * rounds - k * rounds);
    // The Prometheus name carries the rule as a label (envoy/stats_config.yaml).
    let prom = envoy.admin_get("/stats/prometheus");
    let line = format!("traffic_split_fault_aborted{{rule=\"checkout\"}} {total}");
    assert!(
        prom.lines().any(|l| l == line),
        "no {line:?} in /stats/prometheus"
    );
}

#[test]
fn a_delay_slice_takes_at_least_delay_ms_and_the_rest_does_not() {
    let stable = Backend::start("stable");
    let config = r#"{"rules":[{"name":"slow","sticky":{"header":"x-user-id"},
        "destinations":[{"name":"stable","cluster":"stable"}],
        "fault":{"percent":30,"delay_ms":300}}]}"#;
    let envoy = Envoy::start(
        EnvoySpec::new(config)
            .cluster("stable", stable.addr)
            .fault_filter(100),
    );
    let users: Vec<String> = (0..40).map(|i| format!("user-{i}")).collect();
    let mut delayed = 0;
    let mut fast: Vec<Duration> = Vec::new();
    for user in &users {
        let start = Instant::now();
        let r = envoy.get("/", &[("x-user-id", user)]);
        let took = start.elapsed();
        assert_eq!((r.status, r.backend()), (200, "stable"));
        if in_slice(config, user) {
            delayed += 1;
            // Envoy's timers run on its event loop's cached clock: one delayed request was seen
            // at 299.88 ms from the client. 5 ms of slack for that, far from the others' times.
            assert!(took >= Duration::from_millis(295), "{user}: {took:?}");
        } else {
            fast.push(took);
        }
    }
    assert!(delayed > 0 && delayed < users.len(), "{delayed}");
    // Requests outside the slice are not delayed (a delayed one takes 300 ms at least); one
    // slow answer on a loaded machine is not a delay.
    let slow = fast
        .iter()
        .filter(|t| **t >= Duration::from_millis(300))
        .count();
    assert!(
        slow <= 1,
        "{slow} requests outside the slice took 300 ms: {fast:?}"
    );
    let d = delayed as u64;
    assert_eq!(
        counter_settled(&envoy, "traffic_split.fault.slow.delayed", d),
        d
    );
    assert_eq!(envoy.counter("traffic_split.fault.slow.aborted"), 0);
    assert_eq!(envoy.counter("http.ingress.fault.delays_injected"), d);
}

/// Every fault header the fault filter reads, as a client would forge them.
const FORGED: [(&str, &str); 6] = [
    ("x-envoy-fault-abort-request", "500"),
    ("x-envoy-fault-abort-request-percentage", "99"),
    ("x-envoy-fault-abort-grpc-request", "14"),
    ("x-envoy-fault-delay-request", "3000"),
    ("x-envoy-fault-delay-request-percentage", "99"),
    ("x-envoy-fault-throughput-response", "1"),
];

#[test]
fn client_sent_fault_headers_are_removed_from_every_request() {
    let stable = Backend::start("stable");
    let canary = Backend::start("canary");
    // Rule "ring" matches x-ring: 1 (no fault); rule "slow" delays every request of /slow by
    // 200 ms; anything else matches no rule.
    let config = r#"{"rules":[
        {"name":"ring","match":{"headers":[{"name":"x-ring","exact":"1"}]},
         "destinations":[{"name":"canary","cluster":"canary"}]},
        {"name":"slow","match":{"path":{"prefix":"/slow"}},
         "destinations":[{"name":"stable","cluster":"stable"}],
         "fault":{"percent":100,"delay_ms":200}}]}"#;
    let envoy = Envoy::start(
        EnvoySpec::new(config)
            .cluster("stable", stable.addr)
            .cluster("canary", canary.addr)
            .fault_filter(100),
    );
    for (path, ring, backend, min_ms) in [
        ("/", Some("1"), "canary", 0),  // matched, no fault
        ("/other", None, "stable", 0),  // unmatched (default route)
        ("/slow", None, "stable", 195), // faulted: only its own 200 ms delay (timer slack: see above)
    ] {
        let mut headers: Vec<(&str, &str)> = FORGED.to_vec();
        headers.extend(ring.map(|r| ("x-ring", r)));
        let start = Instant::now();
        let r = envoy.get(path, &headers);
        let took = start.elapsed();
        assert_eq!((r.status, r.backend()), (200, backend), "{path}");
        assert!(
            took >= Duration::from_millis(min_ms) && took < Duration::from_millis(2500),
            "{path}: {took:?}"
        );
    }
    // No forged header reached a backend; the filter's own delay headers did on /slow only.
    for b in [&stable, &canary] {
        for req in b.received() {
            let forged: Vec<_> = req
                .headers
                .iter()
                .filter(|(n, v)| {
                    FORGED
                        .iter()
                        .any(|(fname, fvalue)| n == fname && v == fvalue)
                })
                .collect();
            assert!(forged.is_empty(), "{}: {forged:?}", req.uri);
        }
    }
    assert_eq!(envoy.counter("http.ingress.fault.aborts_injected"), 0);
    assert_eq!(envoy.counter("http.ingress.fault.delays_injected"), 1);
}

/// A plan that reads no request attribute (a random split) does not read the header map: the
/// fault headers are removed by name there.
#[test]
fn client_sent_fault_headers_are_removed_when_no_rule_reads_headers() {
    let stable = Backend::start("stable");
    let canary = Backend::start("canary");
    let config = r#"{"rules":[{"name":"random","destinations":[
        {"name":"canary","cluster":"canary"},{"name":"stable","cluster":"stable"}]}]}"#;
    let envoy = Envoy::start(
        EnvoySpec::new(config)
            .cluster("stable", stable.addr)
            .cluster("canary", canary.addr)
            .fault_filter(100),
    );
    let mut headers: Vec<(&str, &str)> = FORGED.to_vec();
    headers.push(("x-envoy-fault-throughput-response-percentage", "99"));
    for _ in 0..10 {
        let start = Instant::now();
        let r = envoy.get("/", &headers);
        assert_eq!(r.status, 200);
        assert!(start.elapsed() < Duration::from_millis(2500));
    }
    for b in [&stable, &canary] {
        for req in b.received() {
            let fault: Vec<_> = req
                .headers
                .iter()
                .filter(|(n, _)| n.starts_with("x-envoy-fault-"))
                .collect();
            assert!(fault.is_empty(), "{fault:?}");
        }
    }
    assert_eq!(stable.count() + canary.count(), 10);
    assert_eq!(envoy.counter("http.ingress.fault.aborts_injected"), 0);
    assert_eq!(envoy.counter("http.ingress.fault.delays_injected"), 0);
}

/// A canary (weight 1, breaker) falling back to stable (weight 0), with `fault` on the canary.
fn breaker_config(fault: &str) -> String {
    format!(
        r#"{{"rules":[{{"name":"checkout","destinations":[
            {{"name":"canary","cluster":"canary","weight":1,"fallback":"stable",
             "breaker":{{"failure_ratio":0.2,"min_requests":10,"window_s":60,"open_s":60}}}},
            {{"name":"stable","cluster":"stable","weight":0}}],
            "fault":{fault}}}]}}"#
    )
}

#[test]
fn injected_aborts_leave_the_breaker_closed_and_real_failures_open_it() {
    let stable = Backend::start("stable");
    let canary = Backend::start("canary");
    let config = breaker_config(r#"{"percent":50,"abort_status":503,"destinations":["canary"]}"#);
    let envoy = Envoy::start(
        EnvoySpec::new(&config)
            .cluster("stable", stable.addr)
            .cluster("canary", canary.addr)
            .fault_filter(1000),
    );
    let state = || envoy.settled_counter("traffic_split.breaker.checkout.canary.state");
    let n = 200;
    let mut aborted = 0;
    for _ in 0..n {
        let r = envoy.get("/", &[]);
        match r.status {
            503 => aborted += 1,
            200 => assert_eq!(r.backend(), "canary", "the breaker never moved anyone"),
            s => panic!("status {s}"),
        }
    }
    assert_binomial(aborted, n, 0.5, "injected aborts");
    let a = aborted as u64;
    assert_eq!(
        counter_settled(&envoy, "traffic_split.fault.checkout.aborted", a),
        a
    );
    assert_eq!(state(), 0, "{aborted} injected 503s are no evidence");
    assert_eq!(
        envoy.counter("traffic_split.breaker.checkout.canary.opened"),
        0
    );
    // The same status from the canary itself opens it.
    canary.set_status(503);
    let mut on_stable = 0;
    for _ in 0..200 {
        let r = envoy.get("/", &[]);
        if r.backend() == "stable" {
            on_stable += 1;
            if on_stable == 20 {
                break;
            }
        }
    }
    assert_eq!(on_stable, 20, "real failures open the breaker");
    assert_eq!(state(), 1);
}

#[test]
fn a_fault_for_the_canary_only_faults_requests_routed_to_the_canary() {
    let stable = Backend::start("stable");
    let canary = Backend::start("canary");
    let config = r#"{"rules":[{"name":"checkout","sticky":{"header":"x-user-id"},
        "destinations":[{"name":"canary","cluster":"canary"},{"name":"stable","cluster":"stable"}],
        "fault":{"percent":100,"abort_status":503,"destinations":["canary"]}}]}"#;
    let envoy = Envoy::start(
        EnvoySpec::new(config)
            .cluster("stable", stable.addr)
            .cluster("canary", canary.addr)
            .fault_filter(100),
    );
    let on_canary = users_bucketed_to(config, 0, 30);
    let on_stable = users_bucketed_to(config, 1, 30);
    for user in &on_canary {
        assert_eq!(envoy.get("/", &[("x-user-id", user)]).status, 503, "{user}");
    }
    for user in &on_stable {
        let r = envoy.get("/", &[("x-user-id", user)]);
        assert_eq!((r.status, r.backend()), (200, "stable"), "{user}");
    }
    assert_eq!(canary.count(), 0);
    assert_eq!(
        counter_settled(&envoy, "traffic_split.fault.checkout.aborted", 30),
        30
    );
}

/// A faulted request is still copied to a shadow, but not compared: its answer was injected.
#[test]
fn faulted_requests_are_shadowed_but_never_compared() {
    let stable = Backend::start("stable");
    let shadow = Backend::start("shadow");
    let config = r#"{"rules":[{"name":"checkout","destinations":[{"name":"stable","cluster":"stable"}],
        "shadow":[{"name":"v3","cluster":"shadow","compare":true}],
        "fault":{"percent":50,"abort_status":503}}]}"#;
    let envoy = Envoy::start(
        EnvoySpec::new(config)
            .cluster("stable", stable.addr)
            .cluster("shadow", shadow.addr)
            .fault_filter(100),
    );
    let n = 60;
    let aborted = (0..n).filter(|_| envoy.get("/", &[]).status == 503).count();
    assert!(aborted > 0 && aborted < n, "{aborted}");
    let sent = envoy.wait_counter("traffic_split.shadow.v3.responses", n as u64);
    assert_eq!(sent, n as u64, "every request is copied");
    assert_eq!(
        envoy.settled_counter("traffic_split.shadow.v3.sent"),
        n as u64
    );
    // The shadow answers 200 like stable: only an injected 503 could differ.
    assert_eq!(envoy.counter("traffic_split.shadow.v3.status_mismatch"), 0);
    assert_eq!(envoy.counter("traffic_split.shadow.v3.class_mismatch"), 0);
    let a = aborted as u64;
    assert_eq!(
        counter_settled(&envoy, "traffic_split.fault.checkout.aborted", a),
        a
    );
}

/// A judge never counts injected outcomes: with half of the canary's requests aborted by the
/// fault filter (503) and no real failure, every judged window sees a canary with 0% failures.
#[test]
fn a_judge_never_counts_injected_aborts() {
    let stable = Backend::start("stable");
    let canary = Backend::start("canary");
    let config = r#"{"rules":[{"name":"checkout","destinations":[
            {"name":"canary","cluster":"canary"},{"name":"stable","cluster":"stable"}],
        "judge":{"window_s":2,"min_requests":10,"fail_after":1,"on_fail":"report","errors":{"max_increase":0.01}},
        "fault":{"percent":50,"abort_status":503,"destinations":["canary"]}}]}"#;
    let envoy = Envoy::start(
        EnvoySpec::new(config)
            .cluster("stable", stable.addr)
            .cluster("canary", canary.addr)
            .fault_filter(1000),
    );
    let judged = |envoy: &Envoy| {
        envoy.counter("traffic_split.judge.checkout.windows_passed")
            + envoy.counter("traffic_split.judge.checkout.windows_failed")
    };
    // Traffic for at least two whole windows (bounded: 20 s).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut aborted = 0;
    while judged(&envoy) < 2 && Instant::now() < deadline {
        for _ in 0..20 {
            aborted += usize::from(envoy.get("/", &[]).status == 503);
        }
    }
    assert!(aborted > 10, "{aborted} injected aborts");
    assert!(judged(&envoy) >= 2, "no judged window within 20 s");
    assert_eq!(
        envoy.counter("traffic_split.judge.checkout.windows_failed"),
        0,
        "injected 503s counted against the canary"
    );
    assert_eq!(
        envoy.counter("traffic_split.judge.checkout.canary_failure_bp"),
        0
    );
    assert!(!envoy.log().contains("judge of rule"), "{}", envoy.log());
}

/// The Wasm filter's name in Envoy Gateway's listener for wasm[0] of EnvoyExtensionPolicy
/// shop/traffic-split (deploy/envoy-gateway/envoyextensionpolicy.yaml).
const EG_WASM_FILTER: &str =
    "envoy.filters.http.wasm/envoyextensionpolicy/shop/traffic-split/wasm/0";

/// What deploy/envoy-gateway/envoypatchpolicy-fault.yaml does to Envoy Gateway's listener and
/// routes, read from the shipped manifest: (the fault filter entry its Listener patch inserts
/// before the router, the `typed_per_filter_config` entry its RouteConfiguration patch adds to
/// every route that has the Wasm filter's own entry, if it has such a patch).
fn eg_fault_patches() -> (serde_json::Value, Option<(String, serde_json::Value)>) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/envoy-gateway/envoypatchpolicy-fault.yaml"
    );
    let doc: serde_json::Value =
        serde_norway::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let patches = doc["spec"]["jsonPatches"].as_array().unwrap();
    let of_type = |t: &'static str| {
        patches
            .iter()
            .filter(move |p| p["type"] == format!("type.googleapis.com/{t}").as_str())
    };
    let listener: Vec<_> = of_type("envoy.config.listener.v3.Listener").collect();
    assert_eq!(listener.len(), 1, "one Listener patch: the fault filter");
    let filter = listener[0]["operation"]["value"].clone();
    let route = of_type("envoy.config.route.v3.RouteConfiguration")
        .map(|p| {
            let op = &p["operation"];
            // The selection this test reproduces: the routes with the Wasm filter's entry.
            let json_path = op["jsonPath"].as_str().unwrap();
            assert_eq!(
                json_path,
                format!("$..routes[?(@.typed_per_filter_config['{EG_WASM_FILTER}'] exists true)]")
            );
            let name = op["path"]
                .as_str()
                .unwrap()
                .strip_prefix("/typed_per_filter_config/")
                .unwrap()
                .to_string();
            (name, op["value"].clone())
        })
        .next();
    (filter, route)
}

/// The Envoy Gateway shape of envoyextensionpolicy.yaml + envoypatchpolicy-fault.yaml, as the
/// proxy gets it: the Wasm filter in the listener's chain under Envoy Gateway's name with
/// `disabled: true`, on only for the routes of HTTPRoute `checkout` (a `FilterConfig` in their
/// `typed_per_filter_config`, as Envoy Gateway writes it); the manifest's fault filter before the
/// router and its per-route entry on the routes with the Wasm filter's. HTTPRoute `other`
/// (`/other`, cluster `other`) shares the listener and virtual host without the filter.
/// `route_patch_applies: false` drops the RouteConfiguration patch, as Envoy Gateway does when
/// its jsonPath selects no route (each patch applies on its own).
fn gateway_envoy(
    config: &str,
    stable: &Backend,
    other: &Backend,
    route_patch_applies: bool,
) -> Envoy {
    let (fault_filter, route_patch) = eg_fault_patches();
    let route_patch = route_patch.filter(|_| route_patch_applies);
    let filter_config =
        r#"{ "@type": type.googleapis.com/envoy.config.route.v3.FilterConfig, config: {} }"#;
    let mut per_route = format!("\"{EG_WASM_FILTER}\": {filter_config}");
    if let Some((name, value)) = &route_patch {
        per_route += &format!(", \"{name}\": {value}");
    }
    let checkout = |rule: usize| {
        format!(
            "- name: \"httproute/shop/checkout/rule/{rule}/match/0/*\"\n                \
             typed_per_filter_config: {{ {per_route} }}\n"
        )
    };
    Envoy::start(
        EnvoySpec::new(config)
            .cluster("stable", stable.addr)
            .cluster("other", other.addr)
            .patch(
                "- name: envoy.filters.http.wasm\n",
                &format!("- name: {EG_WASM_FILTER}\n            disabled: true\n"),
            )
            .patch(
                "          - name: envoy.filters.http.router\n",
                &format!(
                    "          - {fault_filter}\n          - name: envoy.filters.http.router\n"
                ),
            )
            .patch(
                "- name: api\n",
                "- name: \"httproute/shop/other/rule/0/match/0/*\"\n                \
                 match: { prefix: \"/other\" }\n                \
                 route: { cluster: other, timeout: 5s }\n              - name: api\n",
            )
            .patch("- name: split\n", &checkout(0))
            .patch("- name: default\n", &checkout(1)),
    )
}

/// Rule `chaos` (`/chaos`): every request in its fault slice, aborted with 503.
const CHAOS: &str = r#"{"debug_header":true,"rules":[{"name":"chaos","match":{"path":{"prefix":"/chaos"}},
    "destinations":[{"name":"stable","cluster":"stable"}],
    "fault":{"percent":100,"abort_status":503}}]}"#;

/// The shipped Envoy Gateway fault filter runs only where the Wasm filter runs: on a route of
/// the same listener without the filter (another HTTPRoute), a client's own fault headers are
/// not acted on (with the fault filter on the whole listener, they aborted and delayed it),
/// while the filter's `fault` slice still aborts on its routes and a client's headers there are
/// removed by the filter.
#[test]
fn gateway_scoped_fault_filter_ignores_client_fault_headers_on_routes_without_the_filter() {
    let stable = Backend::start("stable");
    let other = Backend::start("other");
    let envoy = gateway_envoy(CHAOS, &stable, &other, true);
    // Another app's route on the same listener: the forged abort and delay do nothing.
    let forged = [
        ("x-envoy-fault-abort-request", "503"),
        ("x-envoy-fault-abort-request-percentage", "100"),
    ];
    for _ in 0..5 {
        let r = envoy.get("/other/page", &forged);
        assert_eq!(
            (r.status, r.backend()),
            (200, "other"),
            "a client aborted a request on a route without the filter"
        );
        assert_eq!(
            r.header("x-split-decision"),
            None,
            "the filter does not run there"
        );
    }
    let start = Instant::now();
    let r = envoy.get(
        "/other/slow",
        &[
            ("x-envoy-fault-delay-request", "3000"),
            ("x-envoy-fault-delay-request-percentage", "100"),
        ],
    );
    assert_eq!((r.status, r.backend()), (200, "other"));
    assert!(
        start.elapsed() < Duration::from_millis(2500),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(other.count(), 6);
    // The filter's routes: a request no rule matched goes through (the forged headers removed)...
    for _ in 0..5 {
        let r = envoy.get("/home", &forged);
        assert_eq!((r.status, r.backend()), (200, "stable"));
    }
    // ... and the `chaos` rule's fault slice (100%) is aborted by the fault filter.
    for _ in 0..3 {
        let r = envoy.get("/chaos", &[]);
        assert_eq!((r.status, r.backend()), (503, ""));
        assert_eq!(
            r.header("x-split-decision"),
            Some("rule=chaos; variant=stable; fault=abort_status:503")
        );
    }
    assert_eq!(
        counter_settled(&envoy, "traffic_split.fault.chaos.aborted", 3),
        3
    );
    assert_eq!(envoy.counter("http.ingress.fault.aborts_injected"), 3);
    assert_eq!(envoy.counter("http.ingress.fault.delays_injected"), 0);
    assert_eq!(stable.count(), 5);
    // The filter removed the client's fault headers on its route; on the other route nothing
    // did (only the fault filter being off there keeps them harmless).
    for (backend, removed) in [(&stable, true), (&other, false)] {
        for req in backend.received() {
            let forged = req.headers.iter().any(|(n, _)| {
                n == "x-envoy-fault-abort-request" || n == "x-envoy-fault-delay-request"
            });
            assert_eq!(forged, !removed, "{}: {:?}", req.uri, req.headers);
        }
    }
}

/// The shipped Envoy Gateway fault filter fails closed: when its RouteConfiguration patch
/// selects no route (say, Envoy Gateway renamed the Wasm filter), the fault filter stays off
/// on every route, so neither a client nor the filter's `fault` slice faults anything.
#[test]
fn gateway_scoped_fault_filter_is_off_everywhere_when_its_route_patch_selects_nothing() {
    let stable = Backend::start("stable");
    let other = Backend::start("other");
    let envoy = gateway_envoy(CHAOS, &stable, &other, false);
    let forged = [
        ("x-envoy-fault-abort-request", "503"),
        ("x-envoy-fault-abort-request-percentage", "100"),
    ];
    for (path, backend) in [
        ("/other/page", "other"),
        ("/chaos", "stable"),
        ("/home", "stable"),
    ] {
        let r = envoy.get(path, &forged);
        assert_eq!((r.status, r.backend()), (200, backend), "{path}");
    }
    // The filter still asks for its fault: only the fault filter is off (and the filter counts
    // no fault Envoy did not apply).
    let r = envoy.get("/chaos", &[]);
    assert_eq!((r.status, r.backend()), (200, "stable"));
    assert_eq!(
        r.header("x-split-decision"),
        Some("rule=chaos; variant=stable; fault=abort_status:503")
    );
    assert_eq!(envoy.counter("http.ingress.fault.aborts_injected"), 0);
    assert_eq!(
        envoy.settled_counter("traffic_split.fault.chaos.aborted"),
        0
    );
    assert_eq!((stable.count(), other.count()), (3, 1));
}
