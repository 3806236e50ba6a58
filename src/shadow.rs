//! Shadow policy: which requests are copied, what the copy looks like, the bulkhead that bounds
//! a slow or dead shadow, and the comparison of shadow and primary answers. Pure logic; the
//! host layer moves the bytes.

use crate::plan::ShadowPolicy;
use crate::request::HeaderPair;

/// The header every shadow copy carries, so the shadow's application can skip side effects.
pub const SHADOW_MARKER: &str = "x-shadow-request";
/// Its value without `shadow_marker_secret`.
pub const UNSIGNED_MARKER: &str = "true";
/// How long a signed marker stays valid after its copy was dispatched: a copy crosses the next
/// instance within its `timeout_ms`; the rest is room for clock skew between hosts.
pub const MARKER_MAX_AGE_S: u64 = 60;

/// Approximate per-header overhead of a header copy beyond its name and value bytes (the two
/// `String`s, and Envoy's header entry once dispatched), counted by the bulkhead.
const HEADER_OVERHEAD: u64 = 32;

/// Hop-by-hop headers describe one connection, not the request: never copied.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
];

/// The key that signs and verifies shadow markers, derived from `shadow_marker_secret`.
///
/// A signed marker is `<unix seconds>.<16 hex digits>`: SipHash-2-4 (a keyed PRF designed as a
/// MAC for short inputs) of the dispatch time under this key. Only an instance that knows the
/// secret can produce one; a value seen on a copy can be replayed for `MARKER_MAX_AGE_S`
/// seconds at most.
#[derive(Clone, PartialEq, Eq)]
pub struct MarkerKey {
    k0: u64,
    k1: u64,
}

impl std::fmt::Debug for MarkerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MarkerKey(..)") // never print the key
    }
}

/// SipHash-2-4 of `data` under (k0, k1). `SipHasher` is deprecated only as a `HashMap` hasher
/// (not as a primitive); it is the standard library's SipHash-2-4 and costs no extra code.
#[allow(deprecated)]
fn siphash(k0: u64, k1: u64, data: &[&[u8]]) -> u64 {
    use std::hash::Hasher;
    let mut h = std::hash::SipHasher::new_with_keys(k0, k1);
    for part in data {
        h.write(part);
    }
    h.finish()
}

impl MarkerKey {
    pub fn from_secret(secret: &[u8]) -> MarkerKey {
        MarkerKey {
            k0: siphash(0x7472_6166_6669_6331, 0x7368_6164_6f77_6b30, &[secret]),
            k1: siphash(0x7472_6166_6669_6332, 0x7368_6164_6f77_6b31, &[secret]),
        }
    }

    fn tag(&self, timestamp: &[u8]) -> u64 {
        siphash(
            self.k0,
            self.k1,
            &[b"traffic-split shadow marker v1:", timestamp],
        )
    }

    /// The marker value of a copy dispatched at `now_s` (unix seconds).
    pub fn sign(&self, now_s: u64) -> String {
        let ts = now_s.to_string();
        format!("{ts}.{:016x}", self.tag(ts.as_bytes()))
    }

    /// Whether `value` was signed with this key at most `MARKER_MAX_AGE_S` seconds from `now_s`
    /// (either way: hosts' clocks differ). The tag is compared in constant time.
    pub fn verify(&self, value: &[u8], now_s: u64) -> bool {
        let Some(dot) = value.iter().position(|&b| b == b'.') else {
            return false;
        };
        let (Some(ts), Some(tag)) = (value.get(..dot), value.get(dot + 1..)) else {
            return false;
        };
        let Some(signed_at) = parse_decimal(ts) else {
            return false;
        };
        if signed_at.abs_diff(now_s) > MARKER_MAX_AGE_S || tag.len() != 16 {
            return false;
        }
        let expected = format!("{:016x}", self.tag(ts));
        let diff = expected
            .bytes()
            .zip(tag.iter())
            .fold(0u8, |acc, (a, &b)| acc | (a ^ b));
        diff == 0
    }
}

fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &b| {
        b.is_ascii_digit().then(|| acc * 10 + u64::from(b - b'0'))
    })
}

/// What a request's `x-shadow-request` header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    /// No marker: an ordinary request.
    Absent,
    /// A copy made by an instance sharing this deployment's secret: kept, and never copied
    /// again.
    Verified,
    /// Anything else (a client's, or an unsigned copy's): removed before the request goes
    /// upstream. The request is not copied either: whoever sent it can only opt its own
    /// request out of shadowing, and an unsigned copy from another instance is not copied again.
    Untrusted,
}

pub fn check_marker(value: Option<&[u8]>, key: Option<&MarkerKey>, now_s: Option<u64>) -> Marker {
    match (value, key, now_s) {
        (None, _, _) => Marker::Absent,
        (Some(v), Some(key), Some(now)) if key.verify(v, now) => Marker::Verified,
        (Some(_), _, _) => Marker::Untrusted,
    }
}

/// The marker value a copy dispatched at `now_s` carries.
pub fn marker_value(key: Option<&MarkerKey>, now_s: Option<u64>) -> String {
    match (key, now_s) {
        (Some(key), Some(now)) => key.sign(now),
        // No clock: an unverifiable marker, which the next instance removes (never a forgery).
        (Some(_), None) => "unsigned".to_string(),
        (None, _) => UNSIGNED_MARKER.to_string(),
    }
}

/// Bytes a header copy holds, as the bulkhead counts them.
pub fn header_bytes(headers: &[(String, String)]) -> u64 {
    headers
        .iter()
        .map(|(n, v)| n.len() as u64 + v.len() as u64 + HEADER_OVERHEAD)
        .sum()
}

impl ShadowPolicy {
    /// Whether this request is copied: method allowed and sampled in (`draw` uniform u64).
    pub fn selects(&self, method: Option<&[u8]>, draw: u64) -> bool {
        let method_ok = match &self.methods {
            None => true,
            Some(methods) => method.is_some_and(|m| methods.iter().any(|x| x.as_slice() == m)),
        };
        // u64::MAX stands for 100%: every draw, u64::MAX included.
        method_ok && (self.sample_threshold == u64::MAX || draw < self.sample_threshold)
    }

    /// The headers of the copy: the request's headers without hop-by-hop ones, the configured
    /// `remove_headers`, the routing headers and any shadow marker, with `host_suffix` added to
    /// `:authority`. The marker is added at dispatch (`marker_value`). Values that are not
    /// UTF-8 cannot be sent by the host API and are left out. Without a body, `content-length`
    /// is left out too.
    pub fn copy_headers(
        &self,
        headers: &[HeaderPair],
        routing_headers: &[&str],
        with_body: bool,
    ) -> Vec<(String, String)> {
        let mut out = Vec::with_capacity(headers.len() + 1);
        for (name, value) in headers {
            let name = name.as_str();
            let skip = HOP_BY_HOP.contains(&name)
                || routing_headers.contains(&name)
                || self.remove_headers.iter().any(|r| r == name)
                || name == SHADOW_MARKER
                || (!with_body && name == "content-length");
            if skip {
                continue;
            }
            let Ok(value) = std::str::from_utf8(value) else {
                continue;
            };
            let value = if name == ":authority" {
                suffixed_authority(value, &self.host_suffix)
            } else {
                value.to_string()
            };
            out.push((name.to_string(), value));
        }
        out
    }
}

/// Envoy's mirror convention: the suffix goes after the host, before any port
/// (`shop:8080` → `shop-shadow:8080`, `[::1]:80` → `[::1]-shadow:80`).
pub fn suffixed_authority(authority: &str, suffix: &str) -> String {
    let port_start = authority.rfind(':').filter(|&colon| {
        let port = authority.get(colon + 1..).unwrap_or("");
        !port.is_empty()
            && port.bytes().all(|b| b.is_ascii_digit())
            && !authority.get(colon..).unwrap_or("").contains(']')
    });
    match port_start.and_then(|at| Some((authority.get(..at)?, authority.get(at..)?))) {
        Some((host, port)) => format!("{host}{suffix}{port}"),
        None => format!("{authority}{suffix}"),
    }
}

/// The sampling threshold for a percentage (0–100, decimals allowed) against a uniform u64.
pub fn sample_threshold(percent: f64) -> u64 {
    if percent >= 100.0 {
        u64::MAX
    } else if percent <= 0.0 {
        0
    } else {
        (percent / 100.0 * 18_446_744_073_709_551_616.0) as u64
    }
}

/// Outstanding shadow copies (collecting their body, queued, or awaiting the shadow's answer)
/// and the bytes they hold, per worker. Both are bounded: beyond them copies are dropped.
///
/// A copy holds its header copy and its body from the moment it is made until its call
/// completes: the VM keeps them until dispatch, then Envoy keeps its own copy until the answer
/// (or failure) arrives. Bytes are u64: wasm32's usize would wrap at 4 GiB.
pub struct Bulkhead {
    pub max_in_flight: usize,
    pub max_held_bytes: u64,
    in_flight: usize,
    held_bytes: u64,
}

impl Bulkhead {
    pub fn new(max_in_flight: usize, max_held_bytes: u64) -> Self {
        Bulkhead {
            max_in_flight,
            max_held_bytes,
            in_flight: 0,
            held_bytes: 0,
        }
    }

    /// Takes a slot and holds `bytes` (the header copy) for a new copy, or neither.
    pub fn try_start_copy(&mut self, bytes: u64) -> bool {
        if self.in_flight < self.max_in_flight && self.try_hold(bytes) {
            self.in_flight += 1;
            true
        } else {
            false
        }
    }

    /// Gives back a copy's slot and everything it held.
    pub fn end_copy(&mut self, held: u64) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.release(held);
    }

    pub fn try_hold(&mut self, bytes: u64) -> bool {
        match self.held_bytes.checked_add(bytes) {
            Some(total) if total <= self.max_held_bytes => {
                self.held_bytes = total;
                true
            }
            _ => false,
        }
    }

    pub fn release(&mut self, bytes: u64) {
        self.held_bytes = self.held_bytes.saturating_sub(bytes);
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    pub fn held_bytes(&self) -> u64 {
        self.held_bytes
    }
}

/// A small map from u64 keys, kept sorted: lookups are binary searches. Keys handed out in
/// increasing order (as the shadow code does) make an insert a push. Far smaller in Wasm than
/// `BTreeMap` or `HashMap`.
pub struct Keyed<T> {
    entries: Vec<(u64, T)>,
}

impl<T> Default for Keyed<T> {
    fn default() -> Self {
        Keyed {
            entries: Vec::new(),
        }
    }
}

impl<T> Keyed<T> {
    pub fn insert(&mut self, key: u64, value: T) {
        match self.entries.binary_search_by_key(&key, |(k, _)| *k) {
            Ok(at) => {
                if let Some(slot) = self.entries.get_mut(at) {
                    slot.1 = value;
                }
            }
            Err(at) => self.entries.insert(at, (key, value)),
        }
    }

    pub fn get_mut(&mut self, key: u64) -> Option<&mut T> {
        let at = self.entries.binary_search_by_key(&key, |(k, _)| *k).ok()?;
        self.entries.get_mut(at).map(|(_, v)| v)
    }

    pub fn contains(&self, key: u64) -> bool {
        self.entries.binary_search_by_key(&key, |(k, _)| *k).is_ok()
    }

    pub fn remove(&mut self, key: u64) -> Option<T> {
        let at = self.entries.binary_search_by_key(&key, |(k, _)| *k).ok()?;
        Some(self.entries.remove(at).1)
    }

    /// Removes and returns every entry `expired` says is due (a sweep, on the tick).
    pub fn take_if(&mut self, mut expired: impl FnMut(&T) -> bool) -> Vec<(u64, T)> {
        if !self.entries.iter().any(|(_, v)| expired(v)) {
            return Vec::new();
        }
        let (gone, kept) = std::mem::take(&mut self.entries)
            .into_iter()
            .partition(|(_, v)| expired(v));
        self.entries = kept;
        gone
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.entries.iter_mut().map(|(_, v)| v)
    }
}

/// How an exchange ended, as far as comparison is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub latency_ms: u64,
    /// Digest of the body, when bodies are compared and the body was within bounds.
    pub body_digest: Option<u64>,
}

/// What one comparison found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Verdict {
    pub status_mismatch: bool,
    pub class_mismatch: bool,
    pub body_mismatch: bool,
}

pub fn compare(primary: &Answer, shadow: &Answer) -> Verdict {
    Verdict {
        status_mismatch: primary.status != shadow.status,
        class_mismatch: primary.status / 100 != shadow.status / 100,
        body_mismatch: match (primary.body_digest, shadow.body_digest) {
            (Some(p), Some(s)) => p != s,
            _ => false,
        },
    }
}

/// A 64-bit FNV-1a digest, fed chunk by chunk as the body passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digest(u64);

impl Default for Digest {
    fn default() -> Self {
        Digest(0xcbf2_9ce4_8422_2325)
    }
}

impl Digest {
    pub fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    pub fn value(&self) -> u64 {
        self.0
    }
}

/// Pairs primary and shadow answers of the same request, whichever arrives first. Entries
/// live until the primary is known (or gone) and every expected shadow answered (or failed), or
/// until their deadline: a primary that streams for an hour (SSE, a download) does not keep a
/// record for an hour. At most `capacity` records (per worker); found by binary search.
pub struct CompareBook {
    entries: Keyed<Entry>,
    pub capacity: usize,
}

struct Entry {
    primary: Option<Option<Answer>>,
    expected_shadows: usize,
    /// Shadow answers waiting for the primary: (shadow target, answer).
    waiting: Vec<(usize, Answer)>,
    deadline_ms: u64,
}

/// A finished comparison: which shadow target, and what it found.
pub type Finding = (usize, Verdict);

impl CompareBook {
    pub fn new(capacity: usize) -> Self {
        CompareBook {
            entries: Keyed::default(),
            capacity,
        }
    }

    /// A request will be compared with `shadows` copies, until `deadline_ms` at the latest.
    /// False (nothing is compared) when the book is full.
    pub fn open(&mut self, key: u64, shadows: usize, deadline_ms: u64) -> bool {
        if self.entries.len() >= self.capacity {
            return false;
        }
        self.entries.insert(
            key,
            Entry {
                primary: None,
                expected_shadows: shadows,
                waiting: Vec::new(),
                deadline_ms,
            },
        );
        true
    }

    /// A copy will never answer (dropped or failed): nothing to compare for it.
    pub fn shadow_gone(&mut self, key: u64) {
        if let Some(e) = self.entries.get_mut(key) {
            e.expected_shadows = e.expected_shadows.saturating_sub(1);
        }
        self.tidy(key);
    }

    /// A shadow answered; returns the finding if the primary is already known.
    pub fn shadow_answered(&mut self, key: u64, target: usize, answer: Answer) -> Option<Finding> {
        let e = self.entries.get_mut(key)?;
        e.expected_shadows = e.expected_shadows.saturating_sub(1);
        let finding = match &e.primary {
            Some(Some(primary)) => Some((target, compare(primary, &answer))),
            Some(None) => None,
            None => {
                e.waiting.push((target, answer));
                None
            }
        };
        self.tidy(key);
        finding
    }

    /// The primary answered (`None`: the client went away without an answer); returns the
    /// findings for the shadows that answered first.
    pub fn primary_done(&mut self, key: u64, answer: Option<Answer>) -> Vec<Finding> {
        let Some(e) = self.entries.get_mut(key) else {
            return Vec::new();
        };
        if e.primary.is_some() {
            return Vec::new();
        }
        e.primary = Some(answer);
        let findings = match &answer {
            Some(primary) => e
                .waiting
                .drain(..)
                .map(|(target, shadow)| (target, compare(primary, &shadow)))
                .collect(),
            None => {
                e.waiting.clear();
                Vec::new()
            }
        };
        self.tidy(key);
        findings
    }

    /// Forgets records past their deadline (nothing is compared for them); returns how many.
    pub fn expire(&mut self, now_ms: u64) -> usize {
        self.entries.take_if(|e| e.deadline_ms <= now_ms).len()
    }

    fn tidy(&mut self, key: u64) {
        let done = self
            .entries
            .get_mut(key)
            .is_some_and(|e| e.primary.is_some() && e.expected_shadows == 0);
        if done {
            self.entries.remove(key);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Plan;

    fn policy(json: &str) -> ShadowPolicy {
        let plan = Plan::from_json(
            format!(
                r#"{{"rules":[{{"name":"r","destinations":[{{"name":"a","cluster":"a"}}],"shadow":[{json}]}}]}}"#
            )
            .as_bytes(),
        )
        .unwrap();
        plan.rules.into_iter().next().unwrap().shadows.remove(0)
    }

    #[test]
    fn authority_suffix_goes_before_the_port() {
        assert_eq!(suffixed_authority("shop", "-shadow"), "shop-shadow");
        assert_eq!(
            suffixed_authority("shop:8080", "-shadow"),
            "shop-shadow:8080"
        );
        assert_eq!(suffixed_authority("[::1]:80", "-shadow"), "[::1]-shadow:80");
        assert_eq!(suffixed_authority("[::1]", "-shadow"), "[::1]-shadow");
        assert_eq!(suffixed_authority("a:b", "-s"), "a:b-s");
        assert_eq!(suffixed_authority("shop:", "-s"), "shop:-s");
        assert_eq!(suffixed_authority("shop:80", ""), "shop:80");
    }

    #[test]
    fn copy_headers_drops_what_must_not_travel() {
        let p = policy(r#"{"cluster":"s","remove_headers":["Authorization","cookie"]}"#);
        let headers: Vec<HeaderPair> = [
            (":method", "POST"),
            (":path", "/x?y=1"),
            (":authority", "shop:8080"),
            ("authorization", "secret"),
            ("cookie", "a=b"),
            ("connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("content-length", "17"),
            ("x-split-cluster", "forged"),
            ("x-shadow-request", "false"),
            ("x-keep", "1"),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
        .chain(std::iter::once(("x-bin".to_string(), vec![0xff])))
        .collect();
        let copy = p.copy_headers(&headers, &["x-split-cluster", "x-split-variant"], true);
        let names: Vec<&str> = copy.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            vec![":method", ":path", ":authority", "content-length", "x-keep"]
        );
        assert_eq!(copy[2].1, "shop-shadow:8080");
        let without_body = p.copy_headers(&headers, &[], false);
        assert!(!without_body.iter().any(|(n, _)| n == "content-length"));
    }

    #[test]
    fn credentials_stay_home_by_default_and_an_explicit_list_replaces_the_default() {
        let headers: Vec<HeaderPair> = [
            (":method", "GET"),
            ("authorization", "Bearer t"),
            ("proxy-authorization", "Basic p"),
            ("cookie", "s=1"),
            ("x-api-key", "k"),
            ("x-forwarded-client-cert", "By=spiffe://x"),
            ("x-keep", "1"),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
        .collect();
        let names = |p: &ShadowPolicy| -> Vec<String> {
            p.copy_headers(&headers, &[], false)
                .into_iter()
                .map(|(n, _)| n)
                .collect()
        };
        assert_eq!(names(&policy(r#"{"cluster":"s"}"#)), [":method", "x-keep"]);
        // `[]`: everything travels, a deliberate opt-in.
        assert_eq!(
            names(&policy(r#"{"cluster":"s","remove_headers":[]}"#)),
            [
                ":method",
                "authorization",
                "proxy-authorization",
                "cookie",
                "x-api-key",
                "x-forwarded-client-cert",
                "x-keep"
            ]
        );
        // A list replaces the default: only what it names is removed.
        assert_eq!(
            names(&policy(r#"{"cluster":"s","remove_headers":["X-Keep"]}"#)).len(),
            6
        );
    }

    #[test]
    fn sampling_and_methods() {
        let p = policy(r#"{"cluster":"s","percent":25,"methods":["GET"]}"#);
        assert!(p.selects(Some(b"GET"), 0));
        assert!(!p.selects(Some(b"POST"), 0));
        assert!(!p.selects(None, 0));
        assert!(p.selects(Some(b"GET"), u64::MAX / 4 - 1));
        assert!(!p.selects(Some(b"GET"), u64::MAX / 4 + 1));
        assert_eq!(sample_threshold(100.0), u64::MAX);
        assert_eq!(sample_threshold(0.0), 0);
        assert!(!policy(r#"{"cluster":"s","percent":0}"#).selects(Some(b"GET"), 0));
        assert!(policy(r#"{"cluster":"s"}"#).selects(Some(b"PUT"), u64::MAX));
    }

    #[test]
    fn bulkhead_bounds_copies_and_everything_they_hold() {
        let mut b = Bulkhead::new(2, 100);
        assert!(b.try_start_copy(30));
        assert!(b.try_start_copy(30));
        assert!(!b.try_start_copy(0), "no third slot");
        b.end_copy(30);
        assert_eq!(b.held_bytes(), 30);
        assert!(
            !b.try_start_copy(71),
            "headers alone would pass the byte bound"
        );
        assert_eq!(b.in_flight(), 1, "a refused copy takes no slot");
        assert!(b.try_start_copy(20));
        assert!(b.try_hold(50));
        assert!(!b.try_hold(1));
        b.end_copy(30 + 50);
        assert_eq!(b.held_bytes(), 20);
        b.end_copy(20);
        b.end_copy(0);
        assert_eq!((b.in_flight(), b.held_bytes()), (0, 0));
        // Byte counts are u64 on every target: 5 GiB held is 5 GiB, not 1 GiB (wasm32 usize).
        let mut big = Bulkhead::new(4, 6 << 30);
        assert!(big.try_start_copy(5 << 30));
        assert_eq!(big.held_bytes(), 5 << 30);
        assert!(!big.try_hold(2 << 30));
        assert!(!big.try_hold(u64::MAX), "overflow is a refusal, not a wrap");
    }

    #[test]
    fn header_copies_are_counted_with_their_values() {
        let h = vec![
            ("a".to_string(), "xyz".to_string()),
            ("bb".to_string(), String::new()),
        ];
        assert_eq!(header_bytes(&h), 4 + 2 + 2 * HEADER_OVERHEAD);
        assert_eq!(header_bytes(&[]), 0);
    }

    #[test]
    fn keyed_finds_by_binary_search_and_sweeps() {
        let mut k: Keyed<&str> = Keyed::default();
        for (key, v) in [(3, "c"), (1, "a"), (7, "g"), (5, "e")] {
            k.insert(key, v);
        }
        assert_eq!(k.get_mut(5).copied(), Some("e"));
        assert!(k.contains(1) && !k.contains(2));
        assert_eq!(k.remove(3), Some("c"));
        assert_eq!(k.remove(3), None);
        k.insert(7, "G");
        assert_eq!(k.len(), 3);
        let gone = k.take_if(|v| *v != "a");
        assert_eq!(gone, vec![(5, "e"), (7, "G")]);
        assert_eq!(k.len(), 1);
        assert!(k.take_if(|_| false).is_empty());
    }

    #[test]
    fn signed_markers_verify_only_with_the_key_and_only_while_fresh() {
        let key = MarkerKey::from_secret(b"0123456789abcdef-deployment");
        let other = MarkerKey::from_secret(b"0123456789abcdef-elsewhere!");
        let now = 1_800_000_000;
        let value = key.sign(now);
        assert!(value.starts_with("1800000000."), "{value}");
        assert_eq!(value.len(), 10 + 1 + 16);
        assert!(key.verify(value.as_bytes(), now));
        assert!(key.verify(value.as_bytes(), now + MARKER_MAX_AGE_S));
        assert!(
            key.verify(value.as_bytes(), now - MARKER_MAX_AGE_S),
            "clock skew"
        );
        assert!(
            !key.verify(value.as_bytes(), now + MARKER_MAX_AGE_S + 1),
            "replayed late"
        );
        assert!(
            !other.verify(value.as_bytes(), now),
            "another deployment's key"
        );
        // Tampering with the time or the tag fails.
        let later = value.replacen("1800000000", "1800000001", 1);
        assert!(!key.verify(later.as_bytes(), now));
        let mut tag_flipped = value.clone().into_bytes();
        let last = tag_flipped.len() - 1;
        tag_flipped[last] = if tag_flipped[last] == b'0' {
            b'1'
        } else {
            b'0'
        };
        assert!(!key.verify(&tag_flipped, now));
        for junk in [
            &b""[..],
            b"true",
            b".",
            b"1800000000.",
            b"x.0123456789abcdef",
            b"99999999999999999999.0123456789abcdef",
        ] {
            assert!(!key.verify(junk, now), "{junk:?}");
        }
        // Markers as the filter sees them.
        assert_eq!(check_marker(None, Some(&key), Some(now)), Marker::Absent);
        assert_eq!(
            check_marker(Some(value.as_bytes()), Some(&key), Some(now)),
            Marker::Verified
        );
        assert_eq!(
            check_marker(Some(b"true"), Some(&key), Some(now)),
            Marker::Untrusted
        );
        assert_eq!(
            check_marker(Some(value.as_bytes()), None, Some(now)),
            Marker::Untrusted
        );
        assert_eq!(
            check_marker(Some(value.as_bytes()), Some(&key), None),
            Marker::Untrusted
        );
        assert_eq!(marker_value(None, Some(now)), "true");
        assert_eq!(marker_value(Some(&key), Some(now)), value);
        assert!(!key.verify(marker_value(Some(&key), None).as_bytes(), now));
        assert_eq!(format!("{key:?}"), "MarkerKey(..)");
        // Through the configuration: the same secret gives the same key on every instance.
        let plan = |json: &str| Plan::from_json(json.as_bytes()).unwrap().marker_key;
        let configured = plan(r#"{"shadow_marker_secret":"0123456789abcdef-deployment"}"#);
        assert_eq!(configured.as_ref(), Some(&key));
        assert_eq!(plan("{}"), None);
    }

    #[test]
    fn comparison_classes_and_bodies() {
        let a = |status, digest| Answer {
            status,
            latency_ms: 1,
            body_digest: digest,
        };
        assert_eq!(compare(&a(200, None), &a(200, None)), Verdict::default());
        assert_eq!(
            compare(&a(200, None), &a(201, None)),
            Verdict {
                status_mismatch: true,
                ..Verdict::default()
            }
        );
        assert_eq!(
            compare(&a(200, Some(1)), &a(500, Some(2))),
            Verdict {
                status_mismatch: true,
                class_mismatch: true,
                body_mismatch: true
            }
        );
        assert!(!compare(&a(200, Some(1)), &a(200, None)).body_mismatch);
    }

    #[test]
    fn compare_book_pairs_answers_in_either_order_and_forgets_finished_requests() {
        let ok = Answer {
            status: 200,
            latency_ms: 3,
            body_digest: None,
        };
        let err = Answer { status: 500, ..ok };
        let mut book = CompareBook::new(8);
        // Shadow first, then primary.
        book.open(1, 2, u64::MAX);
        assert_eq!(book.shadow_answered(1, 0, err), None);
        let findings = book.primary_done(1, Some(ok));
        assert_eq!(findings.len(), 1);
        assert!(findings[0].1.class_mismatch);
        assert_eq!(book.len(), 1);
        // Primary first, then the second shadow.
        let late = book.shadow_answered(1, 1, ok).unwrap();
        assert_eq!(late, (1, Verdict::default()));
        assert!(book.is_empty());
        // A failed shadow and a vanished client leave nothing behind.
        book.open(2, 1, u64::MAX);
        book.shadow_gone(2);
        assert!(book.primary_done(2, None).is_empty());
        assert!(book.is_empty());
        book.open(3, 1, u64::MAX);
        assert!(book.primary_done(3, None).is_empty());
        assert_eq!(book.shadow_answered(3, 0, ok), None);
        assert!(book.is_empty());
    }

    #[test]
    fn compare_records_are_bounded_and_expire() {
        let ok = Answer {
            status: 200,
            latency_ms: 3,
            body_digest: None,
        };
        let mut book = CompareBook::new(2);
        assert!(book.open(1, 1, 1_000));
        assert!(book.open(2, 1, 5_000));
        assert!(!book.open(3, 1, 5_000), "full");
        // The shadow answered; the primary (a long download) has not finished.
        assert_eq!(book.shadow_answered(1, 0, ok), None);
        assert_eq!(book.expire(999), 0);
        assert_eq!(book.expire(1_000), 1);
        assert_eq!(book.len(), 1);
        // Gone: the primary's late end finds nothing and compares nothing.
        assert!(book.primary_done(1, Some(ok)).is_empty());
        assert!(book.open(3, 1, 5_000), "room again");
        assert_eq!(book.expire(u64::MAX), 2);
        assert!(book.is_empty());
    }

    #[test]
    fn digest_is_chunking_independent() {
        let mut whole = Digest::default();
        whole.update(b"hello world");
        let mut parts = Digest::default();
        parts.update(b"hello");
        parts.update(b" world");
        assert_eq!(whole, parts);
        let mut other = Digest::default();
        other.update(b"hello worle");
        assert_ne!(whole, other);
    }
}
