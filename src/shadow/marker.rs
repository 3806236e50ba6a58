//! The shadow marker: the header every copy carries, and the key that signs and verifies it.

/// The header every shadow copy carries, so the shadow's application can skip side effects.
pub const SHADOW_MARKER: &str = "x-shadow-request";
/// Its value without `shadow_marker_secret`.
pub const UNSIGNED_MARKER: &str = "true";
/// How long a signed marker stays valid after its copy was dispatched: a copy crosses the next
/// instance within its `timeout_ms`; the rest is room for clock skew between hosts.
pub const MARKER_MAX_AGE_S: u64 = 60;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Plan;

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
}
