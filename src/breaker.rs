//! Health-aware splitting: a circuit breaker per destination (a version, not a host).
//!
//! The breaker's record is shared by every worker of the Envoy process (the host keeps it in
//! shared data, updated with compare-and-swap); each worker adds the outcomes it saw since its
//! last publish and moves the state machine on. This module is the pure part: the record, its
//! transitions (with an injected clock), its byte encoding, its shared-data key, and the publish
//! algorithm over any compare-and-swap store (`SharedStore`; the host's is Envoy shared data).
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
}

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
}

/// What one worker saw since it last published, under the state of `generation`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcomes {
    pub generation: u64,
    pub requests: u64,
    pub failures: u64,
}

impl Outcomes {
    /// Counts one outcome decided under `generation`; older counts are stale and discarded.
    pub fn add(&mut self, generation: u64, failed: bool) {
        if generation != self.generation {
            *self = Outcomes {
                generation,
                ..Outcomes::default()
            };
        }
        self.requests = self.requests.saturating_add(1);
        self.failures = self.failures.saturating_add(u64::from(failed));
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
            State::Closed if policy.trips(requests, failures) => State::Open,
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

/// Identifies one filter instance among those sharing a `vm_id` (one shared-data namespace):
/// the plugin's name and root id, and the listener direction and metadata Envoy hands it (the
/// parts of Envoy's own plugin key besides the configuration; Envoy 1.40 was nevertheless seen
/// running one root context for a configuration repeated on listeners that differ only in
/// direction). The configuration is left out on purpose, so a breaker survives updates.
/// Length-prefixed parts, hashed (FNV-1a, 64 bits) into 16 hex digits.
pub fn instance_scope(parts: &[&[u8]]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            hash ^= u64::from(*b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for part in parts {
        eat(&(part.len() as u64).to_le_bytes());
        eat(part);
    }
    format!("{hash:016x}")
}

/// The shared-data key of one breaker's record: the instance, rule and destination, and the
/// cluster, so a destination repointed to another cluster (another version) starts afresh
/// rather than inheriting the old version's state. Rule and destination names never contain
/// a `/`; the cluster comes last, so any cluster name keeps keys apart.
pub fn record_key(scope: &str, rule: &str, destination: &str, cluster: &str) -> String {
    format!("traffic-split/breaker/v2/{scope}/{rule}/{destination}/{cluster}")
}

/// A shared-data read that failed (not a missing key: that is `Ok(None)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadFailed;

/// Envoy's shared data, or a test double: values with a compare-and-swap token.
pub trait SharedStore {
    /// The value and its token, `Ok(None)` when the key has none, `Err` when the read failed.
    fn get(&mut self, key: &str) -> Result<Option<(Vec<u8>, u32)>, ReadFailed>;
    /// Writes if the value still has token `cas` (`None`: unconditionally).
    fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> SetResult;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetResult {
    Written,
    /// Another writer got there first.
    Conflict,
    Failed,
}

/// Writes an empty record under `key` unless one is there already. Called at configure time,
/// before this configuration serves a request, so that every later update is a real
/// compare-and-swap: Envoy's shared data has no create-if-absent, and a write to an absent key
/// is unconditional. Envoy configures a new plugin first on the main thread (its configuration
/// check) and only then on the workers, so creation does not race with the workers' updates.
pub fn create_record(store: &mut impl SharedStore, key: &str) -> bool {
    match store.get(key) {
        Ok(Some(_)) => true,
        Ok(None) => store.set(key, &Record::default().encode(), None) == SetResult::Written,
        Err(ReadFailed) => false,
    }
}

/// The `state` gauge's name carries the rule and destination only (a public contract), so
/// several breakers can map to one gauge: the old and new configuration of an instance during
/// an update, or instances sharing a `vm_id` with the same names. One owner at a time reports
/// it (shared data under `owner_key`): the configuration loaded last claims it at configure
/// time, only the owner writes it, and a configuration going away that still owns it (no
/// successor claimed it: its breaker was removed) sets it to 0, so a `state != 0` alert
/// clears. An owner is a configuration's breaker: `gauge_owner`. Returns the previous owner
/// when another one was replaced.
pub fn claim_gauge(store: &mut impl SharedStore, owner_key: &str, owner: &str) -> Option<String> {
    let previous = match store.get(owner_key) {
        Ok(Some((bytes, _))) => bytes,
        Ok(None) => Vec::new(),
        Err(ReadFailed) => return None,
    };
    if previous == owner.as_bytes() {
        return None;
    }
    store.set(owner_key, owner.as_bytes(), None);
    (!previous.is_empty()).then(|| String::from_utf8_lossy(&previous).into_owned())
}

/// A configuration's breaker, as a gauge owner: a digest of the whole configuration (the same
/// on every worker; another after any update) and the record key. An update that keeps a
/// breaker keeps its record key, and the old configuration going away must then not release
/// the gauge its successor reports.
pub fn gauge_owner(configuration: &[u8], record_key: &str) -> String {
    format!("{}\n{record_key}", instance_scope(&[configuration]))
}

/// The record key of a `gauge_owner` value.
pub fn owner_record_key(owner: &str) -> &str {
    owner.split_once('\n').map_or(owner, |(_, key)| key)
}

/// Whether `owner` owns the gauge (see `claim_gauge`).
pub fn owns_gauge(store: &mut impl SharedStore, owner_key: &str, owner: &str) -> bool {
    matches!(store.get(owner_key), Ok(Some((current, _))) if current == owner.as_bytes())
}

/// A configuration going away gives its gauge up: `true` when it still owned it (the caller
/// then sets the gauge to 0). Compare-and-swap, so a successor's claim in between wins.
pub fn release_gauge(store: &mut impl SharedStore, owner_key: &str, owner: &str) -> bool {
    match store.get(owner_key) {
        Ok(Some((current, cas))) if current == owner.as_bytes() => {
            store.set(owner_key, b"", Some(cas)) == SetResult::Written
        }
        _ => false,
    }
}

/// Compare-and-swap attempts in one publish before it backs off.
pub const PUBLISH_ATTEMPTS: u32 = 3;
/// Back-off after a publish lost every attempt: doubles from the first to the last value.
pub const BACKOFF_MIN_MS: u64 = 10;
pub const BACKOFF_MAX_MS: u64 = 320;

/// One worker's side of one breaker: what it last saw of the shared record, the outcomes it
/// has not published yet, and its back-off after lost races.
#[derive(Debug, Clone, Default)]
pub struct Publisher {
    /// The shared record as last read or written.
    pub record: Record,
    pub pending: Outcomes,
    /// When this worker last read or wrote the shared record.
    pub synced_ms: u64,
    /// No publish before this time (after lost races).
    retry_at_ms: u64,
    backoff_ms: u64,
}

/// What one `Publisher::publish` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Published {
    /// The shared record was read (and written if needed): `Publisher::record` is fresh.
    pub synced: bool,
    /// The state change this publish made (only the writer that made it reports it).
    pub transition: Option<Transition>,
    /// Compare-and-swap writes that lost to another worker.
    pub conflicts: u32,
}

impl Publisher {
    /// Starts from the shared record as it is (at configure time), so a configuration that
    /// replaces another decides its first requests with the breaker's current state rather
    /// than as closed until its first publish.
    pub fn load(store: &mut impl SharedStore, key: &str) -> Publisher {
        let record = match store.get(key) {
            Ok(Some((bytes, _))) => Record::decode(&bytes).unwrap_or_default(),
            _ => Record::default(),
        };
        Publisher {
            pending: Outcomes {
                generation: record.generation,
                ..Outcomes::default()
            },
            record,
            ..Publisher::default()
        }
    }

    /// Whether a publish may run now (not backing off after lost races).
    pub fn may_publish(&self, now_ms: u64) -> bool {
        now_ms >= self.retry_at_ms
    }

    /// `publish` from a response: skipped while backing off after lost races, so a contended
    /// record never costs a retry loop under Envoy's shared-data lock on every response.
    pub fn publish_if_due(
        &mut self,
        store: &mut impl SharedStore,
        key: &str,
        policy: &BreakerPolicy,
        now_ms: u64,
    ) -> Published {
        if !self.may_publish(now_ms) {
            return Published::default();
        }
        self.publish(store, key, policy, now_ms)
    }

    /// Merges the pending outcomes into the shared record under `key` and moves it on, with
    /// compare-and-swap. A lost race is retried with the fresh record up to
    /// `PUBLISH_ATTEMPTS` times; then the outcomes are kept for later and responses stop
    /// publishing for a while (`publish_if_due`: `BACKOFF_MIN_MS`, doubling up to
    /// `BACKOFF_MAX_MS`). The tick (and a configuration going away) publishes regardless: at
    /// most once per tick, and nothing counted is left behind.
    pub fn publish(
        &mut self,
        store: &mut impl SharedStore,
        key: &str,
        policy: &BreakerPolicy,
        now_ms: u64,
    ) -> Published {
        let mut done = Published::default();
        for _ in 0..PUBLISH_ATTEMPTS {
            let (mut record, cas) = match store.get(key) {
                Ok(Some((bytes, cas))) => (Record::decode(&bytes).unwrap_or_default(), cas),
                // Created at configure time, so absent only if something removed it: create it
                // again (an empty record: nothing of ours is lost if that write races) and
                // update it with compare-and-swap like any other.
                Ok(None) => {
                    if store.set(key, &Record::default().encode(), None) != SetResult::Written {
                        return done;
                    }
                    continue;
                }
                Err(ReadFailed) => return done,
            };
            let merges = self.pending.requests > 0 && self.pending.generation == record.generation;
            record.merge(policy, now_ms, &self.pending);
            let rebased = record.rebase_clock(now_ms);
            let transition = record.advance(policy, now_ms);
            if merges || rebased || transition.is_some() {
                match store.set(key, &record.encode(), Some(cas)) {
                    SetResult::Written => {}
                    SetResult::Conflict => {
                        done.conflicts += 1;
                        continue;
                    }
                    SetResult::Failed => return done,
                }
            }
            self.pending = Outcomes {
                generation: record.generation,
                ..Outcomes::default()
            };
            self.synced_ms = now_ms;
            self.backoff_ms = 0;
            self.record = record;
            done.synced = true;
            done.transition = transition;
            return done;
        }
        self.backoff_ms = (self.backoff_ms * 2).clamp(BACKOFF_MIN_MS, BACKOFF_MAX_MS);
        self.retry_at_ms = now_ms.saturating_add(self.backoff_ms);
        done
    }
}

/// `failures` of `requests` as a percentage with one decimal, without float formatting.
pub fn percent_text(failures: u64, requests: u64) -> String {
    let permille = u128::from(failures) * 1000 / u128::from(requests.max(1));
    permille_text(u64::try_from(permille).unwrap_or(u64::MAX))
}

/// "12.5%" from 125 (no float formatting in the VM: it would cost kilobytes of `.wasm`).
fn permille_text(permille: u64) -> String {
    format!("{}.{}%", permille / 10, permille % 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> BreakerPolicy {
        BreakerPolicy {
            failure_ratio: 0.2,
            min_requests: 20,
            window_s: 10,
            open_s: 30,
            half_open_threshold: u64::MAX / 10,
            half_open_permille: 100,
            failure_statuses: vec![StatusMatch::Class(5)],
            count_local_replies: true,
        }
    }

    fn outcomes(r: &Record, requests: u64, failures: u64) -> Outcomes {
        Outcomes {
            generation: r.generation,
            requests,
            failures,
        }
    }

    const T0: u64 = 1_000_000_000;

    #[test]
    fn closed_opens_when_ratio_and_volume_are_reached() {
        let p = policy();
        let mut r = Record::default();
        r.merge(&p, T0, &outcomes(&r, 19, 19));
        assert_eq!(r.advance(&p, T0), None, "below min_requests nothing trips");
        r.merge(&p, T0 + 100, &outcomes(&r, 1, 0));
        let t = r.advance(&p, T0 + 100).unwrap();
        assert_eq!(
            t,
            Transition {
                from: State::Closed,
                to: State::Open,
                requests: 20,
                failures: 19
            }
        );
        assert_eq!(r.state, State::Open);
        assert_eq!(r.generation, 1);
        assert_eq!(r.since_ms, T0 + 100);
    }

    #[test]
    fn a_ratio_just_under_the_threshold_does_not_trip() {
        let p = policy();
        let mut r = Record::default();
        r.merge(&p, T0, &outcomes(&r, 1000, 199));
        assert_eq!(r.advance(&p, T0), None);
        r.merge(&p, T0, &outcomes(&r, 1, 1));
        assert_eq!(r.advance(&p, T0), None, "200 of 1001 is still under 20%");
        r.merge(&p, T0, &outcomes(&r, 1, 1));
        assert_eq!(
            r.advance(&p, T0).map(|t| t.to),
            Some(State::Open),
            "201 of 1002"
        );
    }

    #[test]
    fn old_failures_leave_the_window() {
        let p = policy();
        let mut r = Record::default();
        r.merge(&p, T0, &outcomes(&r, 30, 5));
        assert_eq!(r.advance(&p, T0), None);
        // 10 s later the first second is out of the window: 15 of 30 would trip, but only the
        // new counts remain.
        r.merge(&p, T0 + 10_000, &outcomes(&r, 30, 5));
        assert_eq!(r.counts(), (30, 5));
        assert_eq!(r.advance(&p, T0 + 10_000), None);
        // Within the window they add up.
        r.merge(&p, T0 + 11_000, &outcomes(&r, 5, 5));
        assert_eq!(r.counts(), (35, 10));
        assert_eq!(r.advance(&p, T0 + 11_000).map(|t| t.to), Some(State::Open));
    }

    #[test]
    fn long_windows_use_wider_buckets_and_stay_small() {
        let p = BreakerPolicy {
            window_s: 3600,
            min_requests: 1_000_000,
            ..policy()
        };
        assert_eq!(p.bucket_s(), 60);
        assert_eq!(policy().bucket_s(), 1);
        let mut r = Record::default();
        for minute in 0..200u64 {
            r.merge(&p, T0 + minute * 60_000, &outcomes(&r, 10, 1));
            assert_eq!(r.advance(&p, T0 + minute * 60_000), None);
        }
        assert_eq!(r.buckets.len(), 60);
        assert_eq!(r.counts(), (600, 60));
        assert!(r.encode().len() <= HEADER_LEN + 60 * 24);
    }

    #[test]
    fn open_becomes_half_open_after_open_s_then_probes_decide() {
        let p = policy();
        let mut r = Record {
            state: State::Open,
            generation: 3,
            since_ms: T0,
            ..Record::default()
        };
        // Outcomes while open are not ours (they went to the fallback).
        r.merge(&p, T0 + 1000, &outcomes(&r, 50, 50));
        assert_eq!(r.advance(&p, T0 + 29_999), None);
        let t = r.advance(&p, T0 + 30_000).unwrap();
        assert_eq!((t.from, t.to), (State::Open, State::HalfOpen));
        assert_eq!(r.generation, 4);
        // Probes trickle in; a decision needs min_requests of them.
        r.merge(&p, T0 + 31_000, &outcomes(&r, 19, 0));
        assert_eq!(r.advance(&p, T0 + 31_000), None);
        r.merge(&p, T0 + 31_500, &outcomes(&r, 1, 1));
        let t = r.advance(&p, T0 + 31_500).unwrap();
        assert_eq!((t.to, t.requests, t.failures), (State::Closed, 20, 1));
        assert!(
            r.buckets.is_empty(),
            "a closed breaker starts with a clean window"
        );
    }

    #[test]
    fn failing_probes_reopen() {
        let p = policy();
        let mut r = Record {
            state: State::HalfOpen,
            generation: 7,
            since_ms: T0,
            ..Record::default()
        };
        r.merge(&p, T0 + 10, &outcomes(&r, 20, 4));
        let t = r.advance(&p, T0 + 10).unwrap();
        assert_eq!((t.from, t.to), (State::HalfOpen, State::Open));
        assert_eq!(r.since_ms, T0 + 10);
    }

    #[test]
    fn stale_outcomes_are_discarded() {
        let p = policy();
        let mut r = Record {
            state: State::HalfOpen,
            generation: 2,
            since_ms: T0,
            ..Record::default()
        };
        // Counted while the worker still believed the breaker closed (generation 0).
        r.merge(
            &p,
            T0,
            &Outcomes {
                generation: 0,
                requests: 100,
                failures: 100,
            },
        );
        assert_eq!(r.counts(), (0, 0));
        let mut o = Outcomes::default();
        o.add(0, true);
        o.add(0, false);
        assert_eq!((o.requests, o.failures), (2, 1));
        o.add(2, true);
        assert_eq!(
            o,
            Outcomes {
                generation: 2,
                requests: 1,
                failures: 1
            }
        );
    }

    #[test]
    fn would_advance_predicts_without_changing() {
        let p = policy();
        let r = Record::default();
        assert!(!r.would_advance(&p, T0, &outcomes(&r, 19, 19)));
        assert!(r.would_advance(&p, T0, &outcomes(&r, 20, 20)));
        assert_eq!(r, Record::default());
    }

    #[test]
    fn encoding_round_trips_and_rejects_garbage() {
        let r = Record {
            state: State::HalfOpen,
            generation: 9,
            since_ms: T0,
            buckets: vec![
                Bucket {
                    slice: 5,
                    requests: 7,
                    failures: 6,
                },
                Bucket {
                    slice: 8,
                    requests: 10,
                    failures: 9,
                },
            ],
            probe_requests: 12,
            probe_failures: 11,
        };
        assert_eq!(Record::decode(&r.encode()), Some(r.clone()));
        assert_eq!(
            Record::decode(&Record::default().encode()),
            Some(Record::default())
        );
        assert_eq!(Record::decode(&[]), None);
        assert_eq!(Record::decode(&[9; 36]), None);
        let mut truncated = r.encode();
        truncated.pop();
        assert_eq!(Record::decode(&truncated), None);
        truncated.truncate(HEADER_LEN + 8);
        assert_eq!(Record::decode(&truncated), None);
    }

    fn sample() -> Record {
        Record {
            state: State::Closed,
            generation: 4,
            since_ms: T0,
            buckets: vec![
                Bucket {
                    slice: 5,
                    requests: 6,
                    failures: 1,
                },
                Bucket {
                    slice: 8,
                    requests: 9,
                    failures: 9,
                },
            ],
            probe_requests: 0,
            probe_failures: 0,
        }
    }

    #[test]
    fn every_truncation_and_extension_of_a_record_is_no_record() {
        let bytes = sample().encode();
        for len in 0..bytes.len() {
            assert_eq!(Record::decode(&bytes[..len]), None, "first {len} bytes");
        }
        for extra in 1..=24 {
            let mut longer = bytes.clone();
            longer.extend(std::iter::repeat_n(0u8, extra));
            // A whole extra bucket of zeros is out of order (second 0 after 8): rejected too.
            assert_eq!(Record::decode(&longer), None, "{extra} extra bytes");
        }
    }

    #[test]
    fn garbage_and_records_of_other_formats_are_no_record() {
        // The previous format (no tag): state byte, then words. Must not be misread.
        let mut old_format = vec![1u8];
        for v in [3u64, T0, 0, 0] {
            old_format.extend_from_slice(&v.to_le_bytes());
        }
        assert_eq!(Record::decode(&old_format), None);
        let mut other_version = sample().encode();
        other_version[1] = 3;
        assert_eq!(Record::decode(&other_version), None);
        let mut bad_state = sample().encode();
        bad_state[2] = 7;
        assert_eq!(Record::decode(&bad_state), None);
        let mut bad_count = sample().encode();
        bad_count[3] = 1;
        assert_eq!(
            Record::decode(&bad_count),
            None,
            "one bucket announced, two present"
        );
        // Inconsistent contents.
        let mut r = sample();
        r.buckets[1].failures = 10;
        assert_eq!(Record::decode(&r.encode()), None, "failures > requests");
        let mut r = sample();
        r.buckets.swap(0, 1);
        assert_eq!(Record::decode(&r.encode()), None, "buckets out of order");
        let mut r = sample();
        r.buckets[1].slice = 5;
        assert_eq!(Record::decode(&r.encode()), None, "a bucket twice");
        let r = Record {
            probe_requests: 1,
            probe_failures: 2,
            ..sample()
        };
        assert_eq!(Record::decode(&r.encode()), None, "probe failures > probes");
        let r = Record {
            buckets: (0..=MAX_BUCKETS)
                .map(|slice| Bucket {
                    slice,
                    requests: 1,
                    failures: 0,
                })
                .collect(),
            ..sample()
        };
        assert_eq!(
            Record::decode(&r.encode()),
            None,
            "more buckets than a window"
        );
        // Pseudo-random bytes of every length up to three buckets: never a panic, and
        // whatever decodes re-encodes to the very same bytes (nothing misread or dropped).
        let mut x: u64 = 0x1234_5678;
        for len in 0..(HEADER_LEN + 3 * 24 + 2) {
            for _ in 0..200 {
                let mut bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect();
                if len >= 4 {
                    bytes[0] = b'B';
                    bytes[1] = 2;
                    bytes[2] %= 4;
                    // Mostly the right bucket count for the length, to reach the contents.
                    if bytes[3] % 4 != 0 {
                        bytes[3] = (len.saturating_sub(HEADER_LEN) / 24) as u8;
                    }
                }
                if let Some(r) = Record::decode(&bytes) {
                    assert_eq!(r.encode(), bytes);
                }
            }
        }
    }

    #[test]
    fn a_backward_clock_step_never_stretches_an_open_period() {
        let p = policy();
        // Opened at T0 + 1 h by a clock that then stepped back one hour.
        let mut r = Record {
            state: State::Open,
            generation: 1,
            since_ms: T0 + 3_600_000,
            ..Record::default()
        };
        assert!(r.rebase_clock(T0));
        assert_eq!(r.advance(&p, T0 + 29_999), None);
        let t = r.advance(&p, T0 + 30_000).map(|t| t.to);
        assert_eq!(
            t,
            Some(State::HalfOpen),
            "open for open_s after the step, not 1 h more"
        );
        assert!(!r.rebase_clock(T0 + 30_000));
    }

    #[test]
    fn buckets_from_the_future_leave_the_window() {
        let p = policy();
        let mut r = Record::default();
        // 30 failures counted at T0 + 1 h, then the clock is at T0.
        r.merge(&p, T0 + 3_600_000, &outcomes(&r, 30, 30));
        r.merge(&p, T0, &outcomes(&r, 1, 0));
        assert_eq!(r.counts(), (1, 0));
        assert_eq!(r.advance(&p, T0), None);
    }

    #[test]
    fn keys_keep_instances_and_clusters_apart() {
        let a = instance_scope(&[b"traffic-split", b"root", b"0", b""]);
        assert_eq!(a, instance_scope(&[b"traffic-split", b"root", b"0", b""]));
        assert_eq!(a.len(), 16);
        // Another listener direction, metadata, name or root id: another instance.
        for other in [
            instance_scope(&[b"traffic-split", b"root", b"1", b""]),
            instance_scope(&[b"traffic-split", b"root", b"0", b"md"]),
            instance_scope(&[b"other", b"root", b"0", b""]),
            instance_scope(&[b"traffic-split", b"root2", b"0", b""]),
            // Parts are length-prefixed: moving bytes between parts changes the scope.
            instance_scope(&[b"traffic-spli", b"troot", b"0", b""]),
        ] {
            assert_ne!(a, other);
        }
        let key = record_key(&a, "checkout", "canary", "checkout-v2");
        assert_eq!(
            key,
            format!("traffic-split/breaker/v2/{a}/checkout/canary/checkout-v2")
        );
        assert_ne!(key, record_key(&a, "checkout", "canary", "checkout-v3"));
        assert_ne!(key, record_key(&a, "checkout", "stable", "checkout-v2"));
    }

    /// Envoy's shared data as the host sees it: a write to an absent key, or without a token,
    /// is unconditional; each write gets a new token.
    #[derive(Default)]
    struct Mem {
        values: std::collections::HashMap<String, (Vec<u8>, u32)>,
        next_cas: u32,
        gets: usize,
        /// Every write's token argument.
        writes: Vec<Option<u32>>,
        /// Makes this many writes lose, as if another worker wrote first.
        lose: usize,
    }

    impl Mem {
        fn bump(&mut self, key: &str) {
            self.next_cas += 1;
            if let Some(v) = self.values.get_mut(key) {
                v.1 = self.next_cas;
            }
        }
    }

    impl SharedStore for Mem {
        fn get(&mut self, key: &str) -> Result<Option<(Vec<u8>, u32)>, ReadFailed> {
            self.gets += 1;
            Ok(self.values.get(key).cloned())
        }
        fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> SetResult {
            self.writes.push(cas);
            if self.lose > 0 {
                self.lose -= 1;
                self.bump(key);
                return SetResult::Conflict;
            }
            if let (Some(cas), Some((_, current))) = (cas, self.values.get(key)) {
                if cas != *current {
                    return SetResult::Conflict;
                }
            }
            self.next_cas += 1;
            self.values
                .insert(key.to_string(), (value.to_vec(), self.next_cas));
            SetResult::Written
        }
    }

    /// A store shared by two workers, where `worker_b` runs between worker A's read and write.
    struct Racing<'a> {
        mem: &'a std::cell::RefCell<Mem>,
        before_set: Option<Box<dyn FnOnce() + 'a>>,
    }

    impl SharedStore for Racing<'_> {
        fn get(&mut self, key: &str) -> Result<Option<(Vec<u8>, u32)>, ReadFailed> {
            self.mem.borrow_mut().get(key)
        }
        fn set(&mut self, key: &str, value: &[u8], cas: Option<u32>) -> SetResult {
            if let Some(run) = self.before_set.take() {
                run();
            }
            self.mem.borrow_mut().set(key, value, cas)
        }
    }

    fn tripping(p: &BreakerPolicy) -> Publisher {
        let mut w = Publisher::default();
        for _ in 0..p.min_requests {
            w.pending.add(0, true);
        }
        w
    }

    #[test]
    fn two_workers_tripping_at_once_make_one_transition() {
        let p = policy();
        let mem = std::cell::RefCell::new(Mem::default());
        assert!(create_record(&mut *mem.borrow_mut(), "k"));
        assert!(create_record(&mut *mem.borrow_mut(), "k"), "idempotent");
        assert_eq!(
            mem.borrow().writes,
            vec![None],
            "created once, unconditionally"
        );
        let mut a = tripping(&p);
        let mut b = tripping(&p);
        let b_result = std::cell::Cell::new(Published::default());
        let mut store = Racing {
            mem: &mem,
            before_set: Some(Box::new(|| {
                let mut plain = Racing {
                    mem: &mem,
                    before_set: None,
                };
                b_result.set(b.publish(&mut plain, "k", &p, T0));
            })),
        };
        let a_result = a.publish(&mut store, "k", &p, T0);
        let b_result = b_result.get();
        // B wrote first and opened it; A lost its write, re-read, found it open, and its
        // failures (counted while closed) are stale: one transition in all.
        assert_eq!(b_result.transition.map(|t| t.to), Some(State::Open));
        assert_eq!(a_result.transition, None);
        assert_eq!(a_result.conflicts, 1);
        assert!(a_result.synced);
        assert_eq!(a.record.generation, 1);
        assert_eq!(
            a.pending,
            Outcomes {
                generation: 1,
                requests: 0,
                failures: 0
            }
        );
        // Every write after the creation was a compare-and-swap.
        assert!(mem.borrow().writes[1..].iter().all(Option::is_some));
    }

    #[test]
    fn a_lost_race_keeps_the_outcomes_for_the_retry() {
        let p = policy();
        let mut mem = Mem::default();
        create_record(&mut mem, "k");
        let mut w = Publisher::default();
        for _ in 0..5 {
            w.pending.add(0, true);
        }
        mem.lose = 1;
        let r = w.publish(&mut mem, "k", &p, T0);
        assert_eq!((r.synced, r.conflicts), (true, 1));
        let stored = Record::decode(&mem.values["k"].0).unwrap();
        assert_eq!(stored.counts(), (5, 5));
    }

    #[test]
    fn publishes_that_keep_losing_back_off_without_touching_the_store() {
        let p = policy();
        let mut mem = Mem::default();
        create_record(&mut mem, "k");
        let mut w = Publisher::default();
        w.pending.add(0, true);
        mem.lose = usize::MAX;
        let r = w.publish(&mut mem, "k", &p, T0);
        assert_eq!((r.synced, r.conflicts), (false, PUBLISH_ATTEMPTS));
        assert_eq!(w.pending.requests, 1, "outcomes kept for later");
        // Responses during the back-off cost no shared-data call at all.
        let (gets, writes) = (mem.gets, mem.writes.len());
        for t in 0..BACKOFF_MIN_MS {
            assert!(!w.may_publish(T0 + t));
            assert_eq!(
                w.publish_if_due(&mut mem, "k", &p, T0 + t),
                Published::default()
            );
        }
        assert_eq!((mem.gets, mem.writes.len()), (gets, writes));
        // Then it tries again, and backs off twice as long after losing again.
        assert!(w.may_publish(T0 + BACKOFF_MIN_MS));
        let r = w.publish_if_due(&mut mem, "k", &p, T0 + BACKOFF_MIN_MS);
        assert_eq!(r.conflicts, PUBLISH_ATTEMPTS);
        assert!(!w.may_publish(T0 + 3 * BACKOFF_MIN_MS - 1));
        assert!(w.may_publish(T0 + 3 * BACKOFF_MIN_MS));
        // The back-off is bounded, and a success resets it.
        let mut now = T0 + 3 * BACKOFF_MIN_MS;
        for _ in 0..10 {
            w.publish_if_due(&mut mem, "k", &p, now);
            now += BACKOFF_MAX_MS;
        }
        assert!(w.may_publish(now));
        mem.lose = 0;
        let r = w.publish_if_due(&mut mem, "k", &p, now);
        assert!(r.synced);
        w.pending.add(0, true);
        mem.lose = usize::MAX;
        w.publish_if_due(&mut mem, "k", &p, now);
        assert!(w.may_publish(now + BACKOFF_MIN_MS));
        // The tick publishes even while backing off, so nothing counted is left behind.
        mem.lose = 0;
        assert!(!w.may_publish(now));
        let r = w.publish(&mut mem, "k", &p, now);
        assert!(r.synced);
        assert_eq!(w.pending.requests, 0);
    }

    #[test]
    fn the_state_gauge_is_released_only_by_its_last_owner() {
        let mut mem = Mem::default();
        let gauge = "g";
        let old = gauge_owner(b"config 1", "k/cluster-a");
        assert_eq!(owner_record_key(&old), "k/cluster-a");
        assert_eq!(claim_gauge(&mut mem, gauge, &old), None);
        assert!(owns_gauge(&mut mem, gauge, &old));
        // An update that keeps the breaker and its cluster (same record key): the new
        // configuration claims the gauge; the old one, going away, leaves it alone.
        let kept = gauge_owner(b"config 2", "k/cluster-a");
        assert_ne!(kept, old);
        assert_eq!(claim_gauge(&mut mem, gauge, &kept), Some(old.clone()));
        assert_eq!(claim_gauge(&mut mem, gauge, &kept), None, "a second worker");
        assert!(!owns_gauge(&mut mem, gauge, &old));
        assert!(!release_gauge(&mut mem, gauge, &old));
        assert!(owns_gauge(&mut mem, gauge, &kept));
        // An update that repoints it to another cluster: the same.
        let repointed = gauge_owner(b"config 3", "k/cluster-b");
        assert_eq!(claim_gauge(&mut mem, gauge, &repointed), Some(kept.clone()));
        assert!(!release_gauge(&mut mem, gauge, &kept));
        // An update that removes it: nobody claims the gauge, so the configuration going
        // away still owns it and releases it (the caller sets it to 0), once.
        assert!(release_gauge(&mut mem, gauge, &repointed));
        assert!(
            !release_gauge(&mut mem, gauge, &repointed),
            "the other workers"
        );
        assert!(!owns_gauge(&mut mem, gauge, &repointed));
        // Released, then claimed again: no previous owner to report.
        assert_eq!(claim_gauge(&mut mem, gauge, &old), None);
    }

    #[test]
    fn a_new_configuration_starts_from_the_shared_state() {
        let p = policy();
        let mut mem = Mem::default();
        create_record(&mut mem, "k");
        let mut w = tripping(&p);
        assert!(w.publish(&mut mem, "k", &p, T0).transition.is_some());
        let fresh = Publisher::load(&mut mem, "k");
        assert_eq!(
            (fresh.record.state, fresh.record.generation),
            (State::Open, 1)
        );
        assert_eq!(
            fresh.pending.generation, 1,
            "its outcomes count under the open state"
        );
        assert_eq!(
            Publisher::load(&mut mem, "absent").record,
            Record::default()
        );
    }

    #[test]
    fn a_record_with_huge_counts_never_overflows() {
        // Counts and generation another writer left at the top of the range: the state
        // machine saturates (or, for the generation, wraps) instead of overflowing, which
        // would panic in a checked build and misread in the VM.
        let p = policy();
        let huge = Record {
            state: State::Closed,
            generation: u64::MAX,
            since_ms: T0,
            buckets: vec![
                Bucket {
                    slice: T0 / 1000 - 1,
                    requests: u64::MAX,
                    failures: u64::MAX,
                },
                Bucket {
                    slice: T0 / 1000,
                    requests: u64::MAX - 1,
                    failures: 0,
                },
            ],
            probe_requests: 0,
            probe_failures: 0,
        };
        let mut r = Record::decode(&huge.encode()).unwrap();
        r.merge(&p, T0, &outcomes(&r, u64::MAX, u64::MAX));
        assert_eq!(r.counts(), (u64::MAX, u64::MAX));
        let t = r.advance(&p, T0).unwrap();
        assert_eq!((t.to, r.generation), (State::Open, 0));
        assert_eq!(percent_text(t.failures, t.requests), "100.0%");
        let mut half_open = Record {
            state: State::HalfOpen,
            probe_requests: u64::MAX,
            probe_failures: 1,
            ..Record::default()
        };
        half_open.merge(&p, T0, &outcomes(&half_open, 5, 5));
        assert_eq!(half_open.counts(), (u64::MAX, 6));
    }

    #[test]
    fn an_unreadable_record_is_replaced_with_compare_and_swap() {
        let p = policy();
        let mut mem = Mem::default();
        mem.values.insert("k".into(), (vec![0xff; 7], 41));
        mem.next_cas = 41;
        let mut w = Publisher::default();
        w.pending.add(0, true);
        let r = w.publish(&mut mem, "k", &p, T0);
        assert!(r.synced);
        assert_eq!(mem.writes, vec![Some(41)]);
        assert_eq!(Record::decode(&mem.values["k"].0).unwrap().counts(), (1, 1));
    }

    #[test]
    fn failure_statuses_and_text() {
        let p = BreakerPolicy {
            failure_statuses: vec![StatusMatch::Class(5), StatusMatch::Exact(429)],
            ..policy()
        };
        assert!(p.is_failure_status(500));
        assert!(p.is_failure_status(504));
        assert!(p.is_failure_status(429));
        assert!(!p.is_failure_status(404));
        assert!(!p.is_failure_status(200));
        assert_eq!(percent_text(25, 120), "20.8%");
        assert_eq!(percent_text(0, 0), "0.0%");
        assert_eq!(p.failure_ratio_text(), "20.0%");
        let p = BreakerPolicy {
            failure_ratio: 0.125,
            ..policy()
        };
        assert_eq!(p.failure_ratio_text(), "12.5%");
    }
}
