//! FNV-1a, 64 bits: the one copy used for the rule index's table (`plan::index`), the breaker's
//! shared-data scope (`breaker::shared`) and the shadow body digest (`shadow::compare`). Not a
//! keyed or cryptographic hash: only for values that come from the configuration or that no
//! client can use to pick collisions that matter.

const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0000_0100_0000_01b3;

/// A running FNV-1a state, fed byte by byte or slice by slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a(OFFSET)
    }
}

impl Fnv1a {
    pub fn byte(&mut self, b: u8) {
        self.0 = (self.0 ^ u64::from(b)).wrapping_mul(PRIME);
    }

    pub fn bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.byte(b);
        }
    }

    pub fn value(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::Fnv1a;

    #[test]
    fn reference_vectors() {
        // FNV-1a 64 test vectors (Fowler, Noll, Vo).
        for (input, expected) in [
            (&b""[..], 0xcbf2_9ce4_8422_2325u64),
            (b"a", 0xaf63_dc4c_8601_ec8c),
            (b"foobar", 0x8594_4171_f739_67e8),
        ] {
            let mut h = Fnv1a::default();
            h.bytes(input);
            assert_eq!(h.value(), expected, "{input:?}");
        }
    }
}
