//! Metric names (a public contract: dashboards use them) and per-VM counters that are
//! aggregated locally and flushed to Envoy on a tick, so a request costs no metric host call.

use crate::lane::LaneStep;
use crate::plan::Plan;

pub const UNMATCHED: &str = "traffic_split.unmatched";
/// `regex` conditions not evaluated because the value was longer than the pattern's cap (`Pattern::max_value_len`)
/// (they do not hold); defined only when the plan has a `regex`.
pub const REGEX_VALUE_TOO_LONG: &str = "traffic_split.regex.value_too_long";

pub fn destination_requests(rule: &str, destination: &str) -> String {
    format!("traffic_split.rule.{rule}.destination.{destination}.requests")
}

/// Counts not yet handed to Envoy, by slot, and which slots have one: a flush visits only
/// those, so a plan of thousands of rules costs its tick no more than the traffic it saw.
struct Pending {
    counts: Vec<u64>,
    /// Slots whose count went from 0 since the last flush, each once.
    touched: Vec<usize>,
}

impl Pending {
    fn new(slots: usize) -> Self {
        Pending {
            counts: vec![0; slots],
            touched: Vec::new(),
        }
    }

    fn add(&mut self, slot: usize) {
        if let Some(count) = self.counts.get_mut(slot) {
            if *count == 0 {
                self.touched.push(slot);
            }
            *count += 1;
        }
    }

    /// Hands each pending count to `emit(slot, delta)`, in the order the slots were first
    /// counted, and resets it.
    fn flush(&mut self, mut emit: impl FnMut(usize, u64)) {
        for slot in self.touched.drain(..) {
            if let Some(count) = self.counts.get_mut(slot) {
                emit(slot, *count);
                *count = 0;
            }
        }
    }
}

pub fn lane_metric(rule: &str, what: &str) -> String {
    format!("traffic_split.rule.{rule}.lane.{what}")
}

/// Per rule with `propagate`, one counter per `LaneStep`.
const LANE_STEPS: [LaneStep; 4] = [
    LaneStep::Followed,
    LaneStep::Fallback,
    LaneStep::Unknown,
    LaneStep::Started,
];

/// Lane values removed on arrival: a client's, on a carrier where lanes start here.
pub const LANE_UNTRUSTED: &str = "traffic_split.lane.untrusted";
/// Lane values removed on arrival: failed `lane_secret` verification (or named nothing).
pub const LANE_INVALID: &str = "traffic_split.lane.invalid";

/// Bodies held for `match.body` that were over `body_max_bytes`.
pub const BODY_TOO_LARGE: &str = "traffic_split.body.too_large";
/// Bodies held for `match.body` that were not valid JSON.
pub const BODY_INVALID: &str = "traffic_split.body.invalid";

/// One counter slot per (rule, destination) in plan order, then one for unmatched requests,
/// then (when the plan has lanes) `LANE_STEPS` per rule with a lane and the two removal counts,
/// then (when a rule reads the body) the two body counts, then `FAULT_EVENTS` per rule with a
/// `fault`.
pub struct DecisionCounters {
    /// Index of each rule's first slot.
    rule_offsets: Vec<usize>,
    /// The unmatched slot; lane slots follow it.
    unmatched: usize,
    /// The first body slot: `too_large`, then `invalid` (when the plan reads bodies).
    body: usize,
    /// The first fault slot (after every lane and body slot).
    faults: usize,
    pending: Pending,
}

impl DecisionCounters {
    pub fn for_plan(plan: &Plan) -> Self {
        let mut rule_offsets = Vec::with_capacity(plan.rules.len());
        let mut slots = 0;
        for rule in &plan.rules {
            rule_offsets.push(slots);
            slots += rule.destinations.len();
        }
        let lane_slots = if plan.lanes.is_empty() {
            0
        } else {
            plan.lane_rules * LANE_STEPS.len() + 2
        };
        let body = slots + 1 + lane_slots;
        let faults = body + if plan.reads_body { 2 } else { 0 };
        DecisionCounters {
            rule_offsets,
            unmatched: slots,
            body,
            faults,
            pending: Pending::new(faults + plan.fault_rules.len() * FAULT_EVENTS.len()),
        }
    }

    /// Metric names, slot by slot.
    pub fn names(plan: &Plan) -> Vec<String> {
        let mut out = Vec::new();
        for r in &plan.rules {
            for d in &r.destinations {
                out.push(destination_requests(&r.name, &d.name));
            }
        }
        out.push(UNMATCHED.to_string());
        if !plan.lanes.is_empty() {
            for r in &plan.rules {
                if r.lane.is_some() {
                    for step in LANE_STEPS {
                        out.push(lane_metric(&r.name, step.as_str()));
                    }
                }
            }
            out.push(LANE_UNTRUSTED.to_string());
            out.push(LANE_INVALID.to_string());
        }
        if plan.reads_body {
            out.push(BODY_TOO_LARGE.to_string());
            out.push(BODY_INVALID.to_string());
        }
        for &r in &plan.fault_rules {
            if let Some(rule) = plan.rules.get(r) {
                for (_, what) in FAULT_EVENTS {
                    out.push(fault_metric(&rule.name, what));
                }
            }
        }
        out
    }

    /// A held body that was over `body_max_bytes` (`too_large`) or not JSON.
    pub fn count_body(&mut self, too_large: bool) {
        // Only a plan that reads bodies has these slots (the fault slots follow them).
        if self.faults > self.body {
            self.pending.add(self.body + usize::from(!too_large));
        }
    }

    pub fn count_routed(&mut self, rule: usize, destination: usize) {
        if let Some(offset) = self.rule_offsets.get(rule) {
            self.pending.add(offset + destination);
        }
    }

    pub fn count_unmatched(&mut self) {
        self.pending.add(self.unmatched);
    }

    /// What a request's lane did at the rule whose lane slot is `slot`.
    pub fn count_lane(&mut self, slot: usize, step: LaneStep) {
        let offset = LANE_STEPS.iter().position(|s| *s == step).unwrap_or(0);
        self.pending
            .add(self.unmatched + 1 + slot * LANE_STEPS.len() + offset);
    }

    /// A lane value removed on arrival: `invalid` (failed verification) or untrusted.
    pub fn count_lane_removed(&mut self, invalid: bool) {
        let last = self.body.saturating_sub(1);
        // Only a plan with lanes has these slots, after every other lane slot.
        if let Some(slot) = last
            .checked_sub(usize::from(!invalid))
            .filter(|&s| s > self.unmatched)
        {
            self.pending.add(slot);
        }
    }

    /// What Envoy's fault filter did to a request of the fault slice of fault slot `slot`.
    pub fn count_fault(&mut self, slot: usize, event: FaultEvent) {
        let offset = usize::from(event == FaultEvent::Aborted);
        self.pending
            .add(self.faults + slot * FAULT_EVENTS.len() + offset);
    }

    /// Hands each non-zero pending count to `emit(slot, delta)` and resets it.
    pub fn flush(&mut self, emit: impl FnMut(usize, u64)) {
        self.pending.flush(emit);
    }
}

/// What happened to shadow copies, counted per shadow target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShadowEvent {
    /// Dispatched to the shadow cluster.
    Sent,
    /// The shadow answered (any status).
    Responses,
    /// Timeout, reset, connection failure, unknown cluster.
    Failed,
    /// Sampled but not sent: body over `max_body_bytes`, or the bulkhead was full.
    Dropped,
    StatusMismatch,
    ClassMismatch,
    BodyMismatch,
    /// Sent, but Envoy cancelled the call before it answered: the configuration that sent it
    /// was replaced and its root context deleted (see `host::root::SplitRoot`'s `Drop`).
    Cancelled,
}

const SHADOW_EVENTS: [(ShadowEvent, &str); 8] = [
    (ShadowEvent::Sent, "sent"),
    (ShadowEvent::Responses, "responses"),
    (ShadowEvent::Failed, "failed"),
    (ShadowEvent::Dropped, "dropped"),
    (ShadowEvent::StatusMismatch, "status_mismatch"),
    (ShadowEvent::ClassMismatch, "class_mismatch"),
    (ShadowEvent::BodyMismatch, "body_mismatch"),
    (ShadowEvent::Cancelled, "cancelled"),
];

pub fn shadow_metric(target: &str, what: &str) -> String {
    format!("traffic_split.shadow.{target}.{what}")
}

/// Histogram of shadow response latency (dispatch to response), per target.
pub const SHADOW_LATENCY: &str = "latency_ms";
/// Histogram of the primary's latency for the requests compared with that target, so the two
/// distributions sit side by side.
pub const SHADOW_PRIMARY_LATENCY: &str = "primary_latency_ms";
/// Histogram: time from the copy being complete to its dispatch by the worker's root context.
pub const SHADOW_DISPATCH_DELAY: &str = "traffic_split.shadow.dispatch_delay_us";

/// Counters in groups (one group per shadow target, or per breaker), one slot per event kind.
pub struct GroupCounters<E: 'static> {
    events: &'static [(E, &'static str)],
    pending: Pending,
}

impl<E: Copy + PartialEq> GroupCounters<E> {
    fn new(events: &'static [(E, &'static str)], groups: usize) -> Self {
        GroupCounters {
            events,
            pending: Pending::new(groups * events.len()),
        }
    }

    pub fn count(&mut self, group: usize, event: E) {
        let offset = self
            .events
            .iter()
            .position(|(e, _)| *e == event)
            .unwrap_or(0);
        self.pending.add(group * self.events.len() + offset);
    }

    /// Hands each non-zero pending count to `emit(slot, delta)` and resets it.
    pub fn flush(&mut self, emit: impl FnMut(usize, u64)) {
        self.pending.flush(emit);
    }
}

/// Metric names, slot by slot: `name(group, event name)` for each group and event.
fn group_names<E>(
    events: &[(E, &str)],
    groups: usize,
    name: impl Fn(usize, &str) -> String,
) -> Vec<String> {
    // Plain loops: iterator adapters here cost a copy of their code per caller in the `.wasm`.
    let mut out = Vec::with_capacity(groups.saturating_mul(events.len()));
    for g in 0..groups {
        for (_, what) in events {
            out.push(name(g, what));
        }
    }
    out
}

/// Shadow counters: one group per shadow target, in target order.
pub type ShadowCounters = GroupCounters<ShadowEvent>;

impl ShadowCounters {
    pub fn for_plan(plan: &Plan) -> Self {
        GroupCounters::new(&SHADOW_EVENTS, plan.shadow_targets.len())
    }

    pub fn names(plan: &Plan) -> Vec<String> {
        let targets = &plan.shadow_targets;
        group_names(&SHADOW_EVENTS, targets.len(), |g, what| {
            targets
                .get(g)
                .map_or_else(String::new, |t| shadow_metric(&t.name, what))
        })
    }
}

/// What happened at a breaker, counted per breaker slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerEvent {
    Opened,
    Closed,
    /// A request sent to the fallback because this destination's breaker was open (or
    /// half-open and the request was not a probe).
    Rerouted,
    /// A compare-and-swap write of the shared record that lost to another worker's.
    PublishConflicts,
}

const BREAKER_EVENTS: [(BreakerEvent, &str); 4] = [
    (BreakerEvent::Opened, "opened"),
    (BreakerEvent::Closed, "closed"),
    (BreakerEvent::Rerouted, "rerouted"),
    (BreakerEvent::PublishConflicts, "publish_conflicts"),
];

pub fn breaker_metric(rule: &str, destination: &str, what: &str) -> String {
    format!("traffic_split.breaker.{rule}.{destination}.{what}")
}

/// The gauge: 0 closed, 1 open, 2 half-open.
pub const BREAKER_STATE: &str = "state";

/// `traffic_split.rollout.<rule>.<what>`: `step` and `basis_points` (gauges), `aborted`
/// (counter).
pub fn rollout_metric(rule: &str, what: &str) -> String {
    format!("traffic_split.rollout.{rule}.{what}")
}

pub const ROLLOUT_STEP: &str = "step";
pub const ROLLOUT_BASIS_POINTS: &str = "basis_points";
pub const ROLLOUT_ABORTED: &str = "aborted";

/// `traffic_split.judge.<rule>.<what>`: the judge's gauges (last window) and counters.
pub fn judge_metric(rule: &str, what: &str) -> String {
    format!("traffic_split.judge.{rule}.{what}")
}

/// `traffic_split.rule.<rule>.srm`: 1 when the last judge window's distinct users per
/// destination do not follow the shares (sample ratio mismatch), else 0.
pub fn srm_metric(rule: &str) -> String {
    format!("traffic_split.rule.{rule}.srm")
}

/// The judge's gauges, in the order the host defines them: `verdict` (0 inconclusive, 1 pass,
/// 2 fail) and the numbers of the last window.
pub const JUDGE_GAUGES: [&str; 7] = [
    "verdict",
    "canary_requests",
    "baseline_requests",
    "canary_failure_bp",
    "baseline_failure_bp",
    "canary_latency_ms",
    "baseline_latency_ms",
];

/// The judge's counters: windows by verdict (inconclusive, pass, fail: the verdict's number).
pub const JUDGE_COUNTERS: [&str; 3] = ["windows_inconclusive", "windows_passed", "windows_failed"];

/// Breaker counters: one group per breaker, in breaker order.
pub type BreakerCounters = GroupCounters<BreakerEvent>;

impl BreakerCounters {
    pub fn for_plan(plan: &Plan) -> Self {
        GroupCounters::new(&BREAKER_EVENTS, plan.breakers.len())
    }

    /// `(rule name, destination name)` of each breaker slot.
    pub fn breaker_names(plan: &Plan) -> Vec<(&str, &str)> {
        plan.breakers
            .iter()
            .filter_map(|b| {
                let rule = plan.rules.get(b.rule)?;
                let dest = rule.destinations.get(b.destination)?;
                Some((rule.name.as_str(), dest.name.as_str()))
            })
            .collect()
    }

    pub fn names(plan: &Plan) -> Vec<String> {
        let breakers = BreakerCounters::breaker_names(plan);
        group_names(&BREAKER_EVENTS, breakers.len(), |g, what| {
            breakers
                .get(g)
                .map_or_else(String::new, |(rule, dest)| breaker_metric(rule, dest, what))
        })
    }
}

/// What Envoy's fault filter did to a request of a rule's fault slice (`rules[].fault`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultEvent {
    /// The fault filter delayed it (`x-envoy-fault-delay-request`).
    Delayed,
    /// The fault filter answered it with the abort status (HTTP or gRPC).
    Aborted,
}

const FAULT_EVENTS: [(FaultEvent, &str); 2] = [
    (FaultEvent::Delayed, "delayed"),
    (FaultEvent::Aborted, "aborted"),
];

/// `traffic_split.fault.<rule>.<what>`: `delayed`, `aborted` (counters, in `DecisionCounters`).
pub fn fault_metric(rule: &str, what: &str) -> String {
    format!("traffic_split.fault.{rule}.{what}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_slots_follow_fault_rules_after_lanes() {
        let plan = Plan::from_json(
            br#"{"rules":[{"name":"a","destinations":[{"name":"d","cluster":"c"}],"propagate":{"header":"x-l"}},
               {"name":"b","destinations":[{"name":"d","cluster":"c"}],"fault":{"percent":1,"delay_ms":5}}]}"#,
        )
        .unwrap();
        let names = DecisionCounters::names(&plan);
        assert_eq!(
            names[names.len() - 4..],
            [
                "traffic_split.lane.untrusted",
                "traffic_split.lane.invalid",
                "traffic_split.fault.b.delayed",
                "traffic_split.fault.b.aborted"
            ]
        );
        let mut c = DecisionCounters::for_plan(&plan);
        c.count_fault(0, FaultEvent::Aborted);
        c.count_fault(0, FaultEvent::Aborted);
        c.count_lane_removed(true);
        c.count_lane_removed(false);
        let mut seen = Vec::new();
        c.flush(|slot, delta| seen.push((names[slot].as_str(), delta)));
        assert_eq!(
            seen,
            vec![
                ("traffic_split.fault.b.aborted", 2),
                ("traffic_split.lane.invalid", 1),
                ("traffic_split.lane.untrusted", 1)
            ]
        );
        assert_eq!(
            names.len(),
            DecisionCounters::for_plan(&plan).pending.counts.len()
        );
    }

    #[test]
    fn slots_follow_plan_order_and_flush_resets() {
        let plan = Plan::from_json(
            br#"{"rules":[{"name":"r1","destinations":[{"name":"a","cluster":"a"},{"name":"b","cluster":"b"}]},
                          {"name":"r2","destinations":[{"name":"c","cluster":"c"}]}]}"#,
        )
        .unwrap();
        assert_eq!(
            DecisionCounters::names(&plan),
            vec![
                "traffic_split.rule.r1.destination.a.requests",
                "traffic_split.rule.r1.destination.b.requests",
                "traffic_split.rule.r2.destination.c.requests",
                "traffic_split.unmatched",
            ]
        );
        let mut c = DecisionCounters::for_plan(&plan);
        c.count_routed(0, 1);
        c.count_routed(0, 1);
        c.count_routed(1, 0);
        c.count_unmatched();
        c.count_routed(7, 7); // out of range: ignored, never a panic
        let mut seen = Vec::new();
        c.flush(|slot, delta| seen.push((slot, delta)));
        assert_eq!(seen, vec![(1, 2), (2, 1), (3, 1)]);
        seen.clear();
        c.flush(|slot, delta| seen.push((slot, delta)));
        assert!(seen.is_empty());
    }

    #[test]
    fn breaker_slots_follow_breakers_and_events() {
        let plan = Plan::from_json(
            br#"{"rules":[{"name":"r","destinations":[
                {"name":"canary","cluster":"a","fallback":"stable","breaker":{}},
                {"name":"stable","cluster":"b"}]}]}"#,
        )
        .unwrap();
        assert_eq!(
            BreakerCounters::names(&plan),
            vec![
                "traffic_split.breaker.r.canary.opened",
                "traffic_split.breaker.r.canary.closed",
                "traffic_split.breaker.r.canary.rerouted",
                "traffic_split.breaker.r.canary.publish_conflicts",
            ]
        );
        let mut c = BreakerCounters::for_plan(&plan);
        c.count(0, BreakerEvent::Rerouted);
        c.count(0, BreakerEvent::PublishConflicts);
        c.count(0, BreakerEvent::PublishConflicts);
        let mut seen = Vec::new();
        c.flush(|slot, delta| seen.push((slot, delta)));
        assert_eq!(seen, vec![(2, 1), (3, 2)]);
    }

    #[test]
    fn shadow_slots_follow_targets_and_events() {
        let plan = Plan::from_json(
            br#"{"rules":[{"name":"r1","destinations":[{"name":"a","cluster":"a"}],
                 "shadow":[{"cluster":"v3"},{"name":"v4","cluster":"c4"}]}]}"#,
        )
        .unwrap();
        let names = ShadowCounters::names(&plan);
        assert_eq!(names.len(), 16);
        assert_eq!(names[0], "traffic_split.shadow.v3.sent");
        assert_eq!(names[6], "traffic_split.shadow.v3.body_mismatch");
        assert_eq!(names[7], "traffic_split.shadow.v3.cancelled");
        assert_eq!(names[11], "traffic_split.shadow.v4.dropped");
        let mut c = ShadowCounters::for_plan(&plan);
        c.count(1, ShadowEvent::Dropped);
        c.count(0, ShadowEvent::Sent);
        c.count(0, ShadowEvent::Sent);
        let mut seen = Vec::new();
        c.flush(|slot, delta| seen.push((slot, delta)));
        // In the order the slots were first counted.
        assert_eq!(seen, vec![(11, 1), (0, 2)]);
        seen.clear();
        c.flush(|slot, delta| seen.push((slot, delta)));
        assert!(seen.is_empty());
        c.count(0, ShadowEvent::Sent);
        c.flush(|slot, delta| seen.push((slot, delta)));
        assert_eq!(seen, vec![(0, 1)], "a slot counts again after a flush");
    }

    /// A plan with lanes: per lane rule its four steps after the unmatched slot, then the two
    /// removal counters; a plan without lanes has none of them.
    #[test]
    fn lane_slots_follow_the_lane_rules() {
        let plan = Plan::from_json(
            br#"{"rules":[{"name":"a","propagate":{"header":"x-lane"},"destinations":[{"name":"d","cluster":"c"}]},
                          {"name":"b","destinations":[{"name":"d","cluster":"c"}]},
                          {"name":"c","propagate":{"baggage":"lane"},"from_lane":true,"destinations":[{"name":"d","cluster":"c"}]}]}"#,
        )
        .unwrap();
        let names = DecisionCounters::names(&plan);
        assert_eq!(
            names[3..],
            [
                "traffic_split.unmatched",
                "traffic_split.rule.a.lane.followed",
                "traffic_split.rule.a.lane.fallback",
                "traffic_split.rule.a.lane.unknown",
                "traffic_split.rule.a.lane.started",
                "traffic_split.rule.c.lane.followed",
                "traffic_split.rule.c.lane.fallback",
                "traffic_split.rule.c.lane.unknown",
                "traffic_split.rule.c.lane.started",
                "traffic_split.lane.untrusted",
                "traffic_split.lane.invalid",
            ]
        );
        let mut c = DecisionCounters::for_plan(&plan);
        c.count_lane(1, LaneStep::Followed);
        c.count_lane(0, LaneStep::Started);
        c.count_lane_removed(true);
        c.count_lane_removed(false);
        c.count_lane_removed(false);
        let mut seen = Vec::new();
        c.flush(|slot, delta| seen.push((names[slot].as_str(), delta)));
        assert_eq!(
            seen,
            vec![
                ("traffic_split.rule.c.lane.followed", 1),
                ("traffic_split.rule.a.lane.started", 1),
                ("traffic_split.lane.invalid", 1),
                ("traffic_split.lane.untrusted", 2),
            ]
        );
        let plain = Plan::from_json(
            br#"{"rules":[{"name":"b","destinations":[{"name":"d","cluster":"c"}]}]}"#,
        )
        .unwrap();
        let mut c = DecisionCounters::for_plan(&plain);
        c.count_lane_removed(true);
        c.count_lane(0, LaneStep::Started);
        let mut seen = Vec::new();
        c.flush(|slot, delta| seen.push((slot, delta)));
        assert!(seen.is_empty(), "{seen:?}");
    }
}
