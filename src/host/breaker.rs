//! Host side of the per-destination breakers.
//!
//! Each breaker's record lives in Envoy shared data (one key per filter instance, rule,
//! destination and cluster: `crate::breaker::record_key`, shared by every worker of the
//! process). It is created when a configuration is loaded, so every later update is a
//! compare-and-swap (`crate::breaker::Publisher`). A worker decides requests from its cached
//! view (no host call per request), counts outcomes locally, and publishes them:
//! - on every tick (`TICK`, 100 ms), which is also when it learns the other workers' changes;
//! - at once, from the response that would change the state (the failure that crosses the
//!   threshold, the last probe), so a failing version is cut off after about `min_requests`
//!   failures rather than after a tick's worth of traffic;
//! - on failures, at most every `FAILURE_SYNC_MS`, so during a failure storm every worker
//!   learns within that time that another one tripped the breaker.
//!
//! A publish that keeps losing compare-and-swap races backs off (and counts
//! `publish_conflicts`) instead of retrying under Envoy's shared-data lock on every response.
//!
//! Healthy steady state costs no host call per request; a failing destination costs at most
//! a few shared-data calls per worker per 50 ms.

use super::{now_ms, plugin_configuration};
use crate::breaker::{
    claim_gauge, create_record, gauge_owner, instance_scope, owner_record_key, owns_gauge,
    percent_text, record_key, release_gauge, BreakerTicket, BreakerView, Publisher, ReadFailed,
    SetResult, SharedStore, State, Transition,
};
use crate::metrics::{breaker_metric, BreakerCounters, BreakerEvent, BREAKER_STATE};
use crate::plan::{BreakerRef, Plan};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{MetricType, Status};

/// On failures, a worker syncs with the shared record at most this often (besides the tick).
const FAILURE_SYNC_MS: u64 = 50;

/// Envoy shared data (per process and `vm_id`).
pub(super) struct HostStore;

impl SharedStore for HostStore {
    fn get(&mut self, key: &str) -> Result<Option<(Vec<u8>, u32)>, ReadFailed> {
        match hostcalls::get_shared_data(key) {
            Ok((Some(bytes), Some(cas))) => Ok(Some((bytes, cas))),
            Ok((None, _)) => Ok(None),
            // A value without a token could only be written unconditionally: not here.
            Ok((Some(_), None)) | Err(_) => Err(ReadFailed),
        }
    }

    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> SetResult {
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => SetResult::Written,
            Err(Status::CasMismatch) => SetResult::Conflict,
            Err(_) => SetResult::Failed,
        }
    }
}

#[link(wasm_import_module = "wasi_snapshot_preview1")]
extern "C" {
    /// WASI `clock_time_get`; Envoy serves clock 1 (monotonic) from its steady clock.
    #[link_name = "clock_time_get"]
    fn wasi_clock_time_get(clock_id: u32, precision: u64, time: *mut u64) -> u16;
}

/// The breakers' clock: monotonic milliseconds, the same for every worker of the process, so a
/// wall-clock step neither stretches nor cuts an open period. proxy-wasm's own time call
/// (ABI 0.2.1) is the wall clock; WASI's monotonic clock is the one Envoy offers. Falls back to
/// the wall clock if the host lacks it (then `Record::rebase_clock` bounds a backward step).
pub(super) fn clock_ms() -> Option<u64> {
    monotonic_ms().or_else(now_ms)
}

/// The same clock in microseconds (the shadow's dispatch delay is finer than a millisecond).
pub(super) fn clock_us() -> Option<u64> {
    monotonic_ns()
        .map(|ns| ns / 1000)
        .or_else(|| now_ms().map(|ms| ms.saturating_mul(1000)))
}

fn monotonic_ms() -> Option<u64> {
    monotonic_ns().map(|ns| ns / 1_000_000)
}

fn monotonic_ns() -> Option<u64> {
    let mut ns: u64 = 0;
    // SAFETY: the import writes one u64 to the pointer it is given, a live local here.
    let errno = unsafe { wasi_clock_time_get(1, 1_000, &mut ns) };
    (errno == 0 && ns > 0).then_some(ns)
}

/// This filter instance among those sharing the `vm_id` (see `crate::breaker::instance_scope`).
/// Read once per configuration.
pub(super) fn scope() -> String {
    let property = |path: &str| {
        hostcalls::get_property(vec![path])
            .ok()
            .flatten()
            .unwrap_or_default()
    };
    let parts = [
        property("plugin_name"),
        property("plugin_root_id"),
        property("listener_direction"),
        property("listener_metadata"),
    ];
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    instance_scope(&refs)
}

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
    publisher: Publisher,
    gauge_id: Option<u32>,
    /// Where this slot's gauge records who reports it (see `claim_gauges`).
    owner_key: String,
    /// This configuration's breaker as the gauge's owner.
    owner: String,
    gauge_shown: Option<State>,
}

/// Shared-data key naming the record whose state a `state` gauge reports.
fn gauge_owner_key(gauge: &str) -> String {
    format!("traffic-split/breaker/v2/gauge/{gauge}")
}

impl Breakers {
    /// Called from `on_configure`, before this configuration serves a request: creates the
    /// shared records, and hands the `state` gauges to this configuration's breakers.
    pub fn new(plan: &Plan, scope: &str) -> Breakers {
        let names = BreakerCounters::breaker_names(plan);
        // Still readable: this runs within on_configure.
        let configuration = if plan.breakers.is_empty() {
            Vec::new()
        } else {
            plugin_configuration()
        };
        let slots: Vec<Slot> = plan
            .breakers
            .iter()
            .zip(&names)
            .map(|(at, (rule, dest))| {
                let cluster = plan
                    .breaker_site(*at)
                    .map_or("", |(_, d)| d.cluster.as_str());
                let key = record_key(scope, rule, dest, cluster);
                create_record(&mut HostStore, &key);
                let gauge = breaker_metric(rule, dest, BREAKER_STATE);
                Slot {
                    at: *at,
                    owner: gauge_owner(&configuration, &key),
                    publisher: Publisher::load(&mut HostStore, &key),
                    key,
                    gauge_id: hostcalls::define_metric(MetricType::Gauge, &gauge).ok(),
                    owner_key: gauge_owner_key(&gauge),
                    gauge_shown: None,
                }
            })
            .collect();
        claim_gauges(plan, &slots);
        if !slots.is_empty() && monotonic_ms().is_none() {
            log::warn!(
                "traffic-split: the host has no monotonic clock: breakers use the wall clock, \
                 and a backward step restarts an open period (it never lasts more than open_s \
                 past the step)"
            );
        }
        Breakers {
            views: slots
                .iter()
                .map(|s| BreakerView {
                    state: s.publisher.record.state,
                    generation: s.publisher.record.generation,
                })
                .collect(),
            slots,
            counters: BreakerCounters::for_plan(plan),
            counter_ids: super::define_metrics(MetricType::Counter, &BreakerCounters::names(plan)),
        }
    }

    /// A response for the destination of `ticket`'s breaker.
    pub fn record_outcome(&mut self, plan: &Plan, ticket: BreakerTicket, failed: bool) {
        let slot = ticket.slot;
        let Some(s) = self.slots.get_mut(slot) else {
            return;
        };
        s.publisher.pending.add(ticket.generation, failed);
        let half_open = s.publisher.record.state == State::HalfOpen;
        if !(failed || half_open) {
            return;
        }
        let Some(policy) = plan.breaker_policy(slot) else {
            return;
        };
        let Some(now) = clock_ms() else {
            return;
        };
        // During a failure storm, sync at most every FAILURE_SYNC_MS even without a crossing
        // here: that is how a worker learns quickly that another one already tripped.
        let p = &s.publisher;
        if p.may_publish(now)
            && (p.record.would_advance(policy, now, &p.pending)
                || now.saturating_sub(p.synced_ms) >= FAILURE_SYNC_MS)
        {
            self.publish(plan, slot, now);
        }
    }

    /// Publishes every slot's outcomes and learns the shared state: on every tick, and (for
    /// the root-context lifecycle) before a configuration's root context goes away, so no
    /// outcome it counted is lost. Publishes slots backing off after lost races too: at most
    /// once per call, which is what the back-off keeps responses to.
    pub fn publish_all(&mut self, plan: &Plan) {
        if self.slots.is_empty() {
            return;
        }
        let Some(now) = clock_ms() else {
            return;
        };
        for slot in 0..self.slots.len() {
            self.publish(plan, slot, now);
        }
    }

    fn publish(&mut self, plan: &Plan, slot: usize, now: u64) {
        let Some(s) = self.slots.get_mut(slot) else {
            return;
        };
        let Some(policy) = plan.breaker_policy(slot) else {
            return;
        };
        let done = s.publisher.publish(&mut HostStore, &s.key, policy, now);
        for _ in 0..done.conflicts {
            self.counters.count(slot, BreakerEvent::PublishConflicts);
        }
        if !done.synced {
            return;
        }
        let state = s.publisher.record.state;
        if let Some(view) = self.views.get_mut(slot) {
            *view = BreakerView {
                state,
                generation: s.publisher.record.generation,
            };
        }
        if s.gauge_shown != Some(state) {
            // Only the configuration that owns the gauge reports it: a replaced configuration
            // still draining its streams must not overwrite its successor's state.
            if let (Some(id), true) = (
                s.gauge_id,
                owns_gauge(&mut HostStore, &s.owner_key, &s.owner),
            ) {
                let _ = hostcalls::record_metric(id, state as u64);
            }
            s.gauge_shown = Some(state);
        }
        if let Some(t) = done.transition {
            log_transition(plan, s.at, &t);
            match t.to {
                State::Open => self.counters.count(slot, BreakerEvent::Opened),
                State::Closed => self.counters.count(slot, BreakerEvent::Closed),
                State::HalfOpen => {}
            }
        }
    }
}

/// A configuration going away (its root context deleted, or replaced, and its last stream
/// ended) sets to 0 the gauges it still owns: their breakers were removed, and no successor
/// reports them any more (see `crate::breaker::claim_gauge`).
impl Drop for Breakers {
    fn drop(&mut self) {
        for s in &self.slots {
            if release_gauge(&mut HostStore, &s.owner_key, &s.owner) {
                if let Some(id) = s.gauge_id {
                    let _ = hostcalls::record_metric(id, 0);
                }
            }
        }
    }
}

/// Hands each `state` gauge to this configuration's breaker (see
/// `crate::breaker::claim_gauge`); a takeover from another breaker is logged.
fn claim_gauges(plan: &Plan, slots: &[Slot]) {
    for s in slots {
        if let Some(previous) = claim_gauge(&mut HostStore, &s.owner_key, &s.owner) {
            // The same record under a new configuration (an update): nothing to say.
            let previous = owner_record_key(&previous);
            if previous != s.key {
                log_takeover(plan, s, previous.as_bytes());
            }
        }
    }
}

/// Record keys are `traffic-split/breaker/v2/<scope>/<rule>/<destination>/<cluster>`.
fn log_takeover(plan: &Plan, s: &Slot, previous: &[u8]) {
    let previous = String::from_utf8_lossy(previous);
    let mut theirs = previous.splitn(7, '/').skip(3);
    let mut ours = s.key.splitn(7, '/').skip(3);
    let (their_scope, our_scope) = (theirs.next(), ours.next());
    let their_cluster = theirs.nth(2).unwrap_or("");
    let Some((rule, dest)) = plan.breaker_site(s.at) else {
        return;
    };
    if their_scope == our_scope {
        // An update that repointed the destination, or another listener's configuration of
        // this filter with the same rule and destination names: the two cannot be told apart.
        log::info!(
            "traffic-split: breaker {}/{}: its state gauge now reports cluster {}'s breaker \
             (it reported cluster {their_cluster}'s: an earlier configuration, or another \
             configuration of this filter with the same rule and destination names)",
            rule.name,
            dest.name,
            dest.cluster
        );
    } else {
        log::warn!(
            "traffic-split: breaker {}/{}: another filter instance sharing this vm_id has a \
             breaker with the same rule and destination names (cluster {their_cluster}); their \
             records are separate but their metrics traffic_split.breaker.{}.{}.* are shared, \
             and the state gauge now reports this instance's (cluster {}). Give the rules \
             distinct names to tell them apart",
            rule.name,
            dest.name,
            rule.name,
            dest.name,
            dest.cluster
        );
    }
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
