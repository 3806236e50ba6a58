//! `rollout.gate: "judge"`: a step ends only once its `hold_s` has passed **and** a window the
//! judge passed lies entirely within the step; otherwise it holds. The position (step and when
//! it began) is state, not a function of the clock: the host keeps it in shared data per
//! configuration (`encode`/`decode`), so every worker of an Envoy agrees; different Envoys see
//! different evidence and may stand on different steps (docs/configuration.md).

use crate::rollout::{Phase, RolloutPolicy};

/// Where a gated rollout stands: step 0 before `start`, then 1..=n, and when it began.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Gated {
    pub step: usize,
    pub began_ms: i64,
}

/// What the judge tells a rollout: whether `on_fail: "abort"` ran, and the start (unix ms) of
/// the last window it judged, when that window passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JudgeView {
    pub tripped: bool,
    pub passed_window_start_ms: Option<i64>,
}

impl Gated {
    /// The position at `now_ms` from `self`: the first step begins at `start`; step i moves
    /// to i + 1 once its hold has passed and the last passing window began at or after the
    /// step did. Returns the new position and the phase in force (`next_ms` is unknown: `None`).
    pub fn advance(
        self,
        policy: &RolloutPolicy,
        now_ms: i64,
        passed_window_start_ms: Option<i64>,
    ) -> (Gated, Phase) {
        if now_ms < policy.start_ms {
            let at = Gated {
                step: 0,
                began_ms: policy.start_ms,
            };
            let phase = Phase {
                step: 0,
                basis_points: 0,
                next_ms: Some(policy.start_ms),
            };
            return (at, phase);
        }
        let mut at = self;
        if at.step == 0 {
            at = Gated {
                step: 1,
                began_ms: policy.start_ms,
            };
        }
        let n = policy.steps.len();
        at.step = at.step.min(n.max(1));
        let hold = policy
            .steps
            .get(at.step.saturating_sub(1))
            .and_then(|s| s.hold_s);
        if let Some(h) = hold {
            let held = now_ms >= at.began_ms.saturating_add((h as i64).saturating_mul(1000));
            let passed = passed_window_start_ms.is_some_and(|w| w >= at.began_ms);
            if held && passed && at.step < n {
                at = Gated {
                    step: at.step + 1,
                    began_ms: now_ms,
                };
            }
        }
        let basis_points = policy
            .steps
            .get(at.step.saturating_sub(1))
            .map_or(0, |s| s.basis_points);
        let phase = Phase {
            step: at.step,
            basis_points,
            next_ms: None,
        };
        (at, phase)
    }

    /// `step:began_ms` as text (shared data).
    pub fn encode(&self) -> String {
        format!("{}:{}", self.step, self.began_ms)
    }

    pub fn decode(bytes: &[u8]) -> Option<Gated> {
        let text = std::str::from_utf8(bytes).ok()?;
        let (step, began) = text.split_once(':')?;
        Some(Gated {
            step: step.parse().ok()?,
            began_ms: began.parse().ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::Step;

    fn plan() -> RolloutPolicy {
        RolloutPolicy {
            start_ms: 1_000_000,
            steps: vec![
                Step {
                    basis_points: 1000,
                    hold_s: Some(60),
                },
                Step {
                    basis_points: 5000,
                    hold_s: Some(60),
                },
                Step {
                    basis_points: 10_000,
                    hold_s: None,
                },
            ],
            abort_on_breaker_open: false,
        }
    }

    #[test]
    fn a_step_holds_until_its_hold_passed_and_a_window_within_it_passed() {
        let p = plan();
        let (at, phase) = Gated::default().advance(&p, 999_000, Some(0));
        assert_eq!((at.step, phase.basis_points), (0, 0));
        let (at, phase) = at.advance(&p, 1_000_000, None);
        assert_eq!(
            (at.step, at.began_ms, phase.basis_points),
            (1, 1_000_000, 1000)
        );
        // Hold passed, but no window passed (inconclusive): holds.
        let (at, _) = at.advance(&p, 1_100_000, None);
        assert_eq!(at.step, 1);
        // A passing window from before the step began does not count.
        let (at, _) = at.advance(&p, 1_100_000, Some(990_000));
        assert_eq!(at.step, 1);
        // A window within the step passed, but the hold has not: holds.
        let (at, _) = at.advance(&p, 1_030_000, Some(1_010_000));
        assert_eq!(at.step, 1);
        let (at, phase) = at.advance(&p, 1_200_000, Some(1_010_000));
        assert_eq!(
            (at.step, at.began_ms, phase.basis_points),
            (2, 1_200_000, 5000)
        );
        // The same passing window cannot move the next step.
        let (at, _) = at.advance(&p, 1_300_000, Some(1_010_000));
        assert_eq!(at.step, 2);
        let (at, phase) = at.advance(&p, 1_300_000, Some(1_240_000));
        assert_eq!((at.step, phase.basis_points), (3, 10_000));
        // The last step stays.
        let (at, _) = at.advance(&p, 9_300_000, Some(9_240_000));
        assert_eq!(at.step, 3);
        assert_eq!(Gated::decode(at.encode().as_bytes()), Some(at));
        assert_eq!(Gated::decode(b"x"), None);
    }
}
