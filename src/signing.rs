//! Values that prove they were written by an instance holding a shared secret: the shadow
//! marker (`shadow_marker_secret`) and lane values (`lane_secret`).
//!
//! A signature is `v2.<unix seconds>.<32 hex digits>`: the first 128 bits of HMAC-SHA256
//! (RustCrypto `hmac` + `sha2`) of
//!
//! ```text
//! u64be(number of fields) ‖ frame(field)… ‖ u64be(unix seconds)
//! frame(Some(b)) = 0x01 ‖ u64be(len(b)) ‖ b        frame(None) = 0x00
//! ```
//!
//! under a key of its own purpose (`Domain`): `HMAC-SHA256(secret, domain label)`, derived once
//! per configuration. Every part is length-prefixed, so no two different (fields, time) give
//! the same MAC input; the time is signed as a number and accepted only in its canonical
//! decimal form (no sign, no leading zero), so a value has exactly one spelling. The per-purpose
//! key keeps a value signed for one purpose from verifying for another even when both secrets
//! are the same, and keeps the MAC input short (a lane: one SHA-256 block). The `v2.` prefix and
//! the labels version the wire format: the earlier format (`<unix seconds>.<16 hex digits>`,
//! SipHash) does not verify here, and this one does not verify there (docs/configuration.md,
//! "Signed values").

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// What every signature of this format starts with.
pub const SIGNATURE_PREFIX: &str = "v2.";
/// The tag: the first 16 bytes (128 bits) of the HMAC-SHA256 output, as 32 lower-case hex
/// digits.
pub const TAG_BYTES: usize = 16;

/// What a signature is for: each purpose signs with a key of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Domain {
    ShadowMarker,
    Lane,
}

impl Domain {
    /// The label its key is derived from (`HMAC-SHA256(secret, label)`).
    pub fn label(self) -> &'static [u8] {
        match self {
            Domain::ShadowMarker => b"traffic-split shadow marker v2",
            Domain::Lane => b"traffic-split lane v2",
        }
    }
}

/// The keys derived from a configured secret: one HMAC state per purpose, keyed once, cloned
/// per signature.
#[derive(Clone)]
pub struct SigningKey {
    marker: HmacSha256,
    lane: HmacSha256,
    /// Tells keys apart without keeping or comparing the secret itself.
    fingerprint: [u8; TAG_BYTES],
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(..)") // never print the key
    }
}

impl PartialEq for SigningKey {
    fn eq(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint
    }
}

impl Eq for SigningKey {}

/// One part of the MAC input, length-prefixed; `None` (a header that is absent) differs from
/// every present value, the empty one included.
fn frame(mac: &mut HmacSha256, part: Option<&[u8]>) {
    match part {
        None => mac.update(&[0]),
        Some(bytes) => {
            mac.update(&[1]);
            mac.update(&(bytes.len() as u64).to_be_bytes());
            mac.update(bytes);
        }
    }
}

/// HMAC-SHA256 keyed with `key` (any length is a valid HMAC key).
fn keyed(key: &[u8]) -> HmacSha256 {
    match HmacSha256::new_from_slice(key) {
        Ok(mac) => mac,
        // Unreachable for HMAC (every length is valid).
        Err(_) => HmacSha256::new(&Default::default()),
    }
}

impl SigningKey {
    pub fn from_secret(secret: &[u8]) -> SigningKey {
        let root = keyed(secret);
        let derive = |label: &[u8]| {
            let mut mac = root.clone();
            mac.update(label);
            mac.finalize().into_bytes()
        };
        let mut fingerprint = [0u8; TAG_BYTES];
        for (out, b) in fingerprint
            .iter_mut()
            .zip(derive(b"traffic-split key fingerprint"))
        {
            *out = b;
        }
        SigningKey {
            marker: keyed(&derive(Domain::ShadowMarker.label())),
            lane: keyed(&derive(Domain::Lane.label())),
            fingerprint,
        }
    }

    fn mac(&self, domain: Domain, fields: &[Option<&[u8]>], signed_at: u64) -> HmacSha256 {
        let mut mac = match domain {
            Domain::ShadowMarker => self.marker.clone(),
            Domain::Lane => self.lane.clone(),
        };
        mac.update(&(fields.len() as u64).to_be_bytes());
        for field in fields {
            frame(&mut mac, *field);
        }
        mac.update(&signed_at.to_be_bytes());
        mac
    }

    /// `v2.<now_s>.<tag>`: `fields` signed for `domain` at `now_s` (unix seconds).
    pub fn sign(&self, domain: Domain, fields: &[Option<&[u8]>], now_s: u64) -> String {
        let full = self.mac(domain, fields, now_s).finalize().into_bytes();
        let mut out = String::with_capacity(SIGNATURE_PREFIX.len() + 20 + 1 + 2 * TAG_BYTES);
        out.push_str(SIGNATURE_PREFIX);
        out.push_str(&now_s.to_string());
        out.push('.');
        for b in full.iter().take(TAG_BYTES) {
            out.push(hex_digit(b >> 4));
            out.push(hex_digit(b & 0xf));
        }
        out
    }

    /// Whether `signature` (`v2.<unix seconds>.<tag>`) signs `fields` for `domain` under this
    /// key, made at most `max_age_s` seconds before `now_s` and at most `max_future_s` after it
    /// (hosts' clocks differ a little). The tag is checked by the `hmac` crate in constant time.
    pub fn verify(
        &self,
        domain: Domain,
        fields: &[Option<&[u8]>],
        signature: &[u8],
        now_s: u64,
        window: Window,
    ) -> bool {
        let Some(rest) = signature.strip_prefix(SIGNATURE_PREFIX.as_bytes()) else {
            return false;
        };
        let Some(dot) = rest.iter().position(|&b| b == b'.') else {
            return false;
        };
        let (Some(ts), Some(hex)) = (rest.get(..dot), rest.get(dot + 1..)) else {
            return false;
        };
        let (Some(signed_at), Some(tag)) = (parse_canonical(ts), decode_tag(hex)) else {
            return false;
        };
        let fresh = if signed_at <= now_s {
            now_s - signed_at <= window.max_age_s
        } else {
            signed_at - now_s <= window.max_future_s
        };
        fresh
            && self
                .mac(domain, fields, signed_at)
                .verify_truncated_left(&tag)
                .is_ok()
    }
}

/// How long a signature verifies: up to `max_age_s` after it was made, and from
/// `max_future_s` before (the signer's clock may be a little ahead of the verifier's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub max_age_s: u64,
    pub max_future_s: u64,
}

/// The lower-case hex digit of a nibble (0–15).
fn hex_digit(nibble: u8) -> char {
    char::from_digit(u32::from(nibble), 16).unwrap_or('0')
}

/// A decimal number in its one canonical spelling: ASCII digits, no leading zero (but `0`
/// itself), no overflow.
fn parse_canonical(digits: &[u8]) -> Option<u64> {
    match digits {
        [] => return None,
        [b'0', _, ..] => return None,
        _ => {}
    }
    digits.iter().try_fold(0u64, |acc, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

/// Exactly `2 * TAG_BYTES` lower-case hex digits (the one spelling `sign` writes).
fn decode_tag(hex: &[u8]) -> Option<[u8; TAG_BYTES]> {
    if hex.len() != 2 * TAG_BYTES {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; TAG_BYTES];
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        let &[hi, lo] = pair else {
            return None;
        };
        *byte = (digit(hi)? << 4) | digit(lo)?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Window = Window {
        max_age_s: 300,
        max_future_s: 5,
    };
    const LANE: Domain = Domain::Lane;

    #[test]
    fn domains_fields_and_time_are_bound() {
        let key = SigningKey::from_secret(b"0123456789abcdef-deployment");
        let now = 1_800_000_000;
        let sig = key.sign(LANE, &[Some(b"canary")], now);
        assert!(sig.starts_with("v2.1800000000."), "{sig}");
        assert_eq!(sig.len(), 3 + 10 + 1 + 32);
        let ok = |fields: &[Option<&[u8]>], s: &str, at: u64| {
            key.verify(LANE, fields, s.as_bytes(), at, W)
        };
        assert!(ok(&[Some(b"canary")], &sig, now));
        assert!(ok(&[Some(b"canary")], &sig, now + 300));
        assert!(
            ok(&[Some(b"canary")], &sig, now - 5),
            "a little future skew"
        );
        assert!(!ok(&[Some(b"canary")], &sig, now + 301), "too old");
        assert!(!ok(&[Some(b"canary")], &sig, now - 6), "too far ahead");
        assert!(!ok(&[Some(b"stable")], &sig, now));
        assert!(!ok(&[Some(b"canary"), None], &sig, now), "field count");
        assert!(!key.verify(
            Domain::ShadowMarker,
            &[Some(b"canary")],
            sig.as_bytes(),
            now,
            W
        ));
        let other = SigningKey::from_secret(b"0123456789abcdef-elsewhere!");
        assert!(!other.verify(LANE, &[Some(b"canary")], sig.as_bytes(), now, W));
        assert_ne!(key, other);
        assert_eq!(key, SigningKey::from_secret(b"0123456789abcdef-deployment"));
        assert_eq!(format!("{key:?}"), "SigningKey(..)");
    }

    /// Length prefixes: moving bytes between parts changes the MAC input. Without them,
    /// `("v10", "1800000000")` and `("v1", "01800000000")` were the same bytes.
    #[test]
    fn parts_are_framed_and_the_time_has_one_spelling() {
        let key = SigningKey::from_secret(b"0123456789abcdef-deployment");
        let now = 1_800_000_000;
        let sig = key.sign(LANE, &[Some(b"v10")], now);
        let (_, tag) = sig.rsplit_once('.').unwrap();
        for reframed in [
            format!("v2.01800000000.{tag}"),
            format!("v2.+1800000000.{tag}"),
            format!("v2.1800000000.{}", tag.to_uppercase()),
            format!("v2.1800000000.{tag}0"),
            format!("1800000000.{tag}"),
        ] {
            for name in [&b"v1"[..], b"v10"] {
                assert!(
                    !key.verify(LANE, &[Some(name)], reframed.as_bytes(), now, W),
                    "{reframed}"
                );
            }
        }
        // Moving bytes between fields.
        let b = key.sign(LANE, &[Some(b"x"), Some(b"yz")], now);
        assert_ne!(b, key.sign(LANE, &[Some(b"xy"), Some(b"z")], now));
        assert_ne!(
            key.sign(LANE, &[None], now),
            key.sign(LANE, &[Some(b"")], now),
            "absent differs from empty"
        );
        assert_eq!(parse_canonical(b"0"), Some(0));
        assert_eq!(parse_canonical(b"18446744073709551615"), Some(u64::MAX));
        for bad in [
            &b""[..],
            b"00",
            b"01",
            b"18446744073709551616",
            b"1a",
            b"-1",
        ] {
            assert_eq!(parse_canonical(bad), None, "{bad:?}");
        }
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// HMAC-SHA256 as RFC 4231 defines it (test case 2); the lane key derived from the secret
    /// with it, and the tag its first 128 bits over the framed message.
    #[test]
    fn the_tag_is_truncated_hmac_sha256_under_a_derived_key() {
        let hmac = |key: &[u8], msg: &[u8]| {
            let mut mac = HmacSha256::new_from_slice(key).unwrap();
            mac.update(msg);
            mac.finalize().into_bytes().to_vec()
        };
        assert_eq!(
            hex(&hmac(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let lane_key = hmac(b"Jefe", b"traffic-split lane v2");
        let mut message = 1u64.to_be_bytes().to_vec();
        message.push(1);
        message.extend_from_slice(&1u64.to_be_bytes());
        message.extend_from_slice(b"a");
        message.extend_from_slice(&7u64.to_be_bytes());
        let want = hex(&hmac(&lane_key, &message)[..16]);
        let key = SigningKey::from_secret(b"Jefe");
        assert_eq!(key.sign(LANE, &[Some(b"a")], 7), format!("v2.7.{want}"));
    }
}
