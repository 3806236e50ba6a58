//! Sample ratio mismatch (SRM) of a sticky rule: the distinct users seen per destination in a
//! judge window, tested against the shares in force (chi-square, p < 0.001). Distinct users are
//! counted exactly up to `EXACT_USERS` per destination; beyond that, by adaptive distinct
//! sampling (Gibbons): a user is kept when the low `level` bits of its hash are zero, and the
//! level rises whenever a set would exceed the bound. Sets merge across workers (same level,
//! union), and the test runs on the kept users, a uniform sample of the distinct users.
//!
//! The hash is FNV-1a of the user key, independent of the murmur3 bucketing hash (a sample
//! chosen by the bucketing hash would be correlated with the destination).

/// Distinct user hashes kept per destination before sampling starts.
pub const EXACT_USERS: usize = 256;

/// Chi-square critical values at p = 0.001 for 1..=15 degrees of freedom.
const CHI2_999: [f64; 15] = [
    10.828, 13.816, 16.266, 18.467, 20.515, 22.458, 24.322, 26.124, 27.877, 29.588, 31.264, 32.909,
    34.528, 36.123, 37.697,
];

/// Users expected per destination (at its share) before the test may flag.
pub const MIN_EXPECTED_USERS: f64 = 8.0;

/// The hash a user key is counted by.
pub fn user_hash(key: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in key {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// The distinct users of one destination in one window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Distinct {
    /// Kept hashes have at least this many trailing zero bits.
    pub level: u8,
    /// Sorted, unique.
    pub hashes: Vec<u32>,
}

impl Distinct {
    fn kept(level: u8, h: u32) -> bool {
        h.trailing_zeros() >= u32::from(level)
    }

    pub fn insert(&mut self, h: u32) {
        if !Self::kept(self.level, h) {
            return;
        }
        if let Err(at) = self.hashes.binary_search(&h) {
            self.hashes.insert(at, h);
            self.shrink();
        }
    }

    fn shrink(&mut self) {
        while self.hashes.len() > EXACT_USERS && self.level < 32 {
            self.level += 1;
            let level = self.level;
            self.hashes.retain(|&h| Self::kept(level, h));
        }
    }

    /// Raises the level to `level` (drops the hashes it no longer keeps).
    pub fn at_level(&mut self, level: u8) {
        if level > self.level {
            self.level = level;
            self.hashes.retain(|&h| Self::kept(level, h));
        }
    }

    pub fn merge(&mut self, other: &Distinct) {
        self.at_level(other.level);
        for &h in &other.hashes {
            if Self::kept(self.level, h) {
                if let Err(at) = self.hashes.binary_search(&h) {
                    self.hashes.insert(at, h);
                }
            }
        }
        self.shrink();
    }

    /// Estimated distinct users.
    pub fn estimate(&self) -> u64 {
        (self.hashes.len() as u64) << self.level
    }
}

/// The SRM test on one window: `users` per destination, `shares` their expected shares (any
/// unit, e.g. buckets). `None` when it cannot be judged (no destination with a share, or
/// fewer than `MIN_EXPECTED_USERS` expected somewhere); `Some(true)` when chi-square rejects
/// at p < 0.001.
pub fn srm(users: &[Distinct], shares: &[u32]) -> Option<bool> {
    let level = users.iter().map(|u| u.level).max().unwrap_or(0);
    let counts: Vec<(f64, f64)> = users
        .iter()
        .zip(shares)
        .filter(|(_, &s)| s > 0)
        .map(|(u, &s)| {
            let kept = u
                .hashes
                .iter()
                .filter(|&&h| Distinct::kept(level, h))
                .count();
            (kept as f64, f64::from(s))
        })
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
        chi2 += (observed - expected) * (observed - expected) / expected;
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

    #[test]
    fn exact_below_the_bound_sampled_above() {
        let d = users(200, 1);
        assert_eq!((d.level, d.estimate()), (0, 200));
        let mut again = d.clone();
        again.merge(&users(200, 1));
        assert_eq!(again.estimate(), 200, "the same users twice");
        let d = users(20_000, 2);
        assert!(d.level > 0 && d.hashes.len() <= EXACT_USERS);
        let e = d.estimate() as f64;
        assert!((e - 20_000.0).abs() < 20_000.0 * 0.25, "{e}");
        // Merging two workers' halves estimates the whole.
        let mut a = Distinct::default();
        let mut b = Distinct::default();
        for i in 0..20_000u32 {
            let h = user_hash(format!("user-3-{i}").as_bytes());
            if i % 2 == 0 {
                a.insert(h)
            } else {
                b.insert(h)
            }
        }
        a.merge(&b);
        let e = a.estimate() as f64;
        assert!((e - 20_000.0).abs() < 20_000.0 * 0.25, "{e}");
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
}
