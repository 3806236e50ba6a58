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
//! - Everything a copy holds lives in the root's state, never in the stream: the tick can then
//!   abandon a copy whose body is still arriving after `timeout_ms` and free its bytes at once,
//!   whatever the stream does next. The tick also refreshes a coarse clock the streams read, so
//!   deadlines cost no host call per request. That clock is the monotonic one the breakers use
//!   (`breaker::clock_ms`): a wall-clock step neither holds slots and bytes longer (back) nor
//!   drops every copy still collecting its body (forward). The wall clock is read only to sign
//!   the marker.
//! - One root context per worker dispatches: the queue's owner (`ShadowState::queue_owner`),
//!   and it stays the dispatcher once its configuration is replaced, as long as it has calls in
//!   flight (Envoy keeps it while `on_done` says it is not done). Every other root context then
//!   holds no call and Envoy can delete it at once. Envoy keeps one waiting root context per
//!   plugin key: were two with the same configuration (an operator flipping a setting back and
//!   forth) both waiting, the first would be deleted without notice and its calls cancelled,
//!   uncounted (see `root.rs`, `SplitRoot::on_done`).

use super::{now, now_ms, status_of, Loaded};
use crate::metrics::{ShadowEvent, SHADOW_DISPATCH_DELAY};
use crate::plan::Plan;
use crate::request::Request;
use crate::shadow::{
    check_marker, marker_value, Answer, Bulkhead, CompareBook, Digest, Finding, Keyed,
    MarkedRequest, Marker, ShadowPolicy, BOUND_HEADERS, SHADOW_MARKER,
};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::SystemTime;

use super::breaker::{clock_ms as monotonic_ms, clock_us as monotonic_us};

mod stream;
pub(super) use stream::StreamShadow;

/// A comparison waits this long beyond its slowest shadow's `timeout_ms` for the primary to
/// finish; past it, nothing is compared for that request (a long download or SSE stream).
pub(super) const COMPARE_GRACE_MS: u64 = 60_000;

/// Envoy answers every call within its timeout (an answer, or a failure when it times out).
/// A call still unanswered this long past its timeout never will be: its root context was
/// deleted and Envoy cancelled it without a callback. It is counted `cancelled` and its slot
/// and bytes return.
pub(super) const LOST_CALL_SLACK_MS: u64 = 5_000;

/// A copy queued this long without being dispatched: the dispatcher is taken to be gone (see
/// `ShadowState::needs_dispatcher`). The doorbell normally has it sent within the event.
const STALLED_MS: u64 = 1_000;

/// Per-VM (per-worker) shadow state, shared by the root context and the streams.
pub(super) struct ShadowState {
    pub bulkhead: Bulkhead,
    jobs: Vec<Job>,
    /// The doorbell was rung and `on_queue_ready` has not run yet.
    wake_pending: bool,
    /// Counts shadowed requests, to time one in `DELAY_SAMPLE` from complete to dispatched.
    shadowed_requests: u64,
    /// Copies dropped because their stream ended before its request body did (for the log).
    unfinished_drops: u64,
    pub queue_id: Option<u32>,
    /// This VM's shared-queue name (see `host::Vm`), registered at the first stream of a
    /// configuration with shadows.
    pub queue_name: String,
    /// The root context the queue's doorbell wakes, which dispatches every copy: `None` until
    /// a root context takes the queue, and again once its owner is deleted.
    pub queue_owner: Option<u32>,
    /// When the oldest queued copy was queued (the coarse clock).
    queued_since_ms: u64,
    book: CompareBook,
    /// Keys of shadowed streams (collections and comparisons), increasing.
    next_key: u64,
    /// Copies still collecting their request body, by stream key.
    collecting: Keyed<Collection>,
    /// Dispatched calls awaiting their answer, by token.
    calls: Keyed<Call>,
    /// Monotonic milliseconds, refreshed by the tick and each dispatch round (0: never).
    clock_ms: u64,
}

/// What identifies one copy, and the bytes it holds in the bulkhead, from the moment it is
/// queued until its call completes.
struct ShadowCopy {
    /// The configuration that made it (kept loaded until the copy is done).
    config: Rc<Loaded>,
    rule: usize,
    /// Index into the rule's `shadows`.
    shadow: usize,
    held: u64,
    compare_key: Option<u64>,
}

impl ShadowCopy {
    fn policy(&self) -> Option<&ShadowPolicy> {
        self.config.plan.shadow_policy(self.rule, self.shadow)
    }
}

/// One stream's copies that wait for the request body, and the body so far.
struct Collection {
    origin: Origin,
    body: Vec<u8>,
    copies: Vec<Collecting>,
}

/// What a stream's copies share.
struct Origin {
    config: Rc<Loaded>,
    rule: usize,
    compare_key: Option<u64>,
}

impl Origin {
    fn copy(&self, collecting: &Collecting) -> ShadowCopy {
        ShadowCopy {
            config: Rc::clone(&self.config),
            rule: self.rule,
            shadow: collecting.shadow,
            held: collecting.held,
            compare_key: self.compare_key,
        }
    }
}

/// A copy still collecting the request body.
struct Collecting {
    shadow: usize,
    headers: Vec<(String, String)>,
    /// Bytes this copy holds in the bulkhead: its headers and the body so far.
    held: u64,
    /// Past it the copy is abandoned (`dropped`): a slow upload must not hold a slot forever.
    deadline_ms: u64,
}

/// A complete copy, waiting for the root context to dispatch it.
struct Job {
    copy: ShadowCopy,
    headers: Vec<(String, String)>,
    body: Option<Rc<Vec<u8>>>,
    /// When the copy was complete (monotonic µs), for one in `DELAY_SAMPLE`.
    ready_at: Option<u64>,
}

/// A dispatched copy awaiting its answer. Envoy keeps its copy of the request until the call
/// completes: its bytes are still counted.
struct Call {
    /// The root context that dispatched it: Envoy cancels the call when that root is deleted.
    root: u32,
    copy: ShadowCopy,
    /// Monotonic ms.
    sent_at: Option<u64>,
    /// Past it (monotonic ms), plus `LOST_CALL_SLACK_MS`, the call is lost.
    deadline_ms: u64,
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

    pub fn new() -> Self {
        ShadowState {
            bulkhead: Bulkhead::new(0, 0),
            jobs: Vec::new(),
            wake_pending: false,
            shadowed_requests: 0,
            unfinished_drops: 0,
            queue_id: None,
            queue_name: String::new(),
            queue_owner: None,
            queued_since_ms: 0,
            book: CompareBook::new(0),
            next_key: 0,
            collecting: Keyed::default(),
            calls: Keyed::default(),
            clock_ms: 0,
        }
    }

    /// A new configuration's bounds.
    pub fn configure(&mut self, plan: &Plan) {
        self.bulkhead.max_in_flight = plan.max_in_flight;
        self.bulkhead.max_held_bytes = plan.max_buffered_body_bytes;
        // Every record waits for at least one copy when it opens; the same bound keeps records
        // of long primaries from piling up.
        self.book.capacity = plan.max_in_flight;
    }

    /// The coarse clock (monotonic ms): read from the host only before the first tick.
    fn clock(&mut self) -> u64 {
        if self.clock_ms == 0 {
            self.clock_ms = monotonic_ms().unwrap_or(0);
        }
        self.clock_ms
    }

    /// Registers this VM's queue (again), making `root` (the current context's root) its
    /// owner and the dispatcher: Envoy returns the same queue for the same name, and calls
    /// that root's `on_queue_ready`. A doorbell rung for a previous owner that is gone was
    /// never answered: its tokens are cleared, so the next copy rings again.
    pub fn register_queue(&mut self, root: u32) {
        self.queue_id = hostcalls::register_shared_queue(&self.queue_name).ok();
        self.queue_owner = self.queue_id.map(|_| root);
        if std::mem::take(&mut self.wake_pending) {
            if let Some(queue) = self.queue_id {
                // Bounded: at most one token per doorbell, and one doorbell at a time.
                for _ in 0..8 {
                    if !matches!(hostcalls::dequeue_shared_queue(queue), Ok(Some(_))) {
                        break;
                    }
                }
            }
        }
        log::info!(
            "traffic-split: shadow queue {:?} (root context {root})",
            self.queue_id
        );
    }

    /// Whether `root` dispatches the copies.
    pub fn dispatches(&self, root: u32) -> bool {
        self.queue_owner == Some(root)
    }

    /// Copies wait and no root context dispatches them, or the dispatcher has not for
    /// `STALLED_MS` (it is gone without Envoy telling): a serving root context takes over.
    pub fn needs_dispatcher(&self) -> bool {
        !self.jobs.is_empty()
            && (self.queue_owner.is_none()
                || self.clock_ms.saturating_sub(self.queued_since_ms) >= STALLED_MS)
    }

    /// Copies complete but not dispatched yet.
    pub fn has_queued(&self) -> bool {
        !self.jobs.is_empty()
    }

    /// How many calls `root` dispatched are still awaiting their answer.
    pub fn in_flight_of(&mut self, root: u32) -> usize {
        self.calls.values_mut().filter(|c| c.root == root).count()
    }

    /// Calls unanswered `LOST_CALL_SLACK_MS` past their timeout (see there): counted
    /// `cancelled`, their slots and bytes returned.
    fn expire_lost_calls(&mut self, now: u64) {
        let lost = self
            .calls
            .take_if(|c| c.deadline_ms.saturating_add(LOST_CALL_SLACK_MS) <= now);
        if lost.is_empty() {
            return;
        }
        log::warn!(
            "traffic-split: {} shadow call(s) unanswered {} ms past their timeout: counted \
             cancelled (their root context was deleted while they were in flight)",
            lost.len(),
            LOST_CALL_SLACK_MS
        );
        for (_, call) in lost {
            if let Some(policy) = call.copy.policy() {
                call.copy
                    .config
                    .count_shadow(policy.target, ShadowEvent::Cancelled);
            }
            self.end(&call.copy);
        }
    }

    /// `root` is being deleted: Envoy cancels the calls it dispatched and their callbacks never
    /// run. Each is counted `cancelled` (so `sent == responses + failed + cancelled` holds) and
    /// its slot and bytes return.
    pub fn cancel_calls_of(&mut self, root: u32) {
        for (_, call) in self.calls.take_if(|c| c.root == root) {
            if let Some(policy) = call.copy.policy() {
                call.copy
                    .config
                    .count_shadow(policy.target, ShadowEvent::Cancelled);
            }
            self.end(&call.copy);
        }
    }

    fn enqueue(&mut self, job: Job) {
        // The queue was registered when the stream began (`SplitRoot::create_http_context`);
        // without it the dispatcher's tick sends the copy.
        if self.jobs.is_empty() {
            self.queued_since_ms = self.clock_ms;
        }
        self.jobs.push(job);
        if !self.wake_pending {
            if let Some(queue) = self.queue_id {
                if hostcalls::enqueue_shared_queue(queue, Some(b"1")).is_ok() {
                    self.wake_pending = true;
                }
            }
        }
    }

    /// A copy is over without an answer to compare: its slot and bytes return, and its
    /// comparison is off.
    fn end(&mut self, copy: &ShadowCopy) {
        self.bulkhead.end_copy(copy.held);
        if let Some(key) = copy.compare_key {
            self.book.shadow_gone(key);
        }
    }

    /// A copy that will never be sent (counted `dropped`).
    fn drop_copy(&mut self, copy: &ShadowCopy) {
        if let Some(policy) = copy.policy() {
            copy.config
                .count_shadow(policy.target, ShadowEvent::Dropped);
        }
        self.end(copy);
    }

    /// A copy whose stream ended before the request body was complete (`seen` bytes of it
    /// arrived): never sent, counted `dropped`. Logged at info on this worker's 1st, 2nd, 4th,
    /// 8th, ... such copy: an upstream that always answers before reading the body must not
    /// flood the log.
    fn drop_unfinished(&mut self, copy: &ShadowCopy, seen: usize) {
        self.drop_copy(copy);
        self.unfinished_drops += 1;
        if self.unfinished_drops.is_power_of_two() {
            log::info!(
                "traffic-split: shadow copy to cluster {} dropped: the request's stream ended \
                 before its body was complete ({} bytes seen); {} such copies on this worker",
                copy.policy().map_or("", |p| p.cluster.as_str()),
                seen,
                self.unfinished_drops
            );
        }
    }

    /// Root context, every tick: abandons copies whose body is still arriving past their
    /// deadline (counted `dropped`), and forgets comparisons past theirs.
    pub fn on_tick(&mut self, now_ms: Option<u64>) {
        if let Some(now) = now_ms {
            self.clock_ms = now;
        }
        let now = self.clock_ms;
        if !self.calls.is_empty() && now > 0 {
            self.expire_lost_calls(now);
        }
        if !self.collecting.is_empty() {
            let mut expired = Vec::new();
            for c in self.collecting.values_mut() {
                c.copies.retain(|copy| {
                    let keep = copy.deadline_ms > now;
                    if !keep {
                        expired.push(c.origin.copy(copy));
                    }
                    keep
                });
            }
            // Collections with no copy left free their body now.
            drop(self.collecting.take_if(|c| c.copies.is_empty()));
            for copy in expired {
                self.drop_copy(&copy);
            }
        }
        if !self.book.is_empty() {
            self.book.expire(now);
        }
    }
}

/// Removes a shadow marker that does not verify from the request, before it goes upstream
/// (a client must never make a real request look like a copy, nor resend a copy's marker on
/// another request), and says what it found. `headers`: the request's header map when the
/// filter read it, else `None` (then the marker costs one host call per request: a removal, or
/// a read when a secret is configured, and four more reads when a marker is there: the headers
/// it is bound to).
pub(super) fn screen_marker(plan: &Plan, headers: Option<&Request>) -> Marker {
    let Some(key) = &plan.marker_key else {
        match headers {
            Some(request) if request.header(SHADOW_MARKER).is_none() => return Marker::Absent,
            Some(_) => {}
            // Nothing can verify: remove whatever is there.
            None => {
                let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, SHADOW_MARKER, None);
                return Marker::Absent;
            }
        }
        let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, SHADOW_MARKER, None);
        return Marker::Untrusted;
    };
    let marker = match headers {
        Some(request) => {
            let bound = MarkedRequest::from_lookup(|name| request.header(name));
            verify(request.header(SHADOW_MARKER), &bound, key)
        }
        None => {
            let read = |name: &str| {
                hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name)
                    .ok()
                    .flatten()
            };
            match read(SHADOW_MARKER) {
                None => Marker::Absent,
                Some(value) => {
                    let [a, m, p, r] = BOUND_HEADERS.map(read);
                    let bound = MarkedRequest {
                        authority: a.as_deref(),
                        method: m.as_deref(),
                        path: p.as_deref(),
                        request_id: r.as_deref(),
                    };
                    verify(Some(&value), &bound, key)
                }
            }
        }
    };
    if marker == Marker::Untrusted {
        let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, SHADOW_MARKER, None);
    }
    marker
}

/// The marker check with the host's clock (read only when a marker is there).
fn verify(
    value: Option<&[u8]>,
    bound: &MarkedRequest<'_>,
    key: &crate::shadow::MarkerKey,
) -> Marker {
    let now_s = value.and_then(|_| now_ms()).map(|ms| ms / 1000);
    check_marker(value, bound, Some(key), now_s)
}

/// Root context only (`on_queue_ready`, `on_tick`): dispatches every queued copy, so the
/// answers come back to the root context. No borrow of the state is held across the host
/// call: Envoy may answer a call that fails at once (no healthy host) before it returns.
pub(super) fn dispatch_queued(state: &RefCell<ShadowState>, root: u32) {
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
    let mono_us = monotonic_us();
    if let Some(us) = mono_us {
        state.borrow_mut().clock_ms = us / 1000;
    }
    // The wall clock only signs the marker.
    let now = now();
    loop {
        let jobs = std::mem::take(&mut state.borrow_mut().jobs);
        if jobs.is_empty() {
            break;
        }
        for job in jobs {
            dispatch(state, job, now, mono_us, root);
        }
    }
}

fn dispatch(
    state: &RefCell<ShadowState>,
    job: Job,
    now: Option<SystemTime>,
    mono_us: Option<u64>,
    root: u32,
) {
    let Job {
        copy,
        headers,
        body,
        ready_at,
    } = job;
    let Some(policy) = copy.policy() else {
        state.borrow_mut().bulkhead.end_copy(copy.held);
        return;
    };
    if let (Some(ready), Some(now_us), Some(id)) =
        (ready_at, mono_us, copy.config.dispatch_delay_id)
    {
        let _ = hostcalls::record_metric(id, now_us.saturating_sub(ready));
    }
    // Signed at dispatch, so the next instance sees a fresh timestamp.
    let now_s = now
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs());
    // Bound to the copy as sent: its `:authority` (with `host_suffix`), method, path and
    // request id (`crate::shadow::MarkedRequest`).
    let marker = marker_value(
        copy.config.plan.marker_key.as_ref(),
        &MarkedRequest::of_copy(&headers),
        now_s,
    );
    let header_refs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .chain(std::iter::once((SHADOW_MARKER, marker.as_str())))
        .collect();
    let result = hostcalls::dispatch_http_call(
        &policy.cluster,
        header_refs,
        body.as_deref().map(Vec::as_slice),
        vec![],
        policy.timeout,
    );
    let target = policy.target;
    let timeout_ms = u64::try_from(policy.timeout.as_millis()).unwrap_or(u64::MAX);
    drop(headers);
    drop(body);
    let mut s = state.borrow_mut();
    match result {
        Ok(token) => {
            copy.config.count_shadow(target, ShadowEvent::Sent);
            let deadline_ms = match mono_us.map_or(s.clock_ms, |us| us / 1000) {
                0 => u64::MAX, // no clock: never taken for lost
                sent => sent.saturating_add(timeout_ms),
            };
            s.calls.insert(
                u64::from(token),
                Call {
                    root,
                    copy,
                    sent_at: mono_us.map(|us| us / 1000),
                    deadline_ms,
                },
            );
        }
        Err(_) => {
            copy.config.count_shadow(target, ShadowEvent::Failed);
            s.end(&copy);
        }
    }
}

/// One header of the shadow's answer, with the single-value host call (the map getter would
/// read every header, and the SDK unwraps header names as UTF-8).
fn call_response_header(name: &str) -> Option<Vec<u8>> {
    hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, name)
        .ok()
        .flatten()
}

/// Exactly `len` bytes of a buffer, or `None`: a short read is a failure, never a truncated
/// copy or digest.
fn read_exact(buffer: BufferType, len: usize) -> Option<Vec<u8>> {
    if len == 0 {
        return Some(Vec::new());
    }
    hostcalls::get_buffer(buffer, 0, len)
        .ok()
        .flatten()
        .filter(|bytes| bytes.len() == len)
}

impl ShadowState {
    /// Root context: the shadow answered (or failed) for `token`.
    /// `num_headers` is 0 when the call failed without an answer (reset, timeout, over
    /// Envoy's response buffer limit): then there is no header map to read, and the SDK's
    /// single-value getter would panic on the host's `BadArgument`.
    pub fn on_call_response(&mut self, token: u32, num_headers: usize, body_size: usize) {
        let Some(call) = self.calls.remove(u64::from(token)) else {
            return;
        };
        let copy = &call.copy;
        let Some(policy) = copy.policy() else {
            self.bulkhead.end_copy(copy.held);
            return;
        };
        let status = (num_headers > 0)
            .then(|| status_of(MapType::HttpCallResponseHeaders))
            .flatten()
            .filter(|_| !is_local_failure());
        let answer = status.and_then(|status| {
            let body_digest = if copy.compare_key.is_some() && policy.digests_body(body_size as u64)
            {
                // A short read fails the answer: never the digest of part of a body.
                let body = read_exact(BufferType::HttpCallResponseBody, body_size)?;
                Some(Digest::of(&body).value())
            } else {
                None
            };
            Some(Answer {
                status,
                latency_ms: elapsed_ms(call.sent_at),
                body_digest,
            })
        });
        let Some(answer) = answer else {
            copy.config.count_shadow(policy.target, ShadowEvent::Failed);
            self.end(copy);
            return;
        };
        self.bulkhead.end_copy(copy.held);
        copy.config
            .count_shadow(policy.target, ShadowEvent::Responses);
        if let Some(Some(id)) = copy.config.shadow_latency_ids.get(policy.target) {
            let _ = hostcalls::record_metric(*id, answer.latency_ms);
        }
        let Some(key) = copy.compare_key else {
            return;
        };
        if let Some(finding) = self.book.shadow_answered(key, policy.target, answer) {
            apply(&copy.config, &[finding]);
        }
    }
}

/// Envoy answers a failed call (connection refused, reset, timeout, no healthy host) with a
/// local reply of its own. Those are failures of the shadow, not answers to compare. The
/// reliable marker is the absence of `x-envoy-upstream-service-time`, which Envoy's router adds
/// to every response that really came from the upstream.
fn is_local_failure() -> bool {
    call_response_header("x-envoy-upstream-service-time").is_none()
}

/// Milliseconds since `since` (monotonic ms), 0 without a clock.
fn elapsed_ms(since: Option<u64>) -> u64 {
    match (since, monotonic_ms()) {
        (Some(since), Some(now)) => now.saturating_sub(since),
        _ => 0,
    }
}

fn apply(config: &Loaded, findings: &[Finding]) {
    for Finding { target, verdict } in findings {
        if verdict.status_mismatch {
            config.count_shadow(*target, ShadowEvent::StatusMismatch);
        }
        if verdict.class_mismatch {
            config.count_shadow(*target, ShadowEvent::ClassMismatch);
        }
        if verdict.body_mismatch {
            config.count_shadow(*target, ShadowEvent::BodyMismatch);
        }
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
