//! Host side of the judges (`crate::judge`). A worker counts its judged outcomes in the VM
//! (no host call per request), and merges them into the rule's shared record
//! (`crate::judge::publish`), keyed by filter instance, rule and configuration, on the ticks
//! that need it (`crate::judge::publish_due`: a window's first and last tick, and at most every
//! second between; the other ticks touch no shared data). The first
//! worker to tick in a new wall-clock window closes the last one: it records the gauges and
//! counters, logs a failing window (with the numbers and thresholds behind it) and the action
//! taken. Every worker learns from the record whether `on_fail` ran: with `abort` and no
//! rollout, its decisions then send the canary's traffic to the baseline
//! (`Plan::judge_moves`); with a rollout, `Rollouts` holds it at 0% (`host::rollout`).

use super::breaker::HostStore;
use crate::breaker::{instance_scope, BreakerPolicy};
use crate::judge::gate::JudgeView;
use crate::judge::{judge_key, publish, publish_due, JudgePolicy, Judged, OnFail, Tally, Verdict};
use crate::metrics::{judge_metric, srm_metric, JUDGE_COUNTERS, JUDGE_GAUGES};
use crate::plan::{default_failure_policy, Plan, Rule};
use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

/// Monotonic microseconds, for the judge's latency (the breakers' clock): read when a judged
/// request is routed and when its response headers come, only for a judge with a latency
/// criterion.
pub(super) use super::breaker::clock_us;

/// Per configuration: each judge slot's pending counts and what this worker knows of it.
pub(super) struct Judges {
    /// Per judge slot: `on_fail: abort` ran, for decisions (`Plan::judge_moves`) and rollouts.
    pub tripped: Vec<bool>,
    /// Per judge slot: what rollouts need (the trigger, the last passing window).
    pub views: Vec<JudgeView>,
    /// What counts as a failure on a destination without a breaker.
    pub default_failures: BreakerPolicy,
    /// Per judge slot: the sampling threshold of baseline outcomes that no breaker classifies
    /// (`JudgePolicy::baseline_keep_threshold` at the shares in force; `u64::MAX`: all).
    pub baseline_keep: Vec<u64>,
    slots: Vec<Slot>,
}

struct Slot {
    key: String,
    pending: Tally,
    gauges: Vec<Option<u32>>,
    counters: Vec<Option<u32>>,
    /// `traffic_split.rule.<rule>.srm` (sticky rules only).
    srm_gauge: Option<u32>,
    /// The window and wall-clock ms of this worker's last synced publish (`publish_due`).
    published: Option<(u64, u64)>,
}

impl Judges {
    /// From `on_configure`: `configuration` (its bytes) scopes each judge, so a configuration
    /// change starts it afresh and lifts an abort.
    pub fn new(plan: &Plan, scope: &str, configuration: &[u8]) -> Judges {
        let config_id = instance_scope(&[configuration]);
        let slots: Vec<Slot> = (0..plan.judges.len())
            .filter_map(|slot| plan.judge_site(slot))
            .map(|(rule, _)| {
                let define = |kind, names: &[&str]| -> Vec<Option<u32>> {
                    names
                        .iter()
                        .map(|what| {
                            hostcalls::define_metric(kind, &judge_metric(&rule.name, what)).ok()
                        })
                        .collect()
                };
                Slot {
                    key: judge_key(scope, &rule.name, &config_id),
                    pending: Tally::default(),
                    gauges: define(MetricType::Gauge, &JUDGE_GAUGES),
                    counters: define(MetricType::Counter, &JUDGE_COUNTERS),
                    srm_gauge: rule.sticky.as_ref().and_then(|_| {
                        hostcalls::define_metric(MetricType::Gauge, &srm_metric(&rule.name)).ok()
                    }),
                    published: None,
                }
            })
            .collect();
        // A rule's shares are known now, unless a rollout moves them: then every outcome until
        // the first tick knows the shares in force (a rollout's compiled bounds give its
        // destination 0% until then): more evidence, never less.
        let baseline_keep = (0..slots.len())
            .map(|slot| match plan.judge_site(slot) {
                Some((rule, _)) if rule.rollout.is_none() => baseline_keep(plan, slot, &[]),
                _ => u64::MAX,
            })
            .collect();
        Judges {
            tripped: vec![false; slots.len()],
            views: vec![JudgeView::default(); slots.len()],
            default_failures: default_failure_policy(),
            baseline_keep,
            slots,
        }
    }

    /// Whether this request's baseline outcome is judged: always unless the baseline is
    /// sampled (`baseline_keep`), then when `draw` (a uniform u64) falls under the threshold.
    pub fn keeps_baseline(&self, slot: usize, draw: impl FnOnce() -> u64) -> bool {
        match self.baseline_keep.get(slot) {
            Some(&u64::MAX) | None => true,
            Some(&keep) => draw() < keep,
        }
    }

    /// One judged outcome (final destination `canary` or baseline of judge `slot`).
    // Hook for #22 (fault injection): a faulted outcome must not reach this call; the stream
    // decides that (`SplitStream::judge_arm` is cleared for it).
    pub fn record(&mut self, slot: usize, canary: bool, failed: bool, latency_us: Option<u64>) {
        if let Some(s) = self.slots.get_mut(slot) {
            let arm = if canary {
                &mut s.pending.canary
            } else {
                &mut s.pending.baseline
            };
            arm.record(failed, latency_us);
        }
    }

    /// A sticky rule's user (`srm::user_hash` of its key) served by `destination`.
    pub fn record_user(&mut self, slot: usize, destination: usize, hash: u64) {
        if let Some(s) = self.slots.get_mut(slot) {
            s.pending.add_user(destination, hash);
        }
    }

    /// On every tick (wall clock `now_ms`): publishes each judge's counts, closing a window
    /// that ended, and learns whether `on_fail` ran. `rollouts`: the bounds in force of each
    /// rollout slot (the shares the SRM test expects).
    pub fn tick(&mut self, plan: &Plan, now_ms: Option<u64>, rollouts: &[Vec<u32>]) {
        let Some(now_ms) = now_ms else {
            return;
        };
        let now_s = now_ms / 1000;
        let tick_ms = u64::try_from(super::TICK.as_millis()).unwrap_or(u64::MAX);
        for (slot, s) in self.slots.iter_mut().enumerate() {
            let Some((rule, policy)) = plan.judge_site(slot) else {
                continue;
            };
            // A rollout step moves the shares, and with them the baseline's sampling.
            if let Some(keep) = self.baseline_keep.get_mut(slot) {
                *keep = baseline_keep(plan, slot, rollouts);
            }
            // Counts stay in the VM between the ticks that must publish.
            if !publish_due(now_ms, policy.window_s, tick_ms, s.published) {
                continue;
            }
            let window = now_s / policy.window_s.max(1);
            let shares = if rule.sticky.is_some() {
                rule.bucket_shares(rule.bounds_in_force(rollouts))
            } else {
                Vec::new()
            };
            let done = publish(
                &mut HostStore,
                &s.key,
                policy,
                window,
                &mut s.pending,
                &shares,
            );
            if !done.synced {
                continue;
            }
            s.published = Some((window, now_ms));
            if let Some(t) = self.tripped.get_mut(slot) {
                *t = done.triggered && policy.on_fail == OnFail::Abort;
            }
            if let Some(v) = self.views.get_mut(slot) {
                let last_window_ms = done
                    .window
                    .checked_sub(1)
                    .map(|w| w.saturating_mul(policy.window_s).saturating_mul(1000))
                    .and_then(|ms| i64::try_from(ms).ok());
                *v = JudgeView {
                    tripped: done.triggered && policy.on_fail == OnFail::Abort,
                    passed_window_start_ms: last_window_ms
                        .filter(|_| done.last_verdict == Verdict::Pass),
                };
            }
            if let Some(closed) = done.closed {
                report(rule, policy, s, &closed);
            }
        }
    }
}

/// Judge `slot`'s baseline sampling threshold at the shares in force under `rollouts`.
fn baseline_keep(plan: &Plan, slot: usize, rollouts: &[Vec<u32>]) -> u64 {
    let Some((rule, policy)) = plan.judge_site(slot) else {
        return u64::MAX;
    };
    // Not on a rule that routes by lanes: its shares do not say where requests go.
    if rule.baseline_sampling().is_none() {
        return u64::MAX;
    }
    let shares = rule.bucket_shares(rule.bounds_in_force(rollouts));
    let share = |i: usize| shares.get(i).copied().unwrap_or(0);
    policy.baseline_keep_threshold(share(policy.canary), share(policy.baseline))
}

/// The closing worker reports a window: gauges, its verdict's counter, and a log line when it
/// failed (with the action it triggered).
fn report(rule: &Rule, policy: &JudgePolicy, s: &Slot, closed: &Judged) {
    let e = &closed.evaluation;
    let ms = |us: Option<u64>| us.map_or(0, |us| us / 1000);
    let values = [
        e.verdict as u64,
        e.canary_requests,
        e.baseline_requests,
        e.canary_failure_bp,
        e.baseline_failure_bp,
        ms(e.canary_latency_us),
        ms(e.baseline_latency_us),
    ];
    for (id, value) in s.gauges.iter().zip(values) {
        if let Some(id) = id {
            let _ = hostcalls::record_metric(*id, value);
        }
    }
    if let Some(Some(id)) = s.counters.get(e.verdict as usize) {
        let _ = hostcalls::increment_metric(*id, 1);
    }
    if let (Some(id), Some(flag)) = (s.srm_gauge, e.srm) {
        let _ = hostcalls::record_metric(id, u64::from(flag));
    }
    if e.verdict != Verdict::Fail {
        return;
    }
    let dest = |i: usize| rule.destinations.get(i).map_or("", |d| d.name.as_str());
    let action = match (closed.triggered_now, policy.on_fail) {
        (true, OnFail::Abort) if rule.rollout.is_some() => " -> rollout aborted".to_string(),
        (true, OnFail::Abort) => format!(
            " -> traffic of \"{}\" goes to \"{}\" until the configuration changes",
            dest(policy.canary),
            dest(policy.baseline)
        ),
        (true, OnFail::Report) => " -> on_fail \"report\": no action taken".to_string(),
        (false, _) if closed.streak.triggered => " (on_fail already taken)".to_string(),
        (false, _) => format!(
            " ({} of {} failing windows in a row before on_fail)",
            closed.streak.failing, policy.fail_after
        ),
    };
    log::warn!(
        "traffic-split: judge of rule \"{}\" failed window {}: {}{action}",
        rule.name,
        closed.ordinal,
        policy.numbers_text(e)
    );
}
