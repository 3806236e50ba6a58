//! Sample ratio mismatch (SRM) of a sticky rule: the distinct users seen per destination in a
//! judge window, tested against the shares in force (chi-square, p < 0.001). Distinct users are
//! counted exactly up to `EXACT_USERS` per destination (a sorted set of their hashes); beyond
//! that, by a HyperLogLog (the `hyperloglockless` crate, `PRECISION` bits: 4 KiB of registers,
//! standard error `SKETCH_ERROR`). Both merge across workers (set union; register-wise
//! maximum) and travel through shared data (the hashes, or the registers).
//!
//! The hash is SipHash-1-3 under a fixed key (the sketch crate's seeded hasher, so every
//! worker and every Envoy agrees), independent of the murmur3 bucketing hash (a hash
//! correlated with the destination would bias the registers).

use core::hash::BuildHasher;
use hyperloglockless::{DefaultHasher, HyperLogLog};

/// Distinct user hashes kept exactly per destination before the sketch takes over.
pub const EXACT_USERS: usize = 256;

/// HyperLogLog precision: `1 << PRECISION` one-byte registers per destination.
pub const PRECISION: u8 = 12;

/// Registers of one sketch.
pub const REGISTERS: usize = 1 << PRECISION;

/// The largest register value the sketch writes (1 + trailing zeros of a 64-bit hash).
const MAX_REGISTER: u8 = 65;

/// The fixed key of the user hash.
const SEED: [u8; 16] = *b"traffic-split/u1";

/// Chi-square critical values at p = 0.001 for 1..=15 degrees of freedom.
const CHI2_999: [f64; 15] = [
    10.828, 13.816, 16.266, 18.467, 20.515, 22.458, 24.322, 26.124, 27.877, 29.588, 31.264, 32.909,
    34.528, 36.123, 37.697,
];

/// Users expected per destination (at its share) before the test may flag.
pub const MIN_EXPECTED_USERS: f64 = 8.0;

fn hasher() -> DefaultHasher {
    DefaultHasher::seeded(&SEED)
}

/// The relative standard error of a sketch's estimate (the crate's documented error at
/// `PRECISION`: 1.04 / sqrt(4096) = 1.6%).
pub fn sketch_error() -> f64 {
    hyperloglockless::error_for_precision(PRECISION)
}

/// The hash a user key is counted by.
pub fn user_hash(key: &[u8]) -> u64 {
    hasher().hash_one(key)
}

/// The distinct users of one destination in one window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Distinct {
    /// At most `EXACT_USERS` hashes, sorted, unique.
    Exact(Vec<u64>),
    /// More users than that.
    Sketch(HyperLogLog),
}

impl Default for Distinct {
    fn default() -> Self {
        Distinct::Exact(Vec::new())
    }
}

fn sketch_of(hashes: &[u64]) -> HyperLogLog {
    let mut s = HyperLogLog::with_hasher(PRECISION, hasher());
    for &h in hashes {
        s.insert_hash(h);
    }
    s
}

impl Distinct {
    pub fn is_empty(&self) -> bool {
        matches!(self, Distinct::Exact(h) if h.is_empty())
    }

    pub fn insert(&mut self, h: u64) {
        match self {
            Distinct::Exact(hashes) => {
                if let Err(at) = hashes.binary_search(&h) {
                    hashes.insert(at, h);
                    if hashes.len() > EXACT_USERS {
                        *self = Distinct::Sketch(sketch_of(hashes));
                    }
                }
            }
            Distinct::Sketch(s) => s.insert_hash(h),
        }
    }

    pub fn merge(&mut self, other: &Distinct) {
        match other {
            Distinct::Exact(theirs) => {
                for &h in theirs {
                    self.insert(h);
                }
            }
            Distinct::Sketch(theirs) => {
                if let Distinct::Exact(mine) = self {
                    *self = Distinct::Sketch(sketch_of(mine));
                }
                if let Distinct::Sketch(mine) = self {
                    // Same precision by construction: never `IncompatibleLength`.
                    let _ = mine.union(theirs);
                }
            }
        }
    }

    /// Estimated distinct users (exact while `Exact`).
    pub fn estimate(&self) -> f64 {
        match self {
            Distinct::Exact(h) => h.len() as f64,
            Distinct::Sketch(s) => s.raw_count(),
        }
    }

    /// The sketch's registers (`None` while exact).
    pub fn registers(&self) -> Option<&[u8]> {
        match self {
            Distinct::Exact(_) => None,
            Distinct::Sketch(s) => Some(s.parts().0),
        }
    }

    /// A sketch restored from its registers; `None` unless `REGISTERS` valid ones.
    pub fn from_registers(registers: &[u8]) -> Option<Distinct> {
        if registers.len() != REGISTERS || registers.iter().any(|&r| r > MAX_REGISTER) {
            return None;
        }
        let zeros = registers.iter().filter(|&&r| r == 0).count();
        let sum: f64 = registers.iter().map(|&r| 0.5f64.powi(i32::from(r))).sum();
        // A power-of-two length at a valid precision, checked above: `from_parts` holds.
        Some(Distinct::Sketch(HyperLogLog::from_parts(
            registers.into(),
            hasher(),
            zeros,
            sum,
        )))
    }
}

/// The SRM test on one window: `users` per destination, `shares` their expected shares (any
/// unit, e.g. buckets). `None` when it cannot be judged (no destination with a share, or
/// fewer than `MIN_EXPECTED_USERS` expected somewhere); `Some(true)` when chi-square rejects
/// at p < 0.001.
///
/// Exact counts give Pearson's statistic. When any count is a sketch's estimate, each term's
/// variance also has the sketch's error, (e·E)² beside the E of the counting itself, so a
/// sketch's ±1.6% never looks like a mismatch at large counts (the test then detects a
/// mismatch of a few percent, not of a fraction of a percent).
pub fn srm(users: &[Distinct], shares: &[u32]) -> Option<bool> {
    let sketched = users
        .iter()
        .zip(shares)
        .any(|(u, &s)| s > 0 && matches!(u, Distinct::Sketch(_)));
    let error = if sketched { sketch_error() } else { 0.0 };
    let counts: Vec<(f64, f64)> = users
        .iter()
        .zip(shares)
        .filter(|(_, &s)| s > 0)
        .map(|(u, &s)| (u.estimate(), f64::from(s)))
        .collect();
    let df = counts.len().checked_sub(1).filter(|&d| d >= 1)?;
    let total: f64 = counts.iter().map(|(c, _)| c).sum();
    let share_sum: f64 = counts.iter().map(|(_, s)| s).sum();
    let mut chi2 = 0.0;
    for (observed, share) in &counts {
        let expected = total * share / share_sum;
        if expected < MIN_EXPECTED_USERS {
            return None;
        }
        let variance = expected + (error * expected) * (error * expected);
        chi2 += (observed - expected) * (observed - expected) / variance;
    }
    let critical = CHI2_999.get(df - 1).copied().unwrap_or(f64::INFINITY);
    Some(chi2 > critical)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(n: u32, salt: u32) -> Distinct {
        let mut d = Distinct::default();
        for i in 0..n {
            d.insert(user_hash(format!("user-{salt}-{i}").as_bytes()));
        }
        d
    }

    /// Within three of the crate's documented standard errors.
    fn close(estimate: f64, truth: f64) -> bool {
        (estimate - truth).abs() <= 3.0 * sketch_error() * truth
    }

    #[test]
    fn exact_below_the_bound() {
        let d = users(EXACT_USERS as u32, 1);
        assert!(matches!(d, Distinct::Exact(_)));
        assert_eq!(d.estimate(), EXACT_USERS as f64);
        let mut again = d.clone();
        again.merge(&users(EXACT_USERS as u32, 1));
        assert_eq!(again.estimate(), EXACT_USERS as f64, "the same users twice");
        // Two workers' exact halves merge exactly.
        let mut a = users(100, 2);
        a.merge(&users(100, 3));
        assert_eq!((a.estimate(), a.registers()), (200.0, None));
    }

    #[test]
    fn sketched_above_the_bound_within_the_documented_error() {
        assert!((sketch_error() - 0.016).abs() < 0.001, "{}", sketch_error());
        let d = users(EXACT_USERS as u32 + 1, 1);
        assert!(d.registers().is_some());
        assert!(close(d.estimate(), f64::from(EXACT_USERS as u32 + 1)));
        let d = users(10_000, 2);
        assert!(close(d.estimate(), 10_000.0), "{}", d.estimate());
        // The same users again do not count twice.
        let mut again = d.clone();
        again.merge(&users(10_000, 2));
        assert_eq!(again, d);
        // Merging two workers' halves (one still exact) estimates the whole, as one sketch would.
        let mut a = Distinct::default();
        let mut b = Distinct::default();
        for i in 0..10_000u32 {
            let h = user_hash(format!("user-2-{i}").as_bytes());
            if i < 200 {
                a.insert(h)
            } else {
                b.insert(h)
            }
        }
        assert!(a.registers().is_none());
        a.merge(&b);
        assert_eq!(a, d);
        // Registers round-trip; garbage is refused.
        let regs = d.registers().map(<[u8]>::to_vec).unwrap_or_default();
        let back = Distinct::from_registers(&regs);
        assert_eq!(back.as_ref().map(Distinct::estimate), Some(d.estimate()));
        assert_eq!(back, Some(d));
        assert_eq!(Distinct::from_registers(&regs[1..]), None);
        let mut bad = regs.clone();
        bad[0] = 66;
        assert_eq!(Distinct::from_registers(&bad), None);
    }

    #[test]
    fn flags_a_missing_arm_and_not_a_healthy_split() {
        // 50/50 shares: 100 vs 100 users is fine, 100 vs 0 is a mismatch, 10 vs 4 too few.
        assert_eq!(
            srm(&[users(100, 1), users(100, 2)], &[5000, 5000]),
            Some(false)
        );
        assert_eq!(
            srm(&[users(0, 1), users(100, 2)], &[5000, 5000]),
            Some(true)
        );
        assert_eq!(srm(&[users(4, 1), users(10, 2)], &[5000, 5000]), None);
        // 5/95: 5 canary users of 200 is what the share says.
        assert_eq!(
            srm(&[users(10, 1), users(190, 2)], &[500, 9500]),
            Some(false)
        );
        assert_eq!(
            srm(&[users(60, 1), users(140, 2)], &[500, 9500]),
            Some(true)
        );
        // A destination without a share is left out.
        assert_eq!(
            srm(
                &[users(100, 1), users(100, 2), users(3, 3)],
                &[5000, 5000, 0]
            ),
            Some(false)
        );
    }

    #[test]
    fn sketched_counts_flag_a_mismatch_but_not_their_own_error() {
        // 50/50 with 10,000 users per arm, drawn apart: the sketches' error is no mismatch.
        for salt in 0..20 {
            assert_eq!(
                srm(
                    &[users(10_000, 2 * salt), users(10_000, 2 * salt + 1)],
                    &[1, 1]
                ),
                Some(false),
                "{salt}"
            );
        }
        // The canary's users not coming back: 5,000 vs 10,000 on 50/50.
        assert_eq!(
            srm(&[users(5_000, 1), users(10_000, 2)], &[1, 1]),
            Some(true)
        );
        // One arm exact, the other sketched.
        assert_eq!(srm(&[users(200, 1), users(10_000, 2)], &[1, 1]), Some(true));
        assert_eq!(
            srm(&[users(200, 1), users(3_800, 2)], &[5, 95]),
            Some(false)
        );
    }
}
