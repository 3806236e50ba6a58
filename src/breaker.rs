//! Health-aware splitting: a circuit breaker per destination (a version, not a host).
//!
//! The breaker's record is shared by every worker of the Envoy process (the host keeps it in
//! shared data, updated with compare-and-swap); each worker adds the outcomes it saw since its
//! last publish and moves the state machine on. This module is the pure part: the record, its
//! transitions (with an injected clock) and its byte encoding.
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
    pub second: u64,
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
        self.requests += 1;
        self.failures += u64::from(failed);
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
                let second = now_ms / 1000 / policy.bucket_s();
                self.prune(policy, second);
                match self.buckets.last_mut() {
                    Some(b) if b.second == second => {
                        b.requests += outcomes.requests;
                        b.failures += outcomes.failures;
                    }
                    _ => self.buckets.push(Bucket {
                        second,
                        requests: outcomes.requests,
                        failures: outcomes.failures,
                    }),
                }
            }
            State::HalfOpen => {
                self.probe_requests += outcomes.requests;
                self.probe_failures += outcomes.failures;
            }
            // Requests decided while open went to the fallback: nothing of ours to count.
            State::Open => {}
        }
    }

    /// Requests and failures in the window (closed) or among the probes (half-open).
    pub fn counts(&self) -> (u64, u64) {
        match self.state {
            State::Closed => self
                .buckets
                .iter()
                .fold((0, 0), |(r, f), b| (r + b.requests, f + b.failures)),
            State::HalfOpen => (self.probe_requests, self.probe_failures),
            State::Open => (0, 0),
        }
    }

    /// Drops buckets that left the window (`slice` is the current bucket number).
    fn prune(&mut self, policy: &BreakerPolicy, slice: u64) {
        let slices = policy.window_s.div_ceil(policy.bucket_s());
        let oldest = slice.saturating_sub(slices.saturating_sub(1));
        self.buckets.retain(|b| b.second >= oldest);
    }

    /// Moves the state machine on at `now_ms`; returns the transition, if any.
    pub fn advance(&mut self, policy: &BreakerPolicy, now_ms: u64) -> Option<Transition> {
        if self.state == State::Closed {
            self.prune(policy, now_ms / 1000 / policy.bucket_s());
        }
        let (requests, failures) = self.counts();
        let to = match self.state {
            State::Closed if policy.trips(requests, failures) => State::Open,
            State::Open if now_ms.saturating_sub(self.since_ms) >= policy.open_s * 1000 => {
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
            generation: self.generation + 1,
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

    /// Little-endian bytes: state, generation, since, probes, then the buckets.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(33 + self.buckets.len() * 24);
        out.push(self.state as u8);
        for v in [
            self.generation,
            self.since_ms,
            self.probe_requests,
            self.probe_failures,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for b in &self.buckets {
            for v in [b.second, b.requests, b.failures] {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        out
    }

    /// `None` for bytes this version did not write: the caller starts afresh.
    pub fn decode(bytes: &[u8]) -> Option<Record> {
        let (&state, rest) = bytes.split_first()?;
        let mut words = rest.chunks_exact(8);
        if !words.remainder().is_empty() {
            return None;
        }
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
        while let Some(second) = next() {
            record.buckets.push(Bucket {
                second,
                requests: next()?,
                failures: next()?,
            });
        }
        Some(record)
    }
}

/// `failures` of `requests` as a percentage with one decimal, without float formatting.
pub fn percent_text(failures: u64, requests: u64) -> String {
    permille_text((failures * 1000).checked_div(requests).unwrap_or(0))
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
        assert!(r.encode().len() <= 33 + 60 * 24);
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
                    second: 5,
                    requests: 6,
                    failures: 7,
                },
                Bucket {
                    second: 8,
                    requests: 9,
                    failures: 10,
                },
            ],
            probe_requests: 11,
            probe_failures: 12,
        };
        assert_eq!(Record::decode(&r.encode()), Some(r.clone()));
        assert_eq!(
            Record::decode(&Record::default().encode()),
            Some(Record::default())
        );
        assert_eq!(Record::decode(&[]), None);
        assert_eq!(Record::decode(&[9; 33]), None);
        let mut truncated = r.encode();
        truncated.pop();
        assert_eq!(Record::decode(&truncated), None);
        truncated.truncate(33 + 8);
        assert_eq!(Record::decode(&truncated), None);
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
