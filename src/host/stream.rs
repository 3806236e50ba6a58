//! The HTTP context: one per request. Reads what the plan needs, writes the decision, and
//! watches the response for breakers, assigned cookies and shadow comparisons.

use super::body::BodyHolds;
use super::shadow::{ShadowState, StreamShadow};
use super::{breaker, judge, shadow, status_of, Loaded, HOST_CLEARS_ROUTE_CACHE_ITSELF};
use crate::body::{self, BodyOutcome, RequestBody};
use crate::breaker::{BreakerPolicy, BreakerTicket};
use crate::config::RouteCacheMode;
use crate::fault;
use crate::lane::{HeaderEdit, Incoming, LaneStep};
use crate::metrics::{BreakerEvent, FaultEvent};
use crate::plan::{Decision, FaultPolicy, Routed};
use crate::request::{HeaderPair, Request};
use crate::rng::Rng;
use crate::shadow::Marker;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, MapType};
use std::cell::RefCell;
use std::rc::Rc;

/// Who a response's outcome is counted for: the final destination's breaker, and the judge arm
/// it belongs to.
#[derive(Clone, Copy)]
struct OutcomeFor {
    ticket: Option<BreakerTicket>,
    /// `(judge slot, canary?)`.
    judge_arm: Option<(usize, bool)>,
}

/// What to add to the response of a routed request.
struct ResponseAdditions {
    set_cookie: Option<String>,
    debug: Option<String>,
}

pub(super) struct SplitStream {
    active: Rc<Loaded>,
    rng: Rc<RefCell<Rng>>,
    shadow_state: Rc<RefCell<ShadowState>>,
    response_additions: Option<ResponseAdditions>,
    shadow: Option<StreamShadow>,
    /// The breaker and judge arm this response's outcome is counted for; never set for a
    /// request of a rule's fault slice (`injected`): faulted outcomes reach neither.
    outcome_for: Option<OutcomeFor>,
    /// When the request was routed (breaker clock, ms): only for a breaker with `slow_ms`.
    routed_ms: Option<u64>,
    /// When the request was routed (µs): only for a judge with a latency criterion.
    routed_us: Option<u64>,
    /// The request headers were read and the request is not gRPC: a judged destination
    /// without a breaker then skips the response's `content-type` read.
    not_grpc: bool,
    /// A gRPC response whose status comes in trailers: who it counts for, whether it was
    /// slow, and its latency (µs, for a judge).
    grpc_pending: Option<(OutcomeFor, bool, Option<u64>)>,
    /// The host's id of this stream (the root resumes a held request by it).
    context_id: u32,
    holds: Rc<BodyHolds>,
    /// The request while it is held for its body (`match.body`).
    held: Option<Box<Held>>,
    /// Set when this request is in a rule's fault slice: its outcome was injected (by Envoy's
    /// fault filter), so it is no evidence of the destination's health. Breakers never see it
    /// (no ticket); anything else that judges outcomes must skip it too.
    pub(super) injected: Option<InjectedFault>,
    /// Whether the request's header map was read (when it was not, a client's routing headers
    /// are removed unseen, to be safe).
    headers_read: bool,
}

/// A request held for its body: what deciding it needs once the body is in.
struct Held {
    headers: Vec<HeaderPair>,
    route_name: Option<Vec<u8>>,
    source_address: Option<Vec<u8>>,
    incoming: Vec<Incoming>,
    lane_clock: Option<Option<u64>>,
    marker: Marker,
    /// The decision on headers alone: what applies when the root resumed the request because
    /// Envoy delivers no body to a paused request (`host::body`).
    fallback: Decision,
    /// `regex` conditions the fallback's decision skipped (counted only if it applies).
    fallback_regex_skipped: u32,
    /// Watched by the root until the first body callback.
    watched: bool,
    /// Bytes buffered so far (the last body callback's size).
    buffered: usize,
}

/// A request of a rule's fault slice: the rule's fault slot (its counters) and the kinds of
/// fault asked of Envoy's fault filter.
#[derive(Debug, Clone, Copy)]
pub(super) struct InjectedFault {
    pub slot: usize,
    pub delay: bool,
    pub abort: bool,
}

impl SplitStream {
    pub(super) fn new(
        active: Rc<Loaded>,
        rng: Rc<RefCell<Rng>>,
        shadow_state: Rc<RefCell<ShadowState>>,
        context_id: u32,
        holds: Rc<BodyHolds>,
    ) -> Self {
        SplitStream {
            active,
            rng,
            shadow_state,
            response_additions: None,
            shadow: None,
            outcome_for: None,
            routed_ms: None,
            routed_us: None,
            not_grpc: false,
            grpc_pending: None,
            context_id,
            holds,
            held: None,
            injected: None,
            headers_read: false,
        }
    }

    /// Asks Envoy's fault filter (after this filter, `header_delay` / `header_abort`) to fault
    /// this request: each fault header with its percentage header at 100 (unless `write` is
    /// false: the root wrote them with the rest of a held request's header decision).
    fn inject(fault: &FaultPolicy, write: bool) -> InjectedFault {
        if write {
            for (name, value) in fault.request_headers() {
                set_request_header(name, Some(value));
            }
        }
        InjectedFault {
            slot: fault.slot,
            delay: fault.delay_ms.is_some(),
            abort: fault.aborts(),
        }
    }

    /// Counts what the fault filter did to this request, from Envoy's response flags (one
    /// property read, on faulted requests only): a fault it skipped (`max_active_faults`
    /// reached, no fault filter) is not counted.
    fn count_injected(&self, injected: InjectedFault) {
        let flags = hostcalls::get_property(vec!["response", "flags"])
            .ok()
            .flatten()
            .unwrap_or_default();
        let (delayed, aborted) = fault::injected(&flags);
        let mut counters = self.active.counters.borrow_mut();
        if delayed && injected.delay {
            counters.count_fault(injected.slot, FaultEvent::Delayed);
        }
        if aborted && injected.abort {
            counters.count_fault(injected.slot, FaultEvent::Aborted);
        }
    }

    /// Carries out a decision: lane carriers, routing headers (unless `write` is false: the
    /// root already wrote them), counters, response additions. Returns what shadowing needs:
    /// the rule to shadow and the lane writes the copies get too.
    fn apply(
        &mut self,
        request: &Request<'_>,
        incoming: &[Incoming],
        lane_clock: Option<Option<u64>>,
        marker: Marker,
        decision: &Decision,
        write: bool,
    ) -> Option<(Routed, Vec<HeaderEdit>)> {
        let active = Rc::clone(&self.active);
        let plan = &active.plan;
        if let (Decision::Routed(routed), false) = (decision, plan.judges.is_empty()) {
            // A sticky judged rule counts its distinct users per destination (SRM).
            if let Some(rule) = plan.rules.get(routed.rule) {
                if let (Some(slot), Some(sticky)) = (rule.judge_slot, &rule.sticky) {
                    let key = crate::plan::Rule::user_key(sticky, request);
                    if let Some(key) = key {
                        active.judges.borrow_mut().record_user(
                            slot,
                            routed.destination,
                            crate::judge::srm::user_hash(&key),
                        );
                    }
                }
            }
        }
        let lane_edits = if plan.lanes.is_empty() {
            Vec::new()
        } else {
            self.lane_edits(request, incoming, decision, lane_clock, write)
        };
        match decision {
            Decision::Routed(routed) => {
                self.route(routed, write);
                plan.rules
                    .get(routed.rule)
                    .filter(|r| !r.shadows.is_empty() && marker == Marker::Absent)
                    .map(|_| (routed.clone(), lane_edits))
            }
            Decision::Unmatched => {
                let client_sent = client_sent_routing_headers(&active, request, self.headers_read);
                self.unmatched(client_sent, write);
                None
            }
        }
    }

    /// The judges' part of a decision: a tripped judge moves the request
    /// (`Plan::judge_moves`), and whether the request is gRPC is noted for its response. Run
    /// on every decision taken (headers, body, or a held request's header fallback); the
    /// distinct-user count (SRM) is in `apply`, for the decision carried out only.
    fn judge(&mut self, request: &Request<'_>, decision: &mut Decision) {
        let active = Rc::clone(&self.active);
        let plan = &active.plan;
        if let (Decision::Routed(routed), false) = (decision, plan.judges.is_empty()) {
            plan.judge_moves(
                routed,
                &active.judges.borrow().tripped,
                &active.breakers.borrow().views,
            );
            self.not_grpc = plan.needs_request_headers
                && !request
                    .header("content-type")
                    .is_some_and(|c| c.starts_with(b"application/grpc"));
        }
    }

    /// Starts the shadow copies of a request `routed` decided.
    fn start_shadow(
        &mut self,
        routed: &Routed,
        mut headers: Vec<HeaderPair>,
        lane_edits: &[HeaderEdit],
        end_of_stream: bool,
    ) {
        let active = Rc::clone(&self.active);
        let Some(rule) = active.plan.rules.get(routed.rule) else {
            return;
        };
        // The copy carries the lane the primary carries.
        crate::lane::apply_edits(&mut headers, lane_edits);
        self.shadow = StreamShadow::start(
            &active,
            &mut self.shadow_state.borrow_mut(),
            &mut self.rng.borrow_mut(),
            routed,
            rule,
            &headers,
            end_of_stream,
        );
    }

    /// A body callback of a held request (or its trailers: `end_of_stream`). Returns the
    /// action while it stays held; `None` once decided (the body then passes on as usual).
    fn on_held_body(&mut self, body_size: usize, end_of_stream: bool) -> Option<Action> {
        let held = self.held.as_mut()?;
        held.buffered = body_size;
        if std::mem::take(&mut held.watched) && !self.holds.body_arrived(self.context_id) {
            // The root resumed this request with its header decision's headers.
            let held = self.held.take()?;
            self.decide_held(*held, None);
            return None;
        }
        let max = self.active.plan.body_max_bytes;
        let too_large = body_size as u64 > max;
        if !end_of_stream && !too_large {
            // StopIterationAndBuffer: Envoy keeps the body and calls again with all of it.
            return Some(Action::Pause);
        }
        let held = self.held.take()?;
        let outcome = if too_large {
            BodyOutcome::TooLarge
        } else {
            match hostcalls::get_buffer(BufferType::HttpRequestBody, 0, body_size) {
                Ok(Some(bytes)) => body::parse(&bytes, max, &self.active.plan.body_pointers),
                Ok(None) => body::parse(&[], max, &self.active.plan.body_pointers),
                Err(_) => BodyOutcome::Invalid,
            }
        };
        match &outcome {
            BodyOutcome::Json(_) => {}
            BodyOutcome::TooLarge => self.active.counters.borrow_mut().count_body(true),
            BodyOutcome::Invalid => self.active.counters.borrow_mut().count_body(false),
        }
        let json = match &outcome {
            BodyOutcome::Json(v) => RequestBody::Json(v),
            _ => RequestBody::Absent,
        };
        self.decide_held(*held, Some(json));
        // The route may have been computed before the body came: Envoy must re-pick it from
        // the headers just written, whatever its ABI rules.
        let _ = hostcalls::call_foreign_function("clear_route_cache", None);
        None
    }

    /// Decides a held request on its body (`Some`), or applies its header decision (`None`:
    /// the root already wrote its headers and resumed it).
    fn decide_held(&mut self, held: Held, body: Option<RequestBody<'_>>) {
        let active = Rc::clone(&self.active);
        let plan = &active.plan;
        let Held {
            headers,
            route_name,
            source_address,
            incoming,
            lane_clock,
            marker,
            fallback,
            fallback_regex_skipped,
            ..
        } = held;
        let write = body.is_some();
        let request = Request::new(&headers, route_name.as_deref())
            .with_source_address(source_address.as_deref())
            .with_lanes(&incoming)
            .with_body(body.unwrap_or_default());
        let decision = if write {
            let mut decision = plan.decide_at(
                &request,
                &mut self.rng.borrow_mut(),
                &active.breakers.borrow().views,
                &active.rollouts.borrow().bounds,
            );
            count_regex_skipped(&active, request.regex_skipped());
            self.judge(&request, &mut decision);
            decision
        } else {
            count_regex_skipped(&active, fallback_regex_skipped);
            fallback // judged when it was taken
        };
        let shadow = self.apply(&request, &incoming, lane_clock, marker, &decision, write);
        if let Some((routed, edits)) = shadow {
            // The body is already buffered: the copies are fed it next.
            self.start_shadow(&routed, headers, &edits, false);
        }
    }

    /// The request-header writes of a header decision, for the root to make if it must resume
    /// a held request (`host::body`): lane carriers, then the routing headers (and a fault
    /// slice's fault headers).
    fn fallback_writes(
        &self,
        request: &Request<'_>,
        incoming: &[Incoming],
        decision: &Decision,
        clock: Option<Option<u64>>,
    ) -> Vec<HeaderEdit> {
        let plan = &self.active.plan;
        let mut out = if plan.lanes.is_empty() {
            Vec::new()
        } else {
            lane_writes(plan, request, incoming, decision, clock)
        };
        let routed = match decision {
            Decision::Routed(r) => plan.rules.get(r.rule).and_then(|rule| {
                let fault = rule.fault.as_ref().filter(|_| r.fault);
                rule.destinations.get(r.destination).map(|d| (d, fault))
            }),
            Decision::Unmatched => None,
        };
        match routed {
            Some((dest, fault)) => {
                out.push((
                    plan.cluster_header.clone(),
                    Some(dest.cluster.clone().into_bytes()),
                ));
                if let Some(v) = &plan.variant_header {
                    out.push((v.clone(), Some(dest.name.clone().into_bytes())));
                }
                // A request of a fault slice asks Envoy's fault filter for its fault too.
                for (name, value) in fault.map(FaultPolicy::request_headers).unwrap_or_default() {
                    out.push((name.to_string(), Some(value.as_bytes().to_vec())));
                }
            }
            None => {
                if client_sent_routing_headers(&self.active, request, self.headers_read) {
                    out.push((plan.cluster_header.clone(), None));
                    if let Some(v) = &plan.variant_header {
                        out.push((v.clone(), None));
                    }
                }
            }
        }
        out
    }

    fn route(&mut self, routed: &Routed, write: bool) {
        let plan = &self.active.plan;
        let Some(rule) = plan.rules.get(routed.rule) else {
            return;
        };
        let Some(dest) = rule.destinations.get(routed.destination) else {
            return;
        };
        if write {
            set_request_header(&plan.cluster_header, Some(&dest.cluster));
            if let Some(variant_header) = &plan.variant_header {
                set_request_header(variant_header, Some(&dest.name));
            }
        }
        let fault = rule.fault.as_ref().filter(|_| routed.fault);
        self.injected = fault.map(|f| Self::inject(f, write));
        if write {
            clear_route_cache(plan.clear_route_cache);
        }
        self.active
            .counters
            .borrow_mut()
            .count_routed(routed.rule, routed.destination);
        if routed.rerouted != 0 {
            let mut breakers = self.active.breakers.borrow_mut();
            for (i, d) in rule.destinations.iter().enumerate() {
                if let (true, Some(slot)) = (routed.rerouted & (1 << i) != 0, d.breaker_slot) {
                    breakers.counters.count(slot, BreakerEvent::Rerouted);
                }
            }
        }
        // A faulted request's outcome was injected: no evidence for a judge either. A baseline
        // outcome no breaker classifies may be sampled out: its status read is most of what a
        // judged request costs (BENCHMARKS.md, "The judge").
        let judge_arm = if plan.judges.is_empty() || routed.fault {
            None
        } else {
            plan.judge_arm(routed.rule, routed.destination)
                .filter(|&(slot, canary)| {
                    let draw = || self.rng.try_borrow_mut().map_or(0, |mut r| r.next_u64());
                    canary
                        || routed.ticket.is_some()
                        || self
                            .active
                            .judges
                            .try_borrow()
                            .map_or(true, |j| j.keeps_baseline(slot, draw))
                })
        };
        if routed.ticket.is_some() || judge_arm.is_some() {
            self.outcome_for = Some(OutcomeFor {
                ticket: routed.ticket,
                judge_arm,
            });
        }
        // One clock read per request, only for a breaker that times its responses.
        if routed
            .ticket
            .and_then(|t| plan.breaker_policy(t.slot))
            .is_some_and(|p| p.slow_ms.is_some())
        {
            self.routed_ms = breaker::clock_ms();
        }
        // And one for a judge that compares latencies.
        if rule.judge.as_ref().is_some_and(|j| j.latency.is_some()) && judge_arm.is_some() {
            self.routed_us = judge::clock_us();
        }
        let debug = plan.debug_header.then(|| {
            let mut d = match routed.lane {
                Some(step) => format!(
                    "rule={}; variant={}; lane={}",
                    rule.name,
                    dest.name,
                    step.as_str()
                ),
                None => format!("rule={}; variant={}", rule.name, dest.name),
            };
            if let Some(fault) = fault {
                d.push_str("; fault=");
                d.push_str(&fault.describe);
            }
            d
        });
        if routed.set_cookie.is_some() || debug.is_some() {
            self.response_additions = Some(ResponseAdditions {
                set_cookie: routed.set_cookie.clone(),
                debug,
            });
        }
    }

    /// Writes the request's lane carriers (removing what must not pass, starting the lane of a
    /// rule with `propagate`; not when `write` is false: the root wrote them) and counts what
    /// the lanes did; returns the writes, which the shadow copies get too.
    fn lane_edits(
        &self,
        request: &Request<'_>,
        incoming: &[Incoming],
        decision: &Decision,
        clock: Option<Option<u64>>,
        write: bool,
    ) -> Vec<HeaderEdit> {
        let plan = &self.active.plan;
        {
            let mut counters = self.active.counters.borrow_mut();
            for i in incoming {
                match i {
                    Incoming::Untrusted => counters.count_lane_removed(false),
                    Incoming::Invalid => counters.count_lane_removed(true),
                    Incoming::Absent | Incoming::Lane(_) => {}
                }
            }
            if let Decision::Routed(routed) = decision {
                let rule = plan.rules.get(routed.rule);
                if let (Some(lane), Some(step)) = (rule.and_then(|r| r.lane.as_ref()), routed.lane)
                {
                    counters.count_lane(lane.slot, step);
                }
            }
        }
        let edits = lane_writes(plan, request, incoming, decision, clock);
        if write {
            for (name, value) in &edits {
                let _ = hostcalls::set_map_value_bytes(
                    MapType::HttpRequestHeaders,
                    name,
                    value.as_deref(),
                );
            }
        }
        edits
    }

    fn unmatched(&mut self, client_sent_routing_headers: bool, write: bool) {
        let plan = &self.active.plan;
        if client_sent_routing_headers && write {
            set_request_header(&plan.cluster_header, None);
            if let Some(variant_header) = &plan.variant_header {
                set_request_header(variant_header, None);
            }
            clear_route_cache(plan.clear_route_cache);
        }
        self.active.counters.borrow_mut().count_unmatched();
    }

    /// Classifies the response for the breaker of `ticket` and the judge arm, and counts it:
    /// its status, then (`slow_ms`) when its headers came, then (`grpc_failure_codes`) its
    /// `grpc-status`, from the headers of a trailers-only response or, for a gRPC response
    /// still streaming, from its trailers (`on_http_response_trailers`). A destination without
    /// a breaker is classified with the breaker's defaults (for its judge).
    fn count_outcome(&mut self, outcome_for: OutcomeFor, end_of_stream: bool) {
        let active = Rc::clone(&self.active);
        let judges = active.judges.borrow();
        let Some(policy) = failure_policy(&active, &judges.default_failures, outcome_for) else {
            return;
        };
        let Some(status) = status_of(MapType::HttpResponseHeaders) else {
            return;
        };
        let latency_us = match (outcome_for.judge_arm, self.routed_us) {
            (Some(_), Some(routed)) => judge::clock_us().map(|now| now.saturating_sub(routed)),
            _ => None,
        };
        // Envoy's own replies (connect failure, reset, timeout) are told apart by the response
        // code details, a property read only for the few responses where it matters.
        let failed = if policy.is_failure_status(status) {
            if !policy.count_local_replies && is_local_reply() {
                return; // not the version's answer: not counted at all
            }
            true
        } else {
            policy.count_local_replies && matches!(status, 502..=504) && is_local_reply()
        };
        // The clock only for a breaker that times its responses (`routed_ms` is read then).
        let slow = match (policy.slow_ms, self.routed_ms) {
            (Some(limit), Some(routed)) => {
                breaker::clock_ms().is_some_and(|now| now.saturating_sub(routed) > limit)
            }
            _ => false,
        };
        let mut failed = failed || slow;
        let skip_grpc = outcome_for.ticket.is_none() && self.not_grpc;
        if !failed && status == 200 && !policy.grpc_failure_codes.is_empty() && !skip_grpc {
            // gRPC answers 200 with `content-type: application/grpc...`; one read for others.
            let grpc = hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, "content-type")
                .ok()
                .flatten()
                .is_some_and(|c| c.starts_with(b"application/grpc"));
            if grpc {
                match hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, "grpc-status")
                    .ok()
                    .flatten()
                {
                    Some(code) => failed = policy.is_failure_grpc(&code),
                    None if !end_of_stream => {
                        self.grpc_pending = Some((outcome_for, slow, latency_us));
                        return;
                    }
                    None => {}
                }
            }
        }
        drop(judges);
        record(&active, outcome_for, failed, latency_us);
    }
}

/// What counts as a failure for `outcome_for`: its breaker's policy, else (a judged
/// destination without a breaker) the breaker defaults.
fn failure_policy<'a>(
    active: &'a Loaded,
    default: &'a BreakerPolicy,
    outcome_for: OutcomeFor,
) -> Option<&'a BreakerPolicy> {
    match outcome_for.ticket {
        Some(ticket) => active.plan.breaker_policy(ticket.slot),
        None => outcome_for.judge_arm.map(|_| default),
    }
}

/// Counts one classified outcome for its breaker and its judge arm.
fn record(active: &Loaded, outcome_for: OutcomeFor, failed: bool, latency_us: Option<u64>) {
    if let Some(ticket) = outcome_for.ticket {
        if let Ok(mut breakers) = active.breakers.try_borrow_mut() {
            breakers.record_outcome(&active.plan, ticket, failed);
        }
    }
    if let Some((slot, canary)) = outcome_for.judge_arm {
        if let Ok(mut judges) = active.judges.try_borrow_mut() {
            judges.record(slot, canary, failed, latency_us);
        }
    }
}

/// Whether the response being sent is a local reply of Envoy's rather than the upstream's.
/// `traffic_split.regex.value_too_long`: the `regex` conditions one decision did not evaluate
/// (a host call only when there were some).
fn count_regex_skipped(active: &Loaded, skipped: u32) {
    if skipped > 0 {
        if let Some(id) = active.regex_skipped_id {
            let _ = hostcalls::increment_metric(id, i64::from(skipped));
        }
    }
}

fn is_local_reply() -> bool {
    hostcalls::get_property(vec!["response", "code_details"])
        .ok()
        .flatten()
        .is_some_and(|details| details != b"via_upstream")
}

impl Context for SplitStream {}

impl HttpContext for SplitStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let active = Rc::clone(&self.active);
        let plan = &active.plan;
        // Client-sent fault-filter headers never pass: found in the header map when the plan
        // reads it (removed only when present), else removed by name, unseen (cheaper than
        // reading the map: bench/callgrind.sh, scenario callgrind-random).
        let read = if plan.needs_request_headers {
            hostcalls::get_map_bytes(MapType::HttpRequestHeaders)
        } else {
            Err(proxy_wasm::types::Status::NotFound)
        };
        let map_read = read.is_ok();
        self.headers_read = map_read;
        let mut headers = read.unwrap_or_default();
        if !map_read {
            for name in fault::READ_BY_ENVOY {
                set_request_header(name, None);
            }
        } else if headers.iter().any(|(name, _)| fault::is_fault_header(name)) {
            headers.retain(|(name, _)| {
                let client_fault = fault::is_fault_header(name);
                if client_fault {
                    set_request_header(name, None);
                }
                !client_fault
            });
        }
        let route_name = if plan.needs_route_name {
            hostcalls::get_property(vec!["xds", "route_name"])
                .ok()
                .flatten()
        } else {
            None
        };
        let source_address = if plan.needs_source_address {
            hostcalls::get_property(vec!["source", "address"])
                .ok()
                .flatten()
        } else {
            None
        };
        let base = Request::new(&headers, route_name.as_deref())
            .with_source_address(source_address.as_deref());
        // Lane carriers: screened on every request (`crate::lane`); the clock is read at most
        // once, and only to verify or sign with `lane_secret`.
        let mut lane_clock: Option<Option<u64>> = None;
        let incoming = if plan.lanes.is_empty() {
            Vec::new()
        } else {
            plan.lanes
                .screen(&base, || *lane_clock.get_or_insert_with(unix_seconds))
        };
        // `match.body`: a request that may carry a JSON body is `Pending` (its body conditions
        // do not hold yet); it is held when the first rule that can match it reads the body.
        let holdable = plan.reads_body
            && !end_of_stream
            && self.holds.may_hold()
            && body::may_carry_json(&base);
        let request = base.with_lanes(&incoming).with_body(if holdable {
            RequestBody::Pending
        } else {
            RequestBody::Absent
        });
        // Every request loses a shadow marker that does not verify; a verified one (a copy from
        // another instance) is kept, and the copy is never copied again.
        let marker = shadow::screen_marker(plan, map_read.then_some(&request));
        let hold = holdable && plan.needs_body(&request);
        // One request's count is that of the decision that applies: not `needs_body`'s look
        // ahead, and for a held request, its body decision's (or this one's if it falls back).
        let looked_ahead = request.regex_skipped();
        let mut decision = plan.decide_at(
            &request,
            &mut self.rng.borrow_mut(),
            &active.breakers.borrow().views,
            &active.rollouts.borrow().bounds,
        );
        let skipped = request.regex_skipped().saturating_sub(looked_ahead);
        if !hold {
            count_regex_skipped(&active, skipped);
        }
        self.judge(&request, &mut decision);
        if hold {
            let fallback = self.fallback_writes(&request, &incoming, &decision, lane_clock);
            self.holds.register(self.context_id, fallback);
            self.held = Some(Box::new(Held {
                headers,
                route_name,
                source_address,
                incoming,
                lane_clock,
                marker,
                fallback: decision,
                fallback_regex_skipped: skipped,
                watched: true,
                buffered: 0,
            }));
            return Action::Pause;
        }
        let shadow = self.apply(&request, &incoming, lane_clock, marker, &decision, true);
        if let Some((routed, edits)) = shadow {
            self.start_shadow(&routed, headers, &edits, end_of_stream);
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.held.is_some() {
            if let Some(action) = self.on_held_body(body_size, end_of_stream) {
                return action;
            }
        }
        if let Some(shadow) = &mut self.shadow {
            shadow.on_request_body(
                &self.active,
                &mut self.shadow_state.borrow_mut(),
                body_size,
                end_of_stream,
            );
        }
        Action::Continue
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        if let Some(buffered) = self.held.as_ref().map(|h| h.buffered) {
            // The body ended with trailers: decide on what was buffered.
            if self.on_held_body(buffered, true).is_none() {
                if let Some(shadow) = &mut self.shadow {
                    shadow.on_request_body(
                        &self.active,
                        &mut self.shadow_state.borrow_mut(),
                        buffered,
                        false,
                    );
                }
            }
        }
        if let Some(shadow) = &mut self.shadow {
            shadow.finish_request(&mut self.shadow_state.borrow_mut());
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if let Some(additions) = self.response_additions.take() {
            if let Some(cookie) = &additions.set_cookie {
                let _ =
                    hostcalls::add_map_value(MapType::HttpResponseHeaders, "set-cookie", cookie);
                keep_from_shared_caches();
            }
            if let Some(debug) = &additions.debug {
                let _ = hostcalls::set_map_value(
                    MapType::HttpResponseHeaders,
                    "x-split-decision",
                    Some(debug),
                );
            }
        }
        if let Some(outcome_for) = self.outcome_for.take() {
            self.count_outcome(outcome_for, end_of_stream);
        }
        if let Some(injected) = self.injected {
            self.count_injected(injected);
        }
        if let Some(shadow) = self.shadow.as_mut().filter(|s| s.watches_response()) {
            shadow.on_response_headers(
                &self.active,
                &mut self.shadow_state.borrow_mut(),
                end_of_stream,
            );
        }
        Action::Continue
    }

    /// Only called for responses that have trailers (gRPC), so exporting it costs other
    /// responses nothing (BENCHMARKS.md).
    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        if let Some((outcome_for, slow, latency_us)) = self.grpc_pending.take() {
            let active = &self.active;
            let failed = slow
                || hostcalls::get_map_value_bytes(MapType::HttpResponseTrailers, "grpc-status")
                    .ok()
                    .flatten()
                    .is_some_and(|code| {
                        let judges = active.judges.borrow();
                        failure_policy(active, &judges.default_failures, outcome_for)
                            .is_some_and(|p| p.is_failure_grpc(&code))
                    });
            record(active, outcome_for, failed, latency_us);
        }
        if let Some(shadow) = self.shadow.as_mut().filter(|s| s.watches_response()) {
            shadow.on_response_trailers(&self.active, &mut self.shadow_state.borrow_mut());
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if let Some(shadow) = self.shadow.as_mut().filter(|s| s.watches_response_body()) {
            shadow.on_response_body(
                &self.active,
                &mut self.shadow_state.borrow_mut(),
                body_size,
                end_of_stream,
            );
        }
        Action::Continue
    }
}

/// The stream's end, whatever ended it (completed, reset, client gone): the SDK drops the
/// context in `proxy_on_delete`. Cleanup lives here rather than in `on_log` so that the module
/// need not export `proxy_on_log` at all (see `UNUSED_CALLBACKS` in the Makefile): Envoy then
/// skips that call into the VM on every request.
impl Drop for SplitStream {
    fn drop(&mut self) {
        if self.held.is_some() {
            self.holds.forget(self.context_id);
        }
        // A gRPC response that ended without trailers: counted by what was known.
        if let Some((outcome_for, slow, latency_us)) = self.grpc_pending.take() {
            record(&self.active, outcome_for, slow, latency_us);
        }
        if let (Some(shadow), Ok(mut state)) =
            (&mut self.shadow, self.shadow_state.try_borrow_mut())
        {
            shadow.on_stream_end(&self.active, &mut state);
        }
    }
}

/// A response that assigns a user id must not be stored by shared caches, or one user's id
/// (and version) would be handed to everyone the cache serves. Reads the first
/// `Cache-Control` value (one host call, only on responses that assign a cookie) and, unless
/// it already says `private` or `no-store`, adds a `Cache-Control: private` field line: lines
/// of one field combine as a comma-separated list (RFC 9110 5.3), so every directive the
/// upstream set is kept.
fn keep_from_shared_caches() {
    let existing = hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, "cache-control")
        .ok()
        .flatten();
    if !crate::cookie::kept_from_shared_caches(existing.as_deref()) {
        let _ = hostcalls::add_map_value(MapType::HttpResponseHeaders, "cache-control", "private");
    }
}

/// Whether the client sent a routing header (without the header map: assume so, to be safe).
fn client_sent_routing_headers(active: &Loaded, request: &Request<'_>, headers_read: bool) -> bool {
    let plan = &active.plan;
    !headers_read
        || request.header(&plan.cluster_header).is_some()
        || plan
            .variant_header
            .as_deref()
            .is_some_and(|v| request.header(v).is_some())
}

/// The lane carrier writes of a decision (`Lanes::edits`), counting nothing.
fn lane_writes(
    plan: &crate::plan::Plan,
    request: &Request<'_>,
    incoming: &[Incoming],
    decision: &Decision,
    clock: Option<Option<u64>>,
) -> Vec<HeaderEdit> {
    let mut start = None;
    if let Decision::Routed(routed) = decision {
        let rule = plan.rules.get(routed.rule);
        if let (Some(lane), Some(LaneStep::Started)) =
            (rule.and_then(|r| r.lane.as_ref()), routed.lane)
        {
            if let Some(dest) = rule.and_then(|r| r.destinations.get(routed.destination)) {
                let now_s = match (&plan.lanes.key, clock) {
                    (None, _) => None,
                    (Some(_), Some(read)) => read,
                    (Some(_), None) => unix_seconds(),
                };
                start = Some((lane.carrier, plan.lanes.value_for(&dest.name, now_s)));
            }
        }
    }
    plan.lanes.edits(
        request,
        incoming,
        start.as_ref().map(|(c, v)| (*c, v.as_str())),
    )
}

/// The host's clock in unix seconds (one host call).
fn unix_seconds() -> Option<u64> {
    super::now_ms().map(|ms| ms / 1000)
}

fn set_request_header(name: &str, value: Option<&str>) {
    let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, value);
}

/// Makes Envoy re-pick the route after the routing header changed: explicitly with
/// `clear_route_cache: "always"`, or in `"auto"` only where the ABI needs it.
fn clear_route_cache(mode: RouteCacheMode) {
    if mode == RouteCacheMode::Always || !HOST_CLEARS_ROUTE_CACHE_ITSELF {
        let _ = hostcalls::call_foreign_function("clear_route_cache", None);
    }
}
