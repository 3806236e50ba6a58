//! The root context: one per configuration and worker. Loads the configuration, ticks
//! (flushes counters, publishes breakers, dispatches shadow copies) and, once replaced, waits
//! for its shadow calls before Envoy deletes it.
//!
//! How a replaced configuration keeps its calls (proxy-wasm-cpp-host, as in Envoy 1.40): when
//! its last stream ends Envoy asks the root context `on_done`; `false` keeps it (Envoy's
//! `pending_done_`) until it calls `proxy_done`, and Envoy cancels its calls only when it
//! deletes it. Envoy keeps those waiting roots by plugin key (the configuration bytes, name,
//! root id): a second root with the same key that waits replaces the first, which is then
//! destroyed WITHOUT `proxy_on_delete` — its calls cancelled, nothing told to the module. That
//! happens as soon as a configuration comes back while its previous root still waits (A, B, A
//! within a shadow's latency). So:
//! - one root per worker dispatches every copy (`ShadowState::queue_owner`), and keeps doing
//!   so after its own configuration is replaced, while it waits for its calls: the others hold
//!   no call and are deleted at once (`on_done` true);
//! - a root that holds calls but whose key is already waiting does not wait (it would destroy
//!   the other silently): it is deleted at once, its calls counted `cancelled` (`Drop`);
//! - whatever was lost anyway is counted `cancelled` when it is overdue
//!   (`shadow::LOST_CALL_SLACK_MS`).

use super::shadow::ShadowState;
use super::stream::SplitStream;
use super::{
    breaker, now_ms, plugin_configuration, shadow, Loaded, Vm, HOST_CLEARS_ROUTE_CACHE_ITSELF,
    TICK, VM,
};
use crate::breaker::instance_scope;
use crate::config::RouteCacheMode;
use crate::plan::Plan;
use crate::rng::Rng;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use std::cell::RefCell;
use std::rc::Rc;

pub(super) struct SplitRoot {
    id: u32,
    active: Option<Rc<Loaded>>,
    vm: Rc<Vm>,
    rng: Rc<RefCell<Rng>>,
    shadow: Rc<RefCell<ShadowState>>,
    /// Counted in `Vm::serving`.
    serving: bool,
    /// Envoy asked to delete this root (`on_done`) while its calls were in flight: it waits
    /// (in `Vm::waiting`) until they are answered, or overdue and counted `cancelled`.
    draining: bool,
    /// What Envoy keeps waiting roots by, or a coarser key (see `plugin_key`).
    key: String,
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
            draining: false,
            key: String::new(),
        }
    }

    fn stop_serving(&mut self) {
        if std::mem::take(&mut self.serving) {
            self.vm.serving.set(self.vm.serving.get().saturating_sub(1));
        }
    }

    /// Whether this root must still run: calls it dispatched are in flight, or it dispatches
    /// and copies are queued.
    fn has_work(&self) -> bool {
        let mut shadow = self.shadow.borrow_mut();
        shadow.in_flight_of(self.id) > 0 || (shadow.dispatches(self.id) && shadow.has_queued())
    }

    /// Leaves `Vm::waiting`, and gives the dispatcher's role up if it had it.
    fn leave(&self) {
        self.vm
            .waiting
            .borrow_mut()
            .retain(|(_, id)| *id != self.id);
        if let Ok(mut shadow) = self.shadow.try_borrow_mut() {
            if shadow.dispatches(self.id) {
                shadow.queue_owner = None;
            }
        }
    }

    /// A tick while Envoy waits for this root to finish: it still dispatches (when it is the
    /// dispatcher) and ends the wait (`proxy_done`, then Envoy deletes the root) once its calls
    /// are over (answered, or overdue and counted `cancelled` by the tick).
    fn drain_tick(&mut self) {
        if self.shadow.borrow().dispatches(self.id) {
            shadow::dispatch_queued(&self.shadow, self.id);
        }
        if self.has_work() {
            return;
        }
        self.draining = false;
        self.leave();
        log::info!(
            "traffic-split: replaced configuration done (root context {})",
            self.id
        );
        // Called once, only after `on_done` returned false: Envoy holds this root as pending.
        let _ = hostcalls::done();
    }
}

/// A key at least as coarse as Envoy's plugin key (root id, configuration, and name,
/// direction and metadata of the listener): two roots Envoy would keep under one key always
/// get the same one here.
fn plugin_key(configuration: &[u8]) -> String {
    let property = |path: &str| {
        hostcalls::get_property(vec![path])
            .ok()
            .flatten()
            .unwrap_or_default()
    };
    instance_scope(&[
        &property("plugin_name"),
        &property("plugin_root_id"),
        configuration,
    ])
}

impl Drop for SplitRoot {
    /// `proxy_on_delete` of a root context (SDK 0.2.5 drops it there): the last moment its
    /// counts can reach Envoy. Envoy cancels the calls this root dispatched right after.
    fn drop(&mut self) {
        self.stop_serving();
        self.leave();
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
    /// wait (false) until they are answered (or overdue). Only the dispatcher holds calls.
    fn on_done(&mut self) -> bool {
        self.stop_serving();
        if !self.has_work() {
            self.leave();
            return true;
        }
        let same_key = self
            .vm
            .waiting
            .borrow()
            .iter()
            .any(|(key, id)| *key == self.key && *id != self.id);
        if same_key {
            // Waiting would make Envoy destroy the other root silently (see the module doc):
            // this one goes now, and its calls are counted cancelled (`Drop`).
            log::warn!(
                "traffic-split: root context {} cannot wait for its {} shadow call(s): the \
                 same configuration's previous root context still waits (counted cancelled)",
                self.id,
                self.shadow.borrow_mut().in_flight_of(self.id)
            );
            self.leave();
            return true;
        }
        self.draining = true;
        self.vm
            .waiting
            .borrow_mut()
            .push((self.key.clone(), self.id));
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
        self.key = plugin_key(&bytes);
        // The queue is taken by the first stream of a configuration with shadows when no root
        // dispatches (`create_http_context`): not here, where a rejected configuration's root
        // would take the doorbell along when Envoy deletes it.
        self.shadow.borrow_mut().configure(&plan);
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
        if self.draining {
            self.drain_tick();
        } else if self.serving {
            let dispatches = {
                let mut shadow = self.shadow.borrow_mut();
                if shadow.needs_dispatcher() {
                    // The dispatcher is gone and no stream took the role yet.
                    shadow.register_queue(self.id);
                }
                shadow.dispatches(self.id)
            };
            if dispatches {
                // A fallback: copies are normally dispatched from on_queue_ready right away.
                shadow::dispatch_queued(&self.shadow, self.id);
            }
        }
        let now = now_ms();
        self.shadow.borrow_mut().on_tick(breaker::clock_ms());
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
        drop(retired);
        // Last: resuming a held request may run its callbacks before the call returns.
        self.vm.holds.on_tick(self.id, now);
    }

    fn on_queue_ready(&mut self, _queue_id: u32) {
        shadow::dispatch_queued(&self.shadow, self.id);
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let active = self.active.clone()?;
        if !active.plan.shadow_targets.is_empty() {
            let mut shadow = self.shadow.borrow_mut();
            if shadow.queue_owner.is_none() {
                // No root dispatches (the first stream, or the dispatcher was deleted): this
                // one takes the queue. Registered from the stream's context, for its root.
                shadow.register_queue(self.id);
            }
        }
        Some(Box::new(SplitStream::new(
            active,
            Rc::clone(&self.rng),
            Rc::clone(&self.shadow),
            context_id,
            Rc::clone(&self.vm.holds),
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
