//! The thin host layer: the only code that calls into Envoy (proxy_wasm). It reads what the
//! compiled plan needs, asks the core for a decision, and writes the decision back.
//!
//! Host calls per routed request: one header-map read (only when a rule looks at the request),
//! the routing-header write, the variant-header write (unless disabled), and response-header
//! writes only when a cookie is assigned or `debug_header` is on (`clear_route_cache` only where
//! the ABI needs it, see `HOST_CLEARS_ROUTE_CACHE_ITSELF`, or with `"always"`). Metrics
//! are counted in the VM and flushed on a tick: no per-request metric call. Shadowing adds its
//! own calls only on the requests it copies (see `shadow.rs`). A client-sent `x-shadow-request`
//! is removed from every request: found in the header map when it was read (a removal only when
//! present), else one removal call per request (a read, with `shadow_marker_secret`).

mod breaker;
mod shadow;

use crate::breaker::BreakerTicket;
use crate::config::RouteCacheMode;
use crate::metrics::{
    shadow_metric, BreakerEvent, DecisionCounters, ShadowCounters, ShadowEvent, SHADOW_LATENCY,
    SHADOW_PRIMARY_LATENCY,
};
use crate::plan::Plan;
use crate::plan::{Decision, Routed};
use crate::request::Request;
use crate::rng::Rng;
use crate::shadow::Marker;
use breaker::Breakers;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};
use shadow::{ShadowState, StreamShadow};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, SystemTime};

/// How often counters are flushed to Envoy's stats and breakers publish their outcomes. It
/// bounds how late a worker learns another worker's breaker change.
const TICK: Duration = Duration::from_millis(100);

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|id| -> Box<dyn RootContext> { Box::new(SplitRoot::new(id)) });
}}

/// One loaded configuration: its plan, metric ids and the counts not yet flushed. The newest
/// serves new streams; a replaced one stays loaded (`Vm::retired`) while streams, copies or
/// calls still use it.
struct Loaded {
    plan: Plan,
    decision_ids: Vec<Option<u32>>,
    counters: RefCell<DecisionCounters>,
    shadow_ids: Vec<Option<u32>>,
    shadow_counters: RefCell<ShadowCounters>,
    /// Per shadow target.
    shadow_latency_ids: Vec<Option<u32>>,
    primary_latency_ids: Vec<Option<u32>>,
    dispatch_delay_id: Option<u32>,
    breakers: RefCell<Breakers>,
}

impl Loaded {
    fn new(plan: Plan, scope: &str) -> Loaded {
        let define = |kind, names: &[String]| -> Vec<Option<u32>> {
            names
                .iter()
                .map(|name| hostcalls::define_metric(kind, name).ok())
                .collect()
        };
        let histograms = |what: &str| -> Vec<Option<u32>> {
            let names: Vec<String> = plan
                .shadow_targets
                .iter()
                .map(|t| shadow_metric(&t.name, what))
                .collect();
            define(MetricType::Histogram, &names)
        };
        Loaded {
            decision_ids: define(MetricType::Counter, &DecisionCounters::names(&plan)),
            counters: RefCell::new(DecisionCounters::for_plan(&plan)),
            shadow_ids: define(MetricType::Counter, &ShadowCounters::names(&plan)),
            shadow_counters: RefCell::new(ShadowCounters::for_plan(&plan)),
            shadow_latency_ids: histograms(SHADOW_LATENCY),
            primary_latency_ids: histograms(SHADOW_PRIMARY_LATENCY),
            dispatch_delay_id: if plan.shadow_targets.is_empty() {
                None
            } else {
                shadow::define_dispatch_delay()
            },
            breakers: RefCell::new(Breakers::new(&plan, scope)),
            plan,
        }
    }

    fn count_shadow(&self, target: usize, event: ShadowEvent) {
        self.shadow_counters.borrow_mut().count(target, event);
    }

    fn flush(&self) {
        self.counters
            .borrow_mut()
            .flush(|slot, delta| increment(&self.decision_ids, slot, delta));
        self.shadow_counters
            .borrow_mut()
            .flush(|slot, delta| increment(&self.shadow_ids, slot, delta));
        let mut breakers = self.breakers.borrow_mut();
        let Breakers {
            counters,
            counter_ids,
            ..
        } = &mut *breakers;
        counters.flush(|slot, delta| increment(counter_ids, slot, delta));
    }
}

fn increment(ids: &[Option<u32>], slot: usize, delta: u64) {
    if let Some(Some(id)) = ids.get(slot) {
        let _ = hostcalls::increment_metric(*id, delta as i64);
    }
}

fn now() -> Option<SystemTime> {
    hostcalls::get_current_time().ok()
}

fn now_ms() -> Option<u64> {
    now()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis() as u64)
}

/// What every root context of this VM (one VM per worker) shares. Envoy creates a root context
/// per configuration (each ECDS update) and deletes the old one once its last stream ends, so
/// what must outlive a configuration lives here, not in the root.
struct Vm {
    rng: Rc<RefCell<Rng>>,
    /// Queued copies and calls in flight, whichever root dispatched them. Its shared-queue
    /// name is one per VM, registered again by each new root context: Envoy then returns the
    /// same queue and hands its doorbell to the newest root. A name per root context would
    /// leave one registration behind per reload and worker.
    shadow: Rc<RefCell<ShadowState>>,
    /// Configurations no root context serves any more that streams, queued copies or calls
    /// still use: any root's tick flushes them until their last user is gone.
    retired: RefCell<Vec<Rc<Loaded>>>,
    /// Root contexts serving a configuration (configured, not being deleted).
    serving: Cell<usize>,
}

thread_local! {
    static VM: Rc<Vm> = {
        let mut rng = Rng::from_seed(crate::rng::sampling_seed(now_nanos));
        let mut shadow = ShadowState::new();
        // Each worker's VM gets its own queue name: with one shared name every doorbell would
        // wake a single worker, and copies must be dispatched by the worker that made them.
        shadow.queue_name = format!("traffic-split-shadow-{}", rng.hex_id());
        Rc::new(Vm {
            rng: Rc::new(RefCell::new(rng)),
            shadow: Rc::new(RefCell::new(shadow)),
            retired: RefCell::new(Vec::new()),
            serving: Cell::new(0),
        })
    };
}

/// Ticks a replaced root context waits past its calls' longest timeout before it lets Envoy
/// delete it anyway (whatever is still in flight then is counted `cancelled`).
const DRAIN_SLACK_TICKS: u32 = 10;

struct SplitRoot {
    id: u32,
    active: Option<Rc<Loaded>>,
    vm: Rc<Vm>,
    rng: Rc<RefCell<Rng>>,
    shadow: Rc<RefCell<ShadowState>>,
    /// Counted in `Vm::serving`.
    serving: bool,
    /// Envoy asked to delete this root (`on_done`) while its calls were in flight: ticks left
    /// before it gives up waiting and calls `proxy_done` anyway.
    draining: Option<u32>,
}

impl SplitRoot {
    fn new(id: u32) -> Self {
        let vm = VM.with(Rc::clone);
        SplitRoot {
            id,
            active: None,
            rng: Rc::clone(&vm.rng),
            shadow: Rc::clone(&vm.shadow),
            vm,
            serving: false,
            draining: None,
        }
    }

    fn stop_serving(&mut self) {
        if std::mem::take(&mut self.serving) {
            self.vm.serving.set(self.vm.serving.get().saturating_sub(1));
        }
    }

    /// Whether this root must still run: calls it dispatched are in flight, or copies are
    /// queued and no other root context is left to dispatch them.
    fn has_work(&self) -> bool {
        let mut shadow = self.shadow.borrow_mut();
        shadow.in_flight_of(self.id).0 > 0 || (self.vm.serving.get() == 0 && shadow.has_queued())
    }

    /// A tick while Envoy waits for this root to finish: ends the wait (`proxy_done`, then
    /// Envoy deletes the root) once the work is done or the bound has passed.
    fn drain_tick(&mut self, left: u32) {
        if self.vm.serving.get() == 0 {
            shadow::dispatch_queued(&self.shadow, self.id);
        }
        if left > 0 && self.has_work() {
            self.draining = Some(left - 1);
            return;
        }
        self.draining = None;
        log::info!(
            "traffic-split: replaced configuration done (root context {})",
            self.id
        );
        // Called once, only after `on_done` returned false: Envoy holds this root as pending.
        let _ = hostcalls::done();
    }
}

impl Drop for SplitRoot {
    /// `proxy_on_delete` of a root context (SDK 0.2.5 drops it there): the last moment its
    /// counts can reach Envoy. Envoy cancels the calls this root dispatched right after.
    fn drop(&mut self) {
        self.stop_serving();
        if let Ok(mut shadow) = self.shadow.try_borrow_mut() {
            shadow.cancel_calls_of(self.id);
        }
        if let Some(active) = self.active.take() {
            if let Ok(mut breakers) = active.breakers.try_borrow_mut() {
                breakers.publish_all(&active.plan);
            }
            active.flush();
            if Rc::strong_count(&active) > 1 {
                self.vm.retired.borrow_mut().push(active);
            }
        }
        log::info!("traffic-split: root context {} deleted", self.id);
    }
}

fn now_nanos() -> Option<u64> {
    now()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_nanos() as u64)
}

impl Context for SplitRoot {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        self.shadow
            .borrow_mut()
            .on_call_response(token_id, num_headers, body_size);
    }

    /// Envoy is about to delete this root context (its configuration was replaced and its last
    /// stream ended). Deleting it would cancel the shadow calls it dispatched: it asks Envoy to
    /// wait (false) until they are answered, at most their longest timeout plus a margin.
    fn on_done(&mut self) -> bool {
        self.stop_serving();
        if !self.has_work() {
            return true;
        }
        let (_, longest) = self.shadow.borrow_mut().in_flight_of(self.id);
        let ticks = longest.as_millis() / TICK.as_millis().max(1);
        self.draining = Some(
            u32::try_from(ticks)
                .unwrap_or(u32::MAX)
                .saturating_add(DRAIN_SLACK_TICKS),
        );
        log::info!(
            "traffic-split: root context {} waits for its shadow calls",
            self.id
        );
        false
    }
}

impl RootContext for SplitRoot {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        log::info!(
            "traffic-split {} ({}) starting",
            crate::VERSION,
            env!("TRAFFIC_SPLIT_GIT_HASH")
        );
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = plugin_configuration();
        let plan = match Plan::from_json(&bytes) {
            Ok(plan) => plan,
            Err(err) => {
                log::error!("traffic-split: invalid configuration: {err}");
                return false;
            }
        };
        if plan.rules.is_empty() {
            log::warn!(
                "traffic-split: no rules configured: every request is unmatched \
                 (client-sent routing headers are still removed)"
            );
        }
        log::info!(
            "traffic-split: configured {} rule(s), {} shadow target(s), routing header \"{}\"",
            plan.rules.len(),
            plan.shadow_targets.len(),
            plan.cluster_header
        );
        log_platform_checks(&plan);
        {
            let mut shadow = self.shadow.borrow_mut();
            shadow.configure(&plan);
            // The newest configuration's root takes the VM's shadow queue over (the first
            // copy registers it: see `ShadowState::enqueue`). Only once the configuration is
            // accepted: a rejected one's root is deleted and would take the doorbell along.
            if shadow.queue_id.is_some() {
                shadow.register_queue();
            }
        }
        // Breaker records are keyed by filter instance (plugin name, root id, listener
        // direction and metadata) as well as rule, destination and cluster (`record_key`).
        let scope = breaker::scope();
        if let Some(previous) = self.active.replace(Rc::new(Loaded::new(plan, &scope))) {
            self.vm.retired.borrow_mut().push(previous);
        }
        if !std::mem::replace(&mut self.serving, true) {
            self.vm.serving.set(self.vm.serving.get() + 1);
        }
        let _ = hostcalls::set_tick_period(TICK);
        true
    }

    fn on_tick(&mut self) {
        if let Some(left) = self.draining {
            self.drain_tick(left);
        } else if self.serving {
            // A fallback: copies are normally dispatched from on_queue_ready right away.
            shadow::dispatch_queued(&self.shadow, self.id);
        }
        self.shadow.borrow_mut().on_tick(now_ms());
        if let Some(active) = &self.active {
            active.breakers.borrow_mut().publish_all(&active.plan);
            active.flush();
        }
        let mut retired = self.vm.retired.borrow_mut();
        for r in retired.iter() {
            r.breakers.borrow_mut().publish_all(&r.plan);
            r.flush();
        }
        retired.retain(|r| Rc::strong_count(r) > 1);
    }

    fn on_queue_ready(&mut self, _queue_id: u32) {
        shadow::dispatch_queued(&self.shadow, self.id);
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let active = self.active.clone()?;
        Some(Box::new(SplitStream {
            active,
            rng: Rc::clone(&self.rng),
            shadow_state: Rc::clone(&self.shadow),
            response_additions: None,
            shadow: None,
            breaker_ticket: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// What to add to the response of a routed request.
struct ResponseAdditions {
    set_cookie: Option<String>,
    debug: Option<String>,
}

struct SplitStream {
    active: Rc<Loaded>,
    rng: Rc<RefCell<Rng>>,
    shadow_state: Rc<RefCell<ShadowState>>,
    response_additions: Option<ResponseAdditions>,
    shadow: Option<StreamShadow>,
    /// The breaker this response's outcome is counted for.
    breaker_ticket: Option<BreakerTicket>,
}

impl SplitStream {
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
        self.breaker_ticket = routed.ticket;
        let debug = plan
            .debug_header
            .then(|| format!("rule={}; variant={}", rule.name, dest.name));
        if routed.set_cookie.is_some() || debug.is_some() {
            self.response_additions = Some(ResponseAdditions {
                set_cookie: routed.set_cookie.clone(),
                debug,
            });
        }
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

    /// Classifies the response for the breaker of `ticket` and counts it.
    fn count_outcome(&mut self, ticket: BreakerTicket) {
        let plan = &self.active.plan;
        let Some(policy) = plan.breaker_policy(ticket.slot) else {
            return;
        };
        let Some(status) = status_of(MapType::HttpResponseHeaders) else {
            return;
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
        self.active
            .breakers
            .borrow_mut()
            .record_outcome(plan, ticket, failed);
    }
}

/// The plugin configuration's bytes (empty when there is none); readable within `on_configure`.
fn plugin_configuration() -> Vec<u8> {
    hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// The `:status` of a response header map (the stream's response, or a call's answer).
fn status_of(map: MapType) -> Option<u16> {
    let value = hostcalls::get_map_value_bytes(map, ":status")
        .ok()
        .flatten()?;
    std::str::from_utf8(&value).ok()?.parse().ok()
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
        let request = Request::new(&headers, route_name.as_deref());
        // Every request loses a shadow marker that does not verify; a verified one (a copy from
        // another instance) is kept, and the copy is never copied again.
        let marker = shadow::screen_marker(plan, plan.needs_request_headers.then_some(&request));
        let decision = plan.decide(
            &request,
            &mut self.rng.borrow_mut(),
            &active.breakers.borrow().views,
        );
        match decision {
            Decision::Routed(routed) => {
                self.route(&routed);
                if let Some(rule) = plan
                    .rules
                    .get(routed.rule)
                    .filter(|r| !r.shadows.is_empty() && marker == Marker::Absent)
                {
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
        if let Some(ticket) = self.breaker_ticket.take() {
            self.count_outcome(ticket);
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

fn set_request_header(name: &str, value: Option<&str>) {
    let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, value);
}

/// Whether Envoy re-picks the route by itself after this filter changes a request header.
/// It does for plugins that declare proxy-wasm ABI 0.2.1 or older (Envoy 1.33 changelog: the
/// route cache is no longer cleared on header changes only for ABIs newer than 0.2.1), and the
/// pinned SDK, proxy-wasm =0.2.5, declares 0.2.1. The explicit `clear_route_cache` call then
/// only repeats Envoy's work, at ~6 µs of Envoy CPU per request (BENCHMARKS.md, probe-clear):
/// the single most expensive host call the filter made. `crate::tests` fails if the SDK pin
/// changes, so an upgrade to a newer ABI cannot silently leave the route stale; the e2e tests
/// (a forged routing header never wins) prove the route follows the filter's header.
pub(crate) const HOST_CLEARS_ROUTE_CACHE_ITSELF: bool = true;

/// Makes Envoy re-pick the route after the routing header changed: explicitly with
/// `clear_route_cache: "always"`, or in `"auto"` only where the ABI needs it.
fn clear_route_cache(mode: RouteCacheMode) {
    if mode == RouteCacheMode::Always || !HOST_CLEARS_ROUTE_CACHE_ITSELF {
        let _ = hostcalls::call_foreign_function("clear_route_cache", None);
    }
}

/// Load-time checks of the platform, logged once per configuration: rules that would act on
/// every host of a shared gateway, and the route-cache mode. Whether Envoy clears the route
/// cache by itself cannot be observed without a request (no host call reports it; it follows
/// from the ABI the module declares), but whether it offers the explicit call can: from the
/// root context the call has no stream to act on, so it is a harmless probe.
fn log_platform_checks(plan: &Plan) {
    for warning in plan.unscoped_side_effects() {
        log::warn!("traffic-split: {warning}");
    }
    let offered = hostcalls::call_foreign_function("clear_route_cache", None).is_ok();
    let mode = match plan.clear_route_cache {
        RouteCacheMode::Auto => "auto",
        RouteCacheMode::Always => "always",
    };
    let by_itself = if HOST_CLEARS_ROUTE_CACHE_ITSELF {
        "yes (ABI 0.2.1)"
    } else {
        "no"
    };
    if offered {
        log::info!(
            "traffic-split: clear_route_cache={mode}; host clears on header changes: {by_itself}; \
             explicit clear_route_cache: available"
        );
    } else {
        log::warn!(
            "traffic-split: clear_route_cache={mode}; host clears on header changes: {by_itself}; \
             explicit clear_route_cache: NOT available in this host"
        );
    }
}
