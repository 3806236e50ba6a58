//! Shadow policy: which requests are copied, what the copy looks like, the bulkhead that bounds
//! a slow or dead shadow, and the comparison of shadow and primary answers. Pure logic; the
//! host layer moves the bytes.

use crate::plan::ShadowPolicy;
use crate::request::HeaderPair;

/// The marker every shadow copy carries.
pub const SHADOW_MARKER: (&str, &str) = ("x-shadow-request", "true");

/// Hop-by-hop headers describe one connection, not the request: never copied.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
    "proxy-authorization",
];

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
    /// `remove_headers` and the routing headers, with `host_suffix` added to `:authority` and
    /// the shadow marker. Values that are not UTF-8 cannot be sent by the host API and are left
    /// out. Without a body, `content-length` is left out too.
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
                || name == SHADOW_MARKER.0
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
        out.push((SHADOW_MARKER.0.to_string(), SHADOW_MARKER.1.to_string()));
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
/// and buffered body bytes, per worker. Both are bounded: beyond them copies are dropped.
pub struct Bulkhead {
    pub max_in_flight: usize,
    pub max_buffered_bytes: usize,
    in_flight: usize,
    buffered_bytes: usize,
}

impl Bulkhead {
    pub fn new(max_in_flight: usize, max_buffered_bytes: usize) -> Self {
        Bulkhead {
            max_in_flight,
            max_buffered_bytes,
            in_flight: 0,
            buffered_bytes: 0,
        }
    }

    pub fn try_start_copy(&mut self) -> bool {
        if self.in_flight < self.max_in_flight {
            self.in_flight += 1;
            true
        } else {
            false
        }
    }

    pub fn end_copy(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    pub fn try_buffer(&mut self, bytes: usize) -> bool {
        match self.buffered_bytes.checked_add(bytes) {
            Some(total) if total <= self.max_buffered_bytes => {
                self.buffered_bytes = total;
                true
            }
            _ => false,
        }
    }

    pub fn release_buffer(&mut self, bytes: usize) {
        self.buffered_bytes = self.buffered_bytes.saturating_sub(bytes);
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    pub fn buffered_bytes(&self) -> usize {
        self.buffered_bytes
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
/// live until the primary is known (or gone) and every expected shadow answered (or failed).
/// At most one entry per outstanding copy (the bulkhead bounds them), so a vector scanned
/// linearly is enough, and much smaller in Wasm than a hash map.
#[derive(Default)]
pub struct CompareBook {
    entries: Vec<(u64, Entry)>,
}

#[derive(Default)]
struct Entry {
    primary: Option<Option<Answer>>,
    expected_shadows: usize,
    /// Shadow answers waiting for the primary: (shadow target, answer).
    waiting: Vec<(usize, Answer)>,
}

/// A finished comparison: which shadow target, and what it found.
pub type Finding = (usize, Verdict);

impl CompareBook {
    /// A request will be compared with `shadows` copies.
    pub fn open(&mut self, key: u64, shadows: usize) {
        self.entries.push((
            key,
            Entry {
                expected_shadows: shadows,
                ..Entry::default()
            },
        ));
    }

    fn get_mut(&mut self, key: u64) -> Option<&mut Entry> {
        self.entries
            .iter_mut()
            .find(|(k, _)| *k == key)
            .map(|(_, e)| e)
    }

    /// A copy will never answer (dropped or failed): nothing to compare for it.
    pub fn shadow_gone(&mut self, key: u64) {
        if let Some(e) = self.get_mut(key) {
            e.expected_shadows = e.expected_shadows.saturating_sub(1);
        }
        self.tidy(key);
    }

    /// A shadow answered; returns the finding if the primary is already known.
    pub fn shadow_answered(&mut self, key: u64, target: usize, answer: Answer) -> Option<Finding> {
        let e = self.get_mut(key)?;
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
        let Some(e) = self.get_mut(key) else {
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

    fn tidy(&mut self, key: u64) {
        let done = self
            .entries
            .iter()
            .position(|(k, e)| *k == key && e.primary.is_some() && e.expected_shadows == 0);
        if let Some(index) = done {
            self.entries.swap_remove(index);
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
            vec![
                ":method",
                ":path",
                ":authority",
                "content-length",
                "x-keep",
                "x-shadow-request"
            ]
        );
        assert_eq!(copy[2].1, "shop-shadow:8080");
        assert_eq!(copy[5].1, "true");
        let without_body = p.copy_headers(&headers, &[], false);
        assert!(!without_body.iter().any(|(n, _)| n == "content-length"));
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
    fn bulkhead_bounds_copies_and_bytes() {
        let mut b = Bulkhead::new(2, 10);
        assert!(b.try_start_copy());
        assert!(b.try_start_copy());
        assert!(!b.try_start_copy());
        b.end_copy();
        assert!(b.try_start_copy());
        assert!(b.try_buffer(6));
        assert!(!b.try_buffer(5));
        b.release_buffer(6);
        assert!(b.try_buffer(10));
        b.end_copy();
        b.end_copy();
        b.end_copy();
        assert_eq!(b.in_flight(), 0);
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
        let mut book = CompareBook::default();
        // Shadow first, then primary.
        book.open(1, 2);
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
        book.open(2, 1);
        book.shadow_gone(2);
        assert!(book.primary_done(2, None).is_empty());
        assert!(book.is_empty());
        book.open(3, 1);
        assert!(book.primary_done(3, None).is_empty());
        assert_eq!(book.shadow_answered(3, 0, ok), None);
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
