//! End-to-end: per-destination circuit breakers in a real Envoy with two workers. Requests go
//! over many connections, so both workers serve them and must agree.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use std::time::{Duration, Instant};

fn breaker_config(canary_cluster: &str, breaker: &str) -> String {
    format!(
        r#"{{"rules":[{{"name":"checkout","sticky":{{"header":"x-user-id"}},"destinations":[
            {{"name":"canary","cluster":"{canary_cluster}","weight":50,"fallback":"stable","breaker":{breaker}}},
            {{"name":"stable","cluster":"stable","weight":50}}]}}]}}"#
    )
}

/// Users the rule buckets to the canary.
fn canary_users(n: usize) -> Vec<String> {
    users_bucketed_to(&breaker_config("canary", "{}"), 0, n)
}

/// One request on a fresh connection (so the two workers share the load).
fn fresh(envoy: &Envoy, user: &str, headers: &[(&str, &str)]) -> Resp {
    fresh_on(envoy, 0, user, headers)
}

fn stat(envoy: &Envoy, what: &str) -> u64 {
    envoy.counter(&format!("traffic_split.breaker.checkout.canary.{what}"))
}

fn wait_stat(envoy: &Envoy, what: &str, expected: u64) -> u64 {
    envoy.wait_counter(
        &format!("traffic_split.breaker.checkout.canary.{what}"),
        expected,
    )
}

#[test]
fn a_failing_canary_is_cut_off_then_probed_back_and_its_users_return() {
    let stable = Backend::start("stable");
    let canary = Backend::start("canary");
    let config = breaker_config(
        "canary",
        r#"{"failure_ratio":0.5,"min_requests":20,"window_s":10,"open_s":2,"half_open_percent":50}"#,
    );
    let envoy = Envoy::start(
        EnvoySpec::new(&config)
            .cluster("stable", stable.addr)
            .cluster("canary", canary.addr),
    );
    let users = canary_users(40);
    // Healthy: every canary user is on the canary.
    for user in &users[..10] {
        assert_eq!(fresh(&envoy, user, &[]).backend(), "canary");
    }
    assert_eq!(stat(&envoy, "state"), 0);

    // The canary starts failing mid-run.
    canary.set_status(500);
    // Requests go round-robin over the canary users, each on a new connection, until 30 in a
    // row are served by the fallback; every 500 a client saw on the way is counted.
    let mut errors_seen = 0;
    let mut in_a_row = 0;
    let mut sent = 0;
    while in_a_row < 30 && sent < 600 {
        let r = fresh(&envoy, &users[sent % users.len()], &[]);
        sent += 1;
        if r.status == 500 {
            errors_seen += 1;
            in_a_row = 0;
        } else {
            assert_eq!(r.backend(), "stable");
            in_a_row += 1;
        }
    }
    eprintln!(
        "clients saw {errors_seen} errors before the breaker cut the canary off (min_requests 20, ratio 0.5, 10 healthy requests before; {sent} requests in all)"
    );
    assert_eq!(in_a_row, 30, "the breaker never opened");
    // 10 successes in the window: it takes >= 10 failures and >= 20 requests to trip.
    assert!((10..=60).contains(&errors_seen), "{errors_seen} errors");
    // From now on every canary user is served by the fallback, on both workers.
    for (i, user) in users.iter().enumerate().take(60) {
        let r = fresh(&envoy, user, &[]);
        assert_eq!((r.status, r.backend()), (200, "stable"), "request {i}");
    }
    assert_eq!(wait_stat(&envoy, "opened", 1), 1);
    assert_eq!(stat(&envoy, "state"), 1);
    assert!(wait_stat(&envoy, "rerouted", 60) >= 60);
    let prom = envoy.admin_get("/stats/prometheus");
    assert!(
        prom.contains("traffic_split_breaker_state{rule=\"checkout\",destination=\"canary\"} 1"),
        "{prom}"
    );
    let log = envoy.log();
    let opened_lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("breaker checkout/canary"))
        .collect();
    assert_eq!(opened_lines.len(), 1, "{opened_lines:?}");
    assert!(opened_lines[0].contains("[warning]"), "{}", opened_lines[0]);
    assert!(
        opened_lines[0].contains("(cluster canary) opened: ")
            && opened_lines[0].contains("its traffic goes to \"stable\" for 2 s"),
        "{}",
        opened_lines[0]
    );

    // The canary recovers: after open_s, probes go through, the breaker closes, and the
    // sticky users who had been on the canary are back on it.
    canary.set_status(200);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut consecutive_canary = 0;
    while consecutive_canary < users.len() && Instant::now() < deadline {
        let user = &users[consecutive_canary % users.len()];
        let r = fresh(&envoy, user, &[]);
        assert_eq!(r.status, 200);
        if r.backend() == "canary" {
            consecutive_canary += 1;
        } else {
            consecutive_canary = 0;
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert_eq!(consecutive_canary, users.len(), "users did not come back");
    assert_eq!(wait_stat(&envoy, "closed", 1), 1);
    assert_eq!(stat(&envoy, "state"), 0);
    let log = envoy.log();
    // open_s was measured on Envoy's monotonic clock (WASI), not the wall clock.
    assert!(!log.contains("no monotonic clock"), "{log}");
    assert!(log.contains(
        "(cluster canary) half-open after 2 s: 50.0% of its traffic goes through as probes; \
         it closes when fewer than 50.0% of 20 probes fail"
    ));
    // At least min_requests probes; a publish may merge a few more from the other worker.
    let closed = log
        .lines()
        .find(|l| l.contains("(cluster canary) closed: 0 of "))
        .unwrap_or_else(|| panic!("no close line in the log:\n{log}"));
    assert!(
        closed.ends_with("probes failed (0.0%); its traffic is back"),
        "{closed}"
    );
}

#[test]
fn a_canary_refusing_connections_trips_through_envoys_local_replies() {
    let stable = Backend::start("stable");
    let dead = closed_port();
    let config = r#"{"rules":[
        {"name":"counted","match":{"headers":[{"name":"x-case","exact":"counted"}]},"sticky":{"header":"x-user-id"},
          "destinations":[{"name":"canary","cluster":"dead","weight":50,"fallback":"stable",
                           "breaker":{"min_requests":10,"failure_statuses":[500]}},
                          {"name":"stable","cluster":"stable","weight":50}]},
        {"name":"ignored","match":{"headers":[{"name":"x-case","exact":"ignored"}]},"sticky":{"header":"x-user-id"},
          "destinations":[{"name":"canary","cluster":"dead","weight":50,"fallback":"stable",
                           "breaker":{"min_requests":10,"count_local_replies":false}},
                          {"name":"stable","cluster":"stable","weight":50}]}]}"#;
    let envoy = Envoy::start(
        EnvoySpec::new(config)
            .cluster("stable", stable.addr)
            .cluster("dead", dead),
    );
    let users: Vec<String> = (0..400).map(|i| format!("u{i}")).collect();
    // Only 500 is a failure status here, but Envoy's 503 "connection refused" replies count
    // as failures through count_local_replies.
    let mut refused = 0;
    for user in &users {
        let r = fresh(&envoy, user, &[("x-case", "counted")]);
        if r.status == 503 {
            refused += 1;
        }
    }
    eprintln!("clients saw {refused} refused-connection 503s before the breaker opened");
    assert!((10..=40).contains(&refused), "{refused}");
    assert_eq!(
        envoy.wait_counter("traffic_split.breaker.counted.canary.opened", 1),
        1
    );
    assert_eq!(
        envoy.counter("traffic_split.breaker.counted.canary.state"),
        1
    );
    // The same failures, with count_local_replies off: not the version's answers, no trip.
    let mut ignored_503 = 0;
    for user in &users[..200] {
        if fresh(&envoy, user, &[("x-case", "ignored")]).status == 503 {
            ignored_503 += 1;
        }
    }
    assert!(ignored_503 > 50, "{ignored_503}");
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        envoy.counter("traffic_split.breaker.ignored.canary.opened"),
        0
    );
    assert_eq!(
        envoy.counter("traffic_split.breaker.ignored.canary.state"),
        0
    );
}

#[test]
fn below_min_requests_or_just_under_the_ratio_nothing_trips() {
    let stable = Backend::start("stable");
    let canary = Backend::start("canary");
    let rule = |name: &str| {
        format!(
            r#"{{"name":"{name}","salt":"checkout","match":{{"headers":[{{"name":"x-case","exact":"{name}"}}]}},
                "sticky":{{"header":"x-user-id"}},"destinations":[
                {{"name":"canary","cluster":"canary","weight":50,"fallback":"stable",
                  "breaker":{{"failure_ratio":0.5,"min_requests":50,"window_s":60,"open_s":30}}}},
                {{"name":"stable","cluster":"stable","weight":50}}]}}"#
        )
    };
    let config = format!(r#"{{"rules":[{},{}]}}"#, rule("volume"), rule("ratio"));
    let envoy = Envoy::start(
        EnvoySpec::new(&config)
            .cluster("stable", stable.addr)
            .cluster("canary", canary.addr),
    );
    let users = canary_users(50);
    let state = |rule: &str| envoy.counter(&format!("traffic_split.breaker.{rule}.canary.state"));
    let send = |case: &str, user: &str, fail: bool| {
        let mut headers = vec![("x-case", case)];
        if fail {
            headers.push(("x-fail", "1"));
        }
        fresh(&envoy, user, &headers)
    };
    // Nothing but failures, but fewer requests than min_requests.
    for user in users.iter().take(49) {
        assert_eq!(send("volume", user, true).status, 500);
    }
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(state("volume"), 0);

    // 60 successes, then failures up to 59 of 119 (49.6%): never at the ratio, no trip.
    for user in users.iter().cycle().take(60) {
        assert_eq!(send("ratio", user, false).backend(), "canary");
    }
    for user in users.iter().cycle().take(59) {
        assert_eq!(send("ratio", user, true).status, 500);
    }
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(state("ratio"), 0);
    assert_eq!(
        envoy.counter("traffic_split.breaker.ratio.canary.opened"),
        0
    );
    // One more failure: 60 of 120 = 50%, at the ratio: it trips.
    assert_eq!(send("ratio", &users[0], true).status, 500);
    assert_eq!(
        envoy.wait_counter("traffic_split.breaker.ratio.canary.opened", 1),
        1
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(send("ratio", &users[1], false).backend(), "stable");
    assert_eq!(state("volume"), 0, "the other rule's breaker is its own");
}

/// One request on a fresh connection to listener `i`.
fn fresh_on(envoy: &Envoy, i: usize, user: &str, headers: &[(&str, &str)]) -> Resp {
    let mut req = ureq::AgentBuilder::new()
        .build()
        .get(&envoy.url_on(i, "/"))
        .set("x-user-id", user);
    for (n, v) in headers {
        req = req.set(n, v);
    }
    Resp::from(req.call())
}

#[test]
fn filter_instances_sharing_a_vm_id_with_a_destination_on_another_cluster_keep_their_own_breakers()
{
    let stable = Backend::start("stable");
    let canary = Backend::start("canary");
    let breaker = r#"{"failure_ratio":0.5,"min_requests":10,"window_s":10,"open_s":30}"#;
    // Two filter instances with the same name, root id and vm_id, so one VM per worker runs
    // both and they share one shared-data namespace. The second listener's configuration has
    // the same rule and destination names, with the destination on another cluster (the same
    // backend): another version, which must not inherit the first one's open breaker. The
    // same holds for a destination repointed by a configuration update: the record's key is
    // the instance, rule, destination and cluster.
    let envoy = Envoy::start(
        EnvoySpec::new(&breaker_config("canary", breaker))
            .cluster("stable", stable.addr)
            .cluster("canary", canary.addr)
            .cluster("canary-b", canary.addr)
            .listener(&breaker_config("canary-b", breaker), None)
            .listener(&breaker_config("canary", breaker), Some("OUTBOUND")),
    );
    let users = canary_users(20);
    open_canary_breaker(&envoy, &users);
    // Several ticks: every worker's other instance has read the shared data by now.
    std::thread::sleep(Duration::from_millis(500));
    for (i, user) in users.iter().enumerate() {
        let r = fresh_on(&envoy, 1, user, &[]);
        assert_eq!(
            (r.status, r.backend()),
            (200, "canary"),
            "request {i}: the other instance's open breaker leaked"
        );
    }
    // And the main listener's breaker is still open. The third listener repeats the main
    // configuration verbatim (only its traffic direction differs): Envoy runs both with one
    // root context per worker, one filter instance, so it follows the same breaker (as
    // docs/configuration.md says).
    for listener in [0, 2] {
        for user in &users[..5] {
            assert_eq!(fresh_on(&envoy, listener, user, &[]).backend(), "stable");
        }
    }
    let log = envoy.log();
    assert_eq!(log.matches("(cluster canary) opened: ").count(), 1, "{log}");
    assert_eq!(
        log.matches("(cluster canary-b) opened: ").count(),
        0,
        "{log}"
    );
}

/// Breakers r0..r{n-1}, each on its own rule (header x-case) with all traffic on the canary.
fn storm_config(rules: usize) -> String {
    let rules: Vec<String> = (0..rules)
        .map(|i| {
            format!(
                r#"{{"name":"r{i}","match":{{"headers":[{{"name":"x-case","exact":"r{i}"}}]}},"destinations":[
                {{"name":"canary","cluster":"canary","weight":1,"fallback":"stable",
                  "breaker":{{"failure_ratio":0.5,"min_requests":1,"window_s":10,"open_s":2,"half_open_percent":100}}}},
                {{"name":"stable","cluster":"stable","weight":0}}]}}"#
            )
        })
        .collect();
    format!(r#"{{"rules":[{}]}}"#, rules.join(","))
}

/// `n` requests at once (each thread on its own connection, released together).
fn burst(envoy: &Envoy, n: usize, headers: &[(&str, &str)]) -> Vec<Resp> {
    let barrier = std::sync::Barrier::new(n);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                let barrier = &barrier;
                scope.spawn(move || {
                    let agent = ureq::AgentBuilder::new().build();
                    let mut req = agent.get(&envoy.url("/"));
                    for (name, value) in headers {
                        req = req.set(name, value);
                    }
                    barrier.wait();
                    Resp::from(req.call())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn a_failure_storm_on_four_workers_makes_each_transition_once() {
    const RULES: usize = 24;
    let stable = Backend::start("stable");
    let canary = Backend::start("canary");
    let mut spec = EnvoySpec::new(&storm_config(RULES))
        .cluster("stable", stable.addr)
        .cluster("canary", canary.addr);
    spec.concurrency = 4;
    let envoy = Envoy::start(spec);
    // Every breaker's first failures reach the four workers at once: each worker trips it
    // (min_requests 1) and publishes at the same moment as the others.
    for i in 0..RULES {
        let case = format!("r{i}");
        let answers = burst(&envoy, 8, &[("x-case", &case), ("x-fail", "1")]);
        assert!(answers.iter().any(|r| r.status == 500), "{case}");
    }
    for i in 0..RULES {
        let name = format!("traffic_split.breaker.r{i}.canary.opened");
        assert_eq!(envoy.wait_counter(&name, 1), 1, "{name}");
    }
    // After open_s every breaker half-opens (all traffic probes) and closes on a success.
    std::thread::sleep(Duration::from_millis(2200));
    for i in 0..RULES {
        let case = format!("r{i}");
        let deadline = Instant::now() + Duration::from_secs(5);
        while envoy.counter(&format!("traffic_split.breaker.r{i}.canary.closed")) == 0
            && Instant::now() < deadline
        {
            let answers = burst(&envoy, 4, &[("x-case", &case)]);
            assert!(answers.iter().all(|r| r.status == 200), "{case}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    std::thread::sleep(Duration::from_millis(400));
    let log = envoy.log();
    let mut disagreements = Vec::new();
    for i in 0..RULES {
        let counter =
            |what: &str| envoy.counter(&format!("traffic_split.breaker.r{i}.canary.{what}"));
        let lines = |what: &str| {
            log.matches(&format!("breaker r{i}/canary (cluster canary) {what}"))
                .count()
        };
        // The record went closed → open → half-open → closed: generation 3, one line each.
        let seen = (
            lines("opened:"),
            lines("half-open"),
            lines("closed:"),
            lines("re-opened"),
            counter("opened"),
            counter("closed"),
            counter("state"),
        );
        if seen != (1, 1, 1, 0, 1, 1, 0) {
            disagreements.push(format!("r{i}: {seen:?}"));
        }
    }
    assert!(
        disagreements.is_empty(),
        "(opened, half-open, closed, re-opened lines; opened, closed counters; state):\n{}",
        disagreements.join("\n")
    );
    let conflicts: u64 = (0..RULES)
        .map(|i| {
            envoy.counter(&format!(
                "traffic_split.breaker.r{i}.canary.publish_conflicts"
            ))
        })
        .sum();
    eprintln!("{RULES} breakers, 4 workers: {conflicts} compare-and-swap writes lost and retried");
}

#[test]
fn four_workers_lose_no_outcome() {
    let stable = Backend::start("stable");
    let canary = Backend::start("canary");
    // Every request fails: 199 stay under min_requests, the 200th trips the breaker — only
    // if not one outcome of the four workers was lost or counted twice.
    let config = r#"{"rules":[{"name":"r0","destinations":[
        {"name":"canary","cluster":"canary","weight":1,"fallback":"stable",
         "breaker":{"failure_ratio":1.0,"min_requests":200,"window_s":60,"open_s":60}},
        {"name":"stable","cluster":"stable","weight":0}]}]}"#;
    let mut spec = EnvoySpec::new(config)
        .cluster("stable", stable.addr)
        .cluster("canary", canary.addr);
    spec.concurrency = 4;
    let envoy = Envoy::start(spec);
    let mut failed = 0;
    for burst_size in std::iter::repeat_n(8, 24).chain([7]) {
        let answers = burst(&envoy, burst_size, &[("x-fail", "canary")]);
        failed += answers.iter().filter(|r| r.status == 500).count();
    }
    assert_eq!(failed, 199);
    std::thread::sleep(Duration::from_millis(500));
    let opened = "traffic_split.breaker.r0.canary.opened";
    assert_eq!(
        envoy.counter(opened),
        0,
        "tripped below min_requests: counted twice"
    );
    assert_eq!(envoy.counter("traffic_split.breaker.r0.canary.state"), 0);
    assert_eq!(burst(&envoy, 1, &[("x-fail", "canary")])[0].status, 500);
    assert_eq!(
        envoy.wait_counter(opened, 1),
        1,
        "the 200th failure did not trip: lost"
    );
    let log = envoy.log();
    let line = log
        .lines()
        .find(|l| l.contains("breaker r0/canary (cluster canary) opened: "))
        .unwrap_or_else(|| panic!("no opened line:\n{log}"));
    assert!(
        line.contains("opened: 200 of 200 requests failed (100.0%)"),
        "{line}"
    );
    let conflicts = envoy.counter("traffic_split.breaker.r0.canary.publish_conflicts");
    eprintln!("200 failures over 4 workers: {conflicts} compare-and-swap writes lost and retried");
}

#[test]
fn two_wasm_plugins_sharing_a_vm_id_keep_separate_breakers_and_say_their_metrics_are_shared() {
    let stable = Backend::start("stable");
    let canary = Backend::start("canary");
    let breaker = r#"{"failure_ratio":0.5,"min_requests":10,"window_s":10,"open_s":30}"#;
    // The same configuration under another plugin name (a second WasmPlugin, same vm_id):
    // rule, destination and cluster names all equal, the records still separate.
    let config = breaker_config("canary", breaker);
    let envoy = Envoy::start(
        EnvoySpec::new(&config)
            .cluster("stable", stable.addr)
            .cluster("canary", canary.addr)
            .listener_named("traffic-split-other", &config),
    );
    let users = canary_users(20);
    open_canary_breaker(&envoy, &users);
    std::thread::sleep(Duration::from_millis(500));
    for (i, user) in users.iter().enumerate() {
        let r = fresh_on(&envoy, 1, user, &[]);
        assert_eq!((r.status, r.backend()), (200, "canary"), "request {i}");
    }
    let log = envoy.log();
    assert!(
        log.contains(
            "breaker checkout/canary: another filter instance sharing this vm_id has a breaker \
             with the same rule and destination names (cluster canary)"
        ),
        "{log}"
    );
}

fn breaker_state(envoy: &Envoy) -> Option<u64> {
    envoy.try_counter("traffic_split.breaker.checkout.canary.state")
}

/// Opens checkout/canary's breaker behind the main listener (its backend fails on
/// `x-fail: canary`): canary users' requests until 20 in a row went on to stable.
fn open_canary_breaker(envoy: &Envoy, users: &[String]) {
    let mut in_a_row = 0;
    let mut sent = 0;
    while in_a_row < 20 && sent < 400 {
        let r = fresh(envoy, &users[sent % users.len()], &[("x-fail", "canary")]);
        sent += 1;
        if r.status == 500 {
            in_a_row = 0;
        } else {
            assert_eq!(r.backend(), "stable");
            in_a_row += 1;
        }
    }
    assert_eq!(in_a_row, 20, "the main listener's breaker never opened");
}

/// Polls the state gauge until it is `expected`; returns the last value seen.
fn wait_state(envoy: &Envoy, expected: u64) -> Option<u64> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state = breaker_state(envoy);
        if state == Some(expected) || Instant::now() > deadline {
            return state;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

const UPDATE_BREAKER: &str = r#"{"failure_ratio":0.5,"min_requests":10,"window_s":10,"open_s":60}"#;

#[test]
fn an_update_that_removes_an_open_breaker_clears_its_state_gauge() {
    let stable = Backend::start("stable");
    let canary = Backend::start("canary");
    let envoy = Envoy::start(
        EnvoySpec::new(&breaker_config("canary", UPDATE_BREAKER))
            .ecds()
            .cluster("stable", stable.addr)
            .cluster("canary", canary.addr),
    );
    let users = canary_users(20);
    open_canary_breaker(&envoy, &users);
    assert_eq!(wait_state(&envoy, 1), Some(1));
    // The same rule without the breaker: the canary takes its users again, and nothing is
    // left to report the gauge, so `state != 0` must clear rather than stay 1 forever.
    let without = r#"{"rules":[{"name":"checkout","sticky":{"header":"x-user-id"},"destinations":[
        {"name":"canary","cluster":"canary","weight":50},{"name":"stable","cluster":"stable","weight":50}]}]}"#;
    assert!(envoy.reconfigure(without, 1));
    for user in &users {
        assert_eq!(fresh(&envoy, user, &[]).backend(), "canary");
    }
    assert_eq!(
        wait_state(&envoy, 0),
        Some(0),
        "the removed breaker's gauge is stuck"
    );
}

#[test]
fn an_update_repointing_the_destination_starts_it_closed_and_one_keeping_it_stays_open() {
    let stable = Backend::start("stable");
    let canary = Backend::start("canary");
    let envoy = Envoy::start(
        EnvoySpec::new(&breaker_config("canary", UPDATE_BREAKER))
            .ecds()
            .cluster("stable", stable.addr)
            .cluster("canary", canary.addr)
            .cluster("canary-b", canary.addr),
    );
    let users = canary_users(20);
    open_canary_breaker(&envoy, &users);
    assert_eq!(wait_state(&envoy, 1), Some(1));
    // Another setting changes, the cluster stays: the same version, still open, and the
    // gauge still says so after the previous configuration is gone.
    let other_ratio = r#"{"failure_ratio":0.6,"min_requests":10,"window_s":10,"open_s":60}"#;
    assert!(envoy.reconfigure(&breaker_config("canary", other_ratio), 1));
    for user in &users {
        assert_eq!(fresh(&envoy, user, &[]).backend(), "stable");
    }
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(
        breaker_state(&envoy),
        Some(1),
        "an update kept the breaker open"
    );
    // Repointed to another cluster: another version, which starts closed.
    assert!(envoy.reconfigure(&breaker_config("canary-b", other_ratio), 2));
    for (i, user) in users.iter().enumerate() {
        let r = fresh(&envoy, user, &[]);
        assert_eq!((r.status, r.backend()), (200, "canary"), "request {i}");
    }
    assert_eq!(wait_state(&envoy, 0), Some(0));
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(
        breaker_state(&envoy),
        Some(0),
        "the old configuration reset the gauge"
    );
    let log = envoy.log();
    assert!(
        log.contains(
            "breaker checkout/canary: its state gauge now reports cluster canary-b's breaker"
        ),
        "{log}"
    );
}

#[test]
fn consecutive_failures_cut_a_canary_off_after_a_long_healthy_stretch() {
    let stable = Backend::start("stable");
    let canary = Backend::start("canary");
    let config = breaker_config(
        "canary",
        r#"{"failure_ratio":0.2,"min_requests":20,"window_s":60,"open_s":60,"consecutive_failures":3}"#,
    );
    let envoy = Envoy::start(
        EnvoySpec::new(&config)
            .cluster("stable", stable.addr)
            .cluster("canary", canary.addr),
    );
    let users = canary_users(50);
    // 2,000 healthy requests in the window: the ratio alone would need 500 failures.
    for i in 0..2000 {
        let r = envoy.get("/", &[("x-user-id", &users[i % users.len()])]);
        assert_eq!(r.backend(), "canary");
    }
    canary.set_status(503);
    let mut failures = 0;
    let mut in_a_row = 0;
    let mut sent = 0;
    while in_a_row < 20 && sent < 700 {
        let r = fresh(&envoy, &users[sent % users.len()], &[]);
        sent += 1;
        if r.status == 503 {
            failures += 1;
            in_a_row = 0;
        } else {
            assert_eq!(r.backend(), "stable");
            in_a_row += 1;
        }
    }
    assert_eq!(
        in_a_row, 20,
        "the breaker never opened ({failures} failures)"
    );
    // 3 in a row per worker (two workers), plus what the other worker sends before it learns
    // (a request at a time here, so at most a few).
    assert!(
        failures <= 8,
        "{failures} failures before the canary was cut off"
    );
    assert_eq!(wait_stat(&envoy, "opened", 1), 1);
    eprintln!("cut off after {failures} failures");
}
