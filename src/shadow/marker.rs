//! The shadow marker: the header every copy carries, and the key that signs and verifies it.

/// The header every shadow copy carries, so the shadow's application can skip side effects.
pub const SHADOW_MARKER: &str = "x-shadow-request";
/// Its value without `shadow_marker_secret`.
pub const UNSIGNED_MARKER: &str = "true";
/// How long a signed marker stays valid after its copy was dispatched: a copy crosses the next
/// instance within its `timeout_ms`; the rest is room for clock skew between hosts.
pub const MARKER_MAX_AGE_S: u64 = 60;

/// The key that signs and verifies shadow markers (`crate::signing`), derived from
/// `shadow_marker_secret`. A signed marker is `<unix seconds>.<16 hex digits>`: the signature of
/// the dispatch time alone.
pub use crate::signing::SigningKey as MarkerKey;

const MARKER_DOMAIN: &[u8] = b"traffic-split shadow marker v1:";

impl MarkerKey {
    /// The marker value of a copy dispatched at `now_s` (unix seconds).
    pub fn sign_marker(&self, now_s: u64) -> String {
        self.sign(MARKER_DOMAIN, b"", now_s)
    }

    /// Whether `value` is a marker signed with this key at most `MARKER_MAX_AGE_S` seconds
    /// from `now_s`.
    pub fn verify_marker(&self, value: &[u8], now_s: u64) -> bool {
        self.verify(MARKER_DOMAIN, b"", value, now_s, MARKER_MAX_AGE_S)
    }
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
        (Some(v), Some(key), Some(now)) if key.verify_marker(v, now) => Marker::Verified,
        (Some(_), _, _) => Marker::Untrusted,
    }
}

/// The marker value a copy dispatched at `now_s` carries.
pub fn marker_value(key: Option<&MarkerKey>, now_s: Option<u64>) -> String {
    match (key, now_s) {
        (Some(key), Some(now)) => key.sign_marker(now),
        // No clock: an unverifiable marker, which the next instance removes (never a forgery).
        (Some(_), None) => "unsigned".to_string(),
        (None, _) => UNSIGNED_MARKER.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Plan;

    #[test]
    fn signed_markers_verify_only_with_the_key_and_only_while_fresh() {
        let key = MarkerKey::from_secret(b"0123456789abcdef-deployment");
        let other = MarkerKey::from_secret(b"0123456789abcdef-elsewhere!");
        let now = 1_800_000_000;
        let value = key.sign_marker(now);
        assert!(value.starts_with("1800000000."), "{value}");
        assert_eq!(value.len(), 10 + 1 + 16);
        assert!(key.verify_marker(value.as_bytes(), now));
        assert!(key.verify_marker(value.as_bytes(), now + MARKER_MAX_AGE_S));
        assert!(
            key.verify_marker(value.as_bytes(), now - MARKER_MAX_AGE_S),
            "clock skew"
        );
        assert!(
            !key.verify_marker(value.as_bytes(), now + MARKER_MAX_AGE_S + 1),
            "replayed late"
        );
        assert!(
            !other.verify_marker(value.as_bytes(), now),
            "another deployment's key"
        );
        // Tampering with the time or the tag fails.
        let later = value.replacen("1800000000", "1800000001", 1);
        assert!(!key.verify_marker(later.as_bytes(), now));
        let mut tag_flipped = value.clone().into_bytes();
        let last = tag_flipped.len() - 1;
        tag_flipped[last] = if tag_flipped[last] == b'0' {
            b'1'
        } else {
            b'0'
        };
        assert!(!key.verify_marker(&tag_flipped, now));
        for junk in [
            &b""[..],
            b"true",
            b".",
            b"1800000000.",
            b"x.0123456789abcdef",
            b"99999999999999999999.0123456789abcdef",
        ] {
            assert!(!key.verify_marker(junk, now), "{junk:?}");
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
        assert!(!key.verify_marker(marker_value(Some(&key), None).as_bytes(), now));
        assert_eq!(format!("{key:?}"), "SigningKey(..)");
        // Through the configuration: the same secret gives the same key on every instance.
        let plan = |json: &str| Plan::from_json(json.as_bytes()).unwrap().marker_key;
        let configured = plan(r#"{"shadow_marker_secret":"0123456789abcdef-deployment"}"#);
        assert_eq!(configured.as_ref(), Some(&key));
        assert_eq!(plan("{}"), None);
    }
}
