//! Property tests of the bucketing promises (docs/configuration.md, "Bucketing: hash"), for any
//! weights and any user key: checked through the compiled plan's own decision, against
//! reference formulas written out here independently (the `murmur3` crate, the documented
//! ranges), never against the code under test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use proptest::prelude::*;
use traffic_split::plan::Decision;
use traffic_split::plan::Plan;
use traffic_split::request::{HeaderPair, Request};
use traffic_split::rng::Rng;

/// Reference murmur3 x86_32 (seed 0) of `salt:key`, as Unleash computes it.
fn reference_hash(salt: &str, key: &[u8]) -> u32 {
    let mut bytes = format!("{salt}:").into_bytes();
    bytes.extend_from_slice(key);
    murmur3::murmur3_32(&mut std::io::Cursor::new(bytes), 0).unwrap()
}

/// The documented owner of a fine bucket: destination i owns
/// `[floor(10000·W<i/W), floor(10000·W≤i/W))`.
fn reference_owner(weights: &[u32], bucket: u32) -> usize {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    let mut below = 0u64;
    for (i, &w) in weights.iter().enumerate() {
        let lo = 10_000 * below / total;
        let hi = 10_000 * (below + u64::from(w)) / total;
        if (lo..hi).contains(&u64::from(bucket)) {
            return i;
        }
        below += u64::from(w);
    }
    panic!("bucket {bucket} owned by nobody for weights {weights:?}");
}

/// A plan with one sticky rule on `x-user-id` and the given weights.
fn sticky_plan(salt: &str, hash: &str, weights: &[u32]) -> Plan {
    let destinations: Vec<String> = weights
        .iter()
        .enumerate()
        .map(|(i, w)| format!(r#"{{"name":"d{i}","cluster":"c{i}","weight":{w}}}"#))
        .collect();
    let json = format!(
        r#"{{"rules":[{{"name":"r","salt":{salt:?},"hash":"{hash}",
            "sticky":{{"header":"x-user-id"}},"destinations":[{}]}}]}}"#,
        destinations.join(",")
    );
    Plan::from_json(json.as_bytes()).unwrap_or_else(|e| panic!("{e}: {json}"))
}

/// The destination the plan picks for user `key`, with the sampling PRNG in state `seed`.
fn destination(plan: &Plan, key: &[u8], seed: u64) -> usize {
    let headers: Vec<HeaderPair> = vec![
        (":path".into(), b"/".to_vec()),
        ("x-user-id".into(), key.to_vec()),
    ];
    match plan.decide(
        &Request::new(&headers, None),
        &mut Rng::from_seed(seed),
        &[],
    ) {
        Decision::Routed(routed) => routed.destination,
        Decision::Unmatched => panic!("a rule without match must match"),
    }
}

/// 2–6 weights in the documented range, at least one positive.
fn weights() -> impl Strategy<Value = Vec<u32>> {
    prop::collection::vec(0u32..=1_000_000, 2..=6)
        .prop_filter("at least one positive weight", |w| w.iter().any(|&x| x > 0))
}

/// User keys as clients send them: any bytes but empty (an empty key is no key).
fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 1..48)
}

fn salt() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9:._-]{0,24}"
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// The compiled plan's ranges partition [0, 10000): every bucket has exactly the owner
    /// the documented formula gives, a destination with weight 0 owns none, each destination
    /// owns its documented number of buckets, and the plan routes each key to the owner of its
    /// bucket.
    #[test]
    fn fine_ranges_partition_the_buckets_and_keys_follow_them(
        weights in weights(), salt in salt(), key in key(),
    ) {
        let plan = sticky_plan(&salt, "fine", &weights);
        let rule = &plan.rules[0];
        let mut owned = vec![0u64; weights.len()];
        for bucket in 0..10_000 {
            let owner = rule.destination_of_bucket(bucket);
            prop_assert_eq!(owner, reference_owner(&weights, bucket), "bucket {}", bucket);
            owned[owner] += 1;
        }
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        let mut below = 0u64;
        for (i, &w) in weights.iter().enumerate() {
            if w == 0 {
                prop_assert_eq!(owned[i], 0, "weight 0 owns buckets: {:?}", weights);
            }
            let share = 10_000 * (below + u64::from(w)) / total - 10_000 * below / total;
            prop_assert_eq!(owned[i], share, "destination {} of {:?}", i, weights);
            below += u64::from(w);
        }
        let bucket = reference_hash(&salt, &key) % 10_000;
        prop_assert_eq!(destination(&plan, &key, 1), reference_owner(&weights, bucket));
    }

    /// The same key gets the same destination whatever the sampling PRNG holds (another
    /// worker, another replica, after a restart).
    #[test]
    fn the_same_key_always_gets_the_same_destination(
        weights in weights(), salt in salt(), key in key(), seeds in any::<(u64, u64)>(),
    ) {
        let plan = sticky_plan(&salt, "fine", &weights);
        let again = sticky_plan(&salt, "fine", &weights);
        prop_assert_eq!(destination(&plan, &key, seeds.0), destination(&again, &key, seeds.1));
    }

    /// Growing the first destination's weight never moves one of its users out.
    #[test]
    fn growing_the_first_weight_never_moves_its_users_out(
        weights in weights(), growth in 0u32..=1_000_000, salt in salt(),
        keys in prop::collection::vec(key(), 1..32),
    ) {
        let mut grown = weights.clone();
        grown[0] = grown[0].saturating_add(growth).min(1_000_000);
        let before = sticky_plan(&salt, "fine", &weights);
        let after = sticky_plan(&salt, "fine", &grown);
        for key in &keys {
            if destination(&before, key, 3) == 0 {
                prop_assert_eq!(destination(&after, key, 4), 0, "key {:?} moved out", key);
            }
        }
    }

    /// `hash: "unleash"` routes to the first destination exactly the users Unleash's gradual
    /// rollout enables: `murmur3("<groupId>:<userId>") % 100 + 1 <= percentage`.
    #[test]
    fn unleash_equals_its_reference_formula(
        percent in 0u32..=100, salt in salt(), key in key(),
    ) {
        let plan = sticky_plan(&salt, "unleash", &[percent, 100 - percent]);
        let bucket = reference_hash(&salt, &key) % 100 + 1;
        let enabled = bucket <= percent;
        prop_assert_eq!(destination(&plan, &key, 5) == 0, enabled);
    }
}

// ---- the breaker's state machine (docs/configuration.md, "breaker") ----

use traffic_split::breaker::{BreakerPolicy, Outcomes, Record, State};

/// A breaker policy compiled from a real configuration.
fn breaker_policy(ratio: f64, min_requests: u64, window_s: u64, open_s: u64) -> BreakerPolicy {
    let json = format!(
        r#"{{"rules":[{{"name":"r","destinations":[
            {{"name":"canary","cluster":"c","fallback":"stable","breaker":{{
                "failure_ratio":{ratio},"min_requests":{min_requests},
                "window_s":{window_s},"open_s":{open_s}}}}},
            {{"name":"stable","cluster":"s"}}]}}]}}"#
    );
    let plan = Plan::from_json(json.as_bytes()).unwrap_or_else(|e| panic!("{e}: {json}"));
    plan.rules[0].destinations[0].breaker.clone().unwrap()
}

/// What happens to a breaker: a worker publishes outcomes (seen under the current state, or
/// under a stale one), time passes (now and then backwards: a stepped clock), or it advances.
#[derive(Debug, Clone)]
enum Event {
    Outcomes {
        requests: u64,
        failures: u64,
        stale: bool,
    },
    Tick {
        forward_ms: u64,
    },
    ClockStepBack {
        back_ms: u64,
    },
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        4 => (1u64..60, 0u64..=60, any::<bool>()).prop_map(|(requests, failures, stale)| {
            Event::Outcomes { requests, failures: failures.min(requests), stale: stale && requests % 5 == 0 }
        }),
        4 => (0u64..20_000).prop_map(|forward_ms| Event::Tick { forward_ms }),
        1 => (0u64..40_000).prop_map(|back_ms| Event::ClockStepBack { back_ms }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// For any interleaving of outcomes and clock ticks, the breaker only makes the transitions
    /// the docs allow (closed → open, open → half-open, half-open → closed or open), each for
    /// the documented reason, with a new generation every time; its record always round-trips
    /// through the shared-data encoding; and an open period never ends before `open_s`.
    #[test]
    fn the_breaker_makes_only_the_documented_transitions(
        ratio_percent in 1u32..=100, min_requests in 1u64..30, window_s in 1u64..90,
        open_s in 1u64..40, events in prop::collection::vec(event(), 1..120),
    ) {
        let ratio = f64::from(ratio_percent) / 100.0;
        let policy = breaker_policy(ratio, min_requests, window_s, open_s);
        let mut record = Record::default();
        let mut now_ms: u64 = 1_800_000_000_000;
        for event in events {
            match event {
                Event::Outcomes { requests, failures, stale } => {
                    let generation = if stale { record.generation.wrapping_sub(1) } else { record.generation };
                    // A worker's outcomes under the generation it decided them with.
                    let mut outcomes = Outcomes { generation, ..Outcomes::default() };
                    for i in 0..requests {
                        outcomes.add(generation, i < failures);
                    }
                    record.merge(&policy, now_ms, &outcomes);
                }
                Event::Tick { forward_ms } => now_ms += forward_ms,
                Event::ClockStepBack { back_ms } => {
                    now_ms -= back_ms;
                    record.rebase_clock(now_ms);
                }
            }
            let before = record.clone();
            if let Some(t) = record.advance(&policy, now_ms) {
                prop_assert_eq!(t.from, before.state);
                let trips = t.requests >= min_requests
                    && t.failures as f64 >= ratio * t.requests as f64;
                match (t.from, t.to) {
                    (State::Closed, State::Open) => prop_assert!(trips, "opened without tripping: {:?}", t),
                    (State::Open, State::HalfOpen) => prop_assert!(
                        now_ms - before.since_ms >= open_s * 1000,
                        "half-open {} ms after opening, open_s {}", now_ms - before.since_ms, open_s
                    ),
                    (State::HalfOpen, State::Closed) => prop_assert!(t.requests >= min_requests && !trips),
                    (State::HalfOpen, State::Open) => prop_assert!(trips),
                    other => prop_assert!(false, "undocumented transition {:?}", other),
                }
                prop_assert_eq!(record.state, t.to);
                prop_assert_eq!(record.generation, before.generation.wrapping_add(1));
                prop_assert_eq!(record.since_ms, now_ms);
            } else {
                prop_assert_eq!(record.state, before.state);
                // No transition, so none was due: the window (closed) or the probes
                // (half-open) do not trip, or open_s has not passed.
                let (requests, failures) = record.counts();
                let trips = requests >= min_requests
                    && requests > 0
                    && failures as f64 >= policy.failure_ratio * requests as f64;
                match record.state {
                    State::Closed => prop_assert!(!trips, "should have opened: {:?}", record),
                    State::Open => prop_assert!(
                        now_ms.saturating_sub(record.since_ms) < open_s * 1000,
                        "should have half-opened: {:?} at {}", record, now_ms
                    ),
                    State::HalfOpen => prop_assert!(
                        requests < min_requests,
                        "should have closed or reopened: {:?}", record
                    ),
                }
            }
            prop_assert_eq!(Record::decode(&record.encode()), Some(record.clone()));
        }
    }
}

// ---- the documented defaults ----

/// Every optional field with the value docs/configuration.md documents as its default.
const DOCUMENTED_DEFAULTS: &[(&str, &str)] = &[
    ("top.cluster_header", r#""x-split-cluster""#),
    ("top.variant_header", r#""x-split-variant""#),
    ("top.debug_header", "false"),
    ("top.max_in_flight", "1024"),
    ("top.max_buffered_body_bytes", "16777216"),
    ("top.clear_route_cache", r#""auto""#),
    ("rule.salt", r#""r""#),
    ("rule.hash", r#""fine""#),
    ("sticky.cookie_max_age_s", "2592000"),
    ("sticky.cookie_secure", "false"),
    ("sticky.cookie_same_site", r#""Lax""#),
    ("canary.weight", "1"),
    ("breaker.failure_ratio", "0.2"),
    ("breaker.min_requests", "20"),
    ("breaker.window_s", "10"),
    ("breaker.open_s", "30"),
    ("breaker.half_open_percent", "10"),
    ("breaker.failure_statuses", r#"["5xx"]"#),
    ("breaker.count_local_replies", "true"),
    ("shadow.percent", "100"),
    ("shadow.timeout_ms", "1000"),
    ("shadow.host_suffix", r#""-shadow""#),
    ("shadow.include_body", "true"),
    ("shadow.max_body_bytes", "1048576"),
    (
        "shadow.remove_headers",
        r#"["authorization","proxy-authorization","cookie","x-api-key","x-forwarded-client-cert"]"#,
    ),
    ("shadow.compare", "false"),
    ("shadow.compare_body", "false"),
];

/// A configuration using every object, with the chosen defaults written out explicitly.
fn config_with_defaults(written: &[bool]) -> String {
    let field = |object: &str| -> String {
        DOCUMENTED_DEFAULTS
            .iter()
            .zip(written)
            .filter(|((key, _), &w)| w && key.split('.').next() == Some(object))
            .map(|((key, value), _)| format!(r#","{}":{value}"#, &key[object.len() + 1..]))
            .collect()
    };
    format!(
        r#"{{"rules":[{{"name":"r","sticky":{{"cookie":"uid","assign_cookie":true{}}}{},
            "destinations":[{{"name":"canary","cluster":"c","fallback":"stable","breaker":{{"min_requests":20{}}}{}}},
                            {{"name":"stable","cluster":"s","weight":1}}],
            "shadow":[{{"cluster":"v3"{}}}]}}]{}}}"#,
        field("sticky"),
        field("rule"),
        field("breaker"),
        field("canary"),
        field("shadow"),
        field("top"),
    )
}

proptest! {
    /// Writing any subset of the documented defaults explicitly compiles to exactly the plan the
    /// configuration without them compiles to: the documented defaults are the real ones.
    #[test]
    fn a_compiled_plan_round_trips_the_documented_defaults(
        written in prop::collection::vec(any::<bool>(), DOCUMENTED_DEFAULTS.len()),
    ) {
        let none = vec![false; DOCUMENTED_DEFAULTS.len()];
        let implicit = Plan::from_json(config_with_defaults(&none).as_bytes()).unwrap();
        let json = config_with_defaults(&written);
        let explicit = Plan::from_json(json.as_bytes()).unwrap_or_else(|e| panic!("{e}: {json}"));
        prop_assert_eq!(format!("{implicit:?}"), format!("{explicit:?}"), "{}", json);
    }
}
