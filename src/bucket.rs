//! Deterministic bucketing of user keys, and the weight ranges destinations own.
//!
//! A bucket depends only on (salt, key): the same user gets the same bucket on every worker,
//! restart and replica. Destinations own consecutive ranges in the order listed, so growing the
//! first destination's weight only ever adds buckets to it (nobody already in it moves out).

use crate::config::HashKind;

/// Buckets used by `hash: "fine"`: 0..FINE_BUCKETS.
pub const FINE_BUCKETS: u32 = 10_000;
/// Buckets used by `hash: "unleash"`: 1..=UNLEASH_BUCKETS.
pub const UNLEASH_BUCKETS: u32 = 100;

/// murmur3 x86_32 with seed 0 of `salt_colon ++ key` (`salt_colon` is `"<salt>:"`), by the
/// `murmur3` crate (the reference Unleash uses), the two slices read as one stream without
/// concatenating. Reading from slices cannot fail: the error arm is never taken.
pub fn murmur3_of(salt_colon: &[u8], key: &[u8]) -> u32 {
    use std::io::Read;
    murmur3::murmur3_32(&mut salt_colon.chain(key), 0).unwrap_or(0)
}

/// The bucket for a hash value under `kind`.
pub fn bucket_of_hash(kind: HashKind, hash: u32) -> u32 {
    match kind {
        HashKind::Fine => hash % FINE_BUCKETS,
        HashKind::Unleash => hash % UNLEASH_BUCKETS + 1,
    }
}

/// The bucket for a uniformly random `draw` (no user key).
pub fn bucket_of_random(kind: HashKind, draw: u64) -> u32 {
    match kind {
        HashKind::Fine => below(draw, FINE_BUCKETS),
        HashKind::Unleash => below(draw, UNLEASH_BUCKETS) + 1,
    }
}

/// Maps a uniform 64-bit draw onto 0..n without modulo bias worth measuring (Lemire).
fn below(draw: u64, n: u32) -> u32 {
    ((u128::from(draw) * u128::from(n)) >> 64) as u32
}

/// Destination ranges as exclusive upper bucket bounds, one per destination, ascending.
///
/// - fine: destination i owns `[floor(10000*W<i/W), floor(10000*W<=i/W))`.
/// - unleash: destination i owns `(W<i, W<=i]`, i.e. buckets `b` with `b <= W<=i` (weights sum
///   to 100), expressed as the exclusive bound `W<=i + 1`.
pub fn upper_bounds(kind: HashKind, weights: &[u32]) -> Vec<u32> {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    let mut cumulative: u64 = 0;
    weights
        .iter()
        .map(|&w| {
            cumulative += u64::from(w);
            match kind {
                HashKind::Fine => (u64::from(FINE_BUCKETS) * cumulative)
                    .checked_div(total)
                    .unwrap_or(0) as u32,
                HashKind::Unleash => cumulative as u32 + 1,
            }
        })
        .collect()
}

/// The destination index owning `bucket`; the last destination catches anything past the end.
pub fn destination_for(upper_bounds: &[u32], bucket: u32) -> usize {
    upper_bounds
        .iter()
        .position(|&upper| bucket < upper)
        .unwrap_or(upper_bounds.len().saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unleash_reference_vectors() {
        assert_eq!(
            bucket_of_hash(HashKind::Unleash, murmur3_of(b"gr1:", b"123")),
            73
        );
        assert_eq!(
            bucket_of_hash(HashKind::Unleash, murmur3_of(b"groupX:", b"999")),
            25
        );
    }

    #[test]
    fn murmur3_of_two_slices_is_the_hash_of_their_concatenation() {
        let mut rng = crate::rng::Rng::from_seed(11);
        for len in 0..64usize {
            let bytes: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            let expected = murmur3::murmur3_32(&mut std::io::Cursor::new(&bytes), 0).unwrap();
            for split in 0..=len {
                let (a, b) = bytes.split_at(split);
                assert_eq!(murmur3_of(a, b), expected, "len {len} split {split}");
            }
        }
        // Known murmur3_x86_32 vector (seed 0): "hello" -> 0x248bfa47.
        assert_eq!(murmur3_of(b"", b"hello"), 0x248b_fa47);
    }

    #[test]
    fn fine_ranges_follow_weights() {
        assert_eq!(upper_bounds(HashKind::Fine, &[5, 95]), vec![500, 10_000]);
        assert_eq!(
            upper_bounds(HashKind::Fine, &[1, 1, 1]),
            vec![3333, 6666, 10_000]
        );
        assert_eq!(upper_bounds(HashKind::Fine, &[0, 7]), vec![0, 10_000]);
        let b = upper_bounds(HashKind::Fine, &[5, 95]);
        assert_eq!(destination_for(&b, 0), 0);
        assert_eq!(destination_for(&b, 499), 0);
        assert_eq!(destination_for(&b, 500), 1);
        assert_eq!(destination_for(&b, 9_999), 1);
        // A zero weight owns nothing.
        let z = upper_bounds(HashKind::Fine, &[0, 7]);
        assert!((0..FINE_BUCKETS).all(|bucket| destination_for(&z, bucket) == 1));
    }

    #[test]
    fn unleash_ranges_follow_percentages() {
        let b = upper_bounds(HashKind::Unleash, &[25, 75]);
        assert_eq!(destination_for(&b, 1), 0);
        assert_eq!(destination_for(&b, 25), 0);
        assert_eq!(destination_for(&b, 26), 1);
        assert_eq!(destination_for(&b, 100), 1);
    }

    #[test]
    fn growing_the_first_share_never_moves_its_users_out() {
        let keys: Vec<String> = (0..5_000).map(|i| format!("user-{i}")).collect();
        let mut previous: Option<Vec<bool>> = None;
        for share in [1u32, 5, 20, 50, 99] {
            let bounds = upper_bounds(HashKind::Fine, &[share, 100 - share]);
            let in_first: Vec<bool> = keys
                .iter()
                .map(|k| {
                    let bucket = bucket_of_hash(HashKind::Fine, murmur3_of(b"r:", k.as_bytes()));
                    destination_for(&bounds, bucket) == 0
                })
                .collect();
            if let Some(prev) = &previous {
                assert!(prev.iter().zip(&in_first).all(|(was, is)| !was || *is));
            }
            previous = Some(in_first);
        }
    }

    #[test]
    fn random_buckets_stay_in_range() {
        for draw in [0, 1, u64::MAX / 2, u64::MAX] {
            assert!(bucket_of_random(HashKind::Fine, draw) < FINE_BUCKETS);
            let u = bucket_of_random(HashKind::Unleash, draw);
            assert!((1..=UNLEASH_BUCKETS).contains(&u));
        }
    }
}
