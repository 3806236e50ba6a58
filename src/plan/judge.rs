//! `rules[].judge`: the defaults, the checks, and the compiled `JudgePolicy`.

use super::fields::{destination_index, field};
use super::{Destination, Plan, Routed};
use crate::breaker::{BreakerPolicy, BreakerTicket, BreakerView, StatusMatch};
use crate::config::{ConfigError, JudgeConfig};
use crate::judge::{
    ErrorsCriterion, JudgePolicy, LatencyCriterion, DEFAULT_CONFIDENCE, DEFAULT_FAIL_AFTER,
    DEFAULT_MAX_BASELINE_RATIO, DEFAULT_MAX_INCREASE, DEFAULT_MAX_RATIO, DEFAULT_MIN_REQUESTS,
    DEFAULT_PERCENTILE, DEFAULT_WINDOW_S,
};

/// Checks a rule's judge. `canary` defaults to the rollout's destination, which is always the
/// first destination (`plan::rollout`), so the first destination either way; `baseline` to the
/// other destination with the largest weight (the first of equals).
pub(super) fn compile_judge(
    path: &str,
    j: JudgeConfig,
    destinations: &[Destination],
) -> Result<JudgePolicy, ConfigError> {
    if destinations.len() < 2 {
        return Err(ConfigError::new(
            path,
            "needs a rule with at least two destinations (a canary and its baseline)",
        ));
    }
    let find = |key: &str, name: &str| destination_index(&field(path, key), destinations, name);
    let canary = match &j.canary {
        Some(name) => find("canary", name)?,
        None => 0,
    };
    let baseline = match &j.baseline {
        Some(name) => find("baseline", name)?,
        None => {
            let mut best: Option<(usize, u32)> = None;
            for (i, d) in destinations.iter().enumerate() {
                if i != canary && best.is_none_or(|(_, w)| d.weight > w) {
                    best = Some((i, d.weight));
                }
            }
            best.map_or(0, |(i, _)| i)
        }
    };
    if canary == baseline {
        return Err(ConfigError::new(
            field(path, "baseline"),
            "must differ from the canary",
        ));
    }
    let window_s = j.window_s.unwrap_or(DEFAULT_WINDOW_S);
    let min_requests = j.min_requests.unwrap_or(DEFAULT_MIN_REQUESTS);
    let fail_after = j.fail_after.unwrap_or(u64::from(DEFAULT_FAIL_AFTER));
    for (name, value) in [
        ("window_s", window_s),
        ("min_requests", min_requests),
        ("fail_after", fail_after),
    ] {
        if value == 0 {
            return Err(ConfigError::new(field(path, name), "must be at least 1"));
        }
    }
    let confidence = j.confidence.unwrap_or(DEFAULT_CONFIDENCE);
    if !(0.5..=0.9999).contains(&confidence) {
        return Err(ConfigError::new(
            field(path, "confidence"),
            "must be from 0.5 to 0.9999 (0.99: 99%)",
        ));
    }
    // Neither criterion given: both, at their defaults.
    let both = j.errors.is_none() && j.latency.is_none();
    let errors = match (j.errors, both) {
        (Some(max_increase), _) => Some(max_increase.unwrap_or(DEFAULT_MAX_INCREASE)),
        (None, true) => Some(DEFAULT_MAX_INCREASE),
        (None, false) => None,
    };
    if errors.is_some_and(|m| m >= 1.0) {
        return Err(ConfigError::new(
            field(&field(path, "errors"), "max_increase"),
            "must be below 1 (0.01: one percentage point)",
        ));
    }
    let latency = match (j.latency, both) {
        (Some(l), _) => Some((
            l.percentile.unwrap_or(DEFAULT_PERCENTILE),
            l.max_ratio.unwrap_or(DEFAULT_MAX_RATIO),
        )),
        (None, true) => Some((DEFAULT_PERCENTILE, DEFAULT_MAX_RATIO)),
        (None, false) => None,
    };
    if latency.is_some_and(|(p, _)| !(50.0..=99.9).contains(&p)) {
        return Err(ConfigError::new(
            field(&field(path, "latency"), "percentile"),
            "must be from 50 to 99.9",
        ));
    }
    let max_baseline_ratio = j.max_baseline_ratio.unwrap_or(DEFAULT_MAX_BASELINE_RATIO);
    if max_baseline_ratio > 0.0 && max_baseline_ratio < 1.0 {
        // Fewer baseline than canary outcomes would make the baseline the short arm.
        return Err(ConfigError::new(
            field(path, "max_baseline_ratio"),
            "must be 0 (judge every baseline outcome) or at least 1",
        ));
    }
    Ok(JudgePolicy {
        canary,
        baseline,
        window_s,
        min_requests,
        errors: errors.map(|max_increase| ErrorsCriterion { max_increase }),
        latency: latency.map(|(percentile, max_ratio)| LatencyCriterion {
            percentile,
            max_ratio,
        }),
        confidence,
        fail_after: u32::try_from(fail_after).unwrap_or(u32::MAX),
        on_fail: j.on_fail.unwrap_or_default(),
        max_baseline_ratio,
        canary_defaulted: j.canary.is_none(),
    })
}

/// What counts as a failure for the judge on a destination without a breaker: the breaker's
/// defaults (`failure_statuses` 5xx, Envoy's local replies, `grpc_failure_codes`
/// DEADLINE_EXCEEDED, INTERNAL, UNAVAILABLE; no `slow_ms`).
pub fn default_failure_policy() -> BreakerPolicy {
    BreakerPolicy {
        failure_ratio: crate::config::DEFAULT_BREAKER_FAILURE_RATIO,
        min_requests: crate::config::DEFAULT_BREAKER_MIN_REQUESTS,
        window_s: crate::config::DEFAULT_BREAKER_WINDOW_S,
        open_s: crate::config::DEFAULT_BREAKER_OPEN_S,
        half_open_threshold: crate::rng::sample_threshold(
            crate::config::DEFAULT_BREAKER_HALF_OPEN_PERCENT,
        ),
        half_open_permille: (crate::config::DEFAULT_BREAKER_HALF_OPEN_PERCENT * 10.0) as u64,
        failure_statuses: vec![StatusMatch::Class(5)],
        count_local_replies: true,
        grpc_failure_codes: vec![4, 13, 14],
        slow_ms: None,
        consecutive_failures: None,
    }
}

impl Plan {
    /// After a judge with `on_fail: "abort"` triggered on a rule without a rollout, the
    /// canary's requests go to the baseline (as with an open breaker) until the configuration
    /// changes. `tripped` is the host's view per judge slot. Returns whether it moved the
    /// request; the breaker ticket then follows the new destination.
    pub fn judge_moves(
        &self,
        routed: &mut Routed,
        tripped: &[bool],
        breakers: &[BreakerView],
    ) -> bool {
        let Some(rule) = self.rules.get(routed.rule) else {
            return false;
        };
        let (Some(judge), Some(slot)) = (&rule.judge, rule.judge_slot) else {
            return false;
        };
        if judge.on_fail != crate::judge::OnFail::Abort
            || rule.rollout.is_some()
            || routed.destination != judge.canary
            || !tripped.get(slot).copied().unwrap_or(false)
        {
            return false;
        }
        routed.destination = judge.baseline;
        // Still in the fault slice only if the fault applies to the baseline too; a faulted
        // request carries no breaker ticket.
        routed.fault &= rule
            .fault
            .as_ref()
            .is_some_and(|f| f.applies_to(judge.baseline));
        routed.ticket = rule
            .destinations
            .get(judge.baseline)
            .and_then(|d| d.breaker_slot)
            .filter(|_| !routed.fault)
            .map(|slot| BreakerTicket {
                slot,
                generation: BreakerView::of(breakers, slot).generation,
            });
        true
    }

    /// The judge arm a request routed to `destination` of rule `rule` counts for:
    /// `(judge slot, is the canary)`.
    pub fn judge_arm(&self, rule: usize, destination: usize) -> Option<(usize, bool)> {
        let rule = self.rules.get(rule)?;
        let (judge, slot) = (rule.judge.as_ref()?, rule.judge_slot?);
        if destination == judge.canary {
            Some((slot, true))
        } else if destination == judge.baseline {
            Some((slot, false))
        } else {
            None
        }
    }
}

impl super::Rule {
    /// The judge's baseline outcomes judged per canary outcome when they are sampled
    /// (`JudgePolicy::baseline_ratio`): not on a rule that routes by lanes (its shares do not
    /// say where requests go), nor when the baseline has a breaker (which reads every outcome
    /// anyway).
    pub fn baseline_sampling(&self) -> Option<f64> {
        let j = self.judge.as_ref()?;
        let by_lanes = self.lane.as_ref().is_some_and(|l| l.from_lane);
        let breaker = self
            .destinations
            .get(j.baseline)
            .is_some_and(|d| d.breaker_slot.is_some());
        j.baseline_ratio().filter(|_| !by_lanes && !breaker)
    }

    /// A judge whose canary was left to its default (the first destination) and has more
    /// weight than its baseline, without a rollout: most likely a rule that lists the stable
    /// version first, so the judge compares the versions backwards and `on_fail: abort` would
    /// send the stable version's traffic to the new one. Naming `judge.canary` silences it.
    pub fn judge_backwards_warning(&self) -> Option<String> {
        let j = self
            .judge
            .as_ref()
            .filter(|j| j.canary_defaulted && self.rollout.is_none())?;
        let (canary, baseline) = (
            self.destinations.get(j.canary)?,
            self.destinations.get(j.baseline)?,
        );
        (canary.weight > baseline.weight).then(|| {
            format!(
                "rule \"{}\": the judge takes \"{}\" (weight {}) for the canary and \"{}\" \
                 (weight {}) for its baseline (judge.canary defaults to the first destination); \
                 if \"{}\" is the new version, set judge.canary",
                self.name,
                canary.name,
                canary.weight,
                baseline.name,
                baseline.weight,
                baseline.name
            )
        })
    }

    /// Each destination's expected share of users under `bounds` (buckets it owns), for the
    /// judge's sample-ratio-mismatch test.
    pub fn bucket_shares(&self, bounds: &[u32]) -> Vec<u32> {
        let mut prev = match self.hash {
            crate::config::HashKind::Fine => 0,
            crate::config::HashKind::Unleash => 1,
        };
        bounds
            .iter()
            .map(|&upper| {
                let share = upper.saturating_sub(prev);
                prev = upper.max(prev);
                share
            })
            .collect()
    }

    /// The rule's judge in one line, for `traffic-split explain` and `rollout`.
    pub fn judge_text(&self) -> Option<String> {
        use crate::judge::{decimal_text, thousands};
        let j = self.judge.as_ref()?;
        let name = |i: usize| self.destinations.get(i).map_or("", |d| d.name.as_str());
        let mut criteria = Vec::new();
        if let Some(e) = j.errors {
            criteria.push(format!(
                "failures at most +{} pp",
                decimal_text(e.max_increase * 100.0, 2, true)
            ));
        }
        if let Some(l) = j.latency {
            criteria.push(format!(
                "p{} at most x{} (judged from {} baseline outcomes)",
                decimal_text(l.percentile, 1, false),
                decimal_text(l.max_ratio, 2, false),
                thousands(j.latency_min_requests().unwrap_or(0))
            ));
        }
        let action = match (j.on_fail, self.rollout.is_some()) {
            (crate::judge::OnFail::Report, _) => "report".to_string(),
            (_, true) => "abort the rollout".to_string(),
            (_, false) => format!(
                "send \"{}\"'s traffic to \"{}\"",
                name(j.canary),
                name(j.baseline)
            ),
        };
        Some(
            format!(
                "judge: \"{}\" vs \"{}\" every {} s (min {} req per arm): {} at {}%; {} failing \
             window(s) in a row -> {action}{}",
                name(j.canary),
                name(j.baseline),
                j.window_s,
                thousands(j.min_requests),
                crate::config::join(
                    &criteria.iter().map(String::as_str).collect::<Vec<_>>(),
                    ", "
                ),
                decimal_text(j.confidence * 100.0, 2, false),
                j.fail_after,
                if self.rollout_gated {
                    "; gates the rollout's steps"
                } else {
                    ""
                },
            ) + &match self.baseline_sampling() {
                Some(ratio) => format!(
                    "; at most {} baseline outcomes judged per canary outcome",
                    decimal_text(ratio, 2, false)
                ),
                None => String::new(),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use crate::judge::OnFail;
    use crate::plan::tests::err;
    use crate::plan::Plan;

    fn rule_with(judge: &str, extra: &str) -> String {
        format!(
            r#"{{"rules":[{{"name":"checkout","destinations":[
                {{"name":"canary","cluster":"v2","weight":5}},
                {{"name":"old","cluster":"v0","weight":15}},
                {{"name":"stable","cluster":"v1","weight":80}}]{extra},
                "judge":{judge}}}]}}"#
        )
    }

    #[test]
    fn the_default_failure_policy_is_a_default_breaker() {
        let p = Plan::from_json(
            br#"{"rules":[{"name":"r","destinations":[{"name":"a","cluster":"a",
                "fallback":"b","breaker":{}},{"name":"b","cluster":"b"}]}]}"#,
        )
        .unwrap();
        assert_eq!(
            p.rules[0].destinations[0].breaker.as_ref().unwrap(),
            &super::default_failure_policy()
        );
    }

    #[test]
    fn a_triggered_abort_moves_the_canary_to_the_baseline_without_a_rollout() {
        use crate::plan::Routed;
        let p = Plan::from_json(rule_with("{}", "").as_bytes()).unwrap();
        let routed = |destination| Routed {
            rule: 0,
            destination,
            set_cookie: None,
            rerouted: 0,
            ticket: None,
            lane: None,
            fault: false,
        };
        let mut r = routed(0);
        assert!(!p.judge_moves(&mut r, &[false], &[]));
        assert!(p.judge_moves(&mut r, &[true], &[]));
        assert_eq!(r.destination, 2);
        let mut r = routed(1);
        assert!(!p.judge_moves(&mut r, &[true], &[]), "not the canary");
        assert_eq!(p.judge_arm(0, 0), Some((0, true)));
        assert_eq!(p.judge_arm(0, 2), Some((0, false)));
        assert_eq!(p.judge_arm(0, 1), None);
        let p = Plan::from_json(rule_with(r#"{"on_fail":"report"}"#, "").as_bytes()).unwrap();
        let mut r = routed(0);
        assert!(!p.judge_moves(&mut r, &[true], &[]), "report only");
    }

    #[test]
    fn defaults() {
        let p = Plan::from_json(rule_with("{}", "").as_bytes()).unwrap();
        let j = p.rules[0].judge.as_ref().unwrap();
        assert_eq!(
            (j.canary, j.baseline),
            (0, 2),
            "baseline: the largest other weight"
        );
        assert_eq!((j.window_s, j.min_requests, j.fail_after), (60, 100, 2));
        assert_eq!(j.errors.unwrap().max_increase, 0.01);
        let l = j.latency.unwrap();
        assert_eq!((l.percentile, l.max_ratio), (99.0, 1.2));
        assert_eq!((j.confidence, j.on_fail), (0.99, OnFail::Abort));
        assert_eq!(p.judges, vec![0]);
        assert_eq!(
            p.rules[0].bucket_shares(&p.rules[0].upper_bounds),
            vec![500, 1500, 8000]
        );
        assert_eq!(
            p.rules[0].judge_text().unwrap(),
            "judge: \"canary\" vs \"stable\" every 60 s (min 100 req per arm): failures at most \
             +1.0 pp, p99 at most x1.2 (judged from 528 baseline outcomes) at 99%; 2 failing window(s) in a row -> send \"canary\"'s \
             traffic to \"stable\"; at most 5.28 baseline outcomes judged per canary outcome"
        );
        assert_eq!(p.rules[0].judge_slot, Some(0));
        assert!(p.judge_site(0).is_some());
    }

    #[test]
    fn a_judge_whose_canary_outweighs_its_baseline_is_warned_about() {
        let backwards = r#"{"rules":[{"name":"r","destinations":[
            {"name":"stable","cluster":"v1","weight":95},{"name":"canary","cluster":"v2","weight":5}],
            "judge":{}}]}"#;
        let p = Plan::from_json(backwards.as_bytes()).unwrap();
        let warnings = p.load_warnings();
        assert!(
            warnings.iter().any(|w| w.contains(
                "the judge takes \"stable\" (weight 95) for the canary and \"canary\" (weight 5)"
            )),
            "{warnings:?}"
        );
        // Named explicitly (either way round), or listed canary first: no warning.
        for canary in ["canary", "stable"] {
            let named = backwards.replace(
                r#""judge":{}"#,
                &format!(r#""judge":{{"canary":"{canary}"}}"#),
            );
            let p = Plan::from_json(named.as_bytes()).unwrap();
            assert!(p.load_warnings().is_empty(), "{:?}", p.load_warnings());
        }
        let p = Plan::from_json(rule_with("{}", "").as_bytes()).unwrap();
        assert!(p.load_warnings().is_empty(), "{:?}", p.load_warnings());
    }

    #[test]
    fn the_issue_example_and_one_criterion() {
        let p = Plan::from_json(
            rule_with(
                r#"{"canary":"canary","baseline":"old","window_s":2,"min_requests":10,
                    "errors":{"max_increase":0.02},"confidence":0.95,"fail_after":3,
                    "on_fail":"report"}"#,
                "",
            )
            .as_bytes(),
        )
        .unwrap();
        let j = p.rules[0].judge.as_ref().unwrap();
        assert_eq!(
            (j.canary, j.baseline, j.window_s, j.fail_after),
            (0, 1, 2, 3)
        );
        assert_eq!(j.errors.unwrap().max_increase, 0.02);
        assert!(j.latency.is_none(), "errors only");
        assert_eq!(j.on_fail, OnFail::Report);
        assert_eq!(j.max_baseline_ratio, 4.0, "the default");
        let p =
            Plan::from_json(rule_with(r#"{"latency":{},"max_baseline_ratio":0}"#, "").as_bytes())
                .unwrap();
        let j = p.rules[0].judge.as_ref().unwrap();
        assert!(j.errors.is_none() && j.latency.is_some());
        assert_eq!(j.max_baseline_ratio, 0.0);
    }

    #[test]
    fn field_path_errors() {
        for (judge, want) in [
            (
                r#"{"canary":"nope"}"#,
                "rules[0].judge.canary: \"nope\" is not a destination of this rule",
            ),
            (
                r#"{"baseline":"canary"}"#,
                "rules[0].judge.baseline: must differ from the canary",
            ),
            (
                r#"{"window_s":0}"#,
                "rules[0].judge.window_s: must be at least 1",
            ),
            (
                r#"{"min_requests":0}"#,
                "rules[0].judge.min_requests: must be at least 1",
            ),
            (
                r#"{"fail_after":0}"#,
                "rules[0].judge.fail_after: must be at least 1",
            ),
            (
                r#"{"confidence":0.3}"#,
                "rules[0].judge.confidence: must be from 0.5 to 0.9999 (0.99: 99%)",
            ),
            (
                r#"{"latency":{"percentile":99.95}}"#,
                "rules[0].judge.latency.percentile: must be from 50 to 99.9",
            ),
            (
                r#"{"latency":{"max_ratio":0.5}}"#,
                "rules[0].judge.latency.max_ratio: must be a number from 1 to 1000, got 0.5",
            ),
            (
                r#"{"errors":{"max_increase":1}}"#,
                "rules[0].judge.errors.max_increase: must be below 1 (0.01: one percentage point)",
            ),
            (
                r#"{"errors":{"max":1}}"#,
                "rules[0].judge.errors.max: unknown field, expected one of: max_increase",
            ),
            (
                r#"{"max_baseline_ratio":-1}"#,
                "rules[0].judge.max_baseline_ratio: must be a number from 0 to 1000000, got -1",
            ),
            (
                r#"{"max_baseline_ratio":0.5}"#,
                "rules[0].judge.max_baseline_ratio: must be 0 (judge every baseline outcome) or at least 1",
            ),
            (
                r#"{"on_fail":"page"}"#,
                "rules[0].judge.on_fail: \"page\" is not one of \"abort\", \"report\"",
            ),
        ] {
            assert_eq!(err(&rule_with(judge, "")), want, "{judge}");
        }
        assert_eq!(
            err(r#"{"rules":[{"name":"r","destinations":[{"name":"a","cluster":"a"}],"judge":{}}]}"#),
            "rules[0].judge: needs a rule with at least two destinations (a canary and its baseline)"
        );
        let gate = r#","rollout":{"destination":"canary","start":"2026-01-01T00:00:00Z",
            "steps":[{"percent":5,"hold_s":60},{"percent":100}],"gate":"judge"}"#;
        assert!(Plan::from_json(rule_with("{}", gate).as_bytes()).is_ok());
        let no_judge = r#"{"rules":[{"name":"r","destinations":[{"name":"a","cluster":"a"},
            {"name":"b","cluster":"b"}],"rollout":{"destination":"a","start":"2026-01-01T00:00:00Z",
            "steps":[{"percent":100}],"gate":"judge"}}]}"#;
        assert_eq!(
            err(no_judge),
            "rules[0].rollout.gate: \"judge\" needs a \"judge\" on this rule"
        );
    }
}
