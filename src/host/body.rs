//! Holding requests for their body (`match.body`) without ever stalling one.
//!
//! A held request returns `Pause` (StopIteration) from its request-headers callback and
//! buffers its body (`Pause` = StopIterationAndBuffer from the body callback) until it can be
//! decided. Envoy delivers those body callbacks only when the Wasm `PluginConfig` sets
//! `allow_on_headers_stop_iteration: true` (Envoy >= 1.35, envoy PR #40213); without it Envoy
//! turns the pause into StopAllIterationAndWatermark and no body callback comes until the
//! filter resumes the request itself. No host call says which one applies, so the VM finds
//! out: a held request whose first body callback arrives proves the setting (`Support::
//! Present`, for the life of the VM). A held request that has seen none after `HOLD_CHECK_MS`
//! is looked at from the root context's tick: when Envoy has received body bytes for it
//! (`request.total_size` grew since its headers) that the filter was not given, the setting is
//! absent. The request is then resumed with the routing headers of its header decision
//! (written before the resume, while Envoy still holds the headers), and the VM stops holding
//! requests (`Support::Absent`), with one warning per Envoy process; other workers learn it
//! through shared data on their next tick. A client that is merely slow to send its body has
//! no bytes received: it stays held (where the property cannot be read, `HOLD_GIVE_UP_MS`
//! decides instead).

use super::now_ms;
use crate::lane::HeaderEdit;
use proxy_wasm::hostcalls;
use proxy_wasm::types::MapType;
use std::cell::{Cell, RefCell};

/// How long a held request waits for its first body callback before the root looks at it.
pub(super) const HOLD_CHECK_MS: u64 = 100;
/// Without `request.total_size`: how long before the VM concludes the setting is absent.
pub(super) const HOLD_GIVE_UP_MS: u64 = 2000;

/// Shared data key (all VMs of the process): set once a VM found the setting absent.
const ABSENT_KEY: &str = "traffic-split.body_hold.absent";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Support {
    /// No held request has told yet.
    Unknown,
    /// A held request's body callback arrived: Envoy delivers them.
    Present,
    /// Envoy does not deliver body callbacks to a paused request: never hold.
    Absent,
}

/// A held request as the root sees it: what to write before resuming it, if it must.
struct Waiting {
    context_id: u32,
    since_ms: u64,
    /// The routing (and lane) header writes of its header decision.
    fallback: Vec<HeaderEdit>,
    /// `request.total_size` when it was held (headers and any body bytes received).
    size_at_hold: Option<u64>,
}

/// Envoy's `request.total_size` of the effective stream: its header bytes plus the body bytes
/// received from the client so far (whether or not a filter has seen them).
fn received_size() -> Option<u64> {
    let bytes = hostcalls::get_property(vec!["request", "total_size"])
        .ok()
        .flatten()?;
    let raw: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(raw))
}

pub(super) struct BodyHolds {
    support: Cell<Support>,
    waiting: RefCell<Vec<Waiting>>,
}

impl BodyHolds {
    pub(super) fn new() -> Self {
        BodyHolds {
            support: Cell::new(Support::Unknown),
            waiting: RefCell::new(Vec::new()),
        }
    }

    /// Whether requests may be held for their body. Until this VM knows, another worker may
    /// have found the setting absent (one shared-data read per request that could be held).
    pub(super) fn may_hold(&self) -> bool {
        match self.support.get() {
            Support::Present => true,
            Support::Absent => false,
            Support::Unknown => {
                if absent_in_process() {
                    self.support.set(Support::Absent);
                    return false;
                }
                true
            }
        }
    }

    /// A request is held. Until its support is known, the root watches it.
    pub(super) fn register(&self, context_id: u32, fallback: Vec<HeaderEdit>) {
        if self.support.get() == Support::Present {
            return;
        }
        let size_at_hold = received_size();
        self.waiting.borrow_mut().push(Waiting {
            context_id,
            since_ms: now_ms().unwrap_or(0),
            fallback,
            size_at_hold,
        });
    }

    /// The first body callback of a held request: whether it is still held (`false`: the root
    /// resumed it with its header decision). A body callback on a held request proves support.
    pub(super) fn body_arrived(&self, context_id: u32) -> bool {
        let Ok(mut waiting) = self.waiting.try_borrow_mut() else {
            // Called back from within the root's resume: that request was resumed.
            return false;
        };
        let before = waiting.len();
        waiting.retain(|w| w.context_id != context_id);
        let was_waiting = waiting.len() != before;
        if was_waiting || self.support.get() == Support::Present {
            self.support.set(Support::Present);
            return true;
        }
        false
    }

    /// The stream ended (whatever ended it).
    pub(super) fn forget(&self, context_id: u32) {
        if let Ok(mut waiting) = self.waiting.try_borrow_mut() {
            waiting.retain(|w| w.context_id != context_id);
        }
    }

    /// Root tick: resumes held requests whose body Envoy received but did not deliver (or
    /// every one, once another worker found the setting absent). Call it last in the tick: a
    /// resume may run the stream's callbacks before it returns.
    pub(super) fn on_tick(&self, root_id: u32, now_ms: Option<u64>) {
        if self.support.get() == Support::Present || self.waiting.borrow().is_empty() {
            return;
        }
        let now = now_ms.unwrap_or(u64::MAX);
        let absent_elsewhere = self.support.get() == Support::Absent || absent_in_process();
        // Due: the setting is known absent, or this request proves it (`undelivered`), or it
        // has waited `HOLD_GIVE_UP_MS` with no body callback whatever the size says (a body
        // that never grows, e.g. an empty chunked one, must not stall it either).
        let mut proven = false;
        let due: Vec<Waiting> = {
            let mut waiting = self.waiting.borrow_mut();
            let (due, keep): (Vec<Waiting>, Vec<Waiting>) = waiting.drain(..).partition(|w| {
                let age = now.saturating_sub(w.since_ms);
                if absent_elsewhere {
                    return true;
                }
                let shown = age >= HOLD_CHECK_MS && undelivered(w, age);
                proven |= shown;
                shown || age >= HOLD_GIVE_UP_MS
            });
            *waiting = keep;
            due
        };
        let _ = hostcalls::set_effective_context(root_id);
        if due.is_empty() {
            return;
        }
        let found_here = proven && !absent_elsewhere;
        if (proven || absent_elsewhere)
            && self.support.replace(Support::Absent) != Support::Absent
            && found_here
        {
            // One line per Envoy process: the first VM to find out says it.
            // (`absent_elsewhere` was read just now: two workers finding out on the same tick
            // may both say it.)
            let _ = hostcalls::set_shared_data(ABSENT_KEY, Some(b"1"), None);
            log::warn!(
                "traffic-split: match.body is OFF: Envoy did not deliver the body of a held \
                 request it had received, so its Wasm PluginConfig lacks \
                 `allow_on_headers_stop_iteration: true` (Envoy >= 1.35). Requests are now \
                 decided on their headers (body conditions do not hold); set it in the Wasm \
                 filter's config (docs/deploy.md) to route on bodies"
            );
        }
        for w in due {
            if hostcalls::set_effective_context(w.context_id).is_err() {
                continue; // the stream is gone
            }
            for (name, value) in &w.fallback {
                let _ = hostcalls::set_map_value_bytes(
                    MapType::HttpRequestHeaders,
                    name,
                    value.as_deref(),
                );
            }
            let _ = hostcalls::call_foreign_function("clear_route_cache", None);
            let _ = hostcalls::resume_http_request();
        }
        let _ = hostcalls::set_effective_context(root_id);
    }
}

/// Whether Envoy received body bytes for a held request that its filter was not given (sets
/// the effective context to that stream; the caller sets it back).
fn undelivered(w: &Waiting, age_ms: u64) -> bool {
    if hostcalls::set_effective_context(w.context_id).is_err() {
        return false; // gone: `forget` removes it
    }
    match (w.size_at_hold, received_size()) {
        (Some(then), Some(now)) => now > then,
        _ => age_ms >= HOLD_GIVE_UP_MS,
    }
}

/// Whether a worker of this Envoy process found the setting absent.
fn absent_in_process() -> bool {
    hostcalls::get_shared_data(ABSENT_KEY)
        .ok()
        .and_then(|(v, _)| v)
        .is_some()
}
