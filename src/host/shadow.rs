//! Host side of shadowing. Why it is shaped this way:
//!
//! - A call dispatched from an HTTP context is filed under that context by the SDK, and its
//!   answer is lost once the client's stream has ended. Shadows routinely answer after the
//!   primary, so every copy is dispatched by the worker's ROOT context instead, whose answers
//!   always arrive.
//! - The stream hands the finished copy to its root through an in-VM queue (same worker, same
//!   thread: no serialization) and rings a per-VM shared-queue "doorbell" only when the queue
//!   was empty, so Envoy schedules `on_queue_ready` on this worker right after the current
//!   event. The tick dispatches anything left as a fallback.
//! - The primary is never held back: bodies are copied chunk by chunk while they pass, and
//!   every callback returns `Continue`.

use super::{now, Active};
use crate::metrics::{ShadowEvent, SHADOW_DISPATCH_DELAY};
use crate::plan::{Rule, ShadowPolicy};
use crate::request::{HeaderPair, Request};
use crate::rng::Rng;
use crate::shadow::{Answer, Bulkhead, CompareBook, Digest, Finding};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

/// Per-VM (per-worker) shadow state, shared by the root context and the streams.
pub(super) struct ShadowState {
    pub bulkhead: Bulkhead,
    jobs: Vec<Job>,
    /// The doorbell was rung and `on_queue_ready` has not run yet.
    wake_pending: bool,
    /// Counts shadowed requests, to time one in `DELAY_SAMPLE` from complete to dispatched.
    shadowed_requests: u64,
    pub queue_id: Option<u32>,
    book: CompareBook,
    next_key: u64,
    /// Dispatched calls awaiting their answer, by token (at most `max_in_flight`: a vector is
    /// enough, and far smaller in Wasm than a hash map).
    calls: Vec<(u32, Call)>,
}

/// A complete copy, waiting for the root context to dispatch it.
struct Job {
    active: Rc<Active>,
    rule: usize,
    shadow: usize,
    headers: Vec<(String, String)>,
    body: Option<Rc<Vec<u8>>>,
    compare_key: Option<u64>,
    ready_at: Option<SystemTime>,
}

struct Call {
    active: Rc<Active>,
    rule: usize,
    shadow: usize,
    compare_key: Option<u64>,
    sent_at: Option<SystemTime>,
}

/// One shadowed request in this many gets its dispatch delay measured: each measurement costs two host
/// calls (clock, histogram), and the delay is a property of the worker, not of the request.
const DELAY_SAMPLE: u64 = 16;

impl ShadowState {
    /// Whether this shadowed request's dispatch delay is measured.
    fn sample_delay(&mut self) -> bool {
        self.shadowed_requests += 1;
        self.shadowed_requests % DELAY_SAMPLE == 1
    }

    pub fn new(max_in_flight: usize, max_buffered_bytes: usize) -> Self {
        ShadowState {
            bulkhead: Bulkhead::new(max_in_flight, max_buffered_bytes),
            jobs: Vec::new(),
            wake_pending: false,
            shadowed_requests: 0,
            queue_id: None,
            book: CompareBook::default(),
            next_key: 0,
            calls: Vec::new(),
        }
    }

    fn enqueue(&mut self, job: Job) {
        self.jobs.push(job);
        if !self.wake_pending {
            if let Some(queue) = self.queue_id {
                if hostcalls::enqueue_shared_queue(queue, Some(b"1")).is_ok() {
                    self.wake_pending = true;
                }
            }
        }
    }
}

/// Root context only (`on_queue_ready`, `on_tick`): dispatches every queued copy, so the
/// answers come back to the root context. No borrow of the state is held across the host
/// call: Envoy may answer a call that fails at once (no healthy host) before it returns.
pub(super) fn dispatch_queued(state: &RefCell<ShadowState>) {
    let rung = {
        let mut s = state.borrow_mut();
        let rung = s.wake_pending.then_some(s.queue_id).flatten();
        s.wake_pending = false;
        rung
    };
    if let Some(queue) = rung {
        // The doorbell is rung once per wake-up, so exactly one token waits; the jobs
        // themselves live in `jobs`.
        let _ = hostcalls::dequeue_shared_queue(queue);
    }
    if state.borrow().jobs.is_empty() {
        return; // most ticks: no clock read, nothing to do
    }
    let now = now();
    loop {
        let jobs = std::mem::take(&mut state.borrow_mut().jobs);
        if jobs.is_empty() {
            break;
        }
        for job in jobs {
            dispatch(state, job, now);
        }
    }
}

fn dispatch(state: &RefCell<ShadowState>, job: Job, now: Option<SystemTime>) {
    let Some(policy) = policy(&job.active, job.rule, job.shadow) else {
        state.borrow_mut().bulkhead.end_copy();
        return;
    };
    if let (Some(ready), Some(now), Some(id)) = (job.ready_at, now, job.active.dispatch_delay_id) {
        let delay = now.duration_since(ready).unwrap_or(Duration::ZERO);
        let _ = hostcalls::record_metric(id, delay.as_micros() as u64);
    }
    let headers: Vec<(&str, &str)> = job
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let body = job.body.as_deref().map(Vec::as_slice);
    let result =
        hostcalls::dispatch_http_call(&policy.cluster, headers, body, vec![], policy.timeout);
    let mut s = state.borrow_mut();
    if let Some(body) = &job.body {
        // The last copy of a body dispatched: Envoy holds its own copy now.
        if Rc::strong_count(body) == 1 {
            s.bulkhead.release_buffer(body.len());
        }
    }
    match result {
        Ok(token) => {
            job.active.count_shadow(policy.target, ShadowEvent::Sent);
            s.calls.push((
                token,
                Call {
                    active: Rc::clone(&job.active),
                    rule: job.rule,
                    shadow: job.shadow,
                    compare_key: job.compare_key,
                    sent_at: now,
                },
            ));
        }
        Err(_) => {
            job.active.count_shadow(policy.target, ShadowEvent::Failed);
            s.bulkhead.end_copy();
            if let Some(key) = job.compare_key {
                s.book.shadow_gone(key);
            }
        }
    }
}

impl ShadowState {
    /// Root context: the shadow answered (or failed) for `token`.
    pub fn on_call_response(&mut self, token: u32, body_size: usize) {
        let Some(index) = self.calls.iter().position(|(t, _)| *t == token) else {
            return;
        };
        let (_, call) = self.calls.swap_remove(index);
        self.bulkhead.end_copy();
        let Some(policy) = policy(&call.active, call.rule, call.shadow) else {
            return;
        };
        // One read of the (small) response header map answers both questions.
        let headers =
            hostcalls::get_map_bytes(MapType::HttpCallResponseHeaders).unwrap_or_default();
        let status = headers
            .iter()
            .find(|(n, _)| n == ":status")
            .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse::<u16>().ok());
        let Some(status) = status.filter(|_| !is_local_failure(&headers)) else {
            call.active.count_shadow(policy.target, ShadowEvent::Failed);
            if let Some(key) = call.compare_key {
                self.book.shadow_gone(key);
            }
            return;
        };
        call.active
            .count_shadow(policy.target, ShadowEvent::Responses);
        let latency_ms = elapsed_ms(call.sent_at);
        if let Some(Some(id)) = call.active.shadow_latency_ids.get(policy.target) {
            let _ = hostcalls::record_metric(*id, latency_ms);
        }
        let Some(key) = call.compare_key else {
            return;
        };
        let body_digest = (policy.compare_body && body_size <= policy.max_body_bytes).then(|| {
            let body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
                .ok()
                .flatten()
                .unwrap_or_default();
            let mut digest = Digest::default();
            digest.update(&body);
            digest.value()
        });
        let answer = Answer {
            status,
            latency_ms,
            body_digest,
        };
        if let Some(finding) = self.book.shadow_answered(key, policy.target, answer) {
            apply(&call.active, &[finding]);
        }
    }
}

/// Envoy answers a failed call (connection refused, reset, timeout, no healthy host) with a
/// local reply of its own. Those are failures of the shadow, not answers to compare. The
/// reliable marker is the absence of `x-envoy-upstream-service-time`, which Envoy's router adds
/// to every response that really came from the upstream.
fn is_local_failure(headers: &[(String, Vec<u8>)]) -> bool {
    !headers
        .iter()
        .any(|(n, _)| n == "x-envoy-upstream-service-time")
}

fn policy(active: &Active, rule: usize, shadow: usize) -> Option<&ShadowPolicy> {
    active.plan.rules.get(rule)?.shadows.get(shadow)
}

fn elapsed_ms(since: Option<SystemTime>) -> u64 {
    match (since, now()) {
        (Some(since), Some(now)) => now
            .duration_since(since)
            .unwrap_or(Duration::ZERO)
            .as_millis() as u64,
        _ => 0,
    }
}

fn apply(active: &Active, findings: &[Finding]) {
    for (target, verdict) in findings {
        if verdict.status_mismatch {
            active.count_shadow(*target, ShadowEvent::StatusMismatch);
        }
        if verdict.class_mismatch {
            active.count_shadow(*target, ShadowEvent::ClassMismatch);
        }
        if verdict.body_mismatch {
            active.count_shadow(*target, ShadowEvent::BodyMismatch);
        }
    }
}

/// A copy still collecting the request body.
struct Collecting {
    shadow: usize,
    headers: Vec<(String, String)>,
}

/// What one request's stream does for shadowing.
pub(super) struct StreamShadow {
    rule: usize,
    collecting: Vec<Collecting>,
    body: Vec<u8>,
    compare: Option<PrimaryWatch>,
}

/// The primary side of a comparison.
struct PrimaryWatch {
    key: u64,
    started: Option<SystemTime>,
    /// Shadow targets compared on this request (for the primary latency histogram).
    targets: Vec<usize>,
    /// Body digest while the primary body passes (only with `compare_body`).
    digest: Option<(Digest, usize, usize)>,
    status: Option<u16>,
    latency_ms: u64,
    done: bool,
}

impl StreamShadow {
    /// Request headers of a request `rule` decided: sample, check the bulkhead, make copies.
    /// Returns `None` when nothing is shadowed.
    pub fn start(
        active: &Rc<Active>,
        state: &mut ShadowState,
        rng: &mut Rng,
        rule_index: usize,
        rule: &Rule,
        headers: &[HeaderPair],
        end_of_stream: bool,
    ) -> Option<StreamShadow> {
        let method = Request::new(headers, None).method();
        let plan = &active.plan;
        let mut routing = vec![plan.cluster_header.as_str()];
        if let Some(v) = &plan.variant_header {
            routing.push(v.as_str());
        }
        let mut copies = Vec::new();
        for (index, policy) in rule.shadows.iter().enumerate() {
            if !policy.selects(method, rng.next_u64()) {
                continue;
            }
            if !state.bulkhead.try_start_copy() {
                active.count_shadow(policy.target, ShadowEvent::Dropped);
                continue;
            }
            let with_body = policy.include_body && !end_of_stream;
            copies.push((
                index,
                with_body,
                policy.copy_headers(headers, &routing, with_body),
            ));
        }
        if copies.is_empty() {
            return None;
        }
        let compared: Vec<usize> = copies
            .iter()
            .filter_map(|(i, _, _)| rule.shadows.get(*i).filter(|p| p.compare))
            .map(|p| p.target)
            .collect();
        // The clock is read only when something needs it: a comparison (the primary's latency)
        // or a sampled dispatch-delay measurement.
        let sampled = state.sample_delay();
        let started = if !compared.is_empty() || sampled {
            now()
        } else {
            None
        };
        let ready_at = started.filter(|_| sampled);
        let compare = (!compared.is_empty()).then(|| {
            state.next_key += 1;
            state.book.open(state.next_key, compared.len());
            let body_limit = rule
                .shadows
                .iter()
                .filter(|p| p.compare_body)
                .map(|p| p.max_body_bytes)
                .max();
            PrimaryWatch {
                key: state.next_key,
                started,
                targets: compared,
                digest: body_limit.map(|limit| (Digest::default(), 0, limit)),
                status: None,
                latency_ms: 0,
                done: false,
            }
        });
        let key = compare.as_ref().map(|c| c.key);
        let mut stream = StreamShadow {
            rule: rule_index,
            collecting: Vec::new(),
            body: Vec::new(),
            compare,
        };
        for (shadow, with_body, headers) in copies {
            if with_body {
                stream.collecting.push(Collecting { shadow, headers });
            } else {
                state.enqueue(Job {
                    active: Rc::clone(active),
                    rule: rule_index,
                    shadow,
                    headers,
                    body: None,
                    compare_key: key,
                    ready_at,
                });
            }
        }
        Some(stream)
    }

    /// A request body chunk passed (`chunk_size` bytes, already on its way upstream).
    pub fn on_request_body(
        &mut self,
        active: &Rc<Active>,
        state: &mut ShadowState,
        chunk_size: usize,
        end_of_stream: bool,
    ) {
        if self.collecting.is_empty() {
            return;
        }
        if chunk_size > 0 {
            let chunk = hostcalls::get_buffer(BufferType::HttpRequestBody, 0, chunk_size)
                .ok()
                .flatten()
                .unwrap_or_default();
            let new_len = self.body.len() + chunk.len();
            // Copies whose body limit is passed are dropped whole: never a truncated copy.
            let key = self.compare.as_ref().map(|c| c.key);
            let rule = self.rule;
            self.collecting.retain(|c| {
                let Some(policy) = policy(active, rule, c.shadow) else {
                    return false;
                };
                let keep = new_len <= policy.max_body_bytes;
                if !keep {
                    drop_copy(active, state, policy, key);
                }
                keep
            });
            if !self.collecting.is_empty() {
                if state.bulkhead.try_buffer(chunk.len()) {
                    self.body.extend_from_slice(&chunk);
                } else {
                    for c in std::mem::take(&mut self.collecting) {
                        if let Some(policy) = policy(active, rule, c.shadow) {
                            drop_copy(active, state, policy, key);
                        }
                    }
                }
            }
            if self.collecting.is_empty() {
                state.bulkhead.release_buffer(self.body.len());
                self.body = Vec::new();
            }
        }
        if end_of_stream {
            self.finish_request(active, state);
        }
    }

    /// The request is complete (end of body, or trailers): queue the copies that waited for it.
    pub fn finish_request(&mut self, active: &Rc<Active>, state: &mut ShadowState) {
        if self.collecting.is_empty() {
            return;
        }
        let body = Rc::new(std::mem::take(&mut self.body));
        let ready_at = if state.sample_delay() { now() } else { None };
        let key = self.compare.as_ref().map(|c| c.key);
        for c in std::mem::take(&mut self.collecting) {
            state.enqueue(Job {
                active: Rc::clone(active),
                rule: self.rule,
                shadow: c.shadow,
                headers: c.headers,
                body: Some(Rc::clone(&body)),
                compare_key: key,
                ready_at,
            });
        }
    }

    /// Whether the response phase has work (comparison).
    pub fn watches_response(&self) -> bool {
        self.compare.is_some()
    }

    pub fn watches_response_body(&self) -> bool {
        self.compare.as_ref().is_some_and(|c| c.digest.is_some())
    }

    pub fn on_response_headers(
        &mut self,
        active: &Rc<Active>,
        state: &mut ShadowState,
        end_of_stream: bool,
    ) {
        let Some(watch) = &mut self.compare else {
            return;
        };
        watch.status = hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, ":status")
            .ok()
            .flatten()
            .and_then(|s| std::str::from_utf8(&s).ok()?.parse::<u16>().ok());
        watch.latency_ms = elapsed_ms(watch.started);
        if watch.digest.is_none() || end_of_stream {
            self.finish_primary(active, state);
        }
    }

    pub fn on_response_body(
        &mut self,
        active: &Rc<Active>,
        state: &mut ShadowState,
        chunk_size: usize,
        end_of_stream: bool,
    ) {
        let Some(watch) = &mut self.compare else {
            return;
        };
        if let Some((digest, seen, limit)) = &mut watch.digest {
            *seen += chunk_size;
            if *seen <= *limit && chunk_size > 0 {
                let chunk = hostcalls::get_buffer(BufferType::HttpResponseBody, 0, chunk_size)
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                digest.update(&chunk);
            }
        }
        if end_of_stream {
            self.finish_primary(active, state);
        }
    }

    fn finish_primary(&mut self, active: &Rc<Active>, state: &mut ShadowState) {
        let Some(watch) = &mut self.compare else {
            return;
        };
        if watch.done {
            return;
        }
        watch.done = true;
        let answer = watch.status.map(|status| Answer {
            status,
            latency_ms: watch.latency_ms,
            body_digest: watch
                .digest
                .as_ref()
                .filter(|(_, seen, limit)| seen <= limit)
                .map(|(d, _, _)| d.value()),
        });
        if answer.is_some() {
            for target in &watch.targets {
                if let Some(Some(id)) = active.primary_latency_ids.get(*target) {
                    let _ = hostcalls::record_metric(*id, watch.latency_ms);
                }
            }
        }
        let findings = state.book.primary_done(watch.key, answer);
        apply(active, &findings);
    }

    /// The stream is over: whatever did not finish is released, never leaked.
    pub fn on_stream_end(&mut self, active: &Rc<Active>, state: &mut ShadowState) {
        // A request that never completed: its copies were never sent. Not counted as drops
        // (those are for oversized bodies and a full bulkhead), but their capacity returns.
        let key = self.compare.as_ref().map(|c| c.key);
        for _ in std::mem::take(&mut self.collecting) {
            state.bulkhead.end_copy();
            if let Some(key) = key {
                state.book.shadow_gone(key);
            }
        }
        state.bulkhead.release_buffer(self.body.len());
        self.body = Vec::new();
        if let Some(watch) = &mut self.compare {
            if !watch.done {
                watch.done = true;
                let findings = state.book.primary_done(watch.key, None);
                apply(active, &findings);
            }
        }
    }
}

fn drop_copy(active: &Active, state: &mut ShadowState, policy: &ShadowPolicy, key: Option<u64>) {
    active.count_shadow(policy.target, ShadowEvent::Dropped);
    state.bulkhead.end_copy();
    if let Some(key) = key {
        state.book.shadow_gone(key);
    }
}

/// Defines the dispatch-delay histogram (once per VM and configuration).
pub(super) fn define_dispatch_delay() -> Option<u32> {
    hostcalls::define_metric(
        proxy_wasm::types::MetricType::Histogram,
        SHADOW_DISPATCH_DELAY,
    )
    .ok()
}
