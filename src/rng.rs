//! A small per-VM pseudo-random generator (wyrand), seeded once from the host's entropy.
//! Drawing from it costs no host call, unlike asking WASI for randomness on every request.

pub struct Rng {
    state: u64,
}

impl Rng {
    pub fn from_seed(seed: u64) -> Self {
        Rng { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0xa076_1d64_78bd_642f);
        let t = u128::from(self.state) * u128::from(self.state ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) ^ t) as u64
    }

    /// 128 random bits as 32 lower-case hex characters (assigned user ids).
    pub fn hex_id(&mut self) -> String {
        format!("{:016x}{:016x}", self.next_u64(), self.next_u64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_differ_and_ids_are_hex() {
        let mut rng = Rng::from_seed(42);
        let a = rng.next_u64();
        let b = rng.next_u64();
        assert_ne!(a, b);
        let id = rng.hex_id();
        assert_eq!(id.len(), 32);
        assert!(id.bytes().all(|c| c.is_ascii_hexdigit()));
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
