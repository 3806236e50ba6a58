//! The judge: compares a rule's canary with its baseline on the live traffic of each window
//! and gives a verdict (`pass`, `fail`, `inconclusive`); `fail_after` failing windows in a row
//! trigger `on_fail`. This module is the pure part: per-arm window counts (requests, failures,
//! a latency histogram), the statistics (`stats`), the verdict rules, the streak, and the
//! shared record every worker of an Envoy merges its counts into (`shared`). The host
//! (`host::judge`) records outcomes, publishes on its tick and acts on a trigger.
//!
//! Method (docs/configuration.md, "judge"):
//! - errors: one-sided Agresti–Caffo test of `p_canary − p_baseline > max_increase` at
//!   `confidence`;
//! - latency: order-statistic confidence bounds of the `percentile` of each arm from its
//!   histogram (exact binomial ranks), each at `1 − (1 − confidence)/2` so both together hold at
//!   `confidence`; `fail` when the canary's lower bound exceeds `max_ratio` × the baseline's upper
//!   bound. Bucket edges are taken conservatively (the canary's lower edge, the baseline's
//!   upper edge).
//! - `inconclusive` while either arm has fewer than `min_requests` outcomes, or when the
//!   latency criterion cannot be bounded yet (too few baseline outcomes) and nothing failed.

pub mod gate;
mod shared;
pub mod srm;
pub mod stats;
#[cfg(test)]
mod tests;

pub use shared::{judge_key, publish, publish_due, JudgeRecord, Judged, Synced};

/// Verdict of one window; the numbers are the `verdict` gauge's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Verdict {
    #[default]
    Inconclusive = 0,
    Pass = 1,
    Fail = 2,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Inconclusive => "inconclusive",
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
        }
    }

    fn from_byte(b: u8) -> Option<Verdict> {
        match b {
            0 => Some(Verdict::Inconclusive),
            1 => Some(Verdict::Pass),
            2 => Some(Verdict::Fail),
            _ => None,
        }
    }
}

/// What a trigger does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnFail {
    /// The rule's rollout aborts (as a breaker abort does); without a rollout, the canary's
    /// traffic goes to the baseline until the configuration changes.
    #[default]
    Abort,
    /// Metrics and logs only.
    Report,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ErrorsCriterion {
    /// Absolute: 0.01 is one percentage point.
    pub max_increase: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencyCriterion {
    /// 50..=99.9
    pub percentile: f64,
    pub max_ratio: f64,
}

/// A rule's judge, compiled (`plan::judge`).
#[derive(Debug, Clone, PartialEq)]
pub struct JudgePolicy {
    /// Destination indices in the rule.
    pub canary: usize,
    pub baseline: usize,
    pub window_s: u64,
    pub min_requests: u64,
    pub errors: Option<ErrorsCriterion>,
    pub latency: Option<LatencyCriterion>,
    pub confidence: f64,
    pub fail_after: u32,
    pub on_fail: OnFail,
    /// At most this many baseline outcomes judged per canary outcome (expected from the shares
    /// in force); 0: every one (`baseline_keep_threshold`).
    pub max_baseline_ratio: f64,
    /// `canary` was not written: the first destination (a load warning when it outweighs the
    /// baseline, `Rule::judge_backwards_warning`).
    pub canary_defaulted: bool,
}

pub const DEFAULT_WINDOW_S: u64 = 60;
pub const DEFAULT_MIN_REQUESTS: u64 = 100;
pub const DEFAULT_MAX_INCREASE: f64 = 0.01;
pub const DEFAULT_PERCENTILE: f64 = 99.0;
pub const DEFAULT_MAX_RATIO: f64 = 1.2;
pub const DEFAULT_CONFIDENCE: f64 = 0.99;
pub const DEFAULT_FAIL_AFTER: u32 = 2;
/// Four baseline outcomes per canary outcome: the difference of the two failure ratios is then
/// known within 1.12x the standard error it would have with the whole baseline, at any split
/// (sqrt(1 + 1/4)), and a 95/5 split reads a quarter of the responses' statuses
/// (docs/configuration.md, "Cost", BENCHMARKS.md).
pub const DEFAULT_MAX_BASELINE_RATIO: f64 = 4.0;

/// Latency buckets: exact microseconds below 32, then 16 log-spaced buckets per octave (each
/// at most 6.25% wide) up to 2^32 µs (71 minutes; longer is counted in the last bucket).
pub const LATENCY_BUCKETS: usize = 32 + 27 * 16;
const SUB: u32 = 16;

/// The bucket of a latency in microseconds.
pub fn bucket_of(us: u64) -> usize {
    let v = us.min(u64::from(u32::MAX)) as u32;
    if v < 2 * SUB {
        return v as usize;
    }
    let e = 31 - v.leading_zeros(); // >= 5
    let sub = (v >> (e - 4)) & (SUB - 1);
    (2 * SUB + (e - 5) * SUB + sub) as usize
}

/// The smallest latency (µs) bucket `i` holds.
pub fn bucket_lower_us(i: usize) -> u64 {
    let i = i as u64;
    if i < u64::from(2 * SUB) {
        return i;
    }
    let k = i - u64::from(2 * SUB);
    let e = 5 + k / u64::from(SUB);
    let sub = k % u64::from(SUB);
    (u64::from(SUB) + sub) << (e - 4)
}

/// The smallest latency (µs) above bucket `i` (its exclusive upper edge).
pub fn bucket_upper_us(i: usize) -> u64 {
    bucket_lower_us(i + 1)
}

/// Latencies of one arm in one window: counts per bucket (empty until the first sample).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Histogram {
    counts: Vec<u32>,
}

impl Histogram {
    pub fn record(&mut self, us: u64) {
        if self.counts.is_empty() {
            self.counts = vec![0; LATENCY_BUCKETS];
        }
        if let Some(c) = self.counts.get_mut(bucket_of(us)) {
            *c = c.saturating_add(1);
        }
    }

    pub fn add_count(&mut self, bucket: usize, count: u32) {
        if bucket >= LATENCY_BUCKETS || count == 0 {
            return;
        }
        if self.counts.is_empty() {
            self.counts = vec![0; LATENCY_BUCKETS];
        }
        if let Some(c) = self.counts.get_mut(bucket) {
            *c = c.saturating_add(count);
        }
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (i, &c) in other.counts.iter().enumerate() {
            self.add_count(i, c);
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().map(|&c| u64::from(c)).sum()
    }

    /// Non-empty buckets, ascending.
    pub fn nonzero(&self) -> impl Iterator<Item = (usize, u32)> + '_ {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, &c)| c > 0)
            .map(|(i, &c)| (i, c))
    }

    /// The bucket of the `rank`-th smallest sample (1-based).
    pub fn bucket_of_rank(&self, rank: u64) -> Option<usize> {
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += u64::from(c);
            if seen >= rank && rank >= 1 {
                return Some(i);
            }
        }
        None
    }
}

/// One arm's outcomes in one window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Arm {
    pub requests: u64,
    pub failures: u64,
    /// Only filled when the judge has a latency criterion.
    pub latency: Histogram,
}

impl Arm {
    pub fn record(&mut self, failed: bool, latency_us: Option<u64>) {
        self.requests = self.requests.saturating_add(1);
        self.failures = self.failures.saturating_add(u64::from(failed));
        if let Some(us) = latency_us {
            self.latency.record(us);
        }
    }

    pub fn merge(&mut self, other: &Arm) {
        self.requests = self.requests.saturating_add(other.requests);
        self.failures = self.failures.saturating_add(other.failures);
        self.latency.merge(&other.latency);
    }

    pub fn is_empty(&self) -> bool {
        self.requests == 0
    }

    /// Failures in basis points of requests (0 without requests).
    pub fn failure_bp(&self) -> u64 {
        let bp = u128::from(self.failures) * 10_000 / u128::from(self.requests.max(1));
        u64::try_from(bp).unwrap_or(u64::MAX)
    }
}

/// One window of both arms, and (sticky rules) the distinct users per destination.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    pub canary: Arm,
    pub baseline: Arm,
    /// By destination index; empty unless the rule is sticky.
    pub users: Vec<srm::Distinct>,
}

impl Tally {
    pub fn is_empty(&self) -> bool {
        self.canary.is_empty()
            && self.baseline.is_empty()
            && self.users.iter().all(srm::Distinct::is_empty)
    }

    pub fn merge(&mut self, other: &Tally) {
        self.canary.merge(&other.canary);
        self.baseline.merge(&other.baseline);
        if self.users.len() < other.users.len() {
            self.users
                .resize(other.users.len(), srm::Distinct::default());
        }
        for (mine, theirs) in self.users.iter_mut().zip(&other.users) {
            mine.merge(theirs);
        }
    }

    /// A user (its `srm::user_hash`) seen on `destination`.
    pub fn add_user(&mut self, destination: usize, hash: u64) {
        if destination >= crate::plan::MAX_DESTINATIONS {
            return;
        }
        if self.users.len() <= destination {
            self.users.resize(destination + 1, srm::Distinct::default());
        }
        if let Some(d) = self.users.get_mut(destination) {
            d.insert(hash);
        }
    }
}

/// The numbers behind a verdict.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Evaluation {
    pub verdict: Verdict,
    pub canary_requests: u64,
    pub baseline_requests: u64,
    pub canary_failure_bp: u64,
    pub baseline_failure_bp: u64,
    /// The configured percentile's point estimate (bucket's lower edge), µs; `None` without
    /// a latency criterion or samples.
    pub canary_latency_us: Option<u64>,
    pub baseline_latency_us: Option<u64>,
    pub errors_failed: bool,
    pub latency_failed: bool,
    /// The errors statistic and its threshold (`None` without that criterion or enough
    /// requests).
    pub errors_z: Option<f64>,
    /// The canary's lower and the baseline's upper bound of the percentile, µs, when both exist.
    pub latency_bounds: Option<(u64, u64)>,
    /// The latency criterion is configured but its bounds do not exist for these counts (the
    /// baseline's upper bound of a p99 at 99% needs 528 baseline outcomes,
    /// `JudgePolicy::latency_min_requests`): it cannot hold, so the window cannot pass (it is
    /// `inconclusive` unless the errors criterion fails it).
    pub latency_unjudged: bool,
    /// Sample ratio mismatch of the window's distinct users (`srm::srm`); `None` when not
    /// judged (not sticky, or too few users).
    pub srm: Option<bool>,
}

impl Evaluation {
    /// Both arms had `min_requests`, some criterion was judged, and none failed: an
    /// `inconclusive` window of this kind is one whose latency could not be bounded.
    pub fn held_what_was_judged(&self) -> bool {
        !self.errors_failed
            && !self.latency_failed
            && (self.errors_z.is_some() || self.latency_bounds.is_some())
    }
}

impl JudgePolicy {
    /// The normal quantile the errors statistic is compared with.
    pub fn z(&self) -> f64 {
        stats::normal_quantile(self.confidence)
    }

    /// The verdict on one window's counts.
    pub fn evaluate(&self, w: &Tally) -> Evaluation {
        let mut e = Evaluation {
            canary_requests: w.canary.requests,
            baseline_requests: w.baseline.requests,
            canary_failure_bp: w.canary.failure_bp(),
            baseline_failure_bp: w.baseline.failure_bp(),
            ..Evaluation::default()
        };
        let p = self.latency.map(|l| l.percentile / 100.0);
        if let Some(p) = p {
            let point = |h: &Histogram| {
                let n = h.total();
                let rank = ((n as f64) * p).ceil().max(1.0) as u64;
                h.bucket_of_rank(rank).map(bucket_lower_us)
            };
            e.canary_latency_us = point(&w.canary.latency);
            e.baseline_latency_us = point(&w.baseline.latency);
        }
        if w.canary.requests < self.min_requests || w.baseline.requests < self.min_requests {
            e.verdict = Verdict::Inconclusive;
            return e;
        }
        if let Some(errors) = self.errors {
            let z = stats::failure_increase_z(
                w.canary.requests,
                w.canary.failures,
                w.baseline.requests,
                w.baseline.failures,
                errors.max_increase,
            );
            e.errors_z = Some(z);
            e.errors_failed = z > self.z();
        }
        if let (Some(latency), Some(p)) = (self.latency, p) {
            // Each bound at 1 - alpha/2: together at `confidence` (Bonferroni).
            let alpha = (1.0 - self.confidence) / 2.0;
            let (c, b) = (&w.canary.latency, &w.baseline.latency);
            let canary_low = stats::quantile_rank_bounds(c.total(), p, alpha)
                .0
                .and_then(|r| c.bucket_of_rank(r))
                .map(bucket_lower_us);
            let baseline_high = stats::quantile_rank_bounds(b.total(), p, alpha)
                .1
                .and_then(|r| b.bucket_of_rank(r))
                .map(bucket_upper_us);
            if let (Some(low), Some(high)) = (canary_low, baseline_high) {
                e.latency_bounds = Some((low, high));
                e.latency_failed = low as f64 > latency.max_ratio * high as f64;
            } else {
                e.latency_unjudged = true;
            }
        }
        // Either criterion failing fails the window; both must hold for a pass, and one whose
        // bounds do not exist yet has not held.
        e.verdict = if e.errors_failed || e.latency_failed {
            Verdict::Fail
        } else if e.latency_unjudged {
            Verdict::Inconclusive
        } else {
            Verdict::Pass
        };
        e
    }

    /// The sampling threshold (against a uniform u64) of the baseline's outcomes when the
    /// canary is expected to get `canary_share` and the baseline `baseline_share` (any unit):
    /// keep `max_baseline_ratio` baseline outcomes per canary outcome, all when that is not
    /// fewer than the baseline gets, or when the ratio is 0 (`u64::MAX`: no draw). Sampling is
    /// independent of the outcome, so the sampled failure ratio and percentile estimate the
    /// baseline's without bias; only their counts (and so their precision) shrink.
    /// With a latency criterion the ratio is at least `latency_min_requests / min_requests`
    /// (5.28 at the defaults): a canary with `min_requests` outcomes then comes with the
    /// baseline outcomes the baseline's latency bound needs, so sampling never leaves a window
    /// inconclusive that the whole baseline would have judged.
    pub fn baseline_keep_threshold(&self, canary_share: u32, baseline_share: u32) -> u64 {
        let Some(ratio) = self.baseline_ratio().filter(|_| baseline_share > 0) else {
            return u64::MAX;
        };
        let keep = ratio * f64::from(canary_share) / f64::from(baseline_share);
        if keep >= 1.0 {
            u64::MAX
        } else {
            crate::rng::sample_threshold(keep * 100.0)
        }
    }

    /// The baseline outcomes judged per canary outcome when the baseline is sampled:
    /// `max_baseline_ratio`, raised to what the latency bound needs (`baseline_keep_threshold`);
    /// `None` when every baseline outcome is judged (`max_baseline_ratio` 0).
    pub fn baseline_ratio(&self) -> Option<f64> {
        let ratio = self.max_baseline_ratio;
        if ratio <= 0.0 {
            return None;
        }
        let needed = self
            .latency_min_requests()
            .map_or(0.0, |n| n as f64 / self.min_requests.max(1) as f64);
        Some(ratio.max(needed))
    }

    /// The fewest baseline outcomes for which the latency criterion can be judged: the
    /// baseline's upper bound of the percentile exists (`stats::quantile_rank_bounds`) from
    /// n = ln(alpha) / ln(p) on, alpha = (1 − confidence) / 2 (528 for a p99 at 99%); the
    /// canary's lower bound needs 2. `None` without a latency criterion.
    pub fn latency_min_requests(&self) -> Option<u64> {
        let p = self.latency?.percentile / 100.0;
        let alpha = (1.0 - self.confidence) / 2.0;
        let mut n = (alpha.ln() / p.ln()).floor().max(1.0) as u64;
        // The float estimate may sit one off the exact walk: step to the first n that works.
        while stats::quantile_rank_bounds(n, p, alpha).1.is_none() && n < 1 << 32 {
            n += 1;
        }
        Some(n)
    }
}

/// Consecutive failing windows and whether `on_fail` ran.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Streak {
    /// Failing windows in a row (a pass resets it; an inconclusive window leaves it).
    pub failing: u32,
    /// `on_fail` ran under this configuration.
    pub triggered: bool,
}

impl Streak {
    /// Counts a window's evaluation (`after`). A window that is `inconclusive` only because its
    /// latency could not be bounded, while every criterion that could be judged held, breaks a
    /// failing streak as a pass does: `fail_after` counts failing windows *in a row*, and at
    /// traffic where the latency is never judged there would otherwise be no row, only "any
    /// `fail_after` failures ever". It is still no pass (a gated rollout does not advance).
    pub fn after_window(&mut self, e: &Evaluation, fail_after: u32) -> bool {
        if e.verdict == Verdict::Inconclusive && e.held_what_was_judged() {
            self.failing = 0;
            return false;
        }
        self.after(e.verdict, fail_after)
    }

    /// Counts a verdict; true when this window triggers `on_fail` (the `fail_after`-th failing
    /// window in a row: once per streak).
    pub fn after(&mut self, verdict: Verdict, fail_after: u32) -> bool {
        match verdict {
            Verdict::Fail => {
                self.failing = self.failing.saturating_add(1);
                let now = self.failing == fail_after.max(1);
                self.triggered |= now;
                now
            }
            Verdict::Pass => {
                self.failing = 0;
                false
            }
            Verdict::Inconclusive => false,
        }
    }
}

/// "3,950"
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A non-negative number with up to `decimals` decimals, trailing zeros dropped except one
/// after the point when `keep_one` ("1.0"), without float formatting (kilobytes of `.wasm`).
pub fn decimal_text(value: f64, decimals: u32, keep_one: bool) -> String {
    let scale = 10u64.pow(decimals);
    let scaled = (value.max(0.0) * scale as f64 + 0.5) as u64;
    let (whole, mut frac, mut width) = (scaled / scale, scaled % scale, decimals);
    while width > 0 && frac % 10 == 0 && !(keep_one && width == 1) {
        frac /= 10;
        width -= 1;
    }
    match width {
        0 => whole.to_string(),
        w => format!("{whole}.{frac:0w$}", w = w as usize),
    }
}

/// Milliseconds for a log line: whole above 10 ms, one decimal below.
pub fn ms_text(us: u64) -> String {
    if us >= 10_000 {
        (us / 1000).to_string()
    } else {
        decimal_text(us as f64 / 1000.0, 1, false)
    }
}

impl JudgePolicy {
    /// The numbers and thresholds behind a verdict, as the log line and the CLI print them:
    /// `canary failures 7.9% (412 req) vs baseline 1.1% (3,950 req), allowed +1.0 pp at 99%;
    /// p99 212 ms vs 98 ms, allowed x1.2 at 99%`.
    pub fn numbers_text(&self, e: &Evaluation) -> String {
        let confidence = decimal_text(self.confidence * 100.0, 2, false);
        let mut out = String::new();
        if let Some(errors) = self.errors {
            out = format!(
                "canary failures {}% ({} req) vs baseline {}% ({} req), allowed +{} pp at {confidence}%",
                decimal_text(e.canary_failure_bp as f64 / 100.0, 1, true),
                thousands(e.canary_requests),
                decimal_text(e.baseline_failure_bp as f64 / 100.0, 1, true),
                thousands(e.baseline_requests),
                decimal_text(errors.max_increase * 100.0, 2, true),
            );
        }
        if let Some(latency) = self.latency {
            let shown = |v: Option<u64>| v.map_or_else(|| "-".to_string(), ms_text);
            if !out.is_empty() {
                out.push_str("; ");
            }
            out.push_str(&format!(
                "p{} {} ms vs {} ms, allowed x{} at {confidence}%",
                decimal_text(latency.percentile, 1, false),
                shown(e.canary_latency_us),
                shown(e.baseline_latency_us),
                decimal_text(latency.max_ratio, 2, false),
            ));
        }
        out
    }

    /// Why a window got its verdict, in words (CLI and inconclusive explanations).
    pub fn reason_text(&self, e: &Evaluation) -> String {
        match e.verdict {
            Verdict::Inconclusive if e.latency_unjudged => format!(
                "inconclusive: the latency criterion needs at least {} baseline outcomes to \
                 bound the baseline's percentile at this confidence (baseline {}, canary {}): a \
                 criterion that cannot be judged never passes a window",
                thousands(self.latency_min_requests().unwrap_or(0)),
                thousands(e.baseline_requests),
                thousands(e.canary_requests)
            ),
            Verdict::Inconclusive => format!(
                "inconclusive: fewer than {} requests in an arm (canary {}, baseline {}): too \
                 little traffic never fails a canary",
                self.min_requests,
                thousands(e.canary_requests),
                thousands(e.baseline_requests)
            ),
            Verdict::Pass => "pass: no criterion shows the canary worse than allowed".to_string(),
            Verdict::Fail => {
                let mut why = Vec::new();
                if e.errors_failed {
                    why.push("its failure ratio is above the baseline's by more than allowed");
                }
                if e.latency_failed {
                    why.push("its latency is above the allowed ratio of the baseline's");
                }
                format!("fail: {}", crate::config::join(&why, ", and "))
            }
        }
    }
}
