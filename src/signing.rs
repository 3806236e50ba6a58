//! Values that prove they were written by an instance holding a shared secret: the shadow
//! marker (`shadow_marker_secret`) and lane values (`lane_secret`).
//!
//! A signed value ends in `<unix seconds>.<16 hex digits>`: SipHash-2-4 (a keyed PRF designed
//! as a MAC for short inputs) of a domain string, the signed subject and the signing time under
//! the key. Only an instance that knows the secret can produce one; a value seen on the wire can
//! be replayed for its domain's maximum age at most. The domain keeps a value signed for one
//! purpose from verifying for another even when both secrets are the same.

/// The key derived from a configured secret.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey {
    k0: u64,
    k1: u64,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(..)") // never print the key
    }
}

/// SipHash-2-4 of the concatenated `data` under (k0, k1). `SipHasher` is deprecated only as a
/// `HashMap` hasher (not as a primitive); it is the standard library's SipHash-2-4 and costs no
/// extra code. `write` streams bytes, so parts hash as their concatenation.
#[allow(deprecated)]
fn siphash(k0: u64, k1: u64, data: &[&[u8]]) -> u64 {
    use std::hash::Hasher;
    let mut h = std::hash::SipHasher::new_with_keys(k0, k1);
    for part in data {
        h.write(part);
    }
    h.finish()
}

impl SigningKey {
    pub fn from_secret(secret: &[u8]) -> SigningKey {
        SigningKey {
            k0: siphash(0x7472_6166_6669_6331, 0x7368_6164_6f77_6b30, &[secret]),
            k1: siphash(0x7472_6166_6669_6332, 0x7368_6164_6f77_6b31, &[secret]),
        }
    }

    fn tag(&self, domain: &[u8], subject: &[u8], timestamp: &[u8]) -> u64 {
        siphash(self.k0, self.k1, &[domain, subject, timestamp])
    }

    /// `<now_s>.<tag>` for `subject` signed at `now_s` (unix seconds).
    pub fn sign(&self, domain: &[u8], subject: &[u8], now_s: u64) -> String {
        let ts = now_s.to_string();
        format!("{ts}.{:016x}", self.tag(domain, subject, ts.as_bytes()))
    }

    /// Whether `signature` (`<unix seconds>.<tag>`) signs `subject` under this key, at most
    /// `max_age_s` seconds from `now_s` either way (hosts' clocks differ). The tag is compared
    /// in constant time.
    pub fn verify(
        &self,
        domain: &[u8],
        subject: &[u8],
        signature: &[u8],
        now_s: u64,
        max_age_s: u64,
    ) -> bool {
        let Some(dot) = signature.iter().position(|&b| b == b'.') else {
            return false;
        };
        let (Some(ts), Some(tag)) = (signature.get(..dot), signature.get(dot + 1..)) else {
            return false;
        };
        let Some(signed_at) = parse_decimal(ts) else {
            return false;
        };
        if signed_at.abs_diff(now_s) > max_age_s || tag.len() != 16 {
            return false;
        }
        let expected = format!("{:016x}", self.tag(domain, subject, ts));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_and_subjects_are_bound() {
        let key = SigningKey::from_secret(b"0123456789abcdef-deployment");
        let now = 1_800_000_000;
        let sig = key.sign(b"lane:", b"canary", now);
        assert!(key.verify(b"lane:", b"canary", sig.as_bytes(), now, 300));
        assert!(!key.verify(b"lane:", b"stable", sig.as_bytes(), now, 300));
        assert!(!key.verify(b"marker:", b"canary", sig.as_bytes(), now, 300));
        assert!(!key.verify(b"lane:", b"canary", sig.as_bytes(), now + 301, 300));
        assert_eq!(format!("{key:?}"), "SigningKey(..)");
    }
}
