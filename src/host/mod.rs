//! The thin host layer: the only code that calls into Envoy (proxy_wasm). It reads what the
//! compiled plan needs, asks the core for a decision, and writes the decision back. `root`: the
//! root context (configuration, tick); `stream`: the HTTP context; `breaker` and `shadow`: their
//! host halves. This file: what every context shares (the loaded configuration, the VM state).
//!
//! Host calls per routed request: one header-map read (only when a rule looks at the request;
//! client-sent `x-envoy-fault-*` headers are found there and removed, a call each, only when
//! present; without the map, the seven the fault filter reads are removed by name),
//! the routing-header write, the variant-header write (unless disabled), and response-header
//! writes only when a cookie is assigned or `debug_header` is on (`clear_route_cache` only where
//! the ABI needs it, see `HOST_CLEARS_ROUTE_CACHE_ITSELF`, or with `"always"`). Metrics
//! are counted in the VM and flushed on a tick: no per-request metric call. Shadowing adds its
//! own calls only on the requests it copies (see `shadow`). A client-sent `x-shadow-request`
//! is removed from every request: found in the header map when it was read (a removal only when
//! present), else one removal call per request (a read, with `shadow_marker_secret`; when a
//! marker is there, four more reads for the headers it is bound to). A
//! request in a rule's fault slice adds the fault filter's headers (two per fault kind) and one
//! `response.flags` read on its response.

mod body;
mod breaker;
mod judge;
mod rollout;
mod root;
mod shadow;
mod stream;

use root::SplitRoot;

use crate::matcher::Condition;
use crate::metrics::{
    shadow_metric, DecisionCounters, ShadowCounters, ShadowEvent, REGEX_VALUE_TOO_LONG,
    SHADOW_LATENCY, SHADOW_PRIMARY_LATENCY,
};
use crate::plan::Plan;
use crate::rng::Rng;
use breaker::Breakers;
use judge::Judges;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::RootContext;
use proxy_wasm::types::{BufferType, LogLevel, MapType, MetricType};
use rollout::Rollouts;
use shadow::ShadowState;
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
    /// `metrics::REGEX_VALUE_TOO_LONG`, when the plan has a `regex`.
    regex_skipped_id: Option<u32>,
    breakers: RefCell<Breakers>,
    /// The bounds in force of each rollout, recomputed on the tick.
    rollouts: RefCell<Rollouts>,
    /// Each rule's judge: pending counts, published on the tick.
    judges: RefCell<Judges>,
}

/// The host's id of each metric in `names` (`None` where defining it failed).
fn define_metrics(kind: MetricType, names: &[String]) -> Vec<Option<u32>> {
    let mut ids = Vec::with_capacity(names.len());
    for name in names {
        ids.push(hostcalls::define_metric(kind, name).ok());
    }
    ids
}

impl Loaded {
    fn new(plan: Plan, scope: &str) -> Loaded {
        let define = define_metrics;
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
            regex_skipped_id: plan
                .rules
                .iter()
                .any(|r| r.matcher.conditions.iter().any(Condition::has_regex))
                .then(|| hostcalls::define_metric(MetricType::Counter, REGEX_VALUE_TOO_LONG).ok())
                .flatten(),
            dispatch_delay_id: if plan.shadow_targets.is_empty() {
                None
            } else {
                shadow::define_dispatch_delay()
            },
            breakers: RefCell::new(Breakers::new(&plan, scope)),
            rollouts: RefCell::new(Rollouts::new(&plan, scope)),
            judges: RefCell::new(Judges::new(&plan, scope, &judge_configuration(&plan))),
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
    /// Requests held for their body, and whether Envoy delivers their body (`body`).
    holds: Rc<body::BodyHolds>,
    /// Root contexts Envoy keeps after `on_done` (waiting for their calls), with their plugin
    /// key (see `SplitRoot::on_done`).
    waiting: RefCell<Vec<(String, u32)>>,
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
            holds: Rc::new(body::BodyHolds::new()),
            waiting: RefCell::new(Vec::new()),
        })
    };
}

fn now_nanos() -> Option<u64> {
    now()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_nanos() as u64)
}

/// Whether Envoy re-picks the route by itself after this filter changes a request header.
/// It does for plugins that declare proxy-wasm ABI 0.2.1 or older (Envoy 1.33 changelog: the
/// route cache is no longer cleared on header changes only for ABIs newer than 0.2.1), and the
/// pinned SDK, proxy-wasm =0.2.5, declares 0.2.1. The explicit `clear_route_cache` call then
/// only repeats Envoy's work, and it was the single most expensive host call the filter made
/// (BENCHMARKS.md, "Which host calls cost what", probe-clear). `crate::tests` fails if the SDK pin
/// changes, so an upgrade to a newer ABI cannot silently leave the route stale; the e2e tests
/// (a forged routing header never wins) prove the route follows the filter's header.
pub(crate) const HOST_CLEARS_ROUTE_CACHE_ITSELF: bool = true;

/// The plugin configuration's bytes (empty when there is none); readable within `on_configure`.
fn plugin_configuration() -> Vec<u8> {
    hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// The configuration bytes when the plan has a judge (its record is scoped to them).
fn judge_configuration(plan: &Plan) -> Vec<u8> {
    if plan.judges.is_empty() {
        Vec::new()
    } else {
        plugin_configuration()
    }
}

/// The `:status` of a response header map (the stream's response, or a call's answer).
fn status_of(map: MapType) -> Option<u16> {
    let value = hostcalls::get_map_value_bytes(map, ":status")
        .ok()
        .flatten()?;
    std::str::from_utf8(&value).ok()?.parse().ok()
}
