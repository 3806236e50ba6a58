//! Host side of the per-destination breakers.
//!
//! Each breaker's record lives in Envoy shared data (one key per destination, shared by every
//! worker of the process) and is updated with compare-and-swap. A worker decides requests from
//! its cached view (no host call per request), counts outcomes locally, and publishes them:
//! - on every tick (`TICK`, 100 ms), which is also when it learns the other workers' changes;
//! - at once, from the response that would change the state (the failure that crosses the
//!   threshold, the last probe), so a failing version is cut off after about `min_requests`
//!   failures rather than after a tick's worth of traffic;
//! - on failures, at most every `FAILURE_SYNC_MS`, so during a failure storm every worker
//!   learns within that time that another one tripped the breaker.
//!
//! Healthy steady state costs no host call per request; a failing destination costs at most
//! two shared-data calls per worker per 50 ms.

use super::now_ms;
use crate::breaker::{percent_text, BreakerView, Outcomes, Record, State, Transition};
use crate::metrics::{breaker_metric, BreakerCounters, BreakerEvent, BREAKER_STATE};
use crate::plan::{BreakerRef, Plan};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{MetricType, Status};

/// On failures, a worker syncs with the shared record at most this often (besides the tick).
const FAILURE_SYNC_MS: u64 = 50;

/// Per configuration: what this worker knows of each breaker slot.
pub(super) struct Breakers {
    /// For decisions, by slot.
    pub views: Vec<BreakerView>,
    slots: Vec<Slot>,
    pub counters: BreakerCounters,
    pub counter_ids: Vec<Option<u32>>,
}

struct Slot {
    at: BreakerRef,
    key: String,
    /// The shared record as last read or written.
    record: Record,
    pending: Outcomes,
    /// When this worker last read or wrote the shared record (ms).
    synced_ms: u64,
    gauge_id: Option<u32>,
    gauge_shown: Option<State>,
}

impl Breakers {
    /// `scope` keeps two filter configurations sharing a VM id apart (the plugin name).
    pub fn new(plan: &Plan, scope: &str) -> Breakers {
        let names = BreakerCounters::breaker_names(plan);
        let slots = plan
            .breakers
            .iter()
            .zip(&names)
            .map(|(at, (rule, dest))| Slot {
                at: *at,
                key: format!("traffic-split/{scope}/breaker/{rule}/{dest}"),
                record: Record::default(),
                pending: Outcomes::default(),
                synced_ms: 0,
                gauge_id: hostcalls::define_metric(
                    MetricType::Gauge,
                    &breaker_metric(rule, dest, BREAKER_STATE),
                )
                .ok(),
                gauge_shown: None,
            })
            .collect();
        Breakers {
            views: vec![BreakerView::default(); plan.breakers.len()],
            slots,
            counters: BreakerCounters::for_plan(plan),
            counter_ids: BreakerCounters::names(plan)
                .iter()
                .map(|name| hostcalls::define_metric(MetricType::Counter, name).ok())
                .collect(),
        }
    }

    /// A response for `slot`'s destination, decided under `generation`.
    pub fn record_outcome(&mut self, plan: &Plan, slot: usize, generation: u64, failed: bool) {
        let Some(s) = self.slots.get_mut(slot) else {
            return;
        };
        s.pending.add(generation, failed);
        let half_open = s.record.state == State::HalfOpen;
        if !(failed || half_open) {
            return;
        }
        let Some(policy) = policy(plan, s.at) else {
            return;
        };
        let Some(now) = now_ms() else {
            return;
        };
        // During a failure storm, sync at most every FAILURE_SYNC_MS even without a crossing
        // here: that is how a worker learns quickly that another one already tripped.
        if s.record.would_advance(policy, now, &s.pending)
            || now.saturating_sub(s.synced_ms) >= FAILURE_SYNC_MS
        {
            self.publish(plan, slot, now);
        }
    }

    /// Tick: publish every slot's outcomes and learn the shared state.
    pub fn publish_all(&mut self, plan: &Plan) {
        if self.slots.is_empty() {
            return;
        }
        let Some(now) = now_ms() else {
            return;
        };
        for slot in 0..self.slots.len() {
            self.publish(plan, slot, now);
        }
    }

    /// Merges this worker's outcomes into the shared record and moves it on, with
    /// compare-and-swap; a lost race is retried with the fresh record.
    fn publish(&mut self, plan: &Plan, slot: usize, now: u64) {
        let Some(s) = self.slots.get_mut(slot) else {
            return;
        };
        let Some(policy) = policy(plan, s.at) else {
            return;
        };
        for _attempt in 0..4 {
            let Ok((bytes, cas)) = hostcalls::get_shared_data(&s.key) else {
                return;
            };
            let mut record = bytes
                .as_deref()
                .and_then(Record::decode)
                .unwrap_or_default();
            let merges = s.pending.requests > 0 && s.pending.generation == record.generation;
            record.merge(policy, now, &s.pending);
            let transition = record.advance(policy, now);
            if merges || transition.is_some() {
                match hostcalls::set_shared_data(&s.key, Some(&record.encode()), cas) {
                    Ok(()) => {}
                    Err(Status::CasMismatch) => continue,
                    Err(_) => return,
                }
            }
            s.pending = Outcomes {
                generation: record.generation,
                ..Outcomes::default()
            };
            s.synced_ms = now;
            if let Some(view) = self.views.get_mut(slot) {
                *view = BreakerView {
                    state: record.state,
                    generation: record.generation,
                };
            }
            if s.gauge_shown != Some(record.state) {
                if let Some(id) = s.gauge_id {
                    let _ = hostcalls::record_metric(id, record.state as u64);
                }
                s.gauge_shown = Some(record.state);
            }
            s.record = record;
            if let Some(t) = transition {
                log_transition(plan, s.at, &t);
                match t.to {
                    State::Open => self.counters.count(slot, BreakerEvent::Opened),
                    State::Closed => self.counters.count(slot, BreakerEvent::Closed),
                    State::HalfOpen => {}
                }
            }
            return;
        }
    }
}

fn policy(plan: &Plan, at: BreakerRef) -> Option<&crate::breaker::BreakerPolicy> {
    plan.rules
        .get(at.rule)?
        .destinations
        .get(at.destination)?
        .breaker
        .as_ref()
}

/// One line per state change, at warn, so an operator reading Envoy's log sees why traffic
/// moved. Only the worker whose write made the change logs it.
fn log_transition(plan: &Plan, at: BreakerRef, t: &Transition) {
    let Some(rule) = plan.rules.get(at.rule) else {
        return;
    };
    let Some(dest) = rule.destinations.get(at.destination) else {
        return;
    };
    let Some(policy) = &dest.breaker else {
        return;
    };
    let fallback = dest
        .fallback
        .and_then(|f| rule.destinations.get(f))
        .map_or("", |f| f.name.as_str());
    let ratio = percent_text(t.failures, t.requests);
    let what = match (t.from, t.to) {
        (State::Closed, State::Open) => format!(
            "opened: {} of {} requests failed ({ratio}) in the last {} s; its traffic goes to \"{fallback}\" for {} s",
            t.failures, t.requests, policy.window_s, policy.open_s
        ),
        (State::Open, State::HalfOpen) => format!(
            "half-open after {} s: {}.{}% of its traffic goes through as probes; it closes when \
             fewer than {} of {} probes fail",
            policy.open_s,
            policy.half_open_permille / 10,
            policy.half_open_permille % 10,
            policy.failure_ratio_text(),
            policy.min_requests
        ),
        (State::HalfOpen, State::Closed) => format!(
            "closed: {} of {} probes failed ({ratio}); its traffic is back",
            t.failures, t.requests
        ),
        _ => format!(
            "re-opened: {} of {} probes failed ({ratio}); its traffic goes to \"{fallback}\" for {} s",
            t.failures, t.requests, policy.open_s
        ),
    };
    log::warn!(
        "traffic-split: breaker {}/{} (cluster {}) {what}",
        rule.name,
        dest.name,
        dest.cluster
    );
}
