//! Shadowing: which requests are copied and what a copy looks like. Pure logic; the host layer
//! (`host::shadow`) reads the request, makes the calls and writes the counters.
//!
//! - `marker`: the `x-shadow-request` header, signed and verified.
//! - `bulkhead`: the per-worker bound on outstanding copies and the bytes they hold.
//! - `compare`: pairing primary and shadow answers, and what a comparison finds.

mod bulkhead;
mod compare;
mod marker;

pub use bulkhead::{Bulkhead, Keyed};
pub use compare::{compare, Answer, BodyDigest, CompareBook, Digest, Finding, Verdict};
pub use marker::{
    check_marker, marker_value, MarkedRequest, Marker, MarkerKey, BOUND_HEADERS, MARKER_MAX_AGE_S,
    MARKER_MAX_FUTURE_S, SHADOW_MARKER, UNSIGNED_MARKER,
};

use crate::request::{HeaderPair, Request};
use std::time::Duration;

#[derive(Debug)]
pub struct ShadowTarget {
    /// `[A-Za-z0-9_-]{1,64}`: appears in metric names.
    pub name: String,
    pub cluster: String,
}

/// One shadow copy a rule makes, compiled.
#[derive(Debug)]
pub struct ShadowPolicy {
    /// Index into `Plan::shadow_targets`.
    pub target: usize,
    pub cluster: String,
    /// A uniform u64 draw below this samples the request in.
    pub sample_threshold: u64,
    pub timeout: Duration,
    pub host_suffix: String,
    /// Method tokens as configured (methods are case-sensitive, RFC 9110); `None` = every method.
    pub methods: Option<Vec<Vec<u8>>>,
    pub include_body: bool,
    pub max_body_bytes: u64,
    /// Lower-case header names.
    pub remove_headers: Vec<String>,
    pub compare: bool,
    pub compare_body: bool,
}

/// Approximate per-header overhead of a header copy beyond its name and value bytes (the two
/// `String`s, and Envoy's header entry once dispatched), counted by the bulkhead.
const HEADER_OVERHEAD: u64 = 32;

/// Hop-by-hop headers describe one connection, not the request: never copied (but
/// `te: trailers`, which gRPC needs end to end).
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
];

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

    /// The chance (0.0..=1.0) that a request this policy's methods allow is copied: what
    /// `selects` does with a uniform draw. Used by `traffic-split explain`.
    pub fn sample_probability(&self) -> f64 {
        if self.sample_threshold == u64::MAX {
            1.0
        } else {
            self.sample_threshold as f64 / 18_446_744_073_709_551_616.0
        }
    }

    /// Whether `method` may be copied at all: the `methods` test of `selects`, for
    /// `traffic-split explain` (not called by `selects`: that costs Wasm bytes).
    pub fn allows_method(&self, method: Option<&[u8]>) -> bool {
        match &self.methods {
            None => true,
            Some(methods) => method.is_some_and(|m| methods.iter().any(|x| x.as_slice() == m)),
        }
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
            // `te: trailers` is the one TE HTTP/2 allows, and gRPC servers require it.
            let grpc_te = name == "te" && value.as_slice() == b"trailers";
            let skip = (HOP_BY_HOP.contains(&name) && !grpc_te)
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

/// A copy a request gets, before it is queued or starts collecting the request body.
pub struct NewCopy {
    /// Index into the rule's `shadows`.
    pub shadow: usize,
    pub headers: Vec<(String, String)>,
    /// Bytes it holds in the bulkhead (its headers).
    pub held: u64,
    /// It waits for the request body before it is sent.
    pub with_body: bool,
}

/// What a request's shadows come to.
#[derive(Default)]
pub struct Selection {
    pub copies: Vec<NewCopy>,
    /// Shadow targets whose copy the bulkhead turned away (counted `dropped`).
    pub dropped: Vec<usize>,
}

/// Which of a rule's `shadows` copy this request (method allowed, sampled in with one `draw`
/// each, room in the bulkhead), with their headers. A body is copied only when one follows.
pub fn select_copies(
    shadows: &[ShadowPolicy],
    headers: &[HeaderPair],
    routing_headers: &[&str],
    end_of_stream: bool,
    mut draw: impl FnMut() -> u64,
    bulkhead: &mut Bulkhead,
) -> Selection {
    let method = Request::new(headers, None).method();
    let mut selection = Selection::default();
    for (shadow, policy) in shadows.iter().enumerate() {
        if !policy.selects(method, draw()) {
            continue;
        }
        let with_body = policy.include_body && !end_of_stream;
        let copy = policy.copy_headers(headers, routing_headers, with_body);
        let held = header_bytes(&copy);
        if !bulkhead.try_start_copy(held) {
            selection.dropped.push(policy.target);
            continue;
        }
        selection.copies.push(NewCopy {
            shadow,
            headers: copy,
            held,
            with_body,
        });
    }
    selection
}

/// What comparing a request with its copies needs, when any copy is compared.
#[derive(Debug, PartialEq, Eq)]
pub struct ComparePlan {
    /// Shadow targets compared (for the primary latency histograms).
    pub targets: Vec<usize>,
    /// The longest `timeout_ms` among them: the comparison waits for the slowest shadow.
    pub longest_timeout_ms: u64,
    /// The primary body is digested up to this many bytes (`compare_body`).
    pub body_limit: Option<u64>,
}

impl ComparePlan {
    pub fn of(shadows: &[ShadowPolicy], copies: &[NewCopy]) -> Option<ComparePlan> {
        let compared: Vec<&ShadowPolicy> = copies
            .iter()
            .filter_map(|c| shadows.get(c.shadow))
            .filter(|p| p.compare)
            .collect();
        if compared.is_empty() {
            return None;
        }
        Some(ComparePlan {
            targets: compared.iter().map(|p| p.target).collect(),
            longest_timeout_ms: compared
                .iter()
                .map(|p| p.timeout.as_millis() as u64)
                .max()
                .unwrap_or(0),
            body_limit: compared
                .iter()
                .filter(|p| p.compare_body)
                .map(|p| p.max_body_bytes)
                .max(),
        })
    }
}

impl ShadowPolicy {
    /// Whether a shadow's answer body of `len` bytes is digested for comparison.
    pub fn digests_body(&self, len: u64) -> bool {
        self.compare_body && len <= self.max_body_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Plan;
    use crate::rng::sample_threshold;

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
    fn copies_are_selected_by_method_sample_and_bulkhead() {
        let plan = Plan::from_json(
            br#"{"rules":[{"name":"r","destinations":[{"name":"a","cluster":"a"}],"shadow":[
                {"name":"all","cluster":"s1","compare":true,"compare_body":true,"max_body_bytes":10,"timeout_ms":50},
                {"name":"half","cluster":"s2","percent":50,"include_body":false},
                {"name":"posts","cluster":"s3","methods":["POST"],"compare":true,"timeout_ms":70}]}]}"#,
        )
        .unwrap();
        let shadows = &plan.rules[0].shadows;
        let get: Vec<HeaderPair> = vec![
            (":method".into(), b"GET".to_vec()),
            (":authority".into(), b"shop".to_vec()),
        ];
        let mut bulkhead = Bulkhead::new(8, 1 << 20);
        // Draws: 0 samples every shadow in, u64::MAX only those at 100%.
        let s = select_copies(shadows, &get, &[], false, || u64::MAX, &mut bulkhead);
        let picked: Vec<(usize, bool)> = s.copies.iter().map(|c| (c.shadow, c.with_body)).collect();
        assert_eq!(
            picked,
            vec![(0, true)],
            "half is sampled out, posts is GET-only"
        );
        assert_eq!(s.copies[0].held, header_bytes(&s.copies[0].headers));
        assert_eq!(bulkhead.in_flight(), 1);
        assert_eq!(bulkhead.held_bytes(), s.copies[0].held);
        let s = select_copies(shadows, &get, &[], true, || 0, &mut bulkhead);
        let picked: Vec<(usize, bool)> = s.copies.iter().map(|c| (c.shadow, c.with_body)).collect();
        assert_eq!(
            picked,
            vec![(0, false), (1, false)],
            "no body follows: none is copied"
        );
        assert_eq!(
            ComparePlan::of(shadows, &s.copies),
            Some(ComparePlan {
                targets: vec![0],
                longest_timeout_ms: 50,
                body_limit: Some(10)
            })
        );
        // A full bulkhead turns copies away, and says whose.
        let mut full = Bulkhead::new(1, 1 << 20);
        let s = select_copies(shadows, &get, &[], true, || 0, &mut full);
        assert_eq!((s.copies.len(), s.dropped), (1, vec![1]));
        let post: Vec<HeaderPair> = vec![(":method".into(), b"POST".to_vec())];
        let s = select_copies(&shadows[1..], &post, &[], true, || u64::MAX, &mut bulkhead);
        assert_eq!(s.copies.len(), 1);
        assert_eq!(
            ComparePlan::of(&shadows[1..], &s.copies),
            Some(ComparePlan {
                targets: vec![2],
                longest_timeout_ms: 70,
                body_limit: None
            })
        );
        assert!(shadows[0].digests_body(10) && !shadows[0].digests_body(11));
        assert!(!shadows[2].digests_body(0), "compare without compare_body");
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
        assert!(!without_body.iter().any(|(n, _)| n == "content-length")); // TE is hop-by-hop, except `te: trailers`, which gRPC servers require.
        let te = |value: &str| {
            let h: Vec<HeaderPair> = vec![("te".to_string(), value.as_bytes().to_vec())];
            p.copy_headers(&h, &[], false)
        };
        assert_eq!(
            te("trailers"),
            vec![("te".to_string(), "trailers".to_string())]
        );
        assert!(te("gzip").is_empty());
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
        assert_eq!(p.sample_probability(), 0.25);
        assert!(p.allows_method(Some(b"GET")) && !p.allows_method(Some(b"POST")));
        assert_eq!(policy(r#"{"cluster":"s"}"#).sample_probability(), 1.0);
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
    fn header_copies_are_counted_with_their_values() {
        let h = vec![
            ("a".to_string(), "xyz".to_string()),
            ("bb".to_string(), String::new()),
        ];
        assert_eq!(header_bytes(&h), 4 + 2 + 2 * HEADER_OVERHEAD);
        assert_eq!(header_bytes(&[]), 0);
    }
}
