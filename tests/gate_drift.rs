//! What `rollout.gate: "judge"` costs across two Envoys (issue #21), in real Envoys: the same
//! filter configuration (a sticky rule on `x-user-id`, a rollout 10% → 50% → 100% with short
//! holds, a judge with 2 s windows) in Envoy A and Envoy B, shared `canary` and `stable`
//! backends, and a population of sticky users whose requests a load balancer spreads over both
//! Envoys at random per request, unevenly: A gets most of them. With the clock-driven default
//! both Envoys stand on the same step and a user sees one version per step; with the gate, A's
//! windows pass while B's (too little traffic per window) are inconclusive, B holds its step,
//! and a user whose requests cross A and B is answered by both versions, back and forth, for as
//! long as the steps differ.
//!
//! `gate_drift_measure` (ignored; `make gate-drift`) prints the numbers quoted in
//! docs/configuration.md and BENCHMARKS.md; `gate_off_keeps_users_on_one_version_and_gate_on_mixes_them`
//! asserts the qualitative facts in a shorter run.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// One experiment at a time: each needs both Envoy slots and steady load.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

const STEP: &str = "traffic_split.rollout.checkout.step";
const PERCENTS: [u32; 3] = [10, 50, 100];
/// A request is attributed to the steps read at least this long (ms) before and after it.
const MARGIN_MS: i64 = 300;

#[derive(Clone, Copy, Debug)]
struct Scenario {
    name: &'static str,
    gate: bool,
    /// Distinct user ids (`user-0` …), sent round robin: each user's requests are
    /// `users / rate` seconds apart.
    users: usize,
    /// Requests per second in all (paced; a slow machine sends fewer).
    rate: f64,
    /// Share of the requests (percent) the load balancer sends to Envoy B, drawn per request.
    b_percent: u64,
    /// From this many seconds after `start` on, the load balancer sends this share to B instead
    /// (B's traffic grows: it catches up).
    b_percent_later: Option<(u64, u64)>,
    min_requests: u32,
    hold_s: u64,
    /// Traffic runs from when both Envoys are up until `start + run_s`.
    run_s: u64,
}

fn config(s: &Scenario, start_ms: i64) -> String {
    let gate = if s.gate { r#""gate":"judge","# } else { "" };
    let start = traffic_split::rollout::format_rfc3339(start_ms);
    let (h, m) = (s.hold_s, s.min_requests);
    let [p1, p2, p3] = PERCENTS;
    format!(
        r#"{{"rules":[{{"name":"checkout","sticky":{{"header":"x-user-id"}},"destinations":[
            {{"name":"canary","cluster":"canary"}},{{"name":"stable","cluster":"stable"}}],
        "rollout":{{"destination":"canary","start":"{start}",{gate}
            "steps":[{{"percent":{p1},"hold_s":{h}}},{{"percent":{p2},"hold_s":{h}}},{{"percent":{p3}}}]}},
        "judge":{{"window_s":2,"min_requests":{m},"errors":{{}},"on_fail":"report"}}}}]}}"#
    )
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The rollout step gauge of one Envoy; a missing gauge is an error, never 0.
fn step_of(envoy: &Envoy) -> u64 {
    let text = envoy.admin_get("/stats?filter=rollout.checkout.step");
    text.lines()
        .find_map(|l| {
            let (name, value) = l.split_once(": ")?;
            (name == STEP || name == format!("wasmcustom.{STEP}"))
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("no {STEP} in /stats:\n{text}"))
}

/// One answered request.
#[derive(Clone, Copy)]
struct Request {
    at_ms: i64,
    user: usize,
    envoy: usize,
    canary: bool,
}

/// Both Envoys' step, read at `at_ms`.
#[derive(Clone, Copy)]
struct Sample {
    at_ms: i64,
    steps: [u64; 2],
}

struct Run {
    scenario: Scenario,
    config: String,
    start_ms: i64,
    end_ms: i64,
    requests: Vec<Request>,
    samples: Vec<Sample>,
    /// windows (passed, inconclusive, failed) per Envoy at the end.
    windows: [(u64, u64, u64); 2],
}

fn run(s: Scenario) -> Run {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let stable = Backend::start("stable");
    let canary = Backend::start("canary");
    // Step 1 begins on a window boundary (even second) a few seconds from now: both Envoys
    // are up by then and the first window of step 1 lies entirely within it. On a machine so
    // loaded that they were not, start over with a later start (at most three times).
    let mut attempt = 0;
    let (a, b, start_ms, cfg) = loop {
        attempt += 1;
        let start_ms = (now_ms() / 2000 + 2 + attempt) * 2000;
        let cfg = config(&s, start_ms);
        let spec = || {
            EnvoySpec::new(&cfg)
                .cluster("stable", stable.addr)
                .cluster("canary", canary.addr)
        };
        let (a, b) = Envoy::start_pair(spec(), |_| spec());
        let steps = (step_of(&a), step_of(&b));
        if steps == (0, 0) && now_ms() < start_ms - 500 {
            break (a, b, start_ms, cfg);
        }
        assert!(
            attempt < 3,
            "both Envoys must be up before the rollout starts (steps {steps:?})"
        );
    };
    let envoys = [&a, &b];
    assert_eq!(
        (step_of(&a), step_of(&b)),
        (0, 0),
        "both Envoys must be up before the rollout starts"
    );
    let end_ms = start_ms + s.run_s as i64 * 1000;
    let done = AtomicBool::new(false);
    let (requests, samples) = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let mut samples = Vec::new();
            // Bounded: one read of both Envoys every 200 ms until the sender is done.
            for _ in 0..2_000 {
                if done.load(Ordering::SeqCst) {
                    break;
                }
                let before = now_ms();
                let steps = [step_of(&a), step_of(&b)];
                let after = now_ms();
                samples.push(Sample {
                    at_ms: (before + after) / 2,
                    steps,
                });
                std::thread::sleep(Duration::from_millis(200));
            }
            samples
        });
        let mut requests = Vec::new();
        let users: Vec<String> = (0..s.users).map(|i| format!("user-{i}")).collect();
        // A seeded xorshift: the load balancer's draw per request.
        let mut rng: u64 = 0x9E37_79B9_7F4A_7C15;
        let began = Instant::now();
        let max = ((end_ms - now_ms()).max(0) as f64 / 1000.0 * s.rate) as usize + 1;
        for i in 0..max {
            let due = began + Duration::from_secs_f64(i as f64 / s.rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let at_ms = now_ms();
            if at_ms >= end_ms {
                break;
            }
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let b_percent = match s.b_percent_later {
                Some((after_s, p)) if at_ms >= start_ms + after_s as i64 * 1000 => p,
                _ => s.b_percent,
            };
            let envoy = usize::from(rng % 100 < b_percent);
            let user = i % s.users;
            let resp = envoys[envoy].get("/", &[("x-user-id", &users[user])]);
            let canary = match resp.backend() {
                "canary" => true,
                "stable" => false,
                other => panic!("request {i} answered by {other:?} ({})", resp.status),
            };
            requests.push(Request {
                at_ms,
                user,
                envoy,
                canary,
            });
        }
        done.store(true, Ordering::SeqCst);
        (requests, sampler.join().unwrap())
    });
    let judge = |e: &Envoy, w: &str| e.counter(&format!("traffic_split.judge.checkout.{w}"));
    let windows = [&a, &b].map(|e| {
        (
            judge(e, "windows_passed"),
            judge(e, "windows_inconclusive"),
            judge(e, "windows_failed"),
        )
    });
    Run {
        scenario: s,
        config: cfg.clone(),
        start_ms,
        end_ms,
        requests,
        samples,
        windows,
    }
}

/// A stretch of a run where A stood on one step and B on another.
#[derive(Debug, Default)]
struct Apart {
    ms: i64,
    /// A user's consecutive requests, both within it, that went to different Envoys ...
    crossings: usize,
    /// ... and of them, those answered by different versions: about the difference between
    /// the two steps' shares, since a user changes version when its bucket lies between them.
    changed: usize,
    /// Users answered by both versions within it.
    users_both: usize,
}

/// What a run shows.
#[derive(Debug)]
struct Outcome {
    requests: usize,
    /// Users answered by both versions at any time (a one-way move from stable to canary at a
    /// step change included).
    users_both: usize,
    /// Users answered by the canary and later by the stable again: a move back, which a
    /// monotonic rollout seen consistently never makes.
    users_back: usize,
    /// Users answered by both versions within a stretch where both Envoys stood on the same
    /// step (both samples around the request agree).
    users_both_same_step: usize,
    /// Users answered by both versions within the stretches where the Envoys' steps differed.
    users_both_divergent: usize,
    /// Users whose version changed at least twice (stable → canary → stable, or back and forth).
    users_flipping: usize,
    /// Time (ms, at the sampling's resolution of ~200 ms) the Envoys' steps differed.
    divergent_ms: i64,
    /// The most samples in a row on which the Envoys' steps differed (a step change that falls
    /// between the reads of A and B shows on one sample, however slow the reads are).
    divergent_run: usize,
    /// Per step k (1..=n): when each Envoy first stood on it (ms after `start`), if it did.
    reached: Vec<[Option<i64>; 2]>,
    /// Per step change to k (2..=n): users answered by both versions between the first and the
    /// last Envoy reaching step k (or the end of the run), and that stretch's length (ms).
    apart: BTreeMap<[u64; 2], Apart>,
    max_steps: [u64; 2],
}

fn analyse(r: &Run) -> Outcome {
    let samples = &r.samples;
    assert!(samples.len() >= 10, "only {} step samples", samples.len());
    // The last sample at least MARGIN_MS before a moment and the first at least MARGIN_MS
    // after it (None outside the sampled span). The step gauge moves on one worker's tick; the
    // Envoy's other worker takes the new share on its own tick, up to 100 ms later, and a
    // request's time is taken on the client: the margin keeps requests near a step change out
    // of the stretches below.
    let around = |t: i64| -> Option<(Sample, Sample)> {
        let i = samples.partition_point(|s| s.at_ms <= t - MARGIN_MS);
        let j = samples.partition_point(|s| s.at_ms < t + MARGIN_MS);
        (i > 0 && j < samples.len()).then(|| (samples[i - 1], samples[j]))
    };
    // Some(k): both Envoys stood on step k throughout (steps only grow while nothing aborts, so
    // both samples around the request agreeing is enough).
    let same_step = |t: i64| -> Option<u64> {
        around(t)
            .filter(|(p, n)| p.steps[0] == p.steps[1] && n.steps == p.steps)
            .map(|(p, _)| p.steps[0])
    };
    // The Envoys stood on different steps at one of the samples around the request. (A
    // request between two samples where both Envoys agree but the step changed is neither.)
    let apart = |t: i64| {
        around(t).is_some_and(|(p, n)| p.steps[0] != p.steps[1] || n.steps[0] != n.steps[1])
    };
    let mut seen: BTreeMap<usize, Vec<&Request>> = BTreeMap::new();
    for q in &r.requests {
        seen.entry(q.user).or_default().push(q);
    }
    let both = |qs: &mut dyn Iterator<Item = &&Request>| {
        let (mut c, mut s) = (false, false);
        for q in qs {
            c |= q.canary;
            s |= !q.canary;
        }
        c && s
    };
    let users_both = seen.values().filter(|qs| both(&mut qs.iter())).count();
    let users_back = seen
        .values()
        .filter(|qs| qs.windows(2).any(|w| w[0].canary && !w[1].canary))
        .count();
    // Same-step stretches: per step, the requests sent while both Envoys stood on it.
    let users_both_same_step = seen
        .values()
        .filter(|qs| {
            (0..=PERCENTS.len() as u64)
                .any(|k| both(&mut qs.iter().filter(|q| same_step(q.at_ms) == Some(k))))
        })
        .count();
    let users_both_divergent = seen
        .values()
        .filter(|qs| both(&mut qs.iter().filter(|q| apart(q.at_ms))))
        .count();
    let users_flipping = seen
        .values()
        .filter(|qs| qs.windows(2).filter(|w| w[0].canary != w[1].canary).count() >= 2)
        .count();
    let divergent_ms = samples
        .windows(2)
        .filter(|w| w[0].steps[0] != w[0].steps[1])
        .map(|w| w[1].at_ms - w[0].at_ms)
        .sum();
    let divergent_run = samples
        .iter()
        .fold((0, 0), |(run, most), s| {
            let run = if s.steps[0] != s.steps[1] { run + 1 } else { 0 };
            (run, usize::max(most, run))
        })
        .1;
    let reached: Vec<[Option<i64>; 2]> = (1..=PERCENTS.len() as u64)
        .map(|k| {
            [0, 1].map(|e| {
                samples
                    .iter()
                    .find(|s| s.steps[e] >= k)
                    .map(|s| s.at_ms - r.start_ms)
            })
        })
        .collect();
    // Per pair of different steps (A's, B's): how long, and among the users whose requests
    // reached both Envoys while the Envoys stood on those steps, how many were answered by both
    // versions.
    let mut apart_pairs: BTreeMap<[u64; 2], Apart> = BTreeMap::new();
    for w in samples.windows(2) {
        if w[0].steps[0] != w[0].steps[1] {
            apart_pairs.entry(w[0].steps).or_default().ms += w[1].at_ms - w[0].at_ms;
        }
    }
    for (pair, apart) in apart_pairs.iter_mut() {
        let within = |q: &&Request| {
            around(q.at_ms).is_some_and(|(p, n)| p.steps == *pair && n.steps == *pair)
        };
        for qs in seen.values() {
            let inside: Vec<&Request> = qs.iter().copied().filter(within).collect();
            for w in inside.windows(2) {
                if w[0].envoy != w[1].envoy {
                    apart.crossings += 1;
                    apart.changed += usize::from(w[0].canary != w[1].canary);
                }
            }
            if both(&mut inside.iter()) {
                apart.users_both += 1;
            }
        }
    }
    let max_steps = [0, 1].map(|e| samples.iter().map(|s| s.steps[e]).max().unwrap());
    Outcome {
        requests: r.requests.len(),
        users_both,
        users_back,
        users_both_same_step,
        users_both_divergent,
        users_flipping,
        divergent_ms,
        divergent_run,
        reached,
        apart: apart_pairs,
        max_steps,
    }
}

fn report(r: &Run, o: &Outcome) {
    let s = &r.scenario;
    let per_envoy = [0, 1].map(|e| r.requests.iter().filter(|q| q.envoy == e).count());
    let secs = (r.end_ms - r.start_ms) as f64 / 1000.0;
    let first = r.requests.first().map_or(r.start_ms, |q| q.at_ms);
    let sent_s = (r.end_ms - first) as f64 / 1000.0;
    println!(
        "== {}: gate {}, {} users, LB {}% A / {}% B, {} requests ({} A, {} B; {:.0} req/s to A, \
         {:.0} to B over the run), steps {:?}% hold_s {}, window_s 2, min_requests {}",
        s.name,
        if s.gate { "judge" } else { "off (clock)" },
        s.users,
        100 - s.b_percent,
        s.b_percent,
        o.requests,
        per_envoy[0],
        per_envoy[1],
        per_envoy[0] as f64 / sent_s,
        per_envoy[1] as f64 / sent_s,
        PERCENTS,
        s.hold_s,
        s.min_requests
    );
    for (e, name) in ["A", "B"].iter().enumerate() {
        let when: Vec<String> = o
            .reached
            .iter()
            .enumerate()
            .map(|(k, r)| match r[e] {
                Some(ms) => format!("step {} at {:+.1} s", k + 1, ms as f64 / 1000.0),
                None => format!("step {} never", k + 1),
            })
            .collect();
        let (p, i, f) = r.windows[e];
        println!(
            "   Envoy {name}: {} (windows passed {p}, inconclusive {i}, failed {f})",
            when.join(", ")
        );
    }
    let n = s.users;
    let pct = |x: usize| 100.0 * x as f64 / n as f64;
    println!(
        "   steps differed {:.1} s of {:.1} s; users answered by both versions: {} ({:.1}%), \
         moved back canary->stable: {} ({:.1}%), version changed twice or more: {} ({:.1}%); \
         both versions while on the same step: {}, while steps differed: {} ({:.1}%)",
        o.divergent_ms as f64 / 1000.0,
        secs,
        o.users_both,
        pct(o.users_both),
        o.users_back,
        pct(o.users_back),
        o.users_flipping,
        pct(o.users_flipping),
        o.users_both_same_step,
        o.users_both_divergent,
        pct(o.users_both_divergent)
    );
    // The users' buckets (0..10,000) by the filter's own hashing: a user changes version between
    // two shares when its bucket lies between them.
    let plan = traffic_split::plan::Plan::from_json(r.config.as_bytes()).unwrap();
    let buckets: Vec<u32> = (0..n)
        .map(|i| plan.rules[0].bucket_of_key(format!("user-{i}").as_bytes()))
        .collect();
    for ([sa, sb], apart) in &o.apart {
        let [pa, pb] = [sa, sb].map(|k| k.checked_sub(1).map_or(0, |i| PERCENTS[i as usize]));
        let (lo, hi) = (pa.min(pb) * 100, pa.max(pb) * 100);
        let between = buckets.iter().filter(|b| (lo..hi).contains(*b)).count();
        println!(
            "   A on step {sa} ({pa}%), B on step {sb} ({pb}%): {:.1} s; a user's next request \
             on the other Envoy: {}, answered by the other version: {} ({:.0}%); users answered \
             by both versions meanwhile: {} ({:.1}%); users whose bucket lies between the \
             shares: {between} ({:.1}%)",
            apart.ms as f64 / 1000.0,
            apart.crossings,
            apart.changed,
            100.0 * apart.changed as f64 / apart.crossings.max(1) as f64,
            apart.users_both,
            pct(apart.users_both),
            pct(between)
        );
    }
}

/// A shorter run for the assertions: 300 users, 150 requests/s, 5% of them to B (about 1.5
/// canary requests per window there at 10%: inconclusive with `min_requests` 8; about 28 on A,
/// so A still passes if a loaded machine sends half as many).
fn short(gate: bool) -> Scenario {
    Scenario {
        name: if gate { "gate on" } else { "gate off" },
        gate,
        users: 300,
        rate: 150.0,
        b_percent: 5,
        b_percent_later: None,
        min_requests: 8,
        hold_s: 2,
        run_s: 9,
    }
}

#[test]
fn gate_off_keeps_users_on_one_version_and_gate_on_mixes_them() {
    // Clock-driven: both Envoys on the same step; no user sees both versions within a step,
    // nor moves back.
    let off = run(short(false));
    let o = analyse(&off);
    report(&off, &o);
    assert_eq!(o.max_steps, [3, 3], "both Envoys reach the last step");
    assert_eq!(o.users_both_same_step, 0, "{o:?}");
    assert_eq!(o.users_back, 0, "{o:?}");
    assert_eq!(o.users_flipping, 0, "{o:?}");
    // The step changes are simultaneous but for the 100 ms tick: never on two samples in a row
    // (the samples are at least 200 ms apart; a change between the reads of A and B shows on
    // one, however long a loaded machine takes to answer them).
    assert!(o.divergent_run <= 1, "{o:?}");
    // The rollout did move users (so the zero above is not a run where nothing happened).
    assert!(o.users_both > 0, "{o:?}");

    // Gated: A's windows pass and it moves on; B's are inconclusive and it holds step 1; users
    // whose requests cross A and B are answered by both versions, back and forth.
    let on = run(short(true));
    let o = analyse(&on);
    report(&on, &o);
    assert!(o.max_steps[0] >= 2, "A moved past step 1: {o:?}");
    assert_eq!(o.max_steps[1], 1, "B held step 1: {o:?}");
    let (passed_b, inconclusive_b, _) = on.windows[1];
    assert_eq!(passed_b, 0, "B's windows never passed");
    assert!(inconclusive_b > 0, "B's windows were inconclusive");
    assert!(o.divergent_ms >= 2_000, "{o:?}");
    assert!(o.users_back > 0, "{o:?}");
    assert!(o.users_flipping > 0, "{o:?}");
    assert!(o.users_both_divergent > 0, "{o:?}");
    // Within the stretches where the steps agreed (before A moved on), still one version each.
    assert_eq!(o.users_both_same_step, 0, "{o:?}");
}

/// The measurement behind docs/configuration.md (`rollout.gate: "judge"`) and BENCHMARKS.md:
/// `make gate-drift`.
#[test]
#[ignore = "a measurement (about 3 minutes): make gate-drift"]
fn gate_drift_measure() {
    let base = Scenario {
        name: "",
        gate: false,
        users: 300,
        rate: 150.0,
        b_percent: 10,
        b_percent_later: None,
        min_requests: 10,
        hold_s: 4,
        run_s: 22,
    };
    // B starved: 10% of the requests (about 3 canary requests per window at 10%).
    let starved = base;
    // B starved for 10 s, then the load balancer sends it half: B's windows pass, it catches up.
    let catches_up = Scenario {
        b_percent_later: Some((10, 50)),
        ..base
    };
    // Both with enough traffic at every step: half to each (about 15 canary requests per window
    // at 10%).
    let both_busy = Scenario {
        b_percent: 50,
        ..base
    };
    let mut scenarios = Vec::new();
    for (name, s) in [
        ("B starved", starved),
        ("B starved for 10 s, then half the traffic", catches_up),
        ("A and B half the traffic each", both_busy),
    ] {
        for gate in [false, true] {
            scenarios.push(Scenario { name, gate, ..s });
        }
    }
    println!(
        "Envoy: {}",
        std::process::Command::new(envoy_bin())
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    );
    for s in scenarios {
        let r = run(s);
        let o = analyse(&r);
        report(&r, &o);
    }
}
