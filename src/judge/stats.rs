//! The judge's statistics, pure functions of counts: the normal quantile, the Agresti–Caffo
//! test of a failure-ratio increase with a margin, and order-statistic confidence bounds of a
//! quantile (exact binomial, or its normal approximation where the exact walk would be long).

/// The standard normal quantile (inverse CDF) of `p` in (0, 1), Acklam's rational
/// approximation (relative error below 1.2e-9). Out-of-range `p` is clamped.
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let p = p.clamp(1e-12, 1.0 - 1e-12);
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    const P_LOW: f64 = 0.02425;
    if p < P_LOW {
        tail((-2.0 * p.ln()).sqrt())
    } else if p <= 1.0 - P_LOW {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    }
}

/// One-sided test that the canary's failure ratio exceeds the baseline's by more than
/// `margin`: the Agresti–Caffo statistic (one success and one failure added to each arm, which
/// keeps the test sound with zero failures and small counts). `fail` when it exceeds the
/// normal quantile of the confidence.
pub fn failure_increase_z(
    canary_requests: u64,
    canary_failures: u64,
    baseline_requests: u64,
    baseline_failures: u64,
    margin: f64,
) -> f64 {
    let adjusted = |n: u64, x: u64| {
        let n = n as f64 + 2.0;
        let p = (x.min(u64::MAX - 1) as f64 + 1.0) / n;
        (p, p * (1.0 - p) / n)
    };
    let (pc, vc) = adjusted(canary_requests, canary_failures.min(canary_requests));
    let (pb, vb) = adjusted(baseline_requests, baseline_failures.min(baseline_requests));
    (pc - pb - margin) / (vc + vb).sqrt()
}

/// Above this many expected samples beyond the quantile (`n × (1 − p)`), ranks come from the
/// normal approximation (with continuity correction) instead of the exact binomial walk, which
/// takes about that many steps.
pub const EXACT_RANK_LIMIT: f64 = 300.0;

/// The 1-based ranks of the order statistics that bound the `p`-quantile of a sample of `n`
/// from below and from above, each at confidence `1 − alpha`:
/// - lower `l`: the largest with P(X₍ₗ₎ ≤ q) = P(B ≥ l) ≥ 1 − alpha, B ~ Binomial(n, p);
/// - upper `u`: the smallest with P(X₍ᵤ₎ ≥ q) = P(B ≤ u − 1) ≥ 1 − alpha.
///
/// `None` when the sample is too small for that bound (e.g. an upper bound of a p99 from 100
/// samples: even the largest sample is below the p99 with probability 0.37). For `p` ≥ 0.5
/// (the judge's percentiles) the exact walk starts at `pmf(n) = pⁿ ≥ e^(−2·300)`, which a
/// double holds; beyond `EXACT_RANK_LIMIT` the normal approximation (continuity-corrected)
/// is used.
pub fn quantile_rank_bounds(n: u64, p: f64, alpha: f64) -> (Option<u64>, Option<u64>) {
    if n == 0 || !(0.5..1.0).contains(&p) || !(alpha > 0.0 && alpha < 0.5) {
        return (None, None);
    }
    let nf = n as f64;
    if nf * (1.0 - p) > EXACT_RANK_LIMIT {
        let z = normal_quantile(1.0 - alpha);
        let (mean, sd) = (nf * p, (nf * p * (1.0 - p)).sqrt());
        let lower = (mean - z * sd + 0.5).floor();
        let upper = (mean + z * sd + 0.5).ceil();
        let lower = (lower >= 1.0).then_some(lower as u64);
        let upper = (upper <= nf).then_some(upper as u64);
        return (lower, upper);
    }
    // T(k) = P(B >= k), accumulated from k = n down; pmf(k-1) = pmf(k) k/(n-k+1) (1-p)/p.
    let ratio = (1.0 - p) / p;
    let mut pmf = p.powi(i32::try_from(n).unwrap_or(i32::MAX));
    let mut tail = 0.0f64;
    let mut upper = None;
    let mut lower = None;
    let mut k = n;
    while k >= 1 {
        tail += pmf;
        if tail <= alpha {
            upper = Some(k);
        }
        if tail >= 1.0 - alpha {
            lower = Some(k);
            break;
        }
        let kf = k as f64;
        pmf *= kf / (nf - kf + 1.0) * ratio;
        k -= 1;
    }
    (lower, upper)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_quantiles() {
        for (p, z) in [
            (0.5, 0.0),
            (0.9, 1.281_551_565_5),
            (0.95, 1.644_853_626_9),
            (0.975, 1.959_963_984_5),
            (0.99, 2.326_347_874),
            (0.995, 2.575_829_303_5),
            (0.9999, 3.719_016_485_5),
            (0.01, -2.326_347_874),
        ] {
            assert!((normal_quantile(p) - z).abs() < 1e-7, "{p}");
        }
    }

    /// Binomial CDF by direct summation (test reference).
    fn cdf(n: u64, p: f64, k: u64) -> f64 {
        (0..=k)
            .map(|j| {
                let ln_choose: f64 = (1..=j).map(|i| ((n - j + i) as f64 / i as f64).ln()).sum();
                (ln_choose + j as f64 * p.ln() + (n - j) as f64 * (1.0 - p).ln()).exp()
            })
            .sum()
    }

    #[test]
    fn exact_ranks_meet_their_definition() {
        for (n, p) in [
            (100u64, 0.99),
            (100, 0.5),
            (500, 0.99),
            (1000, 0.9),
            (37, 0.75),
        ] {
            let alpha = 0.005;
            let (l, u) = quantile_rank_bounds(n, p, alpha);
            if let Some(l) = l {
                // P(B >= l) >= 1 - alpha, and not for l + 1.
                assert!(1.0 - cdf(n, p, l - 1) >= 1.0 - alpha - 1e-9, "{n} {p}");
                assert!(1.0 - cdf(n, p, l) < 1.0 - alpha, "{n} {p}");
            }
            if let Some(u) = u {
                assert!(cdf(n, p, u - 1) >= 1.0 - alpha - 1e-9, "{n} {p}");
                assert!(u == 1 || cdf(n, p, u - 2) < 1.0 - alpha, "{n} {p}");
            }
        }
        // 100 samples cannot bound a p99 from above at 99.5%.
        assert_eq!(quantile_rank_bounds(100, 0.99, 0.005).1, None);
        assert!(quantile_rank_bounds(100, 0.99, 0.005).0.is_some());
        assert_eq!(quantile_rank_bounds(0, 0.99, 0.005), (None, None));
    }

    #[test]
    fn the_normal_approximation_agrees_with_the_exact_walk_where_they_meet() {
        // n (1-p) just below and just above the limit.
        let p = 0.9;
        let below = (EXACT_RANK_LIMIT / (1.0 - p)).round() as u64 - 10;
        let (l1, u1) = quantile_rank_bounds(below, p, 0.005);
        let (l2, u2) = quantile_rank_bounds(below + 20, p, 0.005);
        let (l1, u1, l2, u2) = (l1.unwrap(), u1.unwrap(), l2.unwrap(), u2.unwrap());
        assert!((l2 as i64 - l1 as i64 - 18).abs() <= 3, "{l1} {l2}");
        assert!((u2 as i64 - u1 as i64 - 18).abs() <= 3, "{u1} {u2}");
    }

    #[test]
    fn agresti_caffo_is_sound_at_zero_and_grows_with_the_gap() {
        // No failures anywhere: nowhere near failing.
        assert!(failure_increase_z(100, 0, 100, 0, 0.01) < 0.0);
        let issue = failure_increase_z(412, 33, 3950, 44, 0.01);
        assert!(issue > normal_quantile(0.99), "{issue}");
        assert!(failure_increase_z(412, 5, 3950, 44, 0.01) < 0.0);
        assert!(
            failure_increase_z(2000, 100, 2000, 20, 0.01)
                > failure_increase_z(500, 25, 500, 5, 0.01)
        );
    }
}
