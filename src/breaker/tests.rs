//! The state machine, the record encoding and the publish algorithm, with an injected clock
//! and an in-memory store.

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
        grpc_failure_codes: vec![4, 13, 14],
        slow_ms: None,
        consecutive_failures: None,
    }
}

fn outcomes(r: &Record, requests: u64, failures: u64) -> Outcomes {
    Outcomes {
        generation: r.generation,
        requests,
        failures,
        ..Outcomes::default()
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
            ..Outcomes::default()
        },
    );
    assert_eq!(r.counts(), (0, 0));
    // A worker's pending outcomes follow the generation it last published under: outcomes
    // decided under any other one are dropped, in either order.
    let mut o = Outcomes::default();
    o.add(0, true);
    o.add(0, false);
    assert_eq!((o.requests, o.failures), (2, 1));
    o.add(2, true);
    assert_eq!(
        o,
        Outcomes {
            generation: 0,
            requests: 2,
            failures: 1,
            streak: 0,
            peak: 1,
        }
    );
}

/// During an outage the slow failing answers decided while closed arrive after the breaker
/// went half-open: they must not wipe the probe outcomes counted since (which would stretch
/// half-open), nor count as probes.
#[test]
fn late_answers_of_an_older_generation_keep_the_probe_outcomes() {
    let p = policy();
    let mut mem = Mem::default();
    let half_open = Record {
        state: State::HalfOpen,
        generation: 2,
        since_ms: T0,
        ..Record::default()
    };
    mem.values.insert("k".to_string(), (half_open.encode(), 1));
    let mut w = Publisher::load(&mut mem, "k");
    assert_eq!(w.pending.generation, 2);
    // Probes decided under generation 2 answer first: 19 successes...
    for _ in 0..19 {
        w.pending.add(2, false);
    }
    // ...then a slow failure decided under generation 0 (closed, before the outage opened
    // the breaker) arrives, then a last probe success.
    w.pending.add(0, true);
    w.pending.add(2, false);
    assert_eq!(
        (w.pending.generation, w.pending.requests, w.pending.failures),
        (2, 20, 0)
    );
    // 20 healthy probes close the breaker at the next publish.
    let done = w.publish(&mut mem, "k", &p, T0 + 1000);
    let t = done.transition.expect("the probes decide");
    assert_eq!(
        (t.from, t.to, t.requests, t.failures),
        (State::HalfOpen, State::Closed, 20, 0)
    );
    // And the same late answer after the publish is dropped, not counted under the new one.
    w.pending.add(2, true);
    assert_eq!((w.pending.generation, w.pending.requests), (3, 0));
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
        streak_tripped: false,
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
        streak_tripped: false,
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
            ..Outcomes::default()
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
        streak_tripped: false,
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

#[test]
fn consecutive_failures_open_at_once_after_a_long_healthy_stretch() {
    // The case: 2,000 healthy requests in the window, then 503s. The ratio would need
    // ~500 failures; 5 in a row on one worker open the breaker at that worker's next publish.
    let p = BreakerPolicy {
        consecutive_failures: Some(5),
        ..policy()
    };
    let mut mem = Mem::default();
    let key = "k";
    assert!(create_record(&mut mem, key));
    let mut worker = Publisher::load(&mut mem, key);
    for _ in 0..2000 {
        worker.pending.add(worker.record.generation, false);
    }
    assert!(worker.publish(&mut mem, key, &p, T0).synced);
    assert_eq!(worker.record.counts(), (2000, 0));
    // Four failures, a publish in between (a tick): the run continues across it.
    for _ in 0..2 {
        worker.pending.add(worker.record.generation, true);
    }
    assert!(!worker.record.would_advance(&p, T0 + 10, &worker.pending));
    worker.publish(&mut mem, key, &p, T0 + 10);
    for _ in 0..2 {
        worker.pending.add(worker.record.generation, true);
    }
    assert!(!worker.record.would_advance(&p, T0 + 20, &worker.pending));
    worker.pending.add(worker.record.generation, true);
    // The fifth in a row: the response publishes at once (`would_advance`), and it opens.
    assert!(worker.record.would_advance(&p, T0 + 30, &worker.pending));
    let done = worker.publish(&mut mem, key, &p, T0 + 30);
    assert_eq!(done.transition.map(|t| t.to), Some(State::Open));
    assert!(!worker.record.streak_tripped);
    // A success breaks the run; without consecutive_failures the same run does nothing.
    let mut o = Outcomes::default();
    for failed in [true, true, true, true, false, true, true, true, true] {
        o.add(0, failed);
    }
    assert_eq!((o.streak, o.peak), (4, 4));
    let mut r = Record::default();
    r.merge(&p, T0, &o);
    assert_eq!(r.advance(&p, T0), None);
    let mut r = Record::default();
    let five = Outcomes {
        peak: 5,
        ..outcomes(&r, 2000, 5)
    };
    r.merge(&policy(), T0, &five);
    assert_eq!(r.advance(&policy(), T0), None);
}

#[test]
fn grpc_statuses_by_number() {
    let p = policy();
    assert!(p.is_failure_grpc(b"14"));
    assert!(p.is_failure_grpc(b"4"));
    assert!(!p.is_failure_grpc(b"0"));
    assert!(!p.is_failure_grpc(b"5"));
    assert!(!p.is_failure_grpc(b"UNAVAILABLE"));
    assert!(!p.is_failure_grpc(b""));
}
