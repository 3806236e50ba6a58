//! How the workers of one Envoy judge the same numbers: one shared record per rule and
//! configuration holds the current window's counts of both arms (every worker merges its own in
//! with compare-and-swap on its tick) and the streak. The first worker whose tick falls in a
//! new window (windows are aligned to the wall clock: `now_s / window_s`) closes the old one:
//! it evaluates it, moves the streak on, and is the one that reports it and acts.

use super::srm::Distinct;
use super::{Arm, Evaluation, Histogram, JudgePolicy, Streak, Tally, Verdict, LATENCY_BUCKETS};
use crate::breaker::{ReadFailed, SetResult, SharedStore, PUBLISH_ATTEMPTS};

/// The shared-data key of a rule's judge: the filter instance, the rule and a digest of the
/// configuration, so a configuration change starts the judge afresh (and lifts an abort, as
/// it does a rollout's). The version in the key is the record's format (`FORMAT`): a build that
/// cannot read another build's record (a rolling upgrade inside one Envoy) uses its own key
/// instead of overwriting that record with an empty one.
pub fn judge_key(scope: &str, rule: &str, config_id: &str) -> String {
    format!("traffic-split/judge/v2/{scope}/{rule}/{config_id}")
}

/// The shared state of one judge.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JudgeRecord {
    /// The window being counted (`now_s / window_s`).
    pub window: u64,
    pub tally: Tally,
    /// Windows judged so far under this configuration.
    pub judged: u64,
    pub streak: Streak,
    pub last_verdict: Verdict,
}

/// A window this publish closed (only the worker whose write closed it gets one).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Judged {
    /// 1-based: the how-manieth window judged under this configuration.
    pub ordinal: u64,
    pub evaluation: Evaluation,
    /// This window triggered `on_fail`.
    pub triggered_now: bool,
    pub streak: Streak,
}

/// What one `publish` learnt.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Synced {
    /// The shared record was read (and written if needed).
    pub synced: bool,
    /// `on_fail` ran (by any worker) under this configuration.
    pub triggered: bool,
    pub last_verdict: Verdict,
    /// The window the record counts now (the last judged one is the one before it).
    pub window: u64,
    pub closed: Option<Judged>,
    pub conflicts: u32,
}

/// How often a worker merges its counts into the shared record within a window, at most
/// (besides the first tick of a window and the last one before it ends).
pub const FLUSH_MS: u64 = 1_000;

/// Whether a worker's tick at `now_ms` (wall clock) must `publish`: on its first tick in a
/// window (to close the last one, or learn its verdict and whether `on_fail` ran: both only
/// change when a window closes), on its last tick before the window ends (`tick_ms` from now;
/// so the window's counts are in its record when the next one closes it), and at most every
/// `FLUSH_MS` between. `last`: the window and time of this worker's last synced publish.
/// Every other tick leaves the counts in the VM: no shared-data read or write.
pub fn publish_due(now_ms: u64, window_s: u64, tick_ms: u64, last: Option<(u64, u64)>) -> bool {
    let window_ms = window_s.max(1).saturating_mul(1000);
    let window = now_ms / window_ms;
    let Some((last_window, last_ms)) = last else {
        return true;
    };
    let ends_before_next_tick =
        now_ms.saturating_add(tick_ms) >= window.saturating_add(1).saturating_mul(window_ms);
    last_window != window || ends_before_next_tick || now_ms.saturating_sub(last_ms) >= FLUSH_MS
}

/// Merges `pending` (this worker's outcomes since its last publish) into the shared record,
/// closing the record's window first when `window` (the current one) is later. `pending` is
/// emptied once written; kept when every attempt lost its race.
/// `shares` are the destinations' expected shares (bucket counts in force) for the SRM test.
pub fn publish(
    store: &mut impl SharedStore,
    key: &str,
    policy: &JudgePolicy,
    window: u64,
    pending: &mut Tally,
    shares: &[u32],
) -> Synced {
    let mut done = Synced::default();
    // Nothing to add and the window still open: the record's head says all (no decoding of
    // its histograms on an idle tick).
    if pending.is_empty() {
        if let Ok(Some((bytes, _))) = store.get(key) {
            if let Some(head) = JudgeRecord::head(&bytes).filter(|h| h.window >= window) {
                done.synced = true;
                done.triggered = head.streak.triggered;
                done.last_verdict = head.last_verdict;
                done.window = head.window;
                return done;
            }
        }
    }
    for _ in 0..PUBLISH_ATTEMPTS {
        let (mut record, cas) = match store.get(key) {
            Ok(Some((bytes, cas))) => (JudgeRecord::decode(&bytes).unwrap_or_default(), cas),
            Ok(None) => {
                let fresh = JudgeRecord {
                    window,
                    ..JudgeRecord::default()
                };
                if store.set(key, &fresh.encode(), None) != SetResult::Written {
                    return done;
                }
                continue;
            }
            Err(ReadFailed) => return done,
        };
        let mut closed = None;
        if record.window < window {
            let mut evaluation = policy.evaluate(&record.tally);
            if !record.tally.users.is_empty() {
                evaluation.srm = super::srm::srm(&record.tally.users, shares);
            }
            let triggered_now = record.streak.after_window(&evaluation, policy.fail_after);
            record.judged = record.judged.saturating_add(1);
            record.last_verdict = evaluation.verdict;
            closed = Some(Judged {
                ordinal: record.judged,
                evaluation,
                triggered_now,
                streak: record.streak,
            });
            record.window = window;
            record.tally = Tally::default();
        }
        let merges = !pending.is_empty();
        record.tally.merge(pending);
        if merges || closed.is_some() {
            match store.set(key, &record.encode(), Some(cas)) {
                SetResult::Written => {}
                SetResult::Conflict => {
                    done.conflicts += 1;
                    continue;
                }
                SetResult::Failed => return done,
            }
        }
        *pending = Tally::default();
        done.synced = true;
        done.triggered = record.streak.triggered;
        done.last_verdict = record.last_verdict;
        done.window = record.window;
        done.closed = closed;
        return done;
    }
    done
}

const FORMAT: [u8; 2] = [b'J', 2];

impl JudgeRecord {
    /// Little-endian: format, window, judged, streak, triggered, verdict, then each arm's
    /// requests, failures, non-empty bucket count and (bucket, count) pairs; then the number of
    /// destinations with users and, for each, 0 and its exact hashes (count, u64s) or 1 and its
    /// sketch's `srm::REGISTERS` registers.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(&FORMAT);
        out.extend_from_slice(&self.window.to_le_bytes());
        out.extend_from_slice(&self.judged.to_le_bytes());
        out.extend_from_slice(&self.streak.failing.to_le_bytes());
        out.push(u8::from(self.streak.triggered));
        out.push(self.last_verdict as u8);
        for arm in [&self.tally.canary, &self.tally.baseline] {
            out.extend_from_slice(&arm.requests.to_le_bytes());
            out.extend_from_slice(&arm.failures.to_le_bytes());
            let buckets: Vec<(usize, u32)> = arm.latency.nonzero().collect();
            // At most LATENCY_BUCKETS (< 65536) by construction.
            out.extend_from_slice(&(buckets.len() as u16).to_le_bytes());
            for (i, c) in buckets {
                out.extend_from_slice(&(i as u16).to_le_bytes());
                out.extend_from_slice(&c.to_le_bytes());
            }
        }
        // At most MAX_DESTINATIONS sets of at most EXACT_USERS hashes.
        out.push(self.tally.users.len() as u8);
        for d in &self.tally.users {
            match d {
                Distinct::Exact(hashes) => {
                    out.push(0);
                    out.extend_from_slice(&(hashes.len() as u16).to_le_bytes());
                    for h in hashes {
                        out.extend_from_slice(&h.to_le_bytes());
                    }
                }
                Distinct::Sketch(_) => {
                    out.push(1);
                    out.extend_from_slice(d.registers().unwrap_or_default());
                }
            }
        }
        out
    }

    /// The fixed head of an encoded record (window, judged, streak, verdict; no counts).
    pub fn head(bytes: &[u8]) -> Option<JudgeRecord> {
        let mut r = Reader(bytes.strip_prefix(&FORMAT)?);
        Self::read_head(&mut r)
    }

    fn read_head(r: &mut Reader<'_>) -> Option<JudgeRecord> {
        let mut record = JudgeRecord {
            window: r.u64()?,
            judged: r.u64()?,
            ..JudgeRecord::default()
        };
        record.streak.failing = u32::from_le_bytes(r.take()?);
        record.streak.triggered = match r.take::<1>()? {
            [0] => false,
            [1] => true,
            _ => return None,
        };
        record.last_verdict = Verdict::from_byte(r.take::<1>()?[0])?;
        Some(record)
    }

    /// `None` for anything this version would not have written. Never panics.
    pub fn decode(bytes: &[u8]) -> Option<JudgeRecord> {
        let mut r = Reader(bytes.strip_prefix(&FORMAT)?);
        let mut record = Self::read_head(&mut r)?;
        for arm in [&mut record.tally.canary, &mut record.tally.baseline] {
            *arm = Arm {
                requests: r.u64()?,
                failures: r.u64()?,
                latency: Histogram::default(),
            };
            if arm.failures > arm.requests {
                return None;
            }
            let n = u16::from_le_bytes(r.take()?);
            let mut last = None;
            for _ in 0..n {
                let i = usize::from(u16::from_le_bytes(r.take()?));
                let c = u32::from_le_bytes(r.take()?);
                if i >= LATENCY_BUCKETS || c == 0 || last.is_some_and(|l| l >= i) {
                    return None;
                }
                last = Some(i);
                arm.latency.add_count(i, c);
            }
        }
        let sets = r.take::<1>()?[0];
        if usize::from(sets) > crate::plan::MAX_DESTINATIONS {
            return None;
        }
        for _ in 0..sets {
            let d = match r.take::<1>()? {
                [0] => {
                    let n = usize::from(u16::from_le_bytes(r.take()?));
                    if n > super::srm::EXACT_USERS {
                        return None;
                    }
                    let mut hashes = Vec::with_capacity(n);
                    for _ in 0..n {
                        let h = r.u64()?;
                        if hashes.last().is_some_and(|&l| l >= h) {
                            return None;
                        }
                        hashes.push(h);
                    }
                    Distinct::Exact(hashes)
                }
                [1] => Distinct::from_registers(r.bytes(super::srm::REGISTERS)?)?,
                _ => return None,
            };
            record.tally.users.push(d);
        }
        r.0.is_empty().then_some(record)
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }

    fn bytes(&mut self, n: usize) -> Option<&[u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_le_bytes)
    }
}
