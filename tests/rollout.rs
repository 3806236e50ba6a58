//! End-to-end: rollout plans in real Envoy (two workers). The share in force follows the
//! schedule by the wall clock, two Envoys started apart agree user by user, and a canary whose
//! breaker opens is rolled back to 0% on each Envoy while a healthy one reaches 100%.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use traffic_split::plan::Plan;
use traffic_split::rollout::{format_rfc3339, upper_bounds};

/// The tests here run one at a time: their schedules start seconds after the configuration is
/// written, so they must not wait for Envoy slots another test holds.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// One request on a fresh connection (so both workers serve), to listener 0 of `envoy`.
fn fresh(envoy: &Envoy, user: &str, headers: &[(&str, &str)]) -> Resp {
    let mut req = ureq::AgentBuilder::new()
        .build()
        .get(&envoy.url("/"))
        .set("x-user-id", user);
    for (n, v) in headers {
        req = req.set(n, v);
    }
    Resp::from(req.call())
}

fn gauge(envoy: &Envoy, rule: &str, what: &str) -> u64 {
    envoy.counter(&format!("traffic_split.rollout.{rule}.{what}"))
}

/// Polls a rollout stat until it is `expected`; returns the last value seen.
fn wait_gauge(envoy: &Envoy, rule: &str, what: &str, expected: u64, within: Duration) -> u64 {
    let deadline = Instant::now() + within;
    loop {
        let v = gauge(envoy, rule, what);
        if v == expected || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_share_follows_the_schedule_and_two_envoys_started_apart_agree_user_by_user() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let stable = Backend::start("stable");
    let canary = Backend::start("canary");
    // Steps of 3 s from 7 s after now (starting two Envoys takes a few seconds here): 0%
    // before start, then 10%, 50%, 100%.
    let hold_ms = 3000;
    let start = now_ms() + 7000;
    let config = format!(
        r#"{{"rules":[{{"name":"ramp","sticky":{{"header":"x-user-id"}},"destinations":[
            {{"name":"canary","cluster":"canary"}},{{"name":"stable","cluster":"stable"}}],
          "rollout":{{"destination":"canary","start":"{}","steps":[
            {{"percent":10,"hold_s":3}},{{"percent":50,"hold_s":3}},{{"percent":100}}]}}}}]}}"#,
        format_rfc3339(start)
    );
    let rule = &Plan::from_json(config.as_bytes()).unwrap().rules[0];
    let spec = || {
        EnvoySpec::new(&config)
            .cluster("stable", stable.addr)
            .cluster("canary", canary.addr)
    };
    // The second Envoy starts 1.5 s after the first: they share nothing but the clock.
    let (a, b) = Envoy::start_pair(spec(), |_| {
        std::thread::sleep(Duration::from_millis(1500));
        spec()
    });
    let share_at = |ms: i64| -> Option<u32> {
        // Requests within 300 ms of a boundary are left out: a worker learns the new step on
        // its next tick (100 ms).
        let boundaries = [start, start + hold_ms, start + 2 * hold_ms];
        if boundaries.iter().any(|b| (ms - b).abs() < 300) {
            return None;
        }
        Some(match ms {
            t if t < start => 0,
            t if t < start + hold_ms => 1000,
            t if t < start + 2 * hold_ms => 5000,
            _ => 10_000,
        })
    };
    // Per share: requests checked, and how many the canary answered.
    let mut seen: std::collections::BTreeMap<u32, (usize, usize)> = Default::default();
    let mut user = 0usize;
    let deadline = start + 3 * hold_ms + 1500;
    while now_ms() < deadline && user < 20_000 {
        user += 1;
        let key = format!("u{user}");
        let before = now_ms();
        let (ra, rb) = (fresh(&a, &key, &[]), fresh(&b, &key, &[]));
        let after = now_ms();
        let (Some(share), Some(same)) = (share_at(before), share_at(after)) else {
            continue;
        };
        if share != same {
            continue;
        }
        let expected = match rule.destination_of_key_in(key.as_bytes(), &upper_bounds(share, &[1]))
        {
            0 => "canary",
            _ => "stable",
        };
        assert_eq!(
            ra.backend(),
            expected,
            "{key} at {share} bp on the first Envoy"
        );
        assert_eq!(
            rb.backend(),
            expected,
            "{key} at {share} bp on the second Envoy"
        );
        let entry = seen.entry(share).or_default();
        entry.0 += 1;
        entry.1 += usize::from(expected == "canary");
        if share == 10_000 && entry.0 >= 100 {
            break;
        }
    }
    for share in [0, 1000, 5000, 10_000] {
        let (n, on_canary) = seen.get(&share).copied().unwrap_or_default();
        assert!(n >= 30, "only {n} users checked at {share} bp: {seen:?}");
        if share > 0 && share < 10_000 {
            assert_binomial(on_canary, n, f64::from(share) / 10_000.0, "canary share");
        }
    }
    for envoy in [&a, &b] {
        assert_eq!(gauge(envoy, "ramp", "step"), 3);
        assert_eq!(gauge(envoy, "ramp", "basis_points"), 10_000);
        assert_eq!(gauge(envoy, "ramp", "aborted"), 0);
        let log = envoy.log();
        for step in [
            "step 1/3 begins: \"canary\" at 10%",
            "step 3/3 begins: \"canary\" at 100%",
        ] {
            assert_eq!(
                log.matches(step).count(),
                1,
                "logged once per process: {step}"
            );
        }
    }
    // The admin's Prometheus view carries the rule as a label.
    let prom = a.admin_get("/stats/prometheus");
    assert!(
        prom.contains("traffic_split_rollout_basis_points{rule=\"ramp\"} 10000"),
        "{}",
        prom.lines()
            .filter(|l| l.contains("rollout"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn a_failing_canary_aborts_its_rollout_on_each_envoy_while_a_healthy_one_reaches_100() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let stable = Backend::start("stable");
    let bad = Backend::start("bad");
    let good = Backend::start("good");
    bad.set_status(503);
    // Both rollouts start now at 50% and reach 100% after 10 s.
    let start_ms = now_ms();
    let start = format_rfc3339(start_ms);
    let rule = |name: &str, cluster: &str| {
        format!(
            r#"{{"name":"{name}","match":{{"headers":[{{"name":"x-app","exact":"{name}"}}]}},
              "sticky":{{"header":"x-user-id"}},"destinations":[
              {{"name":"canary","cluster":"{cluster}","fallback":"stable",
                "breaker":{{"failure_ratio":0.5,"min_requests":10,"window_s":10,"open_s":1}}}},
              {{"name":"stable","cluster":"stable"}}],
              "rollout":{{"destination":"canary","start":"{start}","steps":[
                {{"percent":50,"hold_s":10}},{{"percent":100}}]}}}}"#
        )
    };
    let config = format!(
        r#"{{"rules":[{},{}]}}"#,
        rule("failing", "bad"),
        rule("healthy", "good")
    );
    let spec = || {
        EnvoySpec::new(&config)
            .cluster("stable", stable.addr)
            .cluster("bad", bad.addr)
            .cluster("good", good.addr)
    };
    let (a, b) = Envoy::start_pair(spec(), |_| spec());
    for envoy in [&a, &b] {
        assert_eq!(gauge(envoy, "failing", "basis_points"), 5000);
        // Failing answers until the breaker opens and the rollout aborts.
        let mut sent = 0;
        while gauge(envoy, "failing", "aborted") == 0 && sent < 400 {
            fresh(envoy, &format!("u{sent}"), &[("x-app", "failing")]);
            sent += 1;
        }
        assert_eq!(
            wait_gauge(envoy, "failing", "aborted", 1, Duration::from_secs(3)),
            1,
            "aborted once per Envoy after {sent} requests"
        );
        assert_eq!(
            wait_gauge(envoy, "failing", "basis_points", 0, Duration::from_secs(2)),
            0
        );
    }
    // Past open_s (the breaker half-opens, then would let probes through) and past the 100%
    // step: the aborted rollout stays at 0%, the healthy one is at 100%.
    let past_open_s = Instant::now() + Duration::from_millis(1500);
    while now_ms() < start_ms + 10_500 || Instant::now() < past_open_s {
        std::thread::sleep(Duration::from_millis(100));
    }
    for envoy in [&a, &b] {
        for i in 0..60 {
            let user = format!("late{i}");
            let r = fresh(envoy, &user, &[("x-app", "failing")]);
            assert_eq!((r.status, r.backend()), (200, "stable"), "{user}");
            let r = fresh(envoy, &user, &[("x-app", "healthy")]);
            assert_eq!(r.backend(), "good", "{user}");
        }
        assert_eq!(gauge(envoy, "failing", "basis_points"), 0);
        assert_eq!(gauge(envoy, "failing", "step"), 2);
        assert_eq!(gauge(envoy, "failing", "aborted"), 1);
        assert_eq!(gauge(envoy, "healthy", "basis_points"), 10_000);
        assert_eq!(gauge(envoy, "healthy", "aborted"), 0);
        let log = envoy.log();
        assert_eq!(
            log.matches("rollout of rule \"failing\" aborted at step 1/2 (share was 50%, now 0%): reason: the breaker of destination \"canary\" opened").count(),
            1,
            "{log}"
        );
    }
}

/// The abort of a rollout is shared under a key of the filter instance, rule, destination and
/// cluster, with the rollout plan in its value: a configuration push that changes something
/// else (here: another rule, through ECDS as an Istio WasmPlugin change) keeps the rollout
/// aborted at 0% (the canary's half-open breaker gets no probe: no request reaches it), while
/// a change of the rollout itself starts it afresh.
#[test]
fn an_abort_survives_unrelated_pushes_and_only_a_rollout_change_clears_it() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let stable = Backend::start("stable");
    let bad = Backend::start("bad");
    bad.set_status(503);
    let start = format_rfc3339(now_ms() - 1000);
    let config = |percent: u32, other_rule: bool| {
        let other = if other_rule {
            r#"{"name":"other","match":{"headers":[{"name":"x-other","present":true}]},
                "destinations":[{"name":"stable","cluster":"stable"}]},"#
        } else {
            ""
        };
        format!(
            r#"{{"rules":[{other}{{"name":"ramp","sticky":{{"header":"x-user-id"}},"destinations":[
              {{"name":"canary","cluster":"bad","fallback":"stable",
                "breaker":{{"failure_ratio":0.5,"min_requests":10,"window_s":10,"open_s":1}}}},
              {{"name":"stable","cluster":"stable"}}],
              "rollout":{{"destination":"canary","start":"{start}","steps":[
                {{"percent":{percent}}}]}}}}]}}"#
        )
    };
    let envoy = Envoy::start(
        EnvoySpec::new(&config(50, false))
            .ecds()
            .cluster("stable", stable.addr)
            .cluster("bad", bad.addr),
    );
    assert_eq!(gauge(&envoy, "ramp", "basis_points"), 5000);
    let mut sent = 0;
    while gauge(&envoy, "ramp", "aborted") == 0 && sent < 400 {
        fresh(&envoy, &format!("u{sent}"), &[]);
        sent += 1;
    }
    assert_eq!(
        wait_gauge(&envoy, "ramp", "aborted", 1, Duration::from_secs(3)),
        1
    );
    assert_eq!(
        wait_gauge(&envoy, "ramp", "basis_points", 0, Duration::from_secs(2)),
        0
    );
    // Past open_s: the breaker is half-open and would let probes through to the canary.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(envoy.reconfigure(&config(50, true), 1), "push not applied");
    std::thread::sleep(Duration::from_millis(500)); // a few ticks of the new configuration
    let reached = bad.count();
    for i in 0..60 {
        let r = fresh(&envoy, &format!("after{i}"), &[]);
        assert_eq!((r.status, r.backend()), (200, "stable"), "after{i}");
    }
    assert_eq!(bad.count(), reached, "the aborted canary got traffic again");
    assert_eq!(gauge(&envoy, "ramp", "basis_points"), 0);
    assert_eq!(gauge(&envoy, "ramp", "aborted"), 1, "aborted again");
    // The rollout itself changes (40%, the canary fixed): it starts afresh.
    bad.set_status(200);
    assert!(envoy.reconfigure(&config(40, true), 2), "push not applied");
    assert_eq!(
        wait_gauge(&envoy, "ramp", "basis_points", 4000, Duration::from_secs(3)),
        4000
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut i = 0;
    while bad.count() == reached && Instant::now() < deadline {
        fresh(&envoy, &format!("new{i}"), &[]);
        i += 1;
    }
    assert!(
        bad.count() > reached,
        "the restarted rollout sent nothing to the canary"
    );
    assert_eq!(gauge(&envoy, "ramp", "aborted"), 1);
    let log = envoy.log();
    assert_eq!(
        log.matches("rollout of rule \"ramp\" aborted at step 1/1")
            .count(),
        1,
        "{log}"
    );
}
