//! Rollout plans: a rule's first destination gets a share that walks scheduled steps, a pure
//! function of the wall clock and `start`, so replicas that never talk agree on the step
//! because they share the clock. `plan::rollout` compiles and checks `rules[].rollout`; the
//! host recomputes the share on its tick (`Phase::next_ms` says when it next changes) and holds
//! it at 0 once the destination's breaker has opened (`abort_on_breaker_open`).

use crate::bucket::FINE_BUCKETS;

/// One step: the first destination's share in basis points (0..=10000) and how long it lasts
/// (`None`: the last step, which lasts forever).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub basis_points: u32,
    pub hold_s: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutPolicy {
    /// Unix milliseconds.
    pub start_ms: i64,
    pub steps: Vec<Step>,
    pub abort_on_breaker_open: bool,
}

/// Where a rollout stands at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Phase {
    /// 0 before `start`, then 1..=n.
    pub step: usize,
    pub basis_points: u32,
    /// When the phase next changes (unix ms); `None` once on the last step.
    pub next_ms: Option<i64>,
}

impl RolloutPolicy {
    /// The step in force at `now_ms`: before `start` step 0 at 0%; step i (1-based) from
    /// `start + Σ hold_s of the steps before it`, inclusive; after the last step, its share.
    pub fn phase_at(&self, now_ms: i64) -> Phase {
        if now_ms < self.start_ms {
            return Phase {
                step: 0,
                basis_points: 0,
                next_ms: Some(self.start_ms),
            };
        }
        let mut begins = self.start_ms;
        let mut last = Phase {
            step: 0,
            basis_points: 0,
            next_ms: None,
        };
        for (i, step) in self.steps.iter().enumerate() {
            let ends = step
                .hold_s
                .map(|h| begins.saturating_add((h as i64).saturating_mul(1000)));
            last = Phase {
                step: i + 1,
                basis_points: step.basis_points,
                next_ms: ends,
            };
            match ends {
                Some(end) if now_ms >= end => begins = end,
                _ => return last,
            }
        }
        last.next_ms = None;
        last
    }

    /// When each step begins (unix ms), in order.
    pub fn step_starts(&self) -> Vec<i64> {
        let mut at = self.start_ms;
        self.steps
            .iter()
            .map(|s| {
                let begins = at;
                at = at.saturating_add((s.hold_s.unwrap_or(0) as i64).saturating_mul(1000));
                begins
            })
            .collect()
    }
}

impl RolloutPolicy {
    /// The schedule and the step in force at `at_ms`, as the operator CLI prints it
    /// (`traffic-split rollout FILE [--at TIME]`; `explain` shows the last line). The seam for
    /// the CLI: it only parses arguments and prints this.
    pub fn schedule_text(&self, rule: &str, destination: &str, at_ms: i64) -> String {
        let mut out = format!("rollout of rule \"{rule}\" (destination \"{destination}\")\n");
        let starts = self.step_starts();
        for (i, (step, begins)) in self.steps.iter().zip(&starts).enumerate() {
            let hold = step
                .hold_s
                .map_or_else(|| "then stays".to_string(), |h| format!("for {h} s"));
            out.push_str(&format!(
                "  step {}/{}: {:>6}% from {} {hold}\n",
                i + 1,
                self.steps.len(),
                percent_text(step.basis_points),
                format_rfc3339(*begins)
            ));
        }
        let phase = self.phase_at(at_ms);
        let next = phase
            .next_ms
            .map_or_else(String::new, |n| format!(" until {}", format_rfc3339(n)));
        out.push_str(&format!(
            "at {}: step {}/{}, {}%{next}\n",
            format_rfc3339(at_ms),
            phase.step,
            self.steps.len(),
            percent_text(phase.basis_points)
        ));
        out
    }
}

impl RolloutPolicy {
    /// What identifies this rollout plan in its shared values (`abort_value`, `logged_value`):
    /// its start, steps and abort setting, hashed. The shared-data keys name the filter
    /// instance, rule, destination and cluster (`rollout_keys`), so only a change of the
    /// rollout itself, or of its destination's cluster, starts it afresh (and clears an
    /// abort); any other edit of the configuration keeps it where it is.
    pub fn identity(&self) -> String {
        let mut text = format!("{};{}", self.start_ms, self.abort_on_breaker_open);
        for step in &self.steps {
            match step.hold_s {
                Some(hold) => text.push_str(&format!(";{}/{hold}", step.basis_points)),
                None => text.push_str(&format!(";{}/-", step.basis_points)),
            }
        }
        crate::breaker::instance_scope(&[text.as_bytes()])
    }
}

/// The shared-data keys of one rollout (its abort flag, the last step logged): one pair per
/// filter instance (`scope`), rule, destination and cluster, whatever else the configuration
/// says, so the keys do not grow with configuration pushes (proxy-wasm cannot delete one).
/// Rule and destination names never contain a `/`; the cluster comes last.
pub fn rollout_keys(scope: &str, rule: &str, destination: &str, cluster: &str) -> (String, String) {
    let key = |what: &str| {
        format!("traffic-split/rollout/v2/{what}/{scope}/{rule}/{destination}/{cluster}")
    };
    (key("aborted"), key("logged"))
}

/// The abort flag's value once the rollout `plan` (an `identity`) aborted.
pub fn abort_value(plan: &str) -> Vec<u8> {
    format!("1 {plan}").into_bytes()
}

/// Whether the abort flag's `value` says the rollout `plan` aborted (an abort of another plan
/// of the same rule, or none, does not count).
pub fn aborted_under(value: &[u8], plan: &str) -> bool {
    value == abort_value(plan).as_slice()
}

/// The "last step logged" value for `step` of `plan`.
pub fn logged_value(plan: &str, step: usize) -> Vec<u8> {
    format!("{step} {plan}").into_bytes()
}

/// The last step of `plan` logged, from a "last step logged" value (`None`: none of this plan).
pub fn logged_step(value: &[u8], plan: &str) -> Option<usize> {
    let (step, of) = std::str::from_utf8(value).ok()?.split_once(' ')?;
    (of == plan).then(|| step.parse().ok()).flatten()
}

/// Fine-bucket bounds with the first destination at `basis_points` and the others sharing the
/// rest in proportion to `rest_weights` (at least one positive). The first destination owns
/// `[0, basis_points)`: the same buckets as a fixed weight of that share, so a user who saw it
/// at 1% still sees it at 5%.
pub fn upper_bounds(basis_points: u32, rest_weights: &[u32]) -> Vec<u32> {
    let share = basis_points.min(FINE_BUCKETS);
    let rest = u64::from(FINE_BUCKETS - share);
    let total: u64 = rest_weights.iter().map(|&w| u64::from(w)).sum();
    let mut bounds = Vec::with_capacity(rest_weights.len() + 1);
    bounds.push(share);
    let mut cumulative = 0u64;
    for &w in rest_weights {
        cumulative += u64::from(w);
        let upper = match total {
            0 => FINE_BUCKETS,
            t => share + (rest * cumulative / t) as u32,
        };
        bounds.push(upper);
    }
    if let Some(last) = bounds.last_mut() {
        // The last destination closes the range whatever the rounding.
        *last = FINE_BUCKETS;
    }
    bounds
}

/// A percent with at most two decimals as basis points (`12.34` -> 1234); `None` otherwise.
pub fn basis_points_of(percent: f64) -> Option<u32> {
    if !(0.0..=100.0).contains(&percent) {
        return None;
    }
    let scaled = percent * 100.0;
    let rounded = scaled.round();
    // Decimal fractions are inexact in binary: 0.29 * 100 is 28.999999999999996.
    ((scaled - rounded).abs() < 1e-6).then_some(rounded as u32)
}

/// Basis points as a percent text with up to two decimals (`125` -> `1.25`), without float
/// formatting.
pub fn percent_text(basis_points: u32) -> String {
    let (whole, frac) = (basis_points / 100, basis_points % 100);
    match frac {
        0 => format!("{whole}"),
        f if f % 10 == 0 => format!("{whole}.{}", f / 10),
        f => format!("{whole}.{f:02}"),
    }
}

/// Parses RFC 3339 (`2026-12-01T10:00:00Z`, `2026-12-01T11:00:00.5+01:00`; the zone is
/// required) into unix milliseconds.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let digits = b.get(from..from + len)?;
        digits.iter().try_fold(0i64, |acc, &d| {
            d.is_ascii_digit().then(|| acc * 10 + i64::from(d - b'0'))
        })
    };
    let sep = |at: usize, options: &[u8]| b.get(at).is_some_and(|c| options.contains(c));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut at = 19;
    let mut millis = 0i64;
    if sep(at, b".") {
        at += 1;
        let mut digits = 0;
        while let Some(d) = b.get(at).filter(|c| c.is_ascii_digit()) {
            if digits < 3 {
                millis = millis * 10 + i64::from(d - b'0');
            }
            digits += 1;
            at += 1;
        }
        if digits == 0 {
            return None;
        }
        for _ in digits..3 {
            millis *= 10;
        }
    }
    let offset_min = match b.get(at..)? {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), ..] if b.len() == at + 6 && sep(at + 3, b":") => {
            let (h, m) = (num(at + 1, 2)?, num(at + 4, 2)?);
            if h > 23 || m > 59 {
                return None;
            }
            let minutes = h * 60 + m;
            if *sign == b'+' {
                minutes
            } else {
                -minutes
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second.min(59) - offset_min * 60;
    Some(seconds * 1000 + millis)
}

/// Unix milliseconds as RFC 3339 UTC (`2026-12-01T10:00:00Z`, milliseconds when not whole).
pub fn format_rfc3339(ms: i64) -> String {
    let (secs, millis) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    let time = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    match millis {
        0 => format!("{time}Z"),
        ms => format!("{time}.{ms:03}Z"),
    }
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_keys_are_bounded_and_only_a_rollout_change_starts_it_afresh() {
        // The keys name the instance, rule, destination and cluster: nothing else of the
        // configuration, so a push that edits something else reuses them.
        let (abort, logged) = rollout_keys("0123456789abcdef", "ramp", "canary", "canary-v2");
        assert_eq!(
            abort,
            "traffic-split/rollout/v2/aborted/0123456789abcdef/ramp/canary/canary-v2"
        );
        assert_eq!(
            logged,
            "traffic-split/rollout/v2/logged/0123456789abcdef/ramp/canary/canary-v2"
        );
        assert_ne!(
            rollout_keys("s", "ramp", "canary", "canary-v3").0,
            abort,
            "another cluster is another version: its own flag"
        );
        let plan = issue_plan();
        let id = plan.identity();
        assert_eq!(id, issue_plan().identity(), "stable for the same rollout");
        assert!(aborted_under(&abort_value(&id), &id));
        // Any change of the rollout is another plan: its abort flag reads as not aborted.
        let changes: [fn(&mut RolloutPolicy); 4] = [
            |p| p.start_ms += 1000,
            |p| p.steps[0].basis_points += 1,
            |p| p.steps[0].hold_s = p.steps[0].hold_s.map(|h| h + 1),
            |p| p.abort_on_breaker_open = !p.abort_on_breaker_open,
        ];
        for change in changes {
            let mut other = issue_plan();
            change(&mut other);
            assert_ne!(other.identity(), id, "{other:?}");
            assert!(!aborted_under(&abort_value(&id), &other.identity()));
        }
        assert!(!aborted_under(b"0", &id));
        assert!(
            !aborted_under(b"1", &id),
            "the v1 flag of a whole configuration"
        );
        assert_eq!(logged_step(&logged_value(&id, 3), &id), Some(3));
        assert_eq!(logged_step(&logged_value("other", 3), &id), None);
        assert_eq!(logged_step(b"-", &id), None);
    }

    const START: &str = "2026-12-01T10:00:00Z";

    fn issue_plan() -> RolloutPolicy {
        let step = |bp, hold| Step {
            basis_points: bp,
            hold_s: hold,
        };
        RolloutPolicy {
            start_ms: parse_rfc3339(START).unwrap(),
            steps: vec![
                step(100, Some(600)),
                step(500, Some(1800)),
                step(2500, Some(3600)),
                step(10_000, None),
            ],
            abort_on_breaker_open: true,
        }
    }

    #[test]
    fn rfc3339_parses_zones_and_fractions() {
        // date -u -d 2026-12-01T10:00:00Z +%s
        assert_eq!(parse_rfc3339(START), Some(1_796_119_200_000));
        assert_eq!(
            parse_rfc3339("2026-12-01T11:00:00+01:00"),
            Some(1_796_119_200_000)
        );
        assert_eq!(
            parse_rfc3339("2026-12-01T09:30:00.25-00:30"),
            Some(1_796_119_200_250)
        );
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2024-02-29T00:00:00Z"),
            Some(1_709_164_800_000)
        );
        for bad in [
            "2026-12-01T10:00:00",
            "2026-12-01",
            "2026-13-01T10:00:00Z",
            "2026-02-29T10:00:00Z",
            "2026-12-01T24:00:00Z",
            "2026-12-01T10:00:00.Z",
            "2026-12-01T10:00:00+0100",
            "2026-12-01T10:00:00Zjunk",
            "tomorrow",
            "",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
        assert_eq!(format_rfc3339(1_796_119_200_000), START);
        assert_eq!(
            format_rfc3339(1_796_119_200_250),
            "2026-12-01T10:00:00.250Z"
        );
    }

    #[test]
    fn every_step_boundary_of_the_issue_example() {
        let p = issue_plan();
        let s = p.start_ms;
        let sec = |n: i64| s + n * 1000;
        let at = |ms| {
            let ph = p.phase_at(ms);
            (ph.step, ph.basis_points, ph.next_ms)
        };
        assert_eq!(at(s - 86_400_000), (0, 0, Some(s)));
        assert_eq!(at(s - 1), (0, 0, Some(s)));
        assert_eq!(at(s), (1, 100, Some(sec(600))));
        assert_eq!(at(sec(599)), (1, 100, Some(sec(600))));
        assert_eq!(at(sec(600) - 1), (1, 100, Some(sec(600))));
        assert_eq!(at(sec(600)), (2, 500, Some(sec(2400))));
        assert_eq!(at(sec(2399)), (2, 500, Some(sec(2400))));
        assert_eq!(at(sec(2400)), (3, 2500, Some(sec(6000))));
        assert_eq!(at(sec(5999)), (3, 2500, Some(sec(6000))));
        assert_eq!(at(sec(6000)), (4, 10_000, None));
        assert_eq!(at(sec(10_000_000)), (4, 10_000, None));
        assert_eq!(p.step_starts(), vec![s, sec(600), sec(2400), sec(6000)]);
    }

    #[test]
    fn the_schedule_as_the_cli_prints_it() {
        let p = issue_plan();
        assert_eq!(
            p.schedule_text("checkout", "canary", p.start_ms + 700_000),
            "rollout of rule \"checkout\" (destination \"canary\")\n\
             \x20 step 1/4:      1% from 2026-12-01T10:00:00Z for 600 s\n\
             \x20 step 2/4:      5% from 2026-12-01T10:10:00Z for 1800 s\n\
             \x20 step 3/4:     25% from 2026-12-01T10:40:00Z for 3600 s\n\
             \x20 step 4/4:    100% from 2026-12-01T11:40:00Z then stays\n\
             at 2026-12-01T10:11:40Z: step 2/4, 5% until 2026-12-01T10:40:00Z\n"
        );
    }

    #[test]
    fn a_single_step_plan_holds_its_share_from_start() {
        let p = RolloutPolicy {
            start_ms: 1000,
            steps: vec![Step {
                basis_points: 5000,
                hold_s: None,
            }],
            abort_on_breaker_open: false,
        };
        assert_eq!(p.phase_at(999).basis_points, 0);
        assert_eq!(p.phase_at(1000).step, 1);
        assert_eq!(p.phase_at(1000).basis_points, 5000);
        assert_eq!(p.phase_at(1000).next_ms, None);
    }

    #[test]
    fn percent_with_two_decimals_maps_to_basis_points() {
        assert_eq!(basis_points_of(0.0), Some(0));
        assert_eq!(basis_points_of(1.0), Some(100));
        assert_eq!(basis_points_of(0.29), Some(29));
        assert_eq!(basis_points_of(12.34), Some(1234));
        assert_eq!(basis_points_of(99.99), Some(9999));
        assert_eq!(basis_points_of(100.0), Some(10_000));
        assert_eq!(basis_points_of(0.001), None);
        assert_eq!(basis_points_of(12.345), None);
        assert_eq!(basis_points_of(100.01), None);
        assert_eq!(basis_points_of(-1.0), None);
        for bp in 0..=10_000u32 {
            let percent: f64 = format!("{}", f64::from(bp) / 100.0).parse().unwrap();
            assert_eq!(basis_points_of(percent), Some(bp), "{percent}");
            assert_eq!(percent_text(bp).parse::<f64>().unwrap(), percent);
        }
    }

    #[test]
    fn growth_only_adds_buckets_to_the_first_destination() {
        let mut previous = upper_bounds(0, &[90, 10]);
        assert_eq!(previous, vec![0, 9000, 10_000]);
        assert_eq!(
            upper_bounds(10_000, &[90, 10]),
            vec![10_000, 10_000, 10_000]
        );
        assert_eq!(upper_bounds(2500, &[1]), vec![2500, 10_000]);
        for bp in (1..=10_000).step_by(7) {
            let b = upper_bounds(bp, &[90, 10]);
            assert_eq!(b[0], bp);
            assert!(b[0] >= previous[0] && b.windows(2).all(|w| w[0] <= w[1]));
            // The others keep the ratio of their weights (within a bucket).
            let (first, second) = (b[1] - b[0], b[2] - b[1]);
            assert!(
                (i64::from(first) - 9 * i64::from(second)).abs() <= 10,
                "{b:?}"
            );
            previous = b;
        }
    }
}
