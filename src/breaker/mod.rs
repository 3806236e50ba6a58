//! Health-aware splitting: a circuit breaker per destination (a version, not a host).
//!
//! The breaker's record is shared by every worker of the Envoy process (the host keeps it in
//! shared data, updated with compare-and-swap); each worker adds the outcomes it saw since its
//! last publish and moves the state machine on. This module is the pure part: the record, its
//! transitions (with an injected clock), its byte encoding, its shared-data key, and the publish
//! algorithm over any compare-and-swap store (`SharedStore`; the host's is Envoy shared data),
//! which live in `shared`.
//!
//! Time is a monotonic clock in milliseconds, shared by the whole process (the host reads the
//! WASI monotonic clock, which Envoy serves from its steady clock): a wall-clock step cannot
//! stretch or shorten an open period. Should time still appear to go backwards (a record from
//! another clock), it counts as no time elapsed and the open period restarts from now: it
//! never lasts more than `open_s` after the step.
//!
//! closed → open: within the last `window_s` seconds, requests ≥ `min_requests` and
//!   failures / requests ≥ `failure_ratio`.
//! open → half-open: after `open_s`.
//! half-open → closed: once `min_requests` probes are in and their failure ratio is below the
//!   threshold; → open otherwise.

mod shared;
#[cfg(test)]
mod tests;

pub use shared::{
    claim_gauge, create_record, gauge_owner, instance_scope, owner_record_key, owns_gauge,
    record_key, release_gauge, Published, Publisher, ReadFailed, SetResult, SharedStore,
    BACKOFF_MAX_MS, BACKOFF_MIN_MS, PUBLISH_ATTEMPTS,
};

/// Breaker states; the numbers are the `state` gauge's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum State {
    #[default]
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

impl State {
    fn from_byte(b: u8) -> Option<State> {
        match b {
            0 => Some(State::Closed),
            1 => Some(State::Open),
            2 => Some(State::HalfOpen),
            _ => None,
        }
    }
}

/// What a worker currently knows of a breaker: enough to decide requests without a host call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BreakerView {
    pub state: State,
    pub generation: u64,
}

impl BreakerView {
    /// What `views` says of `slot`; a missing slot reads as closed.
    pub fn of(views: &[BreakerView], slot: usize) -> BreakerView {
        views.get(slot).copied().unwrap_or_default()
    }
}

/// The breaker a request's outcome is counted for, and the generation the request was decided
/// under (an outcome from an older generation does not count towards the current state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerTicket {
    /// Index into `Plan::breakers`.
    pub slot: usize,
    pub generation: u64,
}

/// Which response statuses are failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusMatch {
    Exact(u16),
    /// `"5xx"` is `Class(5)`.
    Class(u16),
}

/// A destination's breaker settings, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerPolicy {
    pub failure_ratio: f64,
    pub min_requests: u64,
    pub window_s: u64,
    pub open_s: u64,
    /// A uniform u64 draw below this makes a half-open request a probe.
    pub half_open_threshold: u64,
    /// `half_open_percent` × 10, for log lines (no float formatting in the VM).
    pub half_open_permille: u64,
    pub failure_statuses: Vec<StatusMatch>,
    pub count_local_replies: bool,
    /// gRPC status codes (0..=16) that count as failures.
    pub grpc_failure_codes: Vec<u8>,
    /// A response whose headers arrive later than this (ms) counts as a failure.
    pub slow_ms: Option<u64>,
    /// This many failures in a row on one worker open a closed breaker whatever the ratio.
    pub consecutive_failures: Option<u64>,
}

/// gRPC status names by code (`grpc/status.h`).
pub const GRPC_CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

impl BreakerPolicy {
    /// Width of one window bucket in seconds.
    pub fn bucket_s(&self) -> u64 {
        self.window_s.div_ceil(MAX_BUCKETS).max(1)
    }

    /// `failure_ratio` as a percentage, for log lines.
    pub fn failure_ratio_text(&self) -> String {
        permille_text((self.failure_ratio * 1000.0 + 0.5) as u64)
    }

    pub fn is_failure_status(&self, status: u16) -> bool {
        self.failure_statuses.iter().any(|m| match m {
            StatusMatch::Exact(code) => *code == status,
            StatusMatch::Class(class) => status / 100 == *class,
        })
    }

    /// Whether a `grpc-status` value (as sent: decimal digits) is a failure.
    pub fn is_failure_grpc(&self, grpc_status: &[u8]) -> bool {
        std::str::from_utf8(grpc_status)
            .ok()
            .and_then(|s| s.trim().parse::<u8>().ok())
            .is_some_and(|code| self.grpc_failure_codes.contains(&code))
    }

    fn trips(&self, requests: u64, failures: u64) -> bool {
        requests >= self.min_requests
            && requests > 0
            && failures as f64 >= self.failure_ratio * requests as f64
    }
}

/// The closed state's window is kept in at most this many buckets (one second each for windows
/// up to a minute, wider beyond), so the shared record stays small whatever `window_s` is.
pub const MAX_BUCKETS: u64 = 60;

/// Requests and failures counted in one slice of the closed state's window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    /// Slice number: `now_s / bucket_s`.
    pub slice: u64,
    pub requests: u64,
    pub failures: u64,
}

/// The state one breaker is in, as all workers share it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    pub state: State,
    /// Bumped on every transition, so outcomes seen under an older state are recognised.
    pub generation: u64,
    /// When the current state began (ms since the epoch).
    pub since_ms: u64,
    /// Closed: per-second counts within the window, oldest first.
    pub buckets: Vec<Bucket>,
    /// Half-open: probe counts.
    pub probe_requests: u64,
    pub probe_failures: u64,
    /// Closed: a worker's merged outcomes held `consecutive_failures` failures in a row, so
    /// the next `advance` opens. Never stored: set and acted on within one publish.
    pub streak_tripped: bool,
}

/// What one worker saw since it last published, under the state of `generation`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcomes {
    pub generation: u64,
    pub requests: u64,
    pub failures: u64,
    /// Failures in a row up to the last outcome on this worker (kept across publishes while
    /// the generation stays).
    pub streak: u64,
    /// The longest run of failures since the last publish (for `consecutive_failures`).
    pub peak: u64,
}

impl Outcomes {
    /// Counts one outcome decided under `generation`. `self.generation` is the newest this
    /// worker knows (the last publish moved it on, together with the views requests are
    /// decided with), so an outcome of any other generation was decided under an older state
    /// and is dropped: it must neither count towards the current state nor wipe the outcomes
    /// counted under it (a slow answer decided before a transition arrives after it).
    pub fn add(&mut self, generation: u64, failed: bool) {
        if generation != self.generation {
            return;
        }
        self.requests = self.requests.saturating_add(1);
        self.failures = self.failures.saturating_add(u64::from(failed));
        self.streak = if failed {
            self.streak.saturating_add(1)
        } else {
            0
        };
        self.peak = self.peak.max(self.streak);
    }

    /// What is left after a publish under `generation`: a run of failures still going on
    /// continues into the next publish.
    pub fn after_publish(&self, generation: u64) -> Outcomes {
        let streak = if generation == self.generation {
            self.streak
        } else {
            0
        };
        Outcomes {
            generation,
            streak,
            peak: streak,
            ..Outcomes::default()
        }
    }
}

/// A state change, with the counts that caused it (for the operator's log line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: State,
    pub to: State,
    pub requests: u64,
    pub failures: u64,
}

impl Record {
    /// Adds a worker's outcomes, if they were seen under the current state.
    pub fn merge(&mut self, policy: &BreakerPolicy, now_ms: u64, outcomes: &Outcomes) {
        if outcomes.generation != self.generation || outcomes.requests == 0 {
            return;
        }
        match self.state {
            State::Closed => {
                if policy
                    .consecutive_failures
                    .is_some_and(|n| outcomes.peak >= n)
                {
                    self.streak_tripped = true;
                }
                let slice = now_ms / 1000 / policy.bucket_s();
                self.prune(policy, slice);
                match self.buckets.last_mut() {
                    Some(b) if b.slice == slice => {
                        b.requests = b.requests.saturating_add(outcomes.requests);
                        b.failures = b.failures.saturating_add(outcomes.failures);
                    }
                    _ => self.buckets.push(Bucket {
                        slice,
                        requests: outcomes.requests,
                        failures: outcomes.failures,
                    }),
                }
            }
            State::HalfOpen => {
                self.probe_requests = self.probe_requests.saturating_add(outcomes.requests);
                self.probe_failures = self.probe_failures.saturating_add(outcomes.failures);
            }
            // Requests decided while open went to the fallback: nothing of ours to count.
            State::Open => {}
        }
    }

    /// Requests and failures in the window (closed) or among the probes (half-open).
    pub fn counts(&self) -> (u64, u64) {
        match self.state {
            State::Closed => self.buckets.iter().fold((0u64, 0u64), |(r, f), b| {
                (r.saturating_add(b.requests), f.saturating_add(b.failures))
            }),
            State::HalfOpen => (self.probe_requests, self.probe_failures),
            State::Open => (0, 0),
        }
    }

    /// Drops buckets that left the window (`slice` is the current bucket number), and buckets
    /// from the future (a clock that went backwards, or another bucket width): they would
    /// otherwise stay in the window until time caught up.
    fn prune(&mut self, policy: &BreakerPolicy, slice: u64) {
        let slices = policy.window_s.div_ceil(policy.bucket_s());
        let oldest = slice.saturating_sub(slices.saturating_sub(1));
        self.buckets
            .retain(|b| b.slice >= oldest && b.slice <= slice);
    }

    /// A record whose state began after `now_ms` was written with a clock ahead of ours: its
    /// state restarts now, so an open period never lasts more than `open_s` past the step.
    /// Returns whether the record changed.
    pub fn rebase_clock(&mut self, now_ms: u64) -> bool {
        if self.since_ms > now_ms {
            self.since_ms = now_ms;
            return true;
        }
        false
    }

    /// Moves the state machine on at `now_ms`; returns the transition, if any.
    pub fn advance(&mut self, policy: &BreakerPolicy, now_ms: u64) -> Option<Transition> {
        if self.state == State::Closed {
            self.prune(policy, now_ms / 1000 / policy.bucket_s());
        }
        let (requests, failures) = self.counts();
        let to = match self.state {
            State::Closed if self.streak_tripped || policy.trips(requests, failures) => State::Open,
            State::Open
                if now_ms.saturating_sub(self.since_ms) >= policy.open_s.saturating_mul(1000) =>
            {
                State::HalfOpen
            }
            State::HalfOpen if requests >= policy.min_requests => {
                if policy.trips(requests, failures) {
                    State::Open
                } else {
                    State::Closed
                }
            }
            _ => return None,
        };
        let from = self.state;
        *self = Record {
            state: to,
            // Only ever compared for equality: wrapping keeps it distinct from the last one.
            generation: self.generation.wrapping_add(1),
            since_ms: now_ms,
            ..Record::default()
        };
        Some(Transition {
            from,
            to,
            requests,
            failures,
        })
    }

    /// Whether `outcomes` on top of this record would change the state now: the host then
    /// publishes at once instead of waiting for its tick.
    pub fn would_advance(&self, policy: &BreakerPolicy, now_ms: u64, outcomes: &Outcomes) -> bool {
        let mut copy = self.clone();
        copy.merge(policy, now_ms, outcomes);
        copy.advance(policy, now_ms).is_some()
    }

    /// Little-endian bytes: the format tag, state, bucket count, generation, since, probes, then
    /// the buckets.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.buckets.len() * 24);
        out.extend_from_slice(&FORMAT);
        out.push(self.state as u8);
        // At most MAX_BUCKETS (60) by construction; a longer list would not decode anyway.
        out.push(u8::try_from(self.buckets.len()).unwrap_or(u8::MAX));
        for v in [
            self.generation,
            self.since_ms,
            self.probe_requests,
            self.probe_failures,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for b in &self.buckets {
            for v in [b.slice, b.requests, b.failures] {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        out
    }

    /// `None` for any bytes this version would not have written (another format, truncated,
    /// trailing bytes, more buckets than a window holds, buckets out of order, more failures
    /// than requests): the caller then treats the record as absent. Never panics.
    pub fn decode(bytes: &[u8]) -> Option<Record> {
        let rest = bytes.strip_prefix(&FORMAT)?;
        let (&state, rest) = rest.split_first()?;
        let (&count, rest) = rest.split_first()?;
        // The exact length, so a record cut at a bucket boundary is not misread as shorter.
        if u64::from(count) > MAX_BUCKETS || rest.len() != 32 + usize::from(count) * 24 {
            return None;
        }
        let mut words = rest.chunks_exact(8);
        let mut next = || -> Option<u64> {
            let word: [u8; 8] = words.next()?.try_into().ok()?;
            Some(u64::from_le_bytes(word))
        };
        let mut record = Record {
            state: State::from_byte(state)?,
            generation: next()?,
            since_ms: next()?,
            probe_requests: next()?,
            probe_failures: next()?,
            buckets: Vec::new(),
            streak_tripped: false,
        };
        if record.probe_failures > record.probe_requests {
            return None;
        }
        while let Some(slice) = next() {
            let bucket = Bucket {
                slice,
                requests: next()?,
                failures: next()?,
            };
            let in_order = record.buckets.last().is_none_or(|b| b.slice < slice);
            if !in_order
                || bucket.failures > bucket.requests
                || record.buckets.len() as u64 >= MAX_BUCKETS
            {
                return None;
            }
            record.buckets.push(bucket);
        }
        Some(record)
    }
}

/// First bytes of every encoded record: a tag and the format version. Records of another
/// format (an older build sharing the `vm_id` during an upgrade) decode as absent.
const FORMAT: [u8; 2] = [b'B', 2];
/// Format tag, state and bucket-count bytes, and the four header words.
const HEADER_LEN: usize = FORMAT.len() + 2 + 4 * 8;

/// `failures` of `requests` as a percentage with one decimal, without float formatting.
pub fn percent_text(failures: u64, requests: u64) -> String {
    let permille = u128::from(failures) * 1000 / u128::from(requests.max(1));
    permille_text(u64::try_from(permille).unwrap_or(u64::MAX))
}

/// "12.5%" from 125 (no float formatting in the VM: it would cost kilobytes of `.wasm`).
fn permille_text(permille: u64) -> String {
    format!("{}.{}%", permille / 10, permille % 10)
}
