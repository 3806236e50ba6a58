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

    /// The ranges partition [0, 10000): every bucket has exactly one owner, a destination
    /// with weight 0 owns none, and the plan routes each key to the owner of its bucket.
    #[test]
    fn fine_ranges_partition_the_buckets_and_keys_follow_them(
        weights in weights(), salt in salt(), key in key(),
    ) {
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        let mut owned = vec![0u64; weights.len()];
        for bucket in (0..10_000).step_by(7).chain([9_999]) {
            owned[reference_owner(&weights, bucket)] += 1;
        }
        for (i, &w) in weights.iter().enumerate() {
            if w == 0 {
                prop_assert_eq!(owned[i], 0, "weight 0 owns buckets");
            }
        }
        prop_assert!(total > 0);
        let plan = sticky_plan(&salt, "fine", &weights);
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
