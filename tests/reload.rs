//! End-to-end: live configuration changes. The filter comes through ECDS from a watched file
//! (`config_discovery` + `path_config_source`), as an Istio WasmPlugin change does, and its
//! configuration is swapped under steady load while slow shadow calls are in flight.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Every request goes to `stable` and is copied to `slow`. `pad` makes each configuration a
/// new one for Envoy (a new root context) without changing what it does or its metric names.
///
/// The bulkhead (`max_in_flight`, per worker) is set above what these loads keep in flight
/// (about a second of a fast machine's requests at 0.5 s answers, on one worker when the
/// clients' connections land there): a copy it drops would be counted (`dropped`), not lost,
/// but these tests prove that no copy goes missing across swaps, so none may be dropped either.
fn config(pad: usize) -> String {
    format!(
        r#"{{"max_in_flight":8192,"rules":[{{"name":"main","destinations":[{{"name":"stable","cluster":"stable"}}],
            "shadow":[{{"name":"slow","cluster":"slow","percent":100,"timeout_ms":3000}}]}}]}}{}"#,
        " ".repeat(pad)
    )
}

/// How one run of configuration swaps under load goes.
#[derive(Clone, Copy)]
struct Scenario {
    swaps: usize,
    /// From one swap to the next (the wait for Envoy to apply a swap is part of it).
    every: Duration,
    /// How long the shadow takes to answer each copy.
    shadow_delay: Duration,
    clients: usize,
    /// Per client thread: the load stops at this count even if the swaps take longer.
    max_requests_per_client: u64,
    /// Each client's pause between requests.
    pause: Duration,
    /// The swaps cycle through this many configurations (as an operator flipping a setting
    /// back and forth does; Envoy then reuses a replaced configuration's root context while
    /// it still has streams), or every swap is a new one (0).
    cycle: usize,
}

/// Swaps a little slower than the shadow's answers: each replaced configuration has calls in
/// flight, and a few replaced ones wait at once.
const STEADY: Scenario = Scenario {
    swaps: 24,
    every: Duration::from_millis(150),
    shadow_delay: Duration::from_millis(600),
    clients: 3,
    max_requests_per_client: 4000,
    pause: Duration::from_millis(5),
    cycle: 0,
};

fn shadow(envoy: &Envoy, what: &str) -> u64 {
    envoy.counter(&format!("traffic_split.shadow.slow.{what}"))
}

/// What one run of swaps under load left in Envoy's stats, once the dust settled.
struct Swapped {
    requests: u64,
    routed: u64,
    sent: u64,
    responses: u64,
    failed: u64,
    cancelled: u64,
    dropped: u64,
    /// Copies the shadow backend received.
    received: u64,
    /// Root contexts that waited for their calls, finished waiting, were deleted.
    waited: usize,
    finished: usize,
    deleted: usize,
    summary: String,
}

/// Steady load from a few clients, `swaps` configuration swaps through ECDS while shadow calls
/// (slower than a swap) are in flight; zero client errors; then the settled counters.
fn swap_under_load(wasm: Option<&Path>, sc: Scenario) -> Swapped {
    let stable = Backend::start("stable");
    let slow = Backend::start("slow");
    // Slower than a swap (every ~0.2 s): every swap replaces a configuration whose root
    // context has shadow calls in flight.
    slow.set_delay(sc.shadow_delay);
    let mut spec = EnvoySpec::new(&config(0))
        .ecds()
        .cluster("stable", stable.addr)
        .cluster("slow", slow.addr);
    if let Some(wasm) = wasm {
        spec = spec.wasm(wasm);
    }
    let envoy = Envoy::start(spec);
    assert_eq!(envoy.get("/", &[]).backend(), "stable");

    let stop = AtomicBool::new(false);
    let ok = AtomicU64::new(0);
    let errors = AtomicU64::new(0);
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..sc.clients {
            s.spawn(|| {
                for _ in 0..sc.max_requests_per_client {
                    if stop.load(Ordering::SeqCst) || started.elapsed() > Duration::from_secs(60) {
                        break;
                    }
                    match envoy.request("GET", "/load").call() {
                        Ok(r) if r.status() == 200 && r.header("x-backend") == Some("stable") => {
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                        _ => {
                            errors.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    std::thread::sleep(sc.pause);
                }
            });
        }
        for swap in 1..=sc.swaps {
            let next = Instant::now() + sc.every;
            assert!(
                envoy.reconfigure(
                    &config(if sc.cycle > 0 { swap % sc.cycle } else { swap }),
                    swap as u64
                ),
                "swap {swap} was not applied"
            );
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        std::thread::sleep(Duration::from_millis(200));
        stop.store(true, Ordering::SeqCst);
    });
    let requests = ok.load(Ordering::SeqCst) + 1; // + the first request
    assert_eq!(
        errors.load(Ordering::SeqCst),
        0,
        "client errors during the swaps"
    );

    // The dust settles: every copy answered (0.6 s), every replaced root context deleted.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let sent = shadow(&envoy, "sent");
        let ended = shadow(&envoy, "responses")
            + shadow(&envoy, "failed")
            + envoy
                .try_counter("traffic_split.shadow.slow.cancelled")
                .unwrap_or(0);
        if (sent + shadow(&envoy, "dropped") == requests && ended == sent)
            || Instant::now() > deadline
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let sent = envoy.settled_counter("traffic_split.shadow.slow.sent");
    let responses = envoy.settled_counter("traffic_split.shadow.slow.responses");
    let failed = envoy.settled_counter("traffic_split.shadow.slow.failed");
    let cancelled = envoy.settled_counter("traffic_split.shadow.slow.cancelled");
    let dropped = envoy.settled_counter("traffic_split.shadow.slow.dropped");
    let routed = envoy.settled_counter("traffic_split.rule.main.destination.stable.requests");
    let received = slow.count() as u64;
    let log = envoy.log();
    let waited = log.matches("waits for its shadow calls").count();
    let finished = log.matches("replaced configuration done").count();
    let mut waiting = 0usize;
    let mut most_waiting = 0;
    for line in log.lines() {
        if line.contains("waits for its shadow calls") {
            waiting += 1;
            most_waiting = most_waiting.max(waiting);
        } else if line.contains("replaced configuration done") {
            waiting = waiting.saturating_sub(1);
        }
    }
    let deleted = log
        .lines()
        .filter(|l| l.contains("traffic-split: root context") && l.ends_with(" deleted"))
        .count();
    let stats = envoy.stats();
    let cluster = |what: &str| {
        let name = format!("cluster.slow.{what}");
        *stats
            .get(&name)
            .unwrap_or_else(|| panic!("no stat named {name}"))
    };
    let swaps = sc.swaps;
    let summary = format!(
        "{requests} requests, {swaps} swaps every {:?}, shadow answers in {:?}: routed {routed}, shadow sent {sent}, \
         responses {responses}, failed {failed}, cancelled {cancelled}, dropped {dropped}, \
         the shadow received {received}; root contexts: {waited} waited for their calls \
         (at most {most_waiting} at once), \
         {finished} finished waiting, {deleted} deleted; Envoy's shadow cluster: \
         upstream_rq_total {}, upstream_rq_completed {}, upstream_rq_cancelled {}, \
         upstream_rq_timeout {}, upstream_cx_destroy_local_with_active_rq {}",
        sc.every,
        sc.shadow_delay,
        cluster("upstream_rq_total"),
        cluster("upstream_rq_completed"),
        cluster("upstream_rq_cancelled"),
        cluster("upstream_rq_timeout"),
        cluster("upstream_cx_destroy_local_with_active_rq"),
    );
    eprintln!("{summary}");
    Swapped {
        requests,
        routed,
        sent,
        responses,
        failed,
        cancelled,
        dropped,
        received,
        waited,
        finished,
        deleted,
        summary,
    }
}

#[test]
fn configuration_swaps_under_load_lose_no_request_and_no_count() {
    let r = swap_under_load(None, STEADY);
    let summary = &r.summary;
    // Nothing lost: every decision and every copy of every configuration reached Envoy's stats.
    assert_eq!(r.routed, r.requests, "{summary}");
    assert_eq!(r.sent + r.dropped, r.requests, "{summary}");
    assert_eq!(r.sent, r.responses + r.failed + r.cancelled, "{summary}");
    // Replaced configurations wait for their calls instead of having Envoy cancel them.
    assert_eq!((r.cancelled, r.failed, r.dropped), (0, 0, 0), "{summary}");
    assert_eq!(r.received, r.sent, "{summary}");
    assert!(r.sent > 200, "too little load to prove anything: {summary}");
    // Each replaced root context with calls in flight waited for them (proxy_on_done), ended
    // the wait (proxy_done), and was deleted afterwards (its Drop ran, on proxy_on_delete).
    assert!(
        r.waited > 0,
        "no root context waited for its calls: {summary}"
    );
    assert_eq!(
        r.finished, r.waited,
        "a waiting root context never called proxy_done"
    );
    assert!(r.deleted > STEADY.swaps, "{summary}");
}

/// Configurations change faster than the shadow answers (a swap every 0.2 s, answers in 0.5 s),
/// flipping between two configurations as an operator toggling a setting does: a configuration
/// comes back while the root context of its previous turn may still wait for its calls. Envoy
/// keeps one waiting root context per plugin key and destroyed the older one without a word
/// (before the fix: 1,877 sent, 687 answered, 1,015 cancelled by Envoy and uncounted, 16,354
/// dropped as their bulkhead slots never came back). Once no call is in flight, every copy sent
/// is accounted for: `sent == responses + failed + cancelled`, and none is cancelled.
#[test]
fn fast_changes_with_several_replaced_configurations_waiting_lose_no_count() {
    let r = swap_under_load(
        None,
        Scenario {
            swaps: 51,
            every: Duration::from_millis(200),
            shadow_delay: Duration::from_millis(500),
            clients: 4,
            max_requests_per_client: 6000,
            // About 1,000 requests a second on a quiet machine: ~500 copies in flight at once,
            // below Envoy's default circuit breaker of the shadow cluster (1,024 requests).
            pause: Duration::from_millis(3),
            cycle: 2,
        },
    );
    let summary = &r.summary;
    assert_eq!(r.routed, r.requests, "{summary}");
    assert_eq!(r.sent + r.dropped, r.requests, "{summary}");
    assert_eq!(r.sent, r.responses + r.failed + r.cancelled, "{summary}");
    assert_eq!((r.cancelled, r.failed, r.dropped), (0, 0, 0), "{summary}");
    assert_eq!(r.received, r.sent, "{summary}");
    assert!(
        r.sent > 1000,
        "too little load to prove anything: {summary}"
    );
    // Every swap replaced a root context (deleted once done); the one that dispatched waited
    // for its calls, the others held none.
    assert!(r.deleted > 51, "{summary}");
    assert!(
        r.waited > 0,
        "no root context waited for its calls: {summary}"
    );
    assert_eq!(r.finished, r.waited, "{summary}");
}

/// The same module without its `proxy_on_done` export (`scripts/strip-exports.py`): Envoy then
/// deletes a replaced root context as soon as its last stream ends and cancels its calls, as
/// it did before the filter waited for them. Every cancelled call is still counted, from the
/// root context's `Drop` (proxy_on_delete): the accounting holds, with `cancelled` > 0.
#[test]
fn calls_envoy_cancels_on_a_swap_are_counted_cancelled() {
    let dir = std::env::temp_dir().join(format!("traffic-split-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let stripped = dir.join("no-on-done.wasm");
    let strip = std::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/strip-exports.py"
        ))
        .arg(wasm_path())
        .arg(&stripped)
        .arg("proxy_on_done")
        .status()
        .unwrap();
    assert!(strip.success());
    let r = swap_under_load(Some(&stripped), STEADY);
    let _ = std::fs::remove_dir_all(&dir);
    let summary = &r.summary;
    assert_eq!(r.routed, r.requests, "{summary}");
    assert_eq!(r.sent + r.dropped, r.requests, "{summary}");
    assert_eq!(r.sent, r.responses + r.failed + r.cancelled, "{summary}");
    assert!(r.cancelled > 0, "no call was cancelled: {summary}");
    assert_eq!(r.waited, 0, "{summary}");
    assert!(r.deleted > STEADY.swaps, "{summary}");
}

/// One `traffic-split: shadow queue Some(Q) (root context R)` line of the log:
/// `[time][thread][level][wasm] ...`.
#[derive(Debug)]
struct QueueRegistration {
    thread: String,
    queue: String,
    root: String,
}

fn queue_registrations(log: &str) -> Vec<QueueRegistration> {
    log.lines()
        .filter_map(|line| {
            let (_, rest) = line.split_once("traffic-split: shadow queue ")?;
            let (queue, root) = rest.split_once(" (root context ")?;
            Some(QueueRegistration {
                thread: line.split('[').nth(2)?.to_string(),
                queue: queue.to_string(),
                root: root.trim_end_matches(')').to_string(),
            })
        })
        .collect()
}

/// Polls `done` every 20 ms for up to `secs` seconds; whether it came true.
fn eventually(secs: u64, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Each worker's VM has one shadow queue: a root context that takes the dispatching over
/// registers the same name again (Envoy returns the same queue and hands it to that root)
/// instead of leaving a registration behind per reload and worker. The main thread's VMs, one per configuration
/// for its validation, never see a stream and register none.
///
/// The client keeps one connection, so one worker serves every request. Each round lets the
/// copies be answered and, after the swap, waits until the previous dispatcher is deleted: the
/// next configuration's first stream then finds no dispatcher and its root context registers,
/// once. So after round `k` there are exactly `k` registrations, all on that worker, all of one
/// queue, each by a new root context; a registration per stream, per reload and worker, or a
/// new queue per root context would each break the count.
#[test]
fn configuration_swaps_reuse_each_workers_shadow_queue() {
    let stable = Backend::start("stable");
    let slow = Backend::start("slow");
    let envoy = Envoy::start(
        EnvoySpec::new(&config(0))
            .ecds()
            .cluster("stable", stable.addr)
            .cluster("slow", slow.addr),
    );
    let swaps = 6;
    for swap in 1..=swaps {
        // Copies made under each configuration reach the shadow.
        for _ in 0..4 {
            assert_eq!(envoy.get("/", &[]).backend(), "stable");
        }
        assert!(
            eventually(5, || slow.count() == 4 * swap),
            "round {swap}: {} copies answered, want {}",
            slow.count(),
            4 * swap
        );
        let mut regs = Vec::new();
        let counted = eventually(5, || {
            regs = queue_registrations(&envoy.log());
            regs.len() >= swap
        });
        assert!(counted && regs.len() == swap, "round {swap}: {regs:?}");
        let last = regs.last().unwrap();
        assert!(envoy.reconfigure(&config(swap), swap as u64));
        // The configuration's dispatcher goes once its streams and calls are over (its
        // worker's VM logs it; root context ids are per VM).
        let gone = format!("traffic-split: root context {} deleted", last.root);
        assert!(
            eventually(5, || envoy.log().lines().any(
                |l| l.contains(&gone) && l.split('[').nth(2) == Some(last.thread.as_str())
            )),
            "round {swap}: root context {} of thread {} was not deleted after the swap",
            last.root,
            last.thread
        );
    }
    assert_eq!(slow.count(), 4 * swaps);
    let regs = queue_registrations(&envoy.log());
    // One per configuration that served streams (the last one, `config(swaps)`, served none).
    assert_eq!(regs.len(), swaps, "{regs:?}");
    let threads: BTreeSet<&str> = regs.iter().map(|r| r.thread.as_str()).collect();
    let queues: BTreeSet<&str> = regs.iter().map(|r| r.queue.as_str()).collect();
    let roots: BTreeSet<&str> = regs.iter().map(|r| r.root.as_str()).collect();
    assert_eq!(threads.len(), 1, "one connection, one worker: {regs:?}");
    assert_eq!(queues.len(), 1, "the worker's VM has one queue: {regs:?}");
    assert!(
        queues.iter().all(|q| q.starts_with("Some(")),
        "registration failed: {regs:?}"
    );
    assert_eq!(
        roots.len(),
        swaps,
        "each root context registers once: {regs:?}"
    );
}

fn breaker_config(pad: usize) -> String {
    format!(
        r#"{{"rules":[{{"name":"checkout","sticky":{{"header":"x-user-id"}},"destinations":[
            {{"name":"canary","cluster":"canary","weight":50,"fallback":"stable",
              "breaker":{{"failure_ratio":0.6,"min_requests":20,"window_s":30,"open_s":30}}}},
            {{"name":"stable","cluster":"stable","weight":50}}]}}]}}{}"#,
        " ".repeat(pad)
    )
}

/// Users the rule buckets to the canary.
fn canary_users(n: usize) -> Vec<String> {
    users_bucketed_to(&breaker_config(0), 0, n)
}

/// Outcomes of requests that a replaced configuration decided, answered after the swap, still
/// count for the breaker: 20 successes then 20 failures is 50%, under the 60% that opens it.
/// Were the 20 successes lost with the old configuration, the failures alone (100%) would.
#[test]
fn breaker_outcomes_of_a_replaced_configuration_still_count() {
    let stable = Backend::start("stable");
    let canary = Backend::start("canary");
    let envoy = Envoy::start(
        EnvoySpec::new(&breaker_config(0))
            .ecds()
            .cluster("stable", stable.addr)
            .cluster("canary", canary.addr),
    );
    let users = canary_users(20);
    canary.set_delay(Duration::from_millis(500));
    std::thread::scope(|s| {
        let calls: Vec<_> = users
            .iter()
            .map(|user| {
                let url = envoy.url("/");
                s.spawn(move || {
                    // A fresh connection each: both workers take a share.
                    Resp::from(
                        ureq::AgentBuilder::new()
                            .build()
                            .get(&url)
                            .set("x-user-id", user)
                            .call(),
                    )
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(150));
        assert!(envoy.reconfigure(&breaker_config(1), 1));
        for call in calls {
            let r = call.join().unwrap();
            assert_eq!((r.status, r.backend()), (200, "canary"));
        }
    });
    canary.set_delay(Duration::ZERO);
    std::thread::sleep(Duration::from_millis(300)); // a few ticks: outcomes published
    for user in &users {
        let r = Resp::from(
            ureq::AgentBuilder::new()
                .build()
                .get(&envoy.url("/"))
                .set("x-user-id", user)
                .set("x-fail", "1")
                .call(),
        );
        assert_eq!((r.status, r.backend()), (500, "canary"));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        envoy.counter("traffic_split.breaker.checkout.canary.opened"),
        0,
        "the breaker opened: the replaced configuration's successes were lost"
    );
    // Still closed: canary users are still served by the canary.
    assert_eq!(
        envoy.get("/", &[("x-user-id", &users[0])]).backend(),
        "canary"
    );
}
