//! Host side of rollouts: on each tick (and once at configure time) the share in force is
//! recomputed from the wall clock, so a request reads the bounds and never the clock. The
//! abort is shared by every worker of the process through one shared-data flag per filter
//! instance, rule, destination and cluster (`rollout::rollout_keys`: bounded, whatever the
//! configuration pushes), whose value names the rollout plan it is about
//! (`RolloutPolicy::identity`): only a change of the rollout or of its destination's cluster
//! clears an abort. The worker whose compare-and-swap sets it counts `aborted` and logs why,
//! and so does the first to see a new step (`rollout::RolloutPolicy::phase_at`).

use super::breaker::HostStore;
use crate::breaker::{BreakerView, SetResult, SharedStore, State};
use crate::judge::gate::{Gated, JudgeView};
use crate::metrics::{rollout_metric, ROLLOUT_ABORTED, ROLLOUT_BASIS_POINTS, ROLLOUT_STEP};
use crate::plan::Plan;
use crate::rollout::{
    abort_value, aborted_under, logged_step, logged_value, percent_text, rollout_keys,
    upper_bounds, Phase,
};
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
    /// This rollout plan (`RolloutPolicy::identity`).
    plan_id: String,
    /// Shared flag: `abort_value(plan_id)` once this rollout plan aborted.
    abort_key: String,
    /// Shared: the last step logged (and its plan), so a step is logged once per process.
    logged_key: String,
    /// Shared (`rollout.gate: "judge"` only): the step in force and when it began.
    gate_key: Option<String>,
    step_gauge: Option<u32>,
    basis_points_gauge: Option<u32>,
    aborted_counter: Option<u32>,
}

impl Rollouts {
    /// From `on_configure`.
    pub fn new(plan: &Plan, scope: &str) -> Rollouts {
        let slots = plan
            .rollouts
            .iter()
            .filter_map(|&r| plan.rules.get(r))
            .map(|rule| {
                let canary = rule.destinations.first();
                let (abort_key, logged_key) = rollout_keys(
                    scope,
                    &rule.name,
                    canary.map_or("", |d| d.name.as_str()),
                    canary.map_or("", |d| d.cluster.as_str()),
                );
                let plan_id = rule
                    .rollout
                    .as_ref()
                    .map(|r| r.identity())
                    .unwrap_or_default();
                // Created before any worker serves, so later updates are compare-and-swaps.
                for (key, initial) in [(&abort_key, b"0"), (&logged_key, b"-")] {
                    if let Ok(None) = HostStore.get(key) {
                        HostStore.set(key, initial, None);
                    }
                }
                let metric = |kind, what| {
                    hostcalls::define_metric(kind, &rollout_metric(&rule.name, what)).ok()
                };
                // The gate's position, beside the abort flag; its value names the plan too.
                let gate_key = rule
                    .rollout_gated
                    .then(|| abort_key.replacen("/aborted/", "/gate/", 1));
                if let Some(key) = &gate_key {
                    if let Ok(None) = HostStore.get(key) {
                        HostStore.set(key, b"-", None);
                    }
                }
                Slot {
                    phase: None,
                    aborted: false,
                    plan_id,
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
                    Ok(Some((value, _))) if aborted_under(&value, &slot.plan_id) => true,
                    Ok(Some((_, cas))) if open => {
                        let value = abort_value(&slot.plan_id);
                        newly_aborted =
                            HostStore.set(&slot.abort_key, &value, Some(cas)) == SetResult::Written;
                        true
                    }
                    _ => open,
                };
            }
            let gated = slot.gate_key.as_deref().map(|key| {
                gated_phase(
                    key,
                    &slot.plan_id,
                    policy,
                    now,
                    judge.passed_window_start_ms,
                )
            });
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
                     {}%, now 0%): reason: {reason}{whose}; held at 0% until its rollout (or the \
                     destination's cluster) changes",
                    rule.name,
                    phase.step,
                    percent_text(phase.basis_points)
                );
            }
            if slot.phase.map(|p| p.step) != Some(phase.step) && !slot.aborted {
                log_step_once(
                    &slot.logged_key,
                    &slot.plan_id,
                    &rule.name,
                    dest,
                    phase,
                    steps,
                );
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
    plan_id: &str,
    policy: &crate::rollout::RolloutPolicy,
    now: i64,
    passed_window_start_ms: Option<i64>,
) -> Phase {
    // `<step>:<began_ms> <plan>`: a position of another plan of the rule starts over.
    let (at, cas) = match HostStore.get(key) {
        Ok(Some((bytes, cas))) => {
            let at = std::str::from_utf8(&bytes)
                .ok()
                .and_then(|v| v.split_once(' '))
                .filter(|(_, of)| *of == plan_id)
                .and_then(|(pos, _)| Gated::decode(pos.as_bytes()));
            (at.unwrap_or_default(), Some(cas))
        }
        _ => (Gated::default(), None),
    };
    let (next, phase) = at.advance(policy, now, passed_window_start_ms);
    if next == at {
        return phase;
    }
    let value = format!("{} {plan_id}", next.encode());
    match HostStore.set(key, value.as_bytes(), cas) {
        SetResult::Written => phase,
        _ => at.advance(policy, now, None).1,
    }
}

/// Logs the step's start, once per process: the worker that moves the shared "last logged
/// step" forward logs it.
fn log_step_once(key: &str, plan: &str, rule: &str, dest: &str, phase: Phase, steps: usize) {
    let Ok(Some((value, cas))) = HostStore.get(key) else {
        return;
    };
    // "-" until a step is logged; a step of another plan of the rule does not count.
    if logged_step(&value, plan).is_some_and(|l| l >= phase.step) {
        return;
    }
    if HostStore.set(key, &logged_value(plan, phase.step), Some(cas)) != SetResult::Written {
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
