//! The root context: one per configuration and worker. Loads the configuration, ticks
//! (flushes counters, publishes breakers, dispatches shadow copies) and, once replaced, waits
//! for its shadow calls before Envoy deletes it.

use super::shadow::ShadowState;
use super::stream::SplitStream;
use super::{
    breaker, now_ms, plugin_configuration, shadow, Loaded, Vm, HOST_CLEARS_ROUTE_CACHE_ITSELF,
    TICK, VM,
};
use crate::config::RouteCacheMode;
use crate::plan::Plan;
use crate::rng::Rng;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use std::cell::RefCell;
use std::rc::Rc;

/// Ticks a replaced root context waits past its calls' longest timeout before it lets Envoy
/// delete it anyway (whatever is still in flight then is counted `cancelled`).
const DRAIN_SLACK_TICKS: u32 = 10;

pub(super) struct SplitRoot {
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
    pub(super) fn new(id: u32) -> Self {
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
        let loaded = Rc::new(Loaded::new(plan, &scope));
        // The share in force before the first request, not only from the first tick.
        loaded
            .rollouts
            .borrow_mut()
            .tick(&loaded.plan, now_ms(), &loaded.breakers.borrow().views);
        if let Some(previous) = self.active.replace(loaded) {
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
        let now = now_ms();
        self.shadow.borrow_mut().on_tick(now);
        if let Some(active) = &self.active {
            active.breakers.borrow_mut().publish_all(&active.plan);
            if !active.plan.judges.is_empty() {
                active.judges.borrow_mut().tick(
                    &active.plan,
                    now,
                    &active.rollouts.borrow().bounds,
                );
            }
            if !active.plan.rollouts.is_empty() {
                active.rollouts.borrow_mut().tick_judged(
                    &active.plan,
                    now,
                    &active.breakers.borrow().views,
                    &active.judges.borrow().views,
                );
            }
            active.flush();
        }
        let mut retired = self.vm.retired.borrow_mut();
        for r in retired.iter() {
            r.breakers.borrow_mut().publish_all(&r.plan);
            if !r.plan.judges.is_empty() {
                r.judges
                    .borrow_mut()
                    .tick(&r.plan, now, &r.rollouts.borrow().bounds);
            }
            r.flush();
        }
        retired.retain(|r| Rc::strong_count(r) > 1);
    }

    fn on_queue_ready(&mut self, _queue_id: u32) {
        shadow::dispatch_queued(&self.shadow, self.id);
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let active = self.active.clone()?;
        Some(Box::new(SplitStream::new(
            active,
            Rc::clone(&self.rng),
            Rc::clone(&self.shadow),
        )))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Load-time checks of the platform, logged once per configuration: rules that would act on
/// every host of a shared gateway, and the route-cache mode. Whether Envoy clears the route
/// cache by itself cannot be observed without a request (no host call reports it; it follows
/// from the ABI the module declares), but whether it offers the explicit call can: from the
/// root context the call has no stream to act on, so it is a harmless probe.
fn log_platform_checks(plan: &Plan) {
    for warning in plan.load_warnings() {
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
