//! The shadow marker: the header every copy carries, and the key that signs and verifies it.

/// The header every shadow copy carries, so the shadow's application can skip side effects.
pub const SHADOW_MARKER: &str = "x-shadow-request";
/// Its value without `shadow_marker_secret`.
pub const UNSIGNED_MARKER: &str = "true";
/// How long a signed marker verifies after its copy was dispatched. The next instance checks
/// it as the copy arrives, milliseconds after it was signed (a copy waiting in Envoy's
/// connection pool waits at most its `timeout_ms`); the rest is room for hosts' clocks that
/// differ. Short, because whoever reads a copy (the shadow, its logs, a tracing backend) could
/// otherwise resend exactly that request as a copy for as long as it verifies.
pub const MARKER_MAX_AGE_S: u64 = 10;
/// How far in the future a marker's time may be: the dispatching host's clock may be a little
/// ahead of this one's.
pub const MARKER_MAX_FUTURE_S: u64 = 5;
const MARKER_WINDOW: Window = Window {
    max_age_s: MARKER_MAX_AGE_S,
    max_future_s: MARKER_MAX_FUTURE_S,
};

/// The key that signs and verifies shadow markers (`crate::signing`), derived from
/// `shadow_marker_secret`. A signed marker is `v2.<unix seconds>.<32 hex digits>`: the
/// signature of the copy's request as sent to the shadow (`MarkedRequest`) and its dispatch
/// time.
pub use crate::signing::SigningKey as MarkerKey;
use crate::signing::{Domain, Window};

/// The request headers a signed marker is bound to, in signing order: the copy's
/// `:authority` as sent to the shadow (with `host_suffix`), its method, its path with the
/// query, and its `x-request-id` (each absent or present, as the request has it).
pub const BOUND_HEADERS: [&str; 4] = [":authority", ":method", ":path", "x-request-id"];

/// Where Envoy records its tracing decision in a UUID `x-request-id` (`pack_trace_reason`:
/// the 15th character becomes `4`, `9`, `a` or `b`), at every hop with tracing, so the
/// receiving proxy may see that one character changed: it is not signed.
const TRACE_REASON_AT: usize = 14;
const UUID_LEN: usize = 36;

/// What a marker is bound to: one request's values of `BOUND_HEADERS`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MarkedRequest<'a> {
    pub authority: Option<&'a [u8]>,
    pub method: Option<&'a [u8]>,
    pub path: Option<&'a [u8]>,
    pub request_id: Option<&'a [u8]>,
}

impl<'a> MarkedRequest<'a> {
    /// The bound headers, each looked up by (lower-case) name.
    pub fn from_lookup(mut header: impl FnMut(&str) -> Option<&'a [u8]>) -> Self {
        let [authority, method, path, request_id] = BOUND_HEADERS;
        MarkedRequest {
            authority: header(authority),
            method: header(method),
            path: header(path),
            request_id: header(request_id),
        }
    }

    /// A copy's headers as they are dispatched (the first value of each name).
    pub fn of_copy(headers: &'a [(String, String)]) -> Self {
        Self::from_lookup(|name| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_bytes())
        })
    }

    fn signed<R>(&self, with: impl FnOnce(&[Option<&[u8]>]) -> R) -> R {
        let mut masked = [0u8; UUID_LEN];
        let request_id = match self.request_id {
            Some(id) if id.len() == UUID_LEN => {
                masked.copy_from_slice(id);
                if let Some(b) = masked.get_mut(TRACE_REASON_AT) {
                    *b = b'*';
                }
                Some(masked.as_slice())
            }
            other => other,
        };
        with(&[self.authority, self.method, self.path, request_id])
    }
}

impl MarkerKey {
    /// The marker value of a copy of `request` dispatched at `now_s` (unix seconds).
    pub fn sign_marker(&self, request: &MarkedRequest<'_>, now_s: u64) -> String {
        request.signed(|fields| self.sign(Domain::ShadowMarker, fields, now_s))
    }

    /// Whether `value` is a marker this key signed for exactly `request` (same host, method,
    /// path and request id) at most `MARKER_MAX_AGE_S` seconds before `now_s` (or at most
    /// `MARKER_MAX_FUTURE_S` after).
    pub fn verify_marker(&self, value: &[u8], request: &MarkedRequest<'_>, now_s: u64) -> bool {
        request
            .signed(|fields| self.verify(Domain::ShadowMarker, fields, value, now_s, MARKER_WINDOW))
    }
}

/// What a request's `x-shadow-request` header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    /// No marker: an ordinary request.
    Absent,
    /// A copy made by an instance sharing this deployment's secret, for this very request:
    /// kept, and never copied again.
    Verified,
    /// Anything else (a client's, an unsigned copy's, or a marker lifted from another copy):
    /// removed before the request goes upstream. The request is not copied either: whoever
    /// sent it can only opt its own request out of shadowing, and an unsigned copy from
    /// another instance is not copied again.
    Untrusted,
}

pub fn check_marker(
    value: Option<&[u8]>,
    request: &MarkedRequest<'_>,
    key: Option<&MarkerKey>,
    now_s: Option<u64>,
) -> Marker {
    match (value, key, now_s) {
        (None, _, _) => Marker::Absent,
        (Some(v), Some(key), Some(now)) if key.verify_marker(v, request, now) => Marker::Verified,
        (Some(_), _, _) => Marker::Untrusted,
    }
}

/// The marker value a copy of `request` dispatched at `now_s` carries.
pub fn marker_value(
    key: Option<&MarkerKey>,
    request: &MarkedRequest<'_>,
    now_s: Option<u64>,
) -> String {
    match (key, now_s) {
        (Some(key), Some(now)) => key.sign_marker(request, now),
        // No clock: an unverifiable marker, which the next instance removes (never a forgery).
        (Some(_), None) => "unsigned".to_string(),
        (None, _) => UNSIGNED_MARKER.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Plan;

    const RID: &str = "6f1f2c4e-8b1a-4c3d-9e2f-0a1b2c3d4e5f";

    fn copy<'a>(authority: &'a str, path: &'a str, rid: Option<&'a str>) -> MarkedRequest<'a> {
        MarkedRequest {
            authority: Some(authority.as_bytes()),
            method: Some(b"POST"),
            path: Some(path.as_bytes()),
            request_id: rid.map(str::as_bytes),
        }
    }

    #[test]
    fn signed_markers_verify_only_with_the_key_and_only_while_fresh() {
        let key = MarkerKey::from_secret(b"0123456789abcdef-deployment");
        let other = MarkerKey::from_secret(b"0123456789abcdef-elsewhere!");
        let now = 1_800_000_000;
        let req = copy("shop-shadow:8080", "/cart?x=1", Some(RID));
        let value = key.sign_marker(&req, now);
        assert!(value.starts_with("v2.1800000000."), "{value}");
        assert_eq!(value.len(), 3 + 10 + 1 + 32);
        let ok = |v: &[u8], at: u64| key.verify_marker(v, &req, at);
        assert!(ok(value.as_bytes(), now));
        assert!(ok(value.as_bytes(), now + MARKER_MAX_AGE_S));
        assert!(
            ok(value.as_bytes(), now - MARKER_MAX_FUTURE_S),
            "clock skew"
        );
        assert!(
            !ok(value.as_bytes(), now + MARKER_MAX_AGE_S + 1),
            "replayed late"
        );
        assert!(
            !ok(value.as_bytes(), now - MARKER_MAX_FUTURE_S - 1),
            "from the future"
        );
        assert!(
            !other.verify_marker(value.as_bytes(), &req, now),
            "another deployment's key"
        );
        // Tampering with the time or the tag fails.
        let later = value.replacen("1800000000", "1800000001", 1);
        assert!(!ok(later.as_bytes(), now));
        let mut tag_flipped = value.clone().into_bytes();
        let last = tag_flipped.len() - 1;
        tag_flipped[last] = if tag_flipped[last] == b'0' {
            b'1'
        } else {
            b'0'
        };
        assert!(!ok(&tag_flipped, now));
        for junk in [
            &b""[..],
            b"true",
            b".",
            b"v2.1800000000.",
            b"1800000000.0123456789abcdef",
            b"v2.x.0123456789abcdef0123456789abcdef",
            b"v2.99999999999999999999.0123456789abcdef0123456789abcdef",
        ] {
            assert!(!ok(junk, now), "{junk:?}");
        }
        // Markers as the filter sees them.
        let check =
            |v: Option<&[u8]>, k: Option<&MarkerKey>, at: Option<u64>| check_marker(v, &req, k, at);
        assert_eq!(check(None, Some(&key), Some(now)), Marker::Absent);
        assert_eq!(
            check(Some(value.as_bytes()), Some(&key), Some(now)),
            Marker::Verified
        );
        assert_eq!(
            check(Some(b"true"), Some(&key), Some(now)),
            Marker::Untrusted
        );
        assert_eq!(
            check(Some(value.as_bytes()), None, Some(now)),
            Marker::Untrusted
        );
        assert_eq!(
            check(Some(value.as_bytes()), Some(&key), None),
            Marker::Untrusted
        );
        assert_eq!(marker_value(None, &req, Some(now)), "true");
        assert_eq!(marker_value(Some(&key), &req, Some(now)), value);
        assert!(!ok(marker_value(Some(&key), &req, None).as_bytes(), now));
        assert_eq!(format!("{key:?}"), "SigningKey(..)");
        // Through the configuration: the same secret gives the same key on every instance.
        let plan = |json: &str| Plan::from_json(json.as_bytes()).unwrap().marker_key;
        let configured = plan(r#"{"shadow_marker_secret":"0123456789abcdef-deployment"}"#);
        assert_eq!(configured.as_ref(), Some(&key));
        assert_eq!(plan("{}"), None);
    }

    /// A marker lifted from one copy verifies only on that same request to that same host.
    #[test]
    fn a_marker_is_bound_to_its_copy() {
        let key = MarkerKey::from_secret(b"0123456789abcdef-deployment");
        let now = 1_800_000_000;
        let req = copy("shop-shadow", "/cart", Some(RID));
        let value = key.sign_marker(&req, now);
        let verifies = |r: &MarkedRequest<'_>| key.verify_marker(value.as_bytes(), r, now);
        assert!(verifies(&req));
        let other_rid = RID.replace("6f1f", "6f1e");
        for (what, replayed) in [
            ("host", copy("shop", "/cart", Some(RID))),
            ("path", copy("shop-shadow", "/pay", Some(RID))),
            ("query", copy("shop-shadow", "/cart?x", Some(RID))),
            ("request id", copy("shop-shadow", "/cart", Some(&other_rid))),
            ("no request id", copy("shop-shadow", "/cart", None)),
            ("empty request id", copy("shop-shadow", "/cart", Some(""))),
            (
                "method",
                MarkedRequest {
                    method: Some(b"GET"),
                    ..req
                },
            ),
            ("nothing", MarkedRequest::default()),
        ] {
            assert!(!verifies(&replayed), "{what}");
        }
        // Envoy rewrites the 15th character of a UUID request id with its tracing decision:
        // that one character is not signed, every other one is.
        for c in ['9', 'a', 'b'] {
            let mut traced = RID.to_string();
            traced.replace_range(14..15, &c.to_string());
            assert!(
                verifies(&copy("shop-shadow", "/cart", Some(&traced))),
                "{c}"
            );
        }
        let mut changed = RID.to_string();
        changed.replace_range(15..16, "0");
        assert!(!verifies(&copy("shop-shadow", "/cart", Some(&changed))));
        // A request without an id signs and verifies as one.
        let bare = copy("shop-shadow", "/cart", None);
        assert!(key.verify_marker(key.sign_marker(&bare, now).as_bytes(), &bare, now));
        // The headers of a copy as dispatched: the first value of each bound name.
        let headers: Vec<(String, String)> = [
            (":method", "POST"),
            (":path", "/cart"),
            (":authority", "shop-shadow"),
            ("x-request-id", RID),
            ("x-request-id", "second"),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
        assert_eq!(MarkedRequest::of_copy(&headers), req);
    }
}
