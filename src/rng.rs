//! Randomness of one VM. Two sources, kept apart on purpose:
//!
//! - a small pseudo-random generator (wyrand) for sampling (random splits, shadow and probe
//!   sampling): drawing from it costs no host call, unlike asking WASI for randomness on every
//!   request. Its output is predictable from its seed, which is fine for sampling only.
//! - assigned user ids (`sticky.assign_cookie`), which are 128 bits read from the OS through
//!   `getrandom` (WASI `random_get`) for every id, never from the generator: an id guessable
//!   from another user's id would let anyone pick, or take over, someone else's bucket.

pub struct Rng {
    state: u64,
    /// Fills a buffer with OS randomness, false on failure (`getrandom` unless a test says so).
    fill: fn(&mut [u8]) -> bool,
    /// Whether this VM already logged that `fill` failed (logged once, not per request).
    fill_failure_logged: bool,
}

/// Bytes from the OS (WASI `random_get` inside Envoy).
fn os_fill(buf: &mut [u8]) -> bool {
    getrandom::fill(buf).is_ok()
}

impl Rng {
    pub fn from_seed(seed: u64) -> Self {
        Rng::with_id_source(seed, os_fill)
    }

    /// A generator whose user ids come from `fill` (tests: a failing source).
    pub fn with_id_source(seed: u64, fill: fn(&mut [u8]) -> bool) -> Self {
        Rng {
            state: seed,
            fill,
            fill_failure_logged: false,
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0xa076_1d64_78bd_642f);
        let t = u128::from(self.state) * u128::from(self.state ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) ^ t) as u64
    }

    /// 128 bits from the sampling generator as 32 hex characters: a label that only has to
    /// differ between VMs (shared-queue names). Never a user id: see `user_id`.
    pub fn hex_id(&mut self) -> String {
        let mut bytes = [0u8; 16];
        let (a, b) = bytes.split_at_mut(8);
        a.copy_from_slice(&self.next_u64().to_le_bytes());
        b.copy_from_slice(&self.next_u64().to_le_bytes());
        hex(&bytes)
    }

    /// A new user id: 128 bits straight from the OS as 32 lower-case hex characters, or
    /// `None` when the OS has no randomness to give (logged once per VM; the caller then
    /// assigns no id rather than a guessable one).
    pub fn user_id(&mut self) -> Option<String> {
        let mut bytes = [0u8; 16];
        if (self.fill)(&mut bytes) {
            return Some(hex(&bytes));
        }
        if !self.fill_failure_logged {
            self.fill_failure_logged = true;
            log::error!(
                "traffic-split: getrandom failed: no cookie ids are assigned while it fails \
                 (users without the cookie are bucketed at random and get no Set-Cookie)"
            );
        }
        None
    }
}

/// The sampling generator's seed for a new VM: 64 bits from `getrandom`. If the OS has no
/// randomness, the host clock's nanoseconds (`clock_nanos`; Envoy's clock call does not
/// fail), logged once: sampling needs spread, not secrecy, and user ids never come from this
/// seed. Only if both fail is the seed 0, logged as such.
pub fn sampling_seed(clock_nanos: impl FnOnce() -> Option<u64>) -> u64 {
    let mut buf = [0u8; 8];
    if os_fill(&mut buf) {
        return u64::from_le_bytes(buf);
    }
    match clock_nanos() {
        Some(nanos) => {
            log::error!(
                "traffic-split: getrandom failed: sampling is seeded from the clock; \
                 no cookie ids are assigned while it fails"
            );
            nanos
        }
        None => {
            log::error!(
                "traffic-split: getrandom failed and the host has no clock: sampling is seeded \
                 with 0; no cookie ids are assigned while getrandom fails"
            );
            0
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        for nibble in [b >> 4, b & 0xf] {
            out.push(char::from(
                DIGITS.get(usize::from(nibble)).copied().unwrap_or(b'0'),
            ));
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_differ_and_labels_are_hex() {
        let mut rng = Rng::from_seed(42);
        let a = rng.next_u64();
        let b = rng.next_u64();
        assert_ne!(a, b);
        let id = rng.hex_id();
        assert_eq!(id.len(), 32);
        assert!(id.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(hex(&[0x01, 0xab, 0xff]), "01abff");
    }

    #[test]
    fn user_ids_do_not_follow_from_the_sampling_seed() {
        // Two VMs with the same sampling seed (or an attacker who learnt it) must not produce
        // the same ids: ids come from the OS, not from the generator.
        let mut a = Rng::from_seed(7);
        let mut b = Rng::from_seed(7);
        let (ia, ib) = (a.user_id().unwrap(), b.user_id().unwrap());
        assert_ne!(ia, ib);
        assert_eq!(ia.len(), 32);
        assert!(ia.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')));
        // Drawing ids leaves the sampling sequence untouched.
        assert_eq!(a.next_u64(), Rng::from_seed(7).next_u64());
    }

    #[test]
    fn no_user_id_when_the_os_has_no_randomness() {
        let mut rng = Rng::with_id_source(7, |_| false);
        assert_eq!(rng.user_id(), None);
        assert_eq!(rng.user_id(), None);
        assert!(rng.fill_failure_logged);
        assert_ne!(sampling_seed(|| Some(5)), sampling_seed(|| Some(5)));
    }

    #[test]
    fn draws_are_roughly_uniform() {
        let mut rng = Rng::from_seed(7);
        let n = 100_000;
        let low = (0..n).filter(|_| rng.next_u64() < u64::MAX / 4).count();
        // Binomial(100000, 0.25): sd ~ 137; 5 sigma.
        assert!((25_000i64 - low as i64).abs() < 700, "low = {low}");
    }
}
