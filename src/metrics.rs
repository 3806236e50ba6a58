//! Metric names (a public contract: dashboards use them) and per-VM counters that are
//! aggregated locally and flushed to Envoy on a tick, so a request costs no metric host call.

use crate::plan::Plan;

pub const UNMATCHED: &str = "traffic_split.unmatched";

pub fn destination_requests(rule: &str, destination: &str) -> String {
    format!("traffic_split.rule.{rule}.destination.{destination}.requests")
}

/// One counter slot per (rule, destination) in plan order, then one for unmatched requests.
pub struct DecisionCounters {
    /// Index of each rule's first slot.
    rule_offsets: Vec<usize>,
    pending: Vec<u64>,
}

impl DecisionCounters {
    pub fn for_plan(plan: &Plan) -> Self {
        let mut rule_offsets = Vec::with_capacity(plan.rules.len());
        let mut slots = 0;
        for rule in &plan.rules {
            rule_offsets.push(slots);
            slots += rule.destinations.len();
        }
        DecisionCounters {
            rule_offsets,
            pending: vec![0; slots + 1],
        }
    }

    /// Metric names, slot by slot.
    pub fn names(plan: &Plan) -> Vec<String> {
        plan.rules
            .iter()
            .flat_map(|r| {
                r.destinations
                    .iter()
                    .map(move |d| destination_requests(&r.name, &d.name))
            })
            .chain(std::iter::once(UNMATCHED.to_string()))
            .collect()
    }

    pub fn count_routed(&mut self, rule: usize, destination: usize) {
        if let Some(offset) = self.rule_offsets.get(rule) {
            if let Some(slot) = self.pending.get_mut(offset + destination) {
                *slot += 1;
            }
        }
    }

    pub fn count_unmatched(&mut self) {
        if let Some(slot) = self.pending.last_mut() {
            *slot += 1;
        }
    }

    /// Hands each non-zero pending count to `emit(slot, delta)` and resets it.
    pub fn flush(&mut self, mut emit: impl FnMut(usize, u64)) {
        for (slot, pending) in self.pending.iter_mut().enumerate() {
            if *pending > 0 {
                emit(slot, *pending);
                *pending = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
