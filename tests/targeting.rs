//! End-to-end: targeting at scale (the rule index), `not`/`any_of` groups, client networks,
//! regex matches and lanes, in a real Envoy with real backends.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;

fn two_backends() -> (Backend, Backend) {
    (Backend::start("stable"), Backend::start("canary"))
}

fn spec(config: &str, stable: &Backend, canary: &Backend) -> EnvoySpec {
    EnvoySpec::new(config)
        .cluster("stable", stable.addr)
        .cluster("canary", canary.addr)
}

/// The rule and backend that took a request (the debug header names the rule).
fn decided(envoy: &Envoy, headers: &[(&str, &str)]) -> (String, String) {
    let r = envoy.get("/", headers);
    assert_eq!(r.status, 200, "{r:?}");
    (
        r.header("x-split-decision")
            .unwrap_or("unmatched")
            .to_string(),
        r.backend().to_string(),
    )
}

/// 600 rules, each scoped to its own host (the plan is indexed), with unkeyed rules between
/// them: every host reaches its own rule, case and order as a scan would give them.
#[test]
fn hundreds_of_host_rules_each_decide_their_own_host() {
    let (stable, canary) = two_backends();
    let mut rules = Vec::new();
    for i in 0..600 {
        let cluster = if i % 2 == 0 { "canary" } else { "stable" };
        rules.push(format!(
            r#"{{"name":"host-{i}","match":{{"authority":{{"exact":"host-{i}.example"}}}},
                "destinations":[{{"name":"v{i}","cluster":"{cluster}"}}]}}"#
        ));
        if i == 300 {
            // Unkeyed, between keyed rules: it wins over every later host's rule.
            rules.push(
                r#"{"name":"employees","match":{"headers":[{"name":"x-employee","exact":"true"}]},
                    "destinations":[{"name":"staff","cluster":"canary"}]}"#
                    .to_string(),
            );
        }
    }
    let config = format!(r#"{{"debug_header":true,"rules":[{}]}}"#, rules.join(","));
    let envoy = Envoy::start(spec(&config, &stable, &canary));
    for i in [0usize, 1, 137, 300, 301, 598, 599] {
        let host = format!("HOST-{i}.example");
        let want_backend = if i % 2 == 0 { "canary" } else { "stable" };
        assert_eq!(
            decided(&envoy, &[("host", &host)]),
            (
                format!("rule=host-{i}; variant=v{i}"),
                want_backend.to_string()
            ),
            "{host}"
        );
        let staff = decided(&envoy, &[("host", &host), ("x-employee", "true")]);
        let expected = if i <= 300 {
            format!("rule=host-{i}; variant=v{i}")
        } else {
            "rule=employees; variant=staff".to_string()
        };
        assert_eq!(staff.0, expected, "{host} as an employee");
    }
    // A host with a port the rule does not name, and an unknown host: no rule.
    assert_eq!(
        decided(&envoy, &[("host", "host-1.example:8080")]).0,
        "unmatched"
    );
    assert_eq!(
        decided(&envoy, &[("host", "nobody.example")]).0,
        "unmatched"
    );
}

#[test]
fn not_and_any_of_groups_in_one_rule() {
    let (stable, canary) = two_backends();
    let config = r#"{"debug_header":true,"rules":[{"name":"ring","match":{
        "any_of":[{"headers":[{"name":"x-employee","exact":"true"}]},
                  {"cookies":[{"name":"beta","present":true}]}],
        "not":{"headers":[{"name":"user-agent","prefix":"bot"}]}},
      "destinations":[{"name":"canary","cluster":"canary"}]}]}"#;
    let envoy = Envoy::start(spec(config, &stable, &canary));
    let ring = "rule=ring; variant=canary".to_string();
    assert_eq!(decided(&envoy, &[("x-employee", "true")]).0, ring);
    assert_eq!(decided(&envoy, &[("cookie", "beta=1")]).0, ring);
    assert_eq!(decided(&envoy, &[("x-employee", "no")]).0, "unmatched");
    assert_eq!(
        decided(&envoy, &[("cookie", "beta=1"), ("user-agent", "bot/2")]).0,
        "unmatched"
    );
}
