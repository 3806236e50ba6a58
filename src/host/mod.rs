//! The thin host layer: the only code that calls into Envoy (proxy_wasm). It reads what the
//! compiled plan needs, asks the core for a decision, and writes the decision back.
//!
//! Host calls per routed request: one header-map read (only when a rule looks at the request),
//! the routing-header write, the variant-header write (unless disabled), `clear_route_cache`,
//! and response-header writes only when a cookie is assigned or `debug_header` is on. Metrics
//! are counted in the VM and flushed on a tick: no per-request metric call.

use crate::decision::{Decision, Routed};
use crate::metrics::DecisionCounters;
use crate::plan::Plan;
use crate::request::Request;
use crate::rng::Rng;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

/// How often per-VM counters are flushed to Envoy's stats.
const FLUSH_PERIOD: Duration = Duration::from_millis(500);

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(SplitRoot::new()) });
}}

/// A compiled configuration in force, with its metric ids and the counts not yet flushed.
struct Active {
    plan: Plan,
    metric_ids: Vec<Option<u32>>,
    counters: RefCell<DecisionCounters>,
}

impl Active {
    fn flush(&self) {
        self.counters.borrow_mut().flush(|slot, delta| {
            if let Some(Some(id)) = self.metric_ids.get(slot) {
                let _ = hostcalls::increment_metric(*id, delta as i64);
            }
        });
    }
}

struct SplitRoot {
    active: Option<Rc<Active>>,
    /// Configurations replaced while streams still used them: flushed until the last one ends.
    retired: Vec<Rc<Active>>,
    rng: Rc<RefCell<Rng>>,
}

impl SplitRoot {
    fn new() -> Self {
        SplitRoot {
            active: None,
            retired: Vec::new(),
            rng: Rc::new(RefCell::new(Rng::from_seed(entropy_seed()))),
        }
    }
}

/// A per-VM seed: WASI randomness, or the clock if that is unavailable.
fn entropy_seed() -> u64 {
    let mut buf = [0u8; 8];
    match getrandom::fill(&mut buf) {
        Ok(()) => u64::from_le_bytes(buf),
        Err(_) => hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0x5eed, |d| d.as_nanos() as u64),
    }
}

impl Context for SplitRoot {}

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
        let bytes = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default();
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
        let metric_ids = DecisionCounters::names(&plan)
            .iter()
            .map(|name| hostcalls::define_metric(MetricType::Counter, name).ok())
            .collect();
        let counters = RefCell::new(DecisionCounters::for_plan(&plan));
        log::info!(
            "traffic-split: configured {} rule(s), routing header \"{}\"",
            plan.rules.len(),
            plan.cluster_header
        );
        if let Some(previous) = self.active.replace(Rc::new(Active {
            plan,
            metric_ids,
            counters,
        })) {
            self.retired.push(previous);
        }
        let _ = hostcalls::set_tick_period(FLUSH_PERIOD);
        true
    }

    fn on_tick(&mut self) {
        if let Some(active) = &self.active {
            active.flush();
        }
        for retired in &self.retired {
            retired.flush();
        }
        self.retired.retain(|r| Rc::strong_count(r) > 1);
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let active = self.active.clone()?;
        Some(Box::new(SplitStream {
            active,
            rng: Rc::clone(&self.rng),
            respond: None,
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
    active: Rc<Active>,
    rng: Rc<RefCell<Rng>>,
    respond: Option<ResponseAdditions>,
}

impl SplitStream {
    fn route(&mut self, routed: Routed) {
        let plan = &self.active.plan;
        let (Some(rule), destination) = (plan.rules.get(routed.rule), routed.destination) else {
            return;
        };
        let Some(dest) = rule.destinations.get(destination) else {
            return;
        };
        set_request_header(&plan.cluster_header, Some(&dest.cluster));
        if let Some(variant_header) = &plan.variant_header {
            set_request_header(variant_header, Some(&dest.name));
        }
        clear_route_cache();
        self.active
            .counters
            .borrow_mut()
            .count_routed(routed.rule, destination);
        let debug = plan
            .debug_header
            .then(|| format!("rule={}; variant={}", rule.name, dest.name));
        if routed.set_cookie.is_some() || debug.is_some() {
            self.respond = Some(ResponseAdditions {
                set_cookie: routed.set_cookie,
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
            clear_route_cache();
        }
        self.active.counters.borrow_mut().count_unmatched();
    }
}

impl Context for SplitStream {}

impl HttpContext for SplitStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
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
        let decision = plan.decide(&request, &mut self.rng.borrow_mut());
        match decision {
            Decision::Routed(routed) => self.route(routed),
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

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(additions) = self.respond.take() {
            if let Some(cookie) = &additions.set_cookie {
                let _ =
                    hostcalls::add_map_value(MapType::HttpResponseHeaders, "set-cookie", cookie);
            }
            if let Some(debug) = &additions.debug {
                let _ = hostcalls::set_map_value(
                    MapType::HttpResponseHeaders,
                    "x-split-decision",
                    Some(debug),
                );
            }
        }
        Action::Continue
    }
}

fn set_request_header(name: &str, value: Option<&str>) {
    let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, value);
}

/// Makes Envoy re-pick the route after the routing header changed, whatever the ABI version
/// (newer ABIs stop refreshing the route automatically).
fn clear_route_cache() {
    let _ = hostcalls::call_foreign_function("clear_route_cache", None);
}
