//! The HTTP context: one per request. Reads what the plan needs, writes the decision, and
//! watches the response for breakers, assigned cookies and shadow comparisons.

use super::shadow::{ShadowState, StreamShadow};
use super::{breaker, judge, shadow, status_of, Loaded, HOST_CLEARS_ROUTE_CACHE_ITSELF};
use crate::breaker::{BreakerPolicy, BreakerTicket};
use crate::config::RouteCacheMode;
use crate::lane::{HeaderEdit, Incoming, LaneStep};
use crate::metrics::BreakerEvent;
use crate::plan::{Decision, Routed};
use crate::request::Request;
use crate::rng::Rng;
use crate::shadow::Marker;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, MapType};
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
    /// The breaker and judge arm this response's outcome is counted for. Hook for #22 (fault
    /// injection): a request the filter faults must leave `judge_arm` empty, so faulted
    /// outcomes never reach the judge.
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
}

impl SplitStream {
    pub(super) fn new(
        active: Rc<Loaded>,
        rng: Rc<RefCell<Rng>>,
        shadow_state: Rc<RefCell<ShadowState>>,
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
        }
    }

    fn route(&mut self, routed: &Routed) {
        let plan = &self.active.plan;
        let Some(rule) = plan.rules.get(routed.rule) else {
            return;
        };
        let Some(dest) = rule.destinations.get(routed.destination) else {
            return;
        };
        set_request_header(&plan.cluster_header, Some(&dest.cluster));
        if let Some(variant_header) = &plan.variant_header {
            set_request_header(variant_header, Some(&dest.name));
        }
        clear_route_cache(plan.clear_route_cache);
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
        let judge_arm = if plan.judges.is_empty() {
            None
        } else {
            plan.judge_arm(routed.rule, routed.destination)
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
        let debug = plan.debug_header.then(|| match routed.lane {
            Some(step) => format!(
                "rule={}; variant={}; lane={}",
                rule.name,
                dest.name,
                step.as_str()
            ),
            None => format!("rule={}; variant={}", rule.name, dest.name),
        });
        if routed.set_cookie.is_some() || debug.is_some() {
            self.response_additions = Some(ResponseAdditions {
                set_cookie: routed.set_cookie.clone(),
                debug,
            });
        }
    }

    /// Writes the request's lane carriers (removing what must not pass, starting the lane of a
    /// rule with `propagate`) and counts what the lanes did; returns the writes, which the
    /// shadow copies get too.
    fn lane_edits(
        &self,
        request: &Request<'_>,
        incoming: &[Incoming],
        decision: &Decision,
        clock: Option<Option<u64>>,
    ) -> Vec<HeaderEdit> {
        let plan = &self.active.plan;
        let mut counters = self.active.counters.borrow_mut();
        for i in incoming {
            match i {
                Incoming::Untrusted => counters.count_lane_removed(false),
                Incoming::Invalid => counters.count_lane_removed(true),
                Incoming::Absent | Incoming::Lane(_) => {}
            }
        }
        let mut start = None;
        if let Decision::Routed(routed) = decision {
            let rule = plan.rules.get(routed.rule);
            if let (Some(lane), Some(step)) = (rule.and_then(|r| r.lane.as_ref()), routed.lane) {
                counters.count_lane(lane.slot, step);
                let dest = rule.and_then(|r| r.destinations.get(routed.destination));
                if let (LaneStep::Started, Some(dest)) = (step, dest) {
                    let now_s = match (&plan.lanes.key, clock) {
                        (None, _) => None,
                        (Some(_), Some(read)) => read,
                        (Some(_), None) => unix_seconds(),
                    };
                    start = Some((lane.carrier, plan.lanes.value_for(&dest.name, now_s)));
                }
            }
        }
        let edits = plan.lanes.edits(
            request,
            incoming,
            start.as_ref().map(|(c, v)| (*c, v.as_str())),
        );
        for (name, value) in &edits {
            let _ =
                hostcalls::set_map_value_bytes(MapType::HttpRequestHeaders, name, value.as_deref());
        }
        edits
    }

    fn unmatched(&mut self, client_sent_routing_headers: bool) {
        let plan = &self.active.plan;
        if client_sent_routing_headers {
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
        let headers = if plan.needs_request_headers {
            hostcalls::get_map_bytes(MapType::HttpRequestHeaders).unwrap_or_default()
        } else {
            Vec::new()
        };
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
        let request = base.with_lanes(&incoming);
        // Every request loses a shadow marker that does not verify; a verified one (a copy from
        // another instance) is kept, and the copy is never copied again.
        let marker = shadow::screen_marker(plan, plan.needs_request_headers.then_some(&request));
        let mut decision = plan.decide_at(
            &request,
            &mut self.rng.borrow_mut(),
            &active.breakers.borrow().views,
            &active.rollouts.borrow().bounds,
        );
        if let (Decision::Routed(routed), false) = (&mut decision, plan.judges.is_empty()) {
            plan.judge_moves(
                routed,
                &active.judges.borrow().tripped,
                &active.breakers.borrow().views,
            );
            self.not_grpc = plan.needs_request_headers
                && !request
                    .header("content-type")
                    .is_some_and(|c| c.starts_with(b"application/grpc"));
            // A sticky judged rule counts its distinct users per destination (SRM).
            if let Some(rule) = plan.rules.get(routed.rule) {
                if let (Some(slot), Some(sticky)) = (rule.judge_slot, &rule.sticky) {
                    let key = crate::plan::Rule::user_key(sticky, &request);
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
            self.lane_edits(&request, &incoming, &decision, lane_clock)
        };
        match decision {
            Decision::Routed(routed) => {
                self.route(&routed);
                if let Some(rule) = plan
                    .rules
                    .get(routed.rule)
                    .filter(|r| !r.shadows.is_empty() && marker == Marker::Absent)
                {
                    // The copy carries the lane the primary carries.
                    let mut headers = headers;
                    crate::lane::apply_edits(&mut headers, &lane_edits);
                    self.shadow = StreamShadow::start(
                        &active,
                        &mut self.shadow_state.borrow_mut(),
                        &mut self.rng.borrow_mut(),
                        routed.rule,
                        rule,
                        &headers,
                        end_of_stream,
                    );
                }
            }
            Decision::Unmatched => {
                // Without the header map we cannot know: remove to be safe.
                let client_sent = !plan.needs_request_headers
                    || request.header(&plan.cluster_header).is_some()
                    || plan
                        .variant_header
                        .as_deref()
                        .is_some_and(|v| request.header(v).is_some());
                self.unmatched(client_sent);
            }
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
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
