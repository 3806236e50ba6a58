//! Host side of rollouts: on each tick (and once at configure time) the share in force is
//! recomputed from the wall clock, so a request reads the bounds and never the clock. The
//! abort is shared by every worker of the process through one shared-data flag per rule and
//! configuration; the worker whose compare-and-swap sets it counts `aborted` and logs why,
//! and so does the first to see a new step (`rollout::RolloutPolicy::phase_at`).

use super::breaker::HostStore;
use crate::breaker::{instance_scope, BreakerView, SetResult, SharedStore, State};
use crate::judge::gate::{Gated, JudgeView};
use crate::metrics::{rollout_metric, ROLLOUT_ABORTED, ROLLOUT_BASIS_POINTS, ROLLOUT_STEP};
use crate::plan::Plan;
use crate::rollout::{percent_text, upper_bounds, Phase};
use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

/// Per configuration: the bounds in force of each rollout slot, for decisions.
pub(super) struct Rollouts {
    pub bounds: Vec<Vec<u32>>,
    slots: Vec<Slot>,
}

struct Slot {
    /// What `bounds` were last computed for.
    phase: Option<Phase>,
    aborted: bool,
    /// Shared flag: "1" once this configuration's rollout of the rule aborted.
    abort_key: String,
    /// Shared: the last step logged, so a step is logged once per process.
    logged_key: String,
    /// Shared (`rollout.gate: "judge"` only): the step in force and when it began.
    gate_key: Option<String>,
    step_gauge: Option<u32>,
    basis_points_gauge: Option<u32>,
    aborted_counter: Option<u32>,
}

impl Rollouts {
    /// From `on_configure`: `configuration` (its bytes) scopes the abort, so a configuration
    /// change restarts the rollout.
    pub fn new(plan: &Plan, scope: &str, configuration: &[u8]) -> Rollouts {
        let config_id = instance_scope(&[configuration]);
        let slots = plan
            .rollouts
            .iter()
            .filter_map(|&r| plan.rules.get(r))
            .map(|rule| {
                let base = format!("traffic-split/rollout/v1/{scope}/{}/{config_id}", rule.name);
                let (abort_key, logged_key) = (format!("{base}/aborted"), format!("{base}/logged"));
                // Created before any worker serves, so later updates are compare-and-swaps.
                for (key, initial) in [(&abort_key, b"0"), (&logged_key, b"-")] {
                    if let Ok(None) = HostStore.get(key) {
                        HostStore.set(key, initial, None);
                    }
                }
                let metric = |kind, what| {
                    hostcalls::define_metric(kind, &rollout_metric(&rule.name, what)).ok()
                };
                let gate_key = rule.rollout_gated.then(|| format!("{base}/gate"));
                if let Some(key) = &gate_key {
                    if let Ok(None) = HostStore.get(key) {
                        HostStore.set(key, Gated::default().encode().as_bytes(), None);
                    }
                }
                Slot {
                    phase: None,
                    aborted: false,
                    abort_key,
                    logged_key,
                    gate_key,
                    step_gauge: metric(MetricType::Gauge, ROLLOUT_STEP),
                    basis_points_gauge: metric(MetricType::Gauge, ROLLOUT_BASIS_POINTS),
                    aborted_counter: metric(MetricType::Counter, ROLLOUT_ABORTED),
                }
            })
            .collect::<Vec<_>>();
        let bounds = plan
            .rollouts
            .iter()
            .filter_map(|&r| plan.rules.get(r))
            .map(|r| r.upper_bounds.clone())
            .collect();
        Rollouts { bounds, slots }
    }

    /// Recomputes the share in force at `now_ms` (wall clock) and checks the aborts. Cheap
    /// when nothing changes: a comparison per rollout, and a shared-data read per rollout that
    /// can still abort.
    pub fn tick(&mut self, plan: &Plan, now_ms: Option<u64>, breakers: &[BreakerView]) {
        self.tick_judged(plan, now_ms, breakers, &[]);
    }

    /// `tick`, where `judged` says per judge slot whether the judge's `on_fail: "abort"` ran
    /// (`host::judge`): that aborts the rule's rollout as its breaker opening does; and, for
    /// `gate: "judge"`, which window last passed.
    pub fn tick_judged(
        &mut self,
        plan: &Plan,
        now_ms: Option<u64>,
        breakers: &[BreakerView],
        judged: &[JudgeView],
    ) {
        let Some(now) = now_ms.and_then(|n| i64::try_from(n).ok()) else {
            return;
        };
        for (slot_index, (slot, bounds)) in self
            .slots
            .iter_mut()
            .zip(self.bounds.iter_mut())
            .enumerate()
        {
            let Some((rule, policy)) = plan.rollout_site(slot_index) else {
                continue;
            };
            let canary = rule.destinations.first();
            let mut newly_aborted = false;
            let judge = rule
                .judge_slot
                .and_then(|j| judged.get(j).copied())
                .unwrap_or_default();
            let judge_failed = judge.tripped;
            if (policy.abort_on_breaker_open || judge_failed) && !slot.aborted {
                let breaker_open = policy.abort_on_breaker_open
                    && canary
                        .and_then(|d| d.breaker_slot)
                        .is_some_and(|b| BreakerView::of(breakers, b).state == State::Open);
                let open = breaker_open || judge_failed;
                slot.aborted = match HostStore.get(&slot.abort_key) {
                    Ok(Some((value, _))) if value == b"1" => true,
                    Ok(Some((_, cas))) if open => {
                        newly_aborted =
                            HostStore.set(&slot.abort_key, b"1", Some(cas)) == SetResult::Written;
                        true
                    }
                    _ => open,
                };
            }
            let gated = slot
                .gate_key
                .as_deref()
                .map(|key| gated_phase(key, policy, now, judge.passed_window_start_ms));
            let due = match (slot.phase, gated) {
                (None, _) => true,
                (Some(p), Some(g)) => p != g,
                (Some(p), None) => p.next_ms.is_some_and(|next| now >= next),
            };
            if !(due || newly_aborted || (slot.aborted && bounds.first() != Some(&0))) {
                continue;
            }
            let phase = gated.unwrap_or_else(|| policy.phase_at(now));
            let share = if slot.aborted { 0 } else { phase.basis_points };
            let rest: Vec<u32> = rule.destinations.iter().skip(1).map(|d| d.weight).collect();
            *bounds = upper_bounds(share, &rest);
            if let Some(id) = slot.step_gauge {
                let _ = hostcalls::record_metric(id, phase.step as u64);
            }
            if let Some(id) = slot.basis_points_gauge {
                let _ = hostcalls::record_metric(id, u64::from(share));
            }
            let steps = policy.steps.len();
            let dest = canary.map_or("", |d| d.name.as_str());
            if newly_aborted {
                if let Some(id) = slot.aborted_counter {
                    let _ = hostcalls::increment_metric(id, 1);
                }
                let reason = if judge_failed {
                    "its judge failed"
                } else {
                    "the breaker of destination"
                };
                let whose = if judge_failed {
                    String::new()
                } else {
                    format!(" \"{dest}\" opened")
                };
                log::warn!(
                    "traffic-split: rollout of rule \"{}\" aborted at step {}/{steps} (share was \
                     {}%, now 0%): reason: {reason}{whose}; held at 0% until the configuration \
                     changes",
                    rule.name,
                    phase.step,
                    percent_text(phase.basis_points)
                );
            }
            if slot.phase.map(|p| p.step) != Some(phase.step) && !slot.aborted {
                log_step_once(&slot.logged_key, &rule.name, dest, phase, steps);
            }
            slot.phase = Some(phase);
        }
    }
}

/// A gated rollout's phase at `now`: its shared position moved on if its step may end
/// (`Gated::advance`), with compare-and-swap; a lost race keeps what was read (the next tick
/// tries again).
fn gated_phase(
    key: &str,
    policy: &crate::rollout::RolloutPolicy,
    now: i64,
    passed_window_start_ms: Option<i64>,
) -> Phase {
    let (at, cas) = match HostStore.get(key) {
        Ok(Some((bytes, cas))) => (Gated::decode(&bytes).unwrap_or_default(), Some(cas)),
        _ => (Gated::default(), None),
    };
    let (next, phase) = at.advance(policy, now, passed_window_start_ms);
    if next == at {
        return phase;
    }
    match HostStore.set(key, next.encode().as_bytes(), cas) {
        SetResult::Written => phase,
        _ => at.advance(policy, now, None).1,
    }
}

/// Logs the step's start, once per process: the worker that moves the shared "last logged
/// step" forward logs it.
fn log_step_once(key: &str, rule: &str, dest: &str, phase: Phase, steps: usize) {
    let Ok(Some((value, cas))) = HostStore.get(key) else {
        return;
    };
    // "-" until a step is logged.
    let logged: Option<usize> = std::str::from_utf8(&value)
        .ok()
        .and_then(|v| v.parse().ok());
    if logged.is_some_and(|l| l >= phase.step) {
        return;
    }
    if HostStore.set(key, phase.step.to_string().as_bytes(), Some(cas)) != SetResult::Written {
        return;
    }
    if phase.step == 0 {
        log::info!(
            "traffic-split: rollout of rule \"{rule}\" waits for its start: \"{dest}\" at 0%"
        );
    } else {
        log::info!(
            "traffic-split: rollout of rule \"{rule}\" step {}/{steps} begins: \"{dest}\" at {}%",
            phase.step,
            percent_text(phase.basis_points)
        );
    }
}
