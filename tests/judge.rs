//! End-to-end: the judge in a real Envoy (two workers, windows of 2 s). A canary failing 8%
//! against a baseline failing 1% fails and aborts its rollout within `fail_after` + 1 windows;
//! a canary 200 ms slower fails on latency; identical arms never fail over 10 windows; a canary
//! with 5 requests per window stays inconclusive.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One test at a time: each drives steady load for many windows, and on a loaded machine two
/// would starve each other's windows of requests.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn stat(envoy: &Envoy, what: &str) -> u64 {
    envoy.counter(&format!("traffic_split.judge.checkout.{what}"))
}

fn windows(envoy: &Envoy) -> (u64, u64, u64) {
    (
        stat(envoy, "windows_passed"),
        stat(envoy, "windows_failed"),
        stat(envoy, "windows_inconclusive"),
    )
}

/// Background load: `threads` clients, each with its own keep-alive connection, sending
/// requests until stopped; `fail(i)` gives the `x-fail` header of the i-th request (the
/// backend of that name answers 500). At most `max_requests` in all.
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(
        envoy: &Envoy,
        threads: usize,
        pause: Duration,
        max_requests: u64,
        fail: fn(u64) -> Option<&'static str>,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let url = envoy.url("/");
        let handles = (0..threads)
            .map(|_| {
                let (stop, sent, url) = (Arc::clone(&stop), Arc::clone(&sent), url.clone());
                std::thread::spawn(move || {
                    let agent = ureq::AgentBuilder::new()
                        .timeout(Duration::from_secs(10))
                        .build();
                    while !stop.load(Ordering::SeqCst) {
                        let i = sent.fetch_add(1, Ordering::SeqCst);
                        if i >= max_requests {
                            break;
                        }
                        let mut req = agent.get(&url);
                        if let Some(name) = fail(i) {
                            req = req.set("x-fail", name);
                        }
                        let _ = req.call();
                        if !pause.is_zero() {
                            std::thread::sleep(pause);
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            sent,
            threads: handles,
        }
    }

    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().unwrap();
        }
        self.sent.load(Ordering::SeqCst)
    }
}

/// Polls until `done` holds or `within` passes; returns whether it held.
fn wait_until(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if done() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `x-fail` on 8% of requests for the canary and on 1% for the stable: each arm then fails
/// at that rate whichever requests the split sends it (a deterministic pattern per 100).
fn eight_vs_one(i: u64) -> Option<&'static str> {
    match i % 100 {
        0..=7 => Some("canary"),
        50 => Some("stable"),
        _ => None,
    }
}

#[test]
fn a_canary_failing_8_percent_against_1_percent_fails_and_aborts_its_rollout() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let stable = Backend::start("stable");
    let canary = Backend::start("canary");
    let config = r#"{"rules":[{"name":"checkout","destinations":[
            {"name":"canary","cluster":"canary"},{"name":"stable","cluster":"stable"}],
        "rollout":{"destination":"canary","start":"2026-01-01T00:00:00Z",
            "steps":[{"percent":50,"hold_s":315360000},{"percent":100}]},
        "judge":{"window_s":2,"min_requests":100,"fail_after":2,"errors":{"max_increase":0.01}}}]}"#;
    let envoy = Envoy::start(
        EnvoySpec::new(config)
            .cluster("stable", stable.addr)
            .cluster("canary", canary.addr),
    );
    assert_eq!(
        envoy.counter("traffic_split.rollout.checkout.basis_points"),
        5000
    );
    assert_eq!(envoy.counter("traffic_split.rollout.checkout.aborted"), 0);
    let before = windows(&envoy);
    let load = Load::start(&envoy, 4, Duration::ZERO, 200_000, eight_vs_one);
    let aborted = wait_until(Duration::from_secs(40), || {
        envoy.counter("traffic_split.rollout.checkout.aborted") == 1
    });
    let after = windows(&envoy);
    // Every worker learns the abort on its next tick (100 ms); then the canary gets nothing.
    std::thread::sleep(Duration::from_millis(500));
    let canary_then = canary.count();
    std::thread::sleep(Duration::from_millis(1000));
    let canary_later = canary.count();
    let sent = load.stop();
    let log = envoy.log();
    assert!(
        aborted,
        "no abort after 40 s ({sent} requests); windows {after:?}\n{log}"
    );
    // Windows closed with traffic before the abort: at most fail_after + 1 (the first may be
    // partial), and exactly fail_after of them failed.
    let closed = (after.0 + after.1 + after.2) - (before.0 + before.1 + before.2);
    assert_eq!(
        after.1 - before.1,
        2,
        "failed windows: {after:?} vs {before:?}"
    );
    assert!(
        closed <= 2 + 1 + 1,
        "{closed} windows closed before the abort: {after:?}"
    );
    assert_eq!(
        envoy.counter("traffic_split.rollout.checkout.basis_points"),
        0
    );
    assert_eq!(stat(&envoy, "verdict"), 2);
    let canary_req = stat(&envoy, "canary_requests");
    assert!(
        canary_req >= 100,
        "canary requests in the last window: {canary_req}"
    );
    let bp = stat(&envoy, "canary_failure_bp");
    assert!((500..=1100).contains(&bp), "canary failure bp {bp}");
    let bp = stat(&envoy, "baseline_failure_bp");
    assert!(bp <= 300, "baseline failure bp {bp}");
    assert_eq!(
        canary_later, canary_then,
        "the canary still gets traffic after the abort"
    );
    let line = log
        .lines()
        .find(|l| {
            l.contains("judge of rule \"checkout\" failed window")
                && l.contains("-> rollout aborted")
        })
        .unwrap_or_else(|| panic!("no abort line in the log:\n{log}"));
    assert!(
        line.contains("canary failures ") && line.contains(", allowed +1.0 pp at 99%"),
        "{line}"
    );
    assert!(
        log.contains("rollout of rule \"checkout\" aborted"),
        "{log}"
    );
}

#[test]
fn a_canary_200_ms_slower_fails_on_latency() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let stable = Backend::start("stable");
    let canary = Backend::start("canary");
    canary.set_delay(Duration::from_millis(200));
    let config = r#"{"rules":[{"name":"checkout","destinations":[
            {"name":"canary","cluster":"canary"},{"name":"stable","cluster":"stable"}],
        "judge":{"window_s":2,"min_requests":20,"fail_after":1,"on_fail":"report",
            "latency":{"percentile":90,"max_ratio":1.2}}}]}"#;
    let envoy = Envoy::start(
        EnvoySpec::new(config)
            .cluster("stable", stable.addr)
            .cluster("canary", canary.addr),
    );
    let load = Load::start(&envoy, 8, Duration::ZERO, 20_000, |_| None);
    let failed = wait_until(Duration::from_secs(30), || {
        stat(&envoy, "windows_failed") > 0
    });
    let sent = load.stop();
    let log = envoy.log();
    assert!(failed, "no failing window ({sent} requests)\n{log}");
    let line = log
        .lines()
        .find(|l| l.contains("judge of rule \"checkout\" failed window"))
        .unwrap();
    assert!(
        line.contains("p90 ")
            && line.contains("allowed x1.2 at 99%")
            && line.contains("no action taken"),
        "{line}"
    );
    // The canary's p90 is about 200 ms, the baseline's a few.
    let canary_ms = stat(&envoy, "canary_latency_ms");
    let baseline_ms = stat(&envoy, "baseline_latency_ms");
    assert!(
        (190..=400).contains(&canary_ms),
        "canary p90 {canary_ms} ms"
    );
    assert!(baseline_ms < 100, "baseline p90 {baseline_ms} ms");
    // Report only: the canary keeps its traffic.
    let before = canary.count();
    for _ in 0..20 {
        envoy.get("/", &[]);
    }
    assert!(canary.count() > before, "report must not move traffic");
}

#[test]
fn identical_arms_never_fail_over_ten_windows() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let stable = Backend::start("stable");
    let canary = Backend::start("canary");
    // Both arms fail 1% and answer alike; both criteria at their defaults but for the window.
    let config = r#"{"rules":[{"name":"checkout","destinations":[
            {"name":"canary","cluster":"canary"},{"name":"stable","cluster":"stable"}],
        "judge":{"window_s":2,"min_requests":50,"latency":{"percentile":90},"errors":{}}}]}"#;
    let envoy = Envoy::start(
        EnvoySpec::new(config)
            .cluster("stable", stable.addr)
            .cluster("canary", canary.addr),
    );
    let load = Load::start(&envoy, 2, Duration::from_millis(2), 100_000, |i| {
        match i % 100 {
            0 => Some("canary"),
            1 => Some("stable"),
            _ => None,
        }
    });
    let enough = wait_until(Duration::from_secs(60), || {
        stat(&envoy, "windows_passed") >= 10
    });
    let sent = load.stop();
    let (passed, failed, inconclusive) = windows(&envoy);
    assert!(
        enough,
        "{passed} passed, {inconclusive} inconclusive ({sent} requests)"
    );
    assert_eq!(failed, 0, "an A/A window failed:\n{}", envoy.log());
    assert!(!envoy.log().contains("judge of rule"), "{}", envoy.log());
    assert_eq!(envoy.counter("traffic_split.judge.checkout.verdict"), 1);
}

#[test]
fn a_canary_with_5_requests_per_window_stays_inconclusive() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let stable = Backend::start("stable");
    let canary = Backend::start("canary");
    // The canary fails every request, but only 5 per window reach it: never a failing window.
    canary.set_status(503);
    let config = r#"{"rules":[{"name":"checkout","sticky":{"header":"x-user-id"},"destinations":[
            {"name":"canary","cluster":"canary"},{"name":"stable","cluster":"stable"}],
        "judge":{"window_s":2,"fail_after":1}}]}"#;
    let envoy = Envoy::start(
        EnvoySpec::new(config)
            .cluster("stable", stable.addr)
            .cluster("canary", canary.addr),
    );
    let canary_users = users_bucketed_to(config, 0, 1);
    let stable_users = users_bucketed_to(config, 1, 1);
    // Every 400 ms: one canary request and 40 to the stable, for 6 windows (about 5 and 200
    // per window).
    let start = Instant::now();
    let before = stat(&envoy, "windows_inconclusive");
    while start.elapsed() < Duration::from_secs(13) {
        let tick = Instant::now();
        assert_eq!(
            envoy.get("/", &[("x-user-id", &canary_users[0])]).status,
            503
        );
        for _ in 0..40 {
            envoy.get("/", &[("x-user-id", &stable_users[0])]);
        }
        std::thread::sleep(Duration::from_millis(400).saturating_sub(tick.elapsed()));
    }
    let judged = wait_until(Duration::from_secs(5), || {
        stat(&envoy, "windows_inconclusive") >= before + 5
    });
    assert!(judged, "fewer than 5 windows judged");
    assert_eq!(stat(&envoy, "windows_failed"), 0, "{}", envoy.log());
    assert_eq!(stat(&envoy, "windows_passed"), 0);
    assert_eq!(stat(&envoy, "verdict"), 0);
    let last = stat(&envoy, "canary_requests");
    assert!(last <= 10, "canary requests in the last window: {last}");
    assert_eq!(
        stat(&envoy, "canary_failure_bp"),
        if last > 0 { 10_000 } else { 0 }
    );
    assert!(!envoy.log().contains("judge of rule"));
}

#[test]
fn gate_judge_holds_a_step_while_windows_are_inconclusive_and_advances_after_a_pass() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let stable = Backend::start("stable");
    let canary = Backend::start("canary");
    // Step 1's hold (2 s) passed long ago: only the judge holds it.
    let config = r#"{"rules":[{"name":"checkout","destinations":[
            {"name":"canary","cluster":"canary"},{"name":"stable","cluster":"stable"}],
        "rollout":{"destination":"canary","start":"2026-01-01T00:00:00Z","gate":"judge",
            "steps":[{"percent":50,"hold_s":2},{"percent":100}]},
        "judge":{"window_s":2,"min_requests":20,"errors":{}}}]}"#;
    let envoy = Envoy::start(
        EnvoySpec::new(config)
            .cluster("stable", stable.addr)
            .cluster("canary", canary.addr),
    );
    let rollout = |what: &str| envoy.counter(&format!("traffic_split.rollout.checkout.{what}"));
    assert_eq!((rollout("step"), rollout("basis_points")), (1, 5000));
    // A trickle (about 4 requests per window): inconclusive windows hold step 1.
    let before = stat(&envoy, "windows_inconclusive");
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(7) {
        envoy.get("/", &[]);
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(stat(&envoy, "windows_inconclusive") >= before + 2);
    assert_eq!(stat(&envoy, "windows_passed"), 0);
    assert_eq!((rollout("step"), rollout("basis_points")), (1, 5000));
    // Enough traffic for a passing window: the step ends.
    let load = Load::start(&envoy, 2, Duration::from_millis(2), 50_000, |_| None);
    let advanced = wait_until(Duration::from_secs(20), || rollout("step") == 2);
    let sent = load.stop();
    assert!(
        advanced,
        "still on step {} after {sent} requests; passed {}",
        rollout("step"),
        stat(&envoy, "windows_passed")
    );
    assert_eq!(rollout("basis_points"), 10_000);
    assert!(stat(&envoy, "windows_passed") >= 1);
    assert_eq!(stat(&envoy, "windows_failed"), 0);
}

#[test]
fn srm_flags_a_rule_whose_canary_users_stop_returning_and_not_a_healthy_one() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let stable = Backend::start("stable");
    let canary = Backend::start("canary");
    // Two sticky 50/50 rules with the same salt (so the same users), told apart by a header.
    // Errors only: a p99 is not judged from this few requests (its windows would be
    // inconclusive, and "healthy" must show judged windows).
    let rule = |name: &str| {
        format!(
            r#"{{"name":"{name}","match":{{"headers":[{{"name":"x-rule","exact":"{name}"}}]}},
            "salt":"s","sticky":{{"header":"x-user-id"}},"destinations":[
            {{"name":"canary","cluster":"canary"}},{{"name":"stable","cluster":"stable"}}],
            "judge":{{"window_s":2,"min_requests":5,"errors":{{}},"on_fail":"report"}}}}"#
        )
    };
    let config = format!(r#"{{"rules":[{},{}]}}"#, rule("healthy"), rule("leaky"));
    let envoy = Envoy::start(
        EnvoySpec::new(&config)
            .cluster("stable", stable.addr)
            .cluster("canary", canary.addr),
    );
    let srm = |name: &str| envoy.counter(&format!("traffic_split.rule.{name}.srm"));
    assert_eq!((srm("healthy"), srm("leaky")), (0, 0));
    let canary_users = users_bucketed_to(&config, 0, 200);
    let stable_users = users_bucketed_to(&config, 1, 200);
    // Every second: 8 new users per destination arrive; on "healthy" everyone seen comes back,
    // on "leaky" the canary's users never come back after their first request.
    let start = Instant::now();
    let mut round = 0;
    while start.elapsed() < Duration::from_secs(11) && round < 20 {
        let tick = Instant::now();
        round += 1;
        let seen = (round * 8).min(200);
        for user in &stable_users[..seen] {
            for name in ["healthy", "leaky"] {
                envoy.get("/", &[("x-rule", name), ("x-user-id", user)]);
            }
        }
        for (i, user) in canary_users[..seen].iter().enumerate() {
            envoy.get("/", &[("x-rule", "healthy"), ("x-user-id", user)]);
            if i >= seen - 8 {
                envoy.get("/", &[("x-rule", "leaky"), ("x-user-id", user)]);
            }
        }
        std::thread::sleep(Duration::from_secs(1).saturating_sub(tick.elapsed()));
    }
    let flagged = wait_until(Duration::from_secs(5), || srm("leaky") == 1);
    assert!(flagged, "the leaky rule's SRM stayed 0\n{}", envoy.log());
    assert_eq!(srm("healthy"), 0);
    assert!(
        envoy.counter("traffic_split.judge.healthy.windows_passed") >= 3,
        "healthy windows judged"
    );
}

#[test]
fn without_a_rollout_an_abort_sends_the_canarys_traffic_to_the_baseline() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let stable = Backend::start("stable");
    let canary = Backend::start("canary");
    canary.set_status(503);
    let config = r#"{"rules":[{"name":"checkout","destinations":[
            {"name":"canary","cluster":"canary"},{"name":"stable","cluster":"stable"}],
        "judge":{"window_s":2,"min_requests":20,"fail_after":1,"errors":{}}}]}"#;
    let envoy = Envoy::start(
        EnvoySpec::new(config)
            .cluster("stable", stable.addr)
            .cluster("canary", canary.addr),
    );
    // Before: the canary gets its half.
    let served: Vec<String> = (0..40)
        .map(|_| envoy.get("/", &[]).backend().to_string())
        .collect();
    assert!(served.iter().any(|b| b == "canary"), "{served:?}");
    let load = Load::start(&envoy, 2, Duration::from_millis(2), 50_000, |_| None);
    let failed = wait_until(Duration::from_secs(20), || {
        stat(&envoy, "windows_failed") > 0
    });
    let sent = load.stop();
    assert!(
        failed,
        "no failing window ({sent} requests)\n{}",
        envoy.log()
    );
    // Every worker learns the trigger on its next tick.
    std::thread::sleep(Duration::from_millis(500));
    let before = canary.count();
    let served: Vec<String> = (0..60)
        .map(|_| envoy.get("/", &[]).backend().to_string())
        .collect();
    assert!(served.iter().all(|b| b == "stable"), "{served:?}");
    assert_eq!(canary.count(), before);
    let log = envoy.log();
    assert!(
        log.contains("-> traffic of \"canary\" goes to \"stable\" until the configuration changes"),
        "{log}"
    );
}

/// `max_baseline_ratio` (default 4): on a 95/5 split the judge reads about 4 baseline outcomes
/// per canary outcome, not 19 (its status read is most of a judged request's cost); with 0 it
/// judges them all. Read from the last window's `canary_requests` / `baseline_requests`.
#[test]
fn a_95_5_split_judges_about_4_baseline_outcomes_per_canary_outcome() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let stable = Backend::start("stable");
    let canary = Backend::start("canary");
    for (ratio, expected, range) in [
        ("", 4.0, 2.5..6.5),
        (r#","max_baseline_ratio":0"#, 19.0, 12.0..30.0),
    ] {
        let config = format!(
            r#"{{"rules":[{{"name":"checkout","destinations":[
                {{"name":"canary","cluster":"canary","weight":5}},
                {{"name":"stable","cluster":"stable","weight":95}}],
            "judge":{{"window_s":5,"min_requests":20,"errors":{{}},"on_fail":"report"{ratio}}}}}]}}"#
        );
        let envoy = Envoy::start(
            EnvoySpec::new(&config)
                .cluster("stable", stable.addr)
                .cluster("canary", canary.addr),
        );
        let before = (stable.count(), canary.count());
        let load = Load::start(&envoy, 4, Duration::ZERO, 100_000, |_| None);
        // The gauges of one window (read again if a window closed between the reads) with
        // enough canary outcomes for the ratio to mean something.
        let mut last = (0, 0);
        // 5 s windows: 1,200 requests in one (240 a second from 4 clients) give the 60.
        // Not the first window: it began before Envoy did (and a loaded machine may be slow to
        // start its workers' ticks).
        let judged = wait_until(Duration::from_secs(60), || {
            let (passed, failed, inconclusive) = windows(&envoy);
            let c = stat(&envoy, "canary_requests");
            let b = stat(&envoy, "baseline_requests");
            last = (c, b);
            passed + failed + inconclusive >= 2 && c >= 60 && stat(&envoy, "canary_requests") == c
        });
        let sent = load.stop();
        let (c, b) = last;
        assert!(
            judged,
            "no window with 60 canary outcomes ({sent} requests): {c}/{b}"
        );
        let per_canary = b as f64 / c as f64;
        assert!(
            range.contains(&per_canary),
            "{b} baseline outcomes judged per {c} canary outcomes: {per_canary:.1}, expected about {expected}"
        );
        // The stable backend still got its 95%: sampling only skips reading outcomes.
        let (to_stable, to_canary) = (stable.count() - before.0, canary.count() - before.1);
        let routed = to_stable as f64 / (to_stable + to_canary) as f64;
        assert!(
            (0.9..0.99).contains(&routed),
            "stable got {routed:.3} of the requests"
        );
    }
}
