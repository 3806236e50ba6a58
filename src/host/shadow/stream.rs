//! One request's side of shadowing: makes its copies, feeds them the request body, and
//! watches the primary's answer for comparison. The copies live in the root's state.

use super::{
    apply, elapsed_ms, monotonic_us, read_exact, Collecting, Collection, Job, Origin, ShadowCopy,
    ShadowState, COMPARE_GRACE_MS,
};
use crate::host::{status_of, Loaded};
use crate::metrics::ShadowEvent;
use crate::plan::{Routed, Rule};
use crate::request::HeaderPair;
use crate::rng::Rng;
use crate::shadow::{select_copies, Answer, BodyDigest, ComparePlan};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType};
use std::rc::Rc;

/// What one request's stream does for shadowing. The copies themselves live in the root's
/// state (`ShadowState::collecting`), under `key`.
pub(in crate::host) struct StreamShadow {
    key: u64,
    /// Copies of this stream may still be collecting the body.
    collecting: bool,
    compare: Option<PrimaryWatch>,
}

/// The primary side of a comparison.
struct PrimaryWatch {
    /// Monotonic ms.
    started: Option<u64>,
    /// Shadow targets compared on this request (for the primary latency histogram).
    targets: Vec<usize>,
    /// Body digest while the primary body passes (only with `compare_body`).
    body: Option<BodyDigest>,
    status: Option<u16>,
    latency_ms: u64,
    done: bool,
}

impl StreamShadow {
    /// Request headers of a request `rule` decided: sample, check the bulkhead, make copies
    /// (compared with the primary unless its outcome is injected: `routed.fault`). Returns `None` when
    /// nothing is shadowed.
    pub fn start(
        active: &Rc<Loaded>,
        state: &mut ShadowState,
        rng: &mut Rng,
        routed: &Routed,
        rule: &Rule,
        headers: &[HeaderPair],
        end_of_stream: bool,
    ) -> Option<StreamShadow> {
        let rule_index = routed.rule;
        let plan = &active.plan;
        let mut routing = vec![plan.cluster_header.as_str()];
        if let Some(v) = &plan.variant_header {
            routing.push(v.as_str());
        }
        let selection = select_copies(
            &rule.shadows,
            headers,
            &routing,
            end_of_stream,
            || rng.next_u64(),
            &mut state.bulkhead,
        );
        for target in selection.dropped {
            active.count_shadow(target, ShadowEvent::Dropped);
        }
        let copies = selection.copies;
        if copies.is_empty() {
            return None;
        }
        state.next_key += 1;
        let key = state.next_key;
        // A request of the rule's fault slice is copied, but its answer was injected by Envoy's
        // fault filter: comparing the shadow's with it would count a made-up mismatch.
        let compared = if routed.fault {
            None
        } else {
            ComparePlan::of(&rule.shadows, &copies)
        };
        // The clock is read only when something needs it: a comparison (the primary's latency)
        // or a sampled dispatch-delay measurement.
        let sampled = state.sample_delay();
        let started_us = if compared.is_some() || sampled {
            monotonic_us()
        } else {
            None
        };
        let started = started_us.map(|us| us / 1000);
        let ready_at = started_us.filter(|_| sampled);
        let needs_deadline = compared.is_some() || copies.iter().any(|c| c.with_body);
        let clock = if needs_deadline { state.clock() } else { 0 };
        let compare = compared.and_then(|compared| {
            let deadline_ms = clock + compared.longest_timeout_ms + COMPARE_GRACE_MS;
            let opened = state.book.open(key, compared.targets.len(), deadline_ms);
            opened.then(|| PrimaryWatch {
                started,
                targets: compared.targets,
                body: compared.body_limit.map(BodyDigest::new),
                status: None,
                latency_ms: 0,
                done: false,
            })
        });
        let compare_key = compare.as_ref().map(|_| key);
        let mut collection = Vec::new();
        for copy in copies {
            if copy.with_body {
                let timeout_ms = rule
                    .shadows
                    .get(copy.shadow)
                    .map_or(0, |p| p.timeout.as_millis() as u64);
                collection.push(Collecting {
                    shadow: copy.shadow,
                    headers: copy.headers,
                    held: copy.held,
                    deadline_ms: clock + timeout_ms,
                });
            } else {
                state.enqueue(Job {
                    copy: ShadowCopy {
                        config: Rc::clone(active),
                        rule: rule_index,
                        shadow: copy.shadow,
                        held: copy.held,
                        compare_key,
                    },
                    headers: copy.headers,
                    body: None,
                    ready_at,
                });
            }
        }
        let collecting = !collection.is_empty();
        if collecting {
            state.collecting.insert(
                key,
                Collection {
                    origin: Origin {
                        config: Rc::clone(active),
                        rule: rule_index,
                        compare_key,
                    },
                    body: Vec::new(),
                    copies: collection,
                },
            );
        }
        Some(StreamShadow {
            key,
            collecting,
            compare,
        })
    }

    /// A request body chunk passed (`chunk_size` bytes, already on its way upstream).
    pub fn on_request_body(
        &mut self,
        active: &Rc<Loaded>,
        state: &mut ShadowState,
        chunk_size: usize,
        end_of_stream: bool,
    ) {
        if !self.collecting {
            return;
        }
        if !state.collecting.contains(self.key) {
            // Abandoned by the tick (past its deadline): nothing more to read.
            self.collecting = false;
            return;
        }
        if chunk_size > 0 {
            let chunk = read_exact(BufferType::HttpRequestBody, chunk_size);
            let now = state.clock();
            let ShadowState {
                collecting,
                bulkhead,
                book,
                ..
            } = state;
            let Some(c) = collecting.get_mut(self.key) else {
                return;
            };
            let new_len = c.body.len() as u64 + chunk_size as u64;
            let mut gone: Vec<ShadowCopy> = Vec::new();
            // Copies whose body limit is passed are dropped whole: never a truncated copy. So
            // are copies past their deadline, and all of them when the body cannot be read.
            c.copies.retain_mut(|copy| {
                let limit = active
                    .plan
                    .shadow_policy(c.origin.rule, copy.shadow)
                    .map_or(0, |p| p.max_body_bytes);
                let keep = chunk.is_some()
                    && copy.deadline_ms > now
                    && new_len <= limit
                    && bulkhead.try_hold(chunk_size as u64);
                if keep {
                    copy.held += chunk_size as u64;
                } else {
                    gone.push(c.origin.copy(copy));
                }
                keep
            });
            for copy in gone {
                if let Some(p) = copy.policy() {
                    active.count_shadow(p.target, ShadowEvent::Dropped);
                }
                bulkhead.end_copy(copy.held);
                if let Some(key) = copy.compare_key {
                    book.shadow_gone(key);
                }
            }
            if c.copies.is_empty() {
                collecting.remove(self.key);
                self.collecting = false;
                return;
            }
            if let Some(chunk) = chunk {
                c.body.extend_from_slice(&chunk);
            }
        }
        if end_of_stream {
            self.finish_request(state);
        }
    }

    /// The request is complete (end of body, or trailers): queue the copies that waited for it.
    pub fn finish_request(&mut self, state: &mut ShadowState) {
        if !self.collecting {
            return;
        }
        self.collecting = false;
        let Some(c) = state.collecting.remove(self.key) else {
            return; // abandoned by the tick
        };
        let Collection {
            origin,
            body,
            copies,
        } = c;
        let body = Rc::new(body);
        let ready_at = if state.sample_delay() {
            monotonic_us()
        } else {
            None
        };
        let now = state.clock();
        for collected in copies {
            let copy = origin.copy(&collected);
            if collected.deadline_ms <= now {
                state.drop_copy(&copy);
                continue;
            }
            state.enqueue(Job {
                copy,
                headers: collected.headers,
                body: Some(Rc::clone(&body)),
                ready_at,
            });
        }
    }

    /// Whether the response phase has work (comparison).
    pub fn watches_response(&self) -> bool {
        self.compare.is_some()
    }

    pub fn watches_response_body(&self) -> bool {
        self.compare.as_ref().is_some_and(|c| c.body.is_some())
    }

    pub fn on_response_headers(
        &mut self,
        active: &Rc<Loaded>,
        state: &mut ShadowState,
        end_of_stream: bool,
    ) {
        let Some(watch) = &mut self.compare else {
            return;
        };
        watch.status = status_of(MapType::HttpResponseHeaders);
        watch.latency_ms = elapsed_ms(watch.started);
        if watch.body.is_none() || end_of_stream {
            self.finish_primary(active, state);
        }
    }

    /// A response that ends in trailers (gRPC) never ends with its last body chunk.
    pub fn on_response_trailers(&mut self, active: &Rc<Loaded>, state: &mut ShadowState) {
        self.finish_primary(active, state);
    }

    pub fn on_response_body(
        &mut self,
        active: &Rc<Loaded>,
        state: &mut ShadowState,
        chunk_size: usize,
        end_of_stream: bool,
    ) {
        let Some(watch) = &mut self.compare else {
            return;
        };
        if let Some(body) = &mut watch.body {
            if body.passed(chunk_size) {
                body.feed(read_exact(BufferType::HttpResponseBody, chunk_size).as_deref());
            }
        }
        if end_of_stream {
            self.finish_primary(active, state);
        }
    }

    fn finish_primary(&mut self, active: &Rc<Loaded>, state: &mut ShadowState) {
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
            body_digest: watch.body.as_ref().and_then(BodyDigest::value),
        });
        if answer.is_some() {
            for target in &watch.targets {
                if let Some(Some(id)) = active.primary_latency_ids.get(*target) {
                    let _ = hostcalls::record_metric(*id, watch.latency_ms);
                }
            }
        }
        let findings = state.book.primary_done(self.key, answer);
        apply(active, &findings);
    }

    /// The stream is over: whatever did not finish is released, never leaked.
    pub fn on_stream_end(&mut self, active: &Rc<Loaded>, state: &mut ShadowState) {
        // The stream ended before the filter saw its request's end (the client left mid-body,
        // or the upstream answered before reading the body and Envoy reset the stream): the
        // body is not known whole, so its copies are never sent, never truncated. Each is
        // counted `dropped` and its capacity returns.
        if self.collecting {
            self.collecting = false;
            if let Some(c) = state.collecting.remove(self.key) {
                for collected in &c.copies {
                    let copy = c.origin.copy(collected);
                    state.drop_unfinished(&copy, c.body.len());
                }
            }
        }
        if let Some(watch) = &mut self.compare {
            if !watch.done {
                watch.done = true;
                let findings = state.book.primary_done(self.key, None);
                apply(active, &findings);
            }
        }
    }
}
